//! Linear-layer fusion: `act(x @ w + bias) + residual` -> one `fused_linear`.
//!
//! Starting at a matmul, the pass walks the chain of sole readers, taking
//! in order an optional bias add, an optional activation (relu, gelu,
//! gelu_tanh, sigmoid, tanh, relu6, hard_sigmoid, hard_swish:
//! `UnaryOp::is_activation`) and an optional residual add. It guards the
//! traps that make a lookalike not a linear layer:
//!
//! - `w` must be a 2-D weight: a parameter, a constant, or computed from
//!   those alone (`transpose(w) * 0.5`, folded to a constant when parameter
//!   values are bound). A batched weight, or a right operand computed from
//!   the inputs (attention's `q @ k^T`), is not a layer's weight. `x` may have
//!   any rank >= 2 (`[batch, seq, k] @ [k, n]`: M is the product of the
//!   leading dims). A matmul with `transpose_a` is left alone.
//! - a bias has shape `[n]`, broadcast along the last axis; `[m, 1]` or
//!   `[1, n]` is not a bias, and `[m, n]` is taken as a residual instead.
//!   A computed bias or residual is fine as long as it does not depend on
//!   the matmul itself (fusing that would make a cycle).
//! - every absorbed intermediate must have no other reader and not be an
//!   output, or its value would be lost.
//!
//! An existing `fused_linear` whose epilogue has room is extended the same
//! way, so the pass reaches the same result however often it runs.

use super::edit::{add_node, is_weight, replace};
use super::epilogue::{self, Stage};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::{FusedLinear, MatMul};
use crate::ir::{Graph, LinearEpilogue, NodeId, Op};

pub struct LinearFusion;

struct Chain {
    a: NodeId,
    b: NodeId,
    transpose_b: bool,
    bias: Option<NodeId>,
    activation: Option<crate::ir::UnaryOp>,
    residual: Option<NodeId>,
    /// The last node of the chain, whose readers the fused node takes over.
    last: NodeId,
}

impl Pass for LinearFusion {
    fn name(&self) -> &'static str {
        "fuse-linear"
    }

    fn description(&self) -> &'static str {
        "fuse matmul + bias + activation + residual into fused_linear"
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
            let mut inputs = vec![chain.a, chain.b];
            inputs.extend(chain.bias);
            inputs.extend(chain.residual);
            let op = Op::FusedLinear(FusedLinear {
                transpose_b: chain.transpose_b,
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
    let mut parts = vec!["matmul".to_string()];
    if chain.bias.is_some() {
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

/// The linear layer starting at `id`, if at least one epilogue op can join it.
fn match_chain(graph: &Graph, id: NodeId) -> Option<Chain> {
    let ins = graph.inputs(id);
    let (transpose_b, bias, activation, stage) = match &graph.node(id).op {
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b,
        }) => (*transpose_b, None, None, Stage::Bias),
        Op::FusedLinear(FusedLinear {
            transpose_b,
            epilogue,
        }) => (
            *transpose_b,
            epilogue.bias.then(|| ins[2]),
            epilogue.activation,
            Stage::after(epilogue),
        ),
        _ => return None,
    };
    let (a, b) = (ins[0], ins[1]);
    if !is_weight(graph, b) || graph.node(b).ty.rank() != 2 {
        return None;
    }
    let n = graph.node(id).ty.shape.last()?.clone();
    let found = epilogue::walk(
        graph,
        id,
        stage,
        |ty| ty.shape == [n.clone()],
        |act| act.is_activation(),
    );
    (found.count > 0).then(|| Chain {
        a,
        b,
        transpose_b,
        bias: found.bias.or(bias),
        activation: found.activation.or(activation),
        residual: found.residual,
        last: found.last,
    })
}
