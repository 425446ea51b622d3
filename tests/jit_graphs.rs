//! Random well-typed graphs, compiled by the JIT executor with and without
//! the optimisation passes, against the interpreter on the original graph.
//!
//! The generator covers every kind of step the executor plans: elementwise
//! chains with numpy broadcasting (scalars, per-feature and per-row
//! partners, lower-rank operands), linear layers (weights in both layouts,
//! computed and activation right operands, bias / activation / residual,
//! hand-built `fused_linear`), batched matmuls with transposes and
//! broadcast batch dims, attention with heads, softmax / log_softmax /
//! layer_norm as ops and written out, reductions over any set of axes,
//! permute / reshape / slice / concat / gather / cast (including the
//! identity cast and casts through bool and i64, which run on the
//! interpreter's ops), and outputs that are inputs or views of them.
//!
//! Also here: GEMM edge shapes through the graph path, and bit-exact
//! agreement of 1 and 2 threads on graphs big enough to run in parallel.

mod jit_support;
#[path = "common/seeds.rs"]
mod seeds;

use lamina::ir::ops::FusedLinear;
use std::collections::HashMap;

use jit_support::random_graph::{generate, inputs, largest_intermediate, mm};
use jit_support::{
    compare_outputs, compile_all_passes_on, compile_plain_on, same_bits, Builder, Outputs,
};
use lamina::interp;
use lamina::ir::{Bindings, Graph, LinearEpilogue, Op, UnaryOp};
use lamina::tensor::Tensor;
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;

fn run(
    model: &lamina::runtime::exec::CompiledModel,
    feed: &HashMap<String, Tensor>,
) -> Result<Outputs, TestCaseError> {
    model
        .run(feed)
        .map_err(|e| TestCaseError::fail(format!("the JIT run fails: {e}")))
}

fn check(seed: u64, recipe: &[u8], outputs: usize, batch: usize) -> Result<(), TestCaseError> {
    let (graph, params) = generate(seed, recipe, outputs);
    let feed = inputs(seed, batch);
    // Rounding differences grow with magnitudes downstream; 1e-5 only
    // means something on well-scaled graphs.
    prop_assume!(largest_intermediate(&graph, &params, &feed) < 16.0);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new())
        .map_err(|e| TestCaseError::fail(format!("the interpreter fails: {e}")))?;
    let show = |g: &Graph| lamina::ir::printer::print(g);
    let isa = Some(jit_support::tier_for(seed));
    let plain = run(&compile_plain_on(&graph, &params, 1, isa), &feed)?;
    compare_outputs(&format!("{isa:?} without passes"), &plain, &reference, 1e-5)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", show(&graph))))?;
    let optimised = compile_all_passes_on(&graph, &params, 1, isa);
    let fused = run(&optimised, &feed)?;
    compare_outputs(
        &format!("{isa:?} after all passes"),
        &fused,
        &reference,
        1e-5,
    )
    .map_err(|e| {
        TestCaseError::fail(format!(
            "{e}\n{}\noptimised:\n{}",
            show(&graph),
            show(optimised.graph())
        ))
    })?;
    Ok(())
}

proptest! {
    #![proptest_config(seeds::config(96, 10_000))]

    #[test]
    fn random_graphs_match_the_interpreter(
        seed in any::<u64>(),
        recipe in prop::collection::vec(any::<u8>(), 1..16),
        outputs in 1usize..4,
        batch in 1usize..4,
    ) {
        check(seed, &recipe, outputs, batch).map_err(seeds::with_seed)?;
    }
}

/// Thread counts must not change a bit. Batches of 1500 to 3000 make every kind
/// of step big enough to split across threads (elementwise and row
/// kernels from 32768 elements, GEMMs from 2^18 flops, batched matmuls
/// over their batch entries).
fn check_threads_agree(
    seed: u64,
    recipe: &[u8],
    outputs: usize,
    batch: usize,
) -> Result<(), TestCaseError> {
    let (graph, params) = generate(seed, recipe, outputs);
    let feed = inputs(seed, batch);
    let isa = Some(jit_support::tier_for(seed));
    for with_passes in [false, true] {
        let compile = if with_passes {
            compile_all_passes_on
        } else {
            compile_plain_on
        };
        let one = run(&compile(&graph, &params, 1, isa), &feed)?;
        let two = run(&compile(&graph, &params, 2, isa), &feed)?;
        same_bits(
            &format!("{isa:?}, passes: {with_passes}, 1 vs 2 threads"),
            &one,
            &two,
        )
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", lamina::ir::printer::print(&graph))))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(seeds::config(12, 1024))]

    #[test]
    fn random_graphs_give_the_same_bits_on_1_and_2_threads(
        seed in any::<u64>(),
        recipe in prop::collection::vec(any::<u8>(), 4..16),
        outputs in 1usize..4,
        batch in 1500usize..3000,
    ) {
        check_threads_agree(seed, &recipe, outputs, batch).map_err(seeds::with_seed)?;
    }
}

/// Every kind of step shows up over a fixed set of seeds, so the property
/// above does exercise them.
#[test]
fn the_generator_reaches_every_op() {
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    for seed in 0..120u64 {
        let recipe: Vec<u8> = (0..12)
            .map(|i| (seed as u8).wrapping_mul(37).wrapping_add(i * 5))
            .collect();
        let (graph, _) = generate(seed, &recipe, 2);
        for id in graph.node_ids() {
            *seen.entry(graph.node(id).op.name()).or_default() += 1;
        }
    }
    for op in [
        "matmul",
        "fused_linear",
        "softmax",
        "log_softmax",
        "layer_norm",
        "sum",
        "mean",
        "max",
        "permute",
        "reshape",
        "slice",
        "concat",
        "gather",
        "cast",
        "where",
        "gt",
        "pow",
        "div",
    ] {
        assert!(
            seen.contains_key(op),
            "no generated graph has `{op}`: {seen:?}"
        );
    }
}

/// Every GEMM form the executor plans, on one `m x k @ k x n` shape:
/// weights (packed once) in both layouts with and without an epilogue,
/// activation right operands (packed per run) in both layouts, a
/// transposed left operand, rank-3 left operands (M folds the batch), and
/// batched matmuls with transposes.
fn gemm_graph(k: usize, n: usize, rng: &mut ChaCha8Rng) -> (Graph, HashMap<String, Tensor>) {
    let mut b = Builder::new("gemm");
    let a = b.input("a", &format!("f32[m, {k}]"));
    let at = b.input("at", &format!("f32[{k}, m]"));
    let act_b = b.input("b", &format!("f32[{k}, {n}]"));
    let act_bt = b.input("bt", &format!("f32[{n}, {k}]"));
    let a3 = b.input("a3", &format!("f32[2, m, {k}]"));
    let at3 = b.input("at3", &format!("f32[2, {k}, m]"));
    let bt3 = b.input("bt3", &format!("f32[2, {n}, {k}]"));
    let w = b.param("w", jit_support::random_f32(rng, vec![k, n], -1.0, 1.0));
    let wt = b.param("wt", jit_support::random_f32(rng, vec![n, k], -1.0, 1.0));
    let bias = b.param("bias", jit_support::random_f32(rng, vec![n], -1.0, 1.0));
    let fused = |activation, bias: bool, residual: bool, transpose_b| {
        Op::FusedLinear(FusedLinear {
            transpose_b,
            epilogue: LinearEpilogue {
                bias,
                activation,
                residual,
            },
        })
    };
    let plain = b.op(mm(false, false), &[a, w]);
    b.output("weight", plain);
    let torch = b.op(
        fused(Some(UnaryOp::Gelu), true, true, true),
        &[a, wt, bias, plain],
    );
    b.output("weight_t_bias_gelu_residual", torch);
    let o = b.op(mm(false, false), &[a, act_b]);
    b.output("activation", o);
    let o = b.op(mm(false, true), &[a, act_bt]);
    b.output("activation_t", o);
    let o = b.op(mm(true, false), &[at, w]);
    b.output("transposed_a", o);
    let rank3 = b.op(mm(false, false), &[a3, w]);
    b.output("rank3_weight", rank3);
    // (The epilogue of the other fused layer: one more kernel set costs
    // compile time and covers nothing new.)
    let o = b.op(
        fused(Some(UnaryOp::Gelu), true, true, false),
        &[a3, act_b, bias, rank3],
    );
    b.output("rank3_activation_bias_gelu_residual", o);
    let o = b.op(mm(false, true), &[a3, bt3]);
    b.output("batched_t", o);
    let o = b.op(mm(true, false), &[at3, act_b]);
    b.output("batched_transposed_a", o);
    b.finish()
}

fn gemm_inputs(m: usize, k: usize, n: usize, rng: &mut ChaCha8Rng) -> HashMap<String, Tensor> {
    let mut t = |shape: Vec<usize>| jit_support::random_f32(rng, shape, -1.0, 1.0);
    HashMap::from([
        ("a".to_string(), t(vec![m, k])),
        ("at".to_string(), t(vec![k, m])),
        ("b".to_string(), t(vec![k, n])),
        ("bt".to_string(), t(vec![n, k])),
        ("a3".to_string(), t(vec![2, m, k])),
        ("at3".to_string(), t(vec![2, k, m])),
        ("bt3".to_string(), t(vec![2, n, k])),
    ])
}

/// m, n and k over {1, 3, 17, 127, 1000}: every combination up to 2.2M
/// multiply-adds, and two large ones with every size at 1000 somewhere.
/// Accumulating K = 1000 in f32 is a long reduction: 1e-4.
#[test]
fn gemm_edge_shapes_match_the_interpreter() {
    const SIZES: [usize; 5] = [1, 3, 17, 127, 1000];
    let mut rng = jit_support::rng(0x6e33);
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for k in SIZES {
        for n in SIZES {
            let ms: Vec<usize> = SIZES
                .into_iter()
                .filter(|&m| {
                    m * n * k <= 2_200_000
                        || (m, n, k) == (1000, 1000, 17)
                        || (m, n, k) == (17, 1000, 1000)
                })
                .collect();
            if ms.is_empty() {
                continue;
            }
            let (graph, params) = gemm_graph(k, n, &mut rng);
            // Every tier against one interpreter reference per shape.
            let compiled: Vec<_> = jit_support::tiers()
                .into_iter()
                .map(|isa| {
                    let single = compile_plain_on(&graph, &params, 1, Some(isa));
                    let double = compile_plain_on(&graph, &params, 2, Some(isa));
                    (isa, single, double)
                })
                .collect();
            for m in ms {
                let feed = gemm_inputs(m, k, n, &mut rng);
                let reference = interp::run(&graph, &params, &feed, &Bindings::new())
                    .expect("interpreter runs");
                let rtol = if k > 256 { 1e-4 } else { 1e-5 };
                for (isa, single, double) in &compiled {
                    let what = format!("[{isa}] m={m} n={n} k={k}");
                    let ours = single.run(&feed).unwrap_or_else(|e| panic!("{what}: {e}"));
                    if let Err(e) = compare_outputs(&what, &ours, &reference, rtol) {
                        failures.push(e);
                    }
                    // Big enough to split across threads: must give the same bits.
                    if 2 * m * n * k >= 1 << 20 {
                        let theirs = double.run(&feed).unwrap_or_else(|e| panic!("{what}: {e}"));
                        if let Err(e) =
                            same_bits(&format!("{what}: 1 vs 2 threads"), &ours, &theirs)
                        {
                            failures.push(e);
                        }
                    }
                }
            }
        }
    }
    eprintln!("gemm shapes: {:.1?}", started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A failure names the run's seed and how to repeat it.
#[test]
fn failures_name_the_seed() {
    let e = seeds::with_seed(TestCaseError::fail("outputs differ"));
    let message = e.to_string();
    let seed = seeds::run_seed();
    assert!(
        message.contains("outputs differ") && message.contains(&format!("LAMINA_TEST_SEED={seed}")),
        "{message}"
    );
}
