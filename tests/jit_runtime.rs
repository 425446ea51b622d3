//! The JIT executor at run time: thread safety, concurrent runs, the plan
//! cache, and the boundary (inputs that do not fit, bad ids, NaN).

mod jit_support;

use lamina::ir::ops::{
    Cast, Concat, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul, Permute, Reduce, Reshape,
    Softmax,
};
use std::collections::HashMap;
use std::sync::Arc;

use jit_support::{
    compare_outputs, compile_all_passes, compile_plain, same_bits, Builder, Outputs,
};
use lamina::interp;
use lamina::ir::{
    BinaryOp, Bindings, CompareOp, DType, Dim, Float, LinearEpilogue, Op, ReduceOp, UnaryOp,
};
use lamina::runtime::exec::{CompiledModel, ExecError};
use lamina::tensor::{Tensor, TensorData};

#[test]
fn compiled_models_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledModel>();
    assert_send_sync::<Arc<CompiledModel>>();
}

fn mlp_input(batch: usize, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = jit_support::rng(seed);
    HashMap::from([(
        "x".to_string(),
        jit_support::random_f32(&mut rng, vec![batch, 784], 0.0, 1.0),
    )])
}

fn block_input(batch: usize, seq: usize, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = jit_support::rng(seed);
    HashMap::from([(
        "x".to_string(),
        jit_support::random_f32(&mut rng, vec![batch, seq, 32], -1.0, 1.0),
    )])
}

/// One model shared by the workers, their inputs, and a model of its own
/// for the expected results.
struct Concurrent {
    shared: Arc<CompiledModel>,
    feeds: Vec<HashMap<String, Tensor>>,
    alone: CompiledModel,
}

/// Four threads run one shared model at once, on several shapes (so plans
/// are also built concurrently), each call checked bit for bit against a
/// run of the same input on a model of its own.
#[test]
fn concurrent_runs_give_the_single_threaded_results() {
    let (mlp, mlp_params) = jit_support::mlp();
    let (block, block_params) = jit_support::transformer_block(7);
    for kernel_threads in [1, 2] {
        let cases = [
            Concurrent {
                shared: Arc::new(compile_all_passes(&mlp, &mlp_params, kernel_threads)),
                feeds: [1, 8, 3, 64]
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| mlp_input(b, i as u64))
                    .collect(),
                alone: compile_all_passes(&mlp, &mlp_params, 1),
            },
            Concurrent {
                shared: Arc::new(compile_all_passes(&block, &block_params, kernel_threads)),
                feeds: [(1, 5), (2, 16), (3, 7), (2, 40)]
                    .iter()
                    .enumerate()
                    .map(|(i, &(b, s))| block_input(b, s, i as u64))
                    .collect(),
                alone: compile_all_passes(&block, &block_params, 1),
            },
        ];
        for Concurrent {
            shared,
            feeds,
            alone,
        } in cases
        {
            let expected: Vec<Outputs> =
                feeds.iter().map(|f| alone.run(f).expect("runs")).collect();
            let feeds = Arc::new(feeds);
            let expected = Arc::new(expected);
            let workers: Vec<_> = (0..4)
                .map(|worker| {
                    let (model, feeds, expected) =
                        (shared.clone(), feeds.clone(), expected.clone());
                    std::thread::spawn(move || {
                        for round in 0..6 {
                            // Each worker walks the shapes in its own order.
                            let i = (worker + round) % feeds.len();
                            let got = model.run(&feeds[i]).expect("concurrent run");
                            same_bits(
                                &format!("worker {worker} round {round} input {i}"),
                                &got,
                                &expected[i],
                            )?;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .expect("worker does not panic")
                    .unwrap_or_else(|e| panic!("{kernel_threads} kernel threads: {e}"));
            }
            assert_eq!(
                shared.plan_count(),
                feeds.len(),
                "one plan per shape, however many threads asked"
            );
        }
    }
}

#[test]
fn a_repeated_shape_reuses_its_plan_and_a_new_batch_size_gets_one() {
    let (graph, params) = jit_support::mlp();
    let model = compile_all_passes(&graph, &params, 1);
    assert_eq!(model.plan_count(), 0);
    let one = mlp_input(1, 1);
    let eight = mlp_input(8, 2);
    let first = model.run(&one).unwrap();
    assert_eq!(model.plan_count(), 1);
    for _ in 0..3 {
        same_bits("batch 1 again", &model.run(&one).unwrap(), &first).unwrap();
    }
    assert_eq!(model.plan_count(), 1, "the same shape must not plan again");
    model.run(&eight).unwrap();
    assert_eq!(model.plan_count(), 2, "batch 8 needs its own plan");
    model.run(&one).unwrap();
    model.run(&eight).unwrap();
    assert_eq!(model.plan_count(), 2);
    // Batch 1's kernel set has the 1-row GEMM micro-kernels only; batch 8
    // calls 8-row ones, so it gets another set (compiled with every row
    // count, unless one compiled elsewhere in the process has them), which
    // any later batch size shares: however many sizes, a model compiles at
    // most two sets.
    model.run(&mlp_input(5, 3)).unwrap();
    model.run(&mlp_input(30, 4)).unwrap();
    assert_eq!(model.plan_count(), 4);
    assert!(
        model.compiled_kernel_sets() <= 2,
        "{} kernel sets compiled for 4 batch sizes",
        model.compiled_kernel_sets()
    );
    // Preparing is planning: no second plan for a prepared shape.
    let ordered: Vec<&Tensor> = vec![&eight["x"]];
    let info = model.prepare(&ordered, &Bindings::new()).unwrap();
    assert_eq!(model.plan_count(), 4);
    assert_eq!(
        info.native_steps, info.steps,
        "the MLP runs without the interpreter"
    );
}

fn expect_bind_error(result: Result<Outputs, ExecError>, what: &str) {
    match result {
        Err(ExecError::Bind(errors)) => assert!(!errors.is_empty(), "{what}"),
        Err(other) => panic!("{what}: expected an input error, got {other}"),
        Ok(_) => panic!("{what}: expected an input error, it ran"),
    }
}

#[test]
fn inputs_that_do_not_fit_are_errors() {
    let (graph, params) = jit_support::mlp();
    let model = compile_all_passes(&graph, &params, 1);
    let good = mlp_input(2, 3);
    let reference = model.run(&good).unwrap();
    let x = |t: Tensor| HashMap::from([("x".to_string(), t)]);
    expect_bind_error(
        model.run(&x(Tensor::zeros(DType::F32, vec![2, 783]))),
        "783 features",
    );
    expect_bind_error(
        model.run(&x(Tensor::zeros(DType::F32, vec![784]))),
        "rank 1",
    );
    expect_bind_error(
        model.run(&x(Tensor::zeros(DType::F32, vec![1, 2, 784]))),
        "rank 3",
    );
    expect_bind_error(
        model.run(&x(Tensor::zeros(DType::I64, vec![2, 784]))),
        "i64",
    );
    expect_bind_error(model.run(&HashMap::new()), "no input");
    let mut extra = good.clone();
    extra.insert("y".to_string(), Tensor::zeros(DType::F32, vec![2, 784]));
    expect_bind_error(model.run(&extra), "an unknown input");
    // run_into takes inputs by position: a wrong count is an error.
    let mut outputs = Vec::new();
    let t = &good["x"];
    for given in [vec![], vec![t, t]] {
        match model.run_into(&given, &Bindings::new(), &mut outputs) {
            Err(ExecError::InputCount {
                expected: 1, got, ..
            }) => assert_eq!(got, given.len()),
            other => panic!(
                "{} inputs: expected a count error, got {other:?}",
                given.len()
            ),
        }
    }
    // A --bind value the input contradicts, also once a plan for the
    // input's shape exists.
    let fixed = Bindings::from([("batch".to_string(), 3)]);
    match model.run_into(&[t], &fixed, &mut outputs) {
        Err(ExecError::Bind(_)) => {}
        other => panic!("batch=3 with a batch of 2: expected an input error, got {other:?}"),
    }
    let agreeing = Bindings::from([("batch".to_string(), 2)]);
    model
        .run_into(&[t], &agreeing, &mut outputs)
        .expect("agreeing binding");
    // None of that broke the model.
    same_bits("after the errors", &model.run(&good).unwrap(), &reference).unwrap();
}

#[test]
fn parameters_that_do_not_fit_are_errors() {
    let (graph, mut params) = jit_support::mlp();
    params.insert(
        "fc1.weight".to_string(),
        Tensor::zeros(DType::F32, vec![784, 255]),
    );
    match CompiledModel::compile(&graph, &params, Default::default()) {
        Err(ExecError::ParamType { name, .. }) => assert_eq!(name, "fc1.weight"),
        Err(other) => panic!("expected a parameter type error, got {other}"),
        Ok(_) => panic!("a 784x255 weight for a 784x256 layer compiled"),
    }
    params.remove("fc1.weight");
    match CompiledModel::compile(&graph, &params, Default::default()) {
        Err(ExecError::MissingParam(name)) => assert_eq!(name, "fc1.weight"),
        Err(other) => panic!("expected a missing parameter error, got {other}"),
        Ok(_) => panic!("compiled without fc1.weight"),
    }
}

/// An embedding table whose row count is a symbol the weight fixes; ids
/// out of range (too big or negative) are errors, never reads past the
/// table, and the model keeps working afterwards.
#[test]
fn gather_ids_count_from_the_end_and_out_of_range_ids_are_errors() {
    let mut b = Builder::new("embed");
    let ids = b.input("ids", "i64[batch, seq]");
    let table = Tensor::f32(vec![5, 4], (0..20).map(|v| v as f32).collect());
    let t = b.param("table", table);
    b.graph.node_mut(t).ty.shape[0] = Dim::symbol("vocab");
    let rows = b.op(Op::Gather(Gather { axis: 0 }), &[t, ids]);
    let y = b.op(Op::Unary(UnaryOp::Tanh), &[rows]);
    b.output("y", y);
    let (graph, params) = b.finish();
    for with_passes in [false, true] {
        let model = if with_passes {
            compile_all_passes(&graph, &params, 1)
        } else {
            compile_plain(&graph, &params, 1)
        };
        let feed = |v: Vec<i64>| HashMap::from([("ids".to_string(), Tensor::i64(vec![2, 3], v))]);
        // Negative ids count from the end (numpy, ONNX): -5..5 is valid.
        let good = feed(vec![0, 1, 2, 3, 4, -5]);
        let vocab = Bindings::from([("vocab".to_string(), 5)]);
        let reference = interp::run(&graph, &params, &good, &vocab).unwrap();
        let first = model.run(&good).expect("valid ids");
        compare_outputs("valid ids", &first, &reference, 1e-6).unwrap();
        let negative = feed(vec![-1, -2, -3, -4, -5, 0]);
        let reference = interp::run(&graph, &params, &negative, &vocab).unwrap();
        let got = model.run(&negative).expect("ids counted from the end");
        compare_outputs("negative ids", &got, &reference, 1e-6).unwrap();
        let reversed = feed(vec![4, 3, 2, 1, 0, 0]);
        same_bits("-k is size - k", &model.run(&reversed).unwrap(), &got).unwrap();
        for (bad, id) in [
            (vec![0, 1, 2, 3, 5, 0], 5),
            (vec![0, -6, 2, 3, 4, 0], -6),
            (vec![i64::MAX; 6], i64::MAX),
            (vec![i64::MIN; 6], i64::MIN),
        ] {
            let reference = interp::run(&graph, &params, &feed(bad.clone()), &vocab);
            assert!(reference.is_err(), "the interpreter accepts id {id}");
            match model.run(&feed(bad)).as_ref().map_err(ExecError::root) {
                Err(ExecError::GatherIndex { id: got, size: 5 }) => assert_eq!(*got, id),
                other => panic!("id {id}: expected a gather index error, got {other:?}"),
            }
        }
        same_bits("after bad ids", &model.run(&good).unwrap(), &first).unwrap();
    }
}

/// NaN in an input reaches exactly the outputs that depend on it, through
/// every kind of step; ±inf and huge values give what the interpreter gives.
#[test]
fn nan_and_infinity_propagate_like_the_interpreter() {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        0.0,
        -0.0,
        1e-30,
    ];
    let mut b = Builder::new("specials");
    // Row 0 holds the special values, row 1 only ordinary ones.
    let x = b.input("x", "f32[2, 8]");
    let mut outputs = Vec::new();
    for u in UnaryOp::ALL {
        outputs.push((u.name().to_string(), b.op(Op::Unary(u), &[x])));
    }
    let half = b.scalar(0.5);
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ] {
        outputs.push((op.name().to_string(), b.op(Op::Binary(op), &[x, half])));
    }
    let zero = b.scalar(0.0);
    let gt = b.op(Op::Compare(CompareOp::Gt), &[x, zero]);
    outputs.push(("where".to_string(), b.op(Op::Where, &[gt, x, half])));
    outputs.push((
        "softmax".to_string(),
        b.op(Op::Softmax(Softmax { axis: 1 }), &[x]),
    ));
    outputs.push((
        "log_softmax".to_string(),
        b.op(Op::LogSoftmax(LogSoftmax { axis: 1 }), &[x]),
    ));
    outputs.push((
        "softmax_axis0".to_string(),
        b.op(Op::Softmax(Softmax { axis: 0 }), &[x]),
    ));
    let ones = b.param("gain", Tensor::f32(vec![8], vec![1.0; 8]));
    let zeros = b.param("bias", Tensor::f32(vec![8], vec![0.0; 8]));
    outputs.push((
        "layer_norm".to_string(),
        b.op(
            Op::LayerNorm(LayerNorm {
                axis: 1,
                eps: Float(1e-5),
            }),
            &[x, ones, zeros],
        ),
    ));
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for axes in [vec![1], vec![0], vec![0, 1]] {
            let r = b.op(
                Op::Reduce(Reduce {
                    op,
                    axes: axes.clone(),
                    keepdims: false,
                }),
                &[x],
            );
            outputs.push((format!("{}{axes:?}", op.name()), r));
        }
    }
    let w = b.param(
        "w",
        Tensor::f32(vec![8, 3], (0..24).map(|v| v as f32 * 0.1 - 1.0).collect()),
    );
    outputs.push((
        "matmul".to_string(),
        b.op(
            Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            &[x, w],
        ),
    ));
    let bias3 = b.param("bias3", Tensor::f32(vec![3], vec![0.1, 0.2, 0.3]));
    outputs.push((
        "fused_linear_relu".to_string(),
        b.op(
            Op::FusedLinear(FusedLinear {
                transpose_b: false,
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::Relu),
                    residual: false,
                },
            }),
            &[x, w, bias3],
        ),
    ));
    let xt = b.op(Op::Permute(Permute { perm: vec![1, 0] }), &[x]);
    outputs.push(("permute".to_string(), xt));
    for (name, id) in &outputs {
        b.output(name, *id);
    }
    let (graph, params) = b.finish();
    let mut data: Vec<f32> = specials.to_vec();
    data.extend([0.3, -1.2, 0.7, 2.0, -0.4, 0.05, 1.5, -2.5]);
    let feed = HashMap::from([("x".to_string(), Tensor::f32(vec![2, 8], data))]);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
    let mut failures = Vec::new();
    for with_passes in [false, true] {
        let model = if with_passes {
            compile_all_passes(&graph, &params, 1)
        } else {
            compile_plain(&graph, &params, 1)
        };
        let got = model.run(&feed).unwrap();
        if let Err(e) = compare_outputs(&format!("passes: {with_passes}"), &got, &reference, 1e-5) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Edge values where the kernels and the interpreter used to disagree, now
/// pinned to the true limits and C `pow` (numpy's answers): gelu(-inf) and
/// gelu_tanh(-inf) are -0; gelu_tanh keeps its far negative tail (the
/// interpreter flushed x <= -8 to -0); pow(-inf, 0.5) = +inf (sqrt gives
/// NaN), pow(-0, 0.5) = +0, pow(-inf, 3) = -inf, pow(-inf, -0.5) = +0,
/// pow(-0, -1) = -inf, pow(-8, 1/3) = NaN. Special answers (infinities,
/// NaN, signed zeros) must match bit for bit, others within 2e-5.
#[test]
fn kernels_and_interpreter_agree_at_edge_values() {
    let xs = [
        f32::NEG_INFINITY,
        -0.0,
        -9.0,
        -12.0,
        -30.0,
        f32::INFINITY,
        -8.0,
        2.5,
    ];
    let n = xs.len();
    let mut b = Builder::new("edges");
    let x = b.input("x", &format!("f32[{n}]"));
    let y = b.input("y", &format!("f32[{n}]"));
    for (name, op) in [
        ("gelu", Op::Unary(UnaryOp::Gelu)),
        ("gelu_tanh", Op::Unary(UnaryOp::GeluTanh)),
    ] {
        let r = b.op(op, &[x]);
        b.output(name, r);
    }
    // Constant exponents take the kernels' shortcuts (sqrt, reciprocals,
    // products); `y` takes the general exp/log path.
    for c in [0.5f32, -0.5, 3.0, -1.0, 2.0, 1.0 / 3.0] {
        let k = b.scalar(c);
        let r = b.op(Op::Binary(BinaryOp::Pow), &[x, k]);
        b.output(&format!("pow_{c}"), r);
    }
    let r = b.op(Op::Binary(BinaryOp::Pow), &[x, y]);
    b.output("pow_xy", r);
    let (graph, params) = b.finish();
    let exponents = vec![0.5f32, 0.5, 3.0, -0.5, -1.0, -0.5, 1.0 / 3.0, 3.0];
    let feed = HashMap::from([
        ("x".to_string(), Tensor::f32(vec![n], xs.to_vec())),
        ("y".to_string(), Tensor::f32(vec![n], exponents)),
    ]);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
    // The oracle itself, on the values that were wrong.
    let value = |name: &str, i: usize| {
        let (_, t) = reference.iter().find(|(n, _)| n == name).unwrap();
        t.as_f32().unwrap()[i]
    };
    assert_eq!(value("gelu", 0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(value("gelu_tanh", 0).to_bits(), (-0.0f32).to_bits());
    assert!((value("gelu_tanh", 2) / -1.336_459_6e-28 - 1.0).abs() < 1e-6);
    assert_eq!(value("pow_0.5", 0), f32::INFINITY);
    assert_eq!(value("pow_0.5", 1).to_bits(), 0.0f32.to_bits());
    assert_eq!(value("pow_xy", 0), f32::INFINITY);
    for with_passes in [false, true] {
        let model = if with_passes {
            compile_all_passes(&graph, &params, 1)
        } else {
            compile_plain(&graph, &params, 1)
        };
        let got = model.run(&feed).unwrap();
        for ((name, ours), (_, theirs)) in got.iter().zip(&reference) {
            let (p, q) = (ours.as_f32().unwrap(), theirs.as_f32().unwrap());
            for (i, (&a, &b)) in p.iter().zip(q).enumerate() {
                let what = format!("{name}(x = {}) with passes {with_passes}", xs[i]);
                if !b.is_finite() || b == 0.0 || !a.is_finite() || a == 0.0 {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{what}: jit {a:e}, interpreter {b:e}"
                    );
                } else {
                    let rel = ((a - b) / b).abs();
                    assert!(rel < 2e-5, "{what}: jit {a:e}, interpreter {b:e}");
                }
            }
        }
    }
}

/// A NaN in one row of a batch turns that row's outputs into NaN and
/// leaves the other rows exactly as without it.
#[test]
fn nan_stays_in_its_row() {
    let (graph, params) = jit_support::mlp();
    let model = compile_all_passes(&graph, &params, 2);
    let clean = mlp_input(4, 9);
    let mut dirty = clean.clone();
    let x = dirty.get_mut("x").unwrap().as_f32_mut().unwrap();
    x[2 * 784 + 100] = f32::NAN;
    let a = model.run(&clean).unwrap();
    let b = model.run(&dirty).unwrap();
    let (pa, pb) = (a[0].1.as_f32().unwrap(), b[0].1.as_f32().unwrap());
    for row in 0..4 {
        let (ra, rb) = (&pa[row * 10..(row + 1) * 10], &pb[row * 10..(row + 1) * 10]);
        if row == 2 {
            assert!(rb.iter().all(|v| v.is_nan()), "row 2 should be NaN: {rb:?}");
        } else {
            assert!(
                ra.iter().zip(rb).all(|(p, q)| p.to_bits() == q.to_bits()),
                "row {row} changed"
            );
        }
    }
}

/// Corner cases of the planner: ranks and operand counts past the native
/// steps' limits, reductions of a scalar and over no axes,
/// an identity cast of an intermediate, a fused linear layer whose right
/// operand is batched (not a GEMM) or whose activation the GEMM epilogue
/// lacks, casts through bool, a reshape of an integer input feeding the
/// interpreter.
#[test]
fn planner_corner_cases_match_the_interpreter() {
    let mut b = Builder::new("corners");
    let x = b.input("x", "f32[batch, 3, 4]");
    let ids = b.input("ids", "i64[batch, 2]");
    let s = b.op(
        Op::Reduce(Reduce {
            op: ReduceOp::Sum,
            axes: vec![0, 1, 2],
            keepdims: false,
        }),
        &[x],
    );
    let s2 = b.op(
        Op::Reduce(Reduce {
            op: ReduceOp::Max,
            axes: vec![],
            keepdims: false,
        }),
        &[s],
    );
    let none = b.op(
        Op::Reduce(Reduce {
            op: ReduceOp::Mean,
            axes: vec![],
            keepdims: true,
        }),
        &[x],
    );
    let t = b.op(Op::Unary(UnaryOp::Tanh), &[x]);
    let same = b.op(Op::Cast(Cast { to: DType::F32 }), &[t]);
    let w3 = b.param(
        "w3",
        Tensor::f32(vec![1, 4, 2], (0..8).map(|v| v as f32 * 0.1).collect()),
    );
    let batched_fused = b.op(
        Op::FusedLinear(FusedLinear {
            transpose_b: false,
            epilogue: LinearEpilogue {
                bias: false,
                activation: Some(UnaryOp::Tanh),
                residual: false,
            },
        }),
        &[same, w3],
    );
    let w = b.param(
        "w",
        Tensor::f32(vec![4, 2], (0..8).map(|v| v as f32 * 0.1 - 0.4).collect()),
    );
    let exp_fused = b.op(
        Op::FusedLinear(FusedLinear {
            transpose_b: false,
            epilogue: LinearEpilogue {
                bias: false,
                activation: Some(UnaryOp::Exp),
                residual: false,
            },
        }),
        &[x, w],
    );
    let zero = b.scalar(0.0);
    let positive = b.op(Op::Compare(CompareOp::Gt), &[x, zero]);
    let as_f32 = b.op(Op::Cast(Cast { to: DType::F32 }), &[positive]);
    let flat_ids = b.op(
        Op::Reshape(Reshape {
            shape: vec![Dim::symbol("batch").checked_mul(&Dim::known(2)).unwrap()],
        }),
        &[ids],
    );
    let as_i32 = b.op(Op::Cast(Cast { to: DType::I32 }), &[flat_ids]);
    let ids_f32 = b.op(Op::Cast(Cast { to: DType::F32 }), &[as_i32]);
    // Rank 9 and 17 operands: beyond the native steps' stack arrays, so
    // these run on the interpreter's ops.
    let mut deep_shape = vec![Dim::symbol("batch")];
    deep_shape.extend([1, 1, 1, 1, 1, 1, 3, 4].map(Dim::known));
    let deep = b.op(Op::Reshape(Reshape { shape: deep_shape }), &[t]);
    let deep = b.op(Op::Unary(UnaryOp::Sigmoid), &[deep]);
    let parts = vec![t; 17];
    let wide = b.op(Op::Concat(Concat { axis: 2 }), &parts);
    for (name, id) in [
        ("rank9", deep),
        ("concat17", wide),
        ("sum_all", s),
        ("max_of_scalar", s2),
        ("mean_no_axes", none),
        ("identity_cast", same),
        ("batched_fused", batched_fused),
        ("exp_fused", exp_fused),
        ("bool_to_f32", as_f32),
        ("ids_f32", ids_f32),
        ("ids_view", flat_ids),
    ] {
        b.output(name, id);
    }
    let (graph, params) = b.finish();
    let mut rng = jit_support::rng(11);
    let feed = HashMap::from([
        (
            "x".to_string(),
            jit_support::random_f32(&mut rng, vec![2, 3, 4], -1.0, 1.0),
        ),
        (
            "ids".to_string(),
            Tensor::new(vec![2, 2], TensorData::I64(vec![3, -7, 0, 1 << 40])),
        ),
    ]);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
    for with_passes in [false, true] {
        let model = if with_passes {
            compile_all_passes(&graph, &params, 1)
        } else {
            compile_plain(&graph, &params, 1)
        };
        let got = model
            .run(&feed)
            .unwrap_or_else(|e| panic!("passes {with_passes}: {e}"));
        compare_outputs(&format!("passes {with_passes}"), &got, &reference, 1e-5).unwrap();
    }
}

/// The largest |jit - interpreter| over all elements, NaN required to
/// match NaN.
fn max_abs_error(what: &str, jit: &Tensor, reference: &Tensor) -> f64 {
    let (a, b) = (jit.to_f64_vec(), reference.to_f64_vec());
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    a.iter()
        .zip(&b)
        .enumerate()
        .map(|(i, (&p, &q))| {
            assert_eq!(
                p.is_nan(),
                q.is_nan(),
                "{what} element {i}: jit {p}, interpreter {q}"
            );
            if p.is_nan() || p == q {
                0.0
            } else {
                (p - q).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// `layer_norm(x)` over rows of `x` (gain 1, bias 0) on both backends.
fn layer_norm_both(rows: &[Vec<f32>], eps: f32) -> (Tensor, Tensor) {
    let len = rows[0].len();
    let mut b = Builder::new("layer_norm_rows");
    let x = b.input("x", &format!("f32[{}, {len}]", rows.len()));
    let gain = b.param("gain", Tensor::f32(vec![len], vec![1.0; len]));
    let bias = b.param("bias", Tensor::f32(vec![len], vec![0.0; len]));
    let y = b.op(
        Op::LayerNorm(LayerNorm {
            axis: 1,
            eps: Float(eps),
        }),
        &[x, gain, bias],
    );
    b.output("y", y);
    let (graph, params) = b.finish();
    let data: Vec<f32> = rows.concat();
    let feed = HashMap::from([("x".to_string(), Tensor::f32(vec![rows.len(), len], data))]);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
    let got = compile_plain(&graph, &params, 1).run(&feed).unwrap();
    (got[0].1.clone(), reference[0].1.clone())
}

/// Rows where E[x^2] - E[x]^2, or a mean rounded to f32, cancels: the
/// kernel's output must be the interpreter's (f64 statistics) to a few f32
/// ulps of the O(1) result, where it used to be off by up to 1.
#[test]
fn layer_norm_statistics_do_not_cancel() {
    // Two values 0.01 apart at 100: the answer is -1, 1 (eps negligible).
    let (got, want) = layer_norm_both(&[vec![100.0, 100.01], vec![-7e5, -7e5 + 0.0625]], 1e-12);
    for (v, sign) in got.as_f32().unwrap().iter().zip([-1.0f32, 1.0, -1.0, 1.0]) {
        assert!((v - sign).abs() < 1e-6, "{:?}", got.as_f32().unwrap());
    }
    assert!(max_abs_error("close pair", &got, &want) < 1e-6);

    // Constant rows: x - mean is exactly 0, so the output is exactly 0
    // even with eps 1e-12 (which would amplify any rounding a million-fold).
    let constants = [0.1f32, 3.7, -123.456, 1e4, 7.77e30];
    let rows: Vec<Vec<f32>> = constants.iter().map(|&c| vec![c; 768]).collect();
    let (got, _) = layer_norm_both(&rows, 1e-12);
    assert!(
        got.as_f32().unwrap().iter().all(|&v| v == 0.0),
        "constant rows must normalise to 0: {:?}",
        got.as_f32()
            .unwrap()
            .chunks(768)
            .map(|r| r[..3].to_vec())
            .collect::<Vec<_>>()
    );

    // Mean 1e4, spread about 1, n = 768 and ragged lengths (the tail loop).
    let mut rng = jit_support::rng(0x1a4e);
    for len in [768usize, 769, 3] {
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|r| {
                let centre = [1e4f32, -3e5, 0.5, 2.5e6][r % 4];
                let t = jit_support::random_f32(&mut rng, vec![len], -1.7, 1.7);
                t.as_f32().unwrap().iter().map(|v| centre + v).collect()
            })
            .collect();
        let (got, want) = layer_norm_both(&rows, 1e-5);
        let error = max_abs_error(&format!("large mean, len {len}"), &got, &want);
        eprintln!("layer_norm, large means, len {len}: max abs error {error:.2e}");
        assert!(error < 2e-6, "len {len}: error {error:e}");
    }
}

/// Magnitudes whose squares overflow f32 (|x| >= 1.8e19, up to the top of
/// the range), tiny ones, and non-finite values.
#[test]
fn layer_norm_handles_extreme_magnitudes() {
    let mut rng = jit_support::rng(0xe7);
    let mut rows = Vec::new();
    for scale in [1e19f32, 3e30, 1e38, 1e-30, 1e-12] {
        let t = jit_support::random_f32(&mut rng, vec![37], -1.0, 1.0);
        rows.push(t.as_f32().unwrap().iter().map(|v| v * scale).collect());
    }
    let mut spread = vec![1.0f32; 37];
    spread[0] = 3.4e38;
    spread[1] = -3.4e38;
    rows.push(spread);
    let (got, want) = layer_norm_both(&rows, 1e-5);
    let error = max_abs_error("extreme magnitudes", &got, &want);
    assert!(error < 2e-6, "error {error:e}");
    assert!(got.as_f32().unwrap()[..37].iter().any(|v| v.abs() > 0.5));

    let mut special = Vec::new();
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let mut row = vec![1.0f32, 2.0, 3.0, 4.0, 5.0];
        row[3] = bad;
        special.push(row);
    }
    let (got, want) = layer_norm_both(&special, 1e-5);
    assert!(got.as_f32().unwrap().iter().all(|v| v.is_nan()));
    max_abs_error("non-finite rows", &got, &want);
}

/// Sums and means along the last axis (row kernels) and along another axis
/// (the executor's strided reduction) of values near the top of the f32
/// range: accumulating in f32 would overflow to inf.
#[test]
fn sums_and_means_of_huge_values_do_not_overflow() {
    let len = 9;
    let mut b = Builder::new("huge");
    let x = b.input("x", &format!("f32[{len}, {len}]"));
    for (name, op) in [("sum", ReduceOp::Sum), ("mean", ReduceOp::Mean)] {
        for axis in [0, 1] {
            let y = b.op(
                Op::Reduce(Reduce {
                    op,
                    axes: vec![axis],
                    keepdims: false,
                }),
                &[x],
            );
            b.output(&format!("{name}{axis}"), y);
        }
    }
    let (graph, params) = b.finish();
    let mut data = vec![3e38f32; len * len];
    // Row 0 and column 0 alternate in sign: their sum is a finite 3e38.
    for i in 0..len {
        data[i] = if i % 2 == 0 { 3e38 } else { -3e38 };
        data[i * len] = data[i];
    }
    let feed = HashMap::from([("x".to_string(), Tensor::f32(vec![len, len], data))]);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
    let got = compile_plain(&graph, &params, 1).run(&feed).unwrap();
    compare_outputs("huge values", &got, &reference, 1e-6).unwrap();
    // Outputs: sum0, sum1, mean0, mean1.
    let means = got[3].1.as_f32().unwrap();
    assert_eq!(means[2], 3e38, "{means:?}");
    assert_eq!(got[0].1.as_f32().unwrap()[0], 3e38);
}

/// Reductions over an axis of size 0 give the same answer on both
/// backends, as numpy: sum 0, mean NaN (0/0), max an error (max has no
/// identity); softmax, log_softmax and layer_norm of an empty axis are
/// empty. Reduced along the last axis, a middle one and several.
#[test]
fn reductions_over_an_empty_axis_agree() {
    for (shape, axes) in [
        ("f32[2, 0]", vec![1]),
        ("f32[2, 0, 3]", vec![1]),
        ("f32[2, 0, 3]", vec![0, 1]),
        ("f32[0, 4]", vec![0]),
    ] {
        let dims: Vec<usize> = shape[4..shape.len() - 1]
            .split(", ")
            .map(|d| d.parse().unwrap())
            .collect();
        let feed = HashMap::from([("x".to_string(), Tensor::f32(dims, vec![]))]);
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            let mut b = Builder::new("empty");
            let x = b.input("x", shape);
            let y = b.op(
                Op::Reduce(Reduce {
                    op,
                    axes: axes.clone(),
                    keepdims: false,
                }),
                &[x],
            );
            b.output("y", y);
            let (graph, params) = b.finish();
            let what = format!("{}{axes:?} of {shape}", op.name());
            let reference = interp::run(&graph, &params, &feed, &Bindings::new());
            for with_passes in [false, true] {
                let model = if with_passes {
                    compile_all_passes(&graph, &params, 1)
                } else {
                    compile_plain(&graph, &params, 1)
                };
                let got = model.run(&feed);
                match (op, &reference, got.as_ref().map_err(ExecError::root)) {
                    (ReduceOp::Max, Err(e), Err(ExecError::Interp(ours))) => {
                        assert!(
                            matches!(
                                e.root(),
                                interp::InterpError::Eval(interp::EvalError::EmptyMax { .. })
                            ) && matches!(
                                ours,
                                interp::InterpError::Eval(interp::EvalError::EmptyMax { .. })
                            ),
                            "{what}: {e} / {ours}"
                        );
                    }
                    (ReduceOp::Sum | ReduceOp::Mean, Ok(want), Ok(got)) => {
                        compare_outputs(&what, got, want, 0.0).unwrap();
                        let v = got[0].1.as_f32().unwrap();
                        assert!(!v.is_empty(), "{what}");
                        if op == ReduceOp::Sum {
                            assert!(v.iter().all(|&v| v == 0.0), "{what}: {v:?}");
                        } else {
                            assert!(v.iter().all(|v| v.is_nan()), "{what}: {v:?}");
                        }
                    }
                    (_, reference, got) => {
                        panic!("{what}: interpreter {reference:?}, jit {got:?}")
                    }
                }
            }
        }
    }
    let mut b = Builder::new("empty_rows");
    let x = b.input("x", "f32[3, 0]");
    let none = b.param("none", Tensor::f32(vec![0], vec![]));
    for (name, op) in [
        ("softmax", Op::Softmax(Softmax { axis: 1 })),
        ("log_softmax", Op::LogSoftmax(LogSoftmax { axis: 1 })),
    ] {
        let y = b.op(op, &[x]);
        b.output(name, y);
    }
    let y = b.op(
        Op::LayerNorm(LayerNorm {
            axis: 1,
            eps: Float(1e-5),
        }),
        &[x, none, none],
    );
    b.output("layer_norm", y);
    let (graph, params) = b.finish();
    let feed = HashMap::from([("x".to_string(), Tensor::f32(vec![3, 0], vec![]))]);
    let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
    let got = compile_plain(&graph, &params, 1).run(&feed).unwrap();
    compare_outputs("empty rows", &got, &reference, 0.0).unwrap();
}

/// Layer norm over every length the kernel's vector and tail loops split
/// differently, with offsets and scales from 1e-3 to 1e6, random gains and
/// biases, on 1 and 2 threads: within 2e-6 of the interpreter (relative to
/// the output's magnitude, 1e-6 absolute floor).
#[test]
fn layer_norm_matches_the_interpreter_on_every_row_length() {
    let mut rng = jit_support::rng(0x1e9);
    for len in [
        1usize, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 255, 256, 257, 768, 1000,
    ] {
        let rows = 64;
        let mut b = Builder::new("layer_norm_lengths");
        let x = b.input("x", &format!("f32[{rows}, {len}]"));
        let gain = b.param(
            "gain",
            jit_support::random_f32(&mut rng, vec![len], 0.5, 1.5),
        );
        let bias = b.param(
            "bias",
            jit_support::random_f32(&mut rng, vec![len], -0.5, 0.5),
        );
        for (name, eps) in [("eps_1e-5", 1e-5f32), ("eps_0", 0.0)] {
            let y = b.op(
                Op::LayerNorm(LayerNorm {
                    axis: 1,
                    eps: Float(eps),
                }),
                &[x, gain, bias],
            );
            b.output(name, y);
        }
        let (graph, params) = b.finish();
        let mut data = Vec::with_capacity(rows * len);
        for r in 0..rows {
            let scale = [1e-3f32, 1.0, 37.0, 1e6][r % 4];
            let offset = [0.0f32, 5.0, -1e3, 2.5e4][(r / 4) % 4] * scale;
            let t = jit_support::random_f32(&mut rng, vec![len], -1.0, 1.0);
            data.extend(t.as_f32().unwrap().iter().map(|v| offset + v * scale));
        }
        let feed = HashMap::from([("x".to_string(), Tensor::f32(vec![rows, len], data))]);
        let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
        for threads in [1, 2] {
            let got = compile_plain(&graph, &params, threads).run(&feed).unwrap();
            compare_outputs(
                &format!("len {len}, {threads} threads"),
                &got,
                &reference,
                2e-6,
            )
            .unwrap();
        }
    }
}

/// Model outputs are written straight into the caller's tensors by the
/// step computing them: the same value under two names, an output a later
/// step reads, and a view (reshape) of another output all come out equal
/// to the interpreter's, including when `run_into` reuses tensors filled
/// with stale values from an earlier run.
#[test]
fn outputs_written_in_place_match_the_interpreter() {
    let mut b = Builder::new("in_place");
    let x = b.input("x", "f32[batch, 5]");
    let w = b.param(
        "w",
        Tensor::f32(vec![5, 3], (0..15).map(|v| v as f32 * 0.1 - 0.7).collect()),
    );
    let h = b.op(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: false,
        }),
        &[x, w],
    );
    let y = b.op(Op::Unary(UnaryOp::Tanh), &[h]);
    let flat = b.op(
        Op::Reshape(Reshape {
            shape: vec![Dim::symbol("batch").checked_mul(&Dim::known(3)).unwrap()],
        }),
        &[h],
    );
    for (name, id) in [("h", h), ("y", y), ("h_again", h), ("h_flat", flat)] {
        b.output(name, id);
    }
    let (graph, params) = b.finish();
    for threads in [1, 2] {
        let model = compile_plain(&graph, &params, threads);
        let mut outputs: Vec<Tensor> = Vec::new();
        for (round, seed) in [(0, 3u64), (1, 4), (2, 5)] {
            let mut rng = jit_support::rng(seed);
            let feed = HashMap::from([(
                "x".to_string(),
                jit_support::random_f32(&mut rng, vec![4, 5], -1.0, 1.0),
            )]);
            if round == 2 {
                for out in &mut outputs {
                    if let Some(data) = out.as_f32_mut() {
                        data.fill(f32::NAN);
                    }
                }
            }
            let ordered = model.ordered_inputs(&feed).unwrap();
            model
                .run_into(&ordered, &Bindings::new(), &mut outputs)
                .unwrap();
            let reference = interp::run(&graph, &params, &feed, &Bindings::new()).unwrap();
            let names = ["h", "y", "h_again", "h_flat"];
            let got: Outputs = names
                .iter()
                .map(|n| n.to_string())
                .zip(outputs.iter().cloned())
                .collect();
            compare_outputs(
                &format!("{threads} thread(s), round {round}"),
                &got,
                &reference,
                1e-5,
            )
            .unwrap();
        }
    }
}

/// A weight of a symbolic shape (`w: f32[k, n]`) is packed when a plan binds
/// its shape, once, for that plan and later ones: every row count gives the
/// interpreter's values, 1 and 2 kernel threads give the same bits, and two
/// weight shapes compiled from the same text are both right.
#[test]
fn a_weight_of_a_symbolic_shape_is_packed_for_its_bound_shape() {
    let text = "model sgemm {\n  input x: f32[m, k]\n  param w: f32[k, n]\n  output y = x @ w\n}\n";
    let graph = lamina::model::load_source(std::path::Path::new("sgemm.lam"), text.to_string())
        .unwrap_or_else(|_| panic!("the model is valid"))
        .graph;
    for (k, n) in [(70, 45), (300, 200)] {
        let mut rng = jit_support::rng(k as u64);
        let params = HashMap::from([(
            "w".to_string(),
            jit_support::random_f32(&mut rng, vec![k, n], -1.0, 1.0),
        )]);
        let one = compile_all_passes(&graph, &params, 1);
        let two = compile_all_passes(&graph, &params, 2);
        let rows = [1, 13, 200];
        for m in rows {
            let feed = HashMap::from([(
                "x".to_string(),
                jit_support::random_f32(&mut rng, vec![m, k], -1.0, 1.0),
            )]);
            let what = format!("{m}x{k} @ {k}x{n}");
            let got = one.run(&feed).unwrap();
            same_bits(&what, &two.run(&feed).unwrap(), &got).unwrap();
            // Twice: the second run reads the weight packed by the first.
            same_bits(&what, &one.run(&feed).unwrap(), &got).unwrap();
            // The interpreter takes the weight's symbols as bindings.
            let weight_shape = Bindings::from([("k".to_string(), k), ("n".to_string(), n)]);
            let reference = interp::run(&graph, &params, &feed, &weight_shape).unwrap();
            compare_outputs(&what, &got, &reference, 1e-4).unwrap();
        }
        assert_eq!(one.plan_count(), rows.len());
    }
}
