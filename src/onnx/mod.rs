//! ONNX import: an ONNX model file becomes a readable .lam model plus a
//! safetensors file of its initializers (`lamina import`, docs/onnx.md).
//!
//! The file is decoded with prost from the vendored official `onnx.proto`
//! (`proto.rs`). Nodes are translated in graph order (`convert.rs`) into
//! lamina ops whose types come from lamina's own shape rules
//! (`builder.rs`), and the written text is loaded back through the normal
//! front end before anything is returned, so an import either gives a model
//! that checks or an error.

mod builder;
mod convert;
mod error;
mod losses;
mod names;
pub mod proto;
pub mod tensors;
mod vision;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::ir::{Dim, TensorType};
use crate::tensor::Tensor;

pub use convert::SUPPORTED;
pub use error::{ImportError, ImportErrors, NodeRef};

use builder::{Builder, Val};
use proto::type_proto;

/// An imported model, not yet written.
#[derive(Debug)]
pub struct Imported {
    /// The .lam text.
    pub source: String,
    /// Parameters for the safetensors file, by lamina name.
    pub weights: BTreeMap<String, Tensor>,
    /// Graph inputs in ONNX order: (ONNX name, lamina name).
    pub inputs: Vec<(String, String)>,
    /// Graph outputs in ONNX order: (ONNX name, lamina name).
    pub outputs: Vec<(String, String)>,
}

/// Where `import_file` wrote the model.
#[derive(Debug)]
pub struct Written {
    pub model: PathBuf,
    /// `None` when the model has no parameters.
    pub weights: Option<PathBuf>,
    pub imported: Imported,
}

/// The default output path: `model.onnx` -> `model.lam`.
pub fn default_output(onnx: &Path) -> PathBuf {
    onnx.with_extension("lam")
}

/// The weight file written beside `lam`: `<stem>.safetensors`.
pub fn weights_path(lam: &Path) -> PathBuf {
    lam.with_extension("safetensors")
}

/// Reads `onnx`, imports it and writes `out` (default: beside the input,
/// `.lam`) and `<stem>.safetensors` beside it. Nothing is written unless the
/// whole import succeeds.
pub fn import_file(
    onnx: &Path,
    out: Option<&Path>,
    fixed: &HashMap<String, Tensor>,
) -> Result<Written, ImportErrors> {
    let bytes = std::fs::read(onnx).map_err(|source| ImportError::Read {
        path: onnx.display().to_string(),
        source,
    })?;
    let lam = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_output(onnx));
    let weights = weights_path(&lam);
    let weights_name = weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.safetensors".into());
    let stem = onnx
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let source_name = onnx
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let imported = import_bytes(&bytes, &stem, &source_name, &weights_name, fixed)?;
    let write_err = |path: &Path, message: String| ImportError::Write {
        path: path.display().to_string(),
        message,
    };
    let weights = if imported.weights.is_empty() {
        None
    } else {
        let bytes = safetensors_bytes(&imported.weights).map_err(|m| write_err(&weights, m))?;
        std::fs::write(&weights, bytes).map_err(|e| write_err(&weights, e.to_string()))?;
        Some(weights)
    };
    std::fs::write(&lam, &imported.source).map_err(|e| write_err(&lam, e.to_string()))?;
    Ok(Written {
        model: lam,
        weights,
        imported,
    })
}

/// The safetensors image of the imported parameters.
pub fn safetensors_bytes(weights: &BTreeMap<String, Tensor>) -> Result<Vec<u8>, String> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let bytes: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = weights
        .iter()
        .map(|(name, t)| {
            let dtype = match t.dtype() {
                crate::dtype::DType::F32 => Dtype::F32,
                crate::dtype::DType::I64 => Dtype::I64,
                crate::dtype::DType::I32 => Dtype::I32,
                crate::dtype::DType::Bool => Dtype::BOOL,
            };
            (
                name.clone(),
                tensors::le_bytes(t),
                dtype,
                t.shape().to_vec(),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, data, dtype, shape) in &bytes {
        let view = TensorView::new(*dtype, shape.clone(), data).map_err(|e| e.to_string())?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// Imports an ONNX model image. `stem` names the model when the graph has
/// no usable name; `source_name` goes into the header comment;
/// `weights_file` is the file the model's `weights "..."` line names.
/// `fixed` gives graph inputs a value at import time: they become
/// constants, for inputs that ONNX passes as tensors but lamina needs as
/// attributes (a `Reshape` shape, reduction axes).
pub fn import_bytes(
    bytes: &[u8],
    stem: &str,
    source_name: &str,
    weights_file: &str,
    fixed: &HashMap<String, Tensor>,
) -> Result<Imported, ImportErrors> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .filter_map(|o| o.version)
        .max()
        .unwrap_or(1);

    let mut errors = check_features(graph);
    errors.extend(check_ops(graph));
    if !errors.is_empty() {
        return Err(ImportErrors(errors));
    }

    let mut b = Builder::default();
    let mut values: HashMap<String, Val> = HashMap::new();
    for init in &graph.initializer {
        let name = init.name.clone().unwrap_or_default();
        match tensors::to_tensor(init) {
            Ok(t) => {
                values.insert(name.clone(), Val::konst(t, &name));
            }
            Err(message) => errors.push(ImportError::Value {
                what: "initializer",
                name,
                message,
            }),
        }
    }
    let mut inputs = Vec::new();
    let mut unnamed_dims = 0;
    for vi in &graph.input {
        let name = vi.name.clone().unwrap_or_default();
        if values.contains_key(&name) {
            continue; // old exporters list initializers as inputs too
        }
        if let Some(value) = fixed.get(&name) {
            values.insert(name.clone(), Val::konst(value.clone(), &name));
            continue;
        }
        match input_type(vi, &mut b, &mut unnamed_dims) {
            Ok(ty) => {
                let v = b.input(&name, ty);
                if let Val::Rt { name: lam, .. } = &v {
                    inputs.push((name.clone(), lam.clone()));
                }
                values.insert(name, v);
            }
            Err(message) => errors.push(ImportError::Value {
                what: "input",
                name,
                message,
            }),
        }
    }
    for name in fixed.keys() {
        if !graph
            .input
            .iter()
            .any(|vi| vi.name.as_deref() == Some(name.as_str()))
        {
            errors.push(ImportError::Value {
                what: "input",
                name: name.clone(),
                message: "is given a fixed value, but the graph has no such input".into(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(ImportErrors(errors));
    }

    let mut poisoned: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (index, node) in graph.node.iter().enumerate() {
        let node_ref = NodeRef {
            name: node
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("#{index}")),
            op_type: node.op_type.clone().unwrap_or_default(),
        };
        if node.input.iter().any(|i| poisoned.contains(i)) {
            poisoned.extend(node.output.iter().cloned());
            continue;
        }
        let mut ins = Vec::with_capacity(node.input.len());
        let mut missing = None;
        for i in &node.input {
            if i.is_empty() {
                ins.push(None);
            } else if let Some(v) = values.get(i) {
                ins.push(Some(v.clone()));
            } else {
                missing = Some(i.clone());
            }
        }
        let result = match missing {
            Some(m) => Err(format!(
                "reads `{m}`, which no earlier node, input or initializer defines"
            )),
            None => convert::convert(&mut b, &convert::Node { proto: node, opset }, &ins),
        };
        match result {
            Ok(outs) => {
                for (i, out) in node.output.iter().enumerate() {
                    if out.is_empty() {
                        continue;
                    }
                    match outs.get(i) {
                        Some(v) => {
                            values.insert(out.clone(), v.clone());
                        }
                        None => {
                            poisoned.insert(out.clone());
                        }
                    }
                }
            }
            Err(message) => {
                errors.push(ImportError::Node {
                    node: node_ref,
                    message,
                });
                poisoned.extend(node.output.iter().cloned());
            }
        }
    }

    let mut outputs = Vec::new();
    for vi in &graph.output {
        let name = vi.name.clone().unwrap_or_default();
        if poisoned.contains(&name) {
            // The node's own error says why; when no error did, the node
            // does not compute this output.
            if errors.is_empty() {
                errors.push(ImportError::Value {
                    what: "output",
                    name,
                    message:
                        "is not computed by its node (an optional output lamina does not produce)"
                            .into(),
                });
            }
            continue;
        }
        let Some(v) = values.get(&name) else {
            errors.push(ImportError::Value {
                what: "output",
                name,
                message: "no node, input or initializer defines it".into(),
            });
            continue;
        };
        match b.output(&name, v) {
            Ok(lam) => outputs.push((name, lam)),
            Err(message) => errors.push(ImportError::Value {
                what: "output",
                name,
                message,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ImportErrors(errors));
    }

    let model_name = names::sanitize(
        graph
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(stem),
    );
    let producer = match (&model.producer_name, &model.producer_version) {
        (Some(p), Some(v)) if !p.is_empty() => format!(", produced by {p} {v}"),
        (Some(p), _) if !p.is_empty() => format!(", produced by {p}"),
        _ => String::new(),
    };
    let header = format!(
        "# Imported from {source_name} by `lamina import` (ONNX opset {opset}{producer}).\n\n"
    );
    let weights = (!b.weights.is_empty()).then_some(weights_file);
    let source = b.finish(&model_name, &header, weights);
    verify(&source, outputs.len())?;
    Ok(Imported {
        source,
        weights: std::mem::take(&mut b.weights),
        inputs,
        outputs,
    })
}

/// Loads the written text through lamina's front end: the importer only
/// returns models that check.
fn verify(source: &str, outputs: usize) -> Result<(), ImportError> {
    let path = Path::new("imported.lam");
    match crate::model::load_source(path, source.to_string()) {
        Ok(loaded) if loaded.graph.outputs.len() == outputs => Ok(()),
        Ok(loaded) => Err(ImportError::Internal(format!(
            "{} outputs written, {} expected",
            loaded.graph.outputs.len(),
            outputs
        ))),
        Err(failure) => Err(ImportError::Internal(crate::diagnostics::render_all(
            &failure.diagnostics,
            Some(&failure.source),
        ))),
    }
}

/// File-format features the importer does not translate.
fn check_features(graph: &proto::GraphProto) -> Vec<ImportError> {
    let mut errors = Vec::new();
    if !graph.sparse_initializer.is_empty() {
        errors.push(ImportError::UnsupportedFeature {
            feature: format!(
                "sparse initializers ({})",
                graph
                    .sparse_initializer
                    .iter()
                    .filter_map(|s| s.values.as_ref().and_then(|v| v.name.clone()))
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if let Some(external) = graph
        .initializer
        .iter()
        .find(|t| !t.external_data.is_empty() || t.data_location == Some(1))
    {
        errors.push(ImportError::UnsupportedFeature {
            feature: format!(
                "external data: initializer `{}` is stored outside the .onnx file (save the model with its weights inside)",
                external.name.clone().unwrap_or_default()
            ),
        });
    }
    errors
}

/// Every node whose op the importer cannot translate, one error per op type.
fn check_ops(graph: &proto::GraphProto) -> Vec<ImportError> {
    let mut unsupported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut control: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        let op = node.op_type.clone().unwrap_or_default();
        let domain = node.domain.clone().unwrap_or_default();
        let name = node
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("#{i}"));
        let has_subgraph = node
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        if convert::CONTROL_FLOW.contains(&op.as_str()) || has_subgraph {
            control.entry(op).or_default().push(name);
        } else if !(domain.is_empty() || domain == "ai.onnx") {
            unsupported
                .entry(format!("{domain}::{op}"))
                .or_default()
                .push(name);
        } else if !convert::SUPPORTED.contains(&op.as_str()) {
            unsupported.entry(op).or_default().push(name);
        }
    }
    let mut errors: Vec<ImportError> = control
        .into_iter()
        .map(|(op, nodes)| ImportError::UnsupportedFeature {
            feature: format!(
                "control flow: `{op}` (nodes {}); lamina models are straight-line graphs",
                nodes
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect();
    errors.extend(
        unsupported
            .into_iter()
            .map(|(op_type, nodes)| ImportError::UnsupportedOp { op_type, nodes }),
    );
    errors
}

/// A graph input's lamina type: dims with values stay numbers, named dims
/// become symbols, unnamed dims get fresh symbols (`dim0`, `dim1`, ...).
fn input_type(
    vi: &proto::ValueInfoProto,
    b: &mut Builder,
    unnamed: &mut usize,
) -> Result<TensorType, String> {
    let ty = vi.r#type.as_ref().ok_or("has no type")?;
    let Some(type_proto::Value::TensorType(t)) = &ty.value else {
        return Err("is not a tensor (sequences, maps and optionals are not supported)".into());
    };
    let dtype = tensors::dtype_of(t.elem_type.unwrap_or(0))?;
    let shape = t.shape.as_ref().ok_or("has no shape (unknown rank)")?;
    let mut dims = Vec::with_capacity(shape.dim.len());
    for d in &shape.dim {
        use proto::tensor_shape_proto::dimension::Value as D;
        dims.push(match &d.value {
            Some(D::DimValue(v)) => {
                Dim::known(usize::try_from(*v).map_err(|_| format!("has a negative dim {v}"))?)
            }
            Some(D::DimParam(p)) if !p.is_empty() => Dim::symbol(&b.symbol(p)),
            _ => {
                let name = format!("dim{unnamed}");
                *unnamed += 1;
                Dim::symbol(&b.symbol(&name))
            }
        });
    }
    Ok(TensorType::new(dtype, dims))
}
