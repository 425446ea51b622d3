//! The built-in losses, `cross_entropy(logits, labels)` and
//! `mse(prediction, target)`, as compositions of existing ops: they run on
//! every backend and autodiff differentiates them with those ops' rules.
//! Lowering builds them from a call; the trainer attaches cross_entropy to
//! a classifier that declares no loss.

use std::sync::Arc;

use super::builder::add_typed;
use super::graph::ShapeDisplay;
use super::ops::{
    Builtin, CallArgs, Cast, CompareOp, Constant, LogSoftmax, Poisoned, Reduce, ReduceOp, Reshape,
    UnaryOp,
};
use super::shape_rules::ShapeError;
use super::{BinaryOp, DType, Dim, Graph, NodeId, Op, TensorType};
use crate::span::Span;
use crate::tensor::Tensor;

pub const BUILTIN: Builtin = Builtin {
    names: &["cross_entropy", "mse"],
    lower,
};

fn lower(name: &str, args: &mut dyn CallArgs) -> Result<(Op, Vec<NodeId>), Poisoned> {
    let a = args.tensor()?;
    let b = args.tensor()?;
    if name == "mse" {
        let diff = args.add_node(Op::Binary(BinaryOp::Sub), &[a, b])?;
        let square = args.add_node(Op::Binary(BinaryOp::Mul), &[diff, diff])?;
        let rank = args.operand_type(square).rank();
        return Ok(mean_of_all(rank, square));
    }
    let (logits, labels) = (args.operand_type(a).clone(), args.operand_type(b).clone());
    if let Err(message) = check_cross_entropy(&logits, &labels) {
        return Err(args.error(message));
    }
    cross_entropy_parts(
        &mut |op, inputs| args.add_node(op, inputs),
        &logits,
        &labels,
        a,
        b,
    )
}

/// Why `logits` and `labels` do not fit `cross_entropy`: logits need a
/// class axis of known size, labels integer ids shaped like the logits
/// without it.
pub fn check_cross_entropy(logits: &TensorType, labels: &TensorType) -> Result<(), String> {
    let Some((classes, leading)) = logits.shape.split_last() else {
        return Err(format!("logits must have a class axis, got {logits}"));
    };
    if logits.dtype != DType::F32 {
        return Err(format!("logits must be f32, got {logits}"));
    }
    if classes.as_known().is_none() {
        return Err(format!("the class axis of {logits} must have a known size"));
    }
    if !labels.dtype.is_integer() || labels.shape != leading {
        return Err(format!(
            "labels must be integer class ids shaped like the logits without their last axis \
             ({}{}), got {labels}",
            DType::I64,
            ShapeDisplay(leading)
        ));
    }
    Ok(())
}

/// `mean(x)` over all `rank` axes, as the last op of a loss.
pub fn mean_of_all(rank: usize, x: NodeId) -> (Op, Vec<NodeId>) {
    (
        Op::Reduce(Reduce {
            op: ReduceOp::Mean,
            axes: (0..rank).collect(),
            keepdims: false,
        }),
        vec![x],
    )
}

/// Adds every node of `cross_entropy(logits, labels)` but the last through
/// `add`, and returns that last op with its operands: the mean over all
/// leading positions of `-log_softmax(logits)[label]`. The label picks its
/// class by a one-hot comparison with the class ids; a label outside
/// `0..classes` picks nothing and adds 0 (the trainer checks labels before
/// it runs). The operand types must pass [`check_cross_entropy`].
fn cross_entropy_parts<E>(
    add: &mut dyn FnMut(Op, &[NodeId]) -> Result<NodeId, E>,
    logits_ty: &TensorType,
    labels_ty: &TensorType,
    logits: NodeId,
    labels: NodeId,
) -> Result<(Op, Vec<NodeId>), E> {
    let leading = logits_ty.rank() - 1;
    let classes = logits_ty.shape[leading].as_known().unwrap_or(0);
    let log_probs = add(Op::LogSoftmax(LogSoftmax { axis: leading }), &[logits])?;
    let labels = if labels_ty.dtype == DType::I64 {
        labels
    } else {
        add(Op::Cast(Cast { to: DType::I64 }), &[labels])?
    };
    let mut column = labels_ty.shape.clone();
    column.push(Dim::known(1));
    let labels_column = add(Op::Reshape(Reshape { shape: column }), &[labels])?;
    let class_ids = Tensor::i64(vec![classes], (0..classes as i64).collect());
    let class_ids = add(
        Op::Constant(Constant {
            value: Arc::new(class_ids),
        }),
        &[],
    )?;
    let hit = add(Op::Compare(CompareOp::Eq), &[labels_column, class_ids])?;
    let zero = add(
        Op::Constant(Constant {
            value: Arc::new(Tensor::scalar(0.0)),
        }),
        &[],
    )?;
    let picked = add(Op::Where, &[hit, log_probs, zero])?;
    let per_position = add(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![leading],
            keepdims: false,
        }),
        &[picked],
    )?;
    let (mean, operands) = mean_of_all(leading, per_position);
    let mean = add(mean, &operands)?;
    Ok((Op::Unary(UnaryOp::Neg), vec![mean]))
}

/// `cross_entropy(logits, labels)` added to `graph`: the scalar loss node.
pub fn cross_entropy(
    graph: &mut Graph,
    logits: NodeId,
    labels: NodeId,
    span: Option<Span>,
) -> Result<NodeId, ShapeError> {
    let logits_ty = graph.node(logits).ty.clone();
    let labels_ty = graph.node(labels).ty.clone();
    check_cross_entropy(&logits_ty, &labels_ty)
        .map_err(|m| ShapeError(format!("cross_entropy: {m}")))?;
    let mut add = |op: Op, inputs: &[NodeId]| add_typed(graph, op, inputs, span);
    let (op, inputs) = cross_entropy_parts(&mut add, &logits_ty, &labels_ty, logits, labels)?;
    add_typed(graph, op, &inputs, span)
}
