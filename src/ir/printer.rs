//! The stable text form of a graph, one line a node, for humans and
//! snapshot tests:
//!
//! ```text
//! graph mlp
//!   %0 = input "x" : f32[batch, 784]
//!   %1 = param "fc1.weight" xavier(seed=7) : f32[784, 512]
//!   %2 = matmul(%0, %1) : f32[batch, 512]
//!   %3 = softmax(%2) {axis=1} : f32[batch, 512]
//!   output probs = %3
//! ```
//!
//! Nodes are numbered in `topo_order`, so the text depends only on the
//! graph's structure, never on petgraph's internal indices.

use crate::ir::ops::{Input, Param};
use std::collections::HashMap;
use std::fmt::Write;

use super::{Graph, NodeId, Op};

/// The attributes of an op as `key=value` pairs, in a fixed order.
pub fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    op.kind().attributes()
}

/// Position of each node in `topo_order`, the number the printer shows.
pub fn numbering(graph: &Graph) -> HashMap<NodeId, usize> {
    graph
        .topo_order()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect()
}

/// One node as `op(%a, %b) {attrs}` (without the `%n =` and type).
pub fn node_text(graph: &Graph, id: NodeId, numbers: &HashMap<NodeId, usize>) -> String {
    let node = graph.node(id);
    let mut line = String::new();
    line.push_str(node.op.name());
    match &node.op {
        Op::Input(Input { name }) => write!(line, " \"{name}\"").unwrap(),
        Op::Param(Param { name, init }) => {
            write!(line, " \"{name}\"").unwrap();
            if let Some(init) = init {
                write!(line, " {init}").unwrap();
            }
        }
        _ => {
            let inputs: Vec<String> = graph
                .inputs(id)
                .iter()
                .map(|i| format!("%{}", numbers[i]))
                .collect();
            write!(line, "({})", inputs.join(", ")).unwrap();
        }
    }
    let attrs = attributes(&node.op);
    if !attrs.is_empty() {
        let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(line, " {{{}}}", attrs.join(", ")).unwrap();
    }
    line
}

/// The whole graph as text.
pub fn print(graph: &Graph) -> String {
    let numbers = numbering(graph);
    let mut out = format!("graph {}\n", graph.name);
    for id in graph.topo_order() {
        let node = graph.node(id);
        writeln!(
            out,
            "  %{} = {} : {}",
            numbers[&id],
            node_text(graph, id, &numbers),
            node.ty
        )
        .unwrap();
    }
    for (name, id) in &graph.outputs {
        writeln!(out, "  output {name} = %{}", numbers[id]).unwrap();
    }
    out
}

/// Graphviz DOT: one box per node labelled with op, attributes and type.
pub fn to_dot(graph: &Graph) -> String {
    let numbers = numbering(graph);
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = format!(
        "digraph \"{}\" {{\n  node [shape=box, fontname=\"monospace\"];\n",
        escape(&graph.name)
    );
    for id in graph.topo_order() {
        let node = graph.node(id);
        let mut label = match &node.op {
            Op::Input(Input { name }) | Op::Param(Param { name, .. }) => {
                format!("{} {}", node.op.name(), name)
            }
            op => op.name().to_string(),
        };
        for (k, v) in attributes(&node.op) {
            write!(label, "\\n{k}={}", escape(&v)).unwrap();
        }
        write!(label, "\\n{}", node.ty).unwrap();
        let style = match node.op {
            Op::Input(_) => ", style=filled, fillcolor=\"#dbeafe\"",
            Op::Param(_) | Op::Constant(_) => ", style=filled, fillcolor=\"#f3f4f6\"",
            Op::FusedLinear(_) | Op::FusedConv2d(_) | Op::FusedElementwise(_) => {
                ", style=filled, fillcolor=\"#dcfce7\""
            }
            _ => "",
        };
        writeln!(
            out,
            "  n{} [label=\"%{}: {}\"{}];",
            numbers[&id], numbers[&id], label, style
        )
        .unwrap();
        for input in graph.inputs(id) {
            writeln!(out, "  n{} -> n{};", numbers[&input], numbers[&id]).unwrap();
        }
    }
    for (name, id) in &graph.outputs {
        writeln!(
            out,
            "  out_{0} [label=\"output {0}\", shape=ellipse];",
            escape(name)
        )
        .unwrap();
        writeln!(out, "  n{} -> out_{};", numbers[id], escape(name)).unwrap();
    }
    out.push_str("}\n");
    out
}
