//! Differential testing: random well-typed graphs, run by the reference
//! interpreter before and after the passes, must give the same outputs
//! (within 1e-5 relative). The generator (`tests/jit_support/random_graph.rs`,
//! shared with `tests/jit_graphs.rs`) aims at what the passes rewrite and at
//! their traps: linear layers with every bias/activation/residual
//! combination and the lookalikes that must not fuse, elementwise trees
//! with broadcasting, shared intermediates read elsewhere, hand-written
//! softmax / log_softmax / layer_norm, reshapes and transposes, identities,
//! duplicates and constant subgraphs; and every other op the executor
//! plans (gather, cast, slice, concat, batched matmuls, fused_linear).

mod jit_support;
#[path = "common/seeds.rs"]
mod seeds;

use std::collections::HashMap;

use jit_support::random_graph;
use lamina::interp;
use lamina::ir::{Bindings, Graph};
use lamina::passes::{PassContext, PassManager};
use lamina::tensor::Tensor;
use proptest::prelude::*;

/// A random graph with values for its parameters.
struct Generated {
    graph: Graph,
    params: HashMap<String, Tensor>,
}

/// The shared generator (`tests/jit_support/random_graph.rs`), the same
/// one `tests/jit_graphs.rs` compiles.
fn generate(seed: u64, recipe: &[u8], outputs: usize) -> Generated {
    let (graph, params) = random_graph::generate(seed, recipe, outputs);
    Generated { graph, params }
}

/// How `before` and `after` must agree.
#[derive(Clone, Copy, PartialEq)]
enum Agreement {
    /// Every bit (NaN matching NaN): fusion, folding and layout rewrites
    /// evaluate the very same f32 steps.
    Exact,
    /// Within 1e-5 relative to the larger magnitude (1e-5 absolute below
    /// 1): recognised softmax / layer_norm compute their statistics in f64,
    /// and `x / c` becomes `x * (1/c)`.
    Close,
}

fn assert_agree(
    name: &str,
    a: &Tensor,
    b: &Tensor,
    agreement: Agreement,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.shape(), b.shape(), "output {} changed shape", name);
    prop_assert_eq!(a.dtype(), b.dtype(), "output {} changed dtype", name);
    for (i, (x, y)) in a.to_f64_vec().into_iter().zip(b.to_f64_vec()).enumerate() {
        let same = (x.is_nan() && y.is_nan())
            || x == y
            || (agreement == Agreement::Close
                && (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1.0));
        prop_assert!(
            same,
            "output {} element {}: {} before, {} after",
            name,
            i,
            x,
            y
        );
    }
    Ok(())
}

/// The passes that change no bit of any result.
const EXACT_PASSES: &str = "dce,cse,const-fold,transpose-matmul,fuse-linear,fuse-elementwise";

/// The largest magnitude of any f32 value the graph computes.
fn largest_intermediate(generated: &Generated, feed: &HashMap<String, Tensor>) -> f64 {
    random_graph::largest_intermediate(&generated.graph, &generated.params, feed)
}

fn check(
    generated: &Generated,
    batch: usize,
    seed: u64,
    with_params: bool,
    spec: &str,
    agreement: Agreement,
) -> Result<(), TestCaseError> {
    let graph = &generated.graph;
    let feed = random_graph::inputs(seed, batch);
    if agreement == Agreement::Close {
        // Rounding differences at a recognised op grow with the magnitudes
        // downstream (a matmul of terms in the hundreds cancelling to 1):
        // comparing at 1e-5 only means something on well-scaled graphs.
        prop_assume!(largest_intermediate(generated, &feed) < 16.0);
    }
    let before = interp::run(graph, &generated.params, &feed, &Bindings::new())
        .map_err(|e| TestCaseError::fail(format!("the original graph fails: {e}")))?;
    let mut optimized = graph.clone();
    let cx = if with_params {
        PassContext::with_params(&generated.params)
    } else {
        PassContext::default()
    };
    PassManager::from_spec(spec)
        .expect("known passes")
        .run(&mut optimized, &cx, None)
        .map_err(|e| TestCaseError::fail(format!("passes fail: {e}")))?;
    let after =
        interp::run(&optimized, &generated.params, &feed, &Bindings::new()).map_err(|e| {
            TestCaseError::fail(format!(
                "the optimised graph fails: {e}\n{}",
                lamina::ir::printer::print(&optimized)
            ))
        })?;
    prop_assert_eq!(before.len(), after.len());
    for ((name, a), (name_after, b)) in before.iter().zip(&after) {
        prop_assert_eq!(name, name_after);
        assert_agree(name, a, b, agreement).map_err(|e| {
            TestCaseError::fail(format!(
                "{e}\nbefore:\n{}\nafter:\n{}",
                lamina::ir::printer::print(graph),
                lamina::ir::printer::print(&optimized)
            ))
        })?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(seeds::config(1000, 100_000))]

    #[test]
    fn random_graphs_compute_the_same_after_all_passes(
        seed in any::<u64>(),
        recipe in prop::collection::vec(any::<u8>(), 1..24),
        outputs in 1usize..4,
        batch in 1usize..4,
        with_params in any::<bool>(),
    ) {
        let generated = generate(seed, &recipe, outputs);
        check(&generated, batch, seed, with_params, "all", Agreement::Close)
            .map_err(seeds::with_seed)?;
    }

    #[test]
    fn random_graphs_compute_the_same_bits_after_the_exact_passes(
        seed in any::<u64>(),
        recipe in prop::collection::vec(any::<u8>(), 1..24),
        outputs in 1usize..4,
        batch in 1usize..4,
        with_params in any::<bool>(),
    ) {
        let generated = generate(seed, &recipe, outputs);
        check(&generated, batch, seed, with_params, EXACT_PASSES, Agreement::Exact)
            .map_err(seeds::with_seed)?;
    }
}

/// The generator itself reaches what the passes rewrite: over a fixed set
/// of seeds every fused or recognised op shows up at least once.
#[test]
fn the_generator_covers_every_rewrite() {
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    for seed in 0..200u64 {
        let recipe: Vec<u8> = (0..10)
            .map(|i| (seed as u8).wrapping_mul(31).wrapping_add(i * 7))
            .collect();
        let generated = generate(seed, &recipe, 3);
        let mut g = generated.graph.clone();
        let report = PassManager::all()
            .run(&mut g, &PassContext::with_params(&generated.params), None)
            .expect("passes run");
        for p in &report.per_pass {
            if p.total_rewrites() > 0 {
                *seen.entry(p.name).or_default() += 1;
            }
        }
    }
    for pass in lamina::passes::pass_names() {
        assert!(
            seen.get(pass).copied().unwrap_or(0) > 0,
            "no random graph exercised {pass}: {seen:?}"
        );
    }
}
