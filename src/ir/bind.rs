//! Binding symbolic dims to sizes from the tensors a model is run with.

use crate::ir::ops::{Input, Param, Reshape, Slice};
use std::collections::HashSet;

use super::{shape_rules, Bindings, DType, Dim, Graph, NodeId, Op, TensorType};
use crate::span::Span;

/// A tensor given at the boundary does not fit what the model declares.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BindError {
    #[error("input `{name}` is missing (the model declares {declared})")]
    MissingInput { name: String, declared: String },
    #[error("`{name}` is not an input of the model (inputs: {known})")]
    UnknownInput { name: String, known: String },
    #[error("input `{name}` has dtype {actual}, the model declares {declared}")]
    DType {
        name: String,
        declared: String,
        actual: DType,
    },
    #[error("input `{name}` has shape {actual:?}, the model declares {declared}{detail}")]
    Shape {
        name: String,
        declared: String,
        actual: Vec<usize>,
        detail: String,
    },
    #[error("symbol `{symbol}` is not bound: pass --bind {symbol}=N or an input that fixes it")]
    Unbound { symbol: String },
    /// A node of the concrete graph fails its shape rule or is too large
    /// for memory once symbols have values.
    #[error("{}{message}", .what.as_ref().map(|w| format!("{w}: ")).unwrap_or_default())]
    Node {
        /// `input `x``, `parameter `w`` or `output `y``; `None` for other
        /// nodes, whose message names the op and whose span locates them.
        what: Option<String>,
        message: String,
        span: Option<Span>,
    },
}

impl BindError {
    /// Where in the model source the problem is, when it has a place there.
    pub fn span(&self) -> Option<Span> {
        match self {
            BindError::Node { span, .. } => *span,
            _ => None,
        }
    }
}

/// Unifies a declared shape with a concrete one, extending `bindings`.
/// Returns a reason on mismatch.
pub fn unify(declared: &[Dim], actual: &[usize], bindings: &mut Bindings) -> Result<(), String> {
    if declared.len() != actual.len() {
        return Err(format!(" (rank {} vs {})", actual.len(), declared.len()));
    }
    // Plain symbols first, so that products like `batch*seq` can be checked after.
    for (d, &a) in declared.iter().zip(actual) {
        if let [sym] = d.symbols() {
            if d.factor() == 1 {
                match bindings.get(sym) {
                    Some(&v) if v != a => {
                        return Err(format!(" ({sym} is already {v}, here {a})"));
                    }
                    Some(_) => {}
                    None => {
                        bindings.insert(sym.clone(), a);
                    }
                }
            }
        }
    }
    for (axis, (d, &a)) in declared.iter().zip(actual).enumerate() {
        let Some(d_bound) = d.substitute(bindings) else {
            return Err(format!(
                " (axis {axis} is {d}, which overflows with the bound values: no tensor is that large)"
            ));
        };
        if let Some(v) = d_bound.as_known() {
            if v != a {
                let expected = if d.as_known().is_some() {
                    v.to_string()
                } else {
                    format!("{d} = {v}")
                };
                return Err(format!(" (axis {axis} must be {expected}, got {a})"));
            }
        }
    }
    Ok(())
}

/// Checks run-time inputs against the model's declared inputs and derives
/// the value of every symbol. `fixed` holds `--bind` values, which inputs
/// must agree with. Reports every problem, not only the first.
pub fn bind_inputs(
    graph: &Graph,
    inputs: &[(String, DType, Vec<usize>)],
    fixed: &Bindings,
) -> Result<Bindings, Vec<BindError>> {
    let mut bindings = fixed.clone();
    let mut errors = Vec::new();
    let declared_names: Vec<&str> = graph
        .inputs
        .iter()
        .map(|&id| graph.input_name(id))
        .collect();
    for (name, _, _) in inputs {
        if !declared_names.contains(&name.as_str()) {
            errors.push(BindError::UnknownInput {
                name: name.clone(),
                known: declared_names.join(", "),
            });
        }
    }
    for &id in &graph.inputs {
        let node = graph.node(id);
        let name = graph.input_name(id);
        let Some((_, dtype, shape)) = inputs.iter().find(|(n, _, _)| n == name) else {
            errors.push(BindError::MissingInput {
                name: name.to_string(),
                declared: node.ty.to_string(),
            });
            continue;
        };
        if *dtype != node.ty.dtype {
            errors.push(BindError::DType {
                name: name.to_string(),
                declared: node.ty.to_string(),
                actual: *dtype,
            });
        }
        if let Err(detail) = unify(&node.ty.shape, shape, &mut bindings) {
            errors.push(BindError::Shape {
                name: name.to_string(),
                declared: node.ty.to_string(),
                actual: shape.clone(),
                detail,
            });
        }
    }
    if errors.is_empty() {
        Ok(bindings)
    } else {
        Err(errors)
    }
}

/// Every symbol that a node's type or attributes mention.
pub fn symbols(graph: &Graph) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let attr_dims: Vec<&Dim> = match &node.op {
            Op::Reshape(Reshape { shape }) => shape.iter().collect(),
            Op::Slice(Slice { end, .. }) => vec![end],
            _ => vec![],
        };
        for d in node.ty.shape.iter().chain(attr_dims) {
            out.extend(d.symbols().iter().cloned());
        }
    }
    out.into_iter().collect()
}

/// How a node is named in messages: inputs and parameters by name, other
/// nodes by their op (the span locates them).
fn describe(graph: &Graph, id: NodeId) -> Option<String> {
    match &graph.node(id).op {
        Op::Input(Input { name }) => Some(format!("input `{name}`")),
        Op::Param(Param { name, .. }) => Some(format!("parameter `{name}`")),
        _ => graph
            .outputs
            .iter()
            .find(|(_, o)| *o == id)
            .map(|(name, _)| format!("output `{name}`")),
    }
}

fn substitute_all(dims: &mut [Dim], bindings: &Bindings) -> Result<(), String> {
    for d in dims.iter_mut() {
        *d = d.substitute(bindings).ok_or_else(|| {
            format!("the dimension {d} overflows with the bound values: no tensor is that large")
        })?;
    }
    Ok(())
}

/// Substitutes `bindings` into every type and dim attribute and re-runs
/// every shape rule on the result, so that a symbolic graph becomes a
/// concrete one that kernels can trust: a slice end bound past its axis, a
/// product of symbols that overflows, or a tensor too large for memory is
/// an error here, not a crash in a kernel. Reports every failing node whose
/// operands are sound (one mistake is not repeated downstream).
pub fn concretize(graph: &Graph, bindings: &Bindings) -> Result<Graph, Vec<BindError>> {
    let mut g = graph.clone();
    let mut errors = Vec::new();
    let mut unbound = std::collections::BTreeSet::new();
    let mut failed: HashSet<NodeId> = HashSet::new();
    for id in g.topo_order() {
        let operands = g.inputs(id);
        if operands.iter().any(|o| failed.contains(o)) {
            failed.insert(id);
            continue;
        }
        let what = describe(&g, id);
        let span = g.node(id).span;
        let fail = |message: String| BindError::Node {
            what: what.clone(),
            message,
            span,
        };
        let node = g.node_mut(id);
        let attrs = match &mut node.op {
            Op::Reshape(Reshape { shape }) => substitute_all(shape, bindings),
            Op::Slice(Slice { end, .. }) => substitute_all(std::slice::from_mut(end), bindings),
            _ => Ok(()),
        };
        let declared = substitute_all(&mut node.ty.shape, bindings);
        if let Err(message) = attrs.and(declared) {
            errors.push(fail(message));
            failed.insert(id);
            continue;
        }
        let symbols: Vec<String> = node
            .ty
            .shape
            .iter()
            .flat_map(|d| d.symbols().iter().cloned())
            .collect();
        if !symbols.is_empty() {
            unbound.extend(symbols);
            failed.insert(id);
            continue;
        }
        let checked = if matches!(node.op, Op::Input(_) | Op::Param(_)) {
            shape_rules::check_size(&node.ty)
        } else {
            let op = node.op.clone();
            let declared = node.ty.clone();
            let types: Vec<TensorType> = operands.iter().map(|&o| g.node(o).ty.clone()).collect();
            let refs: Vec<&TensorType> = types.iter().collect();
            shape_rules::infer(&op, &refs).and_then(|ty| {
                if ty == declared {
                    Ok(())
                } else {
                    Err(shape_rules::ShapeError(format!(
                        "the operands give {ty}, but the graph declares {declared}"
                    )))
                }
            })
        };
        if let Err(e) = checked {
            errors.push(fail(e.0));
            failed.insert(id);
        }
    }
    // An unbound symbol is one mistake however many nodes mention it.
    errors.extend(
        unbound
            .into_iter()
            .map(|symbol| BindError::Unbound { symbol }),
    );
    if errors.is_empty() {
        Ok(g)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unify_binds_symbols_and_checks_products() {
        let mut b = Bindings::new();
        let declared = [
            Dim::symbol("batch"),
            Dim::symbol("seq"),
            Dim::symbol("batch")
                .checked_mul(&Dim::symbol("seq"))
                .unwrap(),
        ];
        unify(&declared, &[2, 3, 6], &mut b).unwrap();
        assert_eq!(b["batch"], 2);
        assert_eq!(b["seq"], 3);
        assert!(unify(&declared, &[2, 3, 7], &mut Bindings::new()).is_err());
        assert!(unify(&[Dim::known(4)], &[5], &mut Bindings::new()).is_err());
    }
}
