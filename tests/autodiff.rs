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
    check_elements(graph, params, inputs, PER_TENSOR)
}

/// As [`check_against_finite_differences`], `per_tensor` elements of each.
fn check_elements(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
    per_tensor: usize,
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
        let picks: Vec<usize> = (0..per_tensor.min(n))
            .map(|k| k * n / per_tensor.min(n))
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
    ("conv2d", "model m {
  input x: f32[2, 4, 7, 6]
  param w: f32[6, 4, 3, 3]
  param b: f32[6]
  param wg: f32[4, 2, 2, 3]
  param wd: f32[4, 1, 3, 3]
  param bd: f32[4]
  input r1: f32[2, 6, 7, 6]
  input r2: f32[2, 6, 3, 3]
  input r3: f32[2, 4, 4, 2]
  input r4: f32[2, 4, 4, 3]
  input r5: f32[2, 6, 3, 2]
  y1 = conv2d(x, w, b, padding=1)
  y2 = conv2d(x, w, stride=2, padding=[0, 1, 1, 0])
  y3 = conv2d(x, wg, stride=[2, 1], dilation=[1, 2], padding=[1, 0], groups=2)
  y4 = conv2d(x, wd, bd, stride=2, padding=\"same\", groups=4)
  y5 = conv2d(x, w, stride=[2, 3], dilation=2, padding=[0, 0, 2, 3])
  output loss = sum(y1 * r1) + sum(y2 * r2) + sum(y3 * r3) + sum(y4 * r4) + sum(y5 * r5)
}"),
    ("conv2d_nhwc", "model m {
  input x: f32[2, 7, 6, 4]
  param w: f32[6, 4, 3, 3]
  param b: f32[6]
  param wd: f32[4, 1, 3, 3]
  param bd: f32[4]
  input r1: f32[2, 7, 6, 6]
  input r2: f32[2, 4, 3, 4]
  y1 = conv2d(x, w, b, padding=1, layout=\"nhwc\")
  y2 = conv2d(x, wd, bd, stride=2, padding=\"same\", groups=4, layout=\"nhwc\")
  output loss = sum(y1 * r1) + sum(y2 * r2)
}"),
    ("pool_nhwc", "model m {
  input x: f32[2, 7, 6, 3]
  input r1: f32[2, 4, 3, 3]
  input r2: f32[2, 1, 1, 3]
  y1 = max_pool2d(x, kernel=3, stride=2, padding=1, layout=\"nhwc\")
  y2 = avg_pool2d(x, kernel=[2, 3], stride=[2, 2], padding=\"same\", layout=\"nhwc\")
  output loss = sum(y1 * r1) + sum(y2 * r1) + sum(global_avg_pool2d(x, layout=\"nhwc\") * r2)
}"),
    ("conv2d_wide_padding", "model m {
  input x: f32[1, 2, 5, 5]
  param w: f32[3, 2, 2, 2]
  input r1: f32[1, 3, 5, 5]
  input r2: f32[1, 3, 6, 4]
  y1 = conv2d(x, w, stride=2, padding=3, dilation=[2, 1])
  y2 = conv2d(x, w, padding=\"same\")
  y3 = conv2d(x, w, stride=[1, 2], padding=[1, 2, 1, 2])
  output loss = sum(y1 * r1) + sum(y2 * r1) + sum(y3 * r2)
}"),
    ("pool", "model m {
  input x: f32[2, 3, 7, 6]
  input r1: f32[2, 3, 3, 3]
  input r2: f32[2, 3, 4, 3]
  input r3: f32[2, 3, 1, 1]
  y1 = max_pool2d(x, kernel=2)
  y2 = max_pool2d(x, kernel=3, stride=2, padding=1)
  y3 = avg_pool2d(x, kernel=3, stride=2, padding=1)
  y4 = avg_pool2d(x, kernel=3, stride=2, padding=1, count_include_pad=true)
  y5 = avg_pool2d(x, kernel=[2, 3], stride=[2, 2], padding=\"same\")
  y6 = max_pool2d(x, kernel=[3, 2], stride=2, dilation=[2, 1], padding=\"same\")
  output loss = sum(y1 * r1) + sum(y2 * r2) + sum(y3 * r2) + sum(y4 * r2) + sum(y5 * r2) + sum(y6 * r2) + sum(global_avg_pool2d(x) * r3)
}"),
    ("vision_misc", "model m {
  input x: f32[2, 3, 4, 4]
  input v: f32[3]
  param mean: f32[3]
  param gain: f32[3]
  param bias: f32[3]
  input r1: f32[2, 3, 6, 5]
  input r2: f32[2, 48]
  input r3: f32[2, 3, 4, 4]
  var = v * v + 0.5
  y1 = pad(x, pads=[0, 0, 1, 0, 0, 0, 1, 1], value=0.5)
  y2 = flatten(x * x)
  y3 = batch_norm(x, mean, var, gain, bias, eps=1e-3) + clip(x * 2.0, min=-1.0, max=0.5)
  output loss = sum(y1 * r1) + sum(y2 * r2) + sum(y3 * r3)
}"),
    ("resize", "model m {
  input x: f32[2, 2, 3, 5]
  input r1: f32[2, 2, 7, 4]
  input r2: f32[2, 2, 2, 9]
  y1 = resize(x, size=[7, 4], mode=\"bilinear\")
  y2 = resize(x, size=[2, 9], mode=\"nearest\")
  output loss = sum(y1 * r1) + sum(y2 * r2)
}"),
    ("batch_norm_2d", "model m {
  input x: f32[4, 3]
  input mean: f32[3]
  input v: f32[3]
  input gain: f32[3]
  input bias: f32[3]
  input r: f32[4, 3]
  output loss = sum(batch_norm(x, mean, v * v + 0.5, gain, bias) * r)
}"),
    ("conv2d_symbolic", "model m {
  input x: f32[batch, 2, 5, 5]
  input labels: i64[batch]
  param w: f32[4, 2, 3, 3]
  param wd: f32[4, 1, 3, 3]
  param b: f32[4]
  h = relu(conv2d(x, w, b, padding=1))
  p = max_pool2d(conv2d(h, wd, padding=\"same\", groups=4), kernel=2)
  output loss = cross_entropy(flatten(global_avg_pool2d(p)), labels)
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

/// A convolution and both pools of generated geometry (stride, dilation,
/// groups incl. depthwise, explicit padding on each side or "same",
/// count_include_pad), as model text; `None` when the window does not fit.
fn window_model(seed: u64) -> Option<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pick = |lo: usize, hi: usize| rng.random_range(lo..=hi);
    let groups = pick(1, 3);
    let (per_group_in, per_group_out) = (pick(1, 2), pick(1, 2));
    let (c, o) = (groups * per_group_in, groups * per_group_out);
    let (n, h, w) = (pick(1, 2), pick(3, 8), pick(3, 8));
    let (kh, kw) = (pick(1, 3), pick(1, 3));
    let (sh, sw, dh, dw) = (pick(1, 3), pick(1, 3), pick(1, 2), pick(1, 2));
    let same = pick(0, 3) == 0;
    let pads = [pick(0, 3), pick(0, 3), pick(0, 3), pick(0, 3)];
    let include_pad = pick(0, 1) == 1;
    let padding = if same {
        "\"same\"".to_string()
    } else {
        format!("{pads:?}")
    };
    let out = |size: usize, k: usize, s: usize, d: usize, before: usize, after: usize| {
        let extent = (k - 1) * d + 1;
        if same {
            Some(size.div_ceil(s))
        } else {
            (size + before + after)
                .checked_sub(extent)
                .map(|r| r / s + 1)
        }
    };
    let oh = out(h, kh, sh, dh, pads[0], pads[2])?;
    let ow = out(w, kw, sw, dw, pads[1], pads[3])?;
    // Pools need padding below the window's extent on every side.
    let pool_fits = same
        || (pads[0].max(pads[2]) < (kh - 1) * dh + 1 && pads[1].max(pads[3]) < (kw - 1) * dw + 1);
    let window = format!("stride=[{sh}, {sw}], dilation=[{dh}, {dw}], padding={padding}");
    let pools = if pool_fits {
        format!(
            "  input rp: f32[{n}, {c}, {oh}, {ow}]
  p1 = max_pool2d(x, kernel=[{kh}, {kw}], {window})
  p2 = avg_pool2d(x, kernel=[{kh}, {kw}], {window}, count_include_pad={include_pad})
  pools = sum(p1 * rp) + sum(p2 * rp)
"
        )
    } else {
        "  pools = sum(x) * 0.0\n".to_string()
    };
    Some(format!(
        "model m {{
  input x: f32[{n}, {c}, {h}, {w}]
  param k: f32[{o}, {per_group_in}, {kh}, {kw}]
  param b: f32[{o}]
  input r: f32[{n}, {o}, {oh}, {ow}]
  y = conv2d(x, k, b, {window}, groups={groups})
{pools}  output loss = sum(y * r) + pools
}}"
    ))
}

proptest! {
    #![proptest_config(seeds::config(24, 1000))]

    /// Generated windows: every element of every gradient against finite
    /// differences (up to 40 per tensor), and the JIT against the interpreter.
    #[test]
    fn generated_windows_match_finite_differences(seed in any::<u64>()) {
        let text = window_model(seed);
        prop_assume!(text.is_some());
        let text = text.unwrap();
        let graph = load(&text);
        let (mut inputs, params) = values(&graph, seed);
        // Distinct inputs, at least 2 / 768 apart: no max changes hands
        // within the finer step of the finite differences.
        let x = &inputs["x"];
        let len = x.len();
        let mut spread: Vec<f32> = (0..len).map(|i| -1.0 + 2.0 * i as f32 / len as f32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..len).rev() {
            spread.swap(i, rng.random_range(0..=i));
        }
        inputs.insert("x".into(), Tensor::f32(x.shape().to_vec(), spread));
        let result = check_elements(&graph, &params, &inputs, 40);
        prop_assert!(result.is_ok(), "{text}\n{}", result.unwrap_err());
        let (checked, skipped) = result.unwrap();
        prop_assert!(checked >= 4 * skipped, "{text}\n{checked} checked, {skipped} skipped");
        let jit = jit_matches_interpreter(&graph, &params, &inputs);
        prop_assert!(jit.is_ok(), "{text}\n{}", jit.unwrap_err());
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

/// A symbolic height and width: the input's gradient is a convolution
/// still, the weights' (a convolution whose kernel is the output gradient)
/// needs them known.
#[test]
fn conv_with_symbolic_height_and_width() {
    let text = "model m {\n  input x: f32[n, 2, h, w]\n  param k: f32[3, 2, 3, 3]\n  y = conv2d(x, k, padding=1)\n  output loss = sum(y)\n}\n";
    let mut graph = load(text);
    append_gradients(&mut graph, "loss", &Wrt::Inputs).unwrap();
    lamina::ir::verify::verify(&graph).unwrap();
    let mut graph = load(text);
    let errors = append_gradients(&mut graph, "loss", &Wrt::Params).unwrap_err();
    let file = lamina::diagnostics::SourceFile {
        path: "t.lam".into(),
        text: Some(text.into()),
    };
    let shown = lamina::diagnostics::render(&errors[0].diagnostic(), Some(&file));
    assert!(
        shown.starts_with("t.lam:4:7: error: conv2d: no gradient rule: the gradient cannot flow through `conv2d` (the weights' gradient needs the output's height and width as integers"),
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
