//! Shared helpers for the pass tests: a tiny graph builder and a
//! before/after rendering for snapshots.
#![allow(dead_code)]

use std::sync::Arc;

use lamina::ir::{printer, shape_rules, DType, Dim, Graph, NodeId, Op, TensorType};
use lamina::passes::{PassContext, PassManager, PassReport};
use lamina::tensor::Tensor;

/// `"f32[batch, 784]"` -> a tensor type; integers are known dims, other
/// names symbols.
pub fn ty(text: &str) -> TensorType {
    let (dtype, rest) = text.split_once('[').expect("type has [");
    let dims = rest.trim_end_matches(']');
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map(Dim::known)
                .unwrap_or_else(|_| Dim::symbol(d))
        })
        .collect();
    TensorType::new(dtype.parse::<DType>().expect("dtype"), shape)
}

pub struct Builder {
    pub graph: Graph,
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder {
            graph: Graph::new(name),
        }
    }

    pub fn input(&mut self, name: &str, t: &str) -> NodeId {
        let id = self
            .graph
            .add_node(Op::Input { name: name.into() }, &[], ty(t), None);
        self.graph.inputs.push(id);
        id
    }

    pub fn param(&mut self, name: &str, t: &str) -> NodeId {
        self.graph.add_node(
            Op::Param {
                name: name.into(),
                init: None,
            },
            &[],
            ty(t),
            None,
        )
    }

    pub fn constant(&mut self, value: Tensor) -> NodeId {
        let t = TensorType::new(
            value.dtype(),
            value.shape().iter().map(|&d| Dim::known(d)).collect(),
        );
        self.graph.add_node(
            Op::Constant {
                value: Arc::new(value),
            },
            &[],
            t,
            None,
        )
    }

    pub fn scalar(&mut self, v: f32) -> NodeId {
        self.constant(Tensor::scalar(v))
    }

    /// Adds `op` on `inputs`, typed by its shape rule (panics on a test's own
    /// ill-typed graph).
    pub fn op(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &self.graph.node(i).ty).collect();
        let t = shape_rules::infer(&op, &types)
            .unwrap_or_else(|e| panic!("test graph is ill-typed: {e}"));
        self.graph.add_node(op, inputs, t, None)
    }

    pub fn output(&mut self, name: &str, id: NodeId) {
        self.graph.outputs.push((name.into(), id));
    }

    pub fn finish(self) -> Graph {
        lamina::ir::verify::verify(&self.graph).expect("test graph verifies");
        self.graph
    }
}

/// Runs `spec` (`"all"` or `"a,b"`) on a copy of `graph` without parameter
/// values.
pub fn optimize(graph: &Graph, spec: &str) -> (Graph, PassReport) {
    optimize_in(graph, spec, &PassContext::default())
}

pub fn optimize_in(graph: &Graph, spec: &str, cx: &PassContext<'_>) -> (Graph, PassReport) {
    let mut g = graph.clone();
    let report = PassManager::from_spec(spec)
        .expect("known passes")
        .run(&mut g, cx, None)
        .unwrap_or_else(|e| panic!("passes failed: {e}"));
    (g, report)
}

/// The snapshot text: the graph before, the passes run, the graph after and
/// the rewrites made.
pub fn before_after(graph: &Graph, spec: &str) -> String {
    before_after_in(graph, spec, &PassContext::default())
}

pub fn before_after_in(graph: &Graph, spec: &str, cx: &PassContext<'_>) -> String {
    let (after, report) = optimize_in(graph, spec, cx);
    let mut kinds: Vec<String> = Vec::new();
    for p in &report.per_pass {
        for (k, n) in &p.rewrites {
            kinds.push(format!("{}: {k} x{n}", p.name));
        }
    }
    format!(
        "{}\n--- passes: {spec} ---\n{}\n--- rewrites ---\n{}\n",
        printer::print(graph),
        printer::print(&after),
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join("\n")
        }
    )
}

/// Counts the nodes whose op has this printed name.
pub fn count_ops(graph: &Graph, name: &str) -> usize {
    graph
        .node_ids()
        .filter(|&id| graph.node(id).op.name() == name)
        .count()
}
