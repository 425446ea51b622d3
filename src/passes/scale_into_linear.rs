//! Folds a scalar scale of a matrix product into the weights of the linear
//! layer that produced one of its operands: attention's
//! `matmul(q, k, transpose_b=true) * 0.125` with `q = x @ Wq + bq` (reshaped
//! and permuted into heads) becomes `matmul(q', k, transpose_b=true)` with
//! `q' = x @ (Wq * 0.125) + bq * 0.125`. The scaled weight and bias are
//! parameter-only, so constant folding turns them into constants at compile
//! time (when parameter values are bound, as the JIT pipeline binds them)
//! and the pass over the scores disappears. A division by a constant
//! reaches this pass as a multiplication (`simplify` rewrites it).
//!
//! Guards: the scale is an f32 constant of shape `[]`; the product is a
//! plain `matmul` whose only reader is the scale; the operand is reached
//! from the layer through reshapes and permutes only (scaling commutes with
//! them), each read by nothing else and not an output; the layer is a
//! `fused_linear` without activation or residual (scaling does not commute
//! with those), or a `matmul`, whose weight (and bias) are weights.
//! Rounding: `(x @ W + b) * s` and `x @ (W * s) + b * s` round differently
//! unless `s` is a power of two (1/sqrt(64)); the difference is within one
//! rounding of each product.

use super::edit::{add_constant, add_node, is_weight, replace, scalar_value, sole_user};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::{FusedLinear, MatMul};
use crate::ir::{BinaryOp, Graph, LinearEpilogue, NodeId, Op};
use crate::tensor::Tensor;

pub struct ScaleIntoLinear;

impl Pass for ScaleIntoLinear {
    fn name(&self) -> &'static str {
        "scale-into-linear"
    }

    fn description(&self) -> &'static str {
        "fold `matmul(a, b) * c` into the weights of the linear layer producing a or b"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        for id in graph.topo_order() {
            if !graph.contains(id) {
                continue;
            }
            let Some((product, scale)) = scaled_product(graph, id) else {
                continue;
            };
            let operands = graph.inputs(product);
            let Some((side, chain, layer)) =
                operands.iter().enumerate().find_map(|(side, &operand)| {
                    layer_behind(graph, operand).map(|(chain, layer)| (side, chain, layer))
                })
            else {
                continue;
            };
            let span = graph.node(id).span;
            if !steps.take("scale-into-linear", span) {
                break;
            }
            let name = self.name();
            // The layer again, its weight and bias scaled.
            let factor = add_constant(graph, Tensor::f32(vec![], vec![scale]), span);
            let mut layer_inputs = graph.inputs(layer);
            let scaled_args = match graph.node(layer).op {
                Op::FusedLinear(FusedLinear {
                    epilogue: LinearEpilogue { bias: true, .. },
                    ..
                }) => 1..3,
                _ => 1..2,
            };
            for i in scaled_args {
                let layer_span = graph.node(layer).span;
                layer_inputs[i] = add_node(
                    graph,
                    name,
                    Op::Binary(BinaryOp::Mul),
                    &[layer_inputs[i], factor],
                    layer_span,
                )?;
            }
            let layer_op = graph.node(layer).op.clone();
            let layer_span = graph.node(layer).span;
            let mut value = add_node(graph, name, layer_op, &layer_inputs, layer_span)?;
            // The reshapes and permutes between the layer and the product.
            for &step in chain.iter().rev() {
                let op = graph.node(step).op.clone();
                let step_span = graph.node(step).span;
                value = add_node(graph, name, op, &[value], step_span)?;
            }
            let mut product_inputs = operands;
            product_inputs[side] = value;
            let product_op = graph.node(product).op.clone();
            let unscaled = add_node(graph, name, product_op, &product_inputs, span)?;
            replace(graph, name, id, unscaled)?;
        }
        Ok(())
    }
}

/// `matmul(a, b) * c` or `c * matmul(a, b)` with `c` a scalar constant
/// and the product read by nothing else: the product and `c`.
fn scaled_product(graph: &Graph, id: NodeId) -> Option<(NodeId, f32)> {
    if graph.node(id).op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let ins = graph.inputs(id);
    let (product, scale) = match (scalar_value(graph, ins[0]), scalar_value(graph, ins[1])) {
        (None, Some(c)) => (ins[0], c),
        (Some(c), None) => (ins[1], c),
        _ => return None,
    };
    let plain_matmul = matches!(graph.node(product).op, Op::MatMul(_));
    // The product keeps its type: the scale must not broadcast it wider.
    let same_type = graph.node(product).ty == graph.node(id).ty;
    (plain_matmul
        && same_type
        && scale.is_finite()
        && scale != 0.0
        && sole_user(graph, product) == Some(id))
    .then_some((product, scale))
}

/// The linear layer `operand` is a view of: the reshapes and permutes from
/// the operand back towards the layer (operand first), and the layer.
fn layer_behind(graph: &Graph, operand: NodeId) -> Option<(Vec<NodeId>, NodeId)> {
    let mut chain = Vec::new();
    let mut at = operand;
    // The operand feeds the product alone (so nothing else sees it scaled);
    // `q @ q^T` (one operand on both sides) is never folded.
    let product = sole_user(graph, operand)?;
    let sides = graph.inputs(product);
    if sides.iter().filter(|&&s| s == operand).count() != 1 {
        return None;
    }
    loop {
        match &graph.node(at).op {
            Op::Reshape(_) | Op::Permute(_) => {
                chain.push(at);
                let source = graph.inputs(at)[0];
                sole_user(graph, source)?;
                at = source;
            }
            Op::FusedLinear(FusedLinear {
                epilogue:
                    LinearEpilogue {
                        activation: None,
                        residual: false,
                        bias,
                    },
                ..
            }) => {
                let ins = graph.inputs(at);
                let weights_only = is_weight(graph, ins[1]) && (!bias || is_weight(graph, ins[2]));
                return weights_only.then_some((chain, at));
            }
            Op::MatMul(MatMul {
                transpose_a: false, ..
            }) => {
                let ins = graph.inputs(at);
                let linear = is_weight(graph, ins[1])
                    && !is_weight(graph, ins[0])
                    && graph.node(ins[1]).ty.rank() == 2;
                return linear.then_some((chain, at));
            }
            _ => return None,
        }
    }
}
