//! Dead-code elimination: removes every node no output depends on.
//!
//! Model inputs stay even when unused: they are part of the model's
//! signature, and callers still pass them.

use std::collections::HashSet;

use super::{Pass, PassContext, PassError, Steps};
use crate::ir::Graph;

pub struct DeadCodeElimination;

impl Pass for DeadCodeElimination {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn description(&self) -> &'static str {
        "remove nodes no output depends on"
    }

    fn run(
        &self,
        graph: &mut Graph,
        _cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError> {
        let mut live = HashSet::new();
        let mut work: Vec<_> = graph.outputs.iter().map(|(_, id)| *id).collect();
        work.extend(graph.inputs.iter().copied());
        while let Some(id) = work.pop() {
            if live.insert(id) {
                work.extend(graph.inputs(id));
            }
        }
        // Readers go before what they read, so every removal leaves the
        // remaining dead nodes with all their operands.
        let mut order = graph.topo_order();
        order.reverse();
        for id in order {
            if live.contains(&id) {
                continue;
            }
            if !steps.take("removed", graph.node(id).span) {
                break;
            }
            graph.remove_node(id);
        }
        Ok(())
    }
}
