//! Convolution fusion: `act(conv2d(x, w, b)) + residual` -> one
//! `fused_conv2d`, the convolutional twin of `fuse-linear` (same epilogue,
//! `LinearEpilogue`, so the kernels implement one).
//!
//! Starting at a `conv2d`, the pass walks the chain of sole readers, taking
//! in order an optional bias add (only when the convolution has no bias of
//! its own), an optional activation and an optional residual add. The
//! traps that make a lookalike not a convolution layer:
//!
//! - `w` must be a weight (a parameter, a constant, or computed from those
//!   alone): kernels pack it once at compile time. A convolution by a
//!   tensor computed from the inputs is left alone.
//! - a bias is one value per output channel broadcast over NCHW: `[C, 1, 1]`
//!   or `[1, C, 1, 1]` (given to the fused node reshaped to `[C]`). A `[C]`
//!   operand broadcasts along the width, not the channels, and is not a
//!   bias; an operand of the output's type is a residual.
//! - every absorbed intermediate must have no other reader and not be an
//!   output, or its value would be lost; a bias or residual computed from
//!   the convolution itself would make a cycle.
//!
//! Activations: those the GEMM epilogue has (`UnaryOp::is_activation`:
//! relu, gelu, gelu_tanh, sigmoid, tanh, relu6, hard_sigmoid, hard_swish),
//! the same set as `fuse-linear`.
//!
//! An existing `fused_conv2d` whose epilogue has room is extended the same
//! way, so the pass reaches the same result however often it runs. A
//! convolution nothing joins stays a `conv2d`.

use super::edit::{add_node, is_weight, replace};
use super::epilogue::{self, Stage};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::window::DataLayout;
use crate::ir::ops::{Conv2d, FusedConv2d, Reshape};
use crate::ir::{DType, Dim, Graph, LinearEpilogue, NodeId, Op, UnaryOp};

pub struct ConvFusion;

/// Where the chain's bias comes from.
#[derive(Clone, Copy)]
enum Bias {
    /// The convolution's own `[C]` operand (or the fused node's).
    Own(NodeId),
    /// A broadcast add of one value per channel (`[C, 1, 1]` or `[1, C, 1, 1]`
    /// in NCHW; `[C]`, `[1, C]`, `[1, 1, C]` or `[1, 1, 1, C]` in NHWC),
    /// reshaped to `[C]` when fused.
    Added(NodeId),
}

struct Chain {
    x: NodeId,
    w: NodeId,
    conv: Conv2d,
    bias: Option<Bias>,
    activation: Option<UnaryOp>,
    residual: Option<NodeId>,
    /// The last node of the chain, whose readers the fused node takes over.
    last: NodeId,
}

impl Pass for ConvFusion {
    fn name(&self) -> &'static str {
        "fuse-conv"
    }

    fn description(&self) -> &'static str {
        "fuse conv2d + bias + activation + residual into fused_conv2d"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        for id in graph.topo_order() {
            if !graph.contains(id) {
                continue;
            }
            let Some(chain) = match_chain(graph, id) else {
                continue;
            };
            let span = graph.node(id).span;
            if !steps.take(chain_kind(&chain), span) {
                break;
            }
            let mut inputs = vec![chain.x, chain.w];
            match chain.bias {
                Some(Bias::Own(b)) => inputs.push(b),
                Some(Bias::Added(b)) => {
                    let channels = graph.node(chain.w).ty.shape[0].clone();
                    let op = Op::Reshape(Reshape {
                        shape: vec![channels],
                    });
                    inputs.push(add_node(graph, self.name(), op, &[b], span)?);
                }
                None => {}
            }
            inputs.extend(chain.residual);
            let op = Op::FusedConv2d(FusedConv2d {
                conv: chain.conv,
                epilogue: LinearEpilogue {
                    bias: chain.bias.is_some(),
                    activation: chain.activation,
                    residual: chain.residual.is_some(),
                },
            });
            let fused = add_node(graph, self.name(), op, &inputs, span)?;
            replace(graph, self.name(), chain.last, fused)?;
        }
        Ok(())
    }
}

fn chain_kind(chain: &Chain) -> String {
    let mut parts = vec!["conv2d".to_string()];
    if let Some(Bias::Added(_)) = chain.bias {
        parts.push("bias".into());
    }
    if let Some(act) = chain.activation {
        parts.push(act.name().into());
    }
    if chain.residual.is_some() {
        parts.push("residual".into());
    }
    parts.join("+")
}

/// Whether `ty` is one value per channel of a `layout` tensor with
/// `channels` channels, broadcast over batch, height and width.
fn is_channel_bias(ty: &crate::ir::TensorType, channels: &Dim, layout: DataLayout) -> bool {
    let one = Dim::known(1);
    // Broadcasting aligns trailing axes: the shape is the 4-D one with some
    // leading axes dropped, and every axis but the channels' is 1.
    let rank = ty.shape.len();
    let channel_axis = layout.channel_axis();
    ty.dtype == DType::F32
        && (1..=4).contains(&rank)
        && channel_axis >= 4 - rank
        && ty.shape.iter().enumerate().all(|(i, d)| {
            if i + 4 - rank == channel_axis {
                d == channels
            } else {
                *d == one
            }
        })
}

/// The convolution layer starting at `id`, if at least one epilogue op can join it.
fn match_chain(graph: &Graph, id: NodeId) -> Option<Chain> {
    let ins = graph.inputs(id);
    let (conv, bias, activation, stage) = match &graph.node(id).op {
        Op::Conv2d(conv) => {
            let bias = ins.get(2).copied();
            let stage = if bias.is_some() {
                Stage::Activation
            } else {
                Stage::Bias
            };
            (conv.clone(), bias, None, stage)
        }
        Op::FusedConv2d(FusedConv2d { conv, epilogue }) => (
            conv.clone(),
            epilogue.bias_operand(2).map(|i| ins[i]),
            epilogue.activation,
            Stage::after(epilogue),
        ),
        _ => return None,
    };
    let (x, w) = (ins[0], ins[1]);
    if !is_weight(graph, w) {
        return None;
    }
    let layout = conv.window.layout;
    let channels = graph.node(id).ty.shape.get(layout.channel_axis())?.clone();
    let found = epilogue::walk(
        graph,
        id,
        stage,
        |ty| is_channel_bias(ty, &channels, layout),
        UnaryOp::is_activation,
    );
    (found.count > 0).then(|| Chain {
        x,
        w,
        conv,
        bias: found.bias.map(Bias::Added).or(bias.map(Bias::Own)),
        activation: found.activation.or(activation),
        residual: found.residual,
        last: found.last,
    })
}
