//! The vision ops (conv2d, pooling, batch_norm, relu6/clip/hard_sigmoid/
//! hard_swish, pad, flatten, resize) against numpy: every case of
//! `tests/fixtures/vision/` (model text, inputs, expected output; written by
//! `gen.py` there) runs through the engine on the interpreter and on the
//! JIT with 1 and 2 threads. Both match numpy's float64 result rounded to
//! f32, and the JIT gives the same bits whatever the thread count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamina::engine::{Backend, Model, Options, Weights};
use lamina::runtime::read_npy;
use lamina::tensor::Tensor;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures/vision exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("model.lam").is_file())
        .collect();
    cases.sort();
    cases
}

fn run(
    model: &Model,
    inputs: &HashMap<String, Tensor>,
    backend: Backend,
    threads: usize,
) -> Tensor {
    let options = Options {
        backend,
        threads,
        ..Options::default()
    };
    let session = model
        .clone()
        .compile(Weights::None, &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outputs = session.run(inputs).unwrap_or_else(|e| panic!("{e}"));
    outputs.remove(0).1
}

fn assert_close(case: &str, what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.shape(), expected.shape(), "{case} ({what}): shape");
    let (got, expected) = (got.to_f64_vec(), expected.to_f64_vec());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        let tolerance = 1e-5 + 1e-5 * e.abs();
        assert!(
            (g - e).abs() <= tolerance || (g.is_nan() && e.is_nan()),
            "{case} ({what}): element {i} is {g}, numpy says {e}"
        );
    }
}

#[test]
fn every_fixture_matches_numpy_on_both_backends() {
    let cases = cases();
    assert!(cases.len() >= 30, "found only {} cases", cases.len());
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(dir.join("model.lam")).unwrap_or_else(|e| panic!("{e}"));
        let inputs: HashMap<String, Tensor> = model
            .input_names()
            .iter()
            .map(|n| {
                let t = read_npy(&dir.join(format!("{n}.npy"))).unwrap_or_else(|e| panic!("{e}"));
                (n.to_string(), t)
            })
            .collect();
        let expected = read_npy(&dir.join("out.npy")).unwrap();
        let interp = run(&model, &inputs, Backend::Interp, 1);
        assert_close(&name, "interpreter", &interp, &expected);
        let jit1 = run(&model, &inputs, Backend::Jit, 1);
        assert_close(&name, "jit", &jit1, &expected);
        let jit2 = run(&model, &inputs, Backend::Jit, 2);
        assert_eq!(
            jit1.as_f32()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            jit2.as_f32()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "{name}: 1 and 2 JIT threads differ"
        );
    }
}

/// Bad attributes and impossible shapes are located errors at the call.
#[test]
fn bad_attributes_and_shapes_are_located_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "conv2d(x, w, padding=\"full\")",
            "`padding` is \"full\"; expected one of \"valid\", \"same\"",
        ),
        (
            "conv2d(x, w, padding=[1, 2, 3])",
            "padding is one int, [height, width], [top, left, bottom, right]",
        ),
        (
            "conv2d(x, w, stride=0)",
            "stride is one positive int or [height, width]",
        ),
        ("conv2d(x, w, groups=3)", "channels in 3 group(s)"),
        (
            "conv2d(x, v)",
            "the input's 4 channels in 1 group(s) need weights with 4 input channels each",
        ),
        (
            "conv2d(x, w, dilation=9)",
            "is larger than the padded input's",
        ),
        ("conv2d(x, w, w)", "the bias must be [6]"),
        ("max_pool2d(x)", "needs `kernel=`"),
        (
            "max_pool2d(x, kernel=2, padding=2)",
            "must be smaller than the window",
        ),
        (
            "avg_pool2d(x, kernel=2, count_include_pad=1)",
            "must be true or false",
        ),
        ("batch_norm(x, m, m, m, b)", "bias must be [4]"),
        ("clip(x, min=2.0, max=1.0)", "min 2 is above max 1"),
        ("pad(x, [1, 2])", "pads must be 2 * rank = 8"),
        (
            "resize(x, size=[0, 3])",
            "size is [height, width], two positive integers",
        ),
        (
            "resize(x, mode=\"cubic\", size=[2, 2])",
            "expected one of \"bilinear\", \"nearest\"",
        ),
        ("flatten(x, axis=5)", "axis 5 is out of range for rank 4"),
        (
            "global_avg_pool2d(m)",
            "takes an input [batch, channels, height, width]",
        ),
    ];
    for (call, message) in cases {
        let text = format!(
            "model m {{\n  input x: f32[n, 4, 9, 7]\n  input w: f32[6, 4, 3, 3]\n  input v: f32[6, 2, 3, 3]\n  \
             input m: f32[4]\n  input b: f32[5]\n  output y = {call}\n}}\n"
        );
        let err = Model::from_source("m.lam", text).expect_err(call);
        let shown = err.to_string();
        assert!(shown.contains(message), "{call}: {shown}");
        assert!(
            shown.starts_with("m.lam:7:"),
            "{call}: not located at the call: {shown}"
        );
    }
}

/// Symbolic batch works everywhere; symbolic height and width only where
/// the output size is the input size, else a located error says why.
#[test]
fn symbolic_batch_and_spatial_sizes() {
    let ok = "model m {\n  input x: f32[n, 4, h, w]\n  input k: f32[4, 4, 3, 3]\n  \
              y = conv2d(x, k, padding=\"same\")\n  z = conv2d(y, k, padding=1)\n  \
              output out = flatten(global_avg_pool2d(relu6(z)))\n}\n";
    let model = Model::from_source("ok.lam", ok).unwrap_or_else(|e| panic!("{e}"));
    let session = model
        .compile(Weights::None, &Options::default())
        .unwrap_or_else(|e| panic!("{e}"));
    for (n, h, w) in [(1, 5, 6), (3, 8, 3)] {
        let x = Tensor::f32(vec![n, 4, h, w], vec![0.5; n * 4 * h * w]);
        let k = Tensor::f32(vec![4, 4, 3, 3], vec![0.1; 144]);
        let inputs = HashMap::from([("x".to_string(), x), ("k".to_string(), k)]);
        let out = session.run(&inputs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out[0].1.shape(), &[n, 4]);
    }
    let bad = "model m {\n  input x: f32[n, 4, h, 7]\n  input k: f32[4, 4, 3, 3]\n  \
               output y = conv2d(x, k, stride=2)\n}\n";
    let err = Model::from_source("bad.lam", bad).unwrap_err().to_string();
    assert!(
        err.contains("the input's height is the symbol `h`"),
        "{err}"
    );
    assert!(err.starts_with("bad.lam:4:14:"), "{err}");
}
