//! What can go wrong importing an ONNX file, each error naming the file and,
//! where there is one, the node (name and op type) it is about.

use crate::diagnostics::Diagnostic;

/// A node as errors name it: `node `Reshape_3` (Reshape)`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRef {
    pub name: String,
    pub op_type: String,
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node `{}` ({})", self.name, self.op_type)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid ONNX model (protobuf decoding failed: {0})")]
    Decode(String),
    #[error("the model has no graph")]
    NoGraph,
    /// Every node of one op type lamina cannot express, reported once.
    #[error("unsupported op `{op_type}` (used by {})", list_nodes(nodes))]
    UnsupportedOp { op_type: String, nodes: Vec<String> },
    /// A feature of the file format lamina does not import.
    #[error("unsupported: {feature}")]
    UnsupportedFeature { feature: String },
    #[error("{node}: {message}")]
    Node { node: NodeRef, message: String },
    #[error("graph {what} `{name}`: {message}")]
    Value {
        what: &'static str,
        name: String,
        message: String,
    },
    #[error("cannot write `{path}`: {message}")]
    Write { path: String, message: String },
    /// The written model does not load: a bug in the importer, shown with
    /// lamina's own diagnostics.
    #[error("the imported model does not check (an importer bug): {0}")]
    Internal(String),
}

fn list_nodes(nodes: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<String> = nodes.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
    if nodes.len() > SHOWN {
        names.push(format!("and {} more", nodes.len() - SHOWN));
    }
    let noun = if nodes.len() == 1 { "node" } else { "nodes" };
    format!("{noun} {}", names.join(", "))
}

impl ImportError {
    pub fn diagnostic(&self) -> Diagnostic {
        let d = Diagnostic::error(self.to_string());
        match self {
            ImportError::UnsupportedOp { .. } => {
                d.with_note("docs/onnx.md lists the ONNX ops lamina imports; nothing was written")
            }
            _ => d,
        }
    }
}

/// All the errors of one import, in the order found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ImportErrors(pub Vec<ImportError>);

impl ImportErrors {
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.0.iter().map(ImportError::diagnostic).collect()
    }
}

impl From<ImportError> for ImportErrors {
    fn from(e: ImportError) -> ImportErrors {
        ImportErrors(vec![e])
    }
}
