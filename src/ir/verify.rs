//! Graph consistency, checked after lowering and after every pass: the graph
//! is acyclic, every edge position is filled once, every node's recorded type
//! is what its shape rule says, and outputs and inputs are live nodes.

use super::printer::{node_text, numbering};
use super::{shape_rules, Graph, Op, TensorType};
use crate::ir::ops::Constant;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("graph `{graph}` is inconsistent: {problems:?}")]
pub struct VerifyError {
    pub graph: String,
    pub problems: Vec<String>,
}

pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let mut problems = Vec::new();
    if !graph.is_acyclic() {
        problems.push("the graph has a cycle".to_string());
        return Err(VerifyError {
            graph: graph.name.clone(),
            problems,
        });
    }
    let numbers = numbering(graph);
    for id in graph.topo_order() {
        let node = graph.node(id);
        let inputs = graph.inputs(id);
        let what = || format!("%{} = {}", numbers[&id], node_text(graph, id, &numbers));
        if node.op.is_source() {
            if !inputs.is_empty() {
                problems.push(format!("{}: a source node has operands", what()));
            }
            if let Op::Constant(Constant { value }) = &node.op {
                let ty = shape_rules::infer(&node.op, &[]).expect("constants always type");
                if ty != node.ty
                    || value.len() != ty.known_shape().map_or(0, |s| s.iter().product())
                {
                    problems.push(format!(
                        "{}: constant type {} recorded as {}",
                        what(),
                        ty,
                        node.ty
                    ));
                }
            }
            continue;
        }
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &graph.node(i).ty).collect();
        match shape_rules::infer(&node.op, &types) {
            Ok(ty) if ty == node.ty => {}
            Ok(ty) => problems.push(format!(
                "{}: recorded type {} but the shape rule gives {}",
                what(),
                node.ty,
                ty
            )),
            Err(e) => problems.push(format!("{}: {}", what(), e)),
        }
    }
    for (name, id) in &graph.outputs {
        if !graph.contains(*id) {
            problems.push(format!("output `{name}` points at a removed node"));
        }
    }
    for id in &graph.inputs {
        if !graph.contains(*id) || !matches!(graph.node(*id).op, Op::Input(_)) {
            problems.push("a model input is not a live input node".to_string());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError {
            graph: graph.name.clone(),
            problems,
        })
    }
}
