//! Algebraic simplification: local identities that remove or cheapen nodes.
//!
//! - `x * 1`, `x + 0`, `x - 0`, `x / 1`, `x ** 1` -> `x` (the constant may be
//!   any splat, but only when it does not broadcast `x` to a larger shape)
//! - `x - x` -> zeros, when the shape is concrete (a constant needs one)
//!   and small; like every compiler's version of this rule it assumes finite
//!   `x` (`inf - inf` is NaN)
//! - `x / c` -> `x * (1/c)` for a constant `c` whose reciprocals are finite
//! - `neg(neg(x))` -> `x`
//! - permute of permute -> one permute; identity permute -> `x`; a permute
//!   that only moves size-1 axes -> a reshape (same memory order)
//! - reshape of reshape -> one reshape; identity reshape -> `x`
//! - cast to the same dtype, a slice taking a whole axis, a reduction over
//!   no axes -> `x`

use super::edit::{add_constant, add_node, constant, replace, splat_value};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::{Cast, Permute, Reduce, Reshape, Slice};
use crate::ir::{BinaryOp, Graph, NodeId, Op, UnaryOp};
use crate::tensor::Tensor;

/// `x - x` becomes a constant only up to this many elements: a large
/// zeros constant costs more memory than the subtraction costs time.
const MAX_ZEROS_ELEMENTS: usize = 1 << 16;

pub struct AlgebraicSimplification;

enum Rewrite {
    /// The node's value is already computed by this node.
    UseExisting(NodeId),
    /// Replace the node by a new node.
    New(Op, Vec<NodeId>),
    /// Replace the node by a new constant.
    Constant(Tensor),
    /// Replace the node by `x * c` for a new constant `c`.
    ScaleBy(NodeId, Tensor),
}

impl Pass for AlgebraicSimplification {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn description(&self) -> &'static str {
        "algebraic identities: x*1, x+0, x-x, x/c, neg(neg(x)), permute/reshape chains"
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
            let Some((kind, rewrite)) = rule(graph, id) else {
                continue;
            };
            let span = graph.node(id).span;
            if !steps.take(kind, span) {
                break;
            }
            let new = match rewrite {
                Rewrite::UseExisting(x) => x,
                Rewrite::New(op, inputs) => add_node(graph, self.name(), op, &inputs, span)?,
                Rewrite::Constant(value) => add_constant(graph, value, span),
                Rewrite::ScaleBy(x, factor) => {
                    let c = add_constant(graph, factor, span);
                    add_node(graph, self.name(), Op::Binary(BinaryOp::Mul), &[x, c], span)?
                }
            };
            replace(graph, self.name(), id, new)?;
        }
        Ok(())
    }
}

/// The first identity that applies at `id`.
fn rule(graph: &Graph, id: NodeId) -> Option<(&'static str, Rewrite)> {
    let node = graph.node(id);
    let ins = graph.inputs(id);
    // Replacing by an operand is only sound when no broadcast happened.
    let same_type_as = |x: NodeId| graph.node(x).ty == node.ty;
    let splat_is = |c: NodeId, v: f32| splat_value(graph, c) == Some(v);
    match &node.op {
        Op::Binary(BinaryOp::Mul) => [(ins[0], ins[1]), (ins[1], ins[0])]
            .into_iter()
            .find(|&(x, c)| splat_is(c, 1.0) && same_type_as(x))
            .map(|(x, _)| ("x*1", Rewrite::UseExisting(x))),
        Op::Binary(BinaryOp::Add) => [(ins[0], ins[1]), (ins[1], ins[0])]
            .into_iter()
            .find(|&(x, c)| (splat_is(c, 0.0) || splat_is(c, -0.0)) && same_type_as(x))
            .map(|(x, _)| ("x+0", Rewrite::UseExisting(x))),
        Op::Binary(BinaryOp::Sub) => {
            let (x, c) = (ins[0], ins[1]);
            if (splat_is(c, 0.0) || splat_is(c, -0.0)) && same_type_as(x) {
                return Some(("x-0", Rewrite::UseExisting(x)));
            }
            if x == c {
                let shape = node.ty.known_shape()?;
                if shape.iter().product::<usize>() <= MAX_ZEROS_ELEMENTS {
                    return Some((
                        "x-x",
                        Rewrite::Constant(Tensor::zeros(node.ty.dtype, shape)),
                    ));
                }
            }
            None
        }
        Op::Binary(BinaryOp::Div) => {
            let (x, c) = (ins[0], ins[1]);
            if splat_is(c, 1.0) && same_type_as(x) {
                return Some(("x/1", Rewrite::UseExisting(x)));
            }
            let divisor = constant(graph, c)?;
            let reciprocals: Vec<f32> = divisor.as_f32()?.iter().map(|v| 1.0 / v).collect();
            if reciprocals.iter().any(|r| !r.is_finite() || *r == 0.0) {
                return None;
            }
            let factor = Tensor::f32(divisor.shape().to_vec(), reciprocals);
            Some(("div-by-constant", Rewrite::ScaleBy(x, factor)))
        }
        Op::Binary(BinaryOp::Pow) => {
            let (x, c) = (ins[0], ins[1]);
            (splat_is(c, 1.0) && same_type_as(x)).then_some(("x**1", Rewrite::UseExisting(x)))
        }
        Op::Unary(UnaryOp::Neg) => match graph.node(ins[0]).op {
            Op::Unary(UnaryOp::Neg) => {
                Some(("neg(neg(x))", Rewrite::UseExisting(graph.inputs(ins[0])[0])))
            }
            _ => None,
        },
        Op::Permute(Permute { perm }) => {
            let x = ins[0];
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                return Some(("identity-permute", Rewrite::UseExisting(x)));
            }
            if let Op::Permute(Permute { perm: inner }) = &graph.node(x).op {
                let source = graph.inputs(x)[0];
                let composed: Vec<usize> = perm.iter().map(|&p| inner[p]).collect();
                if composed.iter().enumerate().all(|(i, &p)| i == p) {
                    return Some(("permute-of-permute", Rewrite::UseExisting(source)));
                }
                return Some((
                    "permute-of-permute",
                    Rewrite::New(Op::Permute(Permute { perm: composed }), vec![source]),
                ));
            }
            let in_shape = &graph.node(x).ty.shape;
            let moved: Vec<usize> = perm
                .iter()
                .copied()
                .filter(|&p| !in_shape[p].is_one())
                .collect();
            if moved.windows(2).all(|w| w[0] < w[1]) {
                return Some((
                    "permute-as-reshape",
                    Rewrite::New(
                        Op::Reshape(Reshape {
                            shape: node.ty.shape.clone(),
                        }),
                        vec![x],
                    ),
                ));
            }
            None
        }
        Op::Reshape(Reshape { shape }) => {
            let x = ins[0];
            if same_type_as(x) {
                return Some(("identity-reshape", Rewrite::UseExisting(x)));
            }
            if let Op::Reshape(_) = graph.node(x).op {
                let source = graph.inputs(x)[0];
                if graph.node(source).ty == node.ty {
                    return Some(("reshape-of-reshape", Rewrite::UseExisting(source)));
                }
                return Some((
                    "reshape-of-reshape",
                    Rewrite::New(
                        Op::Reshape(Reshape {
                            shape: shape.clone(),
                        }),
                        vec![source],
                    ),
                ));
            }
            None
        }
        Op::Cast(Cast { to }) => (graph.node(ins[0]).ty.dtype == *to)
            .then_some(("identity-cast", Rewrite::UseExisting(ins[0]))),
        Op::Broadcast(_) => {
            same_type_as(ins[0]).then_some(("identity-broadcast", Rewrite::UseExisting(ins[0])))
        }
        Op::Slice(Slice {
            axis,
            start,
            end,
            step,
        }) => {
            let whole = *start == 0 && *step == 1 && graph.node(ins[0]).ty.shape[*axis] == *end;
            (whole && same_type_as(ins[0]))
                .then_some(("identity-slice", Rewrite::UseExisting(ins[0])))
        }
        Op::Reduce(Reduce { axes, .. }) => (axes.is_empty() && same_type_as(ins[0]))
            .then_some(("identity-reduce", Rewrite::UseExisting(ins[0]))),
        Op::Input(_)
        | Op::Param(_)
        | Op::Constant(_)
        | Op::Unary(_)
        | Op::Binary(BinaryOp::Max | BinaryOp::Min)
        | Op::Compare(_)
        | Op::Where
        | Op::MatMul(_)
        | Op::Softmax(_)
        | Op::LogSoftmax(_)
        | Op::LayerNorm(_)
        | Op::Concat(_)
        | Op::Gather(_)
        | Op::ScatterAdd(_)
        | Op::FusedLinear(_)
        | Op::FusedElementwise(_)
        | Op::Conv2d(_)
        | Op::FusedConv2d(_)
        | Op::Pool2d(_)
        | Op::Pool2dGrad(_)
        | Op::BatchNorm(_)
        | Op::Clip(_)
        | Op::Pad(_)
        | Op::Resize(_)
        | Op::GatherElements(_)
        | Op::ArgReduce(_)
        | Op::CumSum(_)
        | Op::TopK(_)
        | Op::ScatterElements(_) => None,
    }
}
