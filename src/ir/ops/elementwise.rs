//! Elementwise ops with numpy broadcasting: binary arithmetic, comparisons,
//! `where`, and the fused expression that chains them.

use std::fmt;

use super::{Float, UnaryOp};

/// Elementwise arithmetic on f32 with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
        }
    }
}

/// Elementwise comparison with broadcasting; the result is bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CompareOp {
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
        }
    }
}

/// One step of a fused elementwise expression. Steps refer to earlier steps
/// by index; the last step is the result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExprStep {
    /// The i-th input of the fused node (broadcast to the output shape).
    Input(usize),
    Const(Float),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Compare(CompareOp, usize, usize),
    Where(usize, usize, usize),
}

/// The expression a `FusedElementwise` node evaluates per element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ElementwiseExpr {
    pub steps: Vec<ExprStep>,
}

impl fmt::Display for ElementwiseExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write_step(e: &ElementwiseExpr, i: usize, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &e.steps[i] {
                ExprStep::Input(k) => write!(f, "${k}"),
                ExprStep::Const(c) => write!(f, "{c}"),
                ExprStep::Unary(op, a) => {
                    write!(f, "{}(", op.name())?;
                    write_step(e, *a, f)?;
                    write!(f, ")")
                }
                ExprStep::Binary(op, a, b) => {
                    write!(f, "{}(", op.name())?;
                    write_step(e, *a, f)?;
                    write!(f, ", ")?;
                    write_step(e, *b, f)?;
                    write!(f, ")")
                }
                ExprStep::Compare(op, a, b) => {
                    write!(f, "{}(", op.name())?;
                    write_step(e, *a, f)?;
                    write!(f, ", ")?;
                    write_step(e, *b, f)?;
                    write!(f, ")")
                }
                ExprStep::Where(c, a, b) => {
                    write!(f, "where(")?;
                    write_step(e, *c, f)?;
                    write!(f, ", ")?;
                    write_step(e, *a, f)?;
                    write!(f, ", ")?;
                    write_step(e, *b, f)?;
                    write!(f, ")")
                }
            }
        }
        if self.steps.is_empty() {
            return write!(f, "<empty>");
        }
        write_step(self, self.steps.len() - 1, f)
    }
}

/// `where(cond, a, b)`, broadcasting all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Where;

/// A tree of elementwise ops evaluated in one pass over memory (made by
/// the `fuse-elementwise` pass only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FusedElementwise {
    pub expr: ElementwiseExpr,
}
