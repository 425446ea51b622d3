//! Matrix products: `MatMul` and the `FusedLinear` a pass builds from it.

use std::borrow::Cow;

use crate::ir::{BinaryOp, LinearEpilogue};
use crate::tensor::Tensor;

use super::elementwise;
use super::layout::transpose_last_two;
use super::InterpError;
use crate::ir::ops::values::{broadcast_offsets, elements};

/// One `[m, k] @ [k, n]` product into `out`, in i-k-j order so the inner
/// loop runs over contiguous rows of `b` and `out`. Sums are accumulated in
/// f64 and rounded once, so the result is the correctly rounded dot product
/// in all but pathological cases: more accurate than any f32 fast path.
/// No term is skipped for a zero factor, so NaN and inf propagate.
fn matmul_block(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize, row_sums: &mut [f64]) {
    for (a_row, out_row) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        row_sums.fill(0.0);
        for (&a_ip, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            let a_ip = f64::from(a_ip);
            for (sum, &b_pj) in row_sums.iter_mut().zip(b_row) {
                *sum += a_ip * f64::from(b_pj);
            }
        }
        for (o, &sum) in out_row.iter_mut().zip(row_sums.iter()) {
            *o = sum as f32;
        }
    }
}

/// `a @ b` over the last two axes, the leading (batch) axes broadcast.
/// A transpose flag swaps that operand's last two axes first.
pub fn matmul(
    a: &Tensor,
    b: &Tensor,
    transpose_a: bool,
    transpose_b: bool,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let a = if transpose_a {
        Cow::Owned(transpose_last_two(a)?)
    } else {
        Cow::Borrowed(a)
    };
    let b = if transpose_b {
        Cow::Owned(transpose_last_two(b)?)
    } else {
        Cow::Borrowed(b)
    };
    let (a_values, b_values) = (
        elements::<f32>("matmul", &a)?,
        elements::<f32>("matmul", &b)?,
    );
    let (a_batch, a_matrix) = a.shape().split_at(a.shape().len() - 2);
    let (b_batch, b_matrix) = b.shape().split_at(b.shape().len() - 2);
    let out_batch = &out_shape[..out_shape.len() - 2];
    let (m, k, n) = (a_matrix[0], a_matrix[1], b_matrix[1]);

    let mut out = vec![0.0f32; out_shape.iter().product()];
    let mut row_sums = vec![0.0f64; n];
    // chunks_exact rejects a zero chunk size; with m, k or n zero the
    // zero-filled output is already the answer (an empty sum is 0).
    if m > 0 && k > 0 && n > 0 {
        let batches =
            broadcast_offsets(a_batch, out_batch).zip(broadcast_offsets(b_batch, out_batch));
        for ((a_index, b_index), out_block) in batches.zip(out.chunks_exact_mut(m * n)) {
            matmul_block(
                &a_values[a_index * m * k..(a_index + 1) * m * k],
                &b_values[b_index * k * n..(b_index + 1) * k * n],
                out_block,
                k,
                n,
                &mut row_sums,
            );
        }
    }
    Ok(Tensor::f32(out_shape.to_vec(), out))
}

/// `act(a @ b + bias) + residual`, computed as the unfused ops would be
/// (each step rounded to f32), so fusing changes no bit of the result.
pub fn fused_linear(
    inputs: &[&Tensor],
    transpose_b: bool,
    epilogue: &LinearEpilogue,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let mut y = matmul(inputs[0], inputs[1], false, transpose_b, out_shape)?;
    let mut next = 2;
    if epilogue.bias {
        y = elementwise::binary(BinaryOp::Add, &y, inputs[next], out_shape)?;
        next += 1;
    }
    if let Some(activation) = epilogue.activation {
        y = crate::ir::ops::OpKind::eval(&activation, &[&y], out_shape)?;
    }
    if epilogue.residual {
        y = elementwise::binary(BinaryOp::Add, &y, inputs[next], out_shape)?;
    }
    Ok(y)
}
