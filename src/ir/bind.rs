//! Binding symbolic dims to sizes from the tensors a model is run with.

use super::{Bindings, DType, Dim, Graph, Op};

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
        if let Some(v) = d.substitute(bindings).as_known() {
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
            Op::Reshape { shape } => shape.iter().collect(),
            Op::Slice { end, .. } => vec![end],
            _ => vec![],
        };
        for d in node.ty.shape.iter().chain(attr_dims) {
            out.extend(d.symbols().iter().cloned());
        }
    }
    out.into_iter().collect()
}

/// Substitutes `bindings` into every type and dim attribute, so that a
/// symbolic graph becomes a concrete one. Fails naming the first unbound
/// symbol.
pub fn concretize(graph: &Graph, bindings: &Bindings) -> Result<Graph, BindError> {
    let mut g = graph.clone();
    let ids: Vec<_> = g.node_ids().collect();
    for id in ids {
        let node = g.node_mut(id);
        for d in node.ty.shape.iter_mut() {
            *d = d.substitute(bindings);
        }
        match &mut node.op {
            Op::Reshape { shape } => {
                for d in shape.iter_mut() {
                    *d = d.substitute(bindings);
                }
            }
            Op::Slice { end, .. } => *end = end.substitute(bindings),
            _ => {}
        }
        let unbound = node
            .ty
            .shape
            .iter()
            .find_map(|d| d.symbols().first().cloned());
        if let Some(symbol) = unbound {
            return Err(BindError::Unbound { symbol });
        }
    }
    Ok(g)
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
            Dim::symbol("batch").mul(&Dim::symbol("seq")),
        ];
        unify(&declared, &[2, 3, 6], &mut b).unwrap();
        assert_eq!(b["batch"], 2);
        assert_eq!(b["seq"], 3);
        assert!(unify(&declared, &[2, 3, 7], &mut Bindings::new()).is_err());
        assert!(unify(&[Dim::known(4)], &[5], &mut Bindings::new()).is_err());
    }
}
