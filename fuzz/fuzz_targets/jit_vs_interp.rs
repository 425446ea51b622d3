//! Generated graphs and inputs (the generator of `tests/jit_graphs.rs`,
//! driven by the fuzzer's bytes) compiled on every ISA tier this CPU has,
//! with and without the passes: the JIT agrees with the interpreter within
//! 1e-5 relative (1e-6 absolute floor), and 1 and 2 threads give the same
//! bits.
//!
//! Input layout: 8 bytes of generator seed, one byte for the number of
//! outputs, one for the batch, then up to 16 recipe bytes (one step each).
#![cfg_attr(feature = "libfuzzer", no_main)]

#[path = "../../tests/jit_support/mod.rs"]
#[allow(dead_code)]
mod jit_support;

use jit_support::random_graph::{generate, inputs, largest_intermediate};
use jit_support::{compare_outputs, compile_all_passes_on, compile_plain_on, same_bits};
use lamina::ir::Bindings;

const RTOL: f64 = 1e-5;

fn check(data: &[u8]) {
    if data.len() < 11 {
        return;
    }
    let seed = u64::from_le_bytes(data[..8].try_into().unwrap());
    let outputs = 1 + data[8] as usize % 3;
    let batch = 1 + data[9] as usize % 5;
    let recipe = &data[10..data.len().min(26)];
    let (graph, params) = generate(seed, recipe, outputs);
    let feed = inputs(seed, batch);
    // As in tests/jit_graphs.rs: rounding differences grow with magnitudes
    // downstream, so the tolerance only means something on scaled graphs.
    if largest_intermediate(&graph, &params, &feed) >= 16.0 {
        return;
    }
    let shown = || lamina::ir::printer::print(&graph);
    let reference = lamina::interp::run(&graph, &params, &feed, &Bindings::new())
        .unwrap_or_else(|e| panic!("the interpreter fails: {e}\n{}", shown()));
    for isa in jit_support::tiers() {
        for (passes, compile) in [
            ("without passes", compile_plain_on as fn(_, _, _, _) -> _),
            ("after all passes", compile_all_passes_on),
        ] {
            let run = |threads| {
                compile(&graph, &params, threads, Some(isa))
                    .run(&feed)
                    .unwrap_or_else(|e| panic!("[{isa}] {passes}: the JIT fails: {e}\n{}", shown()))
            };
            let one = run(1);
            let what = format!("[{isa}] {passes}");
            if let Err(e) = compare_outputs(&what, &one, &reference, RTOL) {
                panic!("{e}\n{}", shown());
            }
            if let Err(e) = same_bits(&format!("{what}, 1 vs 2 threads"), &one, &run(2)) {
                panic!("{e}\n{}", shown());
            }
        }
    }
}

lamina_fuzz::target!("jit_vs_interp", check);
