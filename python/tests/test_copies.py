"""Where the module copies and where it does not (docs/python.md says the same)."""

import numpy as np

import lamina

SOURCE = "model scale {\n  input x: f32[n, m]\n  output y = x * 2.0\n  output total = sum(x)\n}\n"


def test_outputs_take_over_lamina_buffers_without_a_copy():
    model = lamina.from_source(SOURCE)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = model.run({"x": x})["y"]
    # The array does not own its data: its base is the buffer lamina produced,
    # not a numpy array it was copied from.
    assert not y.flags.owndata
    assert y.base is not None and not isinstance(y.base, np.ndarray)
    assert y.flags.c_contiguous and y.flags.writeable
    assert np.array_equal(y, x * 2)


def test_strided_and_transposed_inputs_are_read_in_logical_order():
    model = lamina.from_source(SOURCE)
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    for view in (base[::2, ::3], base.T, base[:, 1:5], np.asfortranarray(base)):
        assert not view.flags.c_contiguous or view is base
        got = model.run({"x": view})
        assert np.array_equal(got["y"], np.ascontiguousarray(view) * 2)
        assert got["total"] == np.float32(view.sum())


def test_the_input_is_copied_so_later_writes_do_not_reach_lamina():
    model = lamina.from_source("model keep {\n  input x: f32[n]\n  output y = x\n}\n")
    x = np.ones(5, np.float32)
    y = model.run({"x": x})["y"]
    x[:] = 7
    assert np.array_equal(y, np.ones(5, np.float32))
    assert not np.shares_memory(x, y)


def test_every_lamina_dtype_round_trips():
    # bool cannot be declared as an input; a comparison gives one.
    source = (
        "model kinds {\n  input a: f32[n]\n  input b: i64[n]\n  input c: i32[n]\n"
        "  output fa = a\n  output fb = b\n  output fc = c\n  output positive = a > 0.0\n}\n"
    )
    model = lamina.from_source(source, backend="interp")
    inputs = {
        "a": np.array([1.5, -2.0], np.float32),
        "b": np.array([2**40, -3], np.int64),
        "c": np.array([7, -8], np.int32),
    }
    out = model.run(inputs)
    assert list(out) == ["fa", "fb", "fc", "positive"]
    for name, value in inputs.items():
        got = out["f" + name]
        assert got.dtype == value.dtype and np.array_equal(got, value), name
    assert out["positive"].dtype == np.bool_
    assert out["positive"].tolist() == [True, False]
