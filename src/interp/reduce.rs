//! Ops that combine elements along axes: softmax, log_softmax, layer_norm
//! and the sum/mean/max reductions. Statistics are accumulated in f64 and
//! each output rounded once to f32, so the oracle is at least as accurate as
//! the fast paths it checks.

use crate::ir::ReduceOp;
use crate::tensor::{strides, Tensor};

use super::InterpError;
use crate::ir::ops::math::nan_max;
use crate::ir::ops::values::{elements, StridedOffsets};

/// For every lane along `axis` (all positions that differ only in their
/// `axis` index), the offsets of that lane's elements in order.
fn lanes(shape: &[usize], axis: usize) -> impl Iterator<Item = StridedOffsets> {
    let own = strides(shape);
    let (len, stride) = (shape[axis], own[axis]);
    let mut other_shape = shape.to_vec();
    let mut other_strides = own;
    other_shape.remove(axis);
    other_strides.remove(axis);
    StridedOffsets::new(&other_shape, &other_strides, 0)
        .map(move |start| StridedOffsets::new(&[len], &[stride], start))
}

/// Max of a lane (NaN if any element is NaN, -inf for an empty lane).
fn lane_max(values: &[f32], lane: StridedOffsets) -> f64 {
    lane.fold(f64::NEG_INFINITY, |m, o| nan_max(m, f64::from(values[o])))
}

/// Max-subtracted: exp(x - max) / sum exp(x - max), which cannot overflow.
/// A lane holding NaN, or only -inf, gives NaN like numpy.
pub fn softmax(x: &Tensor, axis: usize) -> Result<Tensor, InterpError> {
    let values = elements::<f32>("softmax", x)?;
    let mut out = vec![0.0f32; values.len()];
    for lane in lanes(x.shape(), axis) {
        let max = lane_max(values, lane.clone());
        let sum: f64 = lane
            .clone()
            .map(|o| (f64::from(values[o]) - max).exp())
            .sum();
        for o in lane {
            out[o] = ((f64::from(values[o]) - max).exp() / sum) as f32;
        }
    }
    Ok(Tensor::f32(x.shape().to_vec(), out))
}

/// x - max - ln(sum exp(x - max)).
pub fn log_softmax(x: &Tensor, axis: usize) -> Result<Tensor, InterpError> {
    let values = elements::<f32>("log_softmax", x)?;
    let mut out = vec![0.0f32; values.len()];
    for lane in lanes(x.shape(), axis) {
        let max = lane_max(values, lane.clone());
        let log_sum = lane
            .clone()
            .map(|o| (f64::from(values[o]) - max).exp())
            .sum::<f64>()
            .ln();
        for o in lane {
            out[o] = (f64::from(values[o]) - max - log_sum) as f32;
        }
    }
    Ok(Tensor::f32(x.shape().to_vec(), out))
}

/// PyTorch's layer norm: (x - mean) / sqrt(var + eps) * gain + bias, with
/// the biased variance (divide by n) and eps inside the square root.
pub fn layer_norm(
    x: &Tensor,
    gain: &Tensor,
    bias: &Tensor,
    axis: usize,
    eps: f32,
) -> Result<Tensor, InterpError> {
    let values = elements::<f32>("layer_norm", x)?;
    let (gains, biases) = (
        elements::<f32>("layer_norm", gain)?,
        elements::<f32>("layer_norm", bias)?,
    );
    let eps = f64::from(eps);
    let mut out = vec![0.0f32; values.len()];
    for lane in lanes(x.shape(), axis) {
        let n = lane.len() as f64;
        let mean = lane.clone().map(|o| f64::from(values[o])).sum::<f64>() / n;
        // Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2,
        // which cancels badly when the mean is large against the spread.
        let variance = lane
            .clone()
            .map(|o| (f64::from(values[o]) - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv_std = 1.0 / (variance + eps).sqrt();
        for (i, o) in lane.enumerate() {
            let normalised = (f64::from(values[o]) - mean) * inv_std;
            out[o] = (normalised * f64::from(gains[i]) + f64::from(biases[i])) as f32;
        }
    }
    Ok(Tensor::f32(x.shape().to_vec(), out))
}

/// Sum, mean or max over `axes`. An empty `axes` reduces nothing (numpy's
/// `axis=()`); an empty reduced axis gives 0 for sum, NaN for mean (0/0) and
/// an error for max, which has no identity.
pub fn reduce(
    op: ReduceOp,
    x: &Tensor,
    axes: &[usize],
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let values = elements::<f32>(op.name(), x)?;
    // The output with reduced axes kept as size 1; reading it with stride 0
    // on those axes maps each input position to the output it folds into.
    let kept_shape: Vec<usize> = (0..x.shape().len())
        .map(|axis| {
            if axes.contains(&axis) {
                1
            } else {
                x.shape()[axis]
            }
        })
        .collect();
    let mut fold_strides = strides(&kept_shape);
    for &axis in axes {
        fold_strides[axis] = 0;
    }
    let out_len: usize = kept_shape.iter().product();
    let count: usize = axes.iter().map(|&axis| x.shape()[axis]).product();
    if op == ReduceOp::Max && count == 0 && out_len > 0 {
        let axis = axes
            .iter()
            .copied()
            .find(|&a| x.shape()[a] == 0)
            .unwrap_or(0);
        return Err(crate::ir::ops::EvalError::EmptyMax { axis }.into());
    }
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
    };
    let mut accumulators = vec![init; out_len];
    for (&value, target) in values
        .iter()
        .zip(StridedOffsets::new(x.shape(), &fold_strides, 0))
    {
        let acc = &mut accumulators[target];
        *acc = match op {
            ReduceOp::Sum | ReduceOp::Mean => *acc + f64::from(value),
            ReduceOp::Max => nan_max(*acc, f64::from(value)),
        };
    }
    let out = accumulators
        .into_iter()
        .map(|acc| match op {
            ReduceOp::Sum | ReduceOp::Max => acc as f32,
            ReduceOp::Mean => (acc / count as f64) as f32,
        })
        .collect();
    Ok(Tensor::f32(out_shape.to_vec(), out))
}
