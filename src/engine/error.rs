//! The engine's error: what went wrong (typed), and the same as diagnostics
//! located in the model source, rendered by `diagnostics.rs`.

use crate::compile::CompileError;
use crate::diagnostics::{render_all, Diagnostic, SourceFile};
use crate::interp::InterpError;
use crate::ir::bind::BindError;
use crate::ir::Graph;
use crate::runtime::exec::ExecError;
use crate::runtime::image::ImageError;
use crate::runtime::params::ParamError;
use crate::runtime::text::TextError;
use crate::runtime::weights::WeightError;

/// A compile option that does not fit the model.
///
/// ```
/// use lamina::engine::OptionError;
///
/// let e = OptionError::ConflictingBind { symbol: "n".into(), first: 4, second: 3 };
/// assert_eq!(e.to_string(), "symbol `n` is bound twice, to 4 and to 3");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("at least one worker thread is needed, got 0")]
    NoThreads,
    #[error("the model has no symbol `{symbol}`{}", symbol_hint(.suggestion, .known))]
    UnknownSymbol {
        symbol: String,
        /// The closest symbol of the model, when one is close.
        suggestion: Option<String>,
        /// Every symbol of the model, sorted.
        known: Vec<String>,
    },
    #[error("symbol `{symbol}` is bound twice, to {first} and to {second}")]
    ConflictingBind {
        symbol: String,
        first: usize,
        second: usize,
    },
}

fn symbol_hint(suggestion: &Option<String>, known: &[String]) -> String {
    let mut hint = match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    };
    if known.is_empty() {
        hint.push_str(" (it has no symbols)");
    } else {
        hint.push_str(&format!(" (its symbols: {})", known.join(", ")));
    }
    hint
}

/// What went wrong, by stage.
///
/// ```
/// use lamina::engine::{ErrorKind, Model, Options, Weights};
///
/// let model = Model::from_source("m.lam", "model m {\n  param w: f32[2]\n  output y = w\n}\n")?;
/// let err = model.compile(Weights::None, &Options::default()).unwrap_err();
/// let ErrorKind::Params(problems) = err.kind() else { panic!("{err}") };
/// assert_eq!(problems[0].param_name(), "w");
/// # Ok::<(), lamina::engine::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The model text does not parse or type-check; the diagnostics say where.
    #[error("the model does not load")]
    Load,
    #[error("{}", lines(.0))]
    Options(Vec<OptionError>),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{}", lines(.0))]
    Params(Vec<ParamError>),
    #[error("{}", lines(.0))]
    Inputs(Vec<BindError>),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("text fills an input named `input_ids`, but the model's inputs are: {inputs}")]
    NoTextInput { inputs: String },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Interp(#[from] InterpError),
    /// Gradients cannot be taken (an op without a derivative rule, ...).
    #[error("{}", lines(.0))]
    Grad(Vec<crate::autodiff::GradError>),
    #[error(transparent)]
    Train(#[from] super::train::TrainError),
    #[error(transparent)]
    Saliency(#[from] super::saliency::SaliencyError),
}

fn lines<E: std::fmt::Display>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An engine failure: its [`ErrorKind`], and diagnostics that point into the
/// model source where the fault has a place there (a parameter's declaration,
/// the node that failed at run time).
///
/// `Display` is the rendered diagnostics, `PATH:LINE:COL: error: ...` with the
/// source line and a caret.
///
/// ```
/// use lamina::engine::{ErrorKind, Model};
///
/// let err = Model::from_source("bad.lam", "model m {\n  output y = foo(1)\n}\n").unwrap_err();
/// assert!(matches!(err.kind(), ErrorKind::Load));
/// assert!(err.to_string().starts_with("bad.lam:2:"), "{err}");
/// ```
#[derive(Debug)]
pub struct Error(Box<Inner>);

/// Boxed, so that a `Result<_, Error>` stays one pointer wide on the error side.
#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    diagnostics: Vec<Diagnostic>,
    file: Option<SourceFile>,
}

impl Error {
    /// An error whose diagnostics are derived from `kind`, located in
    /// `graph`'s source where `kind` names a node or parameter.
    pub(crate) fn new(kind: ErrorKind, graph: Option<&Graph>, file: Option<&SourceFile>) -> Error {
        let diagnostics = diagnostics_of(&kind, graph);
        // Faults outside the model (a weight file, an input) are not
        // prefixed with the model's path.
        let located = diagnostics.iter().any(|d| d.span.is_some());
        Error(Box::new(Inner {
            kind,
            diagnostics,
            file: file.filter(|_| located).cloned(),
        }))
    }

    pub(crate) fn load(diagnostics: Vec<Diagnostic>, file: SourceFile) -> Error {
        Error(Box::new(Inner {
            kind: ErrorKind::Load,
            diagnostics,
            file: Some(file),
        }))
    }

    /// What went wrong.
    ///
    /// ```
    /// use lamina::engine::{ErrorKind, Model, Options, Weights};
    ///
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[n]\n  output y = x\n}\n")?;
    /// let options = Options { threads: 0, ..Options::default() };
    /// let err = model.compile(Weights::None, &options).unwrap_err();
    /// assert!(matches!(err.kind(), ErrorKind::Options(_)));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// One diagnostic per independent problem, in the order found.
    ///
    /// ```
    /// use lamina::engine::{Model, Options, Weights};
    ///
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[n]\n  output y = x\n}\n")?;
    /// let options = Options { threads: 0, bind: vec![("m".into(), 2)], ..Options::default() };
    /// let err = model.compile(Weights::None, &options).unwrap_err();
    /// assert_eq!(err.diagnostics().len(), 2);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.0.diagnostics
    }

    /// The model source the diagnostics point into, when they do.
    ///
    /// ```
    /// use lamina::engine::Model;
    ///
    /// let err = Model::from_source("bad.lam", "model m {").unwrap_err();
    /// assert_eq!(err.file().unwrap().path, "bad.lam");
    /// ```
    pub fn file(&self) -> Option<&SourceFile> {
        self.0.file.as_ref()
    }

    /// The diagnostics as text, each ending in a newline.
    ///
    /// ```
    /// use lamina::engine::Model;
    ///
    /// let err = Model::from_source("bad.lam", "model m {\n  output y = foo(1)\n}\n").unwrap_err();
    /// assert!(err.render().contains("^^^"));
    /// ```
    pub fn render(&self) -> String {
        render_all(&self.0.diagnostics, self.0.file.as_ref())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0.kind)
    }
}

/// One diagnostic per independent problem in `kind`, at the source span of
/// the node or parameter it is about.
fn diagnostics_of(kind: &ErrorKind, graph: Option<&Graph>) -> Vec<Diagnostic> {
    let plain = |e: &dyn std::fmt::Display| Diagnostic::error(e.to_string());
    match kind {
        ErrorKind::Load => Vec::new(),
        ErrorKind::Options(errors) => errors.iter().map(|e| plain(e)).collect(),
        ErrorKind::Params(errors) => errors
            .iter()
            .map(|e| plain(e).at(graph.and_then(|g| param_span(g, e.param_name()))))
            .collect(),
        // A shape that fails at a node once the inputs fix the symbols is
        // located at that node.
        ErrorKind::Inputs(errors) => errors.iter().map(|e| plain(e).at(e.span())).collect(),
        ErrorKind::Compile(CompileError::Exec(e)) | ErrorKind::Exec(e) => {
            exec_diagnostics(e, graph)
        }
        ErrorKind::Interp(
            e @ (InterpError::MissingParam { name, .. } | InterpError::ParamType { name, .. }),
        ) => {
            vec![plain(e).at(graph.and_then(|g| param_span(g, name)))]
        }
        ErrorKind::Interp(e) => e.diagnostics(),
        ErrorKind::Grad(errors) => errors.iter().map(|e| e.diagnostic()).collect(),
        ErrorKind::Train(e) => e.to_string().lines().map(Diagnostic::error).collect(),
        other => vec![plain(other)],
    }
}

fn exec_diagnostics(e: &ExecError, graph: Option<&Graph>) -> Vec<Diagnostic> {
    match e {
        ExecError::MissingParam(name) | ExecError::ParamType { name, .. } => {
            vec![Diagnostic::error(e.to_string()).at(graph.and_then(|g| param_span(g, name)))]
        }
        other => other.diagnostics(),
    }
}

/// Where parameter `name` is declared.
fn param_span(graph: &Graph, name: &str) -> Option<crate::span::Span> {
    graph
        .params()
        .into_iter()
        .find(|(param, _)| param == name)
        .and_then(|(_, id)| graph.node(id).span)
}
