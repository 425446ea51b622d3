//! The compiled executor: a graph's kernels JIT-compiled with Cranelift,
//! weights packed once, one plan per set of input shapes.
//!
//! ```text
//! CompiledModel::compile(graph, params)      packs GEMM weights once
//!   run(inputs) ─▶ plan for these shapes?    (cached; built on first sight:
//!                  │                          concretize, choose kernels,
//!                  │                          place buffers in one arena)
//!                  └▶ arena from the pool ─▶ steps ─▶ outputs
//! ```
//!
//! The model is `Send + Sync`: plans are immutable once built and shared by
//! `Arc`; each concurrent run takes its own arena from a pool. After the
//! first run for a shape, `run_into` allocates nothing (single thread).

mod banded;
mod candidates;
mod copy;
mod memory;
mod plan;
mod samples;

pub use banded::Banding;
pub use candidates::{candidate_names, candidate_runs_on};
pub use samples::SampleSplit;

use crate::ir::ops::{Constant, FusedLinear, MatMul, Param};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use plan::{GemmB, KernelSet, Loc, NhwcTaps, Plan, Planner, Step, MAX_OPERANDS};

use crate::codegen::aligned::AlignedF32;
use crate::codegen::conv::{
    batch_norm, conv2d_gemm, conv2d_nhwc, window2d, BatchNormArgs, ConvArgs, NhwcConvArgs,
    WindowArgs,
};
use crate::codegen::window_nhwc::{pack_depthwise_taps, window2d_nhwc, NhwcWindowArgs};
use crate::codegen::{
    packed_b_len_for, BatchedMatmulArgs, CodegenError, ElementwiseArgs, GemmArgs, Isa, MatrixRef,
    PackLayout, PackPiece, PackedB, PackedBRef, RowArgs, Target, TensorView, Threads,
};
use crate::interp::InterpError;
use crate::ir::bind::{bind_inputs, concretize, unify, BindError};
use crate::ir::{Bindings, DType, Graph, NodeId, Op};
use crate::runtime::budget::{BudgetError, MemoryBudget};
use crate::span::Span;
use crate::tensor::{Tensor, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Bind(Vec<BindError>),
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error("parameter `{0}` has no value (bind parameters before compiling)")]
    MissingParam(String),
    #[error("parameter `{name}` is {actual}, the model declares {declared}")]
    ParamType {
        name: String,
        declared: String,
        actual: String,
    },
    #[error("gather: id {id} is out of range for a table axis of size {size} (valid ids: -{size} to {})", *.size as i64 - 1)]
    GatherIndex { id: i64, size: usize },
    #[error("weight `{name}` of a matrix product is {dtype}; matrix products take f32")]
    WeightNotF32 { name: String, dtype: DType },
    /// A failure while running one node, with where the node is declared.
    #[error("{}", crate::diagnostics::at_node_message(.op, .source))]
    AtNode {
        node: NodeId,
        op: &'static str,
        span: Option<Span>,
        source: Box<ExecError>,
    },
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("the machine could not provide {} for the model's intermediate values (within the memory budget, but not available now)", crate::runtime::budget::format_bytes(*.bytes))]
    OutOfMemory { bytes: usize },
    #[error("expected {expected} inputs ({names}), got {got}")]
    InputCount {
        expected: usize,
        names: String,
        got: usize,
    },
}

impl ExecError {
    /// The error itself, without the `AtNode` context around it.
    pub fn root(&self) -> &ExecError {
        match self {
            ExecError::AtNode { source, .. } => source.root(),
            other => other,
        }
    }

    /// The error as diagnostics: one per binding problem, each located in
    /// the model source when it has a place there.
    pub fn diagnostics(&self) -> Vec<crate::diagnostics::Diagnostic> {
        match self {
            ExecError::Bind(errors) => errors.iter().map(bind_diagnostic).collect(),
            ExecError::Interp(e) => e.diagnostics(),
            ExecError::AtNode { span, .. } => {
                vec![crate::diagnostics::Diagnostic::error(self.to_string()).at(*span)]
            }
            other => vec![crate::diagnostics::Diagnostic::error(other.to_string())],
        }
    }
}

pub(crate) fn bind_diagnostic(e: &BindError) -> crate::diagnostics::Diagnostic {
    crate::diagnostics::Diagnostic::error(e.to_string()).at(e.span())
}

/// The f32 arena, allocated fallibly: the budget allows it, but the
/// machine may still be short (other processes, overcommit limits), and
/// that must be an error rather than an abort. It starts on a cache line,
/// and `memory::place` puts every buffer a multiple of 64 bytes from its
/// start: every buffer starts on a line.
fn alloc_arena(len: usize) -> Result<AlignedF32, ExecError> {
    AlignedF32::try_zeroed(len).map_err(|_| ExecError::OutOfMemory {
        bytes: len.saturating_mul(4),
    })
}

/// Bytes of a plan's boxed (non-f32) slots, counted as 8 per element.
/// The weights GEMMs multiply by (their right operand: a 2-D f32 weight)
/// whose shape `graph` knows, as the `k x n` matrix each GEMM reads. A
/// weight whose value has another shape is left out: the planner reports it.
fn gemm_weights<'w>(
    graph: &Graph,
    weights: &'w [Arc<Tensor>],
    weight_index: &HashMap<NodeId, usize>,
) -> Result<Vec<(NodeId, MatrixRef<'w>)>, ExecError> {
    let mut found = Vec::new();
    for id in graph.node_ids() {
        let transpose_b = match &graph.node(id).op {
            Op::FusedLinear(FusedLinear { transpose_b, .. }) => *transpose_b,
            Op::MatMul(MatMul { transpose_b, .. }) => *transpose_b,
            _ => continue,
        };
        let b = graph.inputs(id)[1];
        let (Some(&w), Some(shape)) = (weight_index.get(&b), graph.node(b).ty.known_shape()) else {
            continue;
        };
        if shape.len() != 2 || weights[w].shape() != shape.as_slice() {
            continue;
        }
        let data = weights[w].as_f32().ok_or_else(|| ExecError::WeightNotF32 {
            name: match &graph.node(b).op {
                Op::Param(Param { name, .. }) => name.clone(),
                other => other.name().to_string(),
            },
            dtype: weights[w].dtype(),
        })?;
        let matrix = if transpose_b {
            MatrixRef::transposed(data, shape[1], shape[0])?
        } else {
            MatrixRef::row_major(data, shape[0], shape[1])?
        };
        found.push((id, matrix));
    }
    Ok(found)
}

/// Packs GEMM weights for `layout`, spread over the cores in parts of
/// about `PACK_PIECE` floats (a large weight is split too: its first
/// touches of fresh memory are most of the work). Each part moves its own
/// values only.
fn pack_weights(
    to_pack: Vec<(NodeId, MatrixRef<'_>)>,
    layout: PackLayout,
) -> HashMap<NodeId, Arc<PackedB>> {
    const PACK_PIECE: usize = 1 << 16;
    let mut packed: Vec<PackedB> = to_pack
        .iter()
        .map(|(_, m)| PackedB::zeroed_for(m.rows(), m.cols(), layout))
        .collect();
    let pieces: Vec<PackPiece<'_>> = packed
        .iter_mut()
        .zip(&to_pack)
        .flat_map(|(p, &(_, m))| p.pieces(m, PACK_PIECE))
        .collect();
    crate::runtime::parallel::map_by_cost(pieces, PackPiece::len, PackPiece::pack);
    to_pack
        .into_iter()
        .zip(packed)
        .map(|((id, _), p)| (id, Arc::new(p)))
        .collect()
}

fn boxed_bytes(plan: &Plan) -> usize {
    plan.boxed
        .iter()
        .map(|t| {
            t.known_shape()
                .and_then(|s| crate::ir::dim::checked_bytes(&s, 8))
                .unwrap_or(usize::MAX)
        })
        .fold(0usize, usize::saturating_add)
}

impl From<BindError> for ExecError {
    fn from(e: BindError) -> ExecError {
        ExecError::Bind(vec![e])
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CompileOptions {
    /// Worker threads for kernels (1 runs everything on the caller's thread).
    pub threads: usize,
    /// The kernel tier (`None`: `LAMINA_ISA` when set, else the best tier
    /// the CPU runs). A tier above the CPU's is an error at compile time.
    pub isa: Option<Isa>,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions {
            threads: 1,
            isa: None,
        }
    }
}

impl CompileOptions {
    /// `threads` workers at the default tier.
    pub fn threads(threads: usize) -> CompileOptions {
        CompileOptions {
            threads,
            ..CompileOptions::default()
        }
    }
}

/// One run's mutable memory: the f32 arena and the boxed (non-f32) slots.
struct Arena {
    f32: AlignedF32,
    boxed: Vec<Tensor>,
    /// This run's model outputs that steps write straight into the caller's
    /// tensors instead of the arena (see `run_into`); refilled every run,
    /// its capacity kept.
    redirects: Vec<Redirect>,
}

/// An arena range whose storage, for one run, is a caller's output tensor:
/// every access to exactly `offset..offset + len` goes to `address`.
#[derive(Clone, Copy)]
struct Redirect {
    /// The output's index in `Plan::outputs`.
    output: usize,
    offset: usize,
    len: usize,
    address: usize,
}

struct CachedPlan {
    plan: Arc<Plan>,
    /// The packed right operand of every GEMM whose B is a weight, by GEMM
    /// node: the model's (packed at compile time) and those of weights whose
    /// shape only this plan's bindings fix (packed when the plan was made,
    /// shared with earlier plans that bound the same shape).
    packed_weights: HashMap<NodeId, Arc<PackedB>>,
    arenas: Mutex<Vec<Arena>>,
    /// The batch-1 plan that runs these inputs sample by sample instead
    /// (`samples.rs`), when the model keeps samples apart and one sample's
    /// memory outgrows the L2 cache.
    by_sample: Option<Arc<CachedPlan>>,
    /// Per-sample inputs and outputs of runs through `by_sample`, reused.
    sample_scratch: Mutex<Vec<samples::SampleScratch>>,
}

impl CachedPlan {
    fn new(
        plan: Plan,
        packed_weights: HashMap<NodeId, Arc<PackedB>>,
        by_sample: Option<Arc<CachedPlan>>,
    ) -> CachedPlan {
        CachedPlan {
            plan: Arc::new(plan),
            packed_weights,
            arenas: Mutex::new(Vec::new()),
            by_sample,
            sample_scratch: Mutex::new(Vec::new()),
        }
    }
}

/// Gives `outputs` the dtypes and shapes of `plan`'s outputs, keeping the
/// tensors that have them already (nothing is allocated then).
fn shape_outputs(plan: &Plan, outputs: &mut Vec<Tensor>) {
    outputs.truncate(plan.outputs.len());
    for (i, (_, _, dtype, shape)) in plan.outputs.iter().enumerate() {
        let reusable = outputs
            .get(i)
            .is_some_and(|t| t.dtype() == *dtype && t.shape() == shape.as_slice());
        if !reusable {
            let fresh = Tensor::zeros(*dtype, shape.clone());
            if i < outputs.len() {
                outputs[i] = fresh;
            } else {
                outputs.push(fresh);
            }
        }
    }
}

/// The cached plan for inputs of exactly these dtypes and shapes and the
/// `fixed` values it was bound with (anything else is bound afresh, which
/// reports a contradiction).
fn find_plan<'s>(
    plans: &[Arc<CachedPlan>],
    shapes: impl Iterator<Item = (DType, &'s [usize])> + Clone,
    fixed: &Bindings,
) -> Option<Arc<CachedPlan>> {
    // Compared in place: looking up a cached plan allocates nothing.
    plans
        .iter()
        .find(|c| {
            c.plan.input_shapes.len() == shapes.clone().count()
                && c.plan
                    .input_shapes
                    .iter()
                    .zip(shapes.clone())
                    .all(|((dtype, shape), (d, s))| *dtype == d && shape.as_slice() == s)
                && fixed
                    .iter()
                    .all(|(symbol, value)| c.plan.bindings.get(symbol) == Some(value))
        })
        .cloned()
}

pub struct CompiledModel {
    graph: Graph,
    weights: Vec<Arc<Tensor>>,
    weight_index: HashMap<NodeId, usize>,
    /// GEMM right operands that are weights of a known shape, packed once:
    /// keyed by the GEMM node. (A weight of a symbolic shape is packed by
    /// the plans that bind it.)
    prepacked: HashMap<NodeId, Arc<PackedB>>,
    /// GEMM convolutions' left operands (weights with a bias column), laid
    /// out once: keyed by the convolution node.
    conv_weights: HashMap<NodeId, Arc<[f32]>>,
    /// NHWC depthwise convolutions' taps laid out `[kh * kw][C]` once:
    /// keyed by the convolution node.
    depthwise_taps: HashMap<NodeId, Arc<[f32]>>,
    /// NHWC GEMM convolutions' weights, one B per group packed for the
    /// plan tier's GEMM once: keyed by the convolution node.
    nhwc_conv_weights: HashMap<NodeId, Arc<[PackedB]>>,
    /// The kernel tier: fixes the packing of `prepacked` and every plan's kernels.
    isa: Isa,
    only_kernel: Option<&'static str>,
    threads: Threads,
    /// Symbols the parameters' shapes fix (`param embed: f32[vocab, 384]`).
    param_bindings: Bindings,
    plans: Mutex<Vec<Arc<CachedPlan>>>,
    /// Checked by every new plan before its arena can be allocated.
    budget: MemoryBudget,
    /// Which inputs carry a batch's samples, when every op keeps them apart.
    samples: Option<samples::SampleAxis>,
    /// Whether a batch may run sample by sample.
    sample_split: SampleSplit,
    /// Which convolution pairs run as banded steps.
    banding: Banding,
}

/// Statistics about the plan for one set of input shapes.
#[derive(Clone)]
pub struct PlanInfo {
    pub arena_bytes: usize,
    pub steps: usize,
    pub native_steps: usize,
    /// The kernel candidate of each step, in order.
    pub step_kernels: Vec<&'static str>,
    pub kernels: usize,
    /// Whether the plan compiled its kernel set, rather than sharing one
    /// from an earlier plan of any model in this process.
    pub compiled_kernels: bool,
    /// Time the plan spent compiling kernels (zero when it shares a set).
    pub kernel_compile: std::time::Duration,
    /// Whether the batch runs sample by sample (`samples.rs`); the figures
    /// above are then the batch-1 plan's, which runs once per sample (an
    /// arena per thread running one).
    pub by_sample: bool,
    /// The plan's kernels, for [`PlanInfo::clif`].
    kernel_set: Arc<KernelSet>,
}

impl PlanInfo {
    /// Whether both plans run on the same kernel set (the same machine
    /// code), whichever model or session made them.
    pub fn shares_kernels_with(&self, other: &PlanInfo) -> bool {
        Arc::ptr_eq(&self.kernel_set, &other.kernel_set)
    }

    /// Every kernel's CLIF (assembled kernels: their listing), in
    /// compilation order. Formatted on request: disassembling the wide
    /// kernels costs more than assembling them.
    pub fn clif(&self) -> String {
        self.kernel_set.library.clif_text()
    }

    /// The Intel-syntax listing of every assembled (wide-tier) kernel, in
    /// compilation order (empty on the baseline tier).
    pub fn asm(&self) -> String {
        self.kernel_set.library.asm_text()
    }
}

impl std::fmt::Debug for PlanInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanInfo")
            .field("arena_bytes", &self.arena_bytes)
            .field("steps", &self.steps)
            .field("native_steps", &self.native_steps)
            .field("step_kernels", &self.step_kernels)
            .field("kernels", &self.kernels)
            .finish_non_exhaustive()
    }
}

impl CompiledModel {
    /// Compiles an (optimised) graph with its bound parameter values.
    pub fn compile(
        graph: &Graph,
        params: &HashMap<String, Tensor>,
        options: CompileOptions,
    ) -> Result<CompiledModel, ExecError> {
        Self::compile_taking(graph, |name| params.get(name).cloned(), options)
    }

    /// [`CompiledModel::compile`] taking the parameter values over instead
    /// of copying them (a checkpoint's worth of memory traffic at compile
    /// time); parameters the optimised graph no longer uses are dropped.
    pub fn compile_owned(
        graph: &Graph,
        mut params: HashMap<String, Tensor>,
        options: CompileOptions,
    ) -> Result<CompiledModel, ExecError> {
        Self::compile_taking(graph, |name| params.remove(name), options)
    }

    /// `take(name)`: the value of parameter `name`, asked once per name.
    fn compile_taking(
        graph: &Graph,
        mut take: impl FnMut(&str) -> Option<Tensor>,
        options: CompileOptions,
    ) -> Result<CompiledModel, ExecError> {
        let mut weights = Vec::new();
        let mut weight_index = HashMap::new();
        let mut param_bindings = Bindings::new();
        let mut taken: HashMap<&str, Arc<Tensor>> = HashMap::new();
        for id in graph.node_ids() {
            let node = graph.node(id);
            let value = match &node.op {
                Op::Param(Param { name, .. }) => {
                    let value = match taken.get(name.as_str()) {
                        Some(value) => Arc::clone(value),
                        None => {
                            let value = Arc::new(
                                take(name).ok_or_else(|| ExecError::MissingParam(name.clone()))?,
                            );
                            taken.insert(name, Arc::clone(&value));
                            value
                        }
                    };
                    // Symbols in a parameter's type take their values from it.
                    let fits = value.dtype() == node.ty.dtype
                        && unify(&node.ty.shape, value.shape(), &mut param_bindings).is_ok();
                    if !fits {
                        return Err(ExecError::ParamType {
                            name: name.clone(),
                            declared: node.ty.to_string(),
                            actual: format!("{}{:?}", value.dtype(), value.shape()),
                        });
                    }
                    value
                }
                Op::Constant(Constant { value }) => value.clone(),
                _ => continue,
            };
            weight_index.insert(id, weights.len());
            weights.push(value);
        }
        let isa = match options.isa {
            Some(isa) => Target::detected().with_isa(isa),
            None => Target::from_env(),
        }
        .map_err(CodegenError::from)?
        .isa;
        // Weights are packed for the GEMM candidate plans of this tier use;
        // those with a symbolic shape wait for a plan that binds it.
        let layout = candidates::gemm_for(isa).pack_layout();
        let to_pack = gemm_weights(graph, &weights, &weight_index)?;
        let prepacked = pack_weights(to_pack, layout);
        let conv_weights = graph
            .node_ids()
            .filter_map(|id| {
                let weight = |w: NodeId| weight_index.get(&w).map(|&i| weights[i].clone());
                let laid_out = candidates::conv_gemm_weights(graph, id, weight)?;
                Some((id, Arc::from(laid_out)))
            })
            .collect();
        let mut depthwise_taps = HashMap::new();
        for id in graph.node_ids() {
            let weight = |w: NodeId| weight_index.get(&w).map(|&i| weights[i].clone());
            if let Some(taps) = candidates::nhwc_depthwise_taps(graph, id, weight) {
                depthwise_taps.insert(id, Arc::from(taps));
            }
        }
        // Like GEMM weights, spread over the cores. Only the convolutions
        // that will be packed count: a dense layer's weight would make the
        // list look like work worth threads.
        let nhwc_convs: Vec<(NodeId, usize)> = graph
            .node_ids()
            .filter(|&id| candidates::is_nhwc_gemm_conv(graph, id))
            .filter_map(|id| {
                let w = *weight_index.get(graph.inputs(id).get(1)?)?;
                Some((id, weights[w].len()))
            })
            .collect();
        let nhwc_conv_weights = crate::runtime::parallel::map_by_cost(
            nhwc_convs,
            |&(_, len)| len,
            |(id, _)| {
                let weight = |w: NodeId| weight_index.get(&w).map(|&i| weights[i].clone());
                candidates::nhwc_conv_weights(graph, id, weight, layout)
                    .map(|packed| (id, Arc::from(packed)))
            },
        )
        .into_iter()
        .flatten()
        .collect();
        let threads = if options.threads <= 1 {
            Threads::single()
        } else {
            Threads::new(options.threads)?
        };
        let samples = samples::sample_axis(graph, &param_bindings);
        Ok(CompiledModel {
            graph: graph.clone(),
            weights,
            weight_index,
            prepacked,
            conv_weights,
            depthwise_taps,
            nhwc_conv_weights,
            isa,
            only_kernel: None,
            threads,
            param_bindings,
            plans: Mutex::new(Vec::new()),
            budget: MemoryBudget::default(),
            samples,
            sample_split: SampleSplit::default(),
            banding: Banding::default(),
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The kernel tier this model was compiled for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// How many plans (one per distinct set of input shapes) have been
    /// built so far: for tests and diagnostics.
    pub fn plan_count(&self) -> usize {
        self.plans.lock().expect("plan cache lock").len()
    }

    /// How many distinct kernel libraries those plans use (a plan that
    /// needs no new kernel shares an earlier plan's): for tests and
    /// diagnostics.
    pub fn kernel_library_count(&self) -> usize {
        let plans = self.plans.lock().expect("plan cache lock");
        let mut distinct: Vec<&Arc<KernelSet>> = Vec::new();
        for cached in plans.iter() {
            if !distinct
                .iter()
                .any(|k| Arc::ptr_eq(k, &cached.plan.kernels))
            {
                distinct.push(&cached.plan.kernels);
            }
        }
        distinct.len()
    }

    /// How many kernel sets this model's plans compiled; the others share a
    /// set compiled earlier by a plan of this or another model in the
    /// process. For tests and diagnostics.
    pub fn compiled_kernel_sets(&self) -> usize {
        let plans = self.plans.lock().expect("plan cache lock");
        plans.iter().filter(|c| c.plan.compiled_kernels).count()
    }

    /// Input names in declaration order (the order `run_into` takes them).
    pub fn input_names(&self) -> Vec<&str> {
        self.graph
            .inputs
            .iter()
            .map(|&id| self.graph.input_name(id))
            .collect()
    }

    /// The plan for these inputs: cached by exact input dtypes and shapes;
    /// built (and its kernels compiled) on first sight.
    fn plan_for(&self, inputs: &[&Tensor], fixed: &Bindings) -> Result<Arc<CachedPlan>, ExecError> {
        if inputs.len() != self.graph.inputs.len() {
            return Err(ExecError::InputCount {
                expected: self.graph.inputs.len(),
                names: self.input_names().join(", "),
                got: inputs.len(),
            });
        }
        let mut plans = self.plans.lock().expect("plan cache lock");
        if let Some(cached) =
            find_plan(&plans, inputs.iter().map(|t| (t.dtype(), t.shape())), fixed)
        {
            return Ok(cached);
        }
        let shapes: Vec<(DType, Vec<usize>)> = inputs
            .iter()
            .map(|t| (t.dtype(), t.shape().to_vec()))
            .collect();
        let (plan, packed_weights) = self.build_plan(&plans, &shapes, fixed)?;
        // A batch that runs better sample by sample gets its batch-1 plan
        // (found or built) beside its own.
        let by_sample = match self.split_shapes(&plan, &shapes, fixed) {
            Some((sample_shapes, sample_fixed)) => {
                let given = sample_shapes.iter().map(|(d, s)| (*d, s.as_slice()));
                Some(match find_plan(&plans, given, &sample_fixed) {
                    Some(cached) => cached,
                    None => {
                        let (plan, packed_weights) =
                            self.build_plan(&plans, &sample_shapes, &sample_fixed)?;
                        let cached = Arc::new(CachedPlan::new(plan, packed_weights, None));
                        plans.push(cached.clone());
                        cached
                    }
                })
            }
            None => None,
        };
        let cached = Arc::new(CachedPlan::new(plan, packed_weights, by_sample));
        plans.push(cached.clone());
        Ok(cached)
    }

    /// A new plan for inputs of these dtypes and shapes, with the packed
    /// weights it needs (the model's, earlier plans', and those it packs).
    fn build_plan(
        &self,
        plans: &[Arc<CachedPlan>],
        shapes: &[(DType, Vec<usize>)],
        fixed: &Bindings,
    ) -> Result<(Plan, HashMap<NodeId, Arc<PackedB>>), ExecError> {
        let named: Vec<(String, DType, Vec<usize>)> = self
            .input_names()
            .iter()
            .zip(shapes)
            .map(|(n, (dtype, shape))| (n.to_string(), *dtype, shape.clone()))
            .collect();
        // `fixed` wins over what the parameters say; a contradiction is
        // reported when the plan checks every weight against its type.
        let mut known = self.param_bindings.clone();
        known.extend(fixed.iter().map(|(k, v)| (k.clone(), *v)));
        let bindings = bind_inputs(&self.graph, &named, &known).map_err(ExecError::Bind)?;
        let concrete = concretize(&self.graph, &bindings).map_err(ExecError::Bind)?;
        let layout = candidates::gemm_for(self.isa).pack_layout();
        let mut packed_weights = self.prepacked.clone();
        let mut to_pack = Vec::new();
        // Bytes of packed weights this plan holds beyond the model's.
        let mut bound_bytes = 0usize;
        for (id, matrix) in gemm_weights(&concrete, &self.weights, &self.weight_index)? {
            if packed_weights.contains_key(&id) {
                continue;
            }
            let (k, n) = (matrix.rows(), matrix.cols());
            bound_bytes =
                bound_bytes.saturating_add(packed_b_len_for(k, n, layout).saturating_mul(4));
            let earlier = plans
                .iter()
                .filter_map(|cached| cached.packed_weights.get(&id))
                .find(|packed| (packed.k(), packed.n()) == (k, n));
            match earlier {
                Some(packed) => {
                    packed_weights.insert(id, packed.clone());
                }
                None => to_pack.push((id, matrix)),
            }
        }
        let packed_ids: HashSet<NodeId> = packed_weights
            .keys()
            .chain(to_pack.iter().map(|(id, _)| id))
            .copied()
            .collect();
        let planner = Planner {
            graph: &concrete,
            bindings: &bindings,
            weights: &self.weights,
            weight_index: &self.weight_index,
            prepacked: &packed_ids,
            conv_weights: &self.conv_weights,
            depthwise_taps: &self.depthwise_taps,
            nhwc_conv_weights: &self.nhwc_conv_weights,
            isa: self.isa,
            only: self.only_kernel,
            banding: self.banding,
            threads: self.threads.count(),
        };
        // Kernel sets of earlier plans, newest first, each once.
        let mut reusable: Vec<Arc<KernelSet>> = Vec::new();
        for cached in plans.iter().rev() {
            if !reusable
                .iter()
                .any(|k| Arc::ptr_eq(k, &cached.plan.kernels))
            {
                reusable.push(cached.plan.kernels.clone());
            }
        }
        let plan = planner.build(shapes.to_vec(), &reusable)?;
        self.check_budget(&concrete, &plan, bound_bytes)?;
        packed_weights.extend(pack_weights(to_pack, layout));
        Ok((plan, packed_weights))
    }

    /// Plans every node with the kernel candidate `name` (one of
    /// [`candidate_names`]) when it takes the node, else on the interpreter;
    /// `None` restores the cheapest choice. For the candidates' conformance
    /// tests. Plans made before are dropped.
    pub fn set_only_kernel(&mut self, name: Option<&'static str>) {
        self.only_kernel = name;
        self.drop_plans();
    }

    /// Forgets every plan (a setting they were made with changed).
    fn drop_plans(&mut self) {
        self.plans
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Replaces the memory budget (the default is a share of physical RAM)
    /// that each new plan's arena, boxed values and weights must fit.
    pub fn set_memory_budget(&mut self, budget: MemoryBudget) {
        self.budget = budget;
    }

    /// Arena, boxed slots, the weights already held and `packed_bytes` of
    /// weights packed for this plan must fit the budget before the first
    /// run allocates the arena.
    fn check_budget(
        &self,
        concrete: &Graph,
        plan: &Plan,
        packed_bytes: usize,
    ) -> Result<(), BudgetError> {
        let weights = self.weights.iter().fold(0usize, |acc, w| {
            acc.saturating_add(w.len().saturating_mul(w.dtype().size_bytes()))
        });
        let weights = self
            .conv_weights
            .values()
            .chain(self.depthwise_taps.values())
            .fold(weights, |acc, w| {
                acc.saturating_add(w.len().saturating_mul(4))
            });
        let weights = self
            .nhwc_conv_weights
            .values()
            .flat_map(|groups| groups.iter())
            .fold(weights, |acc, b| {
                acc.saturating_add(b.as_ref().data().len().saturating_mul(4))
            });
        let needed = plan
            .arena_len
            .saturating_mul(4)
            .saturating_add(boxed_bytes(plan))
            .saturating_add(weights)
            .saturating_add(packed_bytes);
        let mut sizes: Vec<(String, usize)> = crate::runtime::budget::tensor_sizes(concrete)
            .into_iter()
            .map(|(_, what, bytes)| (what, bytes))
            .collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1));
        sizes.truncate(3);
        self.budget.check_total("running the model", needed, &sizes)
    }

    /// Plans (and compiles kernels) for these inputs without running.
    pub fn prepare(&self, inputs: &[&Tensor], fixed: &Bindings) -> Result<PlanInfo, ExecError> {
        let cached = self.plan_for(inputs, fixed)?;
        let plan = match &cached.by_sample {
            Some(sample) => &sample.plan,
            None => &cached.plan,
        };
        Ok(PlanInfo {
            by_sample: cached.by_sample.is_some(),
            arena_bytes: plan.arena_len * 4 + boxed_bytes(plan),
            steps: plan.steps.len(),
            native_steps: plan.native_steps,
            step_kernels: plan.step_kernels.clone(),
            kernels: plan.kernels.library.kernels().len(),
            compiled_kernels: plan.compiled_kernels,
            kernel_compile: plan.kernel_compile,
            kernel_set: Arc::clone(&plan.kernels),
        })
    }

    /// Runs on named inputs; returns outputs in declaration order.
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<Vec<(String, Tensor)>, ExecError> {
        self.run_named(inputs, &Bindings::new())
    }

    /// [`CompiledModel::run`] with symbols fixed up front (`--bind`).
    pub fn run_named(
        &self,
        inputs: &HashMap<String, Tensor>,
        fixed: &Bindings,
    ) -> Result<Vec<(String, Tensor)>, ExecError> {
        let ordered = self.ordered_inputs(inputs)?;
        let mut outputs = Vec::new();
        self.run_into(&ordered, fixed, &mut outputs)?;
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .zip(outputs)
            .collect())
    }

    /// Named inputs in declaration order (the order `run_into` and `prepare`
    /// take), reporting every missing and unknown name at once.
    pub fn ordered_inputs<'t>(
        &self,
        inputs: &'t HashMap<String, Tensor>,
    ) -> Result<Vec<&'t Tensor>, ExecError> {
        let mut ordered = Vec::with_capacity(self.graph.inputs.len());
        let mut problems = Vec::new();
        for &id in &self.graph.inputs {
            let name = self.graph.input_name(id);
            match inputs.get(name) {
                Some(t) => ordered.push(t),
                None => problems.push(BindError::MissingInput {
                    name: name.to_string(),
                    declared: self.graph.node(id).ty.to_string(),
                }),
            }
        }
        let declared: Vec<&str> = self.input_names();
        let mut unknown: Vec<&String> = inputs
            .keys()
            .filter(|name| !declared.contains(&name.as_str()))
            .collect();
        unknown.sort();
        for name in unknown {
            problems.push(BindError::UnknownInput {
                name: name.clone(),
                known: declared.join(", "),
            });
        }
        if problems.is_empty() {
            Ok(ordered)
        } else {
            Err(ExecError::Bind(problems))
        }
    }

    /// Runs on inputs in declaration order, writing outputs into `outputs`
    /// (resized and reused: with unchanged shapes nothing is allocated).
    pub fn run_into(
        &self,
        inputs: &[&Tensor],
        fixed: &Bindings,
        outputs: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        let cached = self.plan_for(inputs, fixed)?;
        match &cached.by_sample {
            Some(sample) => self.run_by_sample(&cached, sample, inputs, outputs),
            None => self.run_plan(&cached, inputs, outputs),
        }
    }

    /// Runs `cached`'s plan on inputs of its shapes (see `run_into`).
    fn run_plan(
        &self,
        cached: &CachedPlan,
        inputs: &[&Tensor],
        outputs: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        let plan = &cached.plan;
        let arena = cached.arenas.lock().expect("arena pool lock").pop();
        let mut arena = match arena {
            Some(arena) => arena,
            None => Arena {
                redirects: Vec::with_capacity(plan.outputs.len()),
                f32: alloc_arena(plan.arena_len)?,
                boxed: plan
                    .boxed
                    .iter()
                    .map(|t| Tensor::zeros(t.dtype, t.known_shape().expect("concrete")))
                    .collect(),
            },
        };
        // Outputs get their dtype and shape first, so that the step computing
        // an f32 output in the arena writes it straight into the caller's
        // tensor (no copy afterwards). That is sound because an output's
        // range is live from its step to the end of the run: the only other
        // values placed exactly there are its views (same storage) or values
        // dead before it is written, and moving those to another buffer of
        // the same size changes nothing. The same range listed twice (one
        // value output under two names) is redirected once and copied after.
        shape_outputs(plan, outputs);
        arena.redirects.clear();
        for (i, ((_, loc, _, _), out)) in plan.outputs.iter().zip(outputs.iter_mut()).enumerate() {
            if let (Loc::Arena { offset, len }, Some(data)) = (*loc, out.as_f32_mut()) {
                let taken = arena
                    .redirects
                    .iter()
                    .any(|r| r.offset == offset && r.len == len);
                if !taken {
                    arena.redirects.push(Redirect {
                        output: i,
                        offset,
                        len,
                        address: data.as_mut_ptr() as usize,
                    });
                }
            }
        }
        let result = self.execute(plan, &cached.packed_weights, inputs, &mut arena);
        if result.is_ok() {
            for (i, (_, loc, _, _)) in plan.outputs.iter().enumerate() {
                if arena.redirects.iter().any(|r| r.output == i) {
                    continue;
                }
                let (before, rest) = outputs.split_at_mut(i);
                let same_value = arena.redirects.iter().find(|r| {
                    Loc::Arena {
                        offset: r.offset,
                        len: r.len,
                    } == *loc
                });
                match (same_value, rest[0].as_f32_mut()) {
                    (Some(r), Some(dst)) => dst.copy_from_slice(
                        before[r.output]
                            .as_f32()
                            .expect("redirected outputs are f32"),
                    ),
                    _ => self.copy_out(*loc, inputs, &arena, &mut rest[0]),
                }
            }
        }
        arena.redirects.clear();
        cached.arenas.lock().expect("arena pool lock").push(arena);
        result
    }

    /// Copies an output's value into `out`, which already has the output's
    /// dtype and shape. A value living outside the arena (an input, a
    /// weight, a boxed slot) may be a reshape of it: only its data is taken.
    /// f32 values are copied in place; other dtypes are cloned (they are
    /// never model outputs on the allocation-free path).
    fn copy_out(&self, loc: Loc, inputs: &[&Tensor], arena: &Arena, out: &mut Tensor) {
        let source: &Tensor = match loc {
            Loc::Arena { offset, len } => {
                out.as_f32_mut()
                    .expect("arena values are f32")
                    .copy_from_slice(&arena.f32.as_slice()[offset..offset + len]);
                return;
            }
            Loc::Input(i) => inputs[i],
            Loc::Weight(w) => &self.weights[w],
            Loc::Boxed(b) => &arena.boxed[b],
        };
        match (out.as_f32_mut(), source.as_f32()) {
            (Some(dst), Some(src)) => dst.copy_from_slice(src),
            _ => *out = Tensor::new(out.shape().to_vec(), source.data().clone()),
        }
    }

    /// Runs the plan's steps; a failure names the node whose step failed.
    fn execute(
        &self,
        plan: &Plan,
        packed_weights: &HashMap<NodeId, Arc<PackedB>>,
        inputs: &[&Tensor],
        arena: &mut Arena,
    ) -> Result<(), ExecError> {
        let mut current = 0;
        self.execute_steps(plan, packed_weights, inputs, arena, &mut current)
            .map_err(|e| {
                let node = plan.step_nodes[current];
                ExecError::AtNode {
                    node,
                    op: self.graph.node(node).op.name(),
                    span: self.graph.node(node).span,
                    source: Box::new(e),
                }
            })
    }

    fn execute_steps(
        &self,
        plan: &Plan,
        packed_weights: &HashMap<NodeId, Arc<PackedB>>,
        inputs: &[&Tensor],
        arena: &mut Arena,
        current: &mut usize,
    ) -> Result<(), ExecError> {
        let threads = &self.threads;
        // Parked pool workers start spinning while the first steps run.
        threads.wake();
        let mem = Memory::new(arena, inputs, &self.weights);
        for (index, step) in plan.steps.iter().enumerate() {
            *current = index;
            match step {
                Step::Gemm {
                    kernel,
                    a,
                    m,
                    k,
                    n,
                    transpose_a,
                    b,
                    bias,
                    residual,
                    out,
                } => {
                    let a = if *transpose_a {
                        MatrixRef::transposed(mem.f32(*a), *m, *k)?
                    } else {
                        MatrixRef::row_major(mem.f32(*a), *m, *k)?
                    };
                    let packed: PackedBRef<'_> = match b {
                        GemmB::Prepacked(node) => PackedB::as_ref(&packed_weights[node]),
                        GemmB::PerRun {
                            b,
                            transposed,
                            scratch,
                        } => {
                            let data = mem.f32(*b);
                            let matrix = if *transposed {
                                MatrixRef::transposed(data, *k, *n)?
                            } else {
                                MatrixRef::row_major(data, *k, *n)?
                            };
                            PackedBRef::pack_into_for(
                                &matrix,
                                mem.f32_mut(*scratch),
                                plan.kernels.library.pack_layout(),
                            )?
                        }
                    };
                    let args = GemmArgs {
                        a,
                        b: packed,
                        bias: bias.map(|l| mem.f32(l)),
                        residual: residual.map(|l| mem.f32(l)),
                        c: mem.f32_mut(*out),
                    };
                    plan.kernels.library.gemm(*kernel, args, threads)?;
                }
                Step::BatchedMatMul {
                    kernel,
                    a,
                    a_shape,
                    transpose_a,
                    b,
                    b_shape,
                    transpose_b,
                    out,
                } => {
                    let args = BatchedMatmulArgs {
                        a: mem.f32(*a),
                        a_shape,
                        transpose_a: *transpose_a,
                        b: mem.f32(*b),
                        b_shape,
                        transpose_b: *transpose_b,
                        c: mem.f32_mut(*out),
                    };
                    plan.kernels
                        .library
                        .batched_matmul(*kernel, args, threads)?;
                }
                Step::Elementwise {
                    kernel,
                    inputs: operands,
                    out_shape,
                    out,
                } => {
                    let mut views = [TensorView {
                        data: &[],
                        shape: &[],
                    }; MAX_OPERANDS];
                    for (slot, (loc, shape)) in views.iter_mut().zip(operands) {
                        *slot = TensorView {
                            data: mem.f32(*loc),
                            shape,
                        };
                    }
                    let args = ElementwiseArgs {
                        out: mem.f32_mut(*out),
                        out_shape,
                        inputs: &views[..operands.len()],
                    };
                    plan.kernels.library.elementwise(*kernel, args, threads)?;
                }
                Step::Row {
                    kernel,
                    x,
                    rows,
                    row_len,
                    gain,
                    bias,
                    out,
                } => {
                    let args = RowArgs {
                        x: mem.f32(*x),
                        rows: *rows,
                        row_len: *row_len,
                        out: mem.f32_mut(*out),
                        gain: gain.map(|l| mem.f32(l)),
                        bias: bias.map(|l| mem.f32(l)),
                    };
                    plan.kernels.library.row_kernel(*kernel, args, threads)?;
                }
                Step::Copy { x, walk, out } => {
                    walk.copy_on(mem.f32(*x), mem.f32_mut(*out), threads)
                }
                Step::Concat { parts, outer, out } => {
                    let mut views: [(&[f32], usize); MAX_OPERANDS] = [(&[], 0); MAX_OPERANDS];
                    for (slot, (loc, block)) in views.iter_mut().zip(parts) {
                        *slot = (mem.f32(*loc), *block);
                    }
                    copy::concat(&views[..parts.len()], *outer, mem.f32_mut(*out));
                }
                Step::Gather {
                    table,
                    outer,
                    size,
                    inner,
                    ids,
                    out,
                    ..
                } => {
                    let size = *size;
                    let check = |id: i64| match copy::gather_row(id, size) {
                        Some(_) => Ok(()),
                        None => Err(ExecError::GatherIndex { id, size }),
                    };
                    let row = |id: i64| copy::gather_row(id, size).unwrap_or(0);
                    let (table, out) = (mem.f32(*table), mem.f32_mut(*out));
                    match mem.tensor(*ids).data() {
                        TensorData::I64(v) => {
                            v.iter().try_for_each(|&id| check(id))?;
                            copy::gather(
                                table,
                                *outer,
                                size,
                                *inner,
                                v.iter().map(|&i| row(i)),
                                out,
                            );
                        }
                        TensorData::I32(v) => {
                            v.iter().try_for_each(|&id| check(id as i64))?;
                            copy::gather(
                                table,
                                *outer,
                                size,
                                *inner,
                                v.iter().map(|&i| row(i64::from(i))),
                                out,
                            );
                        }
                        TensorData::F32(_) | TensorData::Bool(_) => {
                            unreachable!("gather ids are integers (shape rule)")
                        }
                    }
                }
                Step::CastToF32 { x, out } => {
                    let out = mem.f32_mut(*out);
                    match mem.tensor(*x).data() {
                        TensorData::I64(v) => {
                            out.iter_mut().zip(v).for_each(|(o, &x)| *o = x as f32)
                        }
                        TensorData::I32(v) => {
                            out.iter_mut().zip(v).for_each(|(o, &x)| *o = x as f32)
                        }
                        TensorData::F32(v) => out.copy_from_slice(v),
                        TensorData::Bool(v) => out
                            .iter_mut()
                            .zip(v)
                            .for_each(|(o, &x)| *o = x as u8 as f32),
                    }
                }
                Step::Reduce { x, reduction, out } => {
                    reduction.run(mem.f32(*x), mem.f32_mut(*out))?
                }
                Step::Conv {
                    kernel,
                    geometry,
                    x,
                    weights,
                    with_bias,
                    residual,
                    scratch,
                    out,
                } => {
                    let args = ConvArgs {
                        x: mem.f32(*x),
                        weights,
                        with_bias: *with_bias,
                        residual: residual.map(|l| mem.f32(l)),
                        scratch: mem.f32_mut(*scratch),
                        out: mem.f32_mut(*out),
                    };
                    conv2d_gemm(&plan.kernels.library, *kernel, geometry, args, threads)?;
                }
                Step::ConvNhwc {
                    kernel,
                    geometry,
                    x,
                    weights,
                    bias,
                    residual,
                    out,
                } => {
                    let args = NhwcConvArgs {
                        x: mem.f32(*x),
                        weights,
                        bias: bias.map(|l| mem.f32(l)),
                        residual: residual.map(|l| mem.f32(l)),
                        out: mem.f32_mut(*out),
                    };
                    conv2d_nhwc(&plan.kernels.library, *kernel, geometry, args, threads)?;
                }
                Step::Window {
                    op,
                    geometry,
                    x,
                    weights,
                    bias,
                    post,
                    residual,
                    out,
                } => {
                    let args = WindowArgs {
                        x: mem.f32(*x),
                        weights: weights.map(|l| mem.f32(l)),
                        bias: bias.map(|l| mem.f32(l)),
                        post: *post,
                        residual: residual.map(|l| mem.f32(l)),
                        out: mem.f32_mut(*out),
                    };
                    window2d(plan.kernels.library.isa(), *op, geometry, args, threads)?;
                }
                Step::WindowNhwc {
                    op,
                    geometry,
                    x,
                    taps,
                    bias,
                    post,
                    residual,
                    out,
                } => {
                    let taps = match taps {
                        None => None,
                        Some(NhwcTaps::Packed(taps)) => Some(&taps[..]),
                        Some(NhwcTaps::PerRun { weights, scratch }) => {
                            let packed = mem.f32_mut(*scratch);
                            let [kh, kw] = geometry.kernel;
                            pack_depthwise_taps(
                                mem.f32(*weights),
                                geometry.in_channels,
                                kh * kw,
                                packed,
                            )?;
                            Some(&*packed)
                        }
                    };
                    let args = NhwcWindowArgs {
                        x: mem.f32(*x),
                        taps,
                        bias: bias.map(|l| mem.f32(l)),
                        post: *post,
                        residual: residual.map(|l| mem.f32(l)),
                        out: mem.f32_mut(*out),
                    };
                    window2d_nhwc(plan.kernels.library.isa(), *op, geometry, args, threads)?;
                }
                Step::Banded {
                    producer,
                    consumer,
                    band,
                    buffers,
                } => {
                    let (
                        Step::ConvNhwc {
                            kernel,
                            geometry: conv_geometry,
                            x: conv_x,
                            weights,
                            bias: conv_bias,
                            residual: conv_residual,
                            out: _,
                        },
                        Step::WindowNhwc {
                            op,
                            geometry,
                            x: _,
                            taps: Some(NhwcTaps::Packed(taps)),
                            bias,
                            post,
                            residual,
                            out,
                        },
                    ) = (&**producer, &**consumer)
                    else {
                        unreachable!("banded steps pair a convolution with a depthwise one")
                    };
                    let producer = banded::Producer {
                        library: &plan.kernels.library,
                        gemm: *kernel,
                        geometry: conv_geometry,
                        x: mem.f32(*conv_x),
                        weights,
                        bias: conv_bias.map(|l| mem.f32(l)),
                        residual: conv_residual.map(|l| mem.f32(l)),
                    };
                    let consumer = banded::Consumer {
                        op: *op,
                        geometry,
                        args: NhwcWindowArgs {
                            x: &[],
                            taps: Some(taps),
                            bias: bias.map(|l| mem.f32(l)),
                            post: *post,
                            residual: residual.map(|l| mem.f32(l)),
                            out: mem.f32_mut(*out),
                        },
                    };
                    banded::run_banded(producer, consumer, band, mem.f32_mut(*buffers), threads)?;
                }
                Step::BatchNorm {
                    eps,
                    x,
                    stats: [mean, var, gain, bias],
                    channels,
                    inner,
                    out,
                } => {
                    let args = BatchNormArgs {
                        x: mem.f32(*x),
                        mean: mem.f32(*mean),
                        var: mem.f32(*var),
                        gain: mem.f32(*gain),
                        bias: mem.f32(*bias),
                        out: mem.f32_mut(*out),
                    };
                    batch_norm(args, *eps, *channels, *inner, threads)?;
                }
                Step::Fallback {
                    op,
                    inputs: operands,
                    out_ty,
                    out,
                    ..
                } => {
                    let values: Vec<Tensor> = operands
                        .iter()
                        .map(|(loc, shape)| match loc {
                            Loc::Arena { .. } => Tensor::f32(shape.clone(), mem.f32(*loc).to_vec()),
                            // An operand may be a view (reshape) of the stored tensor.
                            other => {
                                let stored = mem.tensor(*other);
                                if stored.shape() == shape.as_slice() {
                                    stored.clone()
                                } else {
                                    Tensor::new(shape.clone(), stored.data().clone())
                                }
                            }
                        })
                        .collect();
                    let refs: Vec<&Tensor> = values.iter().collect();
                    let result = crate::interp::eval_node(op, &refs, out_ty)?;
                    mem.store(*out, result);
                }
            }
        }
        Ok(())
    }
}

/// A run's view of memory: the arena's f32 buffer and boxed slots, the
/// inputs and the weights.
///
/// Arena ranges and boxed slots are handed out through raw pointers because
/// one step reads some ranges while writing another of the same buffer. The
/// memory plan is what makes that sound: every value live at a step has its
/// own range (`memory::place`), and a step's output is never one of its
/// inputs, so no `&mut` handed out here aliases a `&` in use.
struct Memory<'r> {
    f32_base: *mut f32,
    f32_len: usize,
    boxed_base: *mut Tensor,
    boxed_len: usize,
    inputs: &'r [&'r Tensor],
    weights: &'r [Arc<Tensor>],
    redirects: &'r [Redirect],
    _arena: std::marker::PhantomData<&'r mut Arena>,
}

impl<'r> Memory<'r> {
    fn new(
        arena: &'r mut Arena,
        inputs: &'r [&'r Tensor],
        weights: &'r [Arc<Tensor>],
    ) -> Memory<'r> {
        let Arena {
            f32,
            boxed,
            redirects,
        } = arena;
        let f32 = f32.as_mut_slice();
        Memory {
            f32_base: f32.as_mut_ptr(),
            f32_len: f32.len(),
            boxed_base: boxed.as_mut_ptr(),
            boxed_len: boxed.len(),
            redirects,
            inputs,
            weights,
            _arena: std::marker::PhantomData,
        }
    }

    /// Where an arena range's storage is this run: a redirected output's
    /// tensor, else the arena.
    fn arena_ptr(&self, offset: usize, len: usize) -> *mut f32 {
        match self
            .redirects
            .iter()
            .find(|r| r.offset == offset && r.len == len)
        {
            Some(r) => r.address as *mut f32,
            None => {
                assert!(offset + len <= self.f32_len, "arena range out of bounds");
                // SAFETY: in bounds (checked above).
                unsafe { self.f32_base.add(offset) }
            }
        }
    }

    /// An f32 value, wherever it lives.
    fn f32(&self, loc: Loc) -> &'r [f32] {
        match loc {
            Loc::Arena { offset, len } => {
                // SAFETY: `len` floats at the pointer (an arena range checked
                // in bounds, or an output tensor of exactly `len` floats that
                // `run_into` borrows exclusively for the run); see the type's
                // comment on aliasing.
                unsafe { std::slice::from_raw_parts(self.arena_ptr(offset, len), len) }
            }
            other => self
                .tensor(other)
                .as_f32()
                .expect("the plan reads only f32 values as f32"),
        }
    }

    /// A step's output range in the arena.
    #[allow(clippy::mut_from_ref)]
    fn f32_mut(&self, loc: Loc) -> &'r mut [f32] {
        let Loc::Arena { offset, len } = loc else {
            unreachable!("f32 steps write to the arena")
        };
        // SAFETY: as in `f32`.
        unsafe { std::slice::from_raw_parts_mut(self.arena_ptr(offset, len), len) }
    }

    /// A value kept as a tensor (inputs, weights, boxed slots).
    fn tensor(&self, loc: Loc) -> &'r Tensor {
        match loc {
            Loc::Input(i) => self.inputs[i],
            Loc::Weight(w) => &self.weights[w],
            Loc::Boxed(b) => {
                assert!(b < self.boxed_len, "boxed slot out of bounds");
                // SAFETY: in bounds; a boxed slot is written only by its own node's step.
                unsafe { &*self.boxed_base.add(b) }
            }
            Loc::Arena { .. } => unreachable!("arena values are read as f32 slices"),
        }
    }

    /// Stores a fallback step's result.
    fn store(&self, loc: Loc, value: Tensor) {
        match loc {
            Loc::Arena { .. } => self
                .f32_mut(loc)
                .copy_from_slice(value.as_f32().expect("an f32 node gives f32")),
            Loc::Boxed(b) => {
                assert!(b < self.boxed_len, "boxed slot out of bounds");
                // SAFETY: in bounds; no reference to this slot is live while its node runs.
                unsafe { *self.boxed_base.add(b) = value }
            }
            Loc::Input(_) | Loc::Weight(_) => {
                unreachable!("steps write to the arena or a boxed slot")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_starts_on_a_cache_line_and_one_larger_than_memory_is_an_error() {
        for len in [0usize, 1000, 1 << 20] {
            let arena = alloc_arena(len).unwrap();
            assert_eq!(arena.as_slice().len(), len);
            assert_eq!(arena.as_slice().as_ptr() as usize % 64, 0, "{len} floats");
        }
        for len in [usize::MAX / 2, usize::MAX] {
            assert!(matches!(
                alloc_arena(len),
                Err(ExecError::OutOfMemory { .. })
            ));
        }
    }
}
