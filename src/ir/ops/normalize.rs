//! Normalisations along one axis: `softmax`, `log_softmax`, `layer_norm`.

use super::math::nan_max;
use super::shape::{err, expect_axis, expect_dtype, only_keeps_samples, show, ShapeError};
use super::values::{elements, StridedOffsets};
use super::{BinaryOp, ReduceOp, UnaryOp};
use super::{Builtin, CallArgs, EvalError, Float, NodeId, Op, OpKind, Poisoned};
use crate::ir::graph::ShapeDisplay;
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, TensorType};
use crate::tensor::{strides, Tensor};

/// `softmax(x, axis)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Softmax {
    pub axis: usize,
}

/// `log_softmax(x, axis)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogSoftmax {
    pub axis: usize,
}

/// `layer_norm(x, gain, bias)`: normalise over `axis` (the last axis),
/// gain and bias have that axis's length.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerNorm {
    pub axis: usize,
    pub eps: Float,
}

/// The shape rule of softmax and log_softmax: an f32 operand, an axis in range.
fn along_axis(name: &str, axis: usize, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let x = inputs[0];
    expect_dtype(name, "operand", x, DType::F32)?;
    expect_axis(name, axis, x)?;
    Ok(x.clone())
}

impl OpKind for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        self.axis != 0
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        along_axis(self.name(), self.axis, inputs)
    }

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        softmax(inputs[0], self.axis)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }

    /// y (g - sum(g y)) along the axis.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        _inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        // dx = y * (g - sum(g * y))
        let gy = cx.mul(g, node)?;
        let s = cx.reduce(ReduceOp::Sum, gy, vec![self.axis], true)?;
        let centred = cx.binary(BinaryOp::Sub, g, s)?;
        Ok(vec![Some(cx.mul(node, centred)?)])
    }
}

impl OpKind for LogSoftmax {
    fn name(&self) -> &'static str {
        "log_softmax"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        self.axis != 0
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        along_axis(self.name(), self.axis, inputs)
    }

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        log_softmax(inputs[0], self.axis)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }

    /// g - softmax(x) sum(g) along the axis.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        node: NodeId,
        _inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        // dx = g - softmax(x) * sum(g)
        let p = cx.add(Op::Unary(UnaryOp::Exp), &[node])?;
        let s = cx.reduce(ReduceOp::Sum, g, vec![self.axis], true)?;
        let ps = cx.mul(p, s)?;
        Ok(vec![Some(cx.binary(BinaryOp::Sub, g, ps)?)])
    }
}

impl OpKind for LayerNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn arity(&self) -> (usize, usize) {
        (3, 3)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = inputs;
        self.axis != 0 && only_keeps_samples(batched, 0)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let (x, gain, bias) = (inputs[0], inputs[1], inputs[2]);
        for t in inputs {
            expect_dtype("layer_norm", "operand", t, DType::F32)?;
        }
        let axis = self.axis;
        expect_axis("layer_norm", axis, x)?;
        if axis + 1 != x.rank() {
            return err(format!(
                "layer_norm: only the last axis can be normalised, got axis {axis} of {}",
                show(x)
            ));
        }
        let want = vec![x.shape[axis].clone()];
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

    fn eval(&self, inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        layer_norm(inputs[0], inputs[1], inputs[2], self.axis, self.eps.0)
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("eps", self.eps.to_string()),
        ]
    }

    /// See `layer_norm_vjp`.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        layer_norm_vjp(cx, inputs, self.axis, self.eps.0, g, wants)
    }
}

/// `softmax(x, axis=-1)`, `log_softmax(x, axis=-1)`,
/// `layer_norm(x, gain, bias, axis=-1, eps=1e-5)`.
pub const BUILTIN: Builtin = Builtin {
    names: &["softmax", "log_softmax", "layer_norm"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    if name == "layer_norm" {
        let gain = args.tensor()?;
        let bias = args.tensor()?;
        let axis = args.int("axis", Some(-1))?;
        let eps = args.float("eps", 1e-5)?;
        let rank = args.operand_type(x).rank();
        let axis = args.resolve_axis(axis, rank)?;
        let op = Op::LayerNorm(LayerNorm {
            axis,
            eps: Float(eps as f32),
        });
        return Ok((op, vec![x, gain, bias]));
    }
    let axis = args.axis("axis", -1, x)?;
    let op = if name == "softmax" {
        Op::Softmax(Softmax { axis })
    } else {
        Op::LogSoftmax(LogSoftmax { axis })
    };
    Ok((op, vec![x]))
}

// ---- reference evaluation ----

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
pub(super) fn softmax(x: &Tensor, axis: usize) -> Result<Tensor, EvalError> {
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
pub(super) fn log_softmax(x: &Tensor, axis: usize) -> Result<Tensor, EvalError> {
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
pub(super) fn layer_norm(
    x: &Tensor,
    gain: &Tensor,
    bias: &Tensor,
    axis: usize,
    eps: f32,
) -> Result<Tensor, EvalError> {
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

/// layer_norm over the last axis: y = xhat * gain + bias with
/// xhat = (x - mean) * rstd. The statistics are recomputed.
fn layer_norm_vjp(
    cx: &mut Vjp<'_>,
    inputs: &[NodeId],
    axis: usize,
    eps: f32,
    g: NodeId,
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, GradError> {
    let (x, gain, bias) = (inputs[0], inputs[1], inputs[2]);
    let mean = cx.reduce(ReduceOp::Mean, x, vec![axis], true)?;
    let centred = cx.binary(BinaryOp::Sub, x, mean)?;
    let squares = cx.mul(centred, centred)?;
    let var = cx.reduce(ReduceOp::Mean, squares, vec![axis], true)?;
    let eps = cx.scalar(eps);
    let var_eps = cx.binary(BinaryOp::Add, var, eps)?;
    let rstd = cx.add(Op::Unary(UnaryOp::Rsqrt), &[var_eps])?;
    let xhat = cx.mul(centred, rstd)?;
    let mut out = vec![None, None, None];
    if wants[2] {
        let shape = cx.ty(bias).shape.clone();
        out[2] = Some(cx.unbroadcast(g, &shape)?);
    }
    if wants[1] {
        let gx = cx.mul(g, xhat)?;
        let shape = cx.ty(gain).shape.clone();
        out[1] = Some(cx.unbroadcast(gx, &shape)?);
    }
    if wants[0] {
        // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        let dxhat = cx.mul(g, gain)?;
        let m1 = cx.reduce(ReduceOp::Mean, dxhat, vec![axis], true)?;
        let dx_xhat = cx.mul(dxhat, xhat)?;
        let m2 = cx.reduce(ReduceOp::Mean, dx_xhat, vec![axis], true)?;
        let t = cx.binary(BinaryOp::Sub, dxhat, m1)?;
        let xm2 = cx.mul(xhat, m2)?;
        let t = cx.binary(BinaryOp::Sub, t, xm2)?;
        out[0] = Some(cx.mul(rstd, t)?);
    }
    Ok(out)
}
