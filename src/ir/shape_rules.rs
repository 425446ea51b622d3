//! The entry point of every op's type rule: `infer` asks the op
//! ([`OpKind::infer`](super::ops::OpKind::infer), in the op's file), then
//! checks that the result is a size that can exist.
//!
//! `infer` works on symbolic and on concrete dims alike, so the same rule
//! checks a model at compile time and sizes buffers at run time.

use super::graph::{ShapeDisplay, TensorType};
use super::ops::shape::{
    add_dims, broadcast_all, err, expect_axis, expect_dtype, matmul_shape, show,
};
pub use super::ops::shape::{broadcast_shapes, check_size, ShapeError};
use super::ops::{ExprStep, Op};
use super::{DType, Dim};
use crate::ir::ops::{
    Cast, Concat, Constant, FusedElementwise, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul,
    Permute, Reduce, Reshape, Slice, Softmax,
};

/// How many operands an op takes: `(min, max)`.
pub fn arity(op: &Op) -> (usize, usize) {
    if let Some(kind) = op.kind() {
        return kind.arity();
    }
    match op {
        Op::Input(_) | Op::Param(_) | Op::Constant(_) => (0, 0),
        Op::Unary(_)
        | Op::Conv2d(_)
        | Op::Pool2d(_)
        | Op::BatchNorm(_)
        | Op::Clip(_)
        | Op::Pad(_)
        | Op::Resize(_) => unreachable!("registered in Op::kind"),
        Op::Softmax(_)
        | Op::LogSoftmax(_)
        | Op::Reduce(_)
        | Op::Permute(_)
        | Op::Reshape(_)
        | Op::Slice(_)
        | Op::Cast(_) => (1, 1),
        Op::Binary(_) | Op::Compare(_) | Op::MatMul(_) | Op::Gather(_) => (2, 2),
        Op::Where | Op::LayerNorm(_) => (3, 3),
        Op::Concat(_) => (1, usize::MAX),
        Op::FusedLinear(FusedLinear { epilogue, .. }) => {
            let n = 2 + epilogue.bias as usize + epilogue.residual as usize;
            (n, n)
        }
        Op::FusedElementwise(FusedElementwise { expr }) => {
            let n = expr
                .steps
                .iter()
                .filter_map(|s| match s {
                    ExprStep::Input(i) => Some(i + 1),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            (n, n)
        }
    }
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
    if let Some(kind) = op.kind() {
        return kind.infer(inputs);
    }
    match op {
        Op::Unary(_)
        | Op::Conv2d(_)
        | Op::Pool2d(_)
        | Op::BatchNorm(_)
        | Op::Clip(_)
        | Op::Pad(_)
        | Op::Resize(_) => unreachable!("registered in Op::kind"),
        Op::Input(_) | Op::Param(_) => {
            err(format!("{name} has a declared type, not an inferred one"))
        }
        Op::Constant(Constant { value }) => Ok(TensorType::new(
            value.dtype(),
            value.shape().iter().map(|&d| Dim::known(d)).collect(),
        )),
        Op::Softmax(Softmax { axis }) | Op::LogSoftmax(LogSoftmax { axis }) => {
            let x = inputs[0];
            expect_dtype(name, "operand", x, DType::F32)?;
            expect_axis(name, *axis, x)?;
            Ok(x.clone())
        }
        Op::Binary(_) => {
            for x in inputs {
                expect_dtype(name, "operand", x, DType::F32)?;
            }
            Ok(TensorType::new(DType::F32, broadcast_all(name, inputs)?))
        }
        Op::Compare(_) => {
            if inputs[0].dtype != inputs[1].dtype {
                return err(format!(
                    "{name}: operands have different dtypes: {} and {}",
                    show(inputs[0]),
                    show(inputs[1])
                ));
            }
            Ok(TensorType::new(DType::Bool, broadcast_all(name, inputs)?))
        }
        Op::Where => {
            expect_dtype(name, "condition", inputs[0], DType::Bool)?;
            if inputs[1].dtype != inputs[2].dtype {
                return err(format!(
                    "where: branches have different dtypes: {} and {}",
                    show(inputs[1]),
                    show(inputs[2])
                ));
            }
            Ok(TensorType::new(
                inputs[1].dtype,
                broadcast_all(name, inputs)?,
            ))
        }
        Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        }) => {
            expect_dtype(name, "a", inputs[0], DType::F32)?;
            expect_dtype(name, "b", inputs[1], DType::F32)?;
            Ok(TensorType::new(
                DType::F32,
                matmul_shape(inputs[0], inputs[1], *transpose_a, *transpose_b)?,
            ))
        }
        Op::FusedLinear(FusedLinear {
            transpose_b,
            epilogue,
        }) => {
            expect_dtype(name, "a", inputs[0], DType::F32)?;
            expect_dtype(name, "b", inputs[1], DType::F32)?;
            let shape = matmul_shape(inputs[0], inputs[1], false, *transpose_b)?;
            let n = shape.last().expect("matmul rank >= 2").clone();
            let mut next = 2;
            if epilogue.bias {
                let bias = inputs[next];
                next += 1;
                if bias.shape != [n.clone()] {
                    return err(format!(
                        "fused_linear: bias must be [{n}], got {}",
                        show(bias)
                    ));
                }
            }
            if epilogue.residual {
                let residual = inputs[next];
                if residual.shape != shape {
                    return err(format!(
                        "fused_linear: residual must be {}, got {}",
                        ShapeDisplay(&shape),
                        show(residual)
                    ));
                }
            }
            Ok(TensorType::new(DType::F32, shape))
        }
        Op::LayerNorm(LayerNorm { axis, .. }) => {
            let (x, gain, bias) = (inputs[0], inputs[1], inputs[2]);
            for t in inputs {
                expect_dtype(name, "operand", t, DType::F32)?;
            }
            expect_axis(name, *axis, x)?;
            if *axis + 1 != x.rank() {
                return err(format!(
                    "layer_norm: only the last axis can be normalised, got axis {axis} of {}",
                    show(x)
                ));
            }
            let want = vec![x.shape[*axis].clone()];
            for (what, t) in [("gain", gain), ("bias", bias)] {
                if t.shape != want {
                    return err(format!(
                        "layer_norm: {what} must be {} to match {}, got {}",
                        ShapeDisplay(&want),
                        show(x),
                        show(t)
                    ));
                }
            }
            Ok(x.clone())
        }
        Op::Reduce(Reduce { axes, keepdims, .. }) => {
            let x = inputs[0];
            expect_dtype(name, "operand", x, DType::F32)?;
            let mut seen = vec![false; x.rank()];
            for &a in axes {
                expect_axis(name, a, x)?;
                if std::mem::replace(&mut seen[a], true) {
                    return err(format!("{name}: axis {a} is listed twice"));
                }
            }
            let shape = x
                .shape
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match (seen[i], keepdims) {
                    (false, _) => Some(d.clone()),
                    (true, true) => Some(Dim::known(1)),
                    (true, false) => None,
                })
                .collect();
            Ok(TensorType::new(DType::F32, shape))
        }
        Op::Permute(Permute { perm }) => {
            let x = inputs[0];
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.rank()).collect::<Vec<_>>() {
                return err(format!(
                    "permute: {perm:?} is not a permutation of the axes of {}",
                    show(x)
                ));
            }
            Ok(TensorType::new(
                x.dtype,
                perm.iter().map(|&p| x.shape[p].clone()).collect(),
            ))
        }
        Op::Reshape(Reshape { shape }) => {
            let x = inputs[0];
            let (Some(from), Some(to)) =
                (super::dim::product(&x.shape), super::dim::product(shape))
            else {
                return err(format!(
                    "reshape: {} or {} has more elements than fit in memory",
                    show(x),
                    ShapeDisplay(shape)
                ));
            };
            if from != to {
                return err(format!(
                    "reshape: cannot reshape {} ({from} elements) to {} ({to} elements)",
                    show(x),
                    ShapeDisplay(shape)
                ));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Concat(Concat { axis }) => {
            let first = inputs[0];
            expect_axis(name, *axis, first)?;
            let mut total = first.shape[*axis].clone();
            for t in &inputs[1..] {
                let same_rest = t.rank() == first.rank()
                    && t.dtype == first.dtype
                    && (0..t.rank()).all(|i| i == *axis || t.shape[i] == first.shape[i]);
                if !same_rest {
                    return err(format!(
                        "concat: {} and {} differ outside axis {axis}",
                        show(first),
                        show(t)
                    ));
                }
                total = add_dims(&total, &t.shape[*axis]).ok_or_else(|| {
                    ShapeError(format!(
                        "concat: cannot add sizes {total} and {} along axis {axis}",
                        t.shape[*axis]
                    ))
                })?;
            }
            let mut shape = first.shape.clone();
            shape[*axis] = total;
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::Slice(Slice {
            axis,
            start,
            end,
            step,
        }) => {
            let x = inputs[0];
            expect_axis(name, *axis, x)?;
            if *step == 0 {
                return err("slice: step must be at least 1");
            }
            let len = match (end.as_known(), x.shape[*axis].as_known()) {
                (Some(e), size) => {
                    if let Some(size) = size {
                        if e > size {
                            return err(format!(
                                "slice: end {e} is past the size {size} of axis {axis} of {}",
                                show(x)
                            ));
                        }
                    }
                    if e < *start {
                        return err(format!("slice: end {e} is before start {start}"));
                    }
                    Dim::known((e - start).div_ceil(*step))
                }
                (None, _) if *start == 0 && *step == 1 => end.clone(),
                (None, _) => {
                    return err(format!(
                        "slice: a symbolic end ({end}) needs start 0 and step 1"
                    ))
                }
            };
            let mut shape = x.shape.clone();
            shape[*axis] = len;
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Gather(Gather { axis }) => {
            let (table, ids) = (inputs[0], inputs[1]);
            expect_axis(name, *axis, table)?;
            if !ids.dtype.is_integer() {
                return err(format!(
                    "gather: ids must be integers (i64 or i32), got {}",
                    show(ids)
                ));
            }
            let mut shape = table.shape[..*axis].to_vec();
            shape.extend(ids.shape.iter().cloned());
            shape.extend(table.shape[axis + 1..].iter().cloned());
            Ok(TensorType::new(table.dtype, shape))
        }
        Op::Cast(Cast { to }) => Ok(TensorType::new(*to, inputs[0].shape.clone())),
        Op::FusedElementwise(FusedElementwise { expr }) => {
            let shape = broadcast_all(name, inputs)?;
            let mut dtypes: Vec<DType> = Vec::with_capacity(expr.steps.len());
            for step in &expr.steps {
                let d = match step {
                    ExprStep::Input(i) => inputs[*i].dtype,
                    ExprStep::Const(_) | ExprStep::Unary(..) | ExprStep::Binary(..) => DType::F32,
                    ExprStep::Compare(..) => DType::Bool,
                    ExprStep::Where(_, a, _) => dtypes[*a],
                };
                dtypes.push(d);
            }
            let dtype = *dtypes
                .last()
                .ok_or_else(|| ShapeError("fused_elementwise: empty expression".into()))?;
            Ok(TensorType::new(dtype, shape))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ops::{BinaryOp, Op};

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
