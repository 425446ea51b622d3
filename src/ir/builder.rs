//! Building well-typed graphs in code, without a model file: every node is
//! typed by its op's shape rule, so a graph built here is one the verifier
//! and every backend accept. The tests build their graphs with it, and
//! lowering and the passes type every node they add with [`add_typed`], so a
//! new node gets its type in one place.
//!
//! ```
//! use lamina::ir::builder::GraphBuilder;
//! use lamina::ir::{Op, UnaryOp};
//! use lamina::ir::ops::MatMul;
//! use lamina::tensor::Tensor;
//!
//! let mut b = GraphBuilder::new("tiny");
//! let x = b.input("x", "f32[batch, 3]");
//! let w = b.param("w", Tensor::f32(vec![3, 2], vec![0.5; 6]));
//! let y = b.op(Op::MatMul(MatMul { transpose_a: false, transpose_b: false }), &[x, w]);
//! let y = b.op(Op::Unary(UnaryOp::Relu), &[y]);
//! b.output("y", y);
//! let (graph, params) = b.finish();
//! assert_eq!(graph.outputs.len(), 1);
//! assert!(params.contains_key("w"));
//! ```

use crate::ir::ops::{Constant, Input, Param};
use std::collections::HashMap;
use std::sync::Arc;

use super::shape_rules::{self, ShapeError};
use super::{DType, Dim, Graph, NodeId, Op, TensorType};
use crate::span::Span;
use crate::tensor::Tensor;

/// Adds `op` on `inputs` to `graph` with the type its shape rule gives, or
/// the rule's error when the operands do not fit.
pub fn add_typed(
    graph: &mut Graph,
    op: Op,
    inputs: &[NodeId],
    span: Option<Span>,
) -> Result<NodeId, ShapeError> {
    let types: Vec<&TensorType> = inputs.iter().map(|&i| &graph.node(i).ty).collect();
    let ty = shape_rules::infer(&op, &types)?;
    Ok(graph.add_node(op, inputs, ty, span))
}

/// The type of a tensor value: its dtype and its (known) shape.
pub fn type_of(value: &Tensor) -> TensorType {
    TensorType::new(
        value.dtype(),
        value.shape().iter().map(|&d| Dim::known(d)).collect(),
    )
}

/// A type written as in a model file's declarations: `f32[batch, 784]`,
/// `i64[4]`, `f32[]`. Integers are known dims, names are symbols.
pub fn parse_type(text: &str) -> Result<TensorType, String> {
    let bad = || format!("`{text}` is not a type like `f32[batch, 784]`");
    let (dtype, rest) = text.split_once('[').ok_or_else(bad)?;
    let dims = rest.trim().strip_suffix(']').ok_or_else(bad)?;
    let dtype: DType = dtype.trim().parse().map_err(|_| bad())?;
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
    Ok(TensorType::new(dtype, shape))
}

/// What `GraphBuilder` takes as a type: a `TensorType`, or its text
/// (panicking on text that is not a type: the text is the program's own).
pub trait IntoTensorType {
    fn into_tensor_type(self) -> TensorType;
}

impl IntoTensorType for TensorType {
    fn into_tensor_type(self) -> TensorType {
        self
    }
}

impl IntoTensorType for &str {
    fn into_tensor_type(self) -> TensorType {
        parse_type(self).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl IntoTensorType for &String {
    fn into_tensor_type(self) -> TensorType {
        self.as_str().into_tensor_type()
    }
}

/// A graph under construction and the values of its parameters.
pub struct GraphBuilder {
    pub graph: Graph,
    pub params: HashMap<String, Tensor>,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            graph: Graph::new(name),
            params: HashMap::new(),
        }
    }

    /// A model input, in declaration order.
    pub fn input(&mut self, name: &str, ty: impl IntoTensorType) -> NodeId {
        let op = Op::Input(Input { name: name.into() });
        let id = self.graph.add_node(op, &[], ty.into_tensor_type(), None);
        self.graph.inputs.push(id);
        id
    }

    /// A parameter with this value (its type is the value's).
    pub fn param(&mut self, name: &str, value: Tensor) -> NodeId {
        let ty = type_of(&value);
        self.params.insert(name.to_string(), value);
        self.param_decl(name, ty)
    }

    /// A parameter declared by type only, its value bound later.
    pub fn param_decl(&mut self, name: &str, ty: impl IntoTensorType) -> NodeId {
        let op = Op::Param(Param {
            name: name.into(),
            init: None,
        });
        self.graph.add_node(op, &[], ty.into_tensor_type(), None)
    }

    pub fn constant(&mut self, value: Tensor) -> NodeId {
        let ty = type_of(&value);
        let op = Op::Constant(Constant {
            value: Arc::new(value),
        });
        self.graph.add_node(op, &[], ty, None)
    }

    pub fn scalar(&mut self, v: f32) -> NodeId {
        self.constant(Tensor::scalar(v))
    }

    /// Adds `op` on `inputs` when it is well-typed there.
    pub fn try_op(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, ShapeError> {
        add_typed(&mut self.graph, op, inputs, None)
    }

    /// Adds `op` on `inputs`.
    ///
    /// # Panics
    /// When the operands do not fit the op (use `try_op` to get the error).
    pub fn op(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        let name = op.name();
        self.try_op(op, inputs)
            .unwrap_or_else(|e| panic!("the graph being built is ill-typed at {name}: {e}"))
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.graph.node(id).ty
    }

    pub fn output(&mut self, name: &str, id: NodeId) {
        self.graph.outputs.push((name.into(), id));
    }

    /// The graph and its parameter values.
    ///
    /// # Panics
    /// When the graph does not verify (which typed construction prevents
    /// unless nodes were edited through the public fields).
    pub fn finish(self) -> (Graph, HashMap<String, Tensor>) {
        if let Err(e) = super::verify::verify(&self.graph) {
            panic!("the built graph does not verify: {e}");
        }
        (self.graph, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_as_in_model_files() {
        let t = parse_type("f32[batch, 784]").unwrap();
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.shape, vec![Dim::symbol("batch"), Dim::known(784)]);
        assert_eq!(parse_type("i64[]").unwrap().shape, vec![]);
        assert!(parse_type("f32 784").is_err());
        assert!(parse_type("q7[3]").is_err());
    }

    #[test]
    fn ill_typed_ops_are_errors_from_try_op() {
        let mut b = GraphBuilder::new("bad");
        let x = b.input("x", "f32[2, 3]");
        let y = b.input("y", "f32[4, 5]");
        assert!(b
            .try_op(Op::Binary(super::super::BinaryOp::Add), &[x, y])
            .is_err());
        assert_eq!(b.graph.node_ids().count(), 2);
    }
}
