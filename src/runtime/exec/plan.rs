//! From a concrete graph to a plan: one step per node, a kernel library with
//! the kernels those steps call, and an arena layout.
//!
//! Every decision that depends on shapes is made here, once per set of
//! input shapes; running a plan only follows it.

use crate::ir::ops::{Cast, FusedLinear, MatMul, Param};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::banded::{banded_pairs, Band, BandedPairs, Banding};
use super::candidates::{
    conv_scratch, gemm_for, nhwc_taps_scratch, Interpreter, KernelCandidate, NodeSite, CANDIDATES,
};
use super::copy::{Reduction, Strided, MAX_RANK};
use super::memory::{place, Lifetime};
use super::ExecError;
use crate::codegen::conv::{PostActivation, WindowGeometry, WindowOp};
use crate::codegen::{
    gemm_edge_mask, gemm_row_mask, packed_b_len_for, CodegenError, CodegenOptions, ElementwiseId,
    Epilogue, GemmId, InnerStride, Isa, KernelLibrary, KernelLibraryBuilder, PackedB, RowKernelId,
    RowOp,
};
use crate::ir::{Bindings, DType, ElementwiseExpr, Graph, NodeId, Op, TensorType};
use crate::tensor::Tensor;

/// Steps read at most this many operands natively (views live on the stack).
pub const MAX_OPERANDS: usize = 16;

/// Where a value lives while a plan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// The i-th model input, read in place.
    Input(usize),
    /// A parameter or constant of the compiled model, read in place.
    Weight(usize),
    /// `len` floats at `offset` in the run's f32 arena.
    Arena { offset: usize, len: usize },
    /// A non-f32 value (ids, masks) or a fallback result, kept as a tensor.
    Boxed(usize),
}

/// The right operand of a GEMM: packed once when the model was compiled,
/// or packed per run into arena scratch.
#[derive(Clone, Debug)]
pub enum GemmB {
    Prepacked(NodeId),
    PerRun {
        b: Loc,
        transposed: bool,
        scratch: Loc,
    },
}

#[derive(Clone, Debug)]
pub enum Step {
    Gemm {
        kernel: GemmId,
        a: Loc,
        m: usize,
        k: usize,
        n: usize,
        transpose_a: bool,
        b: GemmB,
        bias: Option<Loc>,
        residual: Option<Loc>,
        out: Loc,
    },
    BatchedMatMul {
        kernel: GemmId,
        a: Loc,
        a_shape: Vec<usize>,
        transpose_a: bool,
        b: Loc,
        b_shape: Vec<usize>,
        transpose_b: bool,
        out: Loc,
    },
    Elementwise {
        kernel: ElementwiseId,
        inputs: Vec<(Loc, Vec<usize>)>,
        out_shape: Vec<usize>,
        out: Loc,
    },
    Row {
        kernel: RowKernelId,
        x: Loc,
        rows: usize,
        row_len: usize,
        gain: Option<Loc>,
        bias: Option<Loc>,
        out: Loc,
    },
    Copy {
        x: Loc,
        walk: Strided,
        out: Loc,
    },
    Concat {
        parts: Vec<(Loc, usize)>,
        outer: usize,
        out: Loc,
    },
    Gather {
        table: Loc,
        outer: usize,
        size: usize,
        inner: usize,
        ids: Loc,
        out: Loc,
    },
    CastToF32 {
        x: Loc,
        out: Loc,
    },
    Reduce {
        x: Loc,
        reduction: Reduction,
        out: Loc,
    },
    /// A convolution as GEMMs (`codegen::conv::conv2d_gemm`).
    Conv {
        kernel: GemmId,
        geometry: WindowGeometry,
        x: Loc,
        /// `[O, K (+ 1 bias column)]`, laid out when the model was compiled.
        weights: Arc<[f32]>,
        with_bias: bool,
        residual: Option<Loc>,
        scratch: Loc,
        out: Loc,
    },
    /// An NHWC convolution as GEMMs (`codegen::conv::conv2d_nhwc`).
    ConvNhwc {
        kernel: GemmId,
        geometry: WindowGeometry,
        x: Loc,
        /// One packed B per group, packed when the model was compiled.
        weights: Arc<[PackedB]>,
        bias: Option<Loc>,
        residual: Option<Loc>,
        out: Loc,
    },
    /// Depthwise convolution or pooling (`codegen::conv::window2d`).
    Window {
        op: WindowOp,
        geometry: WindowGeometry,
        x: Loc,
        weights: Option<Loc>,
        bias: Option<Loc>,
        post: Option<PostActivation>,
        residual: Option<Loc>,
        out: Loc,
    },
    /// Depthwise convolution or pooling over NHWC
    /// (`codegen::window_nhwc::window2d_nhwc`).
    WindowNhwc {
        op: WindowOp,
        geometry: WindowGeometry,
        x: Loc,
        /// Depthwise: the taps, `[kh * kw][C]`.
        taps: Option<NhwcTaps>,
        bias: Option<Loc>,
        post: Option<PostActivation>,
        residual: Option<Loc>,
        out: Loc,
    },
    /// A convolution (`producer`, a `ConvNhwc`) whose only reader is a
    /// depthwise convolution (`consumer`, a `WindowNhwc`), run a band of
    /// rows at a time through per-thread buffers (`banded.rs`): the
    /// convolution's output is never stored whole.
    Banded {
        producer: Box<Step>,
        consumer: Box<Step>,
        band: Band,
        /// `band.parts` buffers of `band.capacity` rows.
        buffers: Loc,
    },
    /// Inference batch norm (`codegen::conv::batch_norm`).
    BatchNorm {
        eps: f64,
        x: Loc,
        /// mean, var, gain, bias.
        stats: [Loc; 4],
        channels: usize,
        inner: usize,
        out: Loc,
    },
    /// Anything without a native kernel runs on the interpreter's op.
    Fallback {
        op: Op,
        inputs: Vec<(Loc, Vec<usize>)>,
        out_ty: TensorType,
        out: Loc,
    },
}

pub struct Plan {
    pub input_shapes: Vec<(DType, Vec<usize>)>,
    /// Every symbol's value in this plan (from the inputs and `fixed`).
    pub bindings: Bindings,
    /// Possibly shared with other plans of the same model.
    pub kernels: Arc<KernelSet>,
    pub steps: Vec<Step>,
    /// The node each step computes (same order as `steps`), to say where a
    /// run failed.
    pub step_nodes: Vec<NodeId>,
    pub arena_len: usize,
    /// Shapes and dtypes of the boxed slots, to allocate them once per arena.
    pub boxed: Vec<TensorType>,
    pub outputs: Vec<(String, Loc, DType, Vec<usize>)>,
    /// How many steps run natively vs on the interpreter.
    pub native_steps: usize,
    /// The kernel candidate each step came from (same order as `steps`).
    pub step_kernels: Vec<&'static str>,
    /// Whether this plan compiled its kernel set (else it shares one).
    pub compiled_kernels: bool,
    /// Time this plan spent compiling kernels (zero when it shares a set).
    pub kernel_compile: Duration,
}

impl Planner<'_> {
    /// The concrete shape of a node.
    pub(super) fn shape(&self, id: NodeId) -> Vec<usize> {
        shape(self.graph, id)
    }
}

/// The concrete shape of a node (the graph is concretized, so all dims are known).
fn shape(graph: &Graph, id: NodeId) -> Vec<usize> {
    graph
        .node(id)
        .ty
        .known_shape()
        .expect("plans are built from concrete graphs")
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// The steps a node becomes, before memory placement: `Out::Arena` means
/// "a fresh f32 buffer of this node's size".
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutKind {
    Arena,
    Boxed,
    /// Same storage as operand 0 (reshape, identity cast).
    Alias,
}

/// Compiled kernels and what each was compiled for. Kernels depend on
/// epilogues, expressions, inner strides and row ops, not on sizes, so the
/// plan for a new batch size usually needs exactly the kernels of an
/// earlier plan: it then shares that set instead of compiling (a GEMM
/// kernel set alone is a few dozen functions).
pub struct KernelSet {
    pub library: KernelLibrary,
    index: KernelIndex,
}

/// Every kernel set compiled in this process, oldest first, held weakly (a
/// set lives as long as a plan uses it). Kernels are keyed by what they
/// compute, never by the model they were compiled for, so a plan of any
/// model can share a set that has every kernel it needs: a second session
/// of a model compiles nothing. Oldest first, so that every plan that can
/// share a set finds the same one.
static COMPILED_SETS: Mutex<Vec<Weak<KernelSet>>> = Mutex::new(Vec::new());

/// The live kernel sets of `isa`'s tier compiled in this process, oldest first.
fn compiled_sets(isa: Isa) -> Vec<Arc<KernelSet>> {
    let sets = COMPILED_SETS.lock().unwrap_or_else(|e| e.into_inner());
    sets.iter()
        .filter_map(Weak::upgrade)
        .filter(|set| set.library.isa() == isa)
        .collect()
}

fn register_compiled_set(set: &Arc<KernelSet>) {
    let mut sets = COMPILED_SETS.lock().unwrap_or_else(|e| e.into_inner());
    sets.retain(|s| s.strong_count() > 0);
    sets.push(Arc::downgrade(set));
}

/// An elementwise kernel is compiled for an expression and its inputs'
/// inner strides.
type ElementwiseKey = (ElementwiseExpr, Vec<InnerStride>);

#[derive(Clone, Default)]
struct KernelIndex {
    gemms: Vec<(Epilogue, GemmId)>,
    /// The GEMM micro-kernel row counts asked for (`gemm_row_mask`): a set
    /// lacking the rows a plan's M calls for is not shared with it.
    gemm_rows: u32,
    /// `None`: the code generator does not take this expression; the node
    /// runs on the interpreter.
    elementwise: Vec<(ElementwiseKey, Option<ElementwiseId>)>,
    rows: Vec<(RowOp, RowKernelId)>,
    /// GEMV shapes `(k, n)` asked for (whether or not the tier has one).
    gemvs: Vec<(usize, usize)>,
}

/// Why planning steps stopped.
pub(super) enum StepError {
    /// The kernel set being reused lacks a kernel: plan again, compiling.
    NeedsNewKernels,
    Exec(ExecError),
}

impl From<ExecError> for StepError {
    fn from(e: ExecError) -> StepError {
        StepError::Exec(e)
    }
}

impl From<CodegenError> for StepError {
    fn from(e: CodegenError) -> StepError {
        StepError::Exec(e.into())
    }
}

/// Hands out kernels for the steps: from an existing set only (`builder`
/// is `None`), or compiling each distinct one once.
pub(super) struct Kernels {
    builder: Option<KernelLibraryBuilder>,
    isa: Isa,
    /// Compile GEMM micro-kernels for every row count, whatever M: the
    /// model already has a set, so its batch size varies.
    all_rows: bool,
    index: KernelIndex,
    /// Time spent compiling and assembling, for the compile breakdown.
    compile_time: Duration,
}

impl Kernels {
    fn reusing(set: &KernelSet) -> Kernels {
        Kernels {
            builder: None,
            isa: set.library.isa(),
            all_rows: false,
            index: set.index.clone(),
            compile_time: Duration::ZERO,
        }
    }

    /// Compiling for the `isa` tier: its GEMM candidate is that tier's
    /// micro-kernel set (Cranelift f32x4 for the baseline, assembled
    /// AVX2 / AVX-512 otherwise), which reads B in that tier's layout.
    fn compiling(isa: Isa, all_rows: bool) -> Result<Kernels, ExecError> {
        let options = CodegenOptions {
            isa: Some(isa),
            ..CodegenOptions::default()
        };
        let start = Instant::now();
        let builder = KernelLibraryBuilder::with_options(&options)?;
        Ok(Kernels {
            builder: Some(builder),
            isa,
            all_rows,
            index: KernelIndex::default(),
            compile_time: start.elapsed(),
        })
    }

    /// Runs `add` on the builder (timed); a reusing `Kernels` has none, so
    /// the plan must compile a new set.
    fn compile<T>(
        &mut self,
        add: impl FnOnce(&mut KernelLibraryBuilder) -> T,
    ) -> Result<T, StepError> {
        let builder = self.builder.as_mut().ok_or(StepError::NeedsNewKernels)?;
        let start = Instant::now();
        let added = add(builder);
        self.compile_time += start.elapsed();
        Ok(added)
    }

    /// A GEMM kernel with `epilogue` for calls of `m` rows and `n` columns
    /// each (`None`: any): the set must also have the micro-kernels of those
    /// row counts (and, for an N edge, their AVX-512 edge kernels).
    pub(super) fn gemm(
        &mut self,
        epilogue: Epilogue,
        m: Option<usize>,
        n: Option<usize>,
    ) -> Result<GemmId, StepError> {
        let m = m.filter(|_| !self.all_rows);
        let rows = gemm_row_mask(self.isa, m) | gemm_edge_mask(self.isa, m, n, epilogue);
        let known = self.index.gemms.iter().find(|(e, _)| *e == epilogue);
        if let Some((_, id)) = known.filter(|_| self.index.gemm_rows & rows == rows) {
            return Ok(*id);
        }
        let id = self.compile(|b| b.add_gemm_for_shape(epilogue, m, n))??;
        self.index.gemm_rows |= rows;
        if !self.index.gemms.iter().any(|(e, _)| *e == epilogue) {
            self.index.gemms.push((epilogue, id));
        }
        Ok(id)
    }

    /// A GEMM kernel with `epilogue` whose calls have any of `ms` rows and
    /// `n` columns.
    pub(super) fn gemm_for_rows(
        &mut self,
        epilogue: Epilogue,
        ms: &[usize],
        n: usize,
    ) -> Result<GemmId, StepError> {
        let mut id = self.gemm(epilogue, ms.first().copied(), Some(n))?;
        for &m in ms.iter().skip(1) {
            id = self.gemm(epilogue, Some(m), Some(n))?;
        }
        Ok(id)
    }

    /// The GEMV kernel for 1-row products of shape `(k, n)` (see
    /// `KernelLibraryBuilder::add_gemv`): the library's GEMMs use it.
    pub(super) fn gemv(&mut self, k: usize, n: usize) -> Result<(), StepError> {
        if !self.index.gemvs.contains(&(k, n)) {
            self.compile(|b| b.add_gemv(k, n))??;
            self.index.gemvs.push((k, n));
        }
        Ok(())
    }

    /// `Ok(None)` when the expression has no native kernel.
    pub(super) fn elementwise(
        &mut self,
        expr: &ElementwiseExpr,
        strides: &[InnerStride],
    ) -> Result<Option<ElementwiseId>, StepError> {
        if let Some((_, id)) = self
            .index
            .elementwise
            .iter()
            .find(|((e, s), _)| e == expr && s == strides)
        {
            return Ok(*id);
        }
        // An expression the vector code generator does not take (e.g. one
        // ending in a comparison) is still correct on the interpreter.
        let id = self.compile(|b| b.add_elementwise(expr, strides).ok())?;
        self.index
            .elementwise
            .push(((expr.clone(), strides.to_vec()), id));
        Ok(id)
    }

    pub(super) fn row(&mut self, op: RowOp) -> Result<RowKernelId, StepError> {
        if let Some((_, id)) = self.index.rows.iter().find(|(o, _)| *o == op) {
            return Ok(*id);
        }
        let id = self.compile(|b| b.add_row_kernel(op))??;
        self.index.rows.push((op, id));
        Ok(id)
    }

    /// The compiled set (when compiling), and the time its compilation took.
    fn finish(self) -> Result<(KernelSet, Duration), ExecError> {
        let builder = self.builder.expect("only a compiling Kernels is finished");
        let start = Instant::now();
        let library = builder.finish()?;
        let set = KernelSet {
            library,
            index: self.index,
        };
        Ok((set, self.compile_time + start.elapsed()))
    }
}

/// Where an NHWC depthwise step finds its `[kh * kw][C]` taps.
#[derive(Clone, Debug)]
pub enum NhwcTaps {
    /// Laid out when the model was compiled (the weights are constants).
    Packed(Arc<[f32]>),
    /// Laid out from the `[C, 1, kh, kw]` weights into arena scratch at
    /// every run.
    PerRun { weights: Loc, scratch: Loc },
}

pub struct Planner<'a> {
    /// The concrete graph.
    pub graph: &'a Graph,
    pub bindings: &'a Bindings,
    pub weights: &'a [Arc<Tensor>],
    pub weight_index: &'a HashMap<NodeId, usize>,
    /// GEMM nodes whose right operand (a weight) is packed for this plan.
    pub prepacked: &'a HashSet<NodeId>,
    /// GEMM convolutions' weights (with bias columns), keyed by the node.
    pub conv_weights: &'a HashMap<NodeId, Arc<[f32]>>,
    /// NHWC depthwise convolutions' taps, `[kh * kw][C]`, keyed by the node.
    pub depthwise_taps: &'a HashMap<NodeId, Arc<[f32]>>,
    /// NHWC GEMM convolutions' weights, one packed B per group, keyed by the node.
    pub nhwc_conv_weights: &'a HashMap<NodeId, Arc<[PackedB]>>,
    /// The kernel tier (the one `prepacked` was packed for).
    pub isa: Isa,
    /// Only this kernel candidate (and the interpreter), for tests.
    pub only: Option<&'static str>,
    /// Which convolution pairs run as banded steps.
    pub banding: Banding,
    /// The threads kernels run on (a banded step keeps a buffer per thread).
    pub threads: usize,
}

/// The steps with each banded pair's two steps made one `Step::Banded`
/// at the depthwise convolution's place (the nodes computed likewise: the
/// pair is the depthwise convolution's step).
#[allow(clippy::type_complexity)]
fn merge_banded(
    steps: Vec<(Step, &'static str)>,
    computed: Vec<NodeId>,
    banded: &BandedPairs,
    loc: &HashMap<NodeId, Loc>,
) -> Result<(Vec<(Step, &'static str)>, Vec<NodeId>), ExecError> {
    if banded.is_empty() {
        return Ok((steps, computed));
    }
    let mut producers: HashMap<NodeId, Step> = HashMap::new();
    let mut merged = Vec::with_capacity(steps.len());
    let mut nodes = Vec::with_capacity(computed.len());
    for ((step, name), id) in steps.into_iter().zip(computed) {
        if banded.band_of(id).is_some() {
            producers.insert(id, step);
            continue;
        }
        let Some((producer, band)) = banded.of_consumer(id) else {
            merged.push((step, name));
            nodes.push(id);
            continue;
        };
        let producer_step = producers.remove(&producer);
        match (producer_step, step) {
            (Some(p @ Step::ConvNhwc { .. }), c @ Step::WindowNhwc { .. }) => {
                merged.push((
                    Step::Banded {
                        producer: Box::new(p),
                        consumer: Box::new(c),
                        band,
                        buffers: loc[&producer],
                    },
                    "banded_conv_depthwise",
                ));
                nodes.push(id);
            }
            _ => {
                return Err(CodegenError::shape(
                    "banded step",
                    format!(
                        "nodes {producer:?} and {id:?} were planned as a banded pair but their \
                         steps are not a convolution and a depthwise convolution"
                    ),
                )
                .into())
            }
        }
    }
    Ok((merged, nodes))
}

impl Planner<'_> {
    /// Plans for these input shapes, sharing the first of `reusable` (tried
    /// in order), else the oldest set compiled in this process for the same
    /// tier (`COMPILED_SETS`), that has every kernel the plan needs, else
    /// compiling a new kernel set.
    pub fn build(
        &self,
        input_shapes: Vec<(DType, Vec<usize>)>,
        reusable: &[Arc<KernelSet>],
    ) -> Result<Plan, ExecError> {
        let g = self.graph;
        let order = g.topo_order();

        // 1. Which nodes are steps, and where each value lives (before offsets).
        let mut loc: HashMap<NodeId, Loc> = HashMap::new();
        let mut kind: HashMap<NodeId, OutKind> = HashMap::new();
        let mut boxed: Vec<TensorType> = Vec::new();
        // Arena buffers by index: (len, defining step, last use); offsets come later.
        let mut buffers: Vec<Lifetime> = Vec::new();
        let mut root_buffer: HashMap<NodeId, usize> = HashMap::new();
        let mut step_nodes: Vec<NodeId> = Vec::new();
        let banded = banded_pairs(self, self.banding, self.threads);
        for &id in &order {
            let node = g.node(id);
            match &node.op {
                Op::Input(_) => {
                    let i = g
                        .inputs
                        .iter()
                        .position(|&x| x == id)
                        .expect("input nodes are listed");
                    loc.insert(id, Loc::Input(i));
                }
                Op::Param(Param { name, .. }) => {
                    // Kernels trust the concrete types; a weight whose shape
                    // differs (a `fixed` binding contradicting it) must stop here.
                    let w = self.weight_index[&id];
                    let value = &self.weights[w];
                    if value.dtype() != node.ty.dtype || value.shape() != shape(g, id).as_slice() {
                        return Err(ExecError::ParamType {
                            name: name.clone(),
                            declared: node.ty.to_string(),
                            actual: format!("{}{:?}", value.dtype(), value.shape()),
                        });
                    }
                    loc.insert(id, Loc::Weight(w));
                }
                Op::Constant(_) => {
                    loc.insert(id, Loc::Weight(self.weight_index[&id]));
                }
                _ => {
                    let step = step_nodes.len();
                    let out_kind = if self.is_view(id) {
                        OutKind::Alias
                    } else if node.ty.dtype == DType::F32 {
                        OutKind::Arena
                    } else {
                        OutKind::Boxed
                    };
                    kind.insert(id, out_kind);
                    match out_kind {
                        OutKind::Arena => {
                            // A banded convolution's output lives in its
                            // step's band buffers, never whole.
                            let len = match banded.band_of(id) {
                                Some(band) => band.buffers_len(),
                                None => numel(&shape(g, id)),
                            };
                            root_buffer.insert(id, buffers.len());
                            buffers.push(Lifetime {
                                len,
                                first: step,
                                last: step,
                            });
                        }
                        OutKind::Boxed => {
                            loc.insert(id, Loc::Boxed(boxed.len()));
                            boxed.push(node.ty.clone());
                        }
                        OutKind::Alias => {
                            let src = g.inputs(id)[0];
                            if let Some(&b) = root_buffer.get(&src) {
                                root_buffer.insert(id, b);
                            }
                        }
                    }
                    step_nodes.push(id);
                }
            }
        }
        let steps_total = step_nodes.len();
        // 2. Lifetimes: a buffer lives until its last reader (outputs: to the end).
        // A banded pair's step runs where the depthwise convolution is and
        // reads the convolution's operands until it is done: they live
        // until then too.
        for (step, &id) in step_nodes.iter().enumerate() {
            let producer_inputs = banded.of_consumer(id).map(|(p, _)| g.inputs(p));
            for input in g
                .inputs(id)
                .into_iter()
                .chain(producer_inputs.into_iter().flatten())
            {
                if let Some(&b) = root_buffer.get(&input) {
                    buffers[b].last = buffers[b].last.max(step);
                }
            }
        }
        for (_, id) in &g.outputs {
            if let Some(&b) = root_buffer.get(id) {
                buffers[b].last = steps_total;
            }
        }
        // Per-run packing scratch for GEMMs whose right operand is an activation.
        let mut scratch_of: HashMap<NodeId, usize> = HashMap::new();
        for (step, &id) in step_nodes.iter().enumerate() {
            if let Some((k, n)) = self.per_run_pack(id) {
                scratch_of.insert(id, buffers.len());
                buffers.push(Lifetime {
                    len: packed_b_len_for(k, n, gemm_for(self.isa).pack_layout()),
                    first: step,
                    last: step,
                });
            } else if let Some(len) = conv_scratch(self, id).or_else(|| nhwc_taps_scratch(self, id))
            {
                scratch_of.insert(id, buffers.len());
                buffers.push(Lifetime {
                    len,
                    first: step,
                    last: step,
                });
            }
        }
        let (offsets, arena_len) = place(&buffers);
        let arena = |b: usize| Loc::Arena {
            offset: offsets[b],
            len: buffers[b].len,
        };
        for (&id, &b) in &root_buffer {
            loc.insert(id, arena(b));
        }
        // Aliases of inputs, weights or boxed values share their source's location.
        for &id in &step_nodes {
            if kind[&id] == OutKind::Alias && !loc.contains_key(&id) {
                let src = loc[&g.inputs(id)[0]];
                loc.insert(id, src);
            }
        }

        // 3. Steps, with kernels from an earlier plan if it has them all.
        let scratch: HashMap<NodeId, Loc> =
            scratch_of.iter().map(|(&id, &b)| (id, arena(b))).collect();
        let computed: Vec<NodeId> = step_nodes
            .iter()
            .copied()
            .filter(|id| kind[id] != OutKind::Alias)
            .collect();
        let mut planned = None;
        let elsewhere = compiled_sets(self.isa);
        let candidates = reusable.iter().chain(
            elsewhere
                .iter()
                .filter(|set| !reusable.iter().any(|own| Arc::ptr_eq(own, set))),
        );
        for set in candidates {
            match self.steps(&mut Kernels::reusing(set), &computed, &loc, &scratch) {
                Ok(steps) => {
                    planned = Some((steps, set.clone()));
                    break;
                }
                Err(StepError::NeedsNewKernels) => continue,
                Err(StepError::Exec(e)) => return Err(e),
            }
        }
        let compiled_kernels = planned.is_none();
        let (steps, kernels, kernel_compile) = match planned {
            Some((steps, set)) => (steps, set, Duration::ZERO),
            None => {
                // A model's first set has the GEMM row kernels its M calls
                // for; a later one (another batch size needing others) has
                // them all, so every later size shares it.
                let mut kernels = Kernels::compiling(self.isa, !reusable.is_empty())?;
                let steps = match self.steps(&mut kernels, &computed, &loc, &scratch) {
                    Ok(steps) => steps,
                    Err(StepError::Exec(e)) => return Err(e),
                    Err(StepError::NeedsNewKernels) => {
                        unreachable!("a compiling Kernels compiles what is missing")
                    }
                };
                let (set, spent) = kernels.finish()?;
                let set = Arc::new(set);
                register_compiled_set(&set);
                (steps, set, spent)
            }
        };
        let (steps, computed) = merge_banded(steps, computed, &banded, &loc)?;
        let (steps, step_kernels): (Vec<Step>, Vec<&'static str>) = steps.into_iter().unzip();
        let native_steps = steps
            .iter()
            .filter(|s| !matches!(s, Step::Fallback { .. }))
            .count();
        let outputs = g
            .outputs
            .iter()
            .map(|(name, id)| (name.clone(), loc[id], g.node(*id).ty.dtype, shape(g, *id)))
            .collect();
        Ok(Plan {
            input_shapes,
            bindings: self.bindings.clone(),
            kernels,
            steps,
            step_nodes: computed,
            arena_len,
            boxed,
            outputs,
            native_steps,
            step_kernels,
            compiled_kernels,
            kernel_compile,
        })
    }

    /// Nodes whose value is their operand's data unchanged: reshapes and
    /// casts to the operand's own dtype. They get no step and share their
    /// operand's storage.
    fn is_view(&self, id: NodeId) -> bool {
        match &self.graph.node(id).op {
            Op::Reshape(_) => true,
            Op::Cast(Cast { to }) => self.graph.node(self.graph.inputs(id)[0]).ty.dtype == *to,
            _ => false,
        }
    }

    fn steps(
        &self,
        kernels: &mut Kernels,
        nodes: &[NodeId],
        loc: &HashMap<NodeId, Loc>,
        scratch: &HashMap<NodeId, Loc>,
    ) -> Result<Vec<(Step, &'static str)>, StepError> {
        nodes
            .iter()
            .map(|&id| self.step(kernels, id, loc, scratch.get(&id).copied()))
            .collect()
    }

    /// `(k, n)` when `id` is a GEMM whose right operand must be packed per run.
    fn per_run_pack(&self, id: NodeId) -> Option<(usize, usize)> {
        let g = self.graph;
        let inputs = g.inputs(id);
        let (transpose_b, is_gemm) = match &g.node(id).op {
            Op::FusedLinear(FusedLinear { transpose_b, .. }) => (*transpose_b, true),
            Op::MatMul(MatMul { transpose_b, .. }) => (*transpose_b, self.gemm_shaped(id)),
            _ => (false, false),
        };
        if !is_gemm || self.prepacked.contains(&id) {
            return None;
        }
        let b = shape(g, inputs[1]);
        if b.len() != 2 {
            return None;
        }
        Some(if transpose_b {
            (b[1], b[0])
        } else {
            (b[0], b[1])
        })
    }

    /// A MatMul that is a plain GEMM: 2-D right operand, no transposed left
    /// operand of rank > 2.
    fn gemm_shaped(&self, id: NodeId) -> bool {
        let g = self.graph;
        let inputs = g.inputs(id);
        let (a, b) = (shape(g, inputs[0]), shape(g, inputs[1]));
        let transpose_a = matches!(
            g.node(id).op,
            Op::MatMul(MatMul {
                transpose_a: true,
                ..
            })
        );
        b.len() == 2 && (a.len() == 2 || !transpose_a)
    }

    /// The step of one node: the cheapest kernel candidate that takes it
    /// (`candidates.rs`), the interpreter when none does.
    fn step(
        &self,
        kernels: &mut Kernels,
        id: NodeId,
        loc: &HashMap<NodeId, Loc>,
        scratch: Option<Loc>,
    ) -> Result<(Step, &'static str), StepError> {
        let g = self.graph;
        let inputs = g.inputs(id);
        let site = NodeSite {
            planner: self,
            id,
            node: g.node(id),
            out_shape: shape(g, id),
            inputs,
            loc,
            scratch,
        };
        // Native steps read at most MAX_RANK axes and MAX_OPERANDS operands.
        let too_big = site.out_shape.len() > MAX_RANK
            || site.inputs.len() > MAX_OPERANDS
            || site.inputs.iter().any(|&i| g.node(i).ty.rank() > MAX_RANK);
        let mut best: (&dyn KernelCandidate, u64) = (&Interpreter, u64::MAX);
        if !too_big {
            for &candidate in CANDIDATES {
                let allowed = self.only.is_none_or(|name| name == candidate.name());
                if !allowed || !candidate.runs_on(self.isa) {
                    continue;
                }
                if let Some(cost) = candidate.cost(&site) {
                    if cost < best.1 {
                        best = (candidate, cost);
                    }
                }
            }
        }
        let step = best.0.plan(&site, kernels)?;
        let name = match step {
            Step::Fallback { .. } => Interpreter.name(),
            _ => best.0.name(),
        };
        Ok((step, name))
    }
}
