"""Errors raise lamina.LaminaError subclasses carrying lamina's rendered,
located diagnostics: the same text the CLI prints."""

import subprocess

import numpy as np
import pytest

import lamina
from conftest import DIGITS, lamina_cli

BAD_SHAPES = "model bad {\n  input x: f32[batch, 784]\n  param w: f32[100, 10] = zeros\n  output y = x @ w\n}\n"
GATHER = "model lookup {\n  input ids: i64[n]\n  param table: f32[4, 2] = ones\n  output rows = gather(table, ids, axis=0)\n}\n"


def test_a_shape_error_is_the_cli_message(tmp_path):
    path = tmp_path / "bad.lam"
    path.write_text(BAD_SHAPES)
    with pytest.raises(lamina.ModelError) as err:
        lamina.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}:4:14: error: shape error: matmul: inner dimensions differ"), message
    assert "4 |   output y = x @ w" in message and "^^^^^" in message
    cli = subprocess.run([lamina_cli(), "check", path], capture_output=True, text=True)
    assert cli.returncode == 1
    assert message == cli.stderr.rstrip("\n")


def test_errors_share_one_base_class():
    for subclass in (
        lamina.ModelError,
        lamina.OptionsError,
        lamina.WeightsError,
        lamina.InputError,
        lamina.TextError,
        lamina.CompileError,
        lamina.RunError,
    ):
        assert issubclass(subclass, lamina.LaminaError) and issubclass(subclass, Exception)


def test_every_parse_error_of_a_string_is_located():
    with pytest.raises(lamina.ModelError) as err:
        lamina.from_source("model m {\n  output y = foo(1)\n}\n", path="inline.lam")
    assert str(err.value).startswith("inline.lam:2:"), str(err.value)
    assert "^" in str(err.value)


@pytest.mark.parametrize("backend", ["jit", "interp"])
def test_a_run_time_error_names_the_node_and_its_line(backend):
    model = lamina.from_source(GATHER, path="lookup.lam", backend=backend)
    with pytest.raises(lamina.RunError) as err:
        model.run({"ids": np.array([1, 9], np.int64)})
    message = str(err.value)
    assert message.startswith("lookup.lam:4:") and "gather: id 9" in message, message
    assert "4 |   output rows = gather(table, ids, axis=0)" in message


def test_input_problems_are_reported_together():
    model = lamina.load(DIGITS / "digits.lam")
    with pytest.raises(lamina.InputError) as err:
        model.run({"z": np.zeros((1, 64), np.float32)})
    message = str(err.value)
    assert "`x`" in message and "`z`" in message, message  # x missing, z unknown
    with pytest.raises(lamina.InputError) as err:
        model.run({"x": np.zeros((2, 63), np.float32)})
    assert "x" in str(err.value) and "63" in str(err.value)


def test_a_wrong_dtype_names_the_input_and_the_fix():
    model = lamina.load(DIGITS / "digits.lam")
    with pytest.raises(lamina.InputError) as err:
        model.run({"x": np.zeros((2, 64), np.float64)})
    message = str(err.value)
    assert "input `x`" in message and "float64" in message and "f32[batch, 64]" in message, message
    assert ".astype(numpy.float32)" in message


def test_a_missing_parameter_points_at_its_declaration():
    source = (DIGITS / "digits.lam").read_text()
    weights = {"fc1.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(lamina.WeightsError) as err:
        lamina.from_source(source, path="digits.lam", weights=weights)
    message = str(err.value)
    # fc1.bias, fc2.weight and fc2.bias are all missing: all three reported.
    for name in ("fc1.bias", "fc2.weight", "fc2.bias"):
        assert name in message, message
    assert message.startswith("digits.lam:"), message


def test_bad_options_are_reported_together():
    with pytest.raises(lamina.OptionsError) as err:
        lamina.load(DIGITS / "digits.lam", backend="gpu", threads=-1, isa="sse9", max_memory="lots")
    message = str(err.value)
    for word in ("backend", "threads", "isa", "max_memory"):
        assert word in message, message
    with pytest.raises(lamina.OptionsError) as err:
        lamina.load(DIGITS / "digits.lam", threads=0, bind={"bacth": 4})
    message = str(err.value)
    assert "worker thread" in message and "did you mean `batch`" in message, message


def test_a_missing_file_and_a_bad_weight_file():
    with pytest.raises(lamina.ModelError) as err:
        lamina.load("does/not/exist.lam")
    assert "does/not/exist.lam" in str(err.value)
    with pytest.raises(lamina.WeightsError) as err:
        lamina.load(DIGITS / "digits.lam", weights=b"not safetensors")
    assert "<bytes>" in str(err.value)
    with pytest.raises(TypeError):
        lamina.load(DIGITS / "digits.lam", weights=3.5)


def test_text_needs_a_tokenizer_and_a_text_model():
    model = lamina.load(DIGITS / "digits.lam")
    with pytest.raises(lamina.TextError) as err:
        model.run(text=["hello"])
    assert "tokenizer.json" in str(err.value)
