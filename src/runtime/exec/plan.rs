//! From a concrete graph to a plan: one step per node, a kernel library with
//! the kernels those steps call, and an arena layout.
//!
//! Every decision that depends on shapes is made here, once per set of
//! input shapes; running a plan only follows it.

use crate::ir::ops::{
    Cast, Concat, FusedElementwise, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul, Param,
    Permute, Reduce, Slice, Softmax,
};
use std::collections::HashMap;
use std::sync::Arc;

use super::copy::{Reduction, Strided, MAX_RANK};
use super::memory::{place, Lifetime};
use super::ExecError;
use crate::codegen::{
    packed_b_len_for, CodegenError, CodegenOptions, ElementwiseId, Epilogue, GemmId, InnerStride,
    Isa, KernelLibrary, KernelLibraryBuilder, PackLayout, PackedB, RowKernelId, RowOp,
};
use crate::ir::{Bindings, DType, ElementwiseExpr, ExprStep, Graph, NodeId, Op, TensorType};
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

/// An elementwise kernel is compiled for an expression and its inputs'
/// inner strides.
type ElementwiseKey = (ElementwiseExpr, Vec<InnerStride>);

#[derive(Clone, Default)]
struct KernelIndex {
    gemms: Vec<(Epilogue, GemmId)>,
    /// `None`: the code generator does not take this expression; the node
    /// runs on the interpreter.
    elementwise: Vec<(ElementwiseKey, Option<ElementwiseId>)>,
    rows: Vec<(RowOp, RowKernelId)>,
}

/// Why planning steps stopped.
enum StepError {
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
struct Kernels {
    builder: Option<KernelLibraryBuilder>,
    index: KernelIndex,
}

impl Kernels {
    fn reusing(set: &KernelSet) -> Kernels {
        Kernels {
            builder: None,
            index: set.index.clone(),
        }
    }

    /// Compiling for the `isa` tier: its GEMM candidate is that tier's
    /// micro-kernel set (Cranelift f32x4 for the baseline, assembled
    /// AVX2 / AVX-512 otherwise), which reads B in that tier's layout.
    fn compiling(isa: Isa) -> Result<Kernels, ExecError> {
        let options = CodegenOptions {
            isa: Some(isa),
            ..CodegenOptions::default()
        };
        Ok(Kernels {
            builder: Some(KernelLibraryBuilder::with_options(&options)?),
            index: KernelIndex::default(),
        })
    }

    fn builder(&mut self) -> Result<&mut KernelLibraryBuilder, StepError> {
        self.builder.as_mut().ok_or(StepError::NeedsNewKernels)
    }

    fn gemm(&mut self, epilogue: Epilogue) -> Result<GemmId, StepError> {
        if let Some((_, id)) = self.index.gemms.iter().find(|(e, _)| *e == epilogue) {
            return Ok(*id);
        }
        let id = self.builder()?.add_gemm(epilogue)?;
        self.index.gemms.push((epilogue, id));
        Ok(id)
    }

    /// `Ok(None)` when the expression has no native kernel.
    fn elementwise(
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
        let id = self.builder()?.add_elementwise(expr, strides).ok();
        self.index
            .elementwise
            .push(((expr.clone(), strides.to_vec()), id));
        Ok(id)
    }

    fn row(&mut self, op: RowOp) -> Result<RowKernelId, StepError> {
        if let Some((_, id)) = self.index.rows.iter().find(|(o, _)| *o == op) {
            return Ok(*id);
        }
        let id = self.builder()?.add_row_kernel(op)?;
        self.index.rows.push((op, id));
        Ok(id)
    }

    /// The compiled set (when compiling).
    fn finish(self) -> Result<KernelSet, ExecError> {
        let builder = self.builder.expect("only a compiling Kernels is finished");
        Ok(KernelSet {
            library: builder.finish()?,
            index: self.index,
        })
    }
}

pub struct Planner<'a> {
    /// The concrete graph.
    pub graph: &'a Graph,
    pub bindings: &'a Bindings,
    pub weights: &'a [Arc<Tensor>],
    pub weight_index: &'a HashMap<NodeId, usize>,
    pub prepacked: &'a HashMap<NodeId, PackedB>,
    /// The kernel tier (the one `prepacked` was packed for).
    pub isa: Isa,
}

impl Planner<'_> {
    /// Plans for these input shapes, sharing the first of `reusable` (tried
    /// in order) that has every kernel the plan needs, else compiling a new
    /// kernel set.
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
                            root_buffer.insert(id, buffers.len());
                            buffers.push(Lifetime {
                                len: numel(&shape(g, id)),
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
        for (step, &id) in step_nodes.iter().enumerate() {
            for input in g.inputs(id) {
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
                    len: packed_b_len_for(k, n, PackLayout::for_isa(self.isa)),
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
        for set in reusable {
            match self.steps(&mut Kernels::reusing(set), &computed, &loc, &scratch) {
                Ok(steps) => {
                    planned = Some((steps, set.clone()));
                    break;
                }
                Err(StepError::NeedsNewKernels) => continue,
                Err(StepError::Exec(e)) => return Err(e),
            }
        }
        let (steps, kernels) = match planned {
            Some(found) => found,
            None => {
                let mut kernels = Kernels::compiling(self.isa)?;
                let steps = match self.steps(&mut kernels, &computed, &loc, &scratch) {
                    Ok(steps) => steps,
                    Err(StepError::Exec(e)) => return Err(e),
                    Err(StepError::NeedsNewKernels) => {
                        unreachable!("a compiling Kernels compiles what is missing")
                    }
                };
                (steps, Arc::new(kernels.finish()?))
            }
        };
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
    ) -> Result<Vec<Step>, StepError> {
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
        if !is_gemm || self.prepacked.contains_key(&id) {
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

    fn step(
        &self,
        kernels: &mut Kernels,
        id: NodeId,
        loc: &HashMap<NodeId, Loc>,
        scratch: Option<Loc>,
    ) -> Result<Step, StepError> {
        let g = self.graph;
        let node = g.node(id);
        let inputs = g.inputs(id);
        let at = |i: usize| loc[&inputs[i]];
        let out = loc[&id];
        let in_shape = |i: usize| shape(g, inputs[i]);
        let out_shape = shape(g, id);
        let all_f32 =
            inputs.iter().all(|&i| g.node(i).ty.dtype == DType::F32) && node.ty.dtype == DType::F32;
        let fallback = || Step::Fallback {
            op: node.op.clone(),
            inputs: inputs.iter().map(|&i| (loc[&i], shape(g, i))).collect(),
            out_ty: node.ty.clone(),
            out,
        };
        let too_big = out_shape.len() > MAX_RANK || inputs.len() > MAX_OPERANDS;
        if too_big || inputs.iter().any(|&i| g.node(i).ty.rank() > MAX_RANK) {
            return Ok(fallback());
        }
        let gemm_b = |transposed: bool| match scratch {
            Some(scratch) => GemmB::PerRun {
                b: at(1),
                transposed,
                scratch,
            },
            None => GemmB::Prepacked(id),
        };
        let step = match &node.op {
            // The GEMM driver takes a 2-D right operand and the activations
            // its epilogue implements; anything else runs on the interpreter.
            Op::FusedLinear(FusedLinear { epilogue, .. })
                if in_shape(1).len() != 2 || Epilogue::from_ir(epilogue).is_err() =>
            {
                fallback()
            }
            Op::FusedLinear(FusedLinear {
                transpose_b,
                epilogue,
            }) => {
                let a = in_shape(0);
                let k = *a.last().expect("rank >= 2");
                let n = *out_shape.last().expect("rank >= 2");
                let mut next = 2;
                let mut take = |present: bool| {
                    present.then(|| {
                        next += 1;
                        at(next - 1)
                    })
                };
                let bias = take(epilogue.bias);
                let residual = take(epilogue.residual);
                Step::Gemm {
                    kernel: kernels.gemm(Epilogue::from_ir(epilogue)?)?,
                    a: at(0),
                    m: numel(&out_shape[..out_shape.len() - 1]),
                    k,
                    n,
                    transpose_a: false,
                    b: gemm_b(*transpose_b),
                    bias,
                    residual,
                    out,
                }
            }
            Op::MatMul(MatMul {
                transpose_a,
                transpose_b,
            }) if self.gemm_shaped(id) => {
                let a = in_shape(0);
                let k = if *transpose_a {
                    a[0]
                } else {
                    *a.last().expect("rank >= 2")
                };
                let n = *out_shape.last().expect("rank >= 2");
                Step::Gemm {
                    kernel: kernels.gemm(Epilogue::none())?,
                    a: at(0),
                    m: numel(&out_shape[..out_shape.len() - 1]),
                    k,
                    n,
                    transpose_a: *transpose_a,
                    b: gemm_b(*transpose_b),
                    bias: None,
                    residual: None,
                    out,
                }
            }
            Op::MatMul(MatMul {
                transpose_a,
                transpose_b,
            }) => Step::BatchedMatMul {
                kernel: kernels.gemm(Epilogue::none())?,
                a: at(0),
                a_shape: in_shape(0),
                transpose_a: *transpose_a,
                b: at(1),
                b_shape: in_shape(1),
                transpose_b: *transpose_b,
                out,
            },
            op @ (Op::Unary(_) | Op::Binary(_) | Op::FusedElementwise(_) | Op::Where)
                if all_f32 =>
            {
                let expr = match op {
                    Op::Unary(u) => ElementwiseExpr {
                        steps: vec![ExprStep::Input(0), ExprStep::Unary(*u, 0)],
                    },
                    Op::Binary(b) => ElementwiseExpr {
                        steps: vec![
                            ExprStep::Input(0),
                            ExprStep::Input(1),
                            ExprStep::Binary(*b, 0, 1),
                        ],
                    },
                    Op::Where => ElementwiseExpr {
                        steps: vec![
                            ExprStep::Input(0),
                            ExprStep::Input(1),
                            ExprStep::Input(2),
                            ExprStep::Where(0, 1, 2),
                        ],
                    },
                    Op::FusedElementwise(FusedElementwise { expr }) => expr.clone(),
                    _ => unreachable!("matched above"),
                };
                let out_last = out_shape.last().copied().unwrap_or(1);
                let strides: Vec<InnerStride> = (0..inputs.len())
                    .map(|i| InnerStride::for_shape(&in_shape(i), out_last))
                    .collect();
                match kernels.elementwise(&expr, &strides)? {
                    Some(kernel) => Step::Elementwise {
                        kernel,
                        inputs: (0..inputs.len()).map(|i| (at(i), in_shape(i))).collect(),
                        out_shape,
                        out,
                    },
                    None => fallback(),
                }
            }
            Op::Softmax(Softmax { axis }) | Op::LogSoftmax(LogSoftmax { axis })
                if all_f32 && *axis + 1 == out_shape.len() =>
            {
                let row_op = if matches!(node.op, Op::Softmax(_)) {
                    RowOp::Softmax
                } else {
                    RowOp::LogSoftmax
                };
                let row_len = out_shape[*axis];
                Step::Row {
                    kernel: kernels.row(row_op)?,
                    x: at(0),
                    rows: numel(&out_shape) / row_len.max(1),
                    row_len,
                    gain: None,
                    bias: None,
                    out,
                }
            }
            Op::LayerNorm(LayerNorm { axis, eps }) if all_f32 => {
                let row_len = out_shape[*axis];
                Step::Row {
                    kernel: kernels.row(RowOp::LayerNorm { eps: eps.0 })?,
                    x: at(0),
                    rows: numel(&out_shape) / row_len.max(1),
                    row_len,
                    gain: Some(at(1)),
                    bias: Some(at(2)),
                    out,
                }
            }
            Op::Reduce(Reduce { op, axes, .. }) if all_f32 => {
                let x = in_shape(0);
                let over_last = x
                    .last()
                    .is_some_and(|&len| len > 0 && axes.as_slice() == [x.len() - 1]);
                if over_last {
                    let row_len = x[x.len() - 1];
                    Step::Row {
                        kernel: kernels.row(RowOp::Reduce(*op))?,
                        x: at(0),
                        rows: numel(&x) / row_len,
                        row_len,
                        gain: None,
                        bias: None,
                        out,
                    }
                } else {
                    Step::Reduce {
                        x: at(0),
                        reduction: Reduction::new(&x, axes, *op),
                        out,
                    }
                }
            }
            Op::Permute(Permute { perm }) if all_f32 => Step::Copy {
                x: at(0),
                walk: Strided::permute(&in_shape(0), perm),
                out,
            },
            Op::Slice(Slice {
                axis, start, step, ..
            }) if all_f32 => Step::Copy {
                x: at(0),
                walk: Strided::slice(&in_shape(0), *axis, *start, *step, out_shape[*axis]),
                out,
            },
            Op::Concat(Concat { axis }) if all_f32 => Step::Concat {
                parts: (0..inputs.len())
                    .map(|i| (at(i), numel(&in_shape(i)[*axis..])))
                    .collect(),
                outer: numel(&out_shape[..*axis]),
                out,
            },
            Op::Gather(Gather { axis }) if node.ty.dtype == DType::F32 => {
                let t = in_shape(0);
                Step::Gather {
                    table: at(0),
                    outer: numel(&t[..*axis]),
                    size: t[*axis],
                    inner: numel(&t[axis + 1..]),
                    ids: at(1),
                    out,
                }
            }
            // (Casts to the operand's own dtype are views, planned above.)
            Op::Cast(Cast { to: DType::F32 }) => Step::CastToF32 { x: at(0), out },
            _ => fallback(),
        };
        Ok(step)
    }
}
