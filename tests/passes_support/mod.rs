//! Shared helpers for the pass tests: the library's graph builder with
//! parameters declared by type, and a before/after rendering for snapshots.
#![allow(dead_code)]

use lamina::ir::builder::GraphBuilder;
use lamina::ir::{printer, Graph, NodeId, TensorType};
use lamina::passes::{PassContext, PassManager, PassReport};

/// `"f32[batch, 784]"` -> a tensor type; integers are known dims, other
/// names symbols.
pub fn ty(text: &str) -> TensorType {
    lamina::ir::builder::parse_type(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The library's graph builder, with parameters declared by type (pass
/// tests run without parameter values) and `finish` giving the graph.
pub struct Builder(GraphBuilder);

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder(GraphBuilder::new(name))
    }

    pub fn param(&mut self, name: &str, t: &str) -> NodeId {
        self.0.param_decl(name, t)
    }

    pub fn finish(self) -> Graph {
        self.0.finish().0
    }
}

impl std::ops::Deref for Builder {
    type Target = GraphBuilder;
    fn deref(&self) -> &GraphBuilder {
        &self.0
    }
}

impl std::ops::DerefMut for Builder {
    fn deref_mut(&mut self) -> &mut GraphBuilder {
        &mut self.0
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
