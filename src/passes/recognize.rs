//! Recognises softmax, log_softmax and layer_norm written by hand in
//! primitive ops and replaces them by the built-in op, so a model may write
//! them either way and still get the fused kernel:
//!
//! - `exp(x - max(x, axis=a, keepdims)) / sum(that, axis=a, keepdims)`
//!   -> `softmax(x, a)`; also `exp(x) / sum(exp(x))` (the built-in is the
//!   stable form of the same function)
//! - `d - log(sum(exp(d), axis=a, keepdims))` with `d = x - max(x, ...)` or
//!   `d = x` -> `log_softmax(x, a)`; also `log(softmax(x))`
//! - `(x - mean) / sqrt(var + eps) * g + b` over the last axis, with
//!   `mean = mean(x, keepdims)` and `var = mean((x - mean) ** 2)` (or
//!   `d * d`, or `* rsqrt(var + eps)`) -> `layer_norm(x, g, b, eps)`; without
//!   `* g` or `+ b` the gain is ones and the bias zeros (needs a concrete
//!   last dim)
//!
//! Matching is on node identity: the two uses of `x - mean` must be one node
//! (common-subexpression elimination runs first in `all`).

use super::edit::{
    add_constant, add_node, constant, is_used, replace, scalar_value, splat_value, unary_operand,
};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::{LayerNorm, LogSoftmax, Reduce, Softmax};
use crate::ir::{
    shape_rules, BinaryOp, DType, Dim, Float, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp,
};
use crate::span::Span;
use crate::tensor::Tensor;

pub struct RecognizeNormalizations;

/// An operand of the replacement: an existing node, or a constant of the
/// given shape filled with one value, made only once the rewrite is taken.
#[derive(Clone, Debug)]
enum Operand {
    Node(NodeId),
    Splat { value: f32, len: usize },
}

impl Operand {
    fn ty(&self, graph: &Graph) -> TensorType {
        match self {
            Operand::Node(id) => graph.node(*id).ty.clone(),
            Operand::Splat { len, .. } => TensorType::new(DType::F32, vec![Dim::known(*len)]),
        }
    }

    fn materialize(&self, graph: &mut Graph, span: Option<Span>) -> NodeId {
        match self {
            Operand::Node(id) => *id,
            Operand::Splat { value, len } => {
                add_constant(graph, Tensor::f32(vec![*len], vec![*value; *len]), span)
            }
        }
    }
}

struct Found {
    kind: &'static str,
    op: Op,
    operands: Vec<Operand>,
}

impl Pass for RecognizeNormalizations {
    fn name(&self) -> &'static str {
        "recognize"
    }

    fn description(&self) -> &'static str {
        "recognise hand-written softmax, log_softmax and layer_norm"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        let mut order = graph.topo_order();
        // Outermost first: the full `... * g + b` before its inner `... * g`.
        order.reverse();
        for id in order {
            if !graph.contains(id) || !is_used(graph, id) {
                continue;
            }
            let Some(found) = recognize(graph, id) else {
                continue;
            };
            // The replacement must have exactly the type of what it replaces
            // (a gain that broadcast `x` to a larger shape would not).
            let types: Vec<TensorType> = found.operands.iter().map(|o| o.ty(graph)).collect();
            let type_refs: Vec<&TensorType> = types.iter().collect();
            if shape_rules::infer(&found.op, &type_refs).ok().as_ref() != Some(&graph.node(id).ty) {
                continue;
            }
            let span = graph.node(id).span;
            if !steps.take(found.kind, span) {
                break;
            }
            let inputs: Vec<NodeId> = found
                .operands
                .iter()
                .map(|o| o.materialize(graph, span))
                .collect();
            let new = add_node(graph, self.name(), found.op, &inputs, span)?;
            replace(graph, self.name(), id, new)?;
        }
        Ok(())
    }
}

fn recognize(graph: &Graph, id: NodeId) -> Option<Found> {
    if let Some((x, axis)) = softmax_of(graph, id) {
        return Some(Found {
            kind: "softmax",
            op: Op::Softmax(Softmax { axis }),
            operands: vec![Operand::Node(x)],
        });
    }
    if let Some((x, axis)) = log_softmax_of(graph, id) {
        return Some(Found {
            kind: "log_softmax",
            op: Op::LogSoftmax(LogSoftmax { axis }),
            operands: vec![Operand::Node(x)],
        });
    }
    layer_norm_of(graph, id)
}

/// The operands of a binary `op` node, in order.
fn binary(graph: &Graph, id: NodeId, op: BinaryOp) -> Option<(NodeId, NodeId)> {
    match graph.node(id).op {
        Op::Binary(b) if b == op => {
            let ins = graph.inputs(id);
            Some((ins[0], ins[1]))
        }
        _ => None,
    }
}

/// `(operand, other)` of a commutative binary node, trying both orders with
/// `accept` deciding which operand is the one wanted.
fn either_order<T>(
    graph: &Graph,
    id: NodeId,
    op: BinaryOp,
    mut accept: impl FnMut(NodeId, NodeId) -> Option<T>,
) -> Option<T> {
    let (p, q) = binary(graph, id, op)?;
    accept(p, q).or_else(|| accept(q, p))
}

/// `reduce(x, axes=[axis], keepdims=true)`: the operand and the axis.
fn keepdims_reduce(graph: &Graph, id: NodeId, op: ReduceOp) -> Option<(NodeId, usize)> {
    match &graph.node(id).op {
        Op::Reduce(Reduce {
            op: r,
            axes,
            keepdims: true,
        }) if *r == op && axes.len() == 1 => Some((graph.inputs(id)[0], axes[0])),
        _ => None,
    }
}

/// `d` is `x - max(x, axis)`: gives `x`; otherwise `d` itself, as
/// softmax(x - c) = softmax(x) for any `c` constant along the axis.
fn stable_source(graph: &Graph, d: NodeId, axis: usize) -> NodeId {
    binary(graph, d, BinaryOp::Sub)
        .filter(|&(x, m)| keepdims_reduce(graph, m, ReduceOp::Max) == Some((x, axis)))
        .map_or(d, |(x, _)| x)
}

/// `exp(d) / sum(exp(d), axis, keepdims)`.
fn softmax_of(graph: &Graph, id: NodeId) -> Option<(NodeId, usize)> {
    let (e, s) = binary(graph, id, BinaryOp::Div)?;
    let (summed, axis) = keepdims_reduce(graph, s, ReduceOp::Sum)?;
    if summed != e {
        return None;
    }
    let d = unary_operand(graph, e, UnaryOp::Exp)?;
    Some((stable_source(graph, d, axis), axis))
}

/// `d - log(sum(exp(d), axis, keepdims))`, or `log(softmax(x))`.
fn log_softmax_of(graph: &Graph, id: NodeId) -> Option<(NodeId, usize)> {
    if let Some(inner) = unary_operand(graph, id, UnaryOp::Log) {
        if let Op::Softmax(Softmax { axis }) = graph.node(inner).op {
            return Some((graph.inputs(inner)[0], axis));
        }
        return softmax_of(graph, inner);
    }
    let (d, l) = binary(graph, id, BinaryOp::Sub)?;
    let s = unary_operand(graph, l, UnaryOp::Log)?;
    let (e, axis) = keepdims_reduce(graph, s, ReduceOp::Sum)?;
    if unary_operand(graph, e, UnaryOp::Exp)? != d {
        return None;
    }
    Some((stable_source(graph, d, axis), axis))
}

/// `d = x - mean(x, last axis, keepdims)`: gives `x`.
fn centered(graph: &Graph, d: NodeId) -> Option<NodeId> {
    let (x, mu) = binary(graph, d, BinaryOp::Sub)?;
    let last = graph.node(x).ty.rank().checked_sub(1)?;
    (keepdims_reduce(graph, mu, ReduceOp::Mean)? == (x, last)).then_some(x)
}

/// `var + eps` (or `var` alone, eps 0) with `var = mean(d*d or d**2)` over
/// the last axis: checks it is the variance of `d`, gives eps.
fn variance_plus_eps(graph: &Graph, id: NodeId, d: NodeId) -> Option<f32> {
    let is_variance_of_d = |v: NodeId| -> bool {
        let Some((sq, axis)) = keepdims_reduce(graph, v, ReduceOp::Mean) else {
            return false;
        };
        let squares_d = binary(graph, sq, BinaryOp::Mul) == Some((d, d))
            || binary(graph, sq, BinaryOp::Pow)
                .is_some_and(|(base, p)| base == d && scalar_value(graph, p) == Some(2.0));
        squares_d && axis + 1 == graph.node(d).ty.rank()
    };
    if is_variance_of_d(id) {
        return Some(0.0);
    }
    either_order(graph, id, BinaryOp::Add, |v, eps| {
        let eps = scalar_value(graph, eps)?;
        is_variance_of_d(v).then_some(eps)
    })
}

/// `d / sqrt(var + eps)` or `d * rsqrt(var + eps)`: gives `x` and eps.
fn normalized(graph: &Graph, id: NodeId) -> Option<(NodeId, f32)> {
    if let Some((d, s)) = binary(graph, id, BinaryOp::Div) {
        let x = centered(graph, d)?;
        let eps = variance_plus_eps(graph, unary_operand(graph, s, UnaryOp::Sqrt)?, d)?;
        return Some((x, eps));
    }
    either_order(graph, id, BinaryOp::Mul, |d, r| {
        let x = centered(graph, d)?;
        let eps = variance_plus_eps(graph, unary_operand(graph, r, UnaryOp::Rsqrt)?, d)?;
        Some((x, eps))
    })
}

/// A gain or bias operand: a node of shape `[n]`, or a splat constant.
fn affine_operand(graph: &Graph, id: NodeId, n: &Dim) -> Option<Operand> {
    let ty = &graph.node(id).ty;
    if ty.dtype != DType::F32 {
        return None;
    }
    if ty.shape == [n.clone()] {
        return Some(Operand::Node(id));
    }
    // A scalar gain such as `* 1.0` becomes a splat of the axis length.
    match (
        constant(graph, id).map(|t| t.shape().is_empty()),
        splat_value(graph, id),
        n.as_known(),
    ) {
        (Some(true), Some(value), Some(len)) => Some(Operand::Splat { value, len }),
        _ => None,
    }
}

/// `normalized * g + b`, `normalized * g`, `normalized + b` or bare
/// `normalized`, outermost form first.
fn layer_norm_of(graph: &Graph, id: NodeId) -> Option<Found> {
    let build =
        |x: NodeId, eps: f32, gain: Option<Operand>, bias: Option<Operand>| -> Option<Found> {
            let n = graph.node(x).ty.shape.last()?.clone();
            let splat = |value| n.as_known().map(|len| Operand::Splat { value, len });
            let gain = match gain {
                Some(g) => g,
                None => splat(1.0)?,
            };
            let bias = match bias {
                Some(b) => b,
                None => splat(0.0)?,
            };
            Some(Found {
                kind: "layer_norm",
                op: Op::LayerNorm(LayerNorm {
                    axis: graph.node(x).ty.rank() - 1,
                    eps: Float(eps),
                }),
                operands: vec![Operand::Node(x), gain, bias],
            })
        };
    let last_dim = |x: NodeId| graph.node(x).ty.shape.last().cloned();
    let scaled = |y: NodeId| -> Option<(NodeId, f32, Operand)> {
        either_order(graph, y, BinaryOp::Mul, |n, g| {
            let (x, eps) = normalized(graph, n)?;
            Some((x, eps, affine_operand(graph, g, &last_dim(x)?)?))
        })
    };
    let with_bias = either_order(graph, id, BinaryOp::Add, |y, b| {
        if let Some((x, eps, gain)) = scaled(y) {
            let bias = affine_operand(graph, b, &last_dim(x)?)?;
            return build(x, eps, Some(gain), Some(bias));
        }
        let (x, eps) = normalized(graph, y)?;
        let bias = affine_operand(graph, b, &last_dim(x)?)?;
        build(x, eps, None, Some(bias))
    });
    if with_bias.is_some() {
        return with_bias;
    }
    if let Some((x, eps, gain)) = scaled(id) {
        return build(x, eps, Some(gain), None);
    }
    let (x, eps) = normalized(graph, id)?;
    build(x, eps, None, None)
}
