//! Ops added by following docs/adding-an-op.md, end to end through the
//! engine on both backends: `sin` and `cos`, in the language reference's
//! sinusoidal position code example.

use std::collections::HashMap;

use lamina::engine::{Backend, Model, Options, Weights};
use lamina::tensor::Tensor;

/// The model of the `sin`/`cos` example in docs/language.md.
const POSITIONS: &str = "
model positions {
  input pos: f32[seq, 1]
  param freq: f32[1, 32]
  angle = pos @ freq
  output code = concat(sin(angle), cos(angle), axis=-1)
}
";

fn run(backend: Backend, pos: &Tensor, freq: &Tensor) -> Tensor {
    let model = Model::from_source("positions.lam", POSITIONS).unwrap_or_else(|e| panic!("{e}"));
    let weights = Weights::Tensors(HashMap::from([("freq".to_string(), freq.clone())]));
    let options = Options {
        backend,
        ..Options::default()
    };
    let session = model
        .compile(weights, &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outputs = session
        .run(&HashMap::from([("pos".to_string(), pos.clone())]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outputs.len(), 1);
    outputs.remove(0).1
}

#[test]
fn sin_and_cos_match_f64_on_both_backends() {
    let seq = 50;
    // Positions 0..49 and frequencies 1e-4..1: angles from 0 to about 49
    // radians, several periods.
    let pos: Vec<f32> = (0..seq).map(|p| p as f32).collect();
    let freq: Vec<f32> = (0..32)
        .map(|i| 10f32.powf(-4.0 * i as f32 / 31.0))
        .collect();
    let pos_t = Tensor::f32(vec![seq, 1], pos.clone());
    let freq_t = Tensor::f32(vec![1, 32], freq.clone());
    for backend in [Backend::Interp, Backend::Jit] {
        let out = run(backend, &pos_t, &freq_t);
        assert_eq!(out.shape(), &[seq, 64]);
        let values = out.as_f32().expect("f32 output");
        for p in 0..seq {
            for i in 0..32 {
                // A product of two f32 rounded once, as a k = 1 matmul gives it.
                let angle = f64::from(pos[p] * freq[i]);
                for (column, expected) in [(i, angle.sin()), (32 + i, angle.cos())] {
                    let got = f64::from(values[p * 64 + column]);
                    let tolerance = 1e-6 + 1e-6 * expected.abs();
                    assert!(
                        (got - expected).abs() <= tolerance,
                        "{}: position {p}, column {column}: {got} vs {expected}",
                        backend.name()
                    );
                }
            }
        }
    }
}

#[test]
fn sin_and_cos_are_builtins_with_one_tensor_argument() {
    let bad = "model m {\n  input x: f32[3]\n  output y = sin(x, x)\n}\n";
    let err = Model::from_source("bad.lam", bad).unwrap_err().to_string();
    assert!(err.contains("sin"), "{err}");
    let unknown = "model m {\n  input x: f32[3]\n  output y = sine(x)\n}\n";
    let err = Model::from_source("bad.lam", unknown)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("did you mean") && err.contains("`sin`"),
        "{err}"
    );
}
