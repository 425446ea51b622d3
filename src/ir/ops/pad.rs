//! `pad(x, pads, value=0.0)`: a border of `value` around `x`. `pads` has two
//! entries per axis, ONNX's order: `[begin_0, ..., begin_{r-1}, end_0, ...,
//! end_{r-1}]` (for NCHW, `[0, 0, top, left, 0, 0, bottom, right]`). An axis
//! with a symbolic size can only get zero padding (its padded size would not
//! be a product of symbols).

use super::shape::{err, ShapeError};
use super::values::{elements, StridedOffsets};
use super::{Builtin, CallArgs, EvalError, Float, NodeId, Op, OpKind, Poisoned};
use crate::ir::vjp::{GradError, Vjp};
use crate::ir::{DType, Dim, TensorType};
use crate::tensor::{strides, Tensor};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pad {
    /// `(before, after)` per axis.
    pub pads: Vec<(usize, usize)>,
    pub value: Float,
}

impl OpKind for Pad {
    fn name(&self) -> &'static str {
        "pad"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        if x.dtype != DType::F32 {
            return err(format!("pad: pads f32 tensors, got {x}"));
        }
        if self.pads.len() != x.rank() {
            return err(format!(
                "pad: needs 2 * rank = {} pads for {x}, got {}",
                2 * x.rank(),
                2 * self.pads.len()
            ));
        }
        let mut shape = Vec::with_capacity(x.rank());
        for (axis, (d, &(before, after))) in x.shape.iter().zip(&self.pads).enumerate() {
            let extra = before.checked_add(after);
            shape.push(match (d.as_known(), extra) {
                (_, Some(0)) => d.clone(),
                (Some(n), Some(extra)) => match n.checked_add(extra) {
                    Some(total) => Dim::known(total),
                    None => return err(format!("pad: axis {axis} overflows")),
                },
                (None, _) => {
                    return err(format!(
                        "pad: axis {axis} of {x} has the symbolic size `{d}`; only an axis of \
                         known size can be padded"
                    ))
                }
                (_, None) => return err(format!("pad: axis {axis} overflows")),
            });
        }
        Ok(TensorType::new(DType::F32, shape))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = elements::<f32>("pad", inputs[0])?;
        let total: usize = out_shape.iter().product();
        let mut out = vec![self.value.0; total];
        // Where input element i lands: the output's strides, offset by the pads before.
        let out_strides = strides(out_shape);
        let base: usize = self
            .pads
            .iter()
            .zip(&out_strides)
            .map(|(&(before, _), s)| before * s)
            .sum();
        for (offset, &v) in StridedOffsets::new(inputs[0].shape(), &out_strides, base).zip(x) {
            out[offset] = v;
        }
        Ok(Tensor::f32(out_shape.to_vec(), out))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let begins: Vec<String> = self.pads.iter().map(|p| p.0.to_string()).collect();
        let ends: Vec<String> = self.pads.iter().map(|p| p.1.to_string()).collect();
        vec![
            (
                "pads",
                format!("[{}, {}]", begins.join(", "), ends.join(", ")),
            ),
            ("value", self.value.to_string()),
        ]
    }

    /// The border cut off again: a slice along each padded axis.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let shape = cx.ty(inputs[0]).shape.clone();
        let mut grad = g;
        for (axis, (&(before, _), size)) in self.pads.iter().zip(shape).enumerate() {
            let end = match size.as_known() {
                Some(n) => Dim::known(before + n),
                // Only an unpadded axis keeps a symbolic size.
                None => size,
            };
            grad = cx.slice(grad, axis, before, end)?;
        }
        Ok(vec![Some(grad)])
    }
}

pub const BUILTIN: Builtin = Builtin {
    names: &["pad"],
    lower,
};

/// `pad(x, [begins..., ends...], value=0.0)`.
fn lower(_name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let x = args.tensor()?;
    let Some(pads) = args.int_list("pads", true)? else {
        return Err(args.error("needs `pads=[begin per axis..., end per axis...]`".into()));
    };
    let value = args.float("value", 0.0)?;
    let rank = args.operand_type(x).rank();
    if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
        return Err(args.error(format!(
            "pads must be 2 * rank = {} non-negative integers [begin per axis..., end per \
             axis...], got {pads:?}",
            2 * rank
        )));
    }
    let pads = (0..rank)
        .map(|a| (pads[a] as usize, pads[rank + a] as usize))
        .collect();
    Ok((
        Op::Pad(Pad {
            pads,
            value: Float(value as f32),
        }),
        vec![x],
    ))
}
