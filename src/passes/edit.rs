//! Small graph-editing and pattern-matching helpers shared by the passes.

use crate::ir::ops::Constant;
use std::collections::HashSet;
use std::sync::Arc;

use super::PassError;
use crate::ir::builder::{add_typed, type_of};
use crate::ir::{Graph, NodeId, Op, TensorType, UnaryOp};
use crate::span::Span;
use crate::tensor::{Tensor, TensorData};

/// Adds `op` applied to `inputs`, typed by its shape rule.
pub fn add_node(
    graph: &mut Graph,
    pass: &'static str,
    op: Op,
    inputs: &[NodeId],
    span: Option<Span>,
) -> Result<NodeId, PassError> {
    let name = op.name();
    add_typed(graph, op, inputs, span).map_err(|e| PassError::IllTyped {
        pass,
        op: name,
        message: e.0,
    })
}

/// Adds a constant node holding `value`.
pub fn add_constant(graph: &mut Graph, value: Tensor, span: Option<Span>) -> NodeId {
    let ty = type_of(&value);
    graph.add_node(
        Op::Constant(Constant {
            value: Arc::new(value),
        }),
        &[],
        ty,
        span,
    )
}

/// Makes every use of `old` (readers and outputs) use `new`, then removes
/// `old` and whatever became dead with it. The two must have one type: a
/// rewrite that changes a value's type is a bug, reported as an error.
pub fn replace(
    graph: &mut Graph,
    pass: &'static str,
    old: NodeId,
    new: NodeId,
) -> Result<(), PassError> {
    if old == new {
        return Ok(());
    }
    redirect(graph, pass, old, new)?;
    prune(graph, old);
    Ok(())
}

/// [`replace`] without removing `old`: for a rewrite that moves the readers
/// of several nodes before removing any (a removal can take unread
/// producers with it).
pub fn redirect(
    graph: &mut Graph,
    pass: &'static str,
    old: NodeId,
    new: NodeId,
) -> Result<(), PassError> {
    if graph.node(old).ty != graph.node(new).ty {
        return Err(PassError::IllTyped {
            pass,
            op: graph.node(new).op.name(),
            message: format!(
                "replaces a {} value by a {} one",
                graph.node(old).ty,
                graph.node(new).ty
            ),
        });
    }
    graph.replace_all_uses(old, new);
    Ok(())
}

/// Removes `id` if nothing reads it, then its operands that became unread.
/// Model inputs are never removed.
pub fn prune(graph: &mut Graph, id: NodeId) {
    let mut work = vec![id];
    while let Some(id) = work.pop() {
        if !graph.contains(id) || is_used(graph, id) || graph.inputs.contains(&id) {
            continue;
        }
        let operands = graph.inputs(id);
        graph.remove_node(id);
        work.extend(operands);
    }
}

/// Read by another node or named as an output.
pub fn is_used(graph: &Graph, id: NodeId) -> bool {
    graph.has_users(id) || graph.is_output(id)
}

/// The one node reading `id`, if exactly one does and `id` is not an output:
/// the condition for folding `id` into its reader without keeping a copy.
pub fn sole_user(graph: &Graph, id: NodeId) -> Option<NodeId> {
    if graph.is_output(id) {
        return None;
    }
    graph.single_user(id)
}

/// The constant tensor of a `Constant` node.
pub fn constant(graph: &Graph, id: NodeId) -> Option<&Tensor> {
    match &graph.node(id).op {
        Op::Constant(Constant { value }) => Some(value),
        _ => None,
    }
}

/// The value of an f32 constant whose every element is that same value
/// (a scalar literal, or a splat like `ones`).
pub fn splat_value(graph: &Graph, id: NodeId) -> Option<f32> {
    let values = constant(graph, id)?.as_f32()?;
    let first = *values.first()?;
    values
        .iter()
        .all(|v| v.to_bits() == first.to_bits())
        .then_some(first)
}

/// The value of an f32 constant of shape `[]`.
pub fn scalar_value(graph: &Graph, id: NodeId) -> Option<f32> {
    let t = constant(graph, id)?;
    if t.shape().is_empty() {
        t.as_f32().map(|v| v[0])
    } else {
        None
    }
}

/// A weight: a value computed from parameters and constants only (a
/// parameter, a constant, or say `transpose(w) * 0.5`), so it is the same
/// on every inference, unlike anything that reads a model input.
pub fn is_weight(graph: &Graph, id: NodeId) -> bool {
    let mut seen = HashSet::new();
    let mut work = vec![id];
    while let Some(id) = work.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Op::Input(_) = graph.node(id).op {
            return false;
        }
        work.extend(graph.inputs(id));
    }
    true
}

/// Every node [`is_weight`] holds for, found in one walk of the graph (for
/// a pass asking about many nodes: asking `is_weight` of each would walk
/// the graph once per node).
pub fn weight_nodes(graph: &Graph) -> HashSet<NodeId> {
    let mut weights = HashSet::new();
    for id in graph.topo_order() {
        let from_weights = graph.inputs(id).iter().all(|x| weights.contains(x));
        if from_weights && !matches!(graph.node(id).op, Op::Input(_)) {
            weights.insert(id);
        }
    }
    weights
}

/// Whether `target` is `from` or one of its (transitive) operands.
pub fn depends_on(graph: &Graph, from: NodeId, target: NodeId) -> bool {
    let mut seen = HashSet::new();
    let mut work = vec![from];
    while let Some(id) = work.pop() {
        if id == target {
            return true;
        }
        if seen.insert(id) {
            work.extend(graph.inputs(id));
        }
    }
    false
}

/// The operand of a unary `op` node.
pub fn unary_operand(graph: &Graph, id: NodeId, op: UnaryOp) -> Option<NodeId> {
    match graph.node(id).op {
        Op::Unary(u) if u == op => graph.inputs(id).first().copied(),
        _ => None,
    }
}

/// `perm` swaps the last two axes and keeps the rest in place.
pub fn is_last_two_swap(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[r - 2] == r - 1
        && perm[r - 1] == r - 2
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
}

/// Bitwise equality of two tensors (so `NaN == NaN` and `0.0 != -0.0`):
/// the notion of "the same constant" that merging and hashing need.
pub fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    if a.shape() != b.shape() {
        return false;
    }
    match (a.data(), b.data()) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (TensorData::I64(x), TensorData::I64(y)) => x == y,
        (TensorData::I32(x), TensorData::I32(y)) => x == y,
        (TensorData::Bool(x), TensorData::Bool(y)) => x == y,
        _ => false,
    }
}

/// The number of elements of a shape with every dim known.
pub fn known_len(ty: &TensorType) -> Option<usize> {
    ty.known_shape().map(|s| s.iter().product())
}
