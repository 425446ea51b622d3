//! Kernel candidates: for each node of a concrete graph, the planner asks
//! every candidate whether it takes the node and at what cost, and plans the
//! cheapest. The interpreter fallback takes every node, at the highest cost,
//! so it is chosen only when nothing native fits.
//!
//! A candidate says what it supports from the node (op, dtypes, shapes) and
//! the plan's kernel tier (`Isa`, from `codegen::target::Target`: the CPU
//! features the plan's kernels may use). Costs are relative units, roughly
//! nanoseconds-per-element scaled by how much work an element is; they only
//! rank candidates for one node. A kernel that reads a packed operand owns
//! its packing format: `GemmTier::pack_layout` is what `CompiledModel`
//! packs weights in, for the same candidate the planner then chooses.
//!
//! Adding a candidate: implement `KernelCandidate`, list it in
//! [`CANDIDATES`] (before `Interpreter`), and `tests/kernel_candidates.rs`
//! runs it against the interpreter on every sample node it takes, on every
//! tier the CPU runs (docs/adding-an-op.md).

use std::collections::HashMap;

use super::copy::{Reduction, Strided};
use super::plan::{GemmB, Kernels, Loc, NhwcTaps, Planner, Step, StepError};
use crate::codegen::conv::{
    conv_scratch_len, pack_nhwc_weights, PostActivation, WindowGeometry, WindowOp,
};
use crate::codegen::window_nhwc::pack_depthwise_taps;
use crate::codegen::{
    elementwise_supports, Activation, Epilogue, InnerStride, Isa, PackLayout, PackedB, RowOp,
};
use crate::ir::ops::conv::{Conv2d, FusedConv2d};
use crate::ir::ops::pool::PoolKind;
use crate::ir::ops::window::DataLayout;
use crate::ir::ops::{
    Cast, Concat, FusedElementwise, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul, Permute,
    Reduce, Slice, Softmax,
};
use crate::ir::{DType, ElementwiseExpr, ExprStep, Graph, Node, NodeId, Op, UnaryOp};

/// One node as the candidates see it, with what planning its step needs.
pub(super) struct NodeSite<'s, 'g> {
    pub planner: &'s Planner<'g>,
    pub id: NodeId,
    pub node: &'g Node,
    pub inputs: Vec<NodeId>,
    pub loc: &'s HashMap<NodeId, Loc>,
    /// Arena scratch for packing a GEMM's right operand per run.
    pub scratch: Option<Loc>,
    pub out_shape: Vec<usize>,
}

impl NodeSite<'_, '_> {
    fn at(&self, i: usize) -> Loc {
        self.loc[&self.inputs[i]]
    }

    fn out(&self) -> Loc {
        self.loc[&self.id]
    }

    fn in_shape(&self, i: usize) -> Vec<usize> {
        self.planner.shape(self.inputs[i])
    }

    fn numel(&self) -> usize {
        self.out_shape.iter().product()
    }

    /// Every operand and the result are f32.
    fn all_f32(&self) -> bool {
        let g = self.planner.graph;
        self.inputs
            .iter()
            .all(|&i| g.node(i).ty.dtype == DType::F32)
            && self.node.ty.dtype == DType::F32
    }

    fn gemm_b(&self, transposed: bool) -> GemmB {
        match self.scratch {
            Some(scratch) => GemmB::PerRun {
                b: self.at(1),
                transposed,
                scratch,
            },
            None => GemmB::Prepacked(self.id),
        }
    }
}

pub(super) trait KernelCandidate: Sync {
    /// The name plans report for the steps it makes.
    fn name(&self) -> &'static str;

    /// Whether a plan compiled for the `isa` tier can use this candidate
    /// (the CPU features its code needs are that tier's).
    fn runs_on(&self, _isa: Isa) -> bool {
        true
    }

    /// `None` when the candidate does not take this node, else its cost.
    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64>;

    /// The step, compiling (or finding) the kernels it calls.
    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError>;
}

/// Every candidate; ties in cost go to the one listed first. The
/// interpreter comes last and takes anything.
pub(super) const CANDIDATES: &[&dyn KernelCandidate] = &[
    &GemmTier(Isa::Avx512),
    &GemmTier(Isa::Avx2),
    &GemmTier(Isa::Baseline),
    &BatchedGemm,
    &ConvGemm,
    &ConvNhwcGemm,
    &WindowKernel,
    &WindowNhwcKernel,
    &BatchNormAffine,
    &ElementwiseJit,
    &RowJit,
    &StridedReduce,
    &StridedCopy,
    &ConcatCopy,
    &GatherRows,
    &CastToF32,
    &Interpreter,
];

/// The names of every candidate, in choice order (for tests and `--help`).
pub fn candidate_names() -> Vec<&'static str> {
    CANDIDATES.iter().map(|c| c.name()).collect()
}

/// Whether `name` is a candidate a plan of the `isa` tier can use.
pub fn candidate_runs_on(name: &str, isa: Isa) -> bool {
    CANDIDATES
        .iter()
        .any(|c| c.name() == name && c.runs_on(isa))
}

/// The GEMM candidate of a tier: the one whose packing format weights are
/// packed in when a model is compiled for that tier.
pub(super) fn gemm_for(isa: Isa) -> GemmTier {
    GemmTier(isa)
}

/// The GEMM driver with one tier's micro-kernels: Cranelift f32x4 for the
/// baseline, assembled AVX2 (6 x 16) or AVX-512 (12 x 32) otherwise. Takes
/// `fused_linear` with a 2-D right operand and an epilogue it implements,
/// and `matmul` of that shape (the left operand may carry batch axes unless
/// transposed).
pub(super) struct GemmTier(pub Isa);

impl GemmTier {
    /// The packed-B format this tier's micro-kernels read.
    pub fn pack_layout(&self) -> PackLayout {
        PackLayout::for_isa(self.0)
    }

    /// `(k, n, transpose_a, transpose_b, epilogue)` when this is a GEMM node.
    fn shape(site: &NodeSite<'_, '_>) -> Option<(usize, usize, bool, bool, Epilogue)> {
        if !matches!(site.node.op, Op::MatMul(_) | Op::FusedLinear(_)) {
            return None;
        }
        let b = site.in_shape(1);
        if b.len() != 2 {
            return None;
        }
        let a = site.in_shape(0);
        let n = *site.out_shape.last()?;
        match &site.node.op {
            Op::FusedLinear(FusedLinear {
                transpose_b,
                epilogue,
            }) => {
                let epilogue = Epilogue::from_ir(epilogue).ok()?;
                Some((*a.last()?, n, false, *transpose_b, epilogue))
            }
            Op::MatMul(MatMul {
                transpose_a,
                transpose_b,
            }) if a.len() == 2 || !transpose_a => {
                let k = if *transpose_a { a[0] } else { *a.last()? };
                Some((k, n, *transpose_a, *transpose_b, Epilogue::none()))
            }
            _ => None,
        }
    }
}

/// Flops of a product, the unit GEMM costs scale.
fn product_cost(m_n: usize, k: usize) -> u64 {
    2 * m_n as u64 * k.max(1) as u64
}

impl KernelCandidate for GemmTier {
    fn name(&self) -> &'static str {
        match self.0 {
            Isa::Avx512 => "gemm_avx512",
            Isa::Avx2 => "gemm_avx2",
            Isa::Baseline => "gemm_f32x4",
        }
    }

    /// A plan's kernel library and packed weights are for one tier.
    fn runs_on(&self, isa: Isa) -> bool {
        self.0 == isa
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let (k, _, _, _, _) = GemmTier::shape(site)?;
        let lanes = (self.0.vector_bits() / 32) as u64;
        Some(product_cost(site.numel(), k) / lanes)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError> {
        let (k, n, transpose_a, transpose_b, epilogue) =
            GemmTier::shape(site).expect("cost accepted the node");
        let (bias, residual) = match &site.node.op {
            Op::FusedLinear(FusedLinear { epilogue, .. }) => {
                let mut next = 2;
                let mut take = |present: bool| {
                    present.then(|| {
                        next += 1;
                        site.at(next - 1)
                    })
                };
                let bias = take(epilogue.bias);
                (bias, take(epilogue.residual))
            }
            _ => (None, None),
        };
        let out_shape = &site.out_shape;
        let m = out_shape[..out_shape.len() - 1].iter().product();
        let kernel = kernels.gemm(epilogue, Some(m), Some(n))?;
        if m == 1 {
            kernels.gemv(k, n)?;
        }
        Ok(Step::Gemm {
            kernel,
            a: site.at(0),
            m,
            k,
            n,
            transpose_a,
            b: site.gemm_b(transpose_b),
            bias,
            residual,
            out: site.out(),
        })
    }
}

/// `matmul` with batch axes on the right operand (attention scores): the
/// GEMM micro-kernel per batch, B packed per run.
struct BatchedGemm;

impl KernelCandidate for BatchedGemm {
    fn name(&self) -> &'static str {
        "batched_gemm"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let Op::MatMul(MatMul { transpose_a, .. }) = &site.node.op else {
            return None;
        };
        let a = site.in_shape(0);
        let k = if *transpose_a {
            a[a.len() - 2]
        } else {
            *a.last()?
        };
        // Slower per flop than a plain GEMM: packing per batch.
        Some(product_cost(site.numel(), k))
    }

    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError> {
        let Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        }) = &site.node.op
        else {
            unreachable!("cost accepted only matmul");
        };
        // Each batch entry is a GEMM of M rows, or (B shared, A's batches
        // contiguous) one GEMM of all of them.
        let a_shape = site.in_shape(0);
        let kernel = match a_shape.len().checked_sub(2) {
            Some(batch_rank) => {
                let m = a_shape[batch_rank + usize::from(*transpose_a)];
                let entries: usize = a_shape[..batch_rank].iter().product();
                let n = site.out_shape.last().copied().unwrap_or(1);
                kernels.gemm_for_rows(Epilogue::none(), &[m, m * entries], n)?
            }
            None => kernels.gemm(Epilogue::none(), None, None)?,
        };
        Ok(Step::BatchedMatMul {
            kernel,
            a: site.at(0),
            a_shape: site.in_shape(0),
            transpose_a: *transpose_a,
            b: site.at(1),
            b_shape: site.in_shape(1),
            transpose_b: *transpose_b,
            out: site.out(),
        })
    }
}

/// A convolution node as the convolution kernels see it: `conv2d(x, w,
/// [bias])`, or `fused_conv2d` with its epilogue.
pub(super) struct ConvNode<'n> {
    pub conv: &'n Conv2d,
    /// Operand 2 is the per-channel bias.
    pub bias: bool,
    pub activation: Option<UnaryOp>,
    /// The operand index of the residual.
    pub residual: Option<usize>,
}

impl ConvNode<'_> {
    /// `None` for anything else, and for NHWC convolutions: the kernels
    /// that ask read NCHW (NHWC nodes: [`WindowNhwcKernel`]).
    pub(super) fn of(op: &Op, operands: usize) -> Option<ConvNode<'_>> {
        ConvNode::any_layout(op, operands)
            .filter(|conv| conv.conv.window.layout == DataLayout::Nchw)
    }

    /// A convolution node in whichever layout.
    fn any_layout(op: &Op, operands: usize) -> Option<ConvNode<'_>> {
        match op {
            Op::Conv2d(conv) => Some(ConvNode {
                conv,
                bias: operands == 3,
                activation: None,
                residual: None,
            }),
            Op::FusedConv2d(FusedConv2d { conv, epilogue }) => Some(ConvNode {
                conv,
                bias: epilogue.bias,
                activation: epilogue.activation,
                residual: epilogue.residual_operand(2),
            }),
            _ => None,
        }
    }

    /// The geometry for these concrete shapes (the shape rule accepted them).
    fn geometry(&self, x: &[usize], w: &[usize], out: &[usize]) -> WindowGeometry {
        let c = self.conv.geometry(x, w, out);
        WindowGeometry {
            batch: c.batch,
            in_channels: c.in_channels,
            in_h: c.in_h,
            in_w: c.in_w,
            out_channels: c.out_channels,
            out_h: c.out_h,
            out_w: c.out_w,
            kernel: [c.kernel_h, c.kernel_w],
            stride: self.conv.window.stride,
            dilation: self.conv.window.dilation,
            pad: [c.pad_top, c.pad_left],
            groups: c.groups,
        }
    }

    /// One input channel and one output channel per group: the window
    /// kernel's, not the GEMM's (whose rows would be single channels).
    fn is_depthwise(w: &[usize], groups: usize) -> bool {
        w[1] == 1 && w[0] == groups
    }
}

/// The GEMM left operand of a convolution the GEMM candidate can take:
/// `[O, C/g * kh * kw (+ 1)]`, each output channel's weights then its bias,
/// laid out once when the model is compiled. `None` when the weights (or
/// the bias) are not weights, or the convolution is depthwise.
pub(super) fn conv_gemm_weights(
    graph: &Graph,
    id: NodeId,
    weight: impl Fn(NodeId) -> Option<std::sync::Arc<crate::tensor::Tensor>>,
) -> Option<Vec<f32>> {
    let inputs = graph.inputs(id);
    let conv = ConvNode::of(&graph.node(id).op, inputs.len())?;
    let w_shape = graph.node(inputs[1]).ty.known_shape()?;
    if w_shape.len() != 4 || ConvNode::is_depthwise(&w_shape, conv.conv.groups) {
        return None;
    }
    let w = weight(inputs[1])?;
    let w = w.as_f32()?;
    let bias = match conv.bias {
        true => Some(weight(inputs[2])?),
        false => None,
    };
    let bias = match &bias {
        Some(b) => Some(b.as_f32()?),
        None => None,
    };
    let out = w_shape[0];
    let k: usize = w_shape[1..].iter().product();
    if w.len() != out * k || bias.is_some_and(|b| b.len() != out) {
        return None;
    }
    let mut a = Vec::with_capacity(out * (k + usize::from(bias.is_some())));
    for o in 0..out {
        a.extend_from_slice(&w[o * k..(o + 1) * k]);
        if let Some(b) = bias {
            a.push(b[o]);
        }
    }
    Some(a)
}

/// Arena scratch the GEMM convolution needs for node `id` (packed patches
/// of one image and group), when it may take the node.
pub(super) fn conv_scratch(planner: &Planner<'_>, id: NodeId) -> Option<usize> {
    let g = planner.graph;
    let inputs = g.inputs(id);
    let conv = ConvNode::of(&g.node(id).op, inputs.len())?;
    let w = planner.shape(inputs[1]);
    if !planner.conv_weights.contains_key(&id) {
        return None;
    }
    let geometry = conv.geometry(&planner.shape(inputs[0]), &w, &planner.shape(id));
    Some(conv_scratch_len(
        &geometry,
        conv.bias,
        gemm_for(planner.isa).pack_layout(),
    ))
}

/// A convolution's epilogue on the GEMM (its bias is a weight column):
/// `None` when the GEMM lacks the activation.
fn gemm_epilogue(conv: &ConvNode<'_>) -> Option<Epilogue> {
    let activation = match conv.activation {
        Some(op) => Some(Activation::from_unary(op)?),
        None => None,
    };
    Some(Epilogue {
        bias: false,
        activation,
        residual: conv.residual.is_some(),
    })
}

/// `conv2d` / `fused_conv2d` (not depthwise) as GEMMs on the plan tier's
/// kernels: per image and group, the input patches packed straight into
/// B panels, the weights (with the bias as an extra column) as A.
struct ConvGemm;

impl KernelCandidate for ConvGemm {
    fn name(&self) -> &'static str {
        "conv_gemm"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let conv = ConvNode::of(&site.node.op, site.inputs.len())?;
        if !site.all_f32()
            || site.scratch.is_none()
            || !site.planner.conv_weights.contains_key(&site.id)
        {
            return None;
        }
        gemm_epilogue(&conv)?;
        let w = site.in_shape(1);
        let k: usize = w[1..].iter().product();
        let lanes = (site.planner.isa.vector_bits() / 32) as u64;
        Some(product_cost(site.numel(), k) / lanes)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError> {
        let conv = ConvNode::of(&site.node.op, site.inputs.len()).expect("cost accepted the node");
        let epilogue = gemm_epilogue(&conv).expect("cost accepted the epilogue");
        Ok(Step::Conv {
            // The row counts of the per-image, per-group GEMMs are left to
            // the library (every one).
            kernel: kernels.gemm(epilogue, None, None)?,
            geometry: conv.geometry(&site.in_shape(0), &site.in_shape(1), &site.out_shape),
            x: site.at(0),
            weights: site.planner.conv_weights[&site.id].clone(),
            with_bias: conv.bias,
            residual: conv.residual.map(|i| site.at(i)),
            scratch: site.scratch.expect("cost checked the scratch"),
            out: site.out(),
        })
    }
}

/// An NHWC convolution the GEMM takes: not depthwise (those are
/// [`WindowNhwcKernel`]'s), f32 throughout, with 4-D weights of a known
/// shape (the weights' shape, returned, is what packing them needs).
fn nhwc_gemm_conv(graph: &Graph, id: NodeId) -> Option<(ConvNode<'_>, Vec<usize>)> {
    let node = graph.node(id);
    let inputs = graph.inputs(id);
    let conv = ConvNode::any_layout(&node.op, inputs.len())?;
    let w = graph.node(inputs[1]).ty.known_shape()?;
    let f32_throughout =
        node.ty.dtype == DType::F32 && inputs.iter().all(|&i| graph.node(i).ty.dtype == DType::F32);
    (conv.conv.window.layout == DataLayout::Nhwc
        && f32_throughout
        && w.len() == 4
        && node.ty.rank() == 4
        && !ConvNode::is_depthwise(&w, conv.conv.groups))
    .then_some((conv, w))
}

/// Whether `id` is a convolution [`nhwc_conv_weights`] packs weights for
/// (given constant weights).
pub(super) fn is_nhwc_gemm_conv(graph: &Graph, id: NodeId) -> bool {
    nhwc_gemm_conv(graph, id).is_some()
}

/// The GEMM right operands of an NHWC convolution the GEMM candidate can
/// take, one per group packed for `layout` (`codegen::conv::pack_nhwc_weights`),
/// when its weights are constants (`weight`).
pub(super) fn nhwc_conv_weights(
    graph: &Graph,
    id: NodeId,
    weight: impl Fn(NodeId) -> Option<std::sync::Arc<crate::tensor::Tensor>>,
    layout: PackLayout,
) -> Option<Vec<PackedB>> {
    let (conv, w_shape) = nhwc_gemm_conv(graph, id)?;
    let w = weight(graph.inputs(id)[1])?;
    pack_nhwc_weights(
        w.as_f32()?,
        w_shape[0],
        conv.conv.groups,
        [w_shape[1], w_shape[2], w_shape[3]],
        layout,
    )
    .ok()
}

/// `conv2d` / `fused_conv2d` in NHWC (not depthwise) as one GEMM per group
/// with the output pixels as rows (`codegen::conv::conv2d_nhwc`): the
/// weights packed once as B panels ([`nhwc_conv_weights`]), the patches
/// read in place (1x1, stride 1, unpadded) or gathered into packed A
/// panels; bias, activation and residual in the GEMM epilogue.
struct ConvNhwcGemm;

impl ConvNhwcGemm {
    /// The GEMM epilogue of the convolution: `None` when the GEMM lacks
    /// its activation.
    fn epilogue(conv: &ConvNode<'_>) -> Option<Epilogue> {
        Some(Epilogue {
            bias: conv.bias,
            ..gemm_epilogue(conv)?
        })
    }
}

impl KernelCandidate for ConvNhwcGemm {
    fn name(&self) -> &'static str {
        "conv_nhwc_gemm"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        if !site.planner.nhwc_conv_weights.contains_key(&site.id) {
            return None;
        }
        let (conv, w) = nhwc_gemm_conv(site.planner.graph, site.id)?;
        ConvNhwcGemm::epilogue(&conv)?;
        let lanes = (site.planner.isa.vector_bits() / 32) as u64;
        Some(product_cost(site.numel(), w[1..].iter().product()) / lanes)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError> {
        let (conv, w) =
            nhwc_gemm_conv(site.planner.graph, site.id).expect("cost accepted the node");
        let epilogue = ConvNhwcGemm::epilogue(&conv).expect("cost accepted the epilogue");
        Ok(Step::ConvNhwc {
            kernel: kernels.gemm(epilogue, None, None)?,
            geometry: conv.geometry(&site.in_shape(0), &w, &site.out_shape),
            x: site.at(0),
            weights: site.planner.nhwc_conv_weights[&site.id].clone(),
            bias: conv.bias.then(|| site.at(2)),
            residual: conv.residual.map(|i| site.at(i)),
            out: site.out(),
        })
    }
}

/// A site for asking a candidate's `cost` before any location is known
/// (the candidates asked below read neither locations nor scratch).
fn bare_site<'s, 'g>(
    planner: &'s Planner<'g>,
    id: NodeId,
    loc: &'s HashMap<NodeId, Loc>,
) -> NodeSite<'s, 'g> {
    NodeSite {
        planner,
        id,
        node: planner.graph.node(id),
        inputs: planner.graph.inputs(id),
        loc,
        scratch: None,
        out_shape: planner.shape(id),
    }
}

/// Whether [`ConvNhwcGemm`] takes node `id` (it is then the node's step:
/// no other candidate takes an NHWC convolution).
pub(super) fn accepts_nhwc_gemm_conv(planner: &Planner<'_>, id: NodeId) -> bool {
    ConvNhwcGemm
        .cost(&bare_site(planner, id, &HashMap::new()))
        .is_some()
}

/// The geometry of node `id` when it is an NHWC depthwise convolution with
/// taps laid out at compile time, which [`WindowNhwcKernel`] takes (it is
/// then the node's step).
pub(super) fn accepts_nhwc_depthwise(planner: &Planner<'_>, id: NodeId) -> Option<WindowGeometry> {
    if !planner.depthwise_taps.contains_key(&id) {
        return None;
    }
    let (op, g, _) = nhwc_window(planner.graph, id, |n| planner.shape(n))?;
    WindowNhwcKernel.cost(&bare_site(planner, id, &HashMap::new()))?;
    (op == WindowOp::Depthwise).then_some(g)
}

/// Depthwise convolution (one input channel per group), max and average
/// pooling: one loop nest per output plane, vectorised along the width,
/// compiled for each tier (`codegen::conv::window2d`).
struct WindowKernel;

impl WindowKernel {
    fn op(site: &NodeSite<'_, '_>) -> Option<(WindowOp, WindowGeometry, Option<PostActivation>)> {
        if !site.all_f32() {
            return None;
        }
        let x = site.in_shape(0);
        if let Op::Pool2d(pool) = &site.node.op {
            if pool.window.layout != DataLayout::Nchw {
                return None;
            }
            let pad = |axis: usize| {
                pool.window
                    .pads(axis, x[2 + axis], pool.kernel[axis])
                    .map(|p| p.0)
            };
            let geometry = WindowGeometry {
                batch: x[0],
                in_channels: x[1],
                in_h: x[2],
                in_w: x[3],
                out_channels: x[1],
                out_h: site.out_shape[2],
                out_w: site.out_shape[3],
                kernel: pool.kernel,
                stride: pool.window.stride,
                dilation: pool.window.dilation,
                pad: [pad(0)?, pad(1)?],
                groups: 1,
            };
            let op = match pool.kind {
                PoolKind::Max => WindowOp::Max,
                PoolKind::Avg { count_include_pad } => WindowOp::Avg { count_include_pad },
            };
            return Some((op, geometry, None));
        }
        let conv = ConvNode::of(&site.node.op, site.inputs.len())?;
        let w = site.in_shape(1);
        if !ConvNode::is_depthwise(&w, conv.conv.groups) {
            return None;
        }
        let post = match conv.activation {
            None => None,
            Some(op) => Some(PostActivation::from_unary(op)?),
        };
        Some((
            WindowOp::Depthwise,
            conv.geometry(&x, &w, &site.out_shape),
            post,
        ))
    }
}

impl KernelCandidate for WindowKernel {
    fn name(&self) -> &'static str {
        "window2d"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let (_, g, _) = WindowKernel::op(site)?;
        let lanes = (site.planner.isa.vector_bits() / 32) as u64;
        Some(
            (site.numel() * (g.kernel[0] * g.kernel[1]).max(1)) as u64 * 2 / lanes
                + site.numel() as u64,
        )
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let (op, geometry, post) = WindowKernel::op(site).expect("cost accepted the node");
        let conv = ConvNode::of(&site.node.op, site.inputs.len());
        Ok(Step::Window {
            op,
            geometry,
            x: site.at(0),
            weights: conv.as_ref().map(|_| site.at(1)),
            bias: conv.as_ref().filter(|c| c.bias).map(|_| site.at(2)),
            post,
            residual: conv.as_ref().and_then(|c| c.residual).map(|i| site.at(i)),
            out: site.out(),
        })
    }
}

/// Depthwise convolution (`groups == channels`, one output channel each)
/// and max/average pooling in NHWC (`layout="nhwc"`): one loop nest per
/// output row, vectorised across channels (`codegen::window_nhwc`), on
/// every tier. Depthwise taps are laid out `[kh * kw][C]` once when the
/// model is compiled ([`nhwc_depthwise_taps`]), else per run into arena
/// scratch.
struct WindowNhwcKernel;

/// What a node is for the NHWC window kernel: the op, its geometry (the
/// shape rule accepted the sizes), and the activation after it.
fn nhwc_window(
    graph: &Graph,
    id: NodeId,
    shape: impl Fn(NodeId) -> Vec<usize>,
) -> Option<(WindowOp, WindowGeometry, Option<PostActivation>)> {
    let node = graph.node(id);
    let inputs = graph.inputs(id);
    if node.ty.dtype != DType::F32 || inputs.iter().any(|&i| graph.node(i).ty.dtype != DType::F32) {
        return None;
    }
    let x = shape(inputs[0]);
    let out = shape(id);
    if x.len() != 4 || out.len() != 4 {
        return None;
    }
    if let Op::Pool2d(pool) = &node.op {
        if pool.window.layout != DataLayout::Nhwc {
            return None;
        }
        let pad = |axis: usize| {
            pool.window
                .pads(axis, x[1 + axis], pool.kernel[axis])
                .map(|p| p.0)
        };
        let geometry = WindowGeometry {
            batch: x[0],
            in_channels: x[3],
            in_h: x[1],
            in_w: x[2],
            out_channels: out[3],
            out_h: out[1],
            out_w: out[2],
            kernel: pool.kernel,
            stride: pool.window.stride,
            dilation: pool.window.dilation,
            pad: [pad(0)?, pad(1)?],
            groups: 1,
        };
        let op = match pool.kind {
            PoolKind::Max => WindowOp::Max,
            PoolKind::Avg { count_include_pad } => WindowOp::Avg { count_include_pad },
        };
        return Some((op, geometry, None));
    }
    let conv = ConvNode::any_layout(&node.op, inputs.len())?;
    if conv.conv.window.layout != DataLayout::Nhwc {
        return None;
    }
    let w = shape(inputs[1]);
    let c = x[3];
    // One input and one output channel per group, every channel its group.
    if w.len() != 4 || w[0] != c || w[1] != 1 || conv.conv.groups != c || out[3] != c {
        return None;
    }
    let post = match conv.activation {
        None => None,
        Some(op) => Some(PostActivation::from_unary(op)?),
    };
    Some((WindowOp::Depthwise, conv.geometry(&x, &w, &out), post))
}

/// NHWC depthwise taps laid out `[kh * kw][C]` for node `id`, when it is
/// an NHWC depthwise convolution whose weights are constants (`weight`).
pub(super) fn nhwc_depthwise_taps(
    graph: &Graph,
    id: NodeId,
    weight: impl Fn(NodeId) -> Option<std::sync::Arc<crate::tensor::Tensor>>,
) -> Option<Vec<f32>> {
    let inputs = graph.inputs(id);
    let conv = ConvNode::any_layout(&graph.node(id).op, inputs.len())?;
    let w_shape = graph.node(inputs[1]).ty.known_shape()?;
    if conv.conv.window.layout != DataLayout::Nhwc
        || w_shape.len() != 4
        || w_shape[1] != 1
        || w_shape[0] != conv.conv.groups
    {
        return None;
    }
    let w = weight(inputs[1])?;
    let mut taps = vec![0.0; w_shape.iter().product()];
    pack_depthwise_taps(w.as_f32()?, w_shape[0], w_shape[2] * w_shape[3], &mut taps).ok()?;
    Some(taps)
}

/// Arena scratch for node `id`'s taps when it is an NHWC depthwise
/// convolution whose weights were not laid out when the model was compiled.
pub(super) fn nhwc_taps_scratch(planner: &Planner<'_>, id: NodeId) -> Option<usize> {
    if planner.depthwise_taps.contains_key(&id) {
        return None;
    }
    let (op, g, _) = nhwc_window(planner.graph, id, |n| planner.shape(n))?;
    (op == WindowOp::Depthwise).then(|| g.in_channels * g.kernel[0] * g.kernel[1])
}

impl KernelCandidate for WindowNhwcKernel {
    fn name(&self) -> &'static str {
        "window2d_nhwc"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let (op, g, _) = nhwc_window(site.planner.graph, site.id, |n| site.planner.shape(n))?;
        if op == WindowOp::Depthwise
            && site.scratch.is_none()
            && !site.planner.depthwise_taps.contains_key(&site.id)
        {
            return None;
        }
        let lanes = (site.planner.isa.vector_bits() / 32) as u64;
        Some((site.numel() * (g.kernel[0] * g.kernel[1]).max(1)) as u64 * 2 / lanes)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let (op, geometry, post) =
            nhwc_window(site.planner.graph, site.id, |n| site.planner.shape(n))
                .expect("cost accepted the node");
        let conv = ConvNode::any_layout(&site.node.op, site.inputs.len());
        let taps = conv
            .as_ref()
            .map(|_| match site.planner.depthwise_taps.get(&site.id) {
                Some(taps) => NhwcTaps::Packed(taps.clone()),
                None => NhwcTaps::PerRun {
                    weights: site.at(1),
                    scratch: site.scratch.expect("cost checked the scratch"),
                },
            });
        Ok(Step::WindowNhwc {
            op,
            geometry,
            x: site.at(0),
            taps,
            bias: conv.as_ref().filter(|c| c.bias).map(|_| site.at(2)),
            post,
            residual: conv.as_ref().and_then(|c| c.residual).map(|i| site.at(i)),
            out: site.out(),
        })
    }
}

/// Inference `batch_norm` on f32: a per-channel scale and shift
/// (`codegen::conv::batch_norm`), for the batch norms `fold-batch-norm`
/// cannot fold into a convolution.
struct BatchNormAffine;

impl KernelCandidate for BatchNormAffine {
    fn name(&self) -> &'static str {
        "batch_norm_affine"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        matches!(site.node.op, Op::BatchNorm(_)).then_some(())?;
        site.all_f32().then_some(site.numel() as u64 * 2)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let Op::BatchNorm(bn) = &site.node.op else {
            unreachable!("cost accepted only batch_norm");
        };
        Ok(Step::BatchNorm {
            eps: f64::from(bn.eps.0),
            x: site.at(0),
            stats: [site.at(1), site.at(2), site.at(3), site.at(4)],
            channels: site.out_shape[1],
            inner: site.out_shape[2..].iter().product(),
            out: site.out(),
        })
    }
}

/// Elementwise ops and fused expressions on f32, as one f32x4 loop.
struct ElementwiseJit;

impl ElementwiseJit {
    fn expr(op: &Op) -> Option<ElementwiseExpr> {
        Some(match op {
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
            // The loop broadcasts its inputs: a copy to the output shape is a broadcast.
            Op::Broadcast(_) => ElementwiseExpr {
                steps: vec![ExprStep::Input(0)],
            },
            _ => return None,
        })
    }
}

impl KernelCandidate for ElementwiseJit {
    fn name(&self) -> &'static str {
        "elementwise_f32x4"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let expr = ElementwiseJit::expr(&site.node.op)?;
        if !site.all_f32() || elementwise_supports(&expr, site.inputs.len()).is_err() {
            return None;
        }
        Some(site.numel() as u64 * expr.steps.len() as u64)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError> {
        let expr = ElementwiseJit::expr(&site.node.op).expect("cost accepted the node");
        let out_last = site.out_shape.last().copied().unwrap_or(1);
        let strides: Vec<InnerStride> = (0..site.inputs.len())
            .map(|i| InnerStride::for_shape(&site.in_shape(i), out_last))
            .collect();
        Ok(match kernels.elementwise(&expr, &strides)? {
            Some(kernel) => Step::Elementwise {
                kernel,
                inputs: (0..site.inputs.len())
                    .map(|i| (site.at(i), site.in_shape(i)))
                    .collect(),
                out_shape: site.out_shape.clone(),
                out: site.out(),
            },
            // The code generator refused after all: still correct.
            None => Interpreter.plan(site, kernels)?,
        })
    }
}

/// Row kernels over the last axis: softmax, log_softmax, layer_norm, and
/// sum/mean/max over the last axis alone (f64 sums).
struct RowJit;

impl RowJit {
    /// The row op and the row length.
    fn row(site: &NodeSite<'_, '_>) -> Option<(RowOp, usize)> {
        if !site.all_f32() {
            return None;
        }
        let last = site.out_shape.len().checked_sub(1);
        match &site.node.op {
            Op::Softmax(Softmax { axis }) if Some(*axis) == last => {
                Some((RowOp::Softmax, site.out_shape[*axis]))
            }
            Op::LogSoftmax(LogSoftmax { axis }) if Some(*axis) == last => {
                Some((RowOp::LogSoftmax, site.out_shape[*axis]))
            }
            Op::LayerNorm(LayerNorm { axis, eps }) => {
                Some((RowOp::LayerNorm { eps: eps.0 }, site.out_shape[*axis]))
            }
            Op::Reduce(Reduce { op, axes, .. }) => {
                let x = site.in_shape(0);
                let len = *x.last()?;
                (len > 0 && axes.as_slice() == [x.len() - 1]).then_some((RowOp::Reduce(*op), len))
            }
            _ => None,
        }
    }
}

impl KernelCandidate for RowJit {
    fn name(&self) -> &'static str {
        "row_f32x4"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        let (_, len) = RowJit::row(site)?;
        let x: usize = site.in_shape(0).iter().product();
        Some(x.max(len) as u64 * 2)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, kernels: &mut Kernels) -> Result<Step, StepError> {
        let (op, row_len) = RowJit::row(site).expect("cost accepted the node");
        let elements: usize = site.in_shape(0).iter().product();
        let layer_norm = matches!(op, RowOp::LayerNorm { .. });
        Ok(Step::Row {
            kernel: kernels.row(op)?,
            x: site.at(0),
            rows: elements / row_len.max(1),
            row_len,
            gain: layer_norm.then(|| site.at(1)),
            bias: layer_norm.then(|| site.at(2)),
            out: site.out(),
        })
    }
}

/// sum/mean/max over any axes, by a strided walk in Rust (f64 sums).
struct StridedReduce;

impl KernelCandidate for StridedReduce {
    fn name(&self) -> &'static str {
        "reduce_strided"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        matches!(site.node.op, Op::Reduce(_)).then_some(())?;
        site.all_f32().then_some(())?;
        let x: usize = site.in_shape(0).iter().product();
        Some(x as u64 * 8)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let Op::Reduce(Reduce { op, axes, .. }) = &site.node.op else {
            unreachable!("cost accepted only reductions");
        };
        Ok(Step::Reduce {
            x: site.at(0),
            reduction: Reduction::new(&site.in_shape(0), axes, *op),
            out: site.out(),
        })
    }
}

/// permute and slice of f32 tensors: a strided copy.
struct StridedCopy;

impl KernelCandidate for StridedCopy {
    fn name(&self) -> &'static str {
        "copy_strided"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        matches!(site.node.op, Op::Permute(_) | Op::Slice(_)).then_some(())?;
        site.all_f32().then_some(site.numel() as u64 * 2)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let x = site.in_shape(0);
        let walk = match &site.node.op {
            Op::Permute(Permute { perm }) => Strided::permute(&x, perm),
            Op::Slice(Slice {
                axis, start, step, ..
            }) => Strided::slice(&x, *axis, *start, *step, site.out_shape[*axis]),
            _ => unreachable!("cost accepted only permute and slice"),
        }
        .simplified();
        Ok(Step::Copy {
            x: site.at(0),
            walk,
            out: site.out(),
        })
    }
}

/// concat of f32 tensors: block copies.
struct ConcatCopy;

impl KernelCandidate for ConcatCopy {
    fn name(&self) -> &'static str {
        "concat_copy"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        matches!(site.node.op, Op::Concat(_)).then_some(())?;
        site.all_f32().then_some(site.numel() as u64)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let Op::Concat(Concat { axis }) = &site.node.op else {
            unreachable!("cost accepted only concat");
        };
        Ok(Step::Concat {
            parts: (0..site.inputs.len())
                .map(|i| (site.at(i), site.in_shape(i)[*axis..].iter().product()))
                .collect(),
            outer: site.out_shape[..*axis].iter().product(),
            out: site.out(),
        })
    }
}

/// gather of rows of an f32 table (embeddings), ids checked as they are read.
struct GatherRows;

impl KernelCandidate for GatherRows {
    fn name(&self) -> &'static str {
        "gather_rows"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        matches!(site.node.op, Op::Gather(_)).then_some(())?;
        (site.node.ty.dtype == DType::F32).then_some(site.numel() as u64)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        let Op::Gather(Gather { axis }) = &site.node.op else {
            unreachable!("cost accepted only gather");
        };
        let t = site.in_shape(0);
        Ok(Step::Gather {
            table: site.at(0),
            outer: t[..*axis].iter().product(),
            size: t[*axis],
            inner: t[axis + 1..].iter().product(),
            ids: site.at(1),
            out: site.out(),
        })
    }
}

/// cast to f32 (casts to the operand's own dtype are views, not steps).
struct CastToF32;

impl KernelCandidate for CastToF32 {
    fn name(&self) -> &'static str {
        "cast_to_f32"
    }

    fn cost(&self, site: &NodeSite<'_, '_>) -> Option<u64> {
        matches!(site.node.op, Op::Cast(Cast { to: DType::F32 })).then_some(site.numel() as u64)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        Ok(Step::CastToF32 {
            x: site.at(0),
            out: site.out(),
        })
    }
}

/// The op's reference evaluation (`OpKind::eval`) inside the executor:
/// takes every node; slower, never wrong.
pub(super) struct Interpreter;

impl KernelCandidate for Interpreter {
    fn name(&self) -> &'static str {
        "interpreter"
    }

    fn cost(&self, _site: &NodeSite<'_, '_>) -> Option<u64> {
        Some(u64::MAX)
    }

    fn plan(&self, site: &NodeSite<'_, '_>, _kernels: &mut Kernels) -> Result<Step, StepError> {
        Ok(Step::Fallback {
            op: site.node.op.clone(),
            inputs: site
                .inputs
                .iter()
                .map(|&i| (site.loc[&i], site.planner.shape(i)))
                .collect(),
            out_ty: site.node.ty.clone(),
            out: site.out(),
        })
    }
}
