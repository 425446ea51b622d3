//! `clip(x, min=-inf, max=inf)`: each element limited to `[min, max]`
//! (NaN stays NaN, as numpy's `clip`). `relu6` is the unary op
//! `clip(x, min=0.0, max=6.0)` with its own vector code.

use super::shape::{expect_dtype, ShapeError};
use super::values::elements;
use super::{Builtin, CallArgs, CompareOp, EvalError, Float, NodeId, Op, OpKind, Poisoned};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, TensorType};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Clip {
    pub min: Float,
    pub max: Float,
}

impl OpKind for Clip {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn keeps_samples(&self, inputs: &[&TensorType], batched: &[bool]) -> bool {
        let _ = (inputs, batched);
        true
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        expect_dtype("clip", "operand", inputs[0], DType::F32)?;
        Ok(inputs[0].clone())
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = elements::<f32>("clip", inputs[0])?;
        let (lo, hi) = (self.min.0, self.max.0);
        let out = x
            .iter()
            .map(|&v| {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            })
            .collect();
        Ok(Tensor::f32(out_shape.to_vec(), out))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("min", self.min.to_string()), ("max", self.max.to_string())]
    }

    /// `g` where `min < x < max`, else 0 (at a bound too, as relu6).
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let x = inputs[0];
        let zero = cx.scalar(0.0);
        let (min, max) = (cx.scalar(self.min.0), cx.scalar(self.max.0));
        let below_max = cx.add(Op::Compare(CompareOp::Lt), &[x, max])?;
        let inside = cx.add(Op::Where, &[below_max, g, zero])?;
        let above_min = cx.add(Op::Compare(CompareOp::Gt), &[x, min])?;
        Ok(vec![Some(cx.add(Op::Where, &[above_min, inside, zero])?)])
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["clip"],
    lower,
};

/// `clip(x, min=, max=)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let min = args.float("min", f64::NEG_INFINITY)? as f32;
    let max = args.float("max", f64::INFINITY)? as f32;
    if min > max {
        return Err(args.error(format!("min {min} is above max {max}")));
    }
    Ok((
        Op::Clip(Clip {
            min: Float(min),
            max: Float(max),
        }),
        vec![x],
    ))
}
