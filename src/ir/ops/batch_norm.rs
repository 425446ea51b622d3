//! `batch_norm(x, mean, var, gain, bias, eps=1e-5)`: batch normalisation in
//! its inference form, over axis 1 (channels of NCHW, features of [N, C]):
//! `(x - mean) / sqrt(var + eps) * gain + bias`, with the running mean and
//! variance a checkpoint stores. The operands are in PyTorch's
//! `F.batch_norm` order; each of the four is `[C]`.

use super::shape::{err, expect_dtype, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, EvalError, Float, NodeId, Op, OpKind, Poisoned};
use crate::ir::{DType, TensorType};
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
