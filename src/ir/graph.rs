//! The computation graph: a petgraph of typed, shaped op nodes.
//!
//! Edges run from producer to consumer and carry the operand position, so a
//! node's inputs are its incoming edges ordered by weight. Node indices are
//! stable across removals; `topo_order` gives the deterministic order every
//! consumer (printer, interpreter, codegen) walks in.

use crate::ir::ops::{Input, Param};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use super::{DType, Dim, Op};
use crate::span::Span;

pub type NodeId = NodeIndex<u32>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Concrete sizes, if no dim is symbolic.
    pub fn known_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(Dim::as_known).collect()
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.dtype, ShapeDisplay(&self.shape))
    }
}

/// Prints a shape as `[batch, 784]`.
pub struct ShapeDisplay<'a>(pub &'a [Dim]);

impl std::fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// Where in the model source this node came from, for diagnostics.
    pub span: Option<Span>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    graph: StableDiGraph<Node, usize>,
    /// Model inputs, in declaration order.
    pub inputs: Vec<NodeId>,
    /// Model outputs: name and producing node, in declaration order.
    pub outputs: Vec<(String, NodeId)>,
    /// Bumped by every method that may change a node or an edge
    /// ([`Graph::revision`]).
    revision: u64,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// Adds a node whose type the caller has already inferred.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: &[NodeId],
        ty: TensorType,
        span: Option<Span>,
    ) -> NodeId {
        self.revision += 1;
        let id = self.graph.add_node(Node { op, ty, span });
        for (pos, &input) in inputs.iter().enumerate() {
            self.graph.add_edge(input, id, pos);
        }
        id
    }

    /// A number that changes whenever a node or an edge may have changed
    /// (every method taking `&mut self` bumps it; a clone keeps it). Two
    /// equal revisions of one graph, with equal `inputs` and `outputs`
    /// (public fields, which it does not track), mean the same graph: the
    /// pass manager skips re-verifying a graph a pass left untouched.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.revision += 1;
        &mut self.graph[id]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.graph.contains_node(id)
    }

    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices()
    }

    /// Operands of `id`, in position order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// True when some node reads `id`. Constant time, unlike `users`: a
    /// shared scalar constant can have a reader per node of the graph.
    pub fn has_users(&self, id: NodeId) -> bool {
        self.graph
            .neighbors_directed(id, Direction::Outgoing)
            .next()
            .is_some()
    }

    /// The only node reading `id` (possibly through several operands), or
    /// `None` when none or several do; stops at the second distinct reader.
    pub fn single_user(&self, id: NodeId) -> Option<NodeId> {
        let mut readers = self.graph.neighbors_directed(id, Direction::Outgoing);
        let first = readers.next()?;
        readers.all(|r| r == first).then_some(first)
    }

    /// Nodes that read `id` (each once, even if it reads it twice), sorted.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self
            .graph
            .neighbors_directed(id, Direction::Outgoing)
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    pub fn is_output(&self, id: NodeId) -> bool {
        self.outputs.iter().any(|(_, o)| *o == id)
    }

    /// Replaces the operands of `id`.
    pub fn set_inputs(&mut self, id: NodeId, inputs: &[NodeId]) {
        self.revision += 1;
        let old: Vec<_> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.graph.remove_edge(e);
        }
        for (pos, &input) in inputs.iter().enumerate() {
            self.graph.add_edge(input, id, pos);
        }
    }

    /// Makes every reader of `old` (and every output naming it) read `new`.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        if old == new {
            return;
        }
        self.revision += 1;
        let uses: Vec<_> = self
            .graph
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, target, pos) in uses {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new, target, pos);
        }
        for (_, out) in &mut self.outputs {
            if *out == old {
                *out = new;
            }
        }
        for input in &mut self.inputs {
            if *input == old {
                *input = new;
            }
        }
    }

    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.revision += 1;
        self.graph.remove_node(id)
    }

    /// A topological order that depends only on the graph's structure and
    /// node indices: among ready nodes the lowest index goes first.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indegree: std::collections::HashMap<NodeId, usize> = self
            .graph
            .node_indices()
            .map(|n| (n, self.graph.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeId>> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| Reverse(n))
            .collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("edge to a live node");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        order
    }

    /// True when `topo_order` reaches every node (no cycle).
    pub fn is_acyclic(&self) -> bool {
        self.topo_order().len() == self.graph.node_count()
    }

    /// Parameter nodes in topological order, as (name, id).
    pub fn params(&self) -> Vec<(String, NodeId)> {
        self.topo_order()
            .into_iter()
            .filter_map(|id| match &self.node(id).op {
                Op::Param(Param { name, .. }) => Some((name.clone(), id)),
                _ => None,
            })
            .collect()
    }

    /// Model input names, in declaration order.
    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.iter().map(|&id| self.input_name(id)).collect()
    }

    pub fn input_name(&self, id: NodeId) -> &str {
        match &self.node(id).op {
            Op::Input(Input { name }) => name,
            _ => "",
        }
    }
}
