//! Every graph operation: the closed `enum Op` (the index of ops), the
//! [`OpKind`] trait each op implements in its own file, and the one match
//! that maps an `Op` to its implementation ([`Op::kind`], the registration).
//!
//! An op file holds everything the compiler knows about one op or op
//! family: its built-in function(s) and attribute parsing ([`Builtin`]),
//! its shape rule, its reference evaluation (the interpreter's semantics:
//! f64 arithmetic, one rounding to f32), its printed attributes, the hash
//! CSE needs and its flop count. Kernels are downstream of the IR and are
//! not named here: their candidates live in `runtime::exec::candidates`.
//! See docs/adding-an-op.md for the recipe.
//!
//! Fused ops are produced only by passes.

use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use super::graph::TensorType;
use super::{DType, Dim, NodeId};
use crate::tensor::Tensor;

pub mod batch_norm;
pub mod clip;
pub mod conv;
pub mod flatten;
pub mod math;
pub mod pad;
pub mod pool;
pub mod resize;
pub mod shape;
pub mod unary;
pub mod values;
pub mod window;

pub use shape::ShapeError;
pub use unary::UnaryOp;

/// What the compiler asks of an op. Implemented by the op's attribute type
/// (`UnaryOp`, ...), in the op's file.
pub trait OpKind: fmt::Debug + Send + Sync {
    /// The op's name as the printer shows it.
    fn name(&self) -> &'static str;

    /// How many operands the op takes: `(min, max)`.
    fn arity(&self) -> (usize, usize);

    /// The shape rule: the output type for operands of these types (their
    /// count is already checked against `arity`). Works on symbolic and
    /// concrete dims alike; the size check is done by the caller.
    fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, ShapeError>;

    /// The reference evaluation, the oracle's semantics: plain loops, f64
    /// arithmetic and accumulation, one rounding to f32. Called by the
    /// interpreter after `infer` accepted the operands and gave the concrete
    /// `out_shape`. Never called by const-fold (see passes/fold_eval.rs).
    fn eval(&self, inputs: &[&Tensor], out_shape: &[usize]) -> Result<Tensor, EvalError>;

    /// The attributes as `key=value` pairs for the printed form, in a fixed
    /// order (none for most elementwise ops).
    fn attributes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Hashes everything `==` on the op compares, for CSE. With `#[derive(Hash)]`
    /// on the attribute type this is `std::hash::Hash::hash(self, &mut state)`.
    fn hash_attributes(&self, state: &mut dyn Hasher);

    /// Floating-point operations of one evaluation as `lamina bench` counts
    /// them: matrix products only (2 per multiply-add), so GFLOP/s compares
    /// with peers' GEMM figures; every other op counts 0.
    fn flops(&self, _inputs: &[&[usize]], _out_shape: &[usize]) -> u64 {
        0
    }

    // Derivative rule: the autodiff work adds its per-op method here.
}

impl Op {
    /// The op's implementation: the registration of every op, one line each.
    /// `None` for the ops still handled by the older per-layer matches
    /// (being migrated family by family).
    pub fn kind(&self) -> Option<&dyn OpKind> {
        match self {
            Op::Unary(op) => Some(op),
            Op::Conv2d(op) => Some(op),
            Op::Pool2d(op) => Some(op),
            Op::BatchNorm(op) => Some(op),
            Op::Clip(op) => Some(op),
            Op::Pad(op) => Some(op),
            Op::Resize(op) => Some(op),
            _ => None,
        }
    }
}

/// Why an op could not evaluate its operands (the reference evaluation).
/// The interpreter adds the node and its source line.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("{op}: expected a {expected} operand, got {actual}")]
    OperandDType {
        op: &'static str,
        expected: DType,
        actual: DType,
    },
    #[error("gather: id {index} (at position {position} of the ids) is out of range for axis {axis} of size {size} (valid ids: -{size} to {})", *.size as i64 - 1)]
    GatherIndex {
        index: i64,
        position: usize,
        axis: usize,
        size: usize,
    },
    #[error("slice: end {end} is past the size {size} of axis {axis}")]
    SliceEnd {
        end: usize,
        size: usize,
        axis: usize,
    },
    #[error("max: axis {axis} has size 0, and max of nothing is undefined")]
    EmptyMax { axis: usize },
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    #[error("fused_elementwise: step {step}: {reason}")]
    BadExpr { step: usize, reason: String },
}

/// A built-in function of the language: the names lowering accepts and how
/// a call becomes an op. Every op family lists its built-ins in [`BUILTINS`].
pub struct Builtin {
    pub names: &'static [&'static str],
    /// Reads the call's arguments (in the order the built-in documents)
    /// and returns the op and its operands. `name` is one of `names`.
    pub lower: fn(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned>,
}

/// Every op family's built-ins: the registration line of the lowering table.
pub const BUILTINS: &[&Builtin] = &[
    &unary::BUILTIN,
    &conv::BUILTIN,
    &pool::BUILTIN,
    &batch_norm::BUILTIN,
    &clip::BUILTIN,
    &pad::BUILTIN,
    &flatten::BUILTIN,
    &resize::BUILTIN,
];

/// The built-in with this name, if any.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().copied().find(|b| b.names.contains(&name))
}

/// An error already reported to the user (lowering collects errors and
/// goes on; the value that failed is poisoned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Poisoned;

/// The arguments of one built-in call, as lowering offers them to the op's
/// `Builtin::lower`. Each reader reports its own error (located at the
/// argument) and returns `Poisoned`; lowering then rejects arguments left
/// unread.
pub trait CallArgs {
    /// The next positional tensor operand.
    fn tensor(&mut self) -> Result<NodeId, Poisoned>;
    /// All remaining positional tensor operands.
    fn rest_tensors(&mut self) -> Result<Vec<NodeId>, Poisoned>;
    /// An integer attribute (keyword, or the next positional); `default`
    /// `None` makes it required.
    fn int(&mut self, key: &str, default: Option<i64>) -> Result<i64, Poisoned>;
    fn float(&mut self, key: &str, default: f64) -> Result<f64, Poisoned>;
    fn bool(&mut self, key: &str, default: bool) -> Result<bool, Poisoned>;
    /// A list of integers, or one integer as a list of one; `None` when absent.
    fn int_list(&mut self, key: &str, positional: bool) -> Result<Option<Vec<i64>>, Poisoned>;
    fn dtype(&mut self, key: &str) -> Result<DType, Poisoned>;
    /// A word attribute (`mode="bilinear"`) that must be one of `words`.
    fn word(
        &mut self,
        key: &str,
        words: &[&str],
        default: &'static str,
    ) -> Result<String, Poisoned>;
    /// One integer, a list of integers, or one of `words` (`padding=1`,
    /// `padding=[1, 2]`, `padding="same"`); `None` when absent.
    fn ints_or_word(&mut self, key: &str, words: &[&str]) -> Result<Option<IntsOrWord>, Poisoned>;
    /// The type of an operand already read.
    fn operand_type(&self, operand: NodeId) -> &TensorType;
    /// Reports a wrong argument of this call.
    fn error(&mut self, message: String) -> Poisoned;

    /// An axis attribute counted from the end when negative, checked
    /// against the rank of `operand`.
    fn axis(&mut self, key: &str, default: i64, operand: NodeId) -> Result<usize, Poisoned> {
        let axis = self.int(key, Some(default))?;
        let rank = self.operand_type(operand).rank();
        self.resolve_axis(axis, rank)
    }

    /// `axis` counted from the end when negative, checked against `rank`.
    fn resolve_axis(&mut self, axis: i64, rank: usize) -> Result<usize, Poisoned> {
        let resolved = if axis < 0 { axis + rank as i64 } else { axis };
        if resolved < 0 || resolved >= rank as i64 {
            return Err(self.error(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(resolved as usize)
    }
}

/// An attribute that is integers or a word, as [`CallArgs::ints_or_word`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntsOrWord {
    Ints(Vec<i64>),
    Word(String),
}

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
    /// matmul + epilogue. Inputs: a, b, then bias (if any), then residual (if any).
    FusedLinear {
        transpose_b: bool,
        epilogue: LinearEpilogue,
    },
    /// A tree of elementwise ops evaluated in one pass over memory.
    FusedElementwise {
        expr: ElementwiseExpr,
    },
    Conv2d(conv::Conv2d),
    Pool2d(pool::Pool2d),
    BatchNorm(batch_norm::BatchNorm),
    Clip(clip::Clip),
    Pad(pad::Pad),
    Resize(resize::Resize),
}

impl Op {
    /// The op's name as the printer shows it.
    pub fn name(&self) -> &'static str {
        if let Some(kind) = self.kind() {
            return kind.name();
        }
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Constant { .. } => "const",
            Op::Unary(_)
            | Op::Conv2d(_)
            | Op::Pool2d(_)
            | Op::BatchNorm(_)
            | Op::Clip(_)
            | Op::Pad(_)
            | Op::Resize(_) => unreachable!("registered in Op::kind"),
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
