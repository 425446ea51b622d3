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

use super::graph::TensorType;
use super::vjp::{GradError, Vjp};
use super::{DType, Dim, NodeId};
use crate::span::Span;
use crate::tensor::Tensor;

pub mod arg_reduce;
pub mod batch_norm;
pub mod broadcast;
pub mod cast;
pub mod clip;
pub mod conv;
pub mod cumsum;
pub mod elementwise;
pub mod flatten;
pub mod gather;
pub mod gather_elements;
pub mod layout;
pub mod linalg;
pub mod math;
pub mod normalize;
pub mod pad;
pub mod pool;
pub mod pool_grad;
pub mod reduce;
pub mod resize;
pub mod scatter;
pub mod scatter_elements;
pub mod shape;
pub mod sources;
pub mod topk;
pub mod unary;
pub mod values;
pub mod window;

pub use broadcast::Broadcast;
pub use cast::Cast;
pub use conv::{Conv2d, FusedConv2d};
pub use elementwise::{BinaryOp, CompareOp, ElementwiseExpr, ExprStep, FusedElementwise, Where};
pub use gather::Gather;
pub use layout::{Concat, Permute, Reshape, Slice};
pub use linalg::{FusedLinear, LinearEpilogue, MatMul};
pub use normalize::{LayerNorm, LogSoftmax, Softmax};
pub use reduce::{Reduce, ReduceOp};
pub use scatter::ScatterAdd;
pub use shape::ShapeError;
pub use sources::{Constant, Init, Input, Param};
pub use unary::UnaryOp;

/// What the compiler asks of an op. Implemented by the op's attribute type
/// (`UnaryOp`, `MatMul`, ...), in the op's file.
pub trait OpKind: AttributeHash + fmt::Debug + Send + Sync {
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

    /// Checks of the operands' values that must come before the shape rule
    /// at run time (a slice end bound past its axis is bad data, not a bad
    /// model). Most ops have none.
    fn check_values(&self, _inputs: &[&Tensor]) -> Result<(), EvalError> {
        Ok(())
    }

    /// The attributes as `key=value` pairs for the printed form, in a fixed
    /// order (none for most elementwise ops).
    fn attributes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Floating-point operations of one evaluation as `lamina bench` counts
    /// them: matrix products only (2 per multiply-add), so GFLOP/s compares
    /// with peers' GEMM figures; every other op counts 0.
    fn flops(&self, _inputs: &[&[usize]], _out_shape: &[usize]) -> u64 {
        0
    }

    /// The vector-Jacobian rule (reverse-mode autodiff, `crate::autodiff`):
    /// given `g`, the gradient of this op's output `node` (operands
    /// `inputs`), the gradient of each operand, built as ops through `cx`
    /// and summed back to the operand's shape. `wants[i]` says whether
    /// operand i needs one; `None` where it does not or where none flows
    /// (a condition, an index). Every rule is checked against finite
    /// differences (tests/autodiff.rs). The default: no gradient, a located
    /// error naming the op.
    /// Whether the op keeps the samples of a batch apart: when the operands
    /// marked in `batched` carry samples along their axis 0 (the others are
    /// shared by every sample), the output carries them along its axis 0
    /// too, and its sample `i` depends only on sample `i` of the batched
    /// operands. At least one operand is batched. The executor runs a batch
    /// sample by sample only through ops that say yes (`runtime::exec`,
    /// `samples.rs`); the default, no, keeps the batch whole.
    fn keeps_samples(&self, _inputs: &[&TensorType], _batched: &[bool]) -> bool {
        false
    }

    fn vjp(
        &self,
        cx: &mut Vjp<'_>,
        _node: NodeId,
        _inputs: &[NodeId],
        _g: NodeId,
        _wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, GradError> {
        cx.no_rule("it has no derivative rule")
    }
}

/// Hashes everything `==` on the op compares, for CSE: every attribute
/// type that implements `Hash` (derive it) has it.
pub trait AttributeHash {
    fn hash_attributes(&self, state: &mut dyn Hasher);
}

impl<T: std::hash::Hash> AttributeHash for T {
    fn hash_attributes(&self, mut state: &mut dyn Hasher) {
        self.hash(&mut state);
    }
}

impl Op {
    /// The op's implementation: the registration of every op, one line each.
    pub fn kind(&self) -> &dyn OpKind {
        match self {
            Op::Input(op) => op,
            Op::Param(op) => op,
            Op::Constant(op) => op,
            Op::Unary(op) => op,
            Op::Binary(op) => op,
            Op::Compare(op) => op,
            Op::Where => &Where,
            Op::MatMul(op) => op,
            Op::Softmax(op) => op,
            Op::LogSoftmax(op) => op,
            Op::LayerNorm(op) => op,
            Op::Reduce(op) => op,
            Op::Permute(op) => op,
            Op::Reshape(op) => op,
            Op::Concat(op) => op,
            Op::Slice(op) => op,
            Op::Gather(op) => op,
            Op::Cast(op) => op,
            Op::Broadcast(op) => op,
            Op::ScatterAdd(op) => op,
            Op::FusedLinear(op) => op,
            Op::FusedElementwise(op) => op,
            Op::Conv2d(op) => op,
            Op::FusedConv2d(op) => op,
            Op::Pool2d(op) => op,
            Op::Pool2dGrad(op) => op,
            Op::BatchNorm(op) => op,
            Op::Clip(op) => op,
            Op::Pad(op) => op,
            Op::Resize(op) => op,
            Op::GatherElements(op) => op,
            Op::ArgReduce(op) => op,
            Op::CumSum(op) => op,
            Op::TopK(op) => op,
            Op::ScatterElements(op) => op,
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
    #[error("{op} nodes take their value from the run's inputs or parameters, not from eval_node")]
    SourceOp { op: &'static str },
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
    &elementwise::BUILTIN,
    &linalg::BUILTIN,
    &normalize::BUILTIN,
    &reduce::BUILTIN,
    &layout::BUILTIN,
    &gather::BUILTIN,
    &cast::BUILTIN,
    &scatter::BUILTIN,
    &crate::ir::losses::BUILTIN,
    &conv::BUILTIN,
    &pool::BUILTIN,
    &pool_grad::BUILTIN,
    &batch_norm::BUILTIN,
    &clip::BUILTIN,
    &pad::BUILTIN,
    &flatten::BUILTIN,
    &resize::BUILTIN,
    &gather_elements::BUILTIN,
    &arg_reduce::BUILTIN,
    &cumsum::BUILTIN,
    &topk::BUILTIN,
    &scatter_elements::BUILTIN,
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
    /// A list of dims as written in types (`[batch, seq, 12, 32]`), `-1`
    /// entries as `None`, with the list's span; required (`key=[...]` or
    /// the next positional). `context` names the use in error messages.
    fn dim_list(&mut self, key: &str, context: &str) -> Result<(Vec<Option<Dim>>, Span), Poisoned>;
    /// One dim expression (`end=seq`), `None` when absent.
    fn dim(&mut self, key: &str, context: &str) -> Result<Option<Dim>, Poisoned>;
    /// Reports a wrong argument of this call.
    fn error(&mut self, message: String) -> Poisoned;
    /// Adds a node at the call's place (for built-ins that are several ops,
    /// like the losses), typed by its shape rule; a shape error is reported.
    fn add_node(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId, Poisoned>;
    /// Reports a wrong argument at `span` (inside the call).
    fn error_at(&mut self, span: Span, message: String) -> Poisoned;
    /// Reports a shape error of this call at `span`.
    fn shape_error_at(&mut self, span: Span, message: String) -> Poisoned;
    /// Reports a call with the wrong number of tensor operands.
    fn arity_error(&mut self, expected: &str, got: usize) -> Poisoned;

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

/// The index of ops: one variant per op, holding the op's attribute type
/// (defined, with everything else about the op, in its family's file).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input(Input),
    Param(Param),
    Constant(Constant),
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CompareOp),
    Where,
    MatMul(MatMul),
    Softmax(Softmax),
    LogSoftmax(LogSoftmax),
    LayerNorm(LayerNorm),
    Reduce(Reduce),
    Permute(Permute),
    Reshape(Reshape),
    Concat(Concat),
    Slice(Slice),
    Gather(Gather),
    Cast(Cast),
    Broadcast(Broadcast),
    ScatterAdd(ScatterAdd),
    FusedLinear(FusedLinear),
    FusedElementwise(FusedElementwise),
    Conv2d(conv::Conv2d),
    FusedConv2d(conv::FusedConv2d),
    Pool2d(pool::Pool2d),
    Pool2dGrad(pool_grad::Pool2dGrad),
    BatchNorm(batch_norm::BatchNorm),
    Clip(clip::Clip),
    Pad(pad::Pad),
    Resize(resize::Resize),
    GatherElements(gather_elements::GatherElements),
    ArgReduce(arg_reduce::ArgReduce),
    CumSum(cumsum::CumSum),
    TopK(topk::TopK),
    ScatterElements(scatter_elements::ScatterElements),
}

impl Op {
    /// The op's name as the printer shows it.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Elementwise ops (same-position in, same-position out after broadcasting).
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::FusedElementwise(_)
        )
    }

    /// Ops with no inputs whose value does not depend on model inputs.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input(_) | Op::Param(_) | Op::Constant(_))
    }
}
