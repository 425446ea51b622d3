//! Elementwise fusion: a tree (or DAG) of unary, binary, compare and where
//! ops becomes one `fused_elementwise` node evaluating an expression per
//! element, so intermediates never go to memory.
//!
//! A region grows from its last op towards its operands. An elementwise
//! producer joins when
//! - every reader of it is already in the region and it is not an output
//!   (otherwise its value is still needed on its own), and
//! - its shape is the region's output shape: a smaller intermediate
//!   (`exp(bias)` with bias `[n]` feeding a `[m, n]` op) would otherwise be
//!   recomputed for every output element; such values stay inputs and are
//!   broadcast, as numpy broadcasting composes, and
//! - the region still reads at most [`MAX_FUSED_INPUTS`] distinct tensors.
//!
//! f32 scalar constants become literals in the expression instead of inputs.
//! Joining only producers whose readers are all inside keeps the graph
//! acyclic: no path can leave the region and come back.

use crate::ir::ops::FusedElementwise;
use std::collections::{HashMap, HashSet};

use super::edit::{add_node, is_used, replace, scalar_value};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::{
    shape_rules, DType, ElementwiseExpr, ExprStep, Float, Graph, NodeId, Op, TensorType,
};

/// The most tensors one fused node reads: bounds the kernel's argument
/// list and the registers an element needs.
pub const MAX_FUSED_INPUTS: usize = 8;

pub struct ElementwiseFusion;

impl Pass for ElementwiseFusion {
    fn name(&self) -> &'static str {
        "fuse-elementwise"
    }

    fn description(&self) -> &'static str {
        "fuse chains and trees of elementwise ops into fused_elementwise"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        let order = graph.topo_order();
        let position: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        // Readers first, so each region grows from its last op.
        for &root in order.iter().rev() {
            if !graph.contains(root) || !fusable(graph, root) || !is_used(graph, root) {
                continue;
            }
            let mut region = grow_region(graph, root);
            if region.len() < 2 {
                continue;
            }
            region.sort_by_key(|id| position[id]);
            let (expr, inputs) = build_expr(graph, &region);
            if inputs.is_empty() {
                continue;
            }
            let op = Op::FusedElementwise(FusedElementwise { expr });
            let types: Vec<&TensorType> = inputs.iter().map(|&i| &graph.node(i).ty).collect();
            if shape_rules::infer(&op, &types).ok().as_ref() != Some(&graph.node(root).ty) {
                continue;
            }
            let span = graph.node(root).span;
            if !steps.take(format!("{} ops", region.len()), span) {
                break;
            }
            let fused = add_node(graph, self.name(), op, &inputs, span)?;
            replace(graph, self.name(), root, fused)?;
        }
        Ok(())
    }
}

/// Elementwise ops a fused expression can hold: its arithmetic steps are
/// f32, so integer arithmetic (`i64 + i64`) stays a node of its own.
fn fusable(graph: &Graph, id: NodeId) -> bool {
    let node = graph.node(id);
    node.op.is_elementwise() && !(matches!(node.op, Op::Binary(_)) && node.ty.dtype != DType::F32)
}

/// The most expression steps one fused node may have. Without a bound a
/// long chain of elementwise ops (generated models have 100,000) becomes a
/// single kernel whose compile time and register pressure grow with it;
/// past the bound the chain is cut into several fused nodes.
pub const MAX_FUSED_STEPS: usize = 1024;

/// Expression steps a node brings into a region.
fn steps_of(graph: &Graph, id: NodeId) -> usize {
    match &graph.node(id).op {
        Op::FusedElementwise(FusedElementwise { expr }) => expr.steps.len(),
        _ => 1,
    }
}

/// The region ending at `root`, in no particular order.
///
/// The set of tensors the region reads from outside is kept up to date as
/// members join (recomputing it per candidate made long chains quadratic).
fn grow_region(graph: &Graph, root: NodeId) -> Vec<NodeId> {
    let shape = &graph.node(root).ty.shape;
    let mut members: HashSet<NodeId> = HashSet::from([root]);
    let mut external: HashSet<NodeId> = graph
        .inputs(root)
        .into_iter()
        .filter(|&o| o != root && !is_scalar_literal(graph, o))
        .collect();
    let mut steps = steps_of(graph, root);
    let mut region = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        let mut i = 0;
        while i < region.len() {
            for operand in graph.inputs(region[i]) {
                let candidate = graph.node(operand);
                let joins = !members.contains(&operand)
                    && fusable(graph, operand)
                    && candidate.ty.shape == *shape
                    && !graph.is_output(operand)
                    && steps + steps_of(graph, operand) <= MAX_FUSED_STEPS
                    && graph.users(operand).iter().all(|u| members.contains(u));
                if !joins {
                    continue;
                }
                let mut added: Vec<NodeId> = graph
                    .inputs(operand)
                    .into_iter()
                    .filter(|o| {
                        !members.contains(o)
                            && *o != operand
                            && !external.contains(o)
                            && !is_scalar_literal(graph, *o)
                    })
                    .collect();
                added.sort_unstable();
                added.dedup();
                let after = external.len() - usize::from(external.contains(&operand)) + added.len();
                if after > MAX_FUSED_INPUTS {
                    continue;
                }
                members.insert(operand);
                external.remove(&operand);
                external.extend(added);
                steps += steps_of(graph, operand);
                region.push(operand);
                grew = true;
            }
            i += 1;
        }
    }
    region
}

fn is_scalar_literal(graph: &Graph, id: NodeId) -> bool {
    scalar_value(graph, id).is_some()
}

/// The expression of a region given in topological order, and the tensors
/// it reads, numbered by first use.
fn build_expr(graph: &Graph, region: &[NodeId]) -> (ElementwiseExpr, Vec<NodeId>) {
    let mut steps: Vec<ExprStep> = Vec::new();
    let mut inputs: Vec<NodeId> = Vec::new();
    let mut step_of: HashMap<NodeId, usize> = HashMap::new();
    let members: HashSet<NodeId> = region.iter().copied().collect();
    for &id in region {
        let mut operand_steps = Vec::new();
        for operand in graph.inputs(id) {
            let step = match step_of.get(&operand) {
                Some(&s) => s,
                None => {
                    debug_assert!(!members.contains(&operand), "region given out of order");
                    let leaf = match scalar_value(graph, operand) {
                        Some(v) => ExprStep::Const(Float(v)),
                        None => {
                            inputs.push(operand);
                            ExprStep::Input(inputs.len() - 1)
                        }
                    };
                    steps.push(leaf);
                    step_of.insert(operand, steps.len() - 1);
                    steps.len() - 1
                }
            };
            operand_steps.push(step);
        }
        let result = match &graph.node(id).op {
            Op::Unary(u) => push(&mut steps, ExprStep::Unary(*u, operand_steps[0])),
            Op::Binary(b) => push(
                &mut steps,
                ExprStep::Binary(*b, operand_steps[0], operand_steps[1]),
            ),
            Op::Compare(c) => push(
                &mut steps,
                ExprStep::Compare(*c, operand_steps[0], operand_steps[1]),
            ),
            Op::Where => push(
                &mut steps,
                ExprStep::Where(operand_steps[0], operand_steps[1], operand_steps[2]),
            ),
            Op::FusedElementwise(FusedElementwise { expr }) => {
                inline(&mut steps, expr, &operand_steps)
            }
            other => unreachable!("`{}` is not elementwise but joined a region", other.name()),
        };
        step_of.insert(id, result);
    }
    (ElementwiseExpr { steps }, inputs)
}

fn push(steps: &mut Vec<ExprStep>, step: ExprStep) -> usize {
    steps.push(step);
    steps.len() - 1
}

/// Appends the steps of an already fused expression whose inputs are the
/// given steps; returns its result step.
fn inline(steps: &mut Vec<ExprStep>, expr: &ElementwiseExpr, operand_steps: &[usize]) -> usize {
    let mut local: Vec<usize> = Vec::with_capacity(expr.steps.len());
    for step in &expr.steps {
        let index = match step {
            ExprStep::Input(k) => operand_steps[*k],
            ExprStep::Const(c) => push(steps, ExprStep::Const(*c)),
            ExprStep::Unary(u, a) => push(steps, ExprStep::Unary(*u, local[*a])),
            ExprStep::Binary(b, x, y) => push(steps, ExprStep::Binary(*b, local[*x], local[*y])),
            ExprStep::Compare(c, x, y) => push(steps, ExprStep::Compare(*c, local[*x], local[*y])),
            ExprStep::Where(c, x, y) => {
                push(steps, ExprStep::Where(local[*c], local[*x], local[*y]))
            }
        };
        local.push(index);
    }
    *local.last().expect("a fused expression has steps")
}
