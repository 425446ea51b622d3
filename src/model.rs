//! The front end as one call: read a `.lam` file, parse, lower, verify.

use std::path::{Path, PathBuf};

use crate::diagnostics::{Diagnostic, SourceFile};
use crate::ir::image_input::ImageInput;
use crate::ir::lower::{lower, LoweredModel};
use crate::ir::lower_error::LowerError;
use crate::ir::{verify, Graph};
use crate::span::Span;
use crate::syntax::parser::{parse, ParseError};

/// A model file that parsed, lowered and type-checked.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub path: PathBuf,
    pub source: SourceFile,
    pub graph: Graph,
    /// `weights "..."` as written in the file, with its span.
    pub weights: Option<(String, Span)>,
    /// Inputs declared `= image(...)`, in declaration order.
    pub image_inputs: Vec<ImageInput>,
}

/// Everything wrong with a model file, ready to render against its source.
#[derive(Clone, Debug)]
pub struct LoadFailure {
    pub source: SourceFile,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn load(path: &Path) -> Result<LoadedModel, LoadFailure> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load_source(path, text),
            Err(e) => Err(not_utf8(&shown, e)),
        },
        Err(e) => Err(LoadFailure {
            source: SourceFile {
                path: shown,
                text: None,
            },
            diagnostics: vec![Diagnostic::error(format!(
                "cannot read the model file: {e}"
            ))],
        }),
    }
}

/// A model file that is not UTF-8, located at its first bad byte. The text
/// shown is the file with invalid bytes replaced, which leaves everything
/// before the first one (and so its line and column) as it was.
fn not_utf8(path: &str, e: std::string::FromUtf8Error) -> LoadFailure {
    let at = e.utf8_error().valid_up_to();
    let bad = e.as_bytes()[at];
    let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
    LoadFailure {
        source: SourceFile {
            path: path.to_string(),
            text: Some(text),
        },
        diagnostics: vec![Diagnostic::error(format!(
            "the model file is not UTF-8 text: byte 0x{bad:02x} here does not start a valid \
             character (save the file as UTF-8)"
        ))
        .at(Some(Span::new(at, at + 1)))],
    }
}

/// Old Mac files end lines with a lone CR. The grammar only knows LF (and
/// CRLF), so such a file would be one long line and, after its first `#`,
/// one comment. A lone CR becomes LF: one byte for one, so every span still
/// points at the same place in the file.
fn normalize_line_ends(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    let mut bytes = text.into_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            bytes[i] = b'\n';
        }
    }
    String::from_utf8(bytes).expect("replacing an ASCII byte by another keeps UTF-8")
}

/// Like `load`, for text already in memory (`path` is used for messages).
pub fn load_source(path: &Path, text: String) -> Result<LoadedModel, LoadFailure> {
    let text = normalize_line_ends(text);
    let source = SourceFile {
        path: path.display().to_string(),
        text: Some(text),
    };
    let text = source.text.as_deref().unwrap_or("");
    let fail = |diagnostics| LoadFailure {
        source: source.clone(),
        diagnostics,
    };
    let ast = parse(text).map_err(|e| fail(vec![parse_diagnostic(&e)]))?;
    let LoweredModel {
        graph,
        weights,
        image_inputs,
    } = lower(&ast).map_err(|errors| fail(errors.iter().map(lower_diagnostic).collect()))?;
    if let Err(e) = verify::verify(&graph) {
        // Lowering checks every node as it adds it; reaching this is a bug.
        return Err(fail(vec![Diagnostic::error(format!(
            "internal error: {e}"
        ))]));
    }
    Ok(LoadedModel {
        path: path.to_path_buf(),
        source,
        graph,
        weights,
        image_inputs,
    })
}

pub fn parse_diagnostic(e: &ParseError) -> Diagnostic {
    Diagnostic::error(format!("syntax error: {}", e.message)).at(Some(e.span))
}

pub fn lower_diagnostic(e: &LowerError) -> Diagnostic {
    let mut d = Diagnostic::error(e.to_string()).at(e.span());
    if let Some((span, label)) = e.related() {
        d = d.with_related(span, label);
    }
    d
}
