//! Reverse-mode gradients (`lamina::autodiff`) against central finite
//! differences on the reference interpreter, for every rule (one small model
//! per op family) and for generated graphs; and the JIT's gradients against
//! the interpreter's.
//!
//! A finite difference is only a check where the function is smooth. Each
//! element is compared with central differences at two steps; it passes
//! when either agrees, fails when the two agree with each other but not
//! with autodiff, and is skipped when they disagree with each other (a relu
//! kink, a `where` switching, a max changing hands within the step). Each
//! check demands that most elements were usable.

#[path = "common/mod.rs"]
mod common;
mod jit_support;
#[path = "common/seeds.rs"]
mod seeds;

use std::collections::HashMap;

use lamina::autodiff::{append_gradients, Wrt};
use lamina::interp;
use lamina::ir::ops::Reduce;
use lamina::ir::{BinaryOp, Bindings, DType, Graph, NodeId, Op, ReduceOp, UnaryOp};
use lamina::tensor::Tensor;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Finite-difference step and the tolerance of the comparison:
/// |analytic - numeric| <= RTOL * max(|analytic|, |numeric|) + ATOL.
const STEP: f32 = 1e-2;
const RTOL: f64 = 2e-2;
const ATOL: f64 = 2e-3;
/// Elements checked per tensor (spread evenly over it).
const PER_TENSOR: usize = 6;

fn load(text: &str) -> Graph {
    lamina::model::load_source("t.lam".as_ref(), text.to_string())
        .unwrap_or_else(|f| panic!("{:?}", f.diagnostics))
        .graph
}

/// Seeded values for every input and parameter: f32 in [-1, 1), ids in
/// 0..2.
fn values(graph: &Graph, seed: u64) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bindings = Bindings::new();
    let mut make = |id: NodeId, rng: &mut ChaCha8Rng| {
        let ty = &graph.node(id).ty;
        let shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| {
                for s in d.symbols() {
                    bindings.entry(s.clone()).or_insert(3);
                }
                d.substitute(&bindings).and_then(|d| d.as_known()).unwrap()
            })
            .collect();
        let n: usize = shape.iter().product();
        match ty.dtype {
            DType::F32 => Tensor::f32(shape, (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()),
            _ => Tensor::i64(shape, (0..n).map(|_| rng.random_range(0..2)).collect()),
        }
    };
    let inputs = graph
        .inputs
        .iter()
        .map(|&id| (graph.input_name(id).to_string(), make(id, &mut rng)))
        .collect();
    let params = graph
        .params()
        .into_iter()
        .map(|(name, id)| (name, make(id, &mut rng)))
        .collect();
    (inputs, params)
}

fn loss_of(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
) -> f64 {
    let out = interp::run(graph, params, inputs, &Bindings::new()).expect("the forward graph runs");
    out.iter()
        .find(|(n, _)| n == "loss")
        .expect("a loss output")
        .1
        .to_f64_vec()[0]
}

/// Every f32 input and parameter.
fn all_leaves(graph: &Graph) -> Wrt {
    Wrt::Names(
        graph
            .inputs
            .iter()
            .map(|&id| (graph.input_name(id).to_string(), id))
            .chain(graph.params())
            .filter(|(_, id)| graph.node(*id).ty.dtype == DType::F32)
            .map(|(n, _)| n)
            .collect(),
    )
}

/// Checks d loss / d every f32 input and parameter against central
/// differences; returns (elements checked, elements skipped at kinks).
fn check_against_finite_differences(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
) -> Result<(usize, usize), String> {
    let mut forward = graph.clone();
    forward.outputs.retain(|(n, _)| n == "loss");
    let mut backward = forward.clone();
    let grads = append_gradients(&mut backward, "loss", &all_leaves(graph))
        .map_err(|e| format!("{e:?}"))?;
    lamina::ir::verify::verify(&backward).map_err(|e| e.to_string())?;
    let computed = interp::run(&backward, params, inputs, &Bindings::new())
        .map_err(|e| format!("the backward graph fails: {e}"))?;
    let (mut checked, mut skipped) = (0, 0);
    for grad in &grads {
        let analytic = &computed.iter().find(|(n, _)| *n == grad.output).unwrap().1;
        let is_param = params.contains_key(&grad.name);
        let base = if is_param {
            &params[&grad.name]
        } else {
            &inputs[&grad.name]
        };
        let n = base.len();
        let picks: Vec<usize> = (0..PER_TENSOR.min(n))
            .map(|k| k * n / PER_TENSOR.min(n))
            .collect();
        for i in picks {
            let at = |delta: f32| {
                let mut moved = base.clone();
                moved.as_f32_mut().unwrap()[i] += delta;
                let (mut p, mut x) = (params.clone(), inputs.clone());
                if is_param {
                    p.insert(grad.name.clone(), moved);
                } else {
                    x.insert(grad.name.clone(), moved);
                }
                loss_of(&forward, &p, &x)
            };
            let loss = at(0.0).abs();
            // Central differences at two steps, each with its tolerance
            // for the f32 rounding of the loss it divides.
            let estimates: Vec<(f64, f64)> = [STEP, STEP / 10.0]
                .iter()
                .map(|&h| {
                    let numeric = (at(h) - at(-h)) / (2.0 * f64::from(h));
                    let noise = 8.0 * loss * f64::from(f32::EPSILON) / f64::from(h);
                    (numeric, ATOL + noise)
                })
                .collect();
            let a = f64::from(analytic.as_f32().unwrap()[i]);
            let close =
                |x: f64, y: f64, atol: f64| (x - y).abs() <= RTOL * x.abs().max(y.abs()) + atol;
            if estimates.iter().any(|&(n, atol)| close(a, n, atol)) {
                checked += 1;
                continue;
            }
            let [(coarse, coarse_tol), (fine, fine_tol)] = estimates[..] else {
                unreachable!()
            };
            if !coarse.is_finite()
                || !fine.is_finite()
                || !close(coarse, fine, coarse_tol.max(fine_tol))
            {
                // The two steps disagree: a kink or a jump lies within them.
                skipped += 1;
                continue;
            }
            return Err(format!(
                "d loss / d {}[{i}]: autodiff {a}, finite differences {coarse} (step {STEP}) and {fine} (step {})",
                grad.name,
                STEP / 10.0
            ));
        }
    }
    Ok((checked, skipped))
}

/// One small model per rule family; each ends in a scalar `loss` that
/// weighs the op's result with a random input `r` (so every output element
/// matters differently).
const RULE_CASES: &[(&str, &str)] = &[
    ("unary", "model m {
  input x: f32[2, 5]
  input r: f32[2, 5]
  p = x * x + 0.5
  y = relu6(x * 4.0) + hard_sigmoid(x * 4.0) + hard_swish(x * 4.0) + sin(x) + cos(x) + neg(x) + relu(x) + sigmoid(x) + tanh(x) + gelu(x) + gelu_tanh(x) + exp(x) + log(p) + sqrt(p) + rsqrt(p) + erf(x) + abs(x) + recip(p)
  output loss = sum(y * r)
}"),
    ("binary", "model m {
  input a: f32[3, 4]
  input b: f32[4]
  input c: f32[3, 1]
  input r: f32[3, 4]
  pa = a * a + 0.5
  y = a + b - c * a / (c * c + 1.0) + pa ** b + maximum(a, b) + minimum(c, a) + pow(pa, 1.5)
  output loss = sum(y * r)
}"),
    ("where", "model m {
  input a: f32[3, 4]
  input b: f32[4]
  input r: f32[3, 4]
  output loss = sum(where(a > b, a * b, b) * r)
}"),
    ("matmul", "model m {
  input a: f32[3, 4]
  input b: f32[4, 5]
  input bt: f32[5, 4]
  input at: f32[4, 3]
  input s: f32[2, 3, 4]
  input r: f32[3, 5]
  input rs: f32[2, 3, 5]
  y = a @ b + matmul(a, bt, transpose_b=true) + matmul(at, b, transpose_a=true) + matmul(at, bt, transpose_a=true, transpose_b=true)
  output loss = sum(y * r) + sum((s @ b) * rs)
}"),
    ("batched_matmul", "model m {
  input q: f32[2, 3, 4]
  input k: f32[2, 5, 4]
  input v: f32[1, 5, 3]
  input r: f32[2, 3, 3]
  output loss = sum((matmul(q, k, transpose_b=true) @ v) * r)
}"),
    ("softmax", "model m {
  input x: f32[3, 5]
  input r: f32[3, 5]
  output loss = sum(softmax(x, axis=-1) * r) + sum(log_softmax(x, axis=0) * r)
}"),
    ("layer_norm", "model m {
  input x: f32[3, 6]
  param gain: f32[6]
  param bias: f32[6]
  input r: f32[3, 6]
  output loss = sum(layer_norm(x, gain, bias, eps=1e-5) * r)
}"),
    ("reductions", "model m {
  input x: f32[2, 3, 4]
  input r: f32[3]
  input r2: f32[2, 1, 4]
  y = sum(x, axis=[0, 2]) + mean(x, axis=[0, 2]) + max(x, axis=[0, 2])
  output loss = sum(y * r) + sum(mean(x, axis=1, keepdims=true) * r2) + mean(x) + max(x)
}"),
    ("layout", "model m {
  input x: f32[2, 3, 4]
  input r: f32[4, 2, 3]
  input r2: f32[6, 4]
  input r3: f32[2, 2, 4]
  y = permute(x, [2, 0, 1])
  z = reshape(x, [6, -1])
  w = slice(x, axis=1, start=1, step=2) + slice(x, axis=1, start=0, end=2)
  output loss = sum(y * r) + sum(z * r2) + sum(concat(w, w * 2.0, axis=0) * concat(r3, r3, axis=0)) + sum(transpose(x))
}"),
    ("gather", "model m {
  input ids: i64[2, 3]
  param table: f32[4, 5]
  input r: f32[2, 3, 5]
  input r2: f32[4, 2, 3]
  output loss = sum(embedding(ids, table) * r) + sum(gather(table, ids, axis=1) * r2)
}"),
    ("scatter_cast", "model m {
  input ids: i64[3]
  input base: f32[4, 2]
  input u: f32[3, 2]
  input x: f32[2]
  input r: f32[4, 2]
  y = scatter_add(base, ids, u) + cast(cast(x, f32), f32) + sum(u, axis=0)
  output loss = sum(y * r)
}"),
    ("losses", "model m {
  input x: f32[3, 4]
  input labels: i64[3]
  param w: f32[4, 5]
  input target: f32[3, 5]
  logits = x @ w
  output loss = cross_entropy(logits, labels) + mse(logits, target)
}"),
    ("symbolic", "model m {
  input x: f32[batch, 4]
  param w: f32[4, 3]
  param b: f32[3]
  input labels: i64[batch]
  input r: f32[batch, 3]
  h = relu(x @ w + b)
  c = concat(h, h * 2.0, concat(h, h, axis=0), axis=0)
  output loss = cross_entropy(h, labels) + mean(h) + sum(mean(h, axis=0)) + sum(tanh(c) * concat(r, r, r, r, axis=0))
}"),
];

#[test]
fn every_rule_matches_finite_differences() {
    for (name, text) in RULE_CASES {
        let graph = load(text);
        for seed in [1u64, 2] {
            let (inputs, params) = values(&graph, seed);
            match check_against_finite_differences(&graph, &params, &inputs) {
                Ok((checked, skipped)) => assert!(
                    checked >= 4 * skipped.max(1),
                    "{name} (seed {seed}): only {checked} elements checked, {skipped} at kinks"
                ),
                Err(e) => panic!("{name} (seed {seed}): {e}"),
            }
        }
    }
}

/// Fused ops (what the passes leave) differentiate like what they replace.
#[test]
fn fused_ops_differentiate_like_their_parts() {
    use lamina::passes::{PassContext, PassManager};
    let text = "model m {
  input x: f32[3, 4]
  param w: f32[4, 5]
  param b: f32[5]
  input res: f32[3, 5]
  input r: f32[3, 5]
  h = gelu(x @ w + b) + res
  e = tanh(h) * 2.0 + where(h > 0.1, h, -h) - exp(h * 0.5)
  output loss = sum(e * r)
}";
    let mut graph = load(text);
    PassManager::all()
        .run(&mut graph, &PassContext::default(), None)
        .unwrap();
    let names: Vec<&str> = graph
        .node_ids()
        .map(|id| graph.node(id).op.name())
        .collect();
    assert!(
        names.contains(&"fused_linear") && names.contains(&"fused_elementwise"),
        "{names:?}"
    );
    let (inputs, params) = values(&graph, 3);
    let (checked, _) = check_against_finite_differences(&graph, &params, &inputs).unwrap();
    assert!(checked >= 20, "{checked}");
}

/// The JIT runs the backward graph (after every pass) to the interpreter's
/// values.
fn jit_matches_interpreter(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
) -> Result<(), String> {
    let mut backward = graph.clone();
    backward.outputs.retain(|(n, _)| n == "loss");
    append_gradients(&mut backward, "loss", &all_leaves(graph)).map_err(|e| format!("{e:?}"))?;
    let reference =
        interp::run(&backward, params, inputs, &Bindings::new()).map_err(|e| e.to_string())?;
    let compiled = jit_support::compile_all_passes(&backward, params, 2);
    let got = compiled.run(inputs).map_err(|e| e.to_string())?;
    jit_support::compare_outputs("gradient", &got, &reference, 1e-4).map(|_| ())
}

#[test]
fn jit_gradients_equal_the_interpreters() {
    for (name, text) in RULE_CASES {
        let graph = load(text);
        if graph.params().is_empty() {
            continue;
        }
        let (inputs, params) = values(&graph, 5);
        jit_matches_interpreter(&graph, &params, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let digits = lamina::model::load("models/digits/digits.lam".as_ref())
        .unwrap()
        .graph;
    let mut with_loss = digits.clone();
    let probs = with_loss.outputs[0].1;
    let log =
        lamina::ir::builder::add_typed(&mut with_loss, Op::Unary(UnaryOp::Log), &[probs], None)
            .unwrap();
    let total = lamina::ir::builder::add_typed(
        &mut with_loss,
        Op::Reduce(Reduce {
            op: ReduceOp::Mean,
            axes: vec![0, 1],
            keepdims: false,
        }),
        &[log],
        None,
    )
    .unwrap();
    let loss = lamina::ir::builder::add_typed(
        &mut with_loss,
        Op::Binary(BinaryOp::Mul),
        &[total, total],
        None,
    )
    .unwrap();
    with_loss.outputs.push(("loss".into(), loss));
    let (inputs, params) = values(&with_loss, 7);
    jit_matches_interpreter(&with_loss, &params, &inputs).unwrap();
}

/// A scalar loss over a generated graph's outputs: sum(tanh(out)) for each.
fn with_loss(mut graph: Graph) -> Graph {
    let outs: Vec<NodeId> = graph
        .outputs
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| graph.node(*id).ty.dtype == DType::F32)
        .collect();
    let mut total = None;
    for out in outs {
        let t = lamina::ir::builder::add_typed(&mut graph, Op::Unary(UnaryOp::Tanh), &[out], None)
            .unwrap();
        let rank = graph.node(t).ty.rank();
        let s = lamina::ir::builder::add_typed(
            &mut graph,
            Op::Reduce(Reduce {
                op: ReduceOp::Sum,
                axes: (0..rank).collect(),
                keepdims: false,
            }),
            &[t],
            None,
        )
        .unwrap();
        total = Some(match total {
            None => s,
            Some(acc) => lamina::ir::builder::add_typed(
                &mut graph,
                Op::Binary(BinaryOp::Add),
                &[acc, s],
                None,
            )
            .unwrap(),
        });
    }
    if let Some(total) = total {
        graph.outputs.push(("loss".into(), total));
    }
    graph
}

proptest! {
    #![proptest_config(seeds::config(24, 1000))]

    #[test]
    fn generated_graphs_match_finite_differences(
        seed in any::<u64>(),
        recipe in proptest::collection::vec(any::<u8>(), 1..6),
    ) {
        let (graph, params) = jit_support::random_graph::generate(seed, &recipe, 2);
        let graph = with_loss(graph);
        prop_assume!(graph.outputs.iter().any(|(n, _)| n == "loss"));
        // The generator's convolution layers wait for conv2d's and
        // batch_norm's derivative rules; drop this once they have them.
        prop_assume!(!graph
            .node_ids()
            .any(|id| matches!(graph.node(id).op, Op::Conv2d(_) | Op::BatchNorm(_))));
        let inputs = jit_support::random_graph::inputs(seed, 2);
        prop_assume!(jit_support::random_graph::largest_intermediate(&graph, &params, &inputs) < 50.0);
        let result = check_against_finite_differences(&graph, &params, &inputs);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
        let jit = jit_matches_interpreter(&graph, &params, &inputs);
        prop_assert!(jit.is_ok(), "{}", jit.unwrap_err());
    }
}

#[test]
fn an_op_without_a_rule_is_a_located_error() {
    let text = "model m {\n  input x: f32[n, 2]\n  input y: f32[m, 2]\n  c = slice(x, axis=0, end=m)\n  output loss = sum(c) + sum(y)\n}\n";
    let mut graph = load(text);
    let errors = append_gradients(&mut graph, "loss", &Wrt::Inputs).unwrap_err();
    let d = errors[0].diagnostic();
    let file = lamina::diagnostics::SourceFile {
        path: "t.lam".into(),
        text: Some(text.into()),
    };
    let shown = lamina::diagnostics::render(&d, Some(&file));
    assert!(
        shown.starts_with("t.lam:4:7: error: slice: no gradient rule"),
        "{shown}"
    );
}

/// The backward graph of each rule case, as `lamina graph --grad loss
/// --wrt <every f32 leaf>` prints it: a change in any rule shows as a diff.
#[test]
fn backward_graphs_are_snapshotted() {
    for (name, text) in RULE_CASES {
        let mut graph = load(text);
        let wrt = all_leaves(&graph);
        append_gradients(&mut graph, "loss", &wrt).unwrap();
        insta::assert_snapshot!(format!("grad_{name}"), lamina::ir::printer::print(&graph));
    }
}

#[test]
fn cli_prints_the_backward_graph_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mlp.lam");
    std::fs::write(
        &model,
        "model mlp {\n  input x: f32[batch, 4]\n  input labels: i64[batch]\n  param w1: f32[4, 8] = xavier(seed=1)\n  param b1: f32[8] = zeros\n  param w2: f32[8, 3] = xavier(seed=2)\n  h = relu(x @ w1 + b1)\n  output loss = cross_entropy(h @ w2, labels)\n}\n",
    )
    .unwrap();
    let path = model.to_str().unwrap();
    let (code, plain, stderr) = common::lamina(&["graph", path, "--grad", "loss"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("grad_mlp_cli", plain);
    let (code, optimised, stderr) = common::lamina(&[
        "graph", path, "--grad", "loss", "--wrt", "w1,x", "--passes", "all",
    ]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("grad_mlp_cli_optimised", optimised);
    let (code, _, stderr) = common::lamina(&["graph", path, "--grad", "h"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("error: the model has no output `h` (outputs: loss)"),
        "{stderr}"
    );
    let (code, _, stderr) = common::lamina(&["graph", path, "--grad", "loss", "--wrt", "labels"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("`labels` is i64[batch]: only f32 values have gradients"),
        "{stderr}"
    );
}
