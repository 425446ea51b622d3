//! `broadcast_to`: a tensor repeated to a larger shape, numpy's rule. The
//! adjoint of a sum over broadcast axes, so autodiff emits it (a sum's
//! gradient spread back over the summed axes); it has no built-in.

use super::shape::{broadcast_shapes, err, show, ShapeError};
use super::values::{broadcast_offsets, take};
use super::{Dim, EvalError, NodeId, OpKind};
use crate::ir::graph::{ShapeDisplay, TensorType};
use crate::ir::vjp::{GradError, Vjp};
use crate::tensor::Tensor;

/// `x` repeated along new leading axes and along its size-1 axes to `shape`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Broadcast {
    pub shape: Vec<Dim>,
}

impl OpKind for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }

    fn arity(&self) -> (usize, usize) {
        (1, 1)
    }

    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        let x = inputs[0];
        if broadcast_shapes(&x.shape, &self.shape).as_deref() != Some(self.shape.as_slice()) {
            return err(format!(
                "broadcast_to: {} does not broadcast to {}",
                show(x),
                ShapeDisplay(&self.shape)
            ));
        }
        Ok(TensorType::new(x.dtype, self.shape.clone()))
    }

    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError> {
        let x = inputs[0];
        take(
            "broadcast_to",
            x,
            out_shape.to_vec(),
            broadcast_offsets(x.shape(), out_shape),
        )
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        vec![("shape", ShapeDisplay(&self.shape).to_string())]
    }

    /// g summed back over the broadcast axes.
    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        inputs: &[NodeId],
        g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        let shape = cx.ty(inputs[0]).shape.clone();
        Ok(vec![Some(cx.unbroadcast(g, &shape)?)])
    }
}
