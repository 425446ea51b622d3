//! What the shape rules of every op share: the error type, numpy
//! broadcasting, operand checks and the size check.

use super::super::dim;
use super::super::graph::TensorType;
use super::super::{DType, Dim};

/// Why an op cannot take the operands it was given. The caller adds the op
/// name and source span.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

pub fn err<T>(msg: impl Into<String>) -> Result<T, ShapeError> {
    Err(ShapeError(msg.into()))
}

pub fn show(ty: &TensorType) -> String {
    ty.to_string()
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

pub fn broadcast_all(op: &str, inputs: &[&TensorType]) -> Result<Vec<Dim>, ShapeError> {
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

pub fn expect_dtype(op: &str, what: &str, ty: &TensorType, dtype: DType) -> Result<(), ShapeError> {
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

pub fn expect_axis(op: &str, axis: usize, ty: &TensorType) -> Result<(), ShapeError> {
    if axis >= ty.rank() {
        return err(format!(
            "{op}: axis {axis} is out of range for {}",
            show(ty)
        ));
    }
    Ok(())
}

/// The shape of `a @ b` with optional transposes of the last two axes.
pub fn matmul_shape(
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
pub fn add_dims(a: &Dim, b: &Dim) -> Option<Dim> {
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
    if dim::checked_bytes(&factors, ty.dtype.size_bytes()).is_none() {
        return err(format!(
            "{} is too large: it needs more than {} bytes, the most one tensor can have",
            show(ty),
            dim::MAX_TENSOR_BYTES
        ));
    }
    Ok(())
}

/// `OpKind::keeps_samples` of ops whose operands broadcast against each
/// other (elementwise ops): some operand is batched and each fits
/// [`operand_keeps_samples`] at the operands' largest rank.
pub fn broadcast_keeps_samples<'t>(
    operands: impl IntoIterator<Item = (&'t TensorType, bool)>,
) -> bool {
    let operands: Vec<(&TensorType, bool)> = operands.into_iter().collect();
    let rank = operands
        .iter()
        .map(|(t, _)| t.shape.len())
        .max()
        .unwrap_or(0);
    operands.iter().any(|&(_, batched)| batched)
        && operands
            .iter()
            .all(|&(t, batched)| operand_keeps_samples(t, batched, rank))
}

/// Whether an operand broadcast into an output of rank `rank` keeps the
/// samples apart: a batched one has that rank (its axis 0 is the
/// output's); a shared one is shorter or has a size-1 axis 0.
pub fn operand_keeps_samples(t: &TensorType, batched: bool, rank: usize) -> bool {
    if batched {
        rank > 0 && t.shape.len() == rank
    } else {
        t.shape.len() < rank || t.shape.first() == Some(&Dim::known(1))
    }
}

/// `OpKind::keeps_samples` of ops with one batched operand, `samples`,
/// whose other operands are shared (weights, statistics, bounds).
pub fn only_keeps_samples(batched: &[bool], samples: usize) -> bool {
    batched
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i == samples))
}
