//! The interface of gradient rules: what an op's vector-Jacobian rule
//! ([`OpKind::vjp`](super::ops::OpKind::vjp)) builds its nodes with, and
//! the errors of reverse-mode differentiation. The driver that walks the
//! graph is `crate::autodiff`.

use std::sync::Arc;

use super::builder::add_typed;
use super::shape_rules::ShapeError;
use super::{BinaryOp, Dim, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};
use crate::diagnostics::Diagnostic;
use crate::ir::ops::{Broadcast, Constant, Permute, Reduce, Reshape, Slice};
use crate::span::Span;
use crate::tensor::Tensor;

/// Why gradients could not be appended.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GradError {
    #[error("the model has no output `{name}` (outputs: {known})")]
    UnknownOutput { name: String, known: String },
    #[error("output `{name}` is {ty}: gradients are taken of a scalar f32 output (reduce it first, e.g. with sum(...) or mean(...))")]
    NotScalar { name: String, ty: String },
    #[error("`{name}` is neither a parameter nor an input of the model (parameters and inputs: {known})")]
    UnknownWrt { name: String, known: String },
    #[error("`{name}` is {ty}: only f32 values have gradients")]
    NotF32 { name: String, ty: String },
    #[error("nothing to differentiate with respect to: the model has no f32 {what}")]
    NothingToDifferentiate { what: &'static str },
    #[error("output `{name}` exists already; gradients are appended once")]
    OutputExists { name: String },
    #[error("{op}: no gradient rule: the gradient cannot flow through `{op}` ({reason})")]
    NoRule {
        op: &'static str,
        reason: String,
        span: Option<Span>,
    },
    #[error(
        "internal error: the gradient rule of `{op}` built an ill-typed `{built}` node: {message}"
    )]
    IllTyped {
        op: &'static str,
        built: &'static str,
        message: String,
        span: Option<Span>,
    },
}

impl GradError {
    /// The error as a diagnostic, at the op's line when it has one.
    pub fn diagnostic(&self) -> Diagnostic {
        let span = match self {
            GradError::NoRule { span, .. } | GradError::IllTyped { span, .. } => *span,
            _ => None,
        };
        Diagnostic::error(self.to_string()).at(span)
    }
}

pub fn constant(graph: &mut Graph, value: Tensor, span: Option<Span>) -> NodeId {
    let ty = super::builder::type_of(&value);
    graph.add_node(
        Op::Constant(Constant {
            value: Arc::new(value),
        }),
        &[],
        ty,
        span,
    )
}

/// What a gradient rule builds with: the graph, and the op being
/// differentiated (its name and source span go on every node it adds, so a
/// run-time error in the backward graph points at the forward op's line).
pub struct Vjp<'g> {
    graph: &'g mut Graph,
    op: &'static str,
    span: Option<Span>,
}

impl<'g> Vjp<'g> {
    /// Rules for `op` (its name and span go on the nodes they add).
    pub fn new(graph: &'g mut Graph, op: &'static str, span: Option<Span>) -> Vjp<'g> {
        Vjp { graph, op, span }
    }

    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// Adds a typed node.
    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, GradError> {
        let built = op.name();
        add_typed(self.graph, op, inputs, self.span).map_err(|ShapeError(message)| {
            GradError::IllTyped {
                op: self.op,
                built,
                message,
                span: self.span,
            }
        })
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.graph.node(id).ty
    }

    /// An f32 scalar constant.
    pub fn scalar(&mut self, value: f32) -> NodeId {
        constant(self.graph, Tensor::scalar(value), self.span)
    }

    /// A constant tensor.
    pub fn tensor(&mut self, value: Tensor) -> NodeId {
        constant(self.graph, value, self.span)
    }

    /// An i64 vector constant.
    pub fn ids(&mut self, ids: Vec<i64>) -> NodeId {
        let n = ids.len();
        constant(self.graph, Tensor::i64(vec![n], ids), self.span)
    }

    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, GradError> {
        self.add(Op::Binary(op), &[a, b])
    }

    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, GradError> {
        self.binary(BinaryOp::Mul, a, b)
    }

    pub fn mul_scalar(&mut self, a: NodeId, c: f32) -> Result<NodeId, GradError> {
        let c = self.scalar(c);
        self.mul(a, c)
    }

    pub fn neg(&mut self, a: NodeId) -> Result<NodeId, GradError> {
        self.add(Op::Unary(UnaryOp::Neg), &[a])
    }

    /// Zeros of `ty` (symbolic dims included): a broadcast scalar.
    pub fn zeros(&mut self, ty: &TensorType) -> Result<NodeId, GradError> {
        let zero = self.scalar(0.0);
        self.broadcast(zero, &ty.shape)
    }

    pub fn broadcast(&mut self, x: NodeId, shape: &[Dim]) -> Result<NodeId, GradError> {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        self.add(
            Op::Broadcast(Broadcast {
                shape: shape.to_vec(),
            }),
            &[x],
        )
    }

    pub fn reduce(
        &mut self,
        op: ReduceOp,
        x: NodeId,
        axes: Vec<usize>,
        keepdims: bool,
    ) -> Result<NodeId, GradError> {
        self.add(Op::Reduce(Reduce { op, axes, keepdims }), &[x])
    }

    pub fn reshape(&mut self, x: NodeId, shape: Vec<Dim>) -> Result<NodeId, GradError> {
        if self.ty(x).shape == shape {
            return Ok(x);
        }
        self.add(Op::Reshape(Reshape { shape }), &[x])
    }

    pub fn permute(&mut self, x: NodeId, perm: Vec<usize>) -> Result<NodeId, GradError> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.add(Op::Permute(Permute { perm }), &[x])
    }

    /// `x[start..end]` along `axis` (step 1); `x` itself when that is all of it.
    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: usize,
        end: Dim,
    ) -> Result<NodeId, GradError> {
        if start == 0 && self.ty(x).shape[axis] == end {
            return Ok(x);
        }
        self.add(
            Op::Slice(Slice {
                axis,
                start,
                end,
                step: 1,
            }),
            &[x],
        )
    }

    /// The sum of several contributions to one gradient.
    pub fn sum_all(&mut self, parts: &[NodeId]) -> Result<NodeId, GradError> {
        let mut total = parts[0];
        for &p in &parts[1..] {
            total = self.binary(BinaryOp::Add, total, p)?;
        }
        Ok(total)
    }

    /// `g`, computed at a broadcast shape, summed back to `shape`: over the
    /// leading axes broadcasting added and over the axes it stretched from 1.
    pub fn unbroadcast(&mut self, g: NodeId, shape: &[Dim]) -> Result<NodeId, GradError> {
        let from = self.ty(g).shape.clone();
        if from == shape {
            return Ok(g);
        }
        let lead = from.len() - shape.len();
        let mut g = g;
        if lead > 0 {
            g = self.reduce(ReduceOp::Sum, g, (0..lead).collect(), false)?;
        }
        let stretched: Vec<usize> = shape
            .iter()
            .zip(&from[lead..])
            .enumerate()
            .filter(|(_, (to, from))| to.is_one() && !from.is_one())
            .map(|(i, _)| i)
            .collect();
        if !stretched.is_empty() {
            g = self.reduce(ReduceOp::Sum, g, stretched, true)?;
        }
        Ok(g)
    }

    /// No rule for this op here: a located error.
    pub fn no_rule<T>(&self, reason: impl Into<String>) -> Result<T, GradError> {
        Err(GradError::NoRule {
            op: self.op,
            reason: reason.into(),
            span: self.span,
        })
    }
}
