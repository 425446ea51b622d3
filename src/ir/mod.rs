//! The graph IR: typed, shaped op nodes in a petgraph, their shape rules,
//! lowering from the AST, the printer and the verifier.

pub mod bind;
pub mod builder;
pub mod dim;
pub mod graph;
pub mod image_input;
pub mod ops;
pub mod shape_rules;

pub use crate::dtype::DType;
pub use dim::{Bindings, Dim};
pub use graph::{Graph, Node, NodeId, TensorType};
pub use ops::{
    BinaryOp, CompareOp, ElementwiseExpr, ExprStep, Float, Init, LinearEpilogue, Op, ReduceOp,
    UnaryOp,
};
pub mod losses;
pub mod lower;
pub mod lower_error;
pub mod printer;
pub mod verify;
pub mod vjp;
