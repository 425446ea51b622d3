//! The `lamina` Python module: load a `.lam` model, compile it once, run it
//! on numpy arrays from as many Python threads as wanted.
//!
//! A thin layer over `lamina::engine`: options and weights are translated,
//! the engine does the work with the GIL released, and its errors are raised
//! as `lamina.LaminaError` subclasses carrying the engine's rendered
//! diagnostics (`path:line:col: error: ...`, the source line, a caret).
//!
//! Copies: an input array is copied once into a lamina tensor (the engine's
//! tensors own their data; the JIT then reads that copy in place); an output
//! array takes over the buffer the engine produced, without a copy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lamina::codegen::Isa;
use lamina::engine::{self, Backend, ErrorKind, Options, Session, Weights};
use lamina::ir::{DType, TensorType};
use lamina::runtime::text::BatchTokenizer;
use lamina::tensor::{Tensor, TensorData};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    dtype, Element, IntoPyArray, PyArrayDescr, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMapping, PyString, PyTuple};

create_exception!(
    lamina,
    LaminaError,
    PyException,
    "Any lamina failure. `str(e)` is lamina's rendered diagnostics, as the CLI prints them."
);
create_exception!(
    lamina,
    ModelError,
    LaminaError,
    "The model text does not parse or type-check."
);
create_exception!(
    lamina,
    OptionsError,
    LaminaError,
    "A compile option does not fit (backend, threads, isa, max_memory, bind)."
);
create_exception!(
    lamina,
    WeightsError,
    LaminaError,
    "The weights cannot be read or do not fit the model's parameters."
);
create_exception!(
    lamina,
    InputError,
    LaminaError,
    "An input is missing, unknown, or of the wrong dtype or shape."
);
create_exception!(
    lamina,
    TextError,
    LaminaError,
    "Text cannot be tokenized: no tokenizer, or the model takes no `input_ids`."
);
create_exception!(
    lamina,
    CompileError,
    LaminaError,
    "The JIT could not compile the model (e.g. a kernel tier above the CPU's)."
);
create_exception!(
    lamina,
    RunError,
    LaminaError,
    "The model failed while running; the message names the node and its line."
);

/// The Python exception for an engine error, with its rendered message.
fn raise(err: engine::Error) -> PyErr {
    let message = err.to_string();
    match err.kind() {
        ErrorKind::Load => ModelError::new_err(message),
        ErrorKind::Options(_) => OptionsError::new_err(message),
        ErrorKind::Weights(_) | ErrorKind::Params(_) => WeightsError::new_err(message),
        ErrorKind::Inputs(_) => InputError::new_err(message),
        ErrorKind::Text(_) | ErrorKind::NoTextInput { .. } => TextError::new_err(message),
        ErrorKind::Compile(_) => CompileError::new_err(message),
        ErrorKind::Exec(_) | ErrorKind::Interp(_) => RunError::new_err(message),
        #[allow(unreachable_patterns)] // kinds added to the engine later
        _ => LaminaError::new_err(message),
    }
}

/// The numpy dtype lamina's `dtype` is stored as.
fn numpy_dtype<'py>(py: Python<'py>, dtype: DType) -> Option<Bound<'py, PyArrayDescr>> {
    match dtype {
        DType::F32 => Some(numpy::dtype::<f32>(py)),
        DType::I64 => Some(numpy::dtype::<i64>(py)),
        DType::I32 => Some(numpy::dtype::<i32>(py)),
        DType::Bool => Some(numpy::dtype::<bool>(py)),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Copies a numpy array of element type `T` into an owned row-major vector
/// (one copy, whatever the array's strides).
fn copy_elements<T: Element + Copy>(array: &Bound<'_, PyUntypedArray>) -> PyResult<Vec<T>> {
    let typed = array.cast::<PyArrayDyn<T>>()?.readonly();
    let view = typed.as_array();
    Ok(match view.as_slice() {
        Some(contiguous) => contiguous.to_vec(),
        None => view.iter().copied().collect(),
    })
}

/// A numpy array (or anything `numpy.asarray` takes, converted to the
/// declared dtype) as a lamina tensor. `what` names it in messages.
fn to_tensor(
    py: Python<'_>,
    what: &str,
    value: &Bound<'_, PyAny>,
    declared: Option<&TensorType>,
) -> PyResult<Tensor> {
    let array = match value.cast::<PyUntypedArray>() {
        Ok(array) => array.clone(),
        Err(_) => {
            let asarray = py.import("numpy")?.getattr("asarray")?;
            let kwargs = PyDict::new(py);
            if let Some(np_dtype) = declared.and_then(|ty| numpy_dtype(py, ty.dtype)) {
                kwargs.set_item("dtype", np_dtype)?;
            }
            let converted = asarray.call((value,), Some(&kwargs)).map_err(|e| {
                InputError::new_err(format!(
                    "{what}: not convertible to a numpy array ({})",
                    e.value(py)
                ))
            })?;
            converted.cast_into::<PyUntypedArray>()?
        }
    };
    let shape = array.shape().to_vec();
    let given = array.dtype();
    let expected = declared.and_then(|ty| numpy_dtype(py, ty.dtype));
    if let (Some(ty), Some(expected)) = (declared, &expected) {
        if !given.is_equiv_to(expected) {
            return Err(InputError::new_err(format!(
                "{what}: a numpy {given} array, but the model declares {ty}; \
                 convert it with .astype(numpy.{expected})"
            )));
        }
    }
    let data = if given.is_equiv_to(&dtype::<f32>(py)) {
        TensorData::F32(copy_elements::<f32>(&array)?)
    } else if given.is_equiv_to(&dtype::<i64>(py)) {
        TensorData::I64(copy_elements::<i64>(&array)?)
    } else if given.is_equiv_to(&dtype::<i32>(py)) {
        TensorData::I32(copy_elements::<i32>(&array)?)
    } else if given.is_equiv_to(&dtype::<bool>(py)) {
        TensorData::Bool(copy_elements::<bool>(&array)?)
    } else {
        return Err(InputError::new_err(format!(
            "{what}: a numpy {given} array; lamina takes float32, int64, int32 and bool"
        )));
    };
    Ok(Tensor::new(shape, data))
}

/// A lamina tensor as a numpy array that owns the tensor's buffer (no copy).
fn to_numpy<'py>(py: Python<'py>, name: &str, tensor: Tensor) -> PyResult<Bound<'py, PyAny>> {
    fn array<'py, T: Element>(
        py: Python<'py>,
        shape: Vec<usize>,
        data: Vec<T>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owned = ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| RunError::new_err(format!("output shape {shape:?}: {e}")))?;
        Ok(owned.into_pyarray(py).into_any())
    }
    let shape = tensor.shape().to_vec();
    match tensor.into_data() {
        TensorData::F32(v) => array(py, shape, v),
        TensorData::I64(v) => array(py, shape, v),
        TensorData::I32(v) => array(py, shape, v),
        TensorData::Bool(v) => array(py, shape, v),
        #[allow(unreachable_patterns)]
        other => Err(RunError::new_err(format!(
            "output `{name}`: lamina {} tensors have no numpy conversion yet",
            other.dtype()
        ))),
    }
}

/// The `(key, value)` pairs of a Python mapping (a dict or any `Mapping`).
fn mapping_items<'py>(
    what: &str,
    mapping: &Bound<'py, PyAny>,
) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let mapping = mapping.cast::<PyMapping>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "{what}: expected a mapping of names to arrays, got {}",
            mapping
                .get_type()
                .name()
                .map_or("?".into(), |n| n.to_string())
        ))
    })?;
    let items = mapping.items()?;
    items
        .iter()
        .map(|pair| {
            let (key, value): (String, Bound<'py, PyAny>) = pair.extract()?;
            Ok((key, value))
        })
        .collect()
}

/// `weights=`: None (the model's own file), a path, bytes, or a mapping of
/// parameter names to arrays.
fn weights_from(py: Python<'_>, weights: Option<&Bound<'_, PyAny>>) -> PyResult<Weights> {
    let Some(weights) = weights else {
        return Ok(Weights::Conventional);
    };
    if let Ok(bytes) = weights.cast::<PyBytes>() {
        return Ok(Weights::Bytes {
            name: "<bytes>".into(),
            bytes: bytes.as_bytes().to_vec(),
        });
    }
    if weights.cast::<PyMapping>().is_ok() {
        let mut tensors = HashMap::new();
        for (name, value) in mapping_items("weights", weights)? {
            let tensor = to_tensor(py, &format!("weight `{name}`"), &value, None)
                .map_err(|e| WeightsError::new_err(e.value(py).to_string()))?;
            tensors.insert(name, tensor);
        }
        return Ok(Weights::Tensors(tensors));
    }
    match weights.extract::<PathBuf>() {
        Ok(path) => Ok(Weights::File(path)),
        Err(_) => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "weights: expected None, a path, bytes or a mapping of names to arrays, got {}",
            weights.get_type().name()?
        ))),
    }
}

/// Compile settings as given to `load` / `from_source`.
struct Settings {
    weights: Weights,
    options: Options,
    tokenizer: Option<PathBuf>,
    max_tokens: usize,
}

#[allow(clippy::too_many_arguments)]
fn settings(
    py: Python<'_>,
    weights: Option<&Bound<'_, PyAny>>,
    backend: &str,
    threads: Option<i64>,
    isa: Option<&str>,
    max_memory: Option<&Bound<'_, PyAny>>,
    bind: Option<&Bound<'_, PyAny>>,
    tokenizer: Option<PathBuf>,
    max_tokens: usize,
) -> PyResult<Settings> {
    let mut problems = Vec::new();
    let backend = match backend {
        "jit" => Backend::Jit,
        "interp" => Backend::Interp,
        other => {
            problems.push(format!("backend: `{other}` is not a backend (jit, interp)"));
            Backend::Jit
        }
    };
    let threads = match threads {
        None => engine::all_cores(),
        Some(n) => usize::try_from(n).unwrap_or_else(|_| {
            problems.push(format!("threads: {n} is not a thread count"));
            1
        }),
    };
    let isa = isa.and_then(|name| match name.parse::<Isa>() {
        Ok(isa) => Some(isa),
        Err(e) => {
            problems.push(format!("isa: {e}"));
            None
        }
    });
    let max_memory = match max_memory {
        None => None,
        Some(value) => {
            if let Ok(text) = value.cast::<PyString>() {
                lamina::runtime::budget::parse_size(&text.to_cow()?)
                    .map_err(|e| problems.push(format!("max_memory: {e}")))
                    .ok()
            } else {
                match value.extract::<usize>() {
                    Ok(bytes) => Some(bytes),
                    Err(_) => {
                        problems.push(format!(
                            "max_memory: expected bytes (an int) or a size like \"2G\", got {value}"
                        ));
                        None
                    }
                }
            }
        }
    };
    let mut bound = Vec::new();
    if let Some(bind) = bind {
        for (symbol, value) in mapping_items("bind", bind)? {
            match value.extract::<usize>() {
                Ok(v) => bound.push((symbol, v)),
                Err(_) => problems.push(format!(
                    "bind: `{symbol}` = {value} is not a size (a non-negative int)"
                )),
            }
        }
    }
    if !problems.is_empty() {
        return Err(OptionsError::new_err(problems.join("\n")));
    }
    Ok(Settings {
        weights: weights_from(py, weights)?,
        options: Options {
            backend,
            threads,
            bind: bound,
            max_memory,
            isa,
        },
        tokenizer,
        max_tokens,
    })
}

/// Checks and compiles with the GIL released.
fn compile(
    py: Python<'_>,
    load: impl FnOnce() -> Result<engine::Model, engine::Error> + Send,
    settings: Settings,
) -> PyResult<Model> {
    let Settings {
        weights,
        options,
        tokenizer,
        max_tokens,
    } = settings;
    let session = py
        .detach(move || load()?.compile(weights, &options))
        .map_err(raise)?;
    Ok(Model {
        session: Arc::new(session),
        tokenizer_path: tokenizer,
        max_tokens,
        tokenizer: Mutex::new(None),
    })
}

/// Loads a `.lam` file, binds its weights and compiles it.
///
/// weights: None for the model's own file (`weights "..."` in the model, else
/// `<stem>.safetensors` beside it), a path, the bytes of a safetensors file,
/// or a mapping of parameter names to numpy arrays.
#[pyfunction]
#[pyo3(signature = (path, *, weights=None, backend="jit", threads=None, isa=None, max_memory=None, bind=None, tokenizer=None, max_tokens=128))]
#[allow(clippy::too_many_arguments)]
fn load(
    py: Python<'_>,
    path: PathBuf,
    weights: Option<&Bound<'_, PyAny>>,
    backend: &str,
    threads: Option<i64>,
    isa: Option<&str>,
    max_memory: Option<&Bound<'_, PyAny>>,
    bind: Option<&Bound<'_, PyAny>>,
    tokenizer: Option<PathBuf>,
    max_tokens: usize,
) -> PyResult<Model> {
    let settings = settings(
        py, weights, backend, threads, isa, max_memory, bind, tokenizer, max_tokens,
    )?;
    compile(py, move || engine::Model::load(path), settings)
}

/// Checks and compiles model text held in a string; `path` names it in
/// messages and is where conventional files (weights, tokenizer) are looked for.
#[pyfunction]
#[pyo3(signature = (source, *, path="<string>".into(), weights=None, backend="jit", threads=None, isa=None, max_memory=None, bind=None, tokenizer=None, max_tokens=128))]
#[allow(clippy::too_many_arguments)]
fn from_source(
    py: Python<'_>,
    source: String,
    path: PathBuf,
    weights: Option<&Bound<'_, PyAny>>,
    backend: &str,
    threads: Option<i64>,
    isa: Option<&str>,
    max_memory: Option<&Bound<'_, PyAny>>,
    bind: Option<&Bound<'_, PyAny>>,
    tokenizer: Option<PathBuf>,
    max_tokens: usize,
) -> PyResult<Model> {
    let settings = settings(
        py, weights, backend, threads, isa, max_memory, bind, tokenizer, max_tokens,
    )?;
    compile(
        py,
        move || engine::Model::from_source(path, source),
        settings,
    )
}

/// A model input or output as declared: its name, numpy dtype, and shape
/// (an int per known dim, the symbol's name, e.g. "batch", per symbolic one).
#[pyclass(frozen, module = "lamina")]
struct TensorInfo {
    #[pyo3(get)]
    name: String,
    ty: TensorType,
}

#[pymethods]
impl TensorInfo {
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match numpy_dtype(py, self.ty.dtype) {
            Some(d) => Ok(d.into_any()),
            None => Ok(PyString::new(py, self.ty.dtype.name()).into_any()),
        }
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let dims: Vec<Bound<'py, PyAny>> = self
            .ty
            .shape
            .iter()
            .map(|d| -> PyResult<Bound<'py, PyAny>> {
                Ok(match d.as_known() {
                    Some(n) => n.into_pyobject(py)?.into_any(),
                    None => PyString::new(py, &d.to_string()).into_any(),
                })
            })
            .collect::<PyResult<_>>()?;
        PyTuple::new(py, dims)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "TensorInfo(name={}, dtype={}, shape={})",
            PyString::new(py, &self.name).repr()?,
            self.dtype(py)?.str()?,
            self.shape(py)?.repr()?,
        ))
    }
}

fn infos(types: Vec<(&str, &TensorType)>) -> Vec<TensorInfo> {
    types
        .into_iter()
        .map(|(name, ty)| TensorInfo {
            name: name.to_string(),
            ty: ty.clone(),
        })
        .collect()
}

/// A compiled model. Share it freely between threads: `run` releases the GIL
/// and any number of runs may be in flight at once.
#[pyclass(frozen, module = "lamina")]
struct Model {
    session: Arc<Session>,
    tokenizer_path: Option<PathBuf>,
    max_tokens: usize,
    /// Loaded on first use of `text=`.
    tokenizer: Mutex<Option<Arc<BatchTokenizer>>>,
}

impl Model {
    fn tokenizer(&self, py: Python<'_>) -> PyResult<Arc<BatchTokenizer>> {
        if let Some(t) = self.tokenizer.lock().expect("tokenizer lock").as_ref() {
            return Ok(Arc::clone(t));
        }
        let session = Arc::clone(&self.session);
        let (path, max_tokens) = (self.tokenizer_path.clone(), self.max_tokens);
        let loaded = py
            .detach(move || session.tokenizer(path.as_deref(), max_tokens))
            .map_err(raise)?;
        let mut slot = self.tokenizer.lock().expect("tokenizer lock");
        Ok(Arc::clone(slot.get_or_insert_with(|| Arc::new(loaded))))
    }
}

#[pymethods]
impl Model {
    /// Runs the model; returns its outputs by name, in declaration order.
    ///
    /// inputs: a mapping of input names to numpy arrays (anything else is
    /// converted with numpy.asarray to the declared dtype). text: sentences
    /// that fill `input_ids` (and `attention_mask`, `token_type_ids` when
    /// declared) through the model's tokenizer.
    #[pyo3(signature = (inputs=None, *, text=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Option<&Bound<'py, PyAny>>,
        text: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let model = self.session.model();
        let declared: HashMap<&str, &TensorType> = model.input_types().into_iter().collect();
        let mut tensors = HashMap::new();
        let mut problems = Vec::new();
        if let Some(inputs) = inputs {
            for (name, value) in mapping_items("inputs", inputs)? {
                let what = format!("input `{name}`");
                match to_tensor(py, &what, &value, declared.get(name.as_str()).copied()) {
                    Ok(t) => {
                        tensors.insert(name, t);
                    }
                    Err(e) if e.is_instance_of::<InputError>(py) => {
                        problems.push(e.value(py).to_string())
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if !problems.is_empty() {
            return Err(InputError::new_err(problems.join("\n")));
        }
        let texts: Option<Vec<String>> = match text {
            None => None,
            Some(t) if t.is_instance_of::<PyString>() => Some(vec![t.extract()?]),
            Some(t) => Some(t.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("text: expected a str or a sequence of str")
            })?),
        };
        let tokenizer = match texts {
            Some(_) => Some(self.tokenizer(py)?),
            None => None,
        };
        let session = Arc::clone(&self.session);
        let outputs = py
            .detach(move || {
                if let (Some(texts), Some(tokenizer)) = (texts, tokenizer) {
                    for (name, t) in session.text_inputs(&tokenizer, &texts)? {
                        tensors.entry(name).or_insert(t);
                    }
                }
                session.run(&tensors)
            })
            .map_err(raise)?;
        let result = PyDict::new(py);
        for (name, tensor) in outputs {
            let array = to_numpy(py, &name, tensor)?;
            result.set_item(name, array)?;
        }
        Ok(result)
    }

    /// The inputs the model declares, in order.
    #[getter]
    fn inputs(&self) -> Vec<TensorInfo> {
        infos(self.session.model().input_types())
    }

    /// The outputs the model declares, in order.
    #[getter]
    fn outputs(&self) -> Vec<TensorInfo> {
        infos(self.session.model().output_types())
    }

    /// The model's name (`model NAME { ... }`).
    #[getter]
    fn name(&self) -> String {
        self.session.model().graph().name.clone()
    }

    /// The file the model was loaded from (or the name given to from_source).
    #[getter]
    fn path(&self) -> PathBuf {
        self.session.model().path().to_path_buf()
    }

    /// "jit" or "interp".
    #[getter]
    fn backend(&self) -> &'static str {
        self.session.options().backend.name()
    }

    /// Worker threads of the JIT kernels.
    #[getter]
    fn threads(&self) -> usize {
        self.session.options().threads
    }

    /// The weight file the parameters came from, if any.
    #[getter]
    fn weights_path(&self) -> Option<PathBuf> {
        self.session.weights_path().map(|p| p.to_path_buf())
    }

    /// Tensors of the weights that no parameter uses, sorted.
    #[getter]
    fn unused_weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.session.unused_weights())
    }

    fn __repr__(&self) -> String {
        let options = self.session.options();
        format!(
            "<lamina.Model {:?} from {}, backend={}, threads={}>",
            self.name(),
            self.session.model().path().display(),
            options.backend.name(),
            options.threads
        )
    }
}

/// lamina: load a .lam model, compile it once, run it on numpy arrays.
#[pymodule]
#[pyo3(name = "lamina")]
fn lamina_python(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(from_source, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<TensorInfo>()?;
    m.add("LaminaError", py.get_type::<LaminaError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("OptionsError", py.get_type::<OptionsError>())?;
    m.add("WeightsError", py.get_type::<WeightsError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("TextError", py.get_type::<TextError>())?;
    m.add("CompileError", py.get_type::<CompileError>())?;
    m.add("RunError", py.get_type::<RunError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
