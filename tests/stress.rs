//! Stress programs for the front end and the passes on very large models.
//! Ignored by default (they take seconds, not milliseconds); run with
//! `cargo test --release --test stress -- --ignored`. They assert results,
//! never times: a regression to quadratic work shows up as a run that does
//! not finish, which is what they are for.

use std::collections::HashMap;
use std::path::Path;

use lamina::model::load_source;
use lamina::passes::{PassContext, PassManager};

/// `h1 = h0 * 1.01`, `h2 = tanh(h1) * 0.5 + 0.1`, ...: one elementwise
/// chain of about 3.5 nodes a step, sharing its scalar constants.
fn chain(steps: usize) -> String {
    let mut text = String::from("model chain {\n  input x: f32[8]\n  h0 = x\n");
    for i in 1..=steps {
        if i % 2 == 1 {
            text.push_str(&format!("  h{i} = tanh(h{}) * 0.5 + 0.1\n", i - 1));
        } else {
            text.push_str(&format!("  h{i} = h{} * 1.01\n", i - 1));
        }
    }
    text.push_str(&format!("  output y = h{steps}\n}}\n"));
    text
}

#[test]
#[ignore = "stress: a 100,000-step chain through lowering and every pass"]
fn a_100k_step_elementwise_chain_goes_through_every_pass() {
    let model = load_source(Path::new("chain.lam"), chain(100_000)).expect("the chain is valid");
    let before = model.graph.node_count();
    assert!(before > 300_000, "{before}");
    let mut graph = model.graph.clone();
    let params = HashMap::new();
    PassManager::all()
        .run(&mut graph, &PassContext::with_params(&params), None)
        .expect("the passes succeed");
    // Fusion cuts the chain into bounded kernels, so the node count falls
    // by two orders of magnitude but stays above one.
    let after = graph.node_count();
    assert!(after * 100 < before && after > 3, "{before} -> {after}");
}

#[test]
#[ignore = "stress: 30,000 independent type errors reported at once"]
fn thirty_thousand_type_errors_are_all_reported() {
    let mut text = String::from("model m {\n  input x: f32[8]\n");
    for i in 0..30_000 {
        text.push_str(&format!("  a{i} = x @ x\n"));
    }
    text.push_str("  output y = x\n}\n");
    let failure = load_source(Path::new("errors.lam"), text).expect_err("every line is wrong");
    assert_eq!(failure.diagnostics.len(), 30_000);
    let rendered = lamina::diagnostics::render_all(&failure.diagnostics, Some(&failure.source));
    assert!(
        rendered.contains("errors.lam:30002:"),
        "the last error has its line"
    );
}
