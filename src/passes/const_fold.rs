//! Constant folding: a node whose operands are all known values is
//! evaluated once, at compile time, and becomes a constant.
//!
//! The value is computed by this pass's own evaluator (`fold_eval.rs`),
//! never by the reference interpreter: the interpreter is the oracle that
//! folded graphs are tested against, and a fold computed by the oracle
//! could not be caught being wrong. The evaluator covers only ops whose
//! f32 result is exact or correctly rounded, so folding changes no bit:
//!
//! - layout: `permute`, `reshape`, `slice`, `concat`, `cast` (any dtype);
//! - f32 elementwise, with broadcasting: `add`, `sub`, `mul`, `div`,
//!   `maximum`, `minimum`, `neg`, `abs`, `sqrt`, `recip`.
//!
//! That is what parameter-only subgraphs in practice are (transposed,
//! reshaped, sliced, concatenated or scaled weights, `1 / sqrt(d)` scales).
//! Every other op (`exp`, `tanh`, `relu`, `pow`, reductions, matmul, ...)
//! is left in place even when its operands are known.
//!
//! Constants are always known. Parameters are known only when the
//! [`PassContext`] carries their bound values: then a parameter-only
//! subgraph (a transposed, reshaped or scaled weight) is folded once here
//! instead of being recomputed on every inference. Without values,
//! parameters are opaque.
//!
//! A fold that would materialise a broadcast (`[1000, 1] + [1, 1000]`) is
//! skipped: the result would be much larger than what it is computed from.
//! An op that fails on its constant operands (an out-of-range gather id) is
//! left in place, so the error surfaces when the model runs, with its span.

use crate::ir::ops::{Constant, Param};
use std::sync::Arc;

use super::edit::{add_constant, known_len, replace};
use super::fold_eval;
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::{Graph, NodeId, Op};
use crate::tensor::Tensor;

/// A folded value may have up to this many elements even when its
/// operands are smaller (small broadcasts such as a scalar times a vector).
const MAX_GROWN_ELEMENTS: usize = 1 << 12;

pub struct ConstantFolding;

/// An operand whose value is known at compile time.
enum Known<'a> {
    Constant(Arc<Tensor>),
    Param(&'a Tensor),
}

impl Known<'_> {
    fn tensor(&self) -> &Tensor {
        match self {
            Known::Constant(t) => t,
            Known::Param(t) => t,
        }
    }
}

impl Pass for ConstantFolding {
    fn name(&self) -> &'static str {
        "const-fold"
    }

    fn description(&self) -> &'static str {
        "evaluate nodes whose operands are constants (or bound parameters) at compile time"
    }

    fn run(
        &self,
        graph: &mut Graph,
        cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        for id in graph.topo_order() {
            if !graph.contains(id) || graph.node(id).op.is_source() {
                continue;
            }
            let Some(out_shape) = graph.node(id).ty.known_shape() else {
                continue;
            };
            let out_len = known_len(&graph.node(id).ty).unwrap_or(0);
            let Some(known) = known_operands(graph, id, cx)? else {
                continue;
            };
            let largest = known.iter().map(|k| k.tensor().len()).max().unwrap_or(0);
            if out_len > largest.max(MAX_GROWN_ELEMENTS) {
                continue;
            }
            let operands: Vec<&Tensor> = known.iter().map(Known::tensor).collect();
            let node = graph.node(id);
            let Some(value) = fold_eval::eval(&node.op, &operands, &out_shape) else {
                continue;
            };
            if value.dtype() != node.ty.dtype {
                continue;
            }
            let uses_params = known.iter().any(|k| matches!(k, Known::Param(_)));
            let span = node.span;
            if !steps.take(
                if uses_params {
                    "parameters"
                } else {
                    "constants"
                },
                span,
            ) {
                break;
            }
            let folded = add_constant(graph, value, span);
            replace(graph, self.name(), id, folded)?;
        }
        Ok(())
    }
}

/// The values of all operands of `id`, or `None` if one is not known.
fn known_operands<'a>(
    graph: &Graph,
    id: NodeId,
    cx: &PassContext<'a>,
) -> Result<Option<Vec<Known<'a>>>, PassError> {
    let mut known = Vec::new();
    for operand in graph.inputs(id) {
        let node = graph.node(operand);
        match &node.op {
            Op::Constant(Constant { value }) => known.push(Known::Constant(Arc::clone(value))),
            Op::Param(Param { name, .. }) => {
                let Some(value) = cx.params.and_then(|p| p.get(name)) else {
                    return Ok(None);
                };
                // A parameter declared with symbols (`f32[vocab, 384]`) is
                // typed by its value only once the graph is made concrete.
                let Some(declared) = node.ty.known_shape() else {
                    return Ok(None);
                };
                if declared != value.shape() || node.ty.dtype != value.dtype() {
                    return Err(PassError::ParamType {
                        name: name.clone(),
                        declared: node.ty.to_string(),
                        actual: format!("{}{:?}", value.dtype(), value.shape()),
                    });
                }
                known.push(Known::Param(value));
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(known))
}
