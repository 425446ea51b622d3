//! The engine: the whole path from model text to outputs behind two types.
//!
//! [`Model`] is a checked model (parsed, lowered, type-checked), from a file
//! or a string. [`Model::compile`] binds its parameters to [`Weights`] and
//! compiles it with [`Options`] into a [`Session`], which runs on named
//! tensors (or text, through a tokenizer) as often as wanted, from as many
//! threads as wanted: a `Session` is `Send + Sync`.
//!
//! ```
//! use std::collections::HashMap;
//! use lamina::engine::{Model, Options, Weights};
//! use lamina::tensor::Tensor;
//!
//! let model = Model::from_source(
//!     "double.lam",
//!     "model double {\n  input x: f32[n]\n  output y = x * 2.0\n}\n",
//! )?;
//! let session = model.compile(Weights::None, &Options::default())?;
//! let inputs = HashMap::from([("x".to_string(), Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]))]);
//! let outputs = session.run(&inputs)?;
//! assert_eq!(outputs[0].0, "y");
//! assert_eq!(outputs[0].1.as_f32(), Some(&[2.0, 4.0, 6.0][..]));
//! # Ok::<(), lamina::engine::Error>(())
//! ```
//!
//! Every failure is an [`Error`]: typed ([`ErrorKind`]), and rendered as
//! diagnostics that point into the model source, run-time ones included.

pub mod analyze;
mod error;
pub mod saliency;
pub mod train;
pub mod train_log;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use error::{Error, ErrorKind, OptionError};

use crate::diagnostics::SourceFile;
use crate::interp::InterpError;
use crate::ir::bind::{bind_inputs, symbols};
use crate::ir::image_input::ImageInput;
use crate::ir::lower_error::edit_distance;
use crate::ir::{Bindings, DType, Graph, TensorType};
use crate::model::LoadedModel;
use crate::runtime::budget::MemoryBudget;
use crate::runtime::exec::{CompileOptions, CompiledModel, ExecError};
use crate::runtime::image::ImageError;
use crate::runtime::params::{
    bind_params_owned_within, bind_params_within, check_params, ParamError,
};
use crate::runtime::text::BatchTokenizer;
use crate::runtime::weights::WeightFile;
use crate::tensor::Tensor;

/// Which executor runs the model.
///
/// ```
/// use lamina::engine::{Backend, Options};
///
/// assert_eq!(Options::default().backend, Backend::Jit);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The optimised graph, native kernels JIT-compiled with Cranelift.
    #[default]
    Jit,
    /// The reference interpreter: plain, obviously correct, slow.
    Interp,
}

impl Backend {
    /// The backend's name as the CLI spells it.
    ///
    /// ```
    /// assert_eq!(lamina::engine::Backend::Interp.name(), "interp");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Interp => "interp",
        }
    }
}

/// How to compile a model. Settings that later work adds (an ISA tier, a
/// memory budget) are fields here, so every caller passes them the same way.
///
/// ```
/// use lamina::engine::{Backend, Options};
///
/// let options = Options { backend: Backend::Interp, bind: vec![("batch".into(), 4)], ..Options::default() };
/// assert!(options.threads >= 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub backend: Backend,
    /// Worker threads for the JIT kernels (results do not depend on the count).
    pub threads: usize,
    /// Symbol values fixed before any input is seen, in the order given:
    /// needed when a parameter's initializer has a symbolic shape no weight
    /// or input fixes.
    pub bind: Vec<(String, usize)>,
    /// Most bytes the model may hold at once (parameters, intermediate
    /// values); `None` is three quarters of the RAM the process may use (physical RAM or its cgroup limit). A model that needs
    /// more is an error naming its largest tensors, not an abort.
    pub max_memory: Option<usize>,
    /// The JIT's kernel tier (`None`: `LAMINA_ISA` when set, else the best
    /// the CPU runs); a tier above the CPU's fails at compile time.
    pub isa: Option<crate::codegen::Isa>,
}

impl Default for Options {
    /// The JIT backend on all cores, nothing bound.
    fn default() -> Options {
        Options {
            backend: Backend::Jit,
            threads: all_cores(),
            bind: Vec::new(),
            max_memory: None,
            isa: None,
        }
    }
}

impl Options {
    /// The memory budget these options set.
    fn budget(&self) -> MemoryBudget {
        self.max_memory.map(MemoryBudget::new).unwrap_or_default()
    }
}

impl Options {
    /// Problems with the options whatever the model: no threads.
    ///
    /// ```
    /// use lamina::engine::{OptionError, Options};
    ///
    /// let options = Options { threads: 0, ..Options::default() };
    /// assert_eq!(options.check(), [OptionError::NoThreads]);
    /// ```
    pub fn check(&self) -> Vec<OptionError> {
        if self.threads == 0 {
            vec![OptionError::NoThreads]
        } else {
            Vec::new()
        }
    }
}

/// The number of cores this process may use (at least 1).
///
/// ```
/// assert!(lamina::engine::all_cores() >= 1);
/// ```
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where parameter values come from.
///
/// ```
/// use std::collections::HashMap;
/// use lamina::engine::{Model, Options, Weights};
/// use lamina::tensor::Tensor;
///
/// let model = Model::from_source("m.lam", "model m {\n  param w: f32[2]\n  output y = w\n}\n")?;
/// let w = HashMap::from([("w".to_string(), Tensor::f32(vec![2], vec![0.5, 1.5]))]);
/// let session = model.compile(Weights::Tensors(w), &Options::default())?;
/// assert_eq!(session.run(&HashMap::new())?[0].1.as_f32(), Some(&[0.5, 1.5][..]));
/// # Ok::<(), lamina::engine::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub enum Weights {
    /// The file the model names with `weights "..."` (relative to the model's
    /// folder), else `<model-stem>.safetensors` beside the model when it
    /// exists, else none ([`Model::conventional_weights`]).
    #[default]
    Conventional,
    /// A safetensors file.
    File(PathBuf),
    /// A safetensors image in memory; `name` is used in messages.
    Bytes { name: String, bytes: Vec<u8> },
    /// Tensors by parameter name.
    Tensors(HashMap<String, Tensor>),
    /// No weights: every parameter needs an initializer.
    None,
}

/// A model that parsed, lowered and type-checked.
///
/// ```
/// use lamina::engine::Model;
///
/// let model = Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = relu(x)\n}\n")?;
/// assert_eq!(model.input_names(), ["x"]);
/// assert_eq!(model.output_names(), ["y"]);
/// # Ok::<(), lamina::engine::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Model {
    loaded: LoadedModel,
}

impl Model {
    /// Reads and checks a `.lam` file.
    ///
    /// ```
    /// let model = lamina::engine::Model::load(concat!(env!("CARGO_MANIFEST_DIR"), "/models/bench/mlp.lam"))?;
    /// assert_eq!(model.input_names(), ["x"]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Model, Error> {
        crate::model::load(path.as_ref())
            .map(|loaded| Model { loaded })
            .map_err(|f| Error::load(f.diagnostics, f.source))
    }

    /// Checks model text already in memory; `path` names it in messages and
    /// is where conventional files (weights, tokenizer) are looked for.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// assert_eq!(model.path(), std::path::Path::new("m.lam"));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn from_source(path: impl AsRef<Path>, text: impl Into<String>) -> Result<Model, Error> {
        crate::model::load_source(path.as_ref(), text.into())
            .map(|loaded| Model { loaded })
            .map_err(|f| Error::load(f.diagnostics, f.source))
    }

    /// The model's graph, as lowered (not optimised).
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// assert_eq!(model.graph().name, "m");
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn graph(&self) -> &Graph {
        &self.loaded.graph
    }

    /// The path the model was loaded from (or named by).
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("dir/m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// assert_eq!(model.path().parent(), Some(std::path::Path::new("dir")));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.loaded.path
    }

    /// The model text, for rendering diagnostics against it.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// assert!(model.source().text.as_deref().unwrap().starts_with("model m"));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn source(&self) -> &SourceFile {
        &self.loaded.source
    }

    /// Input names in declaration order.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input b: f32[2]\n  input a: f32[2]\n  output y = a + b\n}\n")?;
    /// assert_eq!(model.input_names(), ["b", "a"]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn input_names(&self) -> Vec<&str> {
        self.graph().input_names()
    }

    /// Output names in declaration order.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n  output z = -x\n}\n")?;
    /// assert_eq!(model.output_names(), ["y", "z"]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn output_names(&self) -> Vec<&str> {
        self.graph()
            .outputs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The inputs declared `= image(...)`: how photos become those inputs.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source(
    ///     "m.lam",
    ///     "model m {\n  input x: f32[n, 3, 8, 8] = image(crop=0.5, mean=127.0, std=128.0)\n  output y = x\n}\n",
    /// )?;
    /// assert_eq!(model.image_inputs()[0].input, "x");
    /// assert_eq!(model.image_inputs()[0].crop, 0.5);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn image_inputs(&self) -> &[ImageInput] {
        &self.loaded.image_inputs
    }

    /// Inputs in declaration order, with their declared element type and
    /// shape (symbolic dims as declared: `batch`, `12*seq`), for callers
    /// that build inputs without reading the model text.
    ///
    /// ```
    /// use lamina::ir::DType;
    ///
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input ids: i64[batch, 8]\n  output y = ids\n}\n")?;
    /// let [(name, ty)] = model.input_types()[..] else { panic!("one input") };
    /// assert_eq!((name, ty.dtype), ("ids", DType::I64));
    /// assert_eq!(ty.shape[0].to_string(), "batch");
    /// assert_eq!(ty.shape[1].as_known(), Some(8));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn input_types(&self) -> Vec<(&str, &TensorType)> {
        let graph = self.graph();
        graph
            .inputs
            .iter()
            .map(|&id| (graph.input_name(id), &graph.node(id).ty))
            .collect()
    }

    /// Outputs in declaration order, with their element type and shape in
    /// terms of the model's symbols.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input x: f32[n, 4]\n  output s = sum(x, axis=1)\n}\n")?;
    /// let [(name, ty)] = model.output_types()[..] else { panic!("one output") };
    /// assert_eq!(format!("{name}: {ty}"), "s: f32[n]");
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn output_types(&self) -> Vec<(&str, &TensorType)> {
        let graph = self.graph();
        graph
            .outputs
            .iter()
            .map(|(name, id)| (name.as_str(), &graph.node(*id).ty))
            .collect()
    }

    /// A path relative to the model file's folder.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("dir/m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// assert_eq!(model.beside("x.npy"), std::path::Path::new("dir/x.npy"));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn beside(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path().parent().unwrap_or(Path::new(".")).join(name)
    }

    /// The weight file [`Weights::Conventional`] stands for: the model's
    /// `weights "..."`, else `<stem>.safetensors` beside it when that exists.
    ///
    /// ```
    /// let model = lamina::engine::Model::from_source("dir/m.lam", "weights \"w.safetensors\"\nmodel m {\n  param p: f32[2]\n  output y = p\n}\n")?;
    /// assert_eq!(model.conventional_weights(), Some("dir/w.safetensors".into()));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn conventional_weights(&self) -> Option<PathBuf> {
        if let Some((file, _)) = &self.loaded.weights {
            return Some(self.beside(file));
        }
        let stem = self.path().file_stem()?.to_string_lossy();
        let conventional = self.beside(format!("{stem}.safetensors"));
        conventional.exists().then_some(conventional)
    }

    /// Every problem with `options` for this model, all at once: those of
    /// [`Options::check`] and of [`Model::check_bindings`].
    ///
    /// ```
    /// use lamina::engine::{Model, Options};
    ///
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[batch]\n  output y = x\n}\n")?;
    /// let options = Options { threads: 0, bind: vec![("bacth".into(), 4)], ..Options::default() };
    /// assert_eq!(model.check_options(&options).len(), 2);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn check_options(&self, options: &Options) -> Vec<OptionError> {
        let mut problems = options.check();
        problems.extend(self.check_bindings(&options.bind));
        problems
    }

    /// Every problem with symbol values given up front: a symbol the model
    /// does not have (with the closest one it has), a symbol given two values.
    ///
    /// ```
    /// use lamina::engine::{Model, OptionError};
    ///
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[batch]\n  output y = x\n}\n")?;
    /// let problems = model.check_bindings(&[("bacth".into(), 4)]);
    /// assert!(matches!(&problems[..], [OptionError::UnknownSymbol { suggestion: Some(s), .. }] if s == "batch"));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn check_bindings(&self, bind: &[(String, usize)]) -> Vec<OptionError> {
        check_bindings(self.graph(), bind)
    }

    /// Binds the parameters to `weights` and compiles the model.
    ///
    /// Parameters come from the weights by name, else from their
    /// initializers; every problem is reported at once, at the parameter's
    /// declaration. A parameter whose initializer has a shape only the
    /// inputs fix is bound (and the model compiled) per such shape, on first
    /// sight.
    ///
    /// ```
    /// use lamina::engine::{Model, Options, Weights};
    ///
    /// let model = Model::from_source("m.lam", "model m {\n  param w: f32[3]\n  output y = w\n}\n")?;
    /// let err = model.compile(Weights::None, &Options::default()).unwrap_err();
    /// assert!(err.to_string().starts_with("m.lam:2:"), "{err}");
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn compile(self, weights: Weights, options: &Options) -> Result<Session, Error> {
        let fail = |kind| Error::new(kind, Some(self.graph()), Some(self.source()));
        let problems = self.check_options(options);
        if !problems.is_empty() {
            return Err(fail(ErrorKind::Options(problems)));
        }
        let fixed: Bindings = options.bind.iter().cloned().collect();
        let weights = self.weight_file(weights)?;
        let weights_path = weights.as_ref().map(|w| w.path.clone());
        let input_symbols = input_symbols(self.graph());
        let budget = options.budget();
        let prepared = match check_params(self.graph(), weights.as_ref(), &fixed, &budget) {
            Ok(unused) => {
                let bound = bind_params_owned_within(self.graph(), weights, &fixed, &budget)
                    .map_err(|e| fail(ErrorKind::Params(e)))?;
                let runner = Runner::new(&self, bound.values, options)?;
                (Prepared::Ready(Arc::new(runner)), unused)
            }
            Err(errors) => {
                let only_input_symbols = errors.iter().all(|e| {
                    matches!(e, ParamError::Unbound { symbol, .. } if input_symbols.contains(symbol))
                });
                if !only_input_symbols {
                    return Err(fail(ErrorKind::Params(errors)));
                }
                let mut waiting: Vec<String> = errors
                    .iter()
                    .filter_map(|e| match e {
                        ParamError::Unbound { symbol, .. } => Some(symbol.clone()),
                        _ => None,
                    })
                    .collect();
                waiting.sort();
                waiting.dedup();
                (
                    Prepared::PerShape {
                        weights,
                        symbols: waiting,
                        compiled: Mutex::new(Vec::new()),
                    },
                    Vec::new(),
                )
            }
        };
        let (prepared, unused_weights) = prepared;
        Ok(Session {
            model: self,
            options: options.clone(),
            fixed,
            weights_path,
            unused_weights,
            prepared,
        })
    }
}

impl Model {
    /// The weight file `weights` stands for, read.
    fn weight_file(&self, weights: Weights) -> Result<Option<WeightFile>, Error> {
        let fail = |kind| Error::new(kind, Some(self.graph()), Some(self.source()));
        Ok(match weights {
            Weights::Conventional => match self.conventional_weights() {
                Some(path) => Some(WeightFile::load(path).map_err(|e| fail(e.into()))?),
                None => None,
            },
            Weights::File(path) => Some(WeightFile::load(path).map_err(|e| fail(e.into()))?),
            Weights::Bytes { name, bytes } => {
                Some(WeightFile::from_bytes(name, &bytes).map_err(|e| fail(e.into()))?)
            }
            Weights::Tensors(tensors) => Some(WeightFile {
                path: PathBuf::from("<tensors>"),
                tensors: tensors.into_iter().collect(),
                unreadable: Default::default(),
            }),
            Weights::None => None,
        })
    }

    /// Every parameter's value, from `weights` or its initializer, in
    /// declaration order; every problem is reported at once, at the
    /// parameter's declaration.
    ///
    /// ```
    /// use lamina::engine::{Model, Options, Weights};
    ///
    /// let model = Model::from_source("m.lam", "model m {\n  param w: f32[2, 3] = ones\n  output y = w\n}\n")?;
    /// let params = model.parameters(Weights::None, &Options::default())?;
    /// assert_eq!(params[0].0, "w");
    /// assert_eq!(params[0].1.shape(), [2, 3]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn parameters(
        &self,
        weights: Weights,
        options: &Options,
    ) -> Result<Vec<(String, Tensor)>, Error> {
        let fail = |kind| Error::new(kind, Some(self.graph()), Some(self.source()));
        let problems = self.check_options(options);
        if !problems.is_empty() {
            return Err(fail(ErrorKind::Options(problems)));
        }
        let fixed: Bindings = options.bind.iter().cloned().collect();
        let weights = self.weight_file(weights)?;
        let mut bound = bind_params_owned_within(self.graph(), weights, &fixed, &options.budget())
            .map_err(|e| fail(ErrorKind::Params(e)))?;
        Ok(self
            .graph()
            .params()
            .into_iter()
            .filter_map(|(name, _)| bound.values.remove(&name).map(|t| (name, t)))
            .collect())
    }
}

/// [`Model::check_bindings`] for a graph: every symbol value given up front
/// that the graph has no symbol for, or that contradicts an earlier one.
///
/// ```
/// let model = lamina::engine::Model::from_source("m.lam", "model m {\n  input x: f32[n]\n  output y = x\n}\n")?;
/// let problems = lamina::engine::check_bindings(model.graph(), &[("n".into(), 2), ("n".into(), 3)]);
/// assert_eq!(problems.len(), 1);
/// # Ok::<(), lamina::engine::Error>(())
/// ```
pub fn check_bindings(graph: &Graph, bind: &[(String, usize)]) -> Vec<OptionError> {
    let mut problems = Vec::new();
    let known = symbols(graph);
    let mut bound: BTreeMap<&str, usize> = BTreeMap::new();
    for (symbol, value) in bind {
        if !known.contains(symbol) && !bound.contains_key(symbol.as_str()) {
            problems.push(OptionError::UnknownSymbol {
                symbol: symbol.clone(),
                suggestion: closest(symbol, &known),
                known: known.clone(),
            });
        }
        match bound.insert(symbol, *value) {
            Some(first) if first != *value => problems.push(OptionError::ConflictingBind {
                symbol: symbol.clone(),
                first,
                second: *value,
            }),
            _ => {}
        }
    }
    problems
}

/// The closest of `known` to `name`, when it is close enough to be a typo
/// (two swapped letters cost two edits: `bacth` is still `batch`).
fn closest(name: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= (name.len().max(k.len()) * 2 / 5).max(1))
        .min()
        .map(|(_, k)| k.clone())
}

/// Symbols that some input's declared shape mentions.
fn input_symbols(graph: &Graph) -> Vec<String> {
    let mut found: Vec<String> = graph
        .inputs
        .iter()
        .flat_map(|&id| graph.node(id).ty.shape.iter())
        .flat_map(|d| d.symbols().iter().cloned())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A compiled model, ready to run.
enum Runner {
    Jit(Box<CompiledModel>),
    Interp(HashMap<String, Tensor>),
}

impl Runner {
    fn new(
        model: &Model,
        params: HashMap<String, Tensor>,
        options: &Options,
    ) -> Result<Runner, Error> {
        match options.backend {
            Backend::Interp => Ok(Runner::Interp(params)),
            Backend::Jit => {
                let compile_options = CompileOptions {
                    threads: options.threads,
                    isa: options.isa,
                };
                let (mut compiled, _) =
                    crate::compile::compile_owned(model.graph(), params, compile_options).map_err(
                        |e| Error::new(e.into(), Some(model.graph()), Some(model.source())),
                    )?;
                compiled.set_memory_budget(options.budget());
                Ok(Runner::Jit(Box::new(compiled)))
            }
        }
    }
}

enum Prepared {
    Ready(Arc<Runner>),
    /// Some initializers have shapes only the inputs fix: parameters are
    /// bound and the model compiled per value of those symbols.
    PerShape {
        weights: Option<WeightFile>,
        symbols: Vec<String>,
        compiled: Mutex<Vec<(Vec<usize>, Arc<Runner>)>>,
    },
}

/// The inputs a tokenizer fills, BERT-style.
const TEXT_INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// A compiled model with its parameters, ready to run on named inputs.
/// `Send + Sync`: share it (`Arc<Session>` or `&Session` across scoped
/// threads) and run from many threads at once.
///
/// ```
/// use std::collections::HashMap;
/// use lamina::engine::{Model, Options, Weights};
/// use lamina::tensor::Tensor;
///
/// let model = Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = relu(x)\n}\n")?;
/// let session = model.compile(Weights::None, &Options::default())?;
/// std::thread::scope(|s| {
///     for _ in 0..2 {
///         s.spawn(|| {
///             let x = HashMap::from([("x".to_string(), Tensor::f32(vec![2], vec![-1.0, 1.0]))]);
///             assert_eq!(session.run(&x).unwrap()[0].1.as_f32(), Some(&[0.0, 1.0][..]));
///         });
///     }
/// });
/// # Ok::<(), lamina::engine::Error>(())
/// ```
pub struct Session {
    model: Model,
    options: Options,
    fixed: Bindings,
    weights_path: Option<PathBuf>,
    unused_weights: Vec<String>,
    prepared: Prepared,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model.path())
            .field("options", &self.options)
            .field("weights", &self.weights_path)
            .finish_non_exhaustive()
    }
}

// A session is shared across threads by design; keep it so.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Session>()
};

impl Session {
    /// The model this session runs.
    ///
    /// ```
    /// # use lamina::engine::{Model, Options, Weights};
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// let session = model.compile(Weights::None, &Options::default())?;
    /// assert_eq!(session.model().input_names(), ["x"]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The options the session was compiled with.
    ///
    /// ```
    /// # use lamina::engine::{Backend, Model, Options, Weights};
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// let options = Options { backend: Backend::Interp, ..Options::default() };
    /// let session = model.compile(Weights::None, &options)?;
    /// assert_eq!(session.options().backend, Backend::Interp);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The weight file the parameters came from, if any.
    ///
    /// ```
    /// # use lamina::engine::{Model, Options, Weights};
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// let session = model.compile(Weights::None, &Options::default())?;
    /// assert_eq!(session.weights_path(), None);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn weights_path(&self) -> Option<&Path> {
        self.weights_path.as_deref()
    }

    /// Tensors of the weight file that no parameter uses, sorted.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use lamina::engine::{Model, Options, Weights};
    /// # use lamina::tensor::Tensor;
    /// let model = Model::from_source("m.lam", "model m {\n  param w: f32[1]\n  output y = w\n}\n")?;
    /// let tensors = HashMap::from([
    ///     ("w".to_string(), Tensor::f32(vec![1], vec![1.0])),
    ///     ("extra".to_string(), Tensor::f32(vec![1], vec![2.0])),
    /// ]);
    /// let session = model.compile(Weights::Tensors(tensors), &Options::default())?;
    /// assert_eq!(session.unused_weights(), ["extra"]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn unused_weights(&self) -> &[String] {
        &self.unused_weights
    }

    /// Runs on inputs by name; returns the outputs, by name, in declaration
    /// order. Every missing, unknown or ill-fitting input is reported at once
    /// ([`ErrorKind::Inputs`], on either backend); a failure while running
    /// names the node and its line in the model.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use lamina::engine::{Model, Options, Weights};
    /// # use lamina::tensor::Tensor;
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[2]\n  output y = x\n}\n")?;
    /// let session = model.compile(Weights::None, &Options::default())?;
    /// let wrong = HashMap::from([("z".to_string(), Tensor::f32(vec![2], vec![0.0; 2]))]);
    /// let err = session.run(&wrong).unwrap_err();
    /// assert!(matches!(err.kind(), lamina::engine::ErrorKind::Inputs(_)));
    /// assert_eq!(err.diagnostics().len(), 2, "{err}"); // x missing, z unknown
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        let runner = self.runner_for(inputs)?;
        let graph = self.model.graph();
        let located = |kind| Error::new(kind, Some(graph), Some(self.model.source()));
        // Inputs that do not fit are the caller's fault whichever backend
        // finds it: one kind for both.
        match runner.as_ref() {
            Runner::Jit(compiled) => compiled.run_named(inputs, &self.fixed).map_err(|e| {
                located(match e {
                    ExecError::Bind(errors) => ErrorKind::Inputs(errors),
                    other => other.into(),
                })
            }),
            Runner::Interp(params) => crate::interp::run_within(
                graph,
                params,
                inputs,
                &self.fixed,
                &self.options.budget(),
            )
            .map_err(|e| {
                located(match e {
                    InterpError::Bind(errors) => ErrorKind::Inputs(errors),
                    other => other.into(),
                })
            }),
        }
    }

    /// The Cranelift IR of the JIT kernels for these inputs (compiling them
    /// if needed); `None` on the interpreter.
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use lamina::engine::{Model, Options, Weights};
    /// # use lamina::tensor::Tensor;
    /// let model = Model::from_source("m.lam", "model m {\n  input x: f32[4]\n  output y = exp(x) + 1.0\n}\n")?;
    /// let session = model.compile(Weights::None, &Options::default())?;
    /// let x = HashMap::from([("x".to_string(), Tensor::f32(vec![4], vec![0.0; 4]))]);
    /// assert!(session.kernel_ir(&x)?.unwrap().contains("function"));
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn kernel_ir(&self, inputs: &HashMap<String, Tensor>) -> Result<Option<String>, Error> {
        Ok(self.plan_info(inputs)?.map(|info| info.clif()))
    }

    /// The Intel-syntax listing of every kernel assembled for these inputs'
    /// shapes (the AVX2 / AVX-512 tiers' GEMM micro-kernels and
    /// epilogues; `lamina run --dump-asm`); `None` on the interpreter
    /// backend, empty on the baseline tier.
    pub fn kernel_asm(&self, inputs: &HashMap<String, Tensor>) -> Result<Option<String>, Error> {
        Ok(self.plan_info(inputs)?.map(|info| info.asm()))
    }

    /// The JIT plan for these inputs' shapes (`None` on the interpreter).
    fn plan_info(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Option<crate::runtime::exec::PlanInfo>, Error> {
        let runner = self.runner_for(inputs)?;
        let Runner::Jit(compiled) = runner.as_ref() else {
            return Ok(None);
        };
        let fail = |kind| Error::new(kind, Some(self.model.graph()), Some(self.model.source()));
        let ordered = compiled
            .ordered_inputs(inputs)
            .map_err(|e| fail(e.into()))?;
        let info = compiled
            .prepare(&ordered, &self.fixed)
            .map_err(|e| fail(e.into()))?;
        Ok(Some(info))
    }

    /// Loads a Hugging Face `tokenizer.json` for [`Session::text_inputs`]:
    /// `path`, else `tokenizer.json` beside the model, else beside the weight
    /// file. Texts are truncated to `max_tokens` tokens.
    ///
    /// ```
    /// # use lamina::engine::{Model, Options, Weights};
    /// let model = Model::from_source("m.lam", "model m {\n  input input_ids: i64[b, s]\n  output y = input_ids\n}\n")?;
    /// let session = model.compile(Weights::None, &Options::default())?;
    /// let err = session.tokenizer(None, 128).err().expect("no tokenizer.json beside m.lam");
    /// assert!(err.to_string().contains("tokenizer.json"), "{err}");
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn tokenizer(
        &self,
        path: Option<&Path>,
        max_tokens: usize,
    ) -> Result<BatchTokenizer, Error> {
        let fail = |kind| Error::new(kind, None, None);
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let mut candidates = vec![self.model.beside("tokenizer.json")];
                if let Some(w) = &self.weights_path {
                    candidates.push(w.parent().unwrap_or(Path::new(".")).join("tokenizer.json"));
                }
                match candidates.iter().find(|p| p.exists()) {
                    Some(found) => found.clone(),
                    None => {
                        let looked: Vec<String> =
                            candidates.iter().map(|p| p.display().to_string()).collect();
                        return Err(fail(ErrorKind::Text(
                            crate::runtime::text::TextError::NoTokenizer {
                                looked: looked.join(", "),
                            },
                        )));
                    }
                }
            }
        };
        BatchTokenizer::from_file(&path, max_tokens).map_err(|e| fail(e.into()))
    }

    /// The model inputs `texts` fill through `tokenizer`: `input_ids`, and
    /// `attention_mask` and `token_type_ids` when the model declares them,
    /// padded to the longest text.
    ///
    /// ```no_run
    /// # use lamina::engine::{Model, Options, Weights};
    /// let session = Model::load("models/minilm/minilm.lam")?.compile(Weights::Conventional, &Options::default())?;
    /// let tokenizer = session.tokenizer(None, 128)?;
    /// let inputs = session.text_inputs(&tokenizer, &["a sentence".to_string()])?;
    /// let embedding = &session.run(&inputs)?[0].1;
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn text_inputs(
        &self,
        tokenizer: &BatchTokenizer,
        texts: &[String],
    ) -> Result<HashMap<String, Tensor>, Error> {
        let fail = |kind| Error::new(kind, None, None);
        let declared = self.model.input_names();
        if !declared.contains(&"input_ids") {
            return Err(fail(ErrorKind::NoTextInput {
                inputs: declared.join(", "),
            }));
        }
        let encoded = tokenizer.encode(texts).map_err(|e| fail(e.into()))?;
        let [ids, mask, types] = TEXT_INPUTS;
        Ok([
            (ids, encoded.input_ids),
            (mask, encoded.attention_mask),
            (types, encoded.token_type_ids),
        ]
        .into_iter()
        .filter(|(name, _)| declared.contains(name))
        .map(|(name, t)| (name.to_string(), t))
        .collect())
    }

    /// The inputs [`Session::text_inputs`] fills that this model declares.
    ///
    /// ```
    /// # use lamina::engine::{Model, Options, Weights};
    /// let model = Model::from_source("m.lam", "model m {\n  input input_ids: i64[b, s]\n  input attention_mask: i64[b, s]\n  output y = cast(input_ids, f32) + cast(attention_mask, f32)\n}\n")?;
    /// let session = model.compile(Weights::None, &Options::default())?;
    /// assert_eq!(session.text_input_names(), ["input_ids", "attention_mask"]);
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn text_input_names(&self) -> Vec<&'static str> {
        let declared = self.model.input_names();
        TEXT_INPUTS
            .into_iter()
            .filter(|name| declared.contains(name))
            .collect()
    }

    /// The model input photos fill, decoded (JPEG or PNG) and preprocessed as
    /// the input's `= image(...)` declares, one photo per batch row.
    ///
    /// ```no_run
    /// # use lamina::engine::{Model, Options, Weights};
    /// let session = Model::load("models/efficientnet_lite0/efficientnet_lite0.lam")?
    ///     .compile(Weights::Conventional, &Options::default())?;
    /// let inputs = session.image_inputs(&["cat.jpg".into(), "cup.png".into()])?;
    /// let probs = &session.run(&inputs)?[0].1; // [2, 1000]
    /// # Ok::<(), lamina::engine::Error>(())
    /// ```
    pub fn image_inputs(&self, paths: &[PathBuf]) -> Result<HashMap<String, Tensor>, Error> {
        let fail = |kind| Error::new(kind, None, None);
        let spec = self.image_input().map_err(fail)?;
        let tensor = crate::runtime::image::load_images(spec, paths).map_err(|e| fail(e.into()))?;
        Ok(HashMap::from([(spec.input.clone(), tensor)]))
    }

    /// The one input declared `= image(...)`.
    pub fn image_input(&self) -> Result<&ImageInput, ErrorKind> {
        match self.model.image_inputs() {
            [one] => Ok(one),
            [] => Err(ImageError::NoImageInput {
                inputs: self.model.input_names().join(", "),
            }
            .into()),
            several => Err(ImageError::SeveralImageInputs {
                count: several.len(),
                names: several
                    .iter()
                    .map(|i| i.input.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into()),
        }
    }

    /// The runner for these inputs: the one compiled up front, or the one
    /// for the values the inputs give the waiting symbols.
    fn runner_for(&self, inputs: &HashMap<String, Tensor>) -> Result<Arc<Runner>, Error> {
        let (weights, waiting, compiled) = match &self.prepared {
            Prepared::Ready(runner) => return Ok(runner.clone()),
            Prepared::PerShape {
                weights,
                symbols,
                compiled,
            } => (weights, symbols, compiled),
        };
        let graph = self.model.graph();
        let fail = |kind| Error::new(kind, Some(graph), Some(self.model.source()));
        let given: Vec<(String, DType, Vec<usize>)> = inputs
            .iter()
            .map(|(name, t)| (name.clone(), t.dtype(), t.shape().to_vec()))
            .collect();
        let bindings =
            bind_inputs(graph, &given, &self.fixed).map_err(|e| fail(ErrorKind::Inputs(e)))?;
        // bind_inputs binds every input symbol or fails.
        let key: Vec<usize> = waiting.iter().map(|s| bindings[s]).collect();
        let mut compiled = compiled.lock().expect("compiled runners lock");
        if let Some((_, runner)) = compiled.iter().find(|(k, _)| *k == key) {
            return Ok(runner.clone());
        }
        let bound = bind_params_within(graph, weights.as_ref(), &bindings, &self.options.budget())
            .map_err(|e| fail(ErrorKind::Params(e)))?;
        let runner = Arc::new(Runner::new(&self.model, bound.values, &self.options)?);
        compiled.push((key, runner.clone()));
        Ok(runner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        Model::from_source("t.lam", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn conflicting_and_unknown_binds_are_all_reported() {
        let m = model("model m {\n  input x: f32[batch, seq]\n  output y = x\n}\n");
        let options = Options {
            threads: 0,
            bind: vec![
                ("bacth".into(), 4),
                ("seq".into(), 4),
                ("seq".into(), 3),
                ("seq".into(), 4),
                ("zzzzzz".into(), 1),
            ],
            ..Options::default()
        };
        let problems = m.check_options(&options);
        assert_eq!(
            problems,
            [
                OptionError::NoThreads,
                OptionError::UnknownSymbol {
                    symbol: "bacth".into(),
                    suggestion: Some("batch".into()),
                    known: vec!["batch".into(), "seq".into()],
                },
                OptionError::ConflictingBind {
                    symbol: "seq".into(),
                    first: 4,
                    second: 3,
                },
                OptionError::ConflictingBind {
                    symbol: "seq".into(),
                    first: 3,
                    second: 4,
                },
                OptionError::UnknownSymbol {
                    symbol: "zzzzzz".into(),
                    suggestion: None,
                    known: vec!["batch".into(), "seq".into()],
                },
            ]
        );
    }

    #[test]
    fn seeded_parameter_sized_by_an_input_compiles_per_size() {
        let m = model(
            "model m {\n  input x: f32[n]\n  param b: f32[n] = ones\n  output y = x + b\n}\n",
        );
        for backend in [Backend::Jit, Backend::Interp] {
            let options = Options {
                backend,
                threads: 1,
                ..Options::default()
            };
            let session = m.clone().compile(Weights::None, &options).unwrap();
            for n in [2, 3, 2] {
                let x = HashMap::from([("x".to_string(), Tensor::f32(vec![n], vec![1.0; n]))]);
                let y = session.run(&x).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(y[0].1.as_f32().unwrap(), vec![2.0; n].as_slice());
            }
            let Prepared::PerShape { compiled, .. } = &session.prepared else {
                panic!("b waits for n")
            };
            assert_eq!(compiled.lock().unwrap().len(), 2, "one runner per n");
        }
    }

    #[test]
    fn inputs_that_do_not_fit_are_input_errors_on_both_backends() {
        let m = model("model m {\n  input x: f32[n, 2]\n  output y = x\n}\n");
        let cases = [
            HashMap::from([("z".to_string(), Tensor::f32(vec![1, 2], vec![0.0; 2]))]),
            HashMap::from([("x".to_string(), Tensor::f32(vec![1, 3], vec![0.0; 3]))]),
            HashMap::from([("x".to_string(), Tensor::i64(vec![1, 2], vec![0; 2]))]),
        ];
        for backend in [Backend::Jit, Backend::Interp] {
            let options = Options {
                backend,
                threads: 1,
                ..Options::default()
            };
            let session = m.clone().compile(Weights::None, &options).unwrap();
            for inputs in &cases {
                let err = session.run(inputs).unwrap_err();
                assert!(
                    matches!(err.kind(), ErrorKind::Inputs(_)),
                    "{backend:?}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn weights_from_bytes_and_from_a_missing_file() {
        let m = model("model m {\n  param w: f32[2]\n  output y = w\n}\n");
        let err = m
            .clone()
            .compile(
                Weights::File("does/not/exist.safetensors".into()),
                &Options::default(),
            )
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Weights(_)), "{err}");
        let err = m
            .compile(
                Weights::Bytes {
                    name: "mem".into(),
                    bytes: b"not safetensors".to_vec(),
                },
                &Options::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("`mem`"), "{err}");
    }
}
