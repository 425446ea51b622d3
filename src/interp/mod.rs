//! The reference interpreter: the oracle every optimised path (passes, JIT)
//! is tested against.
//!
//! This is the driver: it binds the inputs, checks the memory budget, walks
//! the graph in order and calls each op's reference evaluation
//! (`OpKind::eval`, in the op's file under `ir/ops/`), locating errors at
//! the failing node. Each op has one plain implementation, written for
//! clarity rather than speed. Accuracy is deliberately higher than a fast path's: matmul sums,
//! reductions and layer_norm statistics accumulate in f64, and elementwise
//! ops compute in f64 and round once to f32. Fused ops (`FusedLinear`,
//! `FusedElementwise`) are evaluated by the very kernels of the ops they
//! replace, rounding to f32 at the same points, so the interpreter gives the
//! same bits for a graph before and after fusion.
//!
//! Bad data never panics: out-of-range gather ids, slice ends past the
//! bound size, missing parameters and ill-typed operands are `InterpError`s,
//! and NaN propagates through every op as in numpy.

use crate::ir::ops::{Input, Param};
use std::borrow::Cow;
use std::collections::HashMap;

use crate::ir::bind::{bind_inputs, concretize, BindError};
use crate::ir::shape_rules::{self, ShapeError};
use crate::ir::{Bindings, DType, Graph, NodeId, Op, TensorType};
use crate::runtime::budget::{interpreter_peak, tensor_sizes, BudgetError, MemoryBudget};
use crate::span::Span;
use crate::tensor::Tensor;

pub use crate::ir::ops::math::{erf, erfc};
pub use crate::ir::ops::EvalError;

/// Why a graph could not be evaluated. Errors from one node's evaluation
/// come wrapped in `AtNode`; `root()` unwraps them.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// Inputs that do not fit the model's declared inputs, all of them.
    #[error("the inputs do not fit the model:{}", bullet_list(.0))]
    Bind(Vec<BindError>),
    #[error("parameter `{name}` has no value{}", if *.has_init {
        " (its initializer is materialised by the weight loader, not by the interpreter)"
    } else {
        ""
    })]
    MissingParam { name: String, has_init: bool },
    #[error("parameter `{name}` is {actual}, the model declares {declared}")]
    ParamType {
        name: String,
        declared: String,
        actual: String,
    },
    /// The operands do not fit the op (dtype, rank, shapes): the message of
    /// the shape rule, which names the op and the shapes.
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("{op}: the operands give {computed}, but the graph declares {declared}")]
    TypeMismatch {
        op: &'static str,
        computed: String,
        declared: String,
    },
    #[error("{op}: the result {shape} is still symbolic; bind every symbol first")]
    Symbolic { op: &'static str, shape: String },
    /// The op's reference evaluation failed on these operands (bad data:
    /// out-of-range ids, an empty max, ...).
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("output `{name}` names a node that is not in the graph")]
    MissingOutput { name: String },
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("the graph has a cycle: only {ordered} of its {total} nodes can be ordered")]
    Cycle { ordered: usize, total: usize },
    /// An error while evaluating one node, with where that node is declared
    /// (diagnostics render the span as the model's line and column).
    #[error("{}", crate::diagnostics::at_node_message(.op, .source))]
    AtNode {
        node: usize,
        op: &'static str,
        span: Option<Span>,
        source: Box<InterpError>,
    },
}

impl InterpError {
    /// The error itself, without the `AtNode` context around it.
    pub fn root(&self) -> &InterpError {
        match self {
            InterpError::AtNode { source, .. } => source.root(),
            other => other,
        }
    }
}

impl InterpError {
    /// The error as diagnostics: one per binding problem, located in the
    /// model source when it has a place there.
    pub fn diagnostics(&self) -> Vec<crate::diagnostics::Diagnostic> {
        use crate::diagnostics::Diagnostic;
        match self.root() {
            InterpError::Bind(errors) => errors
                .iter()
                .map(|e| Diagnostic::error(e.to_string()).at(e.span()))
                .collect(),
            root => {
                let span = match self {
                    InterpError::AtNode { span, .. } => *span,
                    _ => None,
                };
                vec![Diagnostic::error(root.to_string()).at(span)]
            }
        }
    }
}

fn bullet_list(errors: &[BindError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}

fn concrete_type(tensor: &Tensor) -> TensorType {
    TensorType::new(
        tensor.dtype(),
        tensor.shape().iter().map(|&d| d.into()).collect(),
    )
}

/// The value of one op applied to `inputs`, checked against `out_ty`.
///
/// The output type comes from `shape_rules::infer` on the inputs' concrete
/// types, which also validates the operands; it must equal `out_ty`. Then
/// the op's own reference evaluation (`OpKind::eval`, in its file under
/// `ir/ops/`) computes the value. `Input` and `Param` have no value here
/// (they come from `run`'s maps); `Constant` gives its value.
pub fn eval_node(op: &Op, inputs: &[&Tensor], out_ty: &TensorType) -> Result<Tensor, InterpError> {
    let kind = op.kind();
    if op.is_source() && !matches!(op, Op::Constant(_)) {
        return Err(EvalError::SourceOp { op: op.name() }.into());
    }
    kind.check_values(inputs)?;
    let input_types: Vec<TensorType> = inputs.iter().map(|t| concrete_type(t)).collect();
    let input_type_refs: Vec<&TensorType> = input_types.iter().collect();
    let computed = shape_rules::infer(op, &input_type_refs)?;
    let Some(out_shape) = computed.known_shape() else {
        return Err(InterpError::Symbolic {
            op: op.name(),
            shape: computed.to_string(),
        });
    };
    if computed != *out_ty {
        return Err(InterpError::TypeMismatch {
            op: op.name(),
            computed: computed.to_string(),
            declared: out_ty.to_string(),
        });
    }
    Ok(kind.eval(inputs, &out_shape)?)
}

/// Runs `graph` on `inputs` and returns its outputs in declaration order.
///
/// Inputs are checked against the declared inputs (every problem is
/// reported), symbols are bound from their shapes and `fixed` (`--bind`
/// values), and the graph is made concrete before evaluation. Parameters
/// come from `params` by name and must match their declared type; entries
/// the graph does not use are ignored. Intermediate values are dropped once
/// their last reader has run.
pub fn run(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
    fixed: &Bindings,
) -> Result<Vec<(String, Tensor)>, InterpError> {
    run_within(graph, params, inputs, fixed, &MemoryBudget::default())
}

/// [`run`] that first checks the most memory the run holds at once
/// against `budget`, so that an oversized model is an error, not an abort.
pub fn run_within(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
    fixed: &Bindings,
    budget: &MemoryBudget,
) -> Result<Vec<(String, Tensor)>, InterpError> {
    let given: Vec<(String, DType, Vec<usize>)> = inputs
        .iter()
        .map(|(name, t)| (name.clone(), t.dtype(), t.shape().to_vec()))
        .collect();
    let bindings = bind_inputs(graph, &given, fixed).map_err(InterpError::Bind)?;
    let graph = concretize(graph, &bindings).map_err(InterpError::Bind)?;
    let mut sizes: Vec<(String, usize)> = tensor_sizes(&graph)
        .into_iter()
        .map(|(_, what, bytes)| (what, bytes))
        .collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1));
    sizes.truncate(3);
    budget.check_total("running the model", interpreter_peak(&graph), &sizes)?;

    let order = graph.topo_order();
    if order.len() != graph.node_count() {
        return Err(InterpError::Cycle {
            ordered: order.len(),
            total: graph.node_count(),
        });
    }
    let mut readers_left: HashMap<NodeId, usize> = order
        .iter()
        .map(|&id| (id, graph.users(id).len()))
        .collect();
    let mut values: HashMap<NodeId, Cow<'_, Tensor>> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let value = match &node.op {
            Op::Input(Input { name }) => {
                // bind_inputs has checked that every declared input is given.
                let tensor = inputs.get(name).ok_or_else(|| {
                    InterpError::Bind(vec![BindError::MissingInput {
                        name: name.clone(),
                        declared: node.ty.to_string(),
                    }])
                })?;
                Cow::Borrowed(tensor)
            }
            Op::Param(Param { name, init }) => {
                let tensor = params.get(name).ok_or_else(|| InterpError::MissingParam {
                    name: name.clone(),
                    has_init: init.is_some(),
                })?;
                let actual = concrete_type(tensor);
                if actual != node.ty {
                    return Err(InterpError::ParamType {
                        name: name.clone(),
                        declared: node.ty.to_string(),
                        actual: actual.to_string(),
                    });
                }
                Cow::Borrowed(tensor)
            }
            op => {
                let operand_ids = graph.inputs(id);
                let operands: Vec<&Tensor> =
                    operand_ids.iter().map(|o| values[o].as_ref()).collect();
                let value =
                    eval_node(op, &operands, &node.ty).map_err(|e| InterpError::AtNode {
                        node: id.index(),
                        op: op.name(),
                        span: node.span,
                        source: Box::new(e),
                    })?;
                let mut distinct = operand_ids;
                distinct.sort_unstable();
                distinct.dedup();
                for operand in distinct {
                    let left = readers_left.entry(operand).or_insert(0);
                    *left = left.saturating_sub(1);
                    if *left == 0 && !graph.is_output(operand) {
                        values.remove(&operand);
                    }
                }
                Cow::Owned(value)
            }
        };
        if readers_left[&id] > 0 || graph.is_output(id) {
            values.insert(id, value);
        }
    }
    graph
        .outputs
        .iter()
        .map(|(name, id)| match values.get(id) {
            Some(value) => Ok((name.clone(), value.as_ref().clone())),
            None => Err(InterpError::MissingOutput { name: name.clone() }),
        })
        .collect()
}

#[cfg(test)]
mod tests;
