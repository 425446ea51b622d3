//! Folds a transpose of a matmul operand into the matmul's flags:
//! `a @ transpose(w)` -> `matmul(a, w, transpose_b=true)`, the same for `a`,
//! and for the `b` of a fused linear layer. The kernel then reads the
//! operand transposed instead of a copy being made first.
//!
//! Only a permute that swaps exactly the last two axes is a transpose here;
//! a transpose that other nodes also read stays for them. A transposed `a`
//! is folded only when that saves its copy and keeps linear fusion possible
//! (see `worth_folding_a`).

use super::edit::{add_node, is_last_two_swap, is_weight, replace, sole_user};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::ops::{FusedLinear, MatMul, Permute};
use crate::ir::{Graph, NodeId, Op};

pub struct TransposeIntoMatMul;

impl Pass for TransposeIntoMatMul {
    fn name(&self) -> &'static str {
        "transpose-matmul"
    }

    fn description(&self) -> &'static str {
        "fold transposed matmul operands into transpose_a/transpose_b"
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
            let mut operands = graph.inputs(id);
            let (op, kind) = match graph.node(id).op.clone() {
                Op::MatMul(MatMul {
                    transpose_a,
                    transpose_b,
                }) => {
                    let a = transposed_source(graph, operands[0])
                        .filter(|_| worth_folding_a(graph, id, operands[0], operands[1]));
                    let b = transposed_source(graph, operands[1]);
                    let (kind, new_a, new_b) = match (a, b) {
                        (Some(a), Some(b)) => ("transpose(a)+transpose(b)", Some(a), Some(b)),
                        (Some(a), None) => ("transpose(a)", Some(a), None),
                        (None, Some(b)) => ("transpose(b)", None, Some(b)),
                        (None, None) => continue,
                    };
                    if let Some(a) = new_a {
                        operands[0] = a;
                    }
                    if let Some(b) = new_b {
                        operands[1] = b;
                    }
                    let op = Op::MatMul(MatMul {
                        transpose_a: transpose_a ^ new_a.is_some(),
                        transpose_b: transpose_b ^ new_b.is_some(),
                    });
                    (op, kind)
                }
                Op::FusedLinear(FusedLinear {
                    transpose_b,
                    epilogue,
                }) => {
                    let Some(b) = transposed_source(graph, operands[1]) else {
                        continue;
                    };
                    operands[1] = b;
                    let op = Op::FusedLinear(FusedLinear {
                        transpose_b: !transpose_b,
                        epilogue,
                    });
                    (op, "transpose(b)")
                }
                _ => continue,
            };
            let span = graph.node(id).span;
            if !steps.take(kind, span) {
                break;
            }
            let new = add_node(graph, self.name(), op, &operands, span)?;
            replace(graph, self.name(), id, new)?;
        }
        Ok(())
    }
}

/// Folding `transpose(x)` into `transpose_a` saves a copy only when the
/// matmul is the transpose's sole reader. It also makes the matmul
/// ineligible for linear fusion (`fused_linear` reads `a` as is), so a
/// matmul by a 2-D weight keeps its explicit transpose and fuses instead.
fn worth_folding_a(graph: &Graph, matmul: NodeId, a: NodeId, b: NodeId) -> bool {
    let sole_reader = sole_user(graph, a) == Some(matmul);
    let linear_layer = is_weight(graph, b) && graph.node(b).ty.rank() == 2;
    sole_reader && !linear_layer
}

/// The input of a last-two-axes transpose.
fn transposed_source(graph: &Graph, id: NodeId) -> Option<NodeId> {
    match &graph.node(id).op {
        Op::Permute(Permute { perm }) if is_last_two_swap(perm) => Some(graph.inputs(id)[0]),
        _ => None,
    }
}
