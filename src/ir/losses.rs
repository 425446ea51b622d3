//! The built-in losses as compositions of existing ops, shared by lowering
//! (`cross_entropy(...)`, `mse(...)` in a model) and the trainer (which
//! attaches cross_entropy to a classifier that declares no loss). Being
//! ordinary ops, they run on every backend and autodiff differentiates them
//! with those ops' rules.

use std::sync::Arc;

use super::builder::add_typed;
use super::graph::ShapeDisplay;
use super::ops::{Cast, CompareOp, Constant, LogSoftmax, Reduce, ReduceOp, Reshape, UnaryOp};
use super::shape_rules::ShapeError;
use super::{DType, Dim, Graph, NodeId, Op, TensorType};
use crate::span::Span;
use crate::tensor::Tensor;

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
        return Err(format!(
            "the class axis of {logits} must have a known size"
        ));
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

/// Adds every node of `cross_entropy(logits, labels)` but the last, and
/// returns that last op with its operands: the mean over all leading
/// positions of `-log_softmax(logits)[label]`. The label picks its class by
/// a one-hot comparison with the class ids; a label outside `0..classes`
/// picks nothing and adds 0 (the trainer checks labels before it runs).
/// The operands must pass [`check_cross_entropy`].
pub fn cross_entropy_parts(
    graph: &mut Graph,
    logits: NodeId,
    labels: NodeId,
    span: Option<Span>,
) -> Result<(Op, Vec<NodeId>), ShapeError> {
    let logits_ty = graph.node(logits).ty.clone();
    let labels_ty = graph.node(labels).ty.clone();
    let leading = logits_ty.rank() - 1;
    let classes = logits_ty.shape[leading]
        .as_known()
        .ok_or_else(|| ShapeError("cross_entropy: the class axis needs a known size".into()))?;
    let log_probs = add_typed(graph, Op::LogSoftmax(LogSoftmax { axis: leading }), &[logits], span)?;
    let labels = if labels_ty.dtype == DType::I64 {
        labels
    } else {
        add_typed(graph, Op::Cast(Cast { to: DType::I64 }), &[labels], span)?
    };
    let mut column = labels_ty.shape.clone();
    column.push(Dim::known(1));
    let labels_column = add_typed(graph, Op::Reshape(Reshape { shape: column }), &[labels], span)?;
    let class_ids = Tensor::i64(vec![classes], (0..classes as i64).collect());
    let class_ids = graph.add_node(
        Op::Constant(Constant {
            value: Arc::new(class_ids),
        }),
        &[],
        TensorType::new(DType::I64, vec![Dim::known(classes)]),
        span,
    );
    let hit = add_typed(
        graph,
        Op::Compare(CompareOp::Eq),
        &[labels_column, class_ids],
        span,
    )?;
    let zero = graph.add_node(
        Op::Constant(Constant {
            value: Arc::new(Tensor::scalar(0.0)),
        }),
        &[],
        TensorType::new(DType::F32, vec![]),
        span,
    );
    let picked = add_typed(graph, Op::Where, &[hit, log_probs, zero], span)?;
    let per_position = add_typed(
        graph,
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![leading],
            keepdims: false,
        }),
        &[picked],
        span,
    )?;
    let (mean, operands) = mean_of_all(leading, per_position);
    let mean = add_typed(graph, mean, &operands, span)?;
    Ok((Op::Unary(UnaryOp::Neg), vec![mean]))
}

/// `cross_entropy(logits, labels)` as one call: the scalar loss node.
pub fn cross_entropy(
    graph: &mut Graph,
    logits: NodeId,
    labels: NodeId,
    span: Option<Span>,
) -> Result<NodeId, ShapeError> {
    check_cross_entropy(&graph.node(logits).ty, &graph.node(labels).ty)
        .map_err(|m| ShapeError(format!("cross_entropy: {m}")))?;
    let (op, inputs) = cross_entropy_parts(graph, logits, labels, span)?;
    add_typed(graph, op, &inputs, span)
}
