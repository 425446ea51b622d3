//! User-facing diagnostics: `PATH:LINE:COL: error: message`, then the source
//! line with a caret under the fault.
//!
//! Every layer has its own typed error; each converts into `Diagnostic`
//! here, so the format is decided in one place. The layout is the classic
//! compiler one that editors and CI logs link to.

use std::fmt::Write;

use crate::span::{LineIndex, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Where in the model source, if the fault has a place there.
    pub span: Option<Span>,
    /// Other places worth showing, each with a short label.
    pub related: Vec<(Span, String)>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            related: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, span: Option<Span>) -> Diagnostic {
        self.span = span;
        self
    }

    pub fn with_related(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.related.push((span, label.into()));
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

/// The file a diagnostic is about: its path as the user wrote it, and its
/// text when it could be read.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: String,
    pub text: Option<String>,
}

/// Renders one diagnostic as text (ends with a newline).
pub fn render(d: &Diagnostic, file: Option<&SourceFile>) -> String {
    let index = file.and_then(|f| f.text.as_deref()).map(LineIndex::new);
    render_indexed(d, file, index.as_ref())
}

fn render_indexed(d: &Diagnostic, file: Option<&SourceFile>, index: Option<&LineIndex>) -> String {
    let mut out = String::new();
    let location = match (file, d.span) {
        (Some(SourceFile { path, .. }), Some(span)) if index.is_some() => {
            let (line, col) = index.expect("checked").line_col(span.start);
            format!("{path}:{line}:{col}: ")
        }
        (Some(f), _) => format!("{}: ", f.path),
        (None, _) => String::new(),
    };
    writeln!(out, "{location}{}: {}", d.severity.word(), d.message).unwrap();
    if let (Some(index), Some(span)) = (index, d.span) {
        snippet(&mut out, index, span);
        for (span, label) in &d.related {
            let (line, col) = index.line_col(span.start);
            writeln!(out, "  note: {label} ({line}:{col})").unwrap();
            snippet(&mut out, index, *span);
        }
    }
    for note in &d.notes {
        writeln!(out, "  = note: {note}").unwrap();
    }
    out
}

/// The line holding `span.start`, with `^` under the span (clipped to that line).
fn snippet(out: &mut String, index: &LineIndex, span: Span) {
    let text = index.text();
    let (line_no, col) = index.line_col(span.start);
    let line = index.line(line_no);
    let gutter = line_no.to_string().len();
    let line_chars = line.chars().count();
    let span_chars = text
        .get(span.start.min(text.len())..span.end.min(text.len()))
        .map_or(1, |s| s.split('\n').next().unwrap_or("").chars().count());
    let width = span_chars.clamp(1, (line_chars + 1).saturating_sub(col - 1).max(1));
    writeln!(out, "{:gutter$} |", "").unwrap();
    writeln!(out, "{line_no} | {line}").unwrap();
    // Tabs keep their width so the caret lines up.
    let pad: String = line
        .chars()
        .take(col - 1)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    writeln!(out, "{:gutter$} | {pad}{}", "", "^".repeat(width)).unwrap();
}

/// The message of an error that happened in one node: the op's name, then
/// the error (once, when the error already starts with it). Where the node
/// is comes from its span, rendered as the diagnostic's line and caret.
pub fn at_node_message(op: &str, error: &dyn std::fmt::Display) -> String {
    let message = error.to_string();
    if message.starts_with(&format!("{op}:")) {
        message
    } else {
        format!("{op}: {message}")
    }
}

/// Renders a list of diagnostics about one file.
pub fn render_all(diags: &[Diagnostic], file: Option<&SourceFile>) -> String {
    let index = file.and_then(|f| f.text.as_deref()).map(LineIndex::new);
    diags
        .iter()
        .map(|d| render_indexed(d, file, index.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_path_line_col_and_caret() {
        let file = SourceFile {
            path: "m.lam".into(),
            text: Some("model m {\n  h = foo(x)\n}\n".into()),
        };
        let d = Diagnostic::error("unknown function `foo`").at(Some(Span::new(16, 19)));
        let text = render(&d, Some(&file));
        assert_eq!(
            text,
            "m.lam:2:7: error: unknown function `foo`\n  |\n2 |   h = foo(x)\n  |       ^^^\n"
        );
    }
}
