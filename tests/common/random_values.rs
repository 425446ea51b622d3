//! Seeded values for a graph's inputs and parameters when no file gives them:
//! shared by the tests that run a model on the interpreter before and after
//! passes (`filetests.rs`, `passes_models.rs`).

use lamina::ir::{Bindings, DType, Dim};
use lamina::tensor::{Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A size for a symbol nothing else fixes: small, and different per symbol
/// so that a rewrite that mixes up two dims shows.
pub fn symbol_size(symbol: &str) -> usize {
    match symbol {
        "batch" => 3,
        "seq" => 5,
        _ => 2 + symbol.len() % 3,
    }
}

/// `shape` with every symbol bound: from `bindings`, else [`symbol_size`]
/// (recorded in `bindings` so later shapes agree).
pub fn concrete(shape: &[Dim], bindings: &mut Bindings) -> Vec<usize> {
    shape
        .iter()
        .map(|d| {
            for s in d.symbols() {
                bindings.entry(s.clone()).or_insert_with(|| symbol_size(s));
            }
            d.substitute(bindings)
                .and_then(|d| d.as_known())
                .expect("every symbol has a size")
        })
        .collect()
}

/// Uniform f32 in [-1, 1); integers 0 or 1 (valid ids for any table of two or
/// more rows, and valid masks); random bools.
pub fn random_tensor(rng: &mut ChaCha8Rng, dtype: DType, shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    let data = match dtype {
        DType::F32 => TensorData::F32((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()),
        DType::I64 => TensorData::I64((0..n).map(|_| rng.random_range(0..2)).collect()),
        DType::I32 => TensorData::I32((0..n).map(|_| rng.random_range(0..2)).collect()),
        DType::Bool => TensorData::Bool((0..n).map(|_| rng.random_bool(0.5)).collect()),
    };
    Tensor::new(shape, data)
}
