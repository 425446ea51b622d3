//! Folds an inference `batch_norm` into the convolution before it:
//! `batch_norm(conv2d(x, w, b), mean, var, gain, beta)` ->
//! `conv2d(x, w * s, beta - (mean - b) * s)` with `s = gain / sqrt(var + eps)`
//! per output channel (`b` taken as 0 when the convolution has none). The
//! new weights and bias are small graphs of the parameters, which
//! `const-fold` turns into constants once the parameter values are bound
//! (`lamina run`, the engine): the normalisation then costs nothing at run
//! time. Without bound values they stay as those few per-channel ops.
//!
//! Only when
//! - the batch norm reads a `conv2d`, or a `fused_conv2d` whose epilogue is
//!   at most a bias (an activation or residual in between is not linear);
//! - the batch norm is the convolution's only reader and the convolution is
//!   not an output (its own value would be lost);
//! - the convolution's weights and bias and the four statistics are
//!   weights (parameters and constants, or computed from those alone): a
//!   statistic computed from an input is no constant scaling.
//!
//! The folded convolution computes in f32 what the batch norm computed in
//! f64 after it, so results differ in rounding only (well within the
//! passes' 1e-5).

use super::edit::{add_constant, add_node, is_weight, replace, sole_user};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::window::DataLayout;
use crate::ir::ops::{BinaryOp, FusedConv2d, Reshape, UnaryOp};
use crate::ir::{Dim, Graph, Op};
use crate::tensor::Tensor;

pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold-batch-norm"
    }

    fn description(&self) -> &'static str {
        "batch_norm after conv2d -> the conv's weights and bias scaled"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        let name = self.name();
        for id in graph.topo_order() {
            if !graph.contains(id) {
                continue;
            }
            let Op::BatchNorm(bn) = &graph.node(id).op else {
                continue;
            };
            let eps = bn.eps.0;
            let operands = graph.inputs(id);
            let conv_id = operands[0];
            let conv_op = graph.node(conv_id).op.clone();
            // batch_norm's channels are axis 1: an NHWC convolution's are not.
            let linear = match &conv_op {
                Op::Conv2d(conv) => conv.window.layout == DataLayout::Nchw,
                Op::FusedConv2d(FusedConv2d { conv, epilogue }) => {
                    conv.window.layout == DataLayout::Nchw
                        && epilogue.activation.is_none()
                        && !epilogue.residual
                }
                _ => false,
            };
            let conv_operands = graph.inputs(conv_id);
            let foldable = linear
                && sole_user(graph, conv_id) == Some(id)
                && conv_operands[1..].iter().all(|&w| is_weight(graph, w))
                && operands[1..].iter().all(|&p| is_weight(graph, p));
            if !foldable {
                continue;
            }
            let span = graph.node(id).span;
            if !steps.take(format!("{}+batch_norm", conv_op.name()), span) {
                break;
            }
            let [mean, var, gain, beta] = [operands[1], operands[2], operands[3], operands[4]];
            let (x, w, bias) = (conv_operands[0], conv_operands[1], conv_operands.get(2));
            let binary =
                |graph: &mut Graph, op, a, b| add_node(graph, name, Op::Binary(op), &[a, b], span);
            // s = gain / sqrt(var + eps), one per output channel.
            let eps = add_constant(graph, Tensor::f32(vec![], vec![eps]), span);
            let shifted = binary(graph, BinaryOp::Add, var, eps)?;
            let root = add_node(graph, name, Op::Unary(UnaryOp::Sqrt), &[shifted], span)?;
            let scale = binary(graph, BinaryOp::Div, gain, root)?;
            // w * s, s broadcast over each output channel's filter as [O, 1, 1, 1].
            let channels = graph.node(scale).ty.shape[0].clone();
            let one = Dim::known(1);
            let column = Op::Reshape(Reshape {
                shape: vec![channels, one.clone(), one.clone(), one],
            });
            let scale_column = add_node(graph, name, column, &[scale], span)?;
            let new_w = binary(graph, BinaryOp::Mul, w, scale_column)?;
            // beta - (mean - b) * s
            let centre = match bias {
                Some(&b) => binary(graph, BinaryOp::Sub, mean, b)?,
                None => mean,
            };
            let shift = binary(graph, BinaryOp::Mul, centre, scale)?;
            let new_b = binary(graph, BinaryOp::Sub, beta, shift)?;
            let folded_op = match conv_op {
                Op::FusedConv2d(mut fused) => {
                    fused.epilogue.bias = true;
                    Op::FusedConv2d(fused)
                }
                other => other,
            };
            let folded = add_node(graph, name, folded_op, &[x, new_w, new_b], span)?;
            replace(graph, name, id, folded)?;
        }
        Ok(())
    }
}
