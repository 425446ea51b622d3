//! `batch_norm(x, mean, var, gain, bias, eps=1e-5)`: batch normalisation in
//! its inference form, over axis 1 (channels of NCHW, features of [N, C]):
//! `(x - mean) / sqrt(var + eps) * gain + bias`, with the running mean and
//! variance a checkpoint stores. The operands are in PyTorch's
//! `F.batch_norm` order; each of the four is `[C]`.

use super::shape::{err, expect_dtype, only_keeps_samples, ShapeError};
use super::values::elements;
use super::{BinaryOp, Builtin, CallArgs, EvalError, Float, NodeId, Op, OpKind, Poisoned};
use super::{ReduceOp, UnaryOp};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BatchNorm {
    pub eps: Float,
}

const OPERANDS: [&str; 5] = ["input", "mean", "var", "gain", "bias"];

impl OpKind for BatchNorm {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn arity(&self) -> (usize, usize) {
        (5, 5)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = inputs;
        only_keeps_samples(batched, 0)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        for (what, ty) in OPERANDS.iter().zip(inputs) {
            expect_dtype("batch_norm", what, ty, DType::F32)?;
        }
        let x = inputs[0];
        if x.rank() < 2 {
            return err(format!(
                "batch_norm: normalises axis 1, so the input needs rank >= 2, got {x}"
            ));
        }
        let channels = &x.shape[1];
        for (what, ty) in OPERANDS.iter().zip(inputs).skip(1) {
            if ty.shape != [channels.clone()] {
                return err(format!(
                    "batch_norm: {what} must be [{channels}] (one per channel of {x}), got {ty}"
                ));
            }
        }
        Ok(x.clone())
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = elements::<f32>("batch_norm", inputs[0])?;
        let [mean, var, gain, bias] =
            [1, 2, 3, 4].map(|i| elements::<f32>("batch_norm", inputs[i]));
        let (mean, var, gain, bias) = (mean?, var?, gain?, bias?);
        let channels = out_shape[1];
        let inner: usize = out_shape[2..].iter().product();
        let eps = f64::from(self.eps.0);
        let out = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / inner.max(1)) % channels;
                let scale = f64::from(gain[c]) / (f64::from(var[c]) + eps).sqrt();
                ((f64::from(v) - f64::from(mean[c])) * scale + f64::from(bias[c])) as f32
            })
            .collect();
        Ok(Tensor::f32(out_shape.to_vec(), out))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("eps", self.eps.to_string())]
    }

    /// With `s = rsqrt(var + eps)` and sums over every axis but 1:
    /// dx = g gain s; dbias = sum(g); dgain = sum(g (x - mean)) s;
    /// dmean = -dbias gain s; dvar = -sum(g (x - mean)) gain s^3 / 2.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let [x, mean, var, gain, _] = [0, 1, 2, 3, 4].map(|i| inputs[i]);
        let rank = cx.ty(x).rank();
        let channels = cx.ty(x).shape[1].clone();
        // [C] as [C, 1, ...] so it broadcasts against x along axis 1.
        let mut per_channel_shape = vec![channels];
        per_channel_shape.extend(std::iter::repeat_n(Dim::known(1), rank - 2));
        let per_channel = |cx: &mut Vjp<'_>, v: NodeId| cx.reshape(v, per_channel_shape.clone());
        let others: Vec<usize> = (0..rank).filter(|&a| a != 1).collect();
        let eps = cx.scalar(self.eps.0);
        let shifted_var = cx.binary(BinaryOp::Add, var, eps)?;
        let s = cx.add(Op::Unary(UnaryOp::Rsqrt), &[shifted_var])?;
        let gain_s = cx.mul(gain, s)?;
        let mut grads = vec![None; 5];
        if wants[0] {
            let scale = per_channel(cx, gain_s)?;
            grads[0] = Some(cx.mul(g, scale)?);
        }
        let sum_g = if wants[1] || wants[4] {
            Some(cx.reduce(ReduceOp::Sum, g, others.clone(), false)?)
        } else {
            None
        };
        if let Some(sum_g) = sum_g {
            if wants[1] {
                let d = cx.mul(sum_g, gain_s)?;
                grads[1] = Some(cx.neg(d)?);
            }
            if wants[4] {
                grads[4] = Some(sum_g);
            }
        }
        if wants[2] || wants[3] {
            let mean_c = per_channel(cx, mean)?;
            let centred = cx.binary(BinaryOp::Sub, x, mean_c)?;
            let weighted = cx.mul(g, centred)?;
            let sum = cx.reduce(ReduceOp::Sum, weighted, others, false)?;
            if wants[2] {
                let ss = cx.mul(s, s)?;
                let gain_s3 = cx.mul(gain_s, ss)?;
                let d = cx.mul(sum, gain_s3)?;
                grads[2] = Some(cx.mul_scalar(d, -0.5)?);
            }
            if wants[3] {
                grads[3] = Some(cx.mul(sum, s)?);
            }
        }
        Ok(grads)
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["batch_norm"],
    lower,
};

/// `batch_norm(x, mean, var, gain, bias, eps=1e-5)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let mut operands = Vec::with_capacity(5);
    for _ in 0..5 {
        operands.push(args.tensor()?);
    }
    let eps = args.float("eps", 1e-5)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(args.error(format!("eps must be finite and >= 0, got {eps}")));
    }
    Ok((
        Op::BatchNorm(BatchNorm {
            eps: Float(eps as f32),
        }),
        operands,
    ))
}
