//! Benchmark workloads: a model set up with generated inputs, timed the
//! way `lamina bench` and the criterion benches in `benches/` time it.
//!
//! Compile time is everything from reading the `.lam` file to a plan ready
//! to run (parse, lower, bind parameters, passes, weight packing, the first
//! plan with its JIT kernels). Latency is measured per run after a warm-up,
//! over at least `min_runs` runs and `min_time`. Throughput counts only the
//! matrix products of the optimised, concrete graph (2·m·n·k per `matmul` /
//! `fused_linear`, batched ones included), the convention BLAS and ONNX
//! benchmarks use.

use crate::ir::ops::{Gather, Input};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codegen::Isa;
use crate::diagnostics::{render_all, Diagnostic, SourceFile};
use crate::engine::{check_bindings, Backend, ErrorKind, Model};
use crate::ir::bind::{bind_inputs, concretize};
use crate::ir::{Bindings, DType, Dim, Graph, NodeId, Op};
use crate::runtime::budget::MemoryBudget;
use crate::runtime::exec::{Banding, CompileOptions, CompiledModel};
use crate::runtime::params::bind_params_owned_within;
use crate::runtime::weights::WeightFile;
use crate::tensor::{Tensor, TensorData};

/// What to benchmark: a model file, its sizes and how to run it.
#[derive(Clone, Debug)]
pub struct BenchSetup {
    pub model: PathBuf,
    pub weights: Option<PathBuf>,
    /// `--batch`: the first input's first dim.
    pub batch: Option<usize>,
    /// `--bind` values.
    pub binds: Vec<(String, usize)>,
    pub threads: usize,
    pub backend: Backend,
    /// Seed for the generated inputs.
    pub seed: u64,
    /// Keep the parameter values after compiling, for [`Workload::profile`].
    pub keep_params: bool,
    /// Memory budget in bytes (`--max-memory`); `None`: 3/4 of the RAM the process may use.
    pub max_memory: Option<usize>,
    /// The kernel tier (`None`: `LAMINA_ISA`, else the CPU's best).
    pub isa: Option<Isa>,
    /// Which convolution pairs run as banded steps (`--banding`).
    pub banding: Banding,
}

impl BenchSetup {
    /// A JIT setup on one thread, no weight file, seed 0.
    pub fn new(model: impl Into<PathBuf>) -> BenchSetup {
        BenchSetup {
            model: model.into(),
            weights: None,
            batch: None,
            binds: Vec::new(),
            threads: 1,
            backend: Backend::Jit,
            seed: 0,
            keep_params: false,
            max_memory: None,
            isa: None,
            banding: Banding::Auto,
        }
    }
}

/// Why a workload could not be set up: diagnostics, and the model source
/// they point into when they point into it.
#[derive(Debug)]
pub struct BenchFailure {
    pub diagnostics: Vec<Diagnostic>,
    pub source: Option<SourceFile>,
}

impl BenchFailure {
    /// A failure with one message and no place in the model.
    pub fn plain(message: impl Into<String>) -> BenchFailure {
        BenchFailure {
            diagnostics: vec![Diagnostic::error(message)],
            source: None,
        }
    }

    /// The diagnostics as the CLI prints them.
    pub fn render(&self) -> String {
        render_all(&self.diagnostics, self.source.as_ref())
    }
}

impl From<crate::engine::Error> for BenchFailure {
    fn from(e: crate::engine::Error) -> BenchFailure {
        BenchFailure {
            diagnostics: e.diagnostics().to_vec(),
            source: e.file().cloned(),
        }
    }
}

impl std::fmt::Display for BenchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// Milliseconds spent in each stage of getting a model ready to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileTimes {
    /// Read, parse, lower, verify.
    pub load_ms: f64,
    /// Read the weight file, bind and initialise parameters.
    pub params_ms: f64,
    /// The passes, to a fixpoint (`compile::optimise`); 0 for the interpreter.
    pub passes_ms: f64,
    /// `CompiledModel::compile`: weights taken over, GEMM weights packed,
    /// convolution weights laid out; 0 for the interpreter.
    pub packing_ms: f64,
    /// Concretize and plan the first input shapes (`prepare`), without the
    /// kernel compilation counted in `kernels_ms`; 0 for the interpreter.
    pub plan_ms: f64,
    /// Compiling and assembling the first plan's kernels (0 when the plan
    /// shares an existing kernel set).
    pub kernels_ms: f64,
    /// On-CPU time of all the stages together (all threads), which other
    /// jobs on the machine cannot inflate; `None` where it is not measured.
    pub cpu_ms: Option<f64>,
}

impl CompileTimes {
    pub fn total_ms(&self) -> f64 {
        self.load_ms
            + self.params_ms
            + self.passes_ms
            + self.packing_ms
            + self.plan_ms
            + self.kernels_ms
    }
}

/// The JIT plan's statistics for the benchmarked shapes.
#[derive(Clone, Copy, Debug)]
pub struct PlanStats {
    pub arena_bytes: usize,
    pub steps: usize,
    pub native_steps: usize,
    pub kernels: usize,
    /// The batch runs sample by sample (the figures are one sample's plan).
    pub by_sample: bool,
}

enum Engine {
    Jit {
        model: Box<CompiledModel>,
        outputs: Vec<Tensor>,
        /// Only when the setup asks for them (profiling).
        params: Option<HashMap<String, Tensor>>,
    },
    Interp {
        graph: Box<Graph>,
        params: HashMap<String, Tensor>,
        named_inputs: HashMap<String, Tensor>,
        budget: MemoryBudget,
    },
}

/// A model compiled and given generated inputs, ready to be run again and again.
pub struct Workload {
    engine: Engine,
    /// Inputs in declaration order.
    inputs: Vec<Tensor>,
    pub input_names: Vec<String>,
    /// Every symbol's value.
    pub bindings: Bindings,
    /// Matrix-product flops of one run.
    pub flops: u64,
    pub compile: CompileTimes,
    /// `None` for the interpreter.
    pub plan: Option<PlanStats>,
    pub threads: usize,
    pub backend: Backend,
    /// The kernel tier (JIT backend).
    pub isa: Option<Isa>,
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Adds the on-CPU time since `start` (from [`process_cpu_ns`]) to `total`.
fn add_cpu_since(total: &mut Option<f64>, start: Option<u64>) {
    *total = match (*total, start, process_cpu_ns()) {
        (Some(sum), Some(a), Some(b)) => Some(sum + b.saturating_sub(a) as f64 / 1e6),
        _ => None,
    };
}

/// `--bind` values plus `--batch` as a binding of the first input's first dim.
fn fixed_bindings(setup: &BenchSetup, graph: &Graph) -> Result<Bindings, BenchFailure> {
    let mut errors: Vec<Diagnostic> = check_bindings(graph, &setup.binds)
        .iter()
        .map(|e| Diagnostic::error(format!("--bind: {e}")))
        .collect();
    let mut fixed: Bindings = setup.binds.iter().cloned().collect();
    if let Some(batch) = setup.batch {
        let first = graph.inputs.first().map(|&id| (graph.input_name(id), id));
        let Some((name, id)) = first else {
            return Err(BenchFailure::plain(
                "--batch binds the first input's first dim, but the model has no inputs",
            ));
        };
        let ty = &graph.node(id).ty;
        let first_dim = ty.shape.first();
        match first_dim.map(|d| (d, d.symbols())) {
            Some((d, [sym])) if d.factor() == 1 => match fixed.get(sym.as_str()) {
                Some(&bound) if bound != batch => errors.push(Diagnostic::error(format!(
                    "--batch {batch} binds `{sym}` (the first dim of input `{name}`: {ty}), \
                     but --bind {sym}={bound} says otherwise"
                ))),
                _ => {
                    fixed.insert(sym.clone(), batch);
                }
            },
            Some((d, _)) => errors.push(Diagnostic::error(format!(
                "--batch needs the first dim of the first input to be a plain symbol, \
                 but input `{name}` is {ty} (first dim `{d}`); use --bind instead"
            ))),
            None => errors.push(Diagnostic::error(format!(
                "--batch needs the first input to have a first dim, but input `{name}` is a scalar ({ty})"
            ))),
        }
    }
    if errors.is_empty() {
        Ok(fixed)
    } else {
        Err(BenchFailure {
            diagnostics: errors,
            source: None,
        })
    }
}

/// Follows an integer input through layout ops to the gathers that use it
/// as ids; the smallest gathered axis bounds every valid id. `None` when no
/// gather reads it (masks and flags: those get all ones).
fn id_bound(graph: &Graph, input: NodeId) -> Option<usize> {
    let mut bound: Option<usize> = None;
    let mut stack = vec![input];
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for user in graph.users(id) {
            match &graph.node(user).op {
                Op::Gather(Gather { axis }) if graph.inputs(user).get(1) == Some(&id) => {
                    let table = graph.inputs(user)[0];
                    if let Some(size) = graph
                        .node(table)
                        .ty
                        .shape
                        .get(*axis)
                        .and_then(Dim::as_known)
                    {
                        bound = Some(bound.map_or(size, |b| b.min(size)));
                    }
                }
                Op::Reshape(_) | Op::Permute(_) | Op::Slice(_) | Op::Concat(_) => stack.push(user),
                _ => {}
            }
        }
    }
    bound
}

/// Seeded inputs of the declared shapes: f32 uniform in [-1, 1), integer
/// inputs valid ids (or ones when they are not ids).
fn generate_inputs(
    graph: &Graph,
    bindings: &Bindings,
    seed: u64,
    batch_given: bool,
    budget: &MemoryBudget,
) -> Result<Vec<Tensor>, BenchFailure> {
    // Sizes before any allocation: `--bind n=2^40` must be an error, not an abort.
    let mut sizes = Vec::new();
    for &id in &graph.inputs {
        let ty = &graph.node(id).ty;
        let shape: Option<Vec<usize>> = ty
            .shape
            .iter()
            .map(|d| d.substitute(bindings).and_then(|d| d.as_known()))
            .collect();
        if let Some(shape) = shape {
            let bytes =
                crate::ir::dim::checked_bytes(&shape, ty.dtype.size_bytes()).unwrap_or(usize::MAX);
            sizes.push((
                format!("input `{}` {}{shape:?}", graph.input_name(id), ty.dtype),
                bytes,
            ));
        }
    }
    budget
        .check("generating the inputs", &sizes)
        .map_err(|e| BenchFailure::plain(e.to_string()))?;
    let concrete = concretize(graph, bindings).ok();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = Vec::new();
    let mut errors = Vec::new();
    for (position, &id) in graph.inputs.iter().enumerate() {
        let name = graph.input_name(id);
        let ty = &graph.node(id).ty;
        let mut shape = Vec::with_capacity(ty.shape.len());
        for (axis, d) in ty.shape.iter().enumerate() {
            match d.substitute(bindings).and_then(|d| d.as_known()) {
                Some(n) => shape.push(n),
                None => {
                    let hint = if position == 0 && axis == 0 && !batch_given {
                        " or --batch N"
                    } else {
                        ""
                    };
                    let missing: Vec<String> = d
                        .symbols()
                        .iter()
                        .filter(|s| !bindings.contains_key(s.as_str()))
                        .map(|s| format!("--bind {s}=N"))
                        .collect();
                    errors.push(Diagnostic::error(format!(
                        "input `{name}` ({ty}): bench generates its inputs, so every dim must be \
                         known: pass {}{hint}",
                        missing.join(" ")
                    )));
                    break;
                }
            }
        }
        if shape.len() != ty.shape.len() {
            continue;
        }
        let len: usize = shape.iter().product();
        let bound = concrete.as_ref().and_then(|g| id_bound(g, id));
        let data = match ty.dtype {
            DType::F32 => TensorData::F32((0..len).map(|_| rng.random_range(-1.0..1.0)).collect()),
            DType::I64 => TensorData::I64(match bound {
                Some(b) => (0..len)
                    .map(|_| rng.random_range(0..b.max(1)) as i64)
                    .collect(),
                None => vec![1; len],
            }),
            DType::I32 => TensorData::I32(match bound {
                Some(b) => (0..len)
                    .map(|_| rng.random_range(0..b.clamp(1, i32::MAX as usize)) as i32)
                    .collect(),
                None => vec![1; len],
            }),
            DType::Bool => TensorData::Bool((0..len).map(|_| rng.random_bool(0.5)).collect()),
        };
        tensors.push(Tensor::new(shape, data));
    }
    if errors.is_empty() {
        Ok(tensors)
    } else {
        Err(BenchFailure {
            diagnostics: errors,
            source: None,
        })
    }
}

/// Flops of the matrix products of a concrete graph, as each op counts them
/// (`OpKind::flops`: 2·(output elements)·k for every `matmul` and
/// `fused_linear`, batch dims included; 0 for other ops).
pub fn matmul_flops(graph: &Graph) -> u64 {
    let mut total = 0u64;
    for id in graph.node_ids() {
        let node = graph.node(id);
        let shapes: Option<Vec<Vec<usize>>> = graph
            .inputs(id)
            .iter()
            .map(|&i| graph.node(i).ty.known_shape())
            .collect();
        if let (Some(shapes), Some(out)) = (shapes, node.ty.known_shape()) {
            let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            total += node.op.kind().flops(&refs, &out);
        }
    }
    total
}

impl Workload {
    /// Loads, binds, compiles and plans `setup`'s model, timing each stage,
    /// and generates its inputs (not timed).
    pub fn prepare(setup: &BenchSetup) -> Result<Workload, BenchFailure> {
        let cpu = process_cpu_ns();
        let start = Instant::now();
        let m = Model::load(&setup.model)?;
        let mut compile = CompileTimes {
            load_ms: ms_since(start),
            cpu_ms: Some(0.0),
            ..CompileTimes::default()
        };
        add_cpu_since(&mut compile.cpu_ms, cpu);
        let fixed = fixed_bindings(setup, m.graph())?;
        let cpu = process_cpu_ns();
        let start = Instant::now();
        let weights_path = setup.weights.clone().or_else(|| m.conventional_weights());
        let weights = match weights_path {
            Some(p) => Some(WeightFile::load(&p).map_err(|e| BenchFailure::plain(e.to_string()))?),
            None => None,
        };
        let budget = setup.max_memory.map(MemoryBudget::new).unwrap_or_default();
        let mut bound =
            bind_params_owned_within(m.graph(), weights, &fixed, &budget).map_err(|errs| {
                BenchFailure::from(crate::engine::Error::new(
                    ErrorKind::Params(errs),
                    Some(m.graph()),
                    Some(m.source()),
                ))
            })?;
        compile.params_ms = ms_since(start);
        add_cpu_since(&mut compile.cpu_ms, cpu);

        let inputs = generate_inputs(
            m.graph(),
            &bound.bindings,
            setup.seed,
            setup.batch.is_some(),
            &budget,
        )?;
        let input_names: Vec<String> = m
            .graph()
            .inputs
            .iter()
            .map(|&id| m.graph().input_name(id).to_string())
            .collect();
        let shapes: Vec<(String, DType, Vec<usize>)> = input_names
            .iter()
            .zip(&inputs)
            .map(|(n, t)| (n.clone(), t.dtype(), t.shape().to_vec()))
            .collect();
        let bindings =
            bind_inputs(m.graph(), &shapes, &bound.bindings).map_err(|errs| BenchFailure {
                diagnostics: errs
                    .iter()
                    .map(|e| Diagnostic::error(e.to_string()))
                    .collect(),
                source: None,
            })?;
        let error = |e: &dyn std::fmt::Display| BenchFailure::plain(e.to_string());

        let threads = setup.threads.max(1);
        let mut isa = None;
        let (engine, plan, flops, threads) = match setup.backend {
            Backend::Jit => {
                let cpu = process_cpu_ns();
                let start = Instant::now();
                let options = CompileOptions {
                    threads,
                    isa: setup.isa,
                };
                let (optimised, _) =
                    crate::compile::optimise(m.graph(), &bound.values).map_err(|e| error(&e))?;
                compile.passes_ms = ms_since(start);
                let start = Instant::now();
                // Profiling compiles nodes alone later, on the same values.
                let compiled = if setup.keep_params {
                    CompiledModel::compile(&optimised, &bound.values, options)
                } else {
                    let values = std::mem::take(&mut bound.values);
                    CompiledModel::compile_owned(&optimised, values, options)
                };
                let mut model = compiled.map_err(|e| error(&e))?;
                model.set_memory_budget(budget.clone());
                model.set_banding(setup.banding);
                compile.packing_ms = ms_since(start);
                let start = Instant::now();
                let ordered: Vec<&Tensor> = inputs.iter().collect();
                let info = model.prepare(&ordered, &bindings).map_err(|e| error(&e))?;
                let kernels_ms = info.kernel_compile.as_secs_f64() * 1e3;
                compile.kernels_ms = kernels_ms;
                compile.plan_ms = (ms_since(start) - kernels_ms).max(0.0);
                add_cpu_since(&mut compile.cpu_ms, cpu);
                let concrete = concretize(model.graph(), &bindings)
                    .map_err(|e| error(&crate::runtime::exec::ExecError::Bind(e)))?;
                let plan = PlanStats {
                    arena_bytes: info.arena_bytes,
                    steps: info.steps,
                    native_steps: info.native_steps,
                    kernels: info.kernels,
                    by_sample: info.by_sample,
                };
                isa = Some(model.isa());
                let engine = Engine::Jit {
                    model: Box::new(model),
                    outputs: Vec::new(),
                    params: setup.keep_params.then_some(bound.values),
                };
                (engine, Some(plan), matmul_flops(&concrete), threads)
            }
            Backend::Interp => {
                let concrete = concretize(m.graph(), &bindings)
                    .map_err(|e| error(&crate::runtime::exec::ExecError::Bind(e)))?;
                let engine = Engine::Interp {
                    graph: Box::new(m.graph().clone()),
                    params: bound.values,
                    named_inputs: input_names.iter().cloned().zip(inputs.clone()).collect(),
                    budget,
                };
                // The interpreter runs on the calling thread only.
                (engine, None, matmul_flops(&concrete), 1)
            }
        };
        Ok(Workload {
            engine,
            inputs,
            input_names,
            bindings,
            flops,
            compile,
            plan,
            threads,
            backend: setup.backend,
            isa,
        })
    }

    /// One run on the generated inputs. The JIT backend reuses its output
    /// buffers, so after the first run this allocates nothing.
    pub fn run_once(&mut self) -> Result<(), BenchFailure> {
        let error = |e: &dyn std::fmt::Display| BenchFailure::plain(e.to_string());
        match &mut self.engine {
            Engine::Jit { model, outputs, .. } => {
                let ordered: Vec<&Tensor> = self.inputs.iter().collect();
                model
                    .run_into(&ordered, &self.bindings, outputs)
                    .map_err(|e| error(&e))
            }
            Engine::Interp {
                graph,
                params,
                named_inputs,
                budget,
            } => crate::interp::run_within(graph, params, named_inputs, &self.bindings, budget)
                .map(|_| ())
                .map_err(|e| error(&e)),
        }
    }
}

/// One node of the optimised graph, timed alone.
#[derive(Clone, Debug)]
pub struct NodeProfile {
    /// The node as `lamina graph` prints it, with its concrete type.
    pub label: String,
    pub op: &'static str,
    /// Matrix-product flops (0 for other ops).
    pub flops: u64,
    /// Bytes of the operands and the result (each read or written once).
    pub bytes: u64,
    pub latency_us_median: f64,
}

/// Bytes of a concrete value.
fn value_bytes(graph: &Graph, id: NodeId) -> u64 {
    let ty = &graph.node(id).ty;
    let elements: usize = ty.known_shape().map_or(0, |s| s.iter().product());
    let width = match ty.dtype {
        DType::F32 | DType::I32 => 4,
        DType::I64 => 8,
        DType::Bool => 1,
    };
    (elements * width) as u64
}

/// `node` of the concrete `graph` alone: its parameter and constant
/// operands kept, every other operand a model input.
fn single_node_graph(graph: &Graph, node: NodeId) -> Graph {
    let mut alone = Graph::new(format!("{}_node", graph.name));
    let mut operands = Vec::new();
    for (position, operand) in graph.inputs(node).into_iter().enumerate() {
        let source = graph.node(operand);
        let id = match &source.op {
            Op::Param(_) | Op::Constant(_) => {
                alone.add_node(source.op.clone(), &[], source.ty.clone(), None)
            }
            _ => {
                let op = Op::Input(Input {
                    name: format!("operand{position}"),
                });
                let id = alone.add_node(op, &[], source.ty.clone(), None);
                alone.inputs.push(id);
                id
            }
        };
        operands.push(id);
    }
    let this = graph.node(node);
    let id = alone.add_node(this.op.clone(), &operands, this.ty.clone(), None);
    alone.outputs.push(("out".to_string(), id));
    alone
}

impl Workload {
    /// Times every compute node of the optimised, concrete graph on its own
    /// (JIT backend; needs `BenchSetup::keep_params`). A node alone pays
    /// the per-run overhead and finds its operands in cache, so the sum of
    /// the nodes differs somewhat from a whole run.
    pub fn profile(&self, schedule: &Schedule) -> Result<Vec<NodeProfile>, BenchFailure> {
        let error = |e: &dyn std::fmt::Display| BenchFailure::plain(e.to_string());
        let Engine::Jit {
            model,
            params: Some(params),
            ..
        } = &self.engine
        else {
            return Err(BenchFailure::plain(
                "profiling needs the JIT backend and a workload that kept its parameters",
            ));
        };
        let graph = concretize(model.graph(), &self.bindings)
            .map_err(|e| error(&crate::runtime::exec::ExecError::Bind(e)))?;
        let numbers = crate::ir::printer::numbering(&graph);
        let mut profiles = Vec::new();
        for id in graph.topo_order() {
            let node = graph.node(id);
            if node.op.is_source() {
                continue;
            }
            let alone = single_node_graph(&graph, id);
            let inputs = generate_inputs(
                &alone,
                &Bindings::new(),
                id.index() as u64,
                false,
                &MemoryBudget::default(),
            )?;
            let compiled = CompiledModel::compile(
                &alone,
                params,
                CompileOptions {
                    threads: self.threads,
                    isa: self.isa,
                },
            )
            .map_err(|e| error(&e))?;
            let ordered: Vec<&Tensor> = inputs.iter().collect();
            let mut outputs = Vec::new();
            let mut run = || {
                compiled
                    .run_into(&ordered, &Bindings::new(), &mut outputs)
                    .map_err(|e| error(&e))
            };
            let latencies = time_calls(&mut run, schedule)?;
            let bytes = graph
                .inputs(id)
                .iter()
                .map(|&operand| value_bytes(&graph, operand))
                .sum::<u64>()
                + value_bytes(&graph, id);
            profiles.push(NodeProfile {
                label: format!(
                    "%{} = {} : {}",
                    numbers[&id],
                    crate::ir::printer::node_text(&graph, id, &numbers),
                    node.ty
                ),
                op: node.op.name(),
                flops: matmul_flops(&alone),
                bytes,
                latency_us_median: latencies.median_us(),
            });
        }
        Ok(profiles)
    }
}

/// Latencies of the timed runs, in nanoseconds, sorted.
#[derive(Clone, Debug)]
pub struct Latencies {
    sorted_ns: Vec<u64>,
    /// On-CPU time of all the process's threads over the timed runs,
    /// divided by the runs, in microseconds (Linux only). Unlike wall time,
    /// it does not grow when other jobs take the CPU away mid-run, so on a
    /// busy machine it is the steadier measure of single-thread work.
    pub cpu_us_per_run: Option<f64>,
}

impl Latencies {
    pub fn new(mut samples_ns: Vec<u64>) -> Latencies {
        samples_ns.sort_unstable();
        Latencies {
            sorted_ns: samples_ns,
            cpu_us_per_run: None,
        }
    }

    pub fn runs(&self) -> usize {
        self.sorted_ns.len()
    }

    /// The nearest-rank percentile `p` (0..=100), in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.sorted_ns.is_empty() {
            return f64::NAN;
        }
        let rank = (p / 100.0 * self.sorted_ns.len() as f64).ceil() as usize;
        self.sorted_ns[rank.clamp(1, self.sorted_ns.len()) - 1] as f64 / 1e3
    }

    /// The median, averaging the two middle runs of an even count, in microseconds.
    pub fn median_us(&self) -> f64 {
        let n = self.sorted_ns.len();
        if n == 0 {
            return f64::NAN;
        }
        let middle = if n % 2 == 1 {
            self.sorted_ns[n / 2] as f64
        } else {
            (self.sorted_ns[n / 2 - 1] + self.sorted_ns[n / 2]) as f64 / 2.0
        };
        middle / 1e3
    }

    pub fn min_us(&self) -> f64 {
        self.sorted_ns.first().map_or(f64::NAN, |&v| v as f64 / 1e3)
    }

    pub fn mean_us(&self) -> f64 {
        if self.sorted_ns.is_empty() {
            return f64::NAN;
        }
        self.sorted_ns.iter().map(|&v| v as f64).sum::<f64>() / self.sorted_ns.len() as f64 / 1e3
    }
}

/// How long to warm up and to measure.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub warmup_runs: usize,
    pub warmup_time: Duration,
    pub min_runs: usize,
    pub min_time: Duration,
    /// Stop here even when `min_time` has not passed (fast models).
    pub max_runs: usize,
}

/// Warms up, then times single runs until both `min_runs` and `min_time`
/// are reached. `progress` is told the fraction done after every run.
pub fn measure(
    workload: &mut Workload,
    schedule: &Schedule,
    progress: impl FnMut(f64, usize),
) -> Result<Latencies, BenchFailure> {
    time_calls_with_progress(&mut || workload.run_once(), schedule, progress)
}

fn time_calls(
    call: &mut dyn FnMut() -> Result<(), BenchFailure>,
    schedule: &Schedule,
) -> Result<Latencies, BenchFailure> {
    time_calls_with_progress(call, schedule, |_, _| {})
}

fn time_calls_with_progress(
    call: &mut dyn FnMut() -> Result<(), BenchFailure>,
    schedule: &Schedule,
    mut progress: impl FnMut(f64, usize),
) -> Result<Latencies, BenchFailure> {
    let start = Instant::now();
    let mut warm = 0;
    while warm < schedule.warmup_runs || start.elapsed() < schedule.warmup_time {
        call()?;
        warm += 1;
    }
    let mut samples = Vec::with_capacity(schedule.min_runs.max(64));
    let cpu_start = process_cpu_ns();
    let start = Instant::now();
    while samples.len() < schedule.max_runs.max(1)
        && (samples.len() < schedule.min_runs || start.elapsed() < schedule.min_time)
    {
        let t = Instant::now();
        call()?;
        samples.push(t.elapsed().as_nanos() as u64);
        let by_runs = samples.len() as f64 / schedule.min_runs.max(1) as f64;
        let by_time = start.elapsed().as_secs_f64() / schedule.min_time.as_secs_f64().max(1e-9);
        progress(by_runs.min(by_time).min(1.0), samples.len());
    }
    let cpu_ns = match (cpu_start, process_cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let runs = samples.len().max(1) as f64;
    let mut latencies = Latencies::new(samples);
    latencies.cpu_us_per_run = cpu_ns.map(|ns| ns as f64 / runs / 1e3);
    Ok(latencies)
}

/// Core clock for the flop/cycle figures when it cannot be measured.
const FALLBACK_CLOCK_GHZ: f64 = 3.0;

/// The core clock in GHz: `LAMINA_CLOCK_GHZ`, else measured as a chain of
/// dependent register adds (one per cycle) timed in on-CPU time, so time
/// the scheduler gives to other jobs does not count (the nominal
/// /proc/cpuinfo figure ignores boost, and `add reg, imm` chains are folded
/// by some cores, hence `add reg, reg`).
pub fn clock_ghz() -> f64 {
    let forced = std::env::var("LAMINA_CLOCK_GHZ")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0);
    forced
        .or_else(measure_clock_ghz)
        .unwrap_or(FALLBACK_CLOCK_GHZ)
}

#[cfg(target_arch = "x86_64")]
fn measure_clock_ghz() -> Option<f64> {
    const ITERATIONS: u64 = 40_000_000;
    let start = process_cpu_ns()?;
    let (mut x, mut n) = (1u64, ITERATIONS);
    // SAFETY: register arithmetic only; no memory, no stack.
    unsafe {
        std::arch::asm!(
            "2:",
            "add {x}, {x}",
            "add {x}, {x}",
            "add {x}, {x}",
            "add {x}, {x}",
            "sub {n}, 1",
            "jnz 2b",
            x = inout(reg) x,
            n = inout(reg) n,
            options(nomem, nostack),
        );
    }
    std::hint::black_box((x, n));
    let ns = process_cpu_ns()?.checked_sub(start)?;
    (ns > 0).then(|| 4.0 * ITERATIONS as f64 / ns as f64)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_clock_ghz() -> Option<f64> {
    None
}

/// Nanoseconds the threads of this process have spent on a CPU, from the
/// scheduler's accounting (`/proc/self/task/*/schedstat`); `None` where
/// that does not exist.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread may exit between listing and reading; it no longer counts.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn latencies_median_and_percentiles() {
        let l = Latencies::new(vec![5_000, 1_000, 4_000, 2_000, 3_000]);
        assert_eq!(l.median_us(), 3.0);
        assert_eq!(l.percentile_us(90.0), 5.0);
        assert_eq!(l.percentile_us(20.0), 1.0);
        assert_eq!(l.min_us(), 1.0);
        assert_eq!(l.mean_us(), 3.0);
        let even = Latencies::new(vec![1_000, 2_000, 3_000, 10_000]);
        assert_eq!(even.median_us(), 2.5);
    }

    fn load(text: &str) -> Graph {
        crate::model::load_source(Path::new("t.lam"), text.to_string())
            .expect("test model loads")
            .graph
    }

    #[test]
    fn flops_count_batched_and_transposed_products() {
        let g = load(
            "model m {\n input a: f32[2, 3, 5, 7]\n input b: f32[2, 3, 11, 7]\n \
             input c: f32[4, 6]\n input d: f32[6, 8]\n \
             output y = matmul(a, b, transpose_b=true)\n output z = c @ d\n \
             output w = matmul(d, c, transpose_a=true, transpose_b=true)\n}\n",
        );
        // 2*(2*3*5*11)*7 + 2*(4*8)*6 + 2*(8*4)*6
        assert_eq!(matmul_flops(&g), 2 * 330 * 7 + 2 * 32 * 6 + 2 * 32 * 6);
    }

    #[test]
    fn integer_inputs_are_valid_ids_for_their_gathers() {
        let g = load(
            "model m {\n input ids: i64[2, 50]\n input mask: i64[2, 50]\n \
             param table: f32[7, 3] = ones\n \
             output y = gather(table, reshape(ids, [100]), axis=0)\n \
             output z = cast(mask, f32)\n}\n",
        );
        let inputs =
            generate_inputs(&g, &Bindings::new(), 3, false, &MemoryBudget::default()).unwrap();
        let TensorData::I64(ids) = inputs[0].data() else {
            panic!("ids are i64")
        };
        assert!(ids.iter().all(|&i| (0..7).contains(&i)));
        assert!(ids.iter().any(|&i| i > 0), "ids are not all zero");
        let TensorData::I64(mask) = inputs[1].data() else {
            panic!("mask is i64")
        };
        assert!(mask.iter().all(|&v| v == 1));
    }

    #[test]
    fn batch_binds_the_first_inputs_leading_symbol() {
        let g = load("model m {\n input x: f32[rows, 4]\n output y = relu(x)\n}\n");
        let mut setup = BenchSetup::new("t.lam");
        setup.batch = Some(9);
        assert_eq!(fixed_bindings(&setup, &g).unwrap()["rows"], 9);
        setup.binds = vec![("rows".into(), 8)];
        assert!(fixed_bindings(&setup, &g).is_err());

        let fixed = load("model m {\n input x: f32[3, 4]\n output y = relu(x)\n}\n");
        let mut setup = BenchSetup::new("t.lam");
        setup.batch = Some(3);
        let err = fixed_bindings(&setup, &fixed).unwrap_err();
        assert!(err.render().contains("plain symbol"), "{}", err.render());
    }

    #[test]
    fn unbound_input_dims_ask_for_bind() {
        let g = load("model m {\n input x: f32[m, k]\n output y = relu(x)\n}\n");
        let mut b = Bindings::new();
        b.insert("m".into(), 2);
        let err = generate_inputs(&g, &b, 0, false, &MemoryBudget::default()).unwrap_err();
        assert!(err.render().contains("--bind k=N"), "{}", err.render());
    }

    fn repo_model(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/bench")
            .join(name)
    }

    #[test]
    fn mlp_workload_counts_its_flops_and_runs_on_both_backends() {
        let mut setup = BenchSetup::new(repo_model("mlp.lam"));
        setup.batch = Some(3);
        let per_sample = 784 * 512 + 512 * 512 + 512 * 10;
        for backend in [Backend::Jit, Backend::Interp] {
            setup.backend = backend;
            let mut w = Workload::prepare(&setup).unwrap_or_else(|f| panic!("{f}"));
            assert_eq!(w.flops, 2 * 3 * per_sample as u64);
            assert_eq!(w.bindings["batch"], 3);
            assert_eq!(w.plan.is_some(), backend == Backend::Jit);
            let schedule = Schedule {
                warmup_runs: 1,
                warmup_time: Duration::ZERO,
                min_runs: 4,
                min_time: Duration::ZERO,
                max_runs: 10,
            };
            let mut reported = 0;
            let l = measure(&mut w, &schedule, |_, runs| reported = runs).unwrap();
            assert_eq!(l.runs(), 4);
            assert_eq!(reported, 4);
            assert!(l.median_us() > 0.0);
        }
    }

    #[test]
    fn sgemm_needs_every_size_bound() {
        let mut setup = BenchSetup::new(repo_model("sgemm.lam"));
        setup.binds = vec![("m".into(), 8), ("k".into(), 16)];
        let err = Workload::prepare(&setup).err().expect("n is unbound");
        assert!(err.render().contains("--bind n=N"), "{}", err.render());
        setup.binds.push(("n".into(), 4));
        let w = Workload::prepare(&setup).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(w.flops, 2 * 8 * 16 * 4);
        // The arena holds at least the f32 output (it may pad and align ranges).
        assert!(w.plan.is_some_and(|p| p.arena_bytes >= 8 * 4 * 4));
    }
}
