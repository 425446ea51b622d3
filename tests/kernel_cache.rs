//! The process-wide kernel cache: a plan of any model shares a kernel set
//! compiled earlier in the process when that set has every kernel the plan
//! needs (kernels are keyed by what they compute: GEMM epilogue, GEMV shape,
//! elementwise expression and strides, row op, and the tier), so a second
//! session of a model compiles nothing and runs the same machine code, while
//! a different epilogue, shape or tier gets kernels of its own.
//!
//! Tests here run in parallel in one process, so each uses models whose
//! kernels no other test's models have (activation and width differ).

mod jit_support;

use std::collections::HashMap;

use jit_support::{compare_outputs, compile_all_passes_on, same_bits, tiers, Outputs};
use lamina::codegen::Isa;
use lamina::ir::{Bindings, Graph};
use lamina::runtime::exec::{CompiledModel, PlanInfo};
use lamina::tensor::Tensor;

/// One dense layer `activation(x @ w + b)` of width `width`, seeded weights.
fn dense(activation: &str, width: usize) -> (Graph, HashMap<String, Tensor>) {
    let text = format!(
        "model dense {{\n  input x: f32[batch, 48]\n  param w: f32[48, {width}] = xavier(seed=1)\n  \
         param b: f32[{width}] = uniform(low=-0.1, high=0.1, seed=2)\n  \
         output y = {activation}(x @ w + b)\n}}\n"
    );
    let graph = lamina::model::load_source(std::path::Path::new("dense.lam"), text)
        .unwrap_or_else(|f| panic!("the model does not load: {:?}", f.diagnostics))
        .graph;
    let params = lamina::runtime::bind_params(&graph, None, &Bindings::new())
        .unwrap_or_else(|e| panic!("parameters: {e:?}"))
        .values;
    (graph, params)
}

fn input(batch: usize) -> Tensor {
    let mut rng = jit_support::rng(batch as u64);
    jit_support::random_f32(&mut rng, vec![batch, 48], -1.0, 1.0)
}

/// Plans (compiling or sharing kernels) for `x`, then runs it.
fn prepare_and_run(model: &CompiledModel, x: &Tensor) -> (PlanInfo, Outputs) {
    let info = model
        .prepare(&[x], &Bindings::new())
        .unwrap_or_else(|e| panic!("prepare: {e}"));
    let inputs = HashMap::from([("x".to_string(), x.clone())]);
    let outputs = model.run(&inputs).unwrap_or_else(|e| panic!("run: {e}"));
    (info, outputs)
}

#[test]
fn a_second_session_of_a_model_shares_the_first_ones_kernels() {
    let (graph, params) = dense("tanh", 40);
    for isa in tiers() {
        for batch in [1, 5] {
            let x = input(batch);
            let first = compile_all_passes_on(&graph, &params, 1, Some(isa));
            let (first_plan, first_out) = prepare_and_run(&first, &x);
            assert!(
                first_plan.native_steps > 0,
                "[{isa}] the layer runs natively"
            );
            // Two kernel threads: the same kernels, and the same bits.
            let second = compile_all_passes_on(&graph, &params, 2, Some(isa));
            let (second_plan, second_out) = prepare_and_run(&second, &x);
            assert!(
                second_plan.shares_kernels_with(&first_plan),
                "[{isa}] batch {batch}: the second session compiled its own kernels"
            );
            assert_eq!(second.compiled_kernel_sets(), 0, "[{isa}] batch {batch}");
            assert!(!second_plan.compiled_kernels);
            assert_eq!(second_plan.kernels, first_plan.kernels);
            same_bits(&format!("[{isa}] batch {batch}"), &first_out, &second_out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// A model's first set holds the GEMM micro-kernels of the row counts its
/// M calls for (`mr`-row panels and the `m mod mr` edge): batch 1's set has
/// the 1-row kernels, not all 20-odd, and is not shared with batch 13 (full
/// panels), which compiles a set with every row count (the model's batch
/// size varies); batch 25 shares that one. Every plan matches the
/// interpreter.
#[test]
fn a_batch_needing_other_row_kernels_gets_its_own_set() {
    let (graph, params) = dense("relu", 56);
    for isa in tiers() {
        let model = compile_all_passes_on(&graph, &params, 1, Some(isa));
        let mut plans: Vec<PlanInfo> = Vec::new();
        for batch in [1, 13, 25] {
            let x = input(batch);
            let (plan, out) = prepare_and_run(&model, &x);
            let inputs = HashMap::from([("x".to_string(), x)]);
            let reference = lamina::interp::run(&graph, &params, &inputs, &Bindings::new())
                .unwrap_or_else(|e| panic!("interpreter: {e}"));
            compare_outputs(&format!("[{isa}] batch {batch}"), &out, &reference, 1e-5)
                .unwrap_or_else(|e| panic!("{e}"));
            plans.push(plan);
        }
        let [one, thirteen, twenty_five] = &plans[..] else {
            unreachable!()
        };
        assert!(one.compiled_kernels && thirteen.compiled_kernels, "[{isa}]");
        assert!(!thirteen.shares_kernels_with(one), "[{isa}]");
        // The mr-row kernel (every row count's fallback), the 1-row ones
        // (one panel, several panels, on AVX-512 the two N-edge ones) and
        // the GEMV kernel of the shape.
        assert!(
            one.kernels <= 6,
            "[{isa}] batch 1 compiled {} kernels",
            one.kernels
        );
        assert!(
            thirteen.kernels > one.kernels,
            "[{isa}] batch 13's set has every row count: {} kernels, batch 1's {}",
            thirteen.kernels,
            one.kernels
        );
        assert!(twenty_five.shares_kernels_with(thirteen), "[{isa}]");
        assert!(!twenty_five.compiled_kernels, "[{isa}]");
    }
}

#[test]
fn a_different_epilogue_gets_different_kernels() {
    for isa in tiers() {
        let x = input(3);
        let (graph, params) = dense("sigmoid", 72);
        let (sigmoid, _) =
            prepare_and_run(&compile_all_passes_on(&graph, &params, 1, Some(isa)), &x);
        let (graph, params) = dense("hard_sigmoid", 72);
        let hard = compile_all_passes_on(&graph, &params, 1, Some(isa));
        let (hard_sigmoid, _) = prepare_and_run(&hard, &x);
        assert!(
            !hard_sigmoid.shares_kernels_with(&sigmoid),
            "[{isa}] hard_sigmoid ran on the sigmoid layer's kernel set"
        );
        assert_eq!(hard.compiled_kernel_sets(), 1, "[{isa}]");
    }
}

#[test]
fn a_different_gemv_shape_gets_different_kernels() {
    // Batch 1: each width is its own GEMV kernel (on the wide tiers).
    let x = input(1);
    let (narrow_graph, narrow_params) = dense("relu6", 96);
    let (wide_graph, wide_params) = dense("relu6", 160);
    for isa in tiers() {
        let narrow = compile_all_passes_on(&narrow_graph, &narrow_params, 1, Some(isa));
        let (narrow_plan, _) = prepare_and_run(&narrow, &x);
        let wide = compile_all_passes_on(&wide_graph, &wide_params, 1, Some(isa));
        let (wide_plan, _) = prepare_and_run(&wide, &x);
        assert!(!wide_plan.shares_kernels_with(&narrow_plan), "[{isa}]");
        assert_eq!(wide.compiled_kernel_sets(), 1, "[{isa}]");
        // The narrow model again, with both sets alive: it shares the one
        // compiled for its shape.
        let again = compile_all_passes_on(&narrow_graph, &narrow_params, 1, Some(isa));
        let (again_plan, _) = prepare_and_run(&again, &x);
        assert!(again_plan.shares_kernels_with(&narrow_plan), "[{isa}]");
        assert_eq!(again.compiled_kernel_sets(), 0, "[{isa}]");
    }
}

#[test]
fn a_different_tier_gets_different_kernels() {
    let supported = tiers();
    let (graph, params) = dense("gelu", 24);
    let x = input(2);
    let plans: Vec<(Isa, PlanInfo, Outputs)> = supported
        .iter()
        .map(|&isa| {
            let model = compile_all_passes_on(&graph, &params, 1, Some(isa));
            let (plan, out) = prepare_and_run(&model, &x);
            assert_eq!(model.isa(), isa);
            (isa, plan, out)
        })
        .collect();
    for (i, (a, plan_a, _)) in plans.iter().enumerate() {
        for (b, plan_b, _) in &plans[i + 1..] {
            assert!(
                !plan_a.shares_kernels_with(plan_b),
                "the {a} and {b} tiers share a kernel set"
            );
        }
    }
}
