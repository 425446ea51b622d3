//! The epilogue walk shared by fuse-linear and fuse-conv: from a product
//! node (matmul, conv2d, or an already fused one), follow sole readers and
//! take, in the order an epilogue applies them, an optional bias add, an
//! optional activation and an optional residual add.
//!
//! The walk stops at the first reader that is none of those, has other
//! readers, changes the type, or would make a cycle (an addend computed from
//! the product itself). What counts as a bias and which activations the
//! kernels take differ per layer kind; the caller says.

use super::edit::{depends_on, sole_user};
use crate::ir::{BinaryOp, DType, Graph, LinearEpilogue, NodeId, Op, TensorType, UnaryOp};

/// The epilogue parts still open, in the order the epilogue applies them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Bias,
    Activation,
    Residual,
    Done,
}

impl Stage {
    /// Where an existing fused node's epilogue leaves off.
    pub fn after(epilogue: &LinearEpilogue) -> Stage {
        if epilogue.residual {
            Stage::Done
        } else if epilogue.activation.is_some() {
            Stage::Residual
        } else if epilogue.bias {
            Stage::Activation
        } else {
            Stage::Bias
        }
    }
}

/// What the walk absorbed beyond the starting node.
pub struct Absorbed {
    /// A bias add's other operand (only when the walk started at `Stage::Bias`).
    pub bias: Option<NodeId>,
    pub activation: Option<UnaryOp>,
    pub residual: Option<NodeId>,
    /// The last node of the chain, whose readers the fused node takes over.
    pub last: NodeId,
    pub count: usize,
}

/// Walks the epilogue after `start`, whose open parts begin at `stage`.
pub fn walk(
    graph: &Graph,
    start: NodeId,
    mut stage: Stage,
    is_bias: impl Fn(&TensorType) -> bool,
    is_activation: impl Fn(UnaryOp) -> bool,
) -> Absorbed {
    let out_ty = &graph.node(start).ty;
    let mut found = Absorbed {
        bias: None,
        activation: None,
        residual: None,
        last: start,
        count: 0,
    };
    while stage != Stage::Done {
        let Some(user) = sole_user(graph, found.last) else {
            break;
        };
        match &graph.node(user).op {
            Op::Binary(BinaryOp::Add) if stage <= Stage::Residual => {
                let other = match graph.inputs(user).as_slice() {
                    [p, q] if *p == found.last && *q != found.last => *q,
                    [p, q] if *q == found.last && *p != found.last => *p,
                    _ => break,
                };
                let other_ty = &graph.node(other).ty;
                if other_ty.dtype != DType::F32
                    || graph.node(user).ty != *out_ty
                    || depends_on(graph, other, found.last)
                {
                    break;
                }
                if stage == Stage::Bias && is_bias(other_ty) {
                    found.bias = Some(other);
                    stage = Stage::Activation;
                } else if other_ty == out_ty {
                    found.residual = Some(other);
                    stage = Stage::Done;
                } else {
                    break;
                }
            }
            Op::Unary(act) if is_activation(*act) && stage <= Stage::Activation => {
                found.activation = Some(*act);
                stage = Stage::Residual;
            }
            _ => break,
        }
        found.last = user;
        found.count += 1;
    }
    found
}
