"""The trained digits MLP through the Python module: accuracy against the
labels, the outputs against a numpy forward pass on the same weights, and
every way of giving weights and options."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import lamina
from conftest import DIGITS

MODEL = DIGITS / "digits.lam"
WEIGHTS = DIGITS / "digits.safetensors"


def numpy_digits(x: np.ndarray) -> np.ndarray:
    """The digits model in float64 numpy, from the same weight file."""
    w = {k: v.astype(np.float64) for k, v in load_file(WEIGHTS).items()}
    hidden = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0.0)
    logits = hidden @ w["fc2.weight"] + w["fc2.bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("backend", ["jit", "interp"])
def test_accuracy_against_the_labels(digits, backend):
    x, labels = digits
    model = lamina.load(MODEL, backend=backend, threads=2)
    probs = model.run({"x": x})["probs"]
    assert probs.shape == (450, 10) and probs.dtype == np.float32
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    # train.py reports 97.3% on these 450 held-out images.
    assert accuracy >= 0.97, accuracy


@pytest.mark.parametrize("backend", ["jit", "interp"])
def test_probabilities_equal_numpy(digits, backend):
    x, _ = digits
    probs = lamina.load(MODEL, backend=backend).run({"x": x})["probs"]
    np.testing.assert_allclose(probs, numpy_digits(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_jit_and_interpreter_agree(digits):
    x, _ = digits
    jit = lamina.load(MODEL, backend="jit", threads=2).run({"x": x})["probs"]
    interp = lamina.load(MODEL, backend="interp").run({"x": x})["probs"]
    np.testing.assert_allclose(jit, interp, rtol=1e-5, atol=1e-6)


def test_thread_count_does_not_change_a_bit(digits):
    x, _ = digits
    one = lamina.load(MODEL, threads=1).run({"x": x})["probs"]
    two = lamina.load(MODEL, threads=2).run({"x": x})["probs"]
    assert np.array_equal(one, two)


def test_weights_from_path_bytes_and_arrays_give_the_same_answer(digits):
    x, _ = digits
    expected = lamina.load(MODEL).run({"x": x})["probs"]
    for weights in (
        WEIGHTS,
        str(WEIGHTS),
        WEIGHTS.read_bytes(),
        load_file(WEIGHTS),
    ):
        got = lamina.load(MODEL, weights=weights).run({"x": x})["probs"]
        assert np.array_equal(got, expected), type(weights)


def test_model_from_a_string_finds_nothing_beside_it_unless_told(digits):
    x, _ = digits
    source = MODEL.read_text()
    # The weights file the text names is relative to `path`.
    model = lamina.from_source(source, path=MODEL)
    assert np.array_equal(model.run({"x": x})["probs"], lamina.load(MODEL).run({"x": x})["probs"])
    with pytest.raises(lamina.WeightsError) as err:
        lamina.from_source(source)
    assert "digits.safetensors" in str(err.value)


def test_signature_with_symbolic_dims():
    model = lamina.load(MODEL)
    [x] = model.inputs
    assert (x.name, x.dtype, x.shape) == ("x", np.dtype(np.float32), ("batch", 64))
    [probs] = model.outputs
    assert (probs.name, probs.dtype, probs.shape) == ("probs", np.dtype(np.float32), ("batch", 10))
    assert model.name == "digits"
    assert model.backend == "jit"
    assert str(model.path) == str(MODEL)
    assert str(model.weights_path) == str(WEIGHTS)
    assert model.unused_weights == []
    assert "digits" in repr(model) and "batch" in repr(x)


def test_options_are_applied():
    model = lamina.load(MODEL, backend="interp", threads=1, isa="baseline", max_memory="1G", bind={"batch": 3})
    assert (model.backend, model.threads) == ("interp", 1)
    x = np.zeros((3, 64), np.float32)
    assert model.run({"x": x})["probs"].shape == (3, 10)
    # bind fixes batch: another batch size contradicts it.
    with pytest.raises(lamina.InputError):
        model.run({"x": np.zeros((4, 64), np.float32)})


def test_lists_are_converted_to_the_declared_dtype(digits):
    x, _ = digits
    model = lamina.load(MODEL)
    from_list = model.run({"x": x[:2].tolist()})["probs"]
    assert np.array_equal(from_list, model.run({"x": x[:2]})["probs"])
