//! The entry point of every op's type rule: `infer` asks the op
//! ([`OpKind::infer`](super::ops::OpKind::infer), in the op's file), then
//! checks that the result is a size that can exist.
//!
//! `infer` works on symbolic and on concrete dims alike, so the same rule
//! checks a model at compile time and sizes buffers at run time.

use super::graph::TensorType;
use super::ops::shape::err;
pub use super::ops::shape::{broadcast_shapes, check_size, ShapeError};
use super::ops::Op;

/// How many operands an op takes: `(min, max)`.
pub fn arity(op: &Op) -> (usize, usize) {
    op.kind().arity()
}

/// The output type of `op` applied to `inputs`, checked to be a size that
/// can exist (see [`check_size`]).
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let ty = infer_unchecked(op, inputs)?;
    check_size(&ty).map_err(|e| ShapeError(format!("{}: the result {}", op.name(), e.0)))?;
    Ok(ty)
}

fn infer_unchecked(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let name = op.name();
    let (lo, hi) = arity(op);
    if inputs.len() < lo || inputs.len() > hi {
        let expected = if lo == hi {
            format!("{lo}")
        } else if hi == usize::MAX {
            format!("at least {lo}")
        } else {
            format!("{lo} to {hi}")
        };
        return err(format!(
            "{name} takes {expected} operand(s), got {}",
            inputs.len()
        ));
    }
    op.kind().infer(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::{BinaryOp, MatMul, Op, Reshape};
    use crate::ir::{DType, Dim};

    fn t(dims: &[&str]) -> TensorType {
        TensorType::new(
            DType::F32,
            dims.iter()
                .map(|d| d.parse().map(Dim::known).unwrap_or_else(|_| Dim::symbol(d)))
                .collect(),
        )
    }

    #[test]
    fn symbolic_matmul_propagates_batch() {
        let out = infer(
            &Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            &[&t(&["batch", "784"]), &t(&["784", "512"])],
        )
        .unwrap();
        assert_eq!(out.to_string(), "f32[batch, 512]");
    }

    #[test]
    fn matmul_mismatch_names_both_shapes() {
        let e = infer(
            &Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            &[&t(&["batch", "784"]), &t(&["100", "512"])],
        )
        .unwrap_err();
        assert!(
            e.0.contains("f32[batch, 784]") && e.0.contains("f32[100, 512]"),
            "{e}"
        );
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let out = infer(
            &Op::Binary(BinaryOp::Add),
            &[&t(&["b", "1", "4"]), &t(&["3", "1"])],
        )
        .unwrap();
        assert_eq!(out.to_string(), "f32[b, 3, 4]");
        assert!(infer(&Op::Binary(BinaryOp::Add), &[&t(&["b", "2"]), &t(&["3"])]).is_err());
    }

    #[test]
    fn reshape_checks_symbolic_element_count() {
        let x = t(&["batch", "seq", "384"]);
        let ok = Op::Reshape(Reshape {
            shape: vec![
                Dim::symbol("batch"),
                Dim::symbol("seq"),
                Dim::known(12),
                Dim::known(32),
            ],
        });
        assert_eq!(
            infer(&ok, &[&x]).unwrap().to_string(),
            "f32[batch, seq, 12, 32]"
        );
        let bad = Op::Reshape(Reshape {
            shape: vec![Dim::symbol("batch"), Dim::known(384)],
        });
        assert!(infer(&bad, &[&x]).is_err());
    }
}
