"""lamina inside Ray Data (examples/ray_embed.py) on a local Ray instance:
a few hundred sentences through MiniLM on two actors, equal to a plain loop."""

import sys

import numpy as np
import pytest

from conftest import REPO, missing

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError as e:
        missing(f"ray is not installed ({e}): `bash python/build.sh` installs it")
    # Two cores: two actors of one thread each. The example's module must be
    # importable in the workers, which unpickle its class by name.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(EXAMPLES)}},
    )
    sys.path.insert(0, str(EXAMPLES))
    try:
        import ray_embed

        yield ray_embed
    finally:
        sys.path.remove(str(EXAMPLES))
        ray.shutdown()


def test_ray_data_embeddings_equal_a_plain_loop(ray_local, minilm_checkpoint):
    texts = ray_local.sample_texts(240)
    assert len(set(texts)) == 240
    on_ray = ray_local.embed(
        texts, checkpoint=minilm_checkpoint, actors=2, threads=1, batch_size=32
    )

    model = ray_local.Embedder(str(ray_local.MODEL), 2, str(minilm_checkpoint)).model
    plain = np.concatenate(
        [model.run(text=texts[i : i + 32])["embedding"] for i in range(0, len(texts), 32)]
    )
    assert on_ray.shape == plain.shape == (240, 384)
    # Batches may be padded to other lengths on Ray than here: padding is
    # masked out, so only rounding may differ.
    assert np.abs(on_ray - plain).max() <= 1e-5
    assert np.allclose(np.linalg.norm(on_ray, axis=1), 1.0, atol=1e-5)
