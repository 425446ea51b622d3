//! Errors found while giving an AST meaning. Each carries the span it is about.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LowerError {
    #[error("the file defines no model (add `model NAME {{ ... }}`)")]
    NoModel,
    #[error("a file defines one model; `{name}` is a second one")]
    SecondModel {
        name: String,
        span: Span,
        first: Span,
    },
    #[error("`{name}` is defined twice")]
    Duplicate {
        name: String,
        span: Span,
        first: Span,
    },
    #[error("unknown name `{name}`{hint}")]
    UnknownName {
        name: String,
        span: Span,
        hint: String,
    },
    #[error("unknown function `{name}`{hint}")]
    UnknownFunction {
        name: String,
        span: Span,
        hint: String,
    },
    #[error(
        "unknown symbol `{name}` in {context}: a symbol must appear in an input or parameter shape"
    )]
    UnknownSymbol {
        name: String,
        context: String,
        span: Span,
    },
    #[error("unknown dtype `{name}` (expected f32, i64, i32, bool)")]
    UnknownDType { name: String, span: Span },
    #[error("{func} takes {expected}, got {got}")]
    Arity {
        func: String,
        expected: String,
        got: usize,
        span: Span,
    },
    #[error("{func}: {message}")]
    Argument {
        func: String,
        message: String,
        span: Span,
    },
    #[error("shape error: {message}")]
    Shape {
        op: String,
        message: String,
        span: Span,
    },
    #[error("{message}")]
    Invalid { message: String, span: Span },
}

impl LowerError {
    pub fn span(&self) -> Option<Span> {
        match self {
            LowerError::NoModel => None,
            LowerError::SecondModel { span, .. }
            | LowerError::Duplicate { span, .. }
            | LowerError::UnknownName { span, .. }
            | LowerError::UnknownFunction { span, .. }
            | LowerError::UnknownSymbol { span, .. }
            | LowerError::UnknownDType { span, .. }
            | LowerError::Arity { span, .. }
            | LowerError::Argument { span, .. }
            | LowerError::Shape { span, .. }
            | LowerError::Invalid { span, .. } => Some(*span),
        }
    }

    /// A secondary location worth showing (the first definition of a duplicate).
    pub fn related(&self) -> Option<(Span, &'static str)> {
        match self {
            LowerError::Duplicate { first, .. } => Some((*first, "first defined here")),
            LowerError::SecondModel { first, .. } => Some((*first, "first model is here")),
            _ => None,
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != cb) as usize).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// ", did you mean `x`?" for the closest candidate within a small distance.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1))
        .min();
    match best {
        Some((_, c)) => format!(", did you mean `{c}`?"),
        None => String::new(),
    }
}
