//! Binding a graph's parameters to values: from the weight file when it
//! holds the name, else from the declared initializer.
//!
//! Every parameter is checked before anything is reported, so a user who
//! renamed three layers sees three errors at once, not one per run.

use crate::ir::ops::Param;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use super::budget::MemoryBudget;
use super::init::materialize;
use super::weights::WeightFile;
use crate::ir::bind::unify;
use crate::ir::dim::checked_bytes;
use crate::ir::{Bindings, DType, Graph, Init, NodeId, Op, TensorType};
use crate::tensor::{Tensor, TensorData};

/// Parameter values for one graph.
#[derive(Clone, Debug)]
pub struct BoundParams {
    /// Every parameter of the graph, by its full name.
    pub values: HashMap<String, Tensor>,
    /// Tensors in the weight file that no parameter uses, sorted.
    pub unused: Vec<String>,
    /// The bindings given, extended by symbols the weights' shapes fixed
    /// (a model may declare `param embed: f32[vocab, 384]` and learn
    /// `vocab` from the checkpoint).
    pub bindings: Bindings,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("weight `{name}` has shape {actual:?}, the model declares {declared}{detail}")]
    Shape {
        name: String,
        declared: TensorType,
        actual: Vec<usize>,
        /// Which dim disagrees, e.g. ` (hidden is already 64, here 63)`.
        detail: String,
    },
    #[error("weight `{name}` has dtype {actual}, the model declares {declared}")]
    DType {
        name: String,
        declared: TensorType,
        actual: DType,
    },
    #[error("{}", missing_message(.name, .declared, .file, .suggestions))]
    Missing {
        name: String,
        declared: TensorType,
        /// The weight file searched, or `None` when the model was given none.
        file: Option<PathBuf>,
        /// The closest unclaimed names in the file, best first.
        suggestions: Vec<String>,
    },
    #[error(
        "parameter `{name}` ({declared}) needs symbol `{symbol}`, which no input, weight or --bind fixes: pass --bind {symbol}=N"
    )]
    Unbound {
        name: String,
        declared: TensorType,
        symbol: String,
    },
    #[error("parameter `{name}` is declared {declared}, but initializer `{init}` makes f32 values (only zeros and ones suit other dtypes)")]
    InitDType {
        name: String,
        declared: TensorType,
        init: Init,
    },
    #[error(
        "parameter `{name}` ({declared}) would have shape {shape}: larger than any tensor can be"
    )]
    TooLarge {
        name: String,
        declared: TensorType,
        /// The shape with bound values, or the dim that overflowed.
        shape: String,
    },
    /// The weight file has a tensor of this name that lamina cannot read.
    #[error("parameter `{name}` ({declared}): {reason}")]
    Unreadable {
        name: String,
        declared: TensorType,
        reason: String,
    },
    /// The initializers together need more memory than the budget; `name`
    /// is the largest of them.
    #[error("{source}")]
    Budget {
        name: String,
        source: super::budget::BudgetError,
    },
}

impl ParamError {
    /// The parameter the error is about, to find its declaration span
    /// (the `Op::Param` node's `span`).
    pub fn param_name(&self) -> &str {
        match self {
            ParamError::Shape { name, .. }
            | ParamError::DType { name, .. }
            | ParamError::Missing { name, .. }
            | ParamError::Unbound { name, .. }
            | ParamError::InitDType { name, .. }
            | ParamError::TooLarge { name, .. }
            | ParamError::Unreadable { name, .. }
            | ParamError::Budget { name, .. } => name,
        }
    }
}

fn missing_message(
    name: &str,
    declared: &TensorType,
    file: &Option<PathBuf>,
    suggestions: &[String],
) -> String {
    let Some(file) = file else {
        return format!(
            "parameter `{name}` ({declared}) has no initializer and no weight file was given \
             (add `weights \"file.safetensors\"` to the model or an initializer to the parameter)"
        );
    };
    let mut message = format!(
        "parameter `{name}` ({declared}) has no initializer and `{}` has no tensor of that name",
        file.display()
    );
    if !suggestions.is_empty() {
        let quoted: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
        message.push_str(&format!("; did you mean {}?", quoted.join(", ")));
    }
    message
}

/// Binds every `Op::Param` of `graph`. `bindings` should already hold the
/// symbols fixed by the inputs and `--bind`; symbols a weight's shape fixes
/// are added. Weight tensors are copied; see [`bind_params_owned`] to move
/// them out of the file instead.
pub fn bind_params(
    graph: &Graph,
    weights: Option<&WeightFile>,
    bindings: &Bindings,
) -> Result<BoundParams, Vec<ParamError>> {
    bind_params_within(graph, weights, bindings, &MemoryBudget::default())
}

/// [`bind_params`] with the initializers' memory checked against `budget`
/// (the default is a share of physical RAM) before any is materialised.
pub fn bind_params_within(
    graph: &Graph,
    weights: Option<&WeightFile>,
    bindings: &Bindings,
    budget: &MemoryBudget,
) -> Result<BoundParams, Vec<ParamError>> {
    let plan = plan(graph, weights, bindings, budget)?;
    let mut values = plan.initialized;
    if let Some(weights) = weights {
        for name in plan.from_file {
            values.insert(name.clone(), weights.tensors[&name].clone());
        }
    }
    Ok(BoundParams {
        values,
        unused: plan.unused,
        bindings: plan.bindings,
    })
}

/// What [`bind_params`] would report, without copying or moving a weight:
/// the unused tensor names, or every problem.
pub fn check_params(
    graph: &Graph,
    weights: Option<&WeightFile>,
    bindings: &Bindings,
    budget: &MemoryBudget,
) -> Result<Vec<String>, Vec<ParamError>> {
    plan(graph, weights, bindings, budget).map(|plan| plan.unused)
}

/// [`bind_params`] that consumes the weight file, moving its tensors into
/// the result instead of copying them (checkpoints run to hundreds of MB).
pub fn bind_params_owned(
    graph: &Graph,
    weights: Option<WeightFile>,
    bindings: &Bindings,
) -> Result<BoundParams, Vec<ParamError>> {
    bind_params_owned_within(graph, weights, bindings, &MemoryBudget::default())
}

/// [`bind_params_owned`] with the initializers' memory checked against
/// `budget`.
pub fn bind_params_owned_within(
    graph: &Graph,
    weights: Option<WeightFile>,
    bindings: &Bindings,
    budget: &MemoryBudget,
) -> Result<BoundParams, Vec<ParamError>> {
    let plan = plan(graph, weights.as_ref(), bindings, budget)?;
    let mut values = plan.initialized;
    if let Some(mut weights) = weights {
        for name in plan.from_file {
            let tensor = weights
                .tensors
                .remove(&name)
                .expect("plan names tensors of this file");
            values.insert(name, tensor);
        }
    }
    Ok(BoundParams {
        values,
        unused: plan.unused,
        bindings: plan.bindings,
    })
}

/// What binding decided, before any weight tensor is copied or moved.
struct Plan {
    /// Names whose value is the weight file's tensor of that name.
    from_file: BTreeSet<String>,
    initialized: HashMap<String, Tensor>,
    unused: Vec<String>,
    bindings: Bindings,
}

fn plan(
    graph: &Graph,
    weights: Option<&WeightFile>,
    given: &Bindings,
    budget: &MemoryBudget,
) -> Result<Plan, Vec<ParamError>> {
    let params: Vec<(String, NodeId, Option<Init>)> = graph
        .params()
        .into_iter()
        .filter_map(|(name, id)| match &graph.node(id).op {
            Op::Param(Param { init, .. }) => Some((name, id, init.clone())),
            _ => None,
        })
        .collect();
    let declared_names: BTreeSet<&str> = params.iter().map(|(name, _, _)| name.as_str()).collect();
    let mut bindings = given.clone();
    let mut errors = Vec::new();
    let mut checked_file_params = Vec::new();
    let mut init_params = Vec::new();

    // Weights first, in graph order, so that symbols they fix are known
    // when initializers need concrete shapes.
    for (name, id, init) in &params {
        let declared = &graph.node(*id).ty;
        match weights.and_then(|w| w.get(name)) {
            Some(tensor) => {
                let mut ok = true;
                if tensor.dtype() != declared.dtype {
                    ok = false;
                    errors.push(ParamError::DType {
                        name: name.clone(),
                        declared: declared.clone(),
                        actual: tensor.dtype(),
                    });
                }
                if let Err(detail) = unify(&declared.shape, tensor.shape(), &mut bindings) {
                    ok = false;
                    errors.push(shape_error(name, declared, tensor, detail));
                }
                if ok {
                    checked_file_params.push((name, declared, tensor));
                }
            }
            None => match init {
                _ if weights.and_then(|w| w.unreadable(name)).is_some() => {
                    errors.push(ParamError::Unreadable {
                        name: name.clone(),
                        declared: declared.clone(),
                        reason: weights
                            .and_then(|w| w.unreadable(name))
                            .unwrap_or_default()
                            .to_string(),
                    })
                }
                Some(init) => init_params.push((name, declared, init)),
                None => errors.push(ParamError::Missing {
                    name: name.clone(),
                    declared: declared.clone(),
                    file: weights.map(|w| w.path.clone()),
                    suggestions: weights
                        .map(|w| {
                            closest_names(name, w.names().filter(|n| !declared_names.contains(n)))
                        })
                        .unwrap_or_default(),
                }),
            },
        }
    }

    // A product dim like `2*hidden` is only checked by `unify` once its
    // symbols are bound, which a later weight may have done: re-check
    // against the final bindings.
    let mut from_file = BTreeSet::new();
    for (name, declared, tensor) in checked_file_params {
        if let Err(detail) = unify(&declared.shape, tensor.shape(), &mut bindings.clone()) {
            errors.push(shape_error(name, declared, tensor, detail));
        } else if let Some(symbol) = first_unbound(declared, &bindings) {
            errors.push(ParamError::Unbound {
                name: name.clone(),
                declared: declared.clone(),
                symbol,
            });
        } else {
            from_file.insert(name.clone());
        }
    }

    // Shapes and sizes first: nothing is materialised until every
    // initializer is known to be representable and all fit the budget.
    let mut sized = Vec::new();
    for (name, declared, init) in init_params {
        if let Some(symbol) = first_unbound(declared, &bindings) {
            errors.push(ParamError::Unbound {
                name: name.clone(),
                declared: declared.clone(),
                symbol,
            });
            continue;
        }
        let shape: Option<Vec<usize>> = declared
            .shape
            .iter()
            .map(|d| d.substitute(&bindings).and_then(|d| d.as_known()))
            .collect();
        let bytes = shape
            .as_ref()
            .and_then(|s| checked_bytes(s, declared.dtype.size_bytes()));
        match (shape, bytes) {
            (Some(shape), Some(bytes)) => sized.push((name, declared, init, shape, bytes)),
            (shape, _) => errors.push(ParamError::TooLarge {
                name: name.clone(),
                declared: declared.clone(),
                shape: shape.map_or_else(
                    || "with a dimension that overflows".to_string(),
                    |s| format!("{s:?}"),
                ),
            }),
        }
    }
    if errors.is_empty() {
        let sizes: Vec<(String, usize)> = sized
            .iter()
            .map(|(name, declared, _, shape, bytes)| {
                (
                    format!("parameter `{name}` {}{shape:?}", declared.dtype),
                    *bytes,
                )
            })
            .collect();
        if let Err(e) = budget.check("initializing the parameters", &sizes) {
            let largest = sized
                .iter()
                .max_by_key(|(_, _, _, _, bytes)| *bytes)
                .map(|(name, ..)| (*name).clone())
                .unwrap_or_default();
            errors.push(ParamError::Budget {
                name: largest,
                source: e,
            });
        }
    }

    let mut initialized = HashMap::new();
    if !errors.is_empty() {
        return Err(errors);
    }
    // Each value comes from its own seeded stream, so computing them on
    // several threads gives the same values.
    let values = crate::runtime::parallel::map_by_cost(
        sized,
        |(.., bytes)| *bytes,
        |(name, declared, init, shape, _)| {
            let value = initial_value(init, name, declared.dtype, &shape);
            (name, declared, init, value)
        },
    );
    for (name, declared, init, value) in values {
        match value {
            Some(value) => {
                initialized.insert(name.clone(), value);
            }
            None => errors.push(ParamError::InitDType {
                name: name.clone(),
                declared: declared.clone(),
                init: init.clone(),
            }),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let unused = weights
        .map(|w| {
            w.names()
                .filter(|n| !declared_names.contains(n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Plan {
        from_file,
        initialized,
        unused,
        bindings,
    })
}

fn shape_error(name: &str, declared: &TensorType, tensor: &Tensor, detail: String) -> ParamError {
    // With only numbers declared, the two shapes side by side say it all;
    // `unify`'s detail earns its place when symbols or ranks are involved.
    let all_known = declared.known_shape().is_some() && declared.rank() == tensor.shape().len();
    let detail = if all_known { String::new() } else { detail };
    ParamError::Shape {
        name: name.to_string(),
        declared: declared.clone(),
        actual: tensor.shape().to_vec(),
        detail,
    }
}

fn first_unbound(declared: &TensorType, bindings: &Bindings) -> Option<String> {
    declared
        .shape
        .iter()
        .find_map(|d| d.substitute(bindings)?.symbols().first().cloned())
}

/// The initial value of a parameter of any dtype; `None` when a random
/// initializer is asked for a non-f32 parameter.
fn initial_value(init: &Init, name: &str, dtype: DType, shape: &[usize]) -> Option<Tensor> {
    let constant = match init {
        Init::Zeros => Some(false),
        Init::Ones => Some(true),
        Init::Uniform { .. } | Init::Normal { .. } | Init::Xavier { .. } | Init::He { .. } => None,
    };
    let count = shape.iter().product();
    match (dtype, constant) {
        (DType::F32, _) => Some(materialize(init, name, shape)),
        (_, None) => None,
        (DType::I64, Some(one)) => Some(Tensor::new(
            shape.to_vec(),
            TensorData::I64(vec![one as i64; count]),
        )),
        (DType::I32, Some(one)) => Some(Tensor::new(
            shape.to_vec(),
            TensorData::I32(vec![one as i32; count]),
        )),
        (DType::Bool, Some(one)) => Some(Tensor::new(
            shape.to_vec(),
            TensorData::Bool(vec![one; count]),
        )),
    }
}

/// Up to three candidates closest to `name` by edit distance, best first;
/// candidates sharing less than a third of the name are left out.
fn closest_names<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, c)| d * 3 <= name.chars().count().max(c.chars().count()) * 2)
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// Levenshtein distance over chars, one row at a time.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_char_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("fc1.weight", "fc1.weight"), 0);
        assert_eq!(edit_distance("layer.0.weight", "layers.0.weight"), 1);
    }

    #[test]
    fn closest_names_rank_and_drop_unrelated() {
        let file = [
            "fc1.bias",
            "fc1.weights",
            "fc2.weight",
            "embeddings.position_ids",
        ];
        let got = closest_names("fc1.weight", file.into_iter());
        assert_eq!(got, vec!["fc1.weights", "fc2.weight", "fc1.bias"]);
        assert!(closest_names("x", ["embeddings.position_ids"].into_iter()).is_empty());
    }
}
