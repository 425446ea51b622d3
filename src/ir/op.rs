//! The closed set of graph operations.
//!
//! Few primitives, each with one shape rule (`shape_rules.rs`) and one
//! reference semantics (`interp`). Fused ops are produced only by passes.

use std::fmt;
use std::sync::Arc;

use super::{DType, Dim};
use crate::tensor::Tensor;

/// An f32 attribute that compares and hashes by bit pattern, so ops can be
/// keys in common-subexpression elimination.
#[derive(Clone, Copy, Debug)]
pub struct Float(pub f32);

impl PartialEq for Float {
    fn eq(&self, other: &Float) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Float {}
impl std::hash::Hash for Float {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}
impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` keeps a decimal point on integral values (`1.0`, not `1`)
        // and prints the shortest text that round-trips.
        write!(f, "{:?}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Relu,
    Sigmoid,
    Tanh,
    /// 0.5 x (1 + erf(x / sqrt 2))
    Gelu,
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    GeluTanh,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Erf,
    Abs,
    Recip,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Erf,
        UnaryOp::Abs,
        UnaryOp::Recip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Erf => "erf",
            UnaryOp::Abs => "abs",
            UnaryOp::Recip => "recip",
        }
    }

    pub fn from_name(name: &str) -> Option<UnaryOp> {
        UnaryOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Activations a fused linear layer may apply in its epilogue.
    pub fn is_activation(self) -> bool {
        matches!(
            self,
            UnaryOp::Relu | UnaryOp::Sigmoid | UnaryOp::Tanh | UnaryOp::Gelu | UnaryOp::GeluTanh
        )
    }
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
        }
    }
}

/// A seeded initializer for a parameter that has no weight file entry.
/// The seed is mixed with the parameter's full name, so the same block
/// repeated under different prefixes gets different values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Init {
    Zeros,
    Ones,
    Uniform {
        low: Float,
        high: Float,
        seed: u64,
    },
    Normal {
        mean: Float,
        std: Float,
        seed: u64,
    },
    /// Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    Xavier {
        seed: u64,
    },
    /// Kaiming normal: N(0, sqrt(2 / fan_in)).
    He {
        seed: u64,
    },
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Zeros => write!(f, "zeros"),
            Init::Ones => write!(f, "ones"),
            Init::Uniform { low, high, seed } => {
                write!(f, "uniform(low={low}, high={high}, seed={seed})")
            }
            Init::Normal { mean, std, seed } => {
                write!(f, "normal(mean={mean}, std={std}, seed={seed})")
            }
            Init::Xavier { seed } => write!(f, "xavier(seed={seed})"),
            Init::He { seed } => write!(f, "he(seed={seed})"),
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

/// The epilogue of a fused linear layer, applied to each output element
/// before it is stored: `act(acc + bias) + residual`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearEpilogue {
    pub bias: bool,
    pub activation: Option<UnaryOp>,
    pub residual: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input, fed at run time.
    Input {
        name: String,
    },
    /// A named parameter: from the weight file, or from `init`.
    Param {
        name: String,
        init: Option<Init>,
    },
    /// A literal value known at compile time (scalars from the source,
    /// folded constants from passes).
    Constant {
        value: Arc<Tensor>,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CompareOp),
    /// `where(cond, a, b)`, broadcasting all three.
    Where,
    /// `a @ b`: 2-D, or batched with broadcast batch dims; a 1-D operand is
    /// not promoted (write a reshape). `transpose_*` swap the last two axes.
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// `layer_norm(x, gain, bias)`: normalise over `axis` (the last axis),
    /// gain and bias have that axis's length.
    LayerNorm {
        axis: usize,
        eps: Float,
    },
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// Output axis i is input axis `perm[i]`.
    Permute {
        perm: Vec<usize>,
    },
    /// Target shape with every dim resolved (no -1 left).
    Reshape {
        shape: Vec<Dim>,
    },
    Concat {
        axis: usize,
    },
    /// Elements `start, start+step, ...` below `end` along `axis`.
    Slice {
        axis: usize,
        start: usize,
        end: Dim,
        step: usize,
    },
    /// `gather(table, ids)`: rows of `table` along `axis` picked by integer
    /// ids; out shape = table[..axis] ++ ids ++ table[axis+1..].
    Gather {
        axis: usize,
    },
    Cast {
        to: DType,
    },
    /// `broadcast_to(x, shape)`: `x` repeated along new leading axes and
    /// along its size-1 axes, numpy-style (the adjoint of a sum over them).
    Broadcast {
        shape: Vec<Dim>,
    },
    /// `scatter_add(base, ids, updates, axis)`: `base` with each slice of
    /// `updates` added at the row its id picks along `axis`; repeated ids
    /// accumulate. `updates` has gather's output shape
    /// (base[..axis] ++ ids ++ base[axis+1..]): this is gather's adjoint.
    ScatterAdd {
        axis: usize,
    },
    /// matmul + epilogue. Inputs: a, b, then bias (if any), then residual (if any).
    FusedLinear {
        transpose_b: bool,
        epilogue: LinearEpilogue,
    },
    /// A tree of elementwise ops evaluated in one pass over memory.
    FusedElementwise {
        expr: ElementwiseExpr,
    },
}

impl Op {
    /// The op's name as the printer shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Constant { .. } => "const",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(c) => c.name(),
            Op::Where => "where",
            Op::MatMul { .. } => "matmul",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Reduce { op, .. } => op.name(),
            Op::Permute { .. } => "permute",
            Op::Reshape { .. } => "reshape",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::Cast { .. } => "cast",
            Op::Broadcast { .. } => "broadcast_to",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::FusedLinear { .. } => "fused_linear",
            Op::FusedElementwise { .. } => "fused_elementwise",
        }
    }

    /// Elementwise ops (same-position in, same-position out after broadcasting).
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::FusedElementwise { .. }
        )
    }

    /// Ops with no inputs whose value does not depend on model inputs.
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. }
        )
    }
}
