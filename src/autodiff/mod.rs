//! Reverse-mode automatic differentiation as a graph transform.
//!
//! [`append_gradients`] takes a graph, one of its scalar f32 outputs and a
//! choice of parameters and/or inputs, and appends to the *same* graph the
//! ops that compute the gradient of that output with respect to each of
//! them, as new outputs named `grad.NAME`. The backward graph is made of
//! ordinary ops, so the passes, the interpreter and the JIT apply to it
//! unchanged, and `lamina graph --grad` prints it.
//!
//! The driver walks the nodes that lie between the chosen leaves and the
//! output in reverse topological order. Each node's gradient is the sum of
//! the contributions its readers sent it; the node's op turns it into one
//! contribution per operand with its vector-Jacobian rule (`OpKind::vjp`,
//! in the op's own file under `ir/ops/`).
//! Only f32 values carry gradients: comparisons, integer ids and casts to
//! integers stop the walk. Broadcasting is undone by summing over the
//! broadcast axes ([`Vjp::unbroadcast`]), so every contribution has its
//! operand's exact type.

pub use crate::ir::vjp::{GradError, Vjp};

use std::collections::{HashMap, HashSet};

use crate::ir::vjp::constant;
use crate::ir::{DType, Dim, Graph, NodeId};
use crate::tensor::Tensor;

/// The prefix of the outputs [`append_gradients`] adds: `grad.fc1.weight`.
pub const GRAD_PREFIX: &str = "grad.";

/// What to differentiate with respect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wrt {
    /// Every f32 parameter.
    Params,
    /// Every f32 model input.
    Inputs,
    /// These parameters and/or inputs, by name.
    Names(Vec<String>),
}

impl Wrt {
    /// `params`, `inputs`, or a comma-separated list of names, as
    /// `lamina graph --wrt` spells it.
    pub fn parse(spec: &str) -> Wrt {
        match spec.trim() {
            "params" => Wrt::Params,
            "inputs" => Wrt::Inputs,
            names => Wrt::Names(
                names
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect(),
            ),
        }
    }
}

/// One gradient appended to the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gradient {
    /// The parameter or input differentiated against.
    pub name: String,
    /// The output holding the gradient (`grad.NAME`).
    pub output: String,
    /// The node computing it; same type as the parameter or input.
    pub node: NodeId,
}

/// Appends `grad.NAME` outputs holding d`output`/dNAME for each parameter
/// or input `wrt` selects, in the order they are declared (inputs first).
/// A selected value the output does not depend on gets a zero gradient.
/// Every op on the way without a gradient rule is reported at once.
pub fn append_gradients(
    graph: &mut Graph,
    output: &str,
    wrt: &Wrt,
) -> Result<Vec<Gradient>, Vec<GradError>> {
    let loss = find_scalar_output(graph, output).map_err(|e| vec![e])?;
    let leaves = select_leaves(graph, wrt).map_err(|e| vec![e])?;
    for (name, _) in &leaves {
        let out = format!("{GRAD_PREFIX}{name}");
        if graph.outputs.iter().any(|(o, _)| *o == out) {
            return Err(vec![GradError::OutputExists { name: out }]);
        }
    }
    let active = active_nodes(graph, loss, leaves.iter().map(|(_, id)| *id));
    let order = graph.topo_order();
    let leaf_ids: HashSet<NodeId> = leaves.iter().map(|(_, id)| *id).collect();

    let mut contributions: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let seed_ty = graph.node(loss).ty.clone();
    let seed = {
        let shape = seed_ty
            .known_shape()
            .expect("a scalar output has known dims");
        constant(graph, Tensor::f32(shape, vec![1.0]), graph.node(loss).span)
    };
    contributions.insert(loss, vec![seed]);
    let mut errors = Vec::new();
    for &id in order.iter().rev() {
        if !active.contains(&id) || leaf_ids.contains(&id) {
            continue;
        }
        let Some(parts) = contributions.remove(&id) else {
            continue;
        };
        let node = graph.node(id).clone();
        let mut cx = Vjp::new(graph, node.op.name(), node.span);
        let g = match cx.sum_all(&parts) {
            Ok(g) => g,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let inputs = cx.graph().inputs(id);
        let wants: Vec<bool> = inputs.iter().map(|i| active.contains(i)).collect();
        if !wants.iter().any(|&w| w) {
            continue;
        }
        match node.op.kind().vjp(&mut cx, id, &inputs, g, &wants) {
            Ok(grads) => {
                for ((input, grad), want) in inputs.iter().zip(grads).zip(&wants) {
                    if let (Some(grad), true) = (grad, want) {
                        contributions.entry(*input).or_default().push(grad);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut appended = Vec::with_capacity(leaves.len());
    for (name, leaf) in leaves {
        let span = graph.node(leaf).span;
        let mut cx = Vjp::new(graph, "gradient", span);
        let node = match contributions.remove(&leaf) {
            Some(parts) => cx.sum_all(&parts),
            None => {
                let ty = cx.ty(leaf).clone();
                cx.zeros(&ty)
            }
        }
        .map_err(|e| vec![e])?;
        let output = format!("{GRAD_PREFIX}{name}");
        graph.outputs.push((output.clone(), node));
        appended.push(Gradient { name, output, node });
    }
    Ok(appended)
}

fn find_scalar_output(graph: &Graph, output: &str) -> Result<NodeId, GradError> {
    let Some(&(_, id)) = graph.outputs.iter().find(|(name, _)| name == output) else {
        let known: Vec<&str> = graph.outputs.iter().map(|(n, _)| n.as_str()).collect();
        return Err(GradError::UnknownOutput {
            name: output.to_string(),
            known: known.join(", "),
        });
    };
    let ty = &graph.node(id).ty;
    let scalar = ty.dtype == DType::F32 && ty.shape.iter().all(Dim::is_one);
    if !scalar {
        return Err(GradError::NotScalar {
            name: output.to_string(),
            ty: ty.to_string(),
        });
    }
    Ok(id)
}

/// The parameters and inputs `wrt` names, as (name, node), inputs first.
fn select_leaves(graph: &Graph, wrt: &Wrt) -> Result<Vec<(String, NodeId)>, GradError> {
    let inputs: Vec<(String, NodeId)> = graph
        .inputs
        .iter()
        .map(|&id| (graph.input_name(id).to_string(), id))
        .collect();
    let params = graph.params();
    let is_f32 = |id: &NodeId| graph.node(*id).ty.dtype == DType::F32;
    let chosen: Vec<(String, NodeId)> = match wrt {
        Wrt::Params => {
            let chosen: Vec<_> = params.into_iter().filter(|(_, id)| is_f32(id)).collect();
            if chosen.is_empty() {
                return Err(GradError::NothingToDifferentiate { what: "parameters" });
            }
            chosen
        }
        Wrt::Inputs => {
            let chosen: Vec<_> = inputs.into_iter().filter(|(_, id)| is_f32(id)).collect();
            if chosen.is_empty() {
                return Err(GradError::NothingToDifferentiate { what: "inputs" });
            }
            chosen
        }
        Wrt::Names(names) => {
            let all: Vec<(String, NodeId)> = inputs.into_iter().chain(params).collect();
            let mut chosen = Vec::new();
            for name in names {
                let Some(found) = all.iter().find(|(n, _)| n == name) else {
                    let known: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(GradError::UnknownWrt {
                        name: name.clone(),
                        known: known.join(", "),
                    });
                };
                if !is_f32(&found.1) {
                    return Err(GradError::NotF32 {
                        name: name.clone(),
                        ty: graph.node(found.1).ty.to_string(),
                    });
                }
                if !chosen.iter().any(|(n, _)| n == name) {
                    chosen.push(found.clone());
                }
            }
            chosen
        }
    };
    Ok(chosen)
}

/// f32 nodes that depend on some leaf and that the output depends on: the
/// only nodes a gradient flows through.
fn active_nodes(
    graph: &Graph,
    output: NodeId,
    leaves: impl Iterator<Item = NodeId>,
) -> HashSet<NodeId> {
    let mut from_leaves: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = leaves.collect();
    while let Some(id) = stack.pop() {
        if graph.node(id).ty.dtype != DType::F32 || !from_leaves.insert(id) {
            continue;
        }
        stack.extend(graph.users(id));
    }
    let mut active = HashSet::new();
    let mut stack = vec![output];
    while let Some(id) = stack.pop() {
        if !from_leaves.contains(&id) || !active.insert(id) {
            continue;
        }
        stack.extend(graph.inputs(id));
    }
    active
}

#[cfg(test)]
mod tests;
