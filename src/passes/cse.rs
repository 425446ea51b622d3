//! Common-subexpression elimination: two nodes computing the same op on the
//! same operands become one.
//!
//! Constants compare by value (bit pattern, so `0.0` and `-0.0` stay apart),
//! which merges the many scalar literals a model source produces. `add` and
//! `mul` are commutative in IEEE arithmetic, so `a + b` and `b + a` merge
//! too. Inputs and parameters are never merged: each names its own value.

use crate::ir::ops::Constant;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::edit::{replace, same_bits};
use super::{Pass, PassContext, PassError, Steps};
use crate::ir::{BinaryOp, CompareOp, Graph, NodeId, Op};

pub struct CommonSubexpressions;

impl Pass for CommonSubexpressions {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn description(&self) -> &'static str {
        "merge nodes computing the same op on the same operands (constants by value)"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        // Operands are rewritten before their readers (topological order),
        // so comparing operand ids compares values.
        let mut seen: HashMap<u64, Vec<NodeId>> = HashMap::new();
        for id in graph.topo_order() {
            if !graph.contains(id) || matches!(graph.node(id).op, Op::Input(_) | Op::Param(_)) {
                continue;
            }
            let operands = canonical_operands(graph, id);
            let key = {
                let mut h = DefaultHasher::new();
                hash_op(&graph.node(id).op, &mut h);
                operands.hash(&mut h);
                graph.node(id).ty.hash(&mut h);
                h.finish()
            };
            let bucket = seen.entry(key).or_default();
            let twin = bucket.iter().copied().find(|&other| {
                graph.contains(other)
                    && graph.node(other).ty == graph.node(id).ty
                    && same_op(&graph.node(other).op, &graph.node(id).op)
                    && canonical_operands(graph, other) == operands
            });
            match twin {
                Some(twin) => {
                    if !steps.take("merged", graph.node(id).span) {
                        break;
                    }
                    replace(graph, self.name(), id, twin)?;
                }
                None => bucket.push(id),
            }
        }
        Ok(())
    }
}

fn is_commutative(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(BinaryOp::Add | BinaryOp::Mul) | Op::Compare(CompareOp::Eq | CompareOp::Ne)
    )
}

/// Operands in position order, sorted for commutative ops.
fn canonical_operands(graph: &Graph, id: NodeId) -> Vec<NodeId> {
    let mut operands = graph.inputs(id);
    if is_commutative(&graph.node(id).op) {
        operands.sort_unstable();
    }
    operands
}

fn same_op(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Constant(Constant { value: x }), Op::Constant(Constant { value: y })) => {
            same_bits(x, y)
        }
        (Op::Constant(_), _) | (_, Op::Constant(_)) => false,
        _ => a == b,
    }
}

/// Hashes everything `same_op` compares: the op's kind and its attributes
/// (large constants by a prefix of their data; the full comparison settles
/// collisions).
fn hash_op(op: &Op, h: &mut DefaultHasher) {
    std::mem::discriminant(op).hash(h);
    op.kind().hash_attributes(h);
}
