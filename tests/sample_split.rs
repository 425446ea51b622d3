//! Running a batch sample by sample (runtime/exec/samples.rs): which models
//! keep the samples of a batch apart (`OpKind::keeps_samples` over the whole
//! graph), and that running such a batch sample by sample, on one thread
//! or one sample per thread, gives the same bits as running it whole, and
//! the interpreter's values.

mod jit_support;

use std::collections::HashMap;

use jit_support::{compile_source, interpret_source, random_f32, rng, same_bits};
use lamina::ir::Bindings;
use lamina::runtime::exec::{CompileOptions, CompiledModel, SampleSplit};
use lamina::tensor::Tensor;

/// The model in `text` (parameters from its seeded initializers), through
/// every pass.
fn compile(text: &str, threads: usize, split: SampleSplit) -> CompiledModel {
    let mut model = compile_source(text, CompileOptions { threads, isa: None });
    model.set_sample_split(split);
    model
}

/// A small convolutional classifier in both layouts' worth of ops: NCHW
/// convolutions (made NHWC by the passes), a depthwise one, pooling, a
/// residual, global average pooling, a dense layer and softmax.
const CNN: &str = r#"
model cnn {
  input x: f32[batch, 3, 20, 20]
  param w1: f32[8, 3, 3, 3] = normal(std=0.3, seed=1)
  param b1: f32[8] = normal(std=0.1, seed=2)
  param dw: f32[8, 1, 3, 3] = normal(std=0.3, seed=3)
  param w2: f32[8, 8, 1, 1] = normal(std=0.3, seed=4)
  param fc: f32[8, 5] = normal(std=0.3, seed=5)
  h = relu6(conv2d(x, w1, b1, stride=2, padding="same"))
  d = relu(conv2d(h, dw, padding=1, groups=8))
  r = conv2d(d, w2) + h
  p = max_pool2d(r, kernel=2)
  f = reshape(mean(p, axis=[2, 3]), [batch, 8])
  output probs = softmax(f @ fc, axis=-1)
  output features = p
}
"#;

#[test]
fn a_cnn_keeps_samples_apart_and_runs_sample_by_sample_with_the_same_bits() {
    let mut r = rng(0x5a3e_0001);
    for batch in [1, 2, 3, 5] {
        let x = random_f32(&mut r, vec![batch, 3, 20, 20], -1.0, 1.0);
        let inputs = HashMap::from([("x".to_string(), x)]);
        let reference = interpret_source(CNN, &inputs);
        for threads in [1, 2] {
            let whole = compile(CNN, threads, SampleSplit::Never);
            let split = compile(CNN, threads, SampleSplit::Always);
            assert!(split.keeps_samples_apart());
            let expected = whole.run(&inputs).unwrap();
            let got = split.run(&inputs).unwrap();
            same_bits(
                &format!("batch {batch}, {threads} thread(s)"),
                &expected,
                &got,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            for ((name, value), (_, reference)) in got.iter().zip(&reference) {
                let diff = value
                    .to_f64_vec()
                    .iter()
                    .zip(reference.to_f64_vec())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(diff <= 1e-4, "{name}: batch {batch}: {diff:e}");
            }
            // Run again: the per-sample buffers are reused, not stale.
            let again = split.run(&inputs).unwrap();
            same_bits("second run", &got, &again).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn a_transformer_style_model_keeps_samples_apart() {
    let text = r#"
model attn {
  input x: f32[batch, seq, 16]
  input mask: f32[seq]
  param wq: f32[16, 16] = normal(std=0.2, seed=1)
  param g: f32[16] = ones
  param b: f32[16] = zeros
  q = x @ wq
  s = softmax(q @ transpose(x) + mask, axis=-1)
  output y = layer_norm(s @ x + x, g, b)
}
"#;
    let model = compile(text, 2, SampleSplit::Always);
    assert!(model.keeps_samples_apart());
    let mut r = rng(0x5a3e_0002);
    let inputs = HashMap::from([
        (
            "x".to_string(),
            random_f32(&mut r, vec![3, 7, 16], -1.0, 1.0),
        ),
        ("mask".to_string(), random_f32(&mut r, vec![7], -1.0, 0.0)),
    ]);
    let whole = compile(text, 2, SampleSplit::Never);
    same_bits(
        "attention",
        &whole.run(&inputs).unwrap(),
        &model.run(&inputs).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Lookalikes whose samples meet: the executor must run their batch whole.
#[test]
fn models_that_mix_samples_are_not_split() {
    let cases = [
        (
            "softmax over the batch",
            "input x: f32[batch, 4]\n  output y = softmax(x, axis=0)",
        ),
        (
            "a sum over the batch",
            "input x: f32[batch, 4]\n  output y = sum(x, axis=0, keepdims=true) + x",
        ),
        (
            "a product contracting the batch",
            "input x: f32[batch, 4]\n  output y = transpose(x) @ x",
        ),
        (
            "a reshape moving the batch",
            "input x: f32[batch, 4]\n  output y = reshape(x, [4, batch])",
        ),
        (
            "an output without the batch",
            "input x: f32[batch, 4]\n  output y = sum(x)",
        ),
        (
            "an input with the batch elsewhere",
            "input x: f32[batch, 4]\n  input m: f32[4, batch]\n  output y = x @ m",
        ),
        (
            "a mask shaped by the batch",
            "input x: f32[batch, 4]\n  input m: f32[batch]\n  output y = x + reshape(m, [batch, 1])",
        ),
    ];
    for (what, body) in cases {
        let text = format!("model m {{\n  {body}\n}}\n");
        let model = compile(&text, 1, SampleSplit::Always);
        if what == "a mask shaped by the batch" {
            // Batched on axis 0 like x: it does keep samples apart.
            assert!(model.keeps_samples_apart(), "{what}");
        } else {
            assert!(!model.keeps_samples_apart(), "{what}");
        }
    }
}

#[test]
fn a_wrong_input_shape_is_reported_before_any_sample_runs() {
    // An input of the wrong shape is caught before any sample runs; a
    // batch of one never splits.
    let model = compile(CNN, 2, SampleSplit::Always);
    let x = Tensor::zeros(lamina::ir::DType::F32, vec![2, 3, 21, 20]);
    let err = model
        .run(&HashMap::from([("x".to_string(), x)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("x"), "{err}");
}
