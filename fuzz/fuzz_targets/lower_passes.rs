//! Model text that loads goes through every pass: the pass manager verifies
//! the graph and its signature after each pass, so any error here (or a
//! panic) is a bug in a pass, and the result must verify again.
#![cfg_attr(feature = "libfuzzer", no_main)]

use std::path::Path;

/// Graphs beyond this are skipped: the passes' speed on huge graphs is a
/// benchmark's business, and the fuzzer should not stall on one input.
const MAX_NODES: usize = 20_000;

fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let Ok(loaded) = lamina::model::load_source(Path::new("fuzz.lam"), text.clone()) else {
        return;
    };
    let mut graph = loaded.graph;
    if graph.node_count() > MAX_NODES {
        return;
    }
    if let Err(e) = lamina::passes::optimize(&mut graph) {
        panic!("the passes fail: {e}\nmodel:\n{text}");
    }
    if let Err(e) = lamina::ir::verify::verify(&graph) {
        panic!("the optimised graph does not verify: {e}\nmodel:\n{text}");
    }
}

lamina_fuzz::target!("lower_passes", check);
