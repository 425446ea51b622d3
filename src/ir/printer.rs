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

use crate::ir::ops::{
    Cast, Concat, Constant, FusedElementwise, FusedLinear, Gather, Input, LayerNorm, LogSoftmax,
    MatMul, Param, Permute, Reduce, Reshape, Slice, Softmax,
};
use std::collections::HashMap;
use std::fmt::Write;

use super::graph::ShapeDisplay;
use super::{Graph, NodeId, Op};

/// The attributes of an op as `key=value` pairs, in a fixed order.
pub fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    let list = |v: &[usize]| {
        format!(
            "[{}]",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if let Some(kind) = op.kind() {
        return kind.attributes();
    }
    match op {
        Op::Input(_) | Op::Param(_) | Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where => {
            vec![]
        }
        Op::Conv2d(_)
        | Op::Pool2d(_)
        | Op::BatchNorm(_)
        | Op::Clip(_)
        | Op::Pad(_)
        | Op::Resize(_) => unreachable!("registered in Op::kind"),
        Op::Constant(Constant { value }) => {
            let shown = if value.len() == 1 {
                format!("{}", value.to_f64_vec()[0] as f32)
            } else {
                format!("<{} values>", value.len())
            };
            vec![("value", shown)]
        }
        Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        }) => {
            let mut a = vec![];
            if *transpose_a {
                a.push(("transpose_a", "true".to_string()));
            }
            if *transpose_b {
                a.push(("transpose_b", "true".to_string()));
            }
            a
        }
        Op::Softmax(Softmax { axis })
        | Op::LogSoftmax(LogSoftmax { axis })
        | Op::Concat(Concat { axis })
        | Op::Gather(Gather { axis }) => {
            vec![("axis", axis.to_string())]
        }
        Op::LayerNorm(LayerNorm { axis, eps }) => {
            vec![("axis", axis.to_string()), ("eps", eps.to_string())]
        }
        Op::Reduce(Reduce { axes, keepdims, .. }) => {
            let mut a = vec![("axes", list(axes))];
            if *keepdims {
                a.push(("keepdims", "true".to_string()));
            }
            a
        }
        Op::Permute(Permute { perm }) => vec![("perm", list(perm))],
        Op::Reshape(Reshape { shape }) => vec![("shape", ShapeDisplay(shape).to_string())],
        Op::Slice(Slice {
            axis,
            start,
            end,
            step,
        }) => vec![
            ("axis", axis.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", step.to_string()),
        ],
        Op::Cast(Cast { to }) => vec![("to", to.to_string())],
        Op::FusedLinear(FusedLinear {
            transpose_b,
            epilogue,
        }) => {
            let mut a = vec![];
            if *transpose_b {
                a.push(("transpose_b", "true".to_string()));
            }
            if epilogue.bias {
                a.push(("bias", "true".to_string()));
            }
            if let Some(act) = epilogue.activation {
                a.push(("activation", act.name().to_string()));
            }
            if epilogue.residual {
                a.push(("residual", "true".to_string()));
            }
            a
        }
        Op::FusedElementwise(FusedElementwise { expr }) => vec![("expr", expr.to_string())],
    }
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
            Op::FusedLinear(_) | Op::FusedElementwise(_) => ", style=filled, fillcolor=\"#dcfce7\"",
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
