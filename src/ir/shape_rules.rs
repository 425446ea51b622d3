//! Every op's type rule, in one place.
//!
//! `infer` works on symbolic and on concrete dims alike, so the same rule
//! checks a model at compile time and sizes buffers at run time.

use super::graph::{ShapeDisplay, TensorType};
use super::op::{ExprStep, Op};
use super::{DType, Dim};

/// Why an op cannot take the operands it was given. The caller adds the op
/// name and source span.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ShapeError> {
    Err(ShapeError(msg.into()))
}

fn show(ty: &TensorType) -> String {
    ty.to_string()
}

/// How many operands an op takes: `(min, max)`.
pub fn arity(op: &Op) -> (usize, usize) {
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => (0, 0),
        Op::Unary(_)
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::Reduce { .. }
        | Op::Permute { .. }
        | Op::Reshape { .. }
        | Op::Slice { .. }
        | Op::Broadcast { .. }
        | Op::Cast { .. } => (1, 1),
        Op::Binary(_) | Op::Compare(_) | Op::MatMul { .. } | Op::Gather { .. } => (2, 2),
        Op::Where | Op::LayerNorm { .. } | Op::ScatterAdd { .. } => (3, 3),
        Op::Concat { .. } => (1, usize::MAX),
        Op::FusedLinear { epilogue, .. } => {
            let n = 2 + epilogue.bias as usize + epilogue.residual as usize;
            (n, n)
        }
        Op::FusedElementwise { expr } => {
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

/// numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i + a.len()).checked_sub(rank).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(rank).map(|j| &b[j]);
        let d = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) if y.is_one() => x.clone(),
            _ => return None,
        };
        out.push(d);
    }
    Some(out)
}

fn broadcast_all(op: &str, inputs: &[&TensorType]) -> Result<Vec<Dim>, ShapeError> {
    let mut shape: Vec<Dim> = Vec::new();
    for ty in inputs {
        shape = match broadcast_shapes(&shape, &ty.shape) {
            Some(s) => s,
            None => {
                let all: Vec<String> = inputs.iter().map(|t| show(t)).collect();
                return err(format!(
                    "{op}: shapes {} do not broadcast",
                    all.join(" and ")
                ));
            }
        };
    }
    Ok(shape)
}

fn expect_dtype(op: &str, what: &str, ty: &TensorType, dtype: DType) -> Result<(), ShapeError> {
    if ty.dtype != dtype {
        return err(format!(
            "{op}: {what} must be {dtype}, got {}{}",
            show(ty),
            if dtype == DType::F32 && ty.dtype.is_integer() {
                " (convert with cast(x, f32))"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

fn expect_axis(op: &str, axis: usize, ty: &TensorType) -> Result<(), ShapeError> {
    if axis >= ty.rank() {
        return err(format!(
            "{op}: axis {axis} is out of range for {}",
            show(ty)
        ));
    }
    Ok(())
}

/// The shape of `a @ b` with optional transposes of the last two axes.
fn matmul_shape(
    a: &TensorType,
    b: &TensorType,
    ta: bool,
    tb: bool,
) -> Result<Vec<Dim>, ShapeError> {
    if a.rank() < 2 || b.rank() < 2 {
        return err(format!(
            "matmul: operands need rank >= 2, got {} and {} (reshape a vector to [1, n] or [n, 1])",
            show(a),
            show(b)
        ));
    }
    let last2 = |t: &TensorType, tr: bool| {
        let (r, c) = (t.shape[t.rank() - 2].clone(), t.shape[t.rank() - 1].clone());
        if tr {
            (c, r)
        } else {
            (r, c)
        }
    };
    let (m, ka) = last2(a, ta);
    let (kb, n) = last2(b, tb);
    if ka != kb {
        return err(format!(
            "matmul: inner dimensions differ: {} @ {}{}{} ({ka} vs {kb})",
            show(a),
            show(b),
            if ta { " with a transposed" } else { "" },
            if tb { " with b transposed" } else { "" },
        ));
    }
    let batch_a = &a.shape[..a.rank() - 2];
    let batch_b = &b.shape[..b.rank() - 2];
    let Some(mut shape) = broadcast_shapes(batch_a, batch_b) else {
        return err(format!(
            "matmul: batch dimensions of {} and {} do not broadcast",
            show(a),
            show(b)
        ));
    };
    shape.push(m);
    shape.push(n);
    Ok(shape)
}

/// Sum of dims along a concat axis: exact for known sizes and for
/// multiples of the same symbols (`seq + seq = 2*seq`).
fn add_dims(a: &Dim, b: &Dim) -> Option<Dim> {
    if let (Some(x), Some(y)) = (a.as_known(), b.as_known()) {
        return x.checked_add(y).map(Dim::known);
    }
    if a.symbols() != b.symbols() {
        return None;
    }
    let unit = a.div(&Dim::known(a.factor()))?;
    unit.checked_mul(&Dim::known(a.factor().checked_add(b.factor())?))
}

/// Checks that a tensor of this type can exist: every byte count fits in
/// memory's address range. For symbolic dims only the known factors can be
/// checked (a symbol bound to 0 empties the tensor; zero dims are skipped,
/// as numpy does); the concrete graph is checked again after binding.
pub fn check_size(ty: &TensorType) -> Result<(), ShapeError> {
    let factors: Vec<usize> = ty.shape.iter().map(Dim::factor).collect();
    if super::dim::checked_bytes(&factors, ty.dtype.size_bytes()).is_none() {
        return err(format!(
            "{} is too large: it needs more than {} bytes, the most one tensor can have",
            show(ty),
            super::dim::MAX_TENSOR_BYTES
        ));
    }
    Ok(())
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
    match op {
        Op::Input { .. } | Op::Param { .. } => {
            err(format!("{name} has a declared type, not an inferred one"))
        }
        Op::Constant { value } => Ok(TensorType::new(
            value.dtype(),
            value.shape().iter().map(|&d| Dim::known(d)).collect(),
        )),
        Op::Unary(_) | Op::Softmax { .. } | Op::LogSoftmax { .. } => {
            let x = inputs[0];
            expect_dtype(name, "operand", x, DType::F32)?;
            if let Op::Softmax { axis } | Op::LogSoftmax { axis } = op {
                expect_axis(name, *axis, x)?;
            }
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
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            expect_dtype(name, "a", inputs[0], DType::F32)?;
            expect_dtype(name, "b", inputs[1], DType::F32)?;
            Ok(TensorType::new(
                DType::F32,
                matmul_shape(inputs[0], inputs[1], *transpose_a, *transpose_b)?,
            ))
        }
        Op::FusedLinear {
            transpose_b,
            epilogue,
        } => {
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
        Op::LayerNorm { axis, .. } => {
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
        Op::Reduce { axes, keepdims, .. } => {
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
        Op::Permute { perm } => {
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
        Op::Reshape { shape } => {
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
        Op::Concat { axis } => {
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
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
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
        Op::Gather { axis } => {
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
        Op::Cast { to } => Ok(TensorType::new(*to, inputs[0].shape.clone())),
        Op::Broadcast { shape } => {
            let x = inputs[0];
            if broadcast_shapes(&x.shape, shape).as_deref() != Some(shape.as_slice()) {
                return err(format!(
                    "broadcast_to: {} does not broadcast to {}",
                    show(x),
                    ShapeDisplay(shape)
                ));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::ScatterAdd { axis } => {
            let (base, ids, updates) = (inputs[0], inputs[1], inputs[2]);
            expect_dtype(name, "base", base, DType::F32)?;
            expect_dtype(name, "updates", updates, DType::F32)?;
            expect_axis(name, *axis, base)?;
            if !ids.dtype.is_integer() {
                return err(format!(
                    "scatter_add: ids must be integers (i64 or i32), got {}",
                    show(ids)
                ));
            }
            let mut want = base.shape[..*axis].to_vec();
            want.extend(ids.shape.iter().cloned());
            want.extend(base.shape[axis + 1..].iter().cloned());
            if updates.shape != want {
                return err(format!(
                    "scatter_add: updates must be {} (base[..axis] ++ ids ++ base[axis+1..]), got {}",
                    ShapeDisplay(&want),
                    show(updates)
                ));
            }
            Ok(base.clone())
        }
        Op::FusedElementwise { expr } => {
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
    use crate::ir::op::{BinaryOp, Op};

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
            &Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[&t(&["batch", "784"]), &t(&["784", "512"])],
        )
        .unwrap();
        assert_eq!(out.to_string(), "f32[batch, 512]");
    }

    #[test]
    fn matmul_mismatch_names_both_shapes() {
        let e = infer(
            &Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
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
        let ok = Op::Reshape {
            shape: vec![
                Dim::symbol("batch"),
                Dim::symbol("seq"),
                Dim::known(12),
                Dim::known(32),
            ],
        };
        assert_eq!(
            infer(&ok, &[&x]).unwrap().to_string(),
            "f32[batch, seq, 12, 32]"
        );
        let bad = Op::Reshape {
            shape: vec![Dim::symbol("batch"), Dim::known(384)],
        };
        assert!(infer(&bad, &[&x]).is_err());
    }
}
