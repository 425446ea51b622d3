"""all-MiniLM-L6-v2 through the Python module: text in, embeddings out, equal
to the float64 numpy reference (models/minilm/reference.py) and to the CLI."""

import subprocess

import numpy as np
import pytest

import lamina
from conftest import MINILM, REPO, lamina_cli

TESTDATA = MINILM / "testdata"


def load(cache, **options):
    """MiniLM with the checkpoint and tokenizer from `cache` (LAMINA_CACHE)."""
    return lamina.load(
        MINILM / "minilm.lam",
        weights=cache / "model.safetensors",
        tokenizer=cache / "tokenizer.json",
        **options,
    )


@pytest.fixture(scope="module")
def minilm(minilm_checkpoint):
    return load(minilm_checkpoint, threads=2)


def test_the_readme_example(minilm_checkpoint, monkeypatch):
    if minilm_checkpoint != MINILM / "cache":
        pytest.skip("the README's example reads models/minilm/cache, not LAMINA_CACHE")
    monkeypatch.chdir(REPO)
    m = lamina.load("models/minilm/minilm.lam")
    emb = m.run(text=["A man is playing a guitar."])["embedding"]
    assert emb.shape == (1, 384) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5


def test_embeddings_equal_the_numpy_reference(minilm, sentences):
    emb = minilm.run(text=sentences)["embedding"]
    reference = np.load(TESTDATA / "sentences_embeddings.npy")
    assert emb.shape == reference.shape == (12, 384)
    assert np.abs(emb - reference).max() <= 1e-4
    cosine = (emb * reference).sum(axis=1) / (
        np.linalg.norm(emb, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() >= 0.99999, cosine


def test_text_and_token_ids_give_the_same_embeddings(minilm, sentences):
    ids = {
        name: np.load(TESTDATA / f"sentences_{name}.npy")
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    from_ids = minilm.run(ids)["embedding"]
    from_text = minilm.run(text=sentences)["embedding"]
    assert np.array_equal(from_ids, from_text)


def test_embeddings_equal_the_cli(minilm, minilm_checkpoint, sentences, tmp_path):
    texts = sentences[:4]
    out = tmp_path / "emb.npy"
    args = [lamina_cli(), "run", MINILM / "minilm.lam", "--output", out]
    args += ["--weights", minilm_checkpoint / "model.safetensors"]
    args += ["--tokenizer", minilm_checkpoint / "tokenizer.json"]
    for text in texts:
        args += ["--text", text]
    subprocess.run(args, check=True, capture_output=True)
    assert np.array_equal(minilm.run(text=texts)["embedding"], np.load(out))


def test_jit_and_interpreter_agree(minilm_checkpoint, sentences):
    texts = sentences[:2]
    jit = load(minilm_checkpoint).run(text=texts)["embedding"]
    interp = load(minilm_checkpoint, backend="interp").run(text=texts)["embedding"]
    np.testing.assert_allclose(jit, interp, rtol=0, atol=1e-5)


def test_one_string_is_one_sentence(minilm):
    one = minilm.run(text="A man is playing a guitar.")["embedding"]
    assert np.array_equal(one, minilm.run(text=["A man is playing a guitar."])["embedding"])
    with pytest.raises(TypeError):
        minilm.run(text=[1, 2])


def test_signature_and_unused_checkpoint_tensors(minilm):
    assert [(i.name, i.dtype, i.shape) for i in minilm.inputs] == [
        (name, np.dtype(np.int64), ("batch", "seq"))
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    [embedding] = minilm.outputs
    assert (embedding.name, embedding.shape) == ("embedding", ("batch", 384))
    assert "embeddings.position_ids" in minilm.unused_weights
