//! Channels last: a region of NCHW window ops (`conv2d`, `fused_conv2d`,
//! `max_pool2d`, `avg_pool2d`) and the ops between them becomes NHWC, with
//! a layout change only where the region meets the rest of the graph. The
//! kernels that vectorise across channels want NHWC: a depthwise
//! convolution runs about 7x faster on it (`models/bench/depthwise_nhwc.lam`
//! against `depthwise_nchw.lam`), and a GEMM convolution reads an NHWC
//! image as its row-major left operand.
//!
//! A region grows from a window op along the edges that carry the image:
//! a window op's input (and a fused convolution's residual), every operand
//! of an elementwise op (`unary`, `clip`, binary ops, compare, where, fused
//! ones) with a rank-4 result, `batch_norm`'s input, and reductions of a
//! rank-4 value. Members become:
//!
//! - window ops: the same op with `layout="nhwc"`; weights stay OIHW and
//!   the bias `[O]`, which the layout attribute already covers;
//! - elementwise ops: the same op, their lower-rank operands padded to rank
//!   4 and permuted like the image (a per-channel `[C, 1, 1]` becomes
//!   `[1, 1, 1, C]`), which `const-fold` folds for a weight;
//! - `batch_norm` (normalising axis 1, so it cannot read NHWC): its own
//!   formula as elementwise ops, `(x - mean) * (gain / sqrt(var + eps)) +
//!   bias`, the `[C]` statistics broadcasting along NHWC's last axis;
//! - reductions: the same reduction over the NHWC axes. One that drops the
//!   axes and leaves the rest in the same order (the `mean` over height and
//!   width of a classifier head, `[N, C]` either way) ends the region with
//!   no layout change at all.
//!
//! At the boundary a value entering is permuted to NHWC (once, however
//! many members read it) and a value read outside is permuted back. Either
//! is a reshape when only size-1 axes move (a one-channel image, a pooled
//! `[N, 1, 1, C]`), and nothing when the value is already a permute the
//! other way: `permute(x, [0, 3, 1, 2])` entering gives `x`, and a reader
//! `permute(y, [0, 2, 3, 1])` outside takes the NHWC `y` itself.
//!
//! A region is converted only when it pays: the copies it adds, less the
//! permutes it removes, must be fewer than its window ops. A copy is one
//! pass over a tensor, cheaper than a window op over it, but NHWC wins
//! back only part of a window op's time (and loses on some, such as a
//! stem over three channels), so a tie stays as written. Copies of
//! weights are free (folded once the parameters are bound). A lone
//! convolution between a model input and an output, say, would add two
//! copies for one window op and stays NCHW; so does one reading a
//! one-channel image (which enters NHWC through a reshape) and copied
//! back for its output. So does a convolution whose
//! weights are not weights (computed from inputs, as in a training step
//! graph, or a gradient's convolution by the incoming gradient): the NHWC
//! kernels lay their weights out once, when the model is compiled.

use std::collections::{HashMap, HashSet, VecDeque};

use super::edit::{add_constant, add_node, prune, redirect, weight_nodes};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::batch_norm::BatchNorm;
use crate::ir::ops::conv::Conv2d;
use crate::ir::ops::window::DataLayout;
use crate::ir::ops::{FusedConv2d, Permute, Reduce, Reshape};
use crate::ir::{BinaryOp, Dim, Graph, NodeId, Op, UnaryOp};
use crate::span::Span;
use crate::tensor::Tensor;

pub struct ChannelsLast;

/// NCHW -> NHWC and back, as `permute` orders.
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// What a node is in a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A window op: flips its layout attribute. What makes a region worth it.
    Window,
    /// A rank-4 result that becomes the NHWC permutation of its NCHW one.
    Follows,
    /// A reduction whose result is the same in both layouts: the region
    /// ends there without a layout change.
    Ends,
}

/// A connected set of nodes to convert, in topological order.
struct Region {
    members: Vec<NodeId>,
    set: HashSet<NodeId>,
    roles: HashMap<NodeId, Role>,
    windows: usize,
}

impl Pass for ChannelsLast {
    fn name(&self) -> &'static str {
        "channels-last"
    }

    fn description(&self) -> &'static str {
        "regions of NCHW convolutions and pools -> NHWC, permutes only at their boundary"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        let order = graph.topo_order();
        let position: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let weights = weight_nodes(graph);
        let mut seen: HashSet<NodeId> = HashSet::new();
        let mut regions = Vec::new();
        for &id in &order {
            if seen.contains(&id) || role(graph, id, &weights) != Some(Role::Window) {
                continue;
            }
            let region = grow(graph, id, &weights, &position);
            seen.extend(region.set.iter().copied());
            if worth_converting(graph, &region, &weights) {
                regions.push(region);
            }
        }
        // Regions are disjoint and each rewrite keeps every value outside
        // its own region (only adding permutes beside it), so one region's
        // rewrite leaves the others' nodes as they were found.
        for region in regions {
            let first_window = region
                .members
                .iter()
                .find(|m| region.roles[*m] == Role::Window);
            let span = first_window.and_then(|&m| graph.node(m).span);
            if !steps.take("nhwc region", span) {
                break;
            }
            convert(graph, self.name(), &region)?;
        }
        Ok(())
    }
}

/// What `id` would be in a region, if it can be in one at all.
fn role(graph: &Graph, id: NodeId, weights: &HashSet<NodeId>) -> Option<Role> {
    let node = graph.node(id);
    let rank4 = node.ty.rank() == 4;
    match &node.op {
        Op::Conv2d(Conv2d { window, .. })
        | Op::FusedConv2d(FusedConv2d {
            conv: Conv2d { window, .. },
            ..
        }) => (window.layout == DataLayout::Nchw && weights.contains(&graph.inputs(id)[1]))
            .then_some(Role::Window),
        Op::Pool2d(pool) => (pool.window.layout == DataLayout::Nchw).then_some(Role::Window),
        Op::BatchNorm(_) | Op::Clip(_) => rank4.then_some(Role::Follows),
        op if op.is_elementwise() => rank4.then_some(Role::Follows),
        Op::Reduce(reduce) => {
            let operand = graph.inputs(id)[0];
            if graph.node(operand).ty.rank() != 4 {
                None
            } else if reduce.keepdims {
                Some(Role::Follows)
            } else {
                keeps_axis_order(&reduce.axes).then_some(Role::Ends)
            }
        }
        _ => None,
    }
}

/// Whether the axes a reduction over NCHW `axes` keeps come in the same
/// order in NHWC, so its result is the same in both layouts.
fn keeps_axis_order(axes: &[usize]) -> bool {
    let kept = (0..4).filter(|a| !axes.contains(a));
    let in_nhwc: Vec<usize> = kept.map(nhwc_axis).collect();
    in_nhwc.windows(2).all(|w| w[0] < w[1])
}

/// Where NCHW axis `axis` is in NHWC.
fn nhwc_axis(axis: usize) -> usize {
    TO_NHWC
        .iter()
        .position(|&a| a == axis)
        .expect("an axis of a rank-4 tensor")
}

/// The operand positions of a member that hold the image (in its layout),
/// as opposed to weights, a bias or batch-norm statistics.
fn image_operands(op: &Op, operands: usize) -> Vec<usize> {
    match op {
        Op::FusedConv2d(FusedConv2d { epilogue, .. }) => std::iter::once(0)
            .chain(epilogue.residual_operand(2))
            .collect(),
        Op::Conv2d(_) | Op::Pool2d(_) | Op::BatchNorm(_) | Op::Reduce(_) => vec![0],
        _ => (0..operands).collect(),
    }
}

/// The region around the window op `seed`: members reached along image
/// edges, producers (that are not weights) and readers alike.
fn grow(
    graph: &Graph,
    seed: NodeId,
    weights: &HashSet<NodeId>,
    position: &HashMap<NodeId, usize>,
) -> Region {
    let mut roles = HashMap::from([(seed, Role::Window)]);
    let mut work = VecDeque::from([seed]);
    while let Some(id) = work.pop_front() {
        let ins = graph.inputs(id);
        let mut neighbours: Vec<NodeId> = image_operands(&graph.node(id).op, ins.len())
            .into_iter()
            .map(|p| ins[p])
            .filter(|&x| graph.node(x).ty.rank() == 4 && !weights.contains(&x))
            .collect();
        if roles[&id] != Role::Ends {
            neighbours.extend(graph.users(id).into_iter().filter(|&user| {
                let user_ins = graph.inputs(user);
                image_operands(&graph.node(user).op, user_ins.len())
                    .iter()
                    .any(|&p| user_ins[p] == id)
            }));
        }
        for next in neighbours {
            if roles.contains_key(&next) {
                continue;
            }
            if let Some(r) = role(graph, next, weights) {
                roles.insert(next, r);
                work.push_back(next);
            }
        }
    }
    let mut members: Vec<NodeId> = roles.keys().copied().collect();
    members.sort_by_key(|id| position[id]);
    Region {
        set: members.iter().copied().collect(),
        windows: roles.values().filter(|&&r| r == Role::Window).count(),
        members,
        roles,
    }
}

/// How a value gets into another layout by a rank-4 `perm`, after padding
/// a lower-rank operand with leading 1s (broadcasting aligns trailing axes).
enum Relayout {
    /// Every dim is 1: the same elements in any layout.
    Unchanged,
    /// The value is a permute that `perm` undoes: its operand.
    Cancels(NodeId),
    /// Only size-1 axes move, so the memory order stays: a reshape.
    Reshape(Vec<Dim>),
    /// A copy.
    Permute,
}

fn relayout(graph: &Graph, x: NodeId, perm: [usize; 4]) -> Relayout {
    let shape = &graph.node(x).ty.shape;
    if shape.iter().all(Dim::is_one) {
        return Relayout::Unchanged;
    }
    if let Op::Permute(Permute { perm: inner }) = &graph.node(x).op {
        if inner.len() == 4 && perm.iter().enumerate().all(|(i, &p)| inner[p] == i) {
            return Relayout::Cancels(graph.inputs(x)[0]);
        }
    }
    let padded = padded_to_rank4(shape);
    let moved: Vec<usize> = perm
        .iter()
        .copied()
        .filter(|&p| !padded[p].is_one())
        .collect();
    if moved.windows(2).all(|w| w[0] < w[1]) {
        Relayout::Reshape(perm.iter().map(|&p| padded[p].clone()).collect())
    } else {
        Relayout::Permute
    }
}

fn padded_to_rank4(shape: &[Dim]) -> Vec<Dim> {
    let mut padded = vec![Dim::known(1); 4 - shape.len()];
    padded.extend(shape.iter().cloned());
    padded
}

/// `x` in the layout `perm` gives, as [`relayout`] says.
fn apply_relayout(
    graph: &mut Graph,
    pass: &'static str,
    x: NodeId,
    perm: [usize; 4],
    span: Option<Span>,
) -> Result<NodeId, PassError> {
    match relayout(graph, x, perm) {
        Relayout::Unchanged => Ok(x),
        Relayout::Cancels(source) => Ok(source),
        Relayout::Reshape(shape) if shape == graph.node(x).ty.shape => Ok(x),
        Relayout::Reshape(shape) => {
            add_node(graph, pass, Op::Reshape(Reshape { shape }), &[x], span)
        }
        Relayout::Permute => {
            let shape = &graph.node(x).ty.shape;
            let x4 = if shape.len() < 4 {
                let shape = padded_to_rank4(shape);
                add_node(graph, pass, Op::Reshape(Reshape { shape }), &[x], span)?
            } else {
                x
            };
            let op = Op::Permute(Permute {
                perm: perm.to_vec(),
            });
            add_node(graph, pass, op, &[x4], span)
        }
    }
}

/// A reader outside the region that wants the NHWC value: `permute(y,
/// [0, 2, 3, 1])`, whose readers can take the converted `y` instead.
fn wants_nhwc(graph: &Graph, reader: NodeId) -> bool {
    matches!(&graph.node(reader).op, Op::Permute(Permute { perm }) if perm[..] == TO_NHWC)
}

/// The readers of `id` outside the region (each once).
fn outside_readers(graph: &Graph, region: &Region, id: NodeId) -> Vec<NodeId> {
    graph
        .users(id)
        .into_iter()
        .filter(|u| !region.set.contains(u))
        .collect()
}

/// Whether the layout copies converting `region` adds, less the permutes
/// it removes, are fewer than its window ops (see the module comment).
fn worth_converting(graph: &Graph, region: &Region, weights: &HashSet<NodeId>) -> bool {
    let mut added = 0usize;
    let mut removed = 0usize;
    let mut entering = HashSet::new();
    for &m in &region.members {
        let ins = graph.inputs(m);
        for p in image_operands(&graph.node(m).op, ins.len()) {
            let x = ins[p];
            if region.set.contains(&x) || !entering.insert(x) {
                continue;
            }
            match relayout(graph, x, TO_NHWC) {
                Relayout::Permute if !weights.contains(&x) => added += 1,
                Relayout::Cancels(_)
                    if !graph.is_output(x)
                        && graph.users(x).iter().all(|u| region.set.contains(u)) =>
                {
                    removed += 1
                }
                _ => {}
            }
        }
        if region.roles[&m] == Role::Ends {
            continue;
        }
        let readers = outside_readers(graph, region, m);
        let (cancelled, other): (Vec<NodeId>, Vec<NodeId>) =
            readers.into_iter().partition(|&r| wants_nhwc(graph, r));
        removed += cancelled.len();
        let copied_back = !other.is_empty() || graph.is_output(m);
        if copied_back && matches!(relayout(graph, m, TO_NHWC), Relayout::Permute) {
            added += 1;
        }
    }
    added < removed + region.windows
}

/// Rewrites `region` to NHWC: new members first (in topological order, so
/// each reads its operands' new values), then every reader outside moved
/// to the new values (through a permute back to NCHW where needed), then
/// the old members removed.
fn convert(graph: &mut Graph, pass: &'static str, region: &Region) -> Result<(), PassError> {
    // Old member or value entering the region -> its NHWC value.
    let mut nhwc: HashMap<NodeId, NodeId> = HashMap::new();
    for &m in &region.members {
        let span = graph.node(m).span;
        let mut operands = graph.inputs(m);
        for p in image_operands(&graph.node(m).op, operands.len()) {
            let x = operands[p];
            operands[p] = match nhwc.get(&x) {
                Some(&converted) => converted,
                None => {
                    let converted = apply_relayout(graph, pass, x, TO_NHWC, span)?;
                    nhwc.insert(x, converted);
                    converted
                }
            };
        }
        let new = match graph.node(m).op.clone() {
            Op::BatchNorm(bn) => batch_norm_nhwc(graph, pass, &bn, &operands, span)?,
            op => add_node(graph, pass, in_nhwc(op), &operands, span)?,
        };
        nhwc.insert(m, new);
    }
    let mut stale = Vec::new();
    for &m in &region.members {
        let new = nhwc[&m];
        if region.roles[&m] == Role::Ends {
            redirect(graph, pass, m, new)?;
            continue;
        }
        for reader in outside_readers(graph, region, m) {
            if wants_nhwc(graph, reader) {
                redirect(graph, pass, reader, new)?;
                stale.push(reader);
            }
        }
        if !outside_readers(graph, region, m).is_empty() || graph.is_output(m) {
            let back = apply_relayout(graph, pass, new, TO_NCHW, graph.node(m).span)?;
            redirect(graph, pass, m, back)?;
        }
    }
    // The old members now feed only each other (and stale permutes); the
    // last ones go first, taking their unread producers with them.
    for id in stale
        .into_iter()
        .chain(region.members.iter().rev().copied())
    {
        if graph.contains(id) {
            prune(graph, id);
        }
    }
    Ok(())
}

/// A member's op as it reads and writes NHWC.
fn in_nhwc(op: Op) -> Op {
    match op {
        Op::Conv2d(mut conv) => {
            conv.window.layout = DataLayout::Nhwc;
            Op::Conv2d(conv)
        }
        Op::FusedConv2d(mut fused) => {
            fused.conv.window.layout = DataLayout::Nhwc;
            Op::FusedConv2d(fused)
        }
        Op::Pool2d(mut pool) => {
            pool.window.layout = DataLayout::Nhwc;
            Op::Pool2d(pool)
        }
        Op::Reduce(Reduce { op, axes, keepdims }) => {
            let mut axes: Vec<usize> = axes.into_iter().map(nhwc_axis).collect();
            axes.sort_unstable();
            Op::Reduce(Reduce { op, axes, keepdims })
        }
        elementwise => elementwise,
    }
}

/// `batch_norm(x, mean, var, gain, bias)` on an NHWC `x`, as the op defines
/// it: `(x - mean) * (gain / sqrt(var + eps)) + bias`; the `[C]` operands
/// broadcast along the last axis, the channels'.
fn batch_norm_nhwc(
    graph: &mut Graph,
    pass: &'static str,
    bn: &BatchNorm,
    operands: &[NodeId],
    span: Option<Span>,
) -> Result<NodeId, PassError> {
    let &[x, mean, var, gain, bias] = operands else {
        return Err(PassError::IllTyped {
            pass,
            op: "batch_norm",
            message: format!("has {} operands, not 5", operands.len()),
        });
    };
    let binary = |graph: &mut Graph, op, a, b| add_node(graph, pass, Op::Binary(op), &[a, b], span);
    let eps = add_constant(graph, Tensor::f32(vec![], vec![bn.eps.0]), span);
    let shifted = binary(graph, BinaryOp::Add, var, eps)?;
    let root = add_node(graph, pass, Op::Unary(UnaryOp::Sqrt), &[shifted], span)?;
    let scale = binary(graph, BinaryOp::Div, gain, root)?;
    let centred = binary(graph, BinaryOp::Sub, x, mean)?;
    let scaled = binary(graph, BinaryOp::Mul, centred, scale)?;
    binary(graph, BinaryOp::Add, scaled, bias)
}
