//! The interpreter against numpy: every op case, a small MLP and a small
//! attention block, computed by tests/fixtures/interp/gen.py (float64
//! reference rounded to float32). Each case is built as a graph with
//! `Graph::add_node` (types from `shape_rules::infer`) and run through
//! `interp::run`, so binding and concretization are exercised too.

use lamina::ir::ops::arg_reduce::{ArgOp, ArgReduce};
use lamina::ir::ops::cumsum::CumSum;
use lamina::ir::ops::gather_elements::GatherElements;
use lamina::ir::ops::scatter_elements::{ScatterElements, ScatterReduce};
use lamina::ir::ops::topk::TopK;
use lamina::ir::ops::{
    Cast, Concat, Constant, FusedLinear, Gather, Input, LayerNorm, LogSoftmax, MatMul, Param,
    Permute, Reduce, Reshape, Slice, Softmax,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lamina::interp;
use lamina::ir::shape_rules;
use lamina::ir::{
    BinaryOp, Bindings, CompareOp, DType, Dim, Float, Graph, LinearEpilogue, NodeId, Op, ReduceOp,
    TensorType, UnaryOp,
};
use lamina::tensor::{Tensor, TensorData};

/// Allowed difference, relative to max(1, |expected|).
const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interp")
}

fn read_npy(case: &str, name: &str) -> npyz::NpyFile<std::io::Cursor<Vec<u8>>> {
    let path = fixtures().join(case).join(format!("{name}.npy"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    npyz::NpyFile::new(std::io::Cursor::new(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture array as a tensor of the matching dtype.
fn load(case: &str, name: &str) -> Tensor {
    let npy = read_npy(case, name);
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = match npy.dtype() {
        npyz::DType::Plain(type_str) => type_str.to_string(),
        other => panic!("{case}/{name}: unexpected dtype {other:?}"),
    };
    let data = match descr.as_str() {
        "<f4" => TensorData::F32(npy.into_vec().unwrap()),
        "<i8" => TensorData::I64(npy.into_vec().unwrap()),
        "<i4" => TensorData::I32(npy.into_vec().unwrap()),
        "|b1" => TensorData::Bool(npy.into_vec().unwrap()),
        other => panic!("{case}/{name}: unsupported dtype {other}"),
    };
    Tensor::new(shape, data)
}

fn known(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::known(d)).collect()
}

fn symbols(names: &[&str]) -> Vec<Dim> {
    names
        .iter()
        .map(|n| n.parse().map(Dim::known).unwrap_or_else(|_| Dim::symbol(n)))
        .collect()
}

/// A graph under construction whose inputs and params come from one
/// fixture directory.
struct Case {
    name: String,
    graph: Graph,
    inputs: HashMap<String, Tensor>,
    params: HashMap<String, Tensor>,
}

impl Case {
    fn new(name: &str) -> Case {
        Case {
            name: name.to_string(),
            graph: Graph::new(name),
            inputs: HashMap::new(),
            params: HashMap::new(),
        }
    }

    /// A model input with the fixture's concrete shape.
    fn input(&mut self, file: &str) -> NodeId {
        let value = load(&self.name, file);
        let shape = known(value.shape());
        self.input_declared(file, shape)
    }

    /// A model input declared with `shape`, which may hold symbols that
    /// the run binds from the fixture's shape.
    fn input_declared(&mut self, file: &str, shape: Vec<Dim>) -> NodeId {
        let value = load(&self.name, file);
        let ty = TensorType::new(value.dtype(), shape);
        let id = self
            .graph
            .add_node(Op::Input(Input { name: file.into() }), &[], ty, None);
        self.graph.inputs.push(id);
        self.inputs.insert(file.to_string(), value);
        id
    }

    fn param(&mut self, file: &str) -> NodeId {
        let value = load(&self.name, file);
        let ty = TensorType::new(value.dtype(), known(value.shape()));
        let name = format!("{}.{file}", self.name);
        let id = self.graph.add_node(
            Op::Param(Param {
                name: name.clone(),
                init: None,
            }),
            &[],
            ty,
            None,
        );
        self.params.insert(name, value);
        id
    }

    fn scalar(&mut self, value: f32) -> NodeId {
        self.op(
            Op::Constant(Constant {
                value: Arc::new(Tensor::scalar(value)),
            }),
            &[],
        )
    }

    fn op(&mut self, op: Op, operands: &[NodeId]) -> NodeId {
        let types: Vec<TensorType> = operands
            .iter()
            .map(|&o| self.graph.node(o).ty.clone())
            .collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        let ty = shape_rules::infer(&op, &refs).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        self.graph.add_node(op, operands, ty, None)
    }

    fn run(mut self, out: NodeId) -> Tensor {
        self.graph.outputs.push(("out".into(), out));
        let mut outputs = interp::run(&self.graph, &self.params, &self.inputs, &Bindings::new())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert_eq!(outputs.len(), 1);
        outputs.remove(0).1
    }
}

/// Where `actual` and `expected` differ beyond the tolerance, if anywhere.
fn mismatch(actual: &Tensor, expected: &Tensor) -> Option<String> {
    if actual.dtype() != expected.dtype() || actual.shape() != expected.shape() {
        return Some(format!(
            "got {}{:?}, expected {}{:?}",
            actual.dtype(),
            actual.shape(),
            expected.dtype(),
            expected.shape()
        ));
    }
    let exact = expected.dtype() != DType::F32;
    let pairs = actual.to_f64_vec().into_iter().zip(expected.to_f64_vec());
    for (i, (a, e)) in pairs.enumerate() {
        let close = if exact {
            a == e
        } else {
            (a.is_nan() && e.is_nan()) || (a - e).abs() <= TOLERANCE * e.abs().max(1.0)
        };
        if !close {
            return Some(format!("element {i}: got {a}, expected {e}"));
        }
    }
    None
}

fn assert_matches_numpy(case: &str, actual: &Tensor) {
    if let Some(problem) = mismatch(actual, &load(case, "out")) {
        panic!("{case}: {problem}");
    }
}

/// The graph for a single-op fixture case, or None for a name this test
/// does not know.
fn single_op_case(name: &str) -> Option<Case> {
    let mut case = Case::new(name);
    let binary = |op| Op::Binary(op);
    let reduce = |op, axes: &[usize], keepdims| {
        Op::Reduce(Reduce {
            op,
            axes: axes.to_vec(),
            keepdims,
        })
    };
    let matmul = |transpose_a, transpose_b| {
        Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        })
    };
    let slice = |axis, start, end, step| {
        Op::Slice(Slice {
            axis,
            start,
            end: Dim::known(end),
            step,
        })
    };
    let (op, operands): (Op, &[&str]) = match name {
        "add_broadcast" => (binary(BinaryOp::Add), &["a", "b"]),
        "add_i64_broadcast" => (binary(BinaryOp::Add), &["a", "b"]),
        "max_i64" => (binary(BinaryOp::Max), &["a", "b"]),
        "div_i32_trunc" => (binary(BinaryOp::Div), &["a", "b"]),
        "sub_row" => (binary(BinaryOp::Sub), &["a", "b"]),
        "mul_scalar" => (binary(BinaryOp::Mul), &["a", "b"]),
        "div_column" => (binary(BinaryOp::Div), &["a", "b"]),
        "pow" => (binary(BinaryOp::Pow), &["a", "b"]),
        "maximum" => (binary(BinaryOp::Max), &["a", "b"]),
        "minimum" => (binary(BinaryOp::Min), &["a", "b"]),
        "compare_lt" => (Op::Compare(CompareOp::Lt), &["a", "b"]),
        "compare_le" => (Op::Compare(CompareOp::Le), &["a", "b"]),
        "compare_gt" => (Op::Compare(CompareOp::Gt), &["a", "b"]),
        "compare_ge" => (Op::Compare(CompareOp::Ge), &["a", "b"]),
        "compare_eq" | "compare_eq_i64" => (Op::Compare(CompareOp::Eq), &["a", "b"]),
        "compare_ne" => (Op::Compare(CompareOp::Ne), &["a", "b"]),
        "where" => (Op::Where, &["cond", "a", "b"]),
        "matmul_2d" | "matmul_broadcast_batch" => (matmul(false, false), &["a", "b"]),
        "matmul_transpose_a" => (matmul(true, false), &["a", "b"]),
        "matmul_transpose_b" => (matmul(false, true), &["a", "b"]),
        "matmul_transpose_both" => (matmul(true, true), &["a", "b"]),
        "softmax_axis0" => (Op::Softmax(Softmax { axis: 0 }), &["x"]),
        "softmax_last" | "softmax_middle" => (Op::Softmax(Softmax { axis: 1 }), &["x"]),
        "log_softmax_axis0" => (Op::LogSoftmax(LogSoftmax { axis: 0 }), &["x"]),
        "log_softmax_last" => (Op::LogSoftmax(LogSoftmax { axis: 1 }), &["x"]),
        "layer_norm" | "layer_norm_offset" => {
            let x = case.input("x");
            let (gain, bias) = (case.param("gain"), case.param("bias"));
            let axis = case.graph.node(x).ty.rank() - 1;
            let out = case.op(
                Op::LayerNorm(LayerNorm {
                    axis,
                    eps: Float(1e-5),
                }),
                &[x, gain, bias],
            );
            case.graph.outputs.push(("out".into(), out));
            return Some(case);
        }
        "sum_axis1" => (reduce(ReduceOp::Sum, &[1], false), &["x"]),
        "mean_axes02_keepdims" => (reduce(ReduceOp::Mean, &[0, 2], true), &["x"]),
        "max_axis2_keepdims" => (reduce(ReduceOp::Max, &[2], true), &["x"]),
        "sum_all" => (reduce(ReduceOp::Sum, &[0, 1, 2], false), &["x"]),
        "max_all_keepdims" => (reduce(ReduceOp::Max, &[0, 1, 2], true), &["x"]),
        "permute_0213" => (
            Op::Permute(Permute {
                perm: vec![0, 2, 1, 3],
            }),
            &["x"],
        ),
        "permute_3102" => (
            Op::Permute(Permute {
                perm: vec![3, 1, 0, 2],
            }),
            &["x"],
        ),
        "reshape" => (
            Op::Reshape(Reshape {
                shape: known(&[6, 4]),
            }),
            &["x"],
        ),
        "concat_axis0" => (Op::Concat(Concat { axis: 0 }), &["a", "b", "c"]),
        "concat_axis1" => (Op::Concat(Concat { axis: 1 }), &["a", "b"]),
        "slice_step2" => (slice(1, 1, 7, 2), &["x"]),
        "slice_prefix" => (slice(0, 0, 2, 1), &["x"]),
        "gather_axis0_i64" => (Op::Gather(Gather { axis: 0 }), &["table", "ids"]),
        "gather_axis1_i32" => (Op::Gather(Gather { axis: 1 }), &["table", "ids"]),
        "cast_f32_i64" => (Op::Cast(Cast { to: DType::I64 }), &["x"]),
        "cast_f32_i32" => (Op::Cast(Cast { to: DType::I32 }), &["x"]),
        "cast_f32_bool" => (Op::Cast(Cast { to: DType::Bool }), &["x"]),
        "cast_i64_f32" | "cast_bool_f32" => (Op::Cast(Cast { to: DType::F32 }), &["x"]),
        "gather_elements_axis1" => (
            Op::GatherElements(GatherElements { axis: 1 }),
            &["x", "ids"],
        ),
        "argmax_axis1" => (
            Op::ArgReduce(ArgReduce {
                op: ArgOp::Max,
                axis: 1,
                keepdims: false,
                last: false,
            }),
            &["x"],
        ),
        "argmin_axis2_keepdims" => (
            Op::ArgReduce(ArgReduce {
                op: ArgOp::Min,
                axis: 2,
                keepdims: true,
                last: false,
            }),
            &["x"],
        ),
        "topk_3_axis1" => (
            Op::TopK(TopK {
                k: 3,
                axis: 1,
                largest: true,
            }),
            &["x"],
        ),
        "cumsum_axis2_reverse" => (
            Op::CumSum(CumSum {
                axis: 2,
                exclusive: false,
                reverse: true,
            }),
            &["x"],
        ),
        "scatter_elements_axis1" => (
            Op::ScatterElements(ScatterElements {
                axis: 1,
                reduce: ScatterReduce::None,
            }),
            &["x", "ids", "updates"],
        ),
        unary => {
            let op = UnaryOp::from_name(unary.strip_prefix("unary_")?)?;
            (Op::Unary(op), &["x"])
        }
    };
    let ids: Vec<NodeId> = operands.iter().map(|file| case.input(file)).collect();
    let out = case.op(op, &ids);
    case.graph.outputs.push(("out".into(), out));
    Some(case)
}

/// Cases with their own test below.
const MODEL_CASES: [&str; 3] = ["mlp", "attention", "erf_grid"];

#[test]
fn every_single_op_fixture_matches_numpy() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("the fixture directory")
        .map(|entry| entry.expect("a directory entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !MODEL_CASES.contains(&name.as_str()))
        .collect();
    names.sort();
    assert!(names.len() >= 50, "only {} op fixtures found", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let Some(mut case) = single_op_case(name) else {
            failures.push(format!(
                "{name}: no graph for this fixture (new case in gen.py?)"
            ));
            continue;
        };
        let (_, out) = case.graph.outputs.pop().expect("the case's output");
        if let Some(problem) = mismatch(&case.run(out), &load(name, "out")) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

/// x @ w1 + b1 -> gelu -> @ w2 + b2 -> log_softmax, with `batch` symbolic.
fn mlp(fused: bool) -> Tensor {
    let mut case = Case::new("mlp");
    let x = case.input_declared("x", symbols(&["batch", "16"]));
    let (w1, b1, w2, b2) = (
        case.param("w1"),
        case.param("b1"),
        case.param("w2"),
        case.param("b2"),
    );
    let logits = if fused {
        let gelu_layer = LinearEpilogue {
            bias: true,
            activation: Some(UnaryOp::Gelu),
            residual: false,
        };
        let hidden = case.op(
            Op::FusedLinear(FusedLinear {
                transpose_b: false,
                epilogue: gelu_layer,
            }),
            &[x, w1, b1],
        );
        let plain_layer = LinearEpilogue {
            bias: true,
            activation: None,
            residual: false,
        };
        case.op(
            Op::FusedLinear(FusedLinear {
                transpose_b: false,
                epilogue: plain_layer,
            }),
            &[hidden, w2, b2],
        )
    } else {
        let matmul = Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: false,
        });
        let h = case.op(matmul.clone(), &[x, w1]);
        let h = case.op(Op::Binary(BinaryOp::Add), &[h, b1]);
        let h = case.op(Op::Unary(UnaryOp::Gelu), &[h]);
        let l = case.op(matmul, &[h, w2]);
        case.op(Op::Binary(BinaryOp::Add), &[l, b2])
    };
    let out = case.op(Op::LogSoftmax(LogSoftmax { axis: 1 }), &[logits]);
    case.run(out)
}

#[test]
fn mlp_matches_numpy_and_fusing_changes_no_bit() {
    let plain = mlp(false);
    assert_matches_numpy("mlp", &plain);
    assert_eq!(mlp(true), plain);
}

/// One post-norm self-attention block over symbolic `batch` and `seq`:
/// 4 heads of 4, an additive key mask from a bool padding mask, output
/// projection, residual, layer norm.
fn attention(fused_output_projection: bool) -> Tensor {
    let (heads, head_dim, hidden) = (4, 4, 16);
    let mut case = Case::new("attention");
    let x = case.input_declared("x", symbols(&["batch", "seq", "16"]));
    let mask = case.input_declared("mask", symbols(&["batch", "seq"]));
    let matmul = Op::MatMul(MatMul {
        transpose_a: false,
        transpose_b: false,
    });
    let add = Op::Binary(BinaryOp::Add);
    let split_heads = Op::Reshape(Reshape {
        shape: symbols(&["batch", "seq", &heads.to_string(), &head_dim.to_string()]),
    });
    let swap_middle = Op::Permute(Permute {
        perm: vec![0, 2, 1, 3],
    });

    let project = |case: &mut Case, which: &str| {
        let (w, b) = (
            case.param(&format!("w{which}")),
            case.param(&format!("b{which}")),
        );
        let y = case.op(matmul.clone(), &[x, w]);
        let y = case.op(add.clone(), &[y, b]);
        let y = case.op(split_heads.clone(), &[y]);
        case.op(swap_middle.clone(), &[y])
    };
    let (q, k, v) = (
        project(&mut case, "q"),
        project(&mut case, "k"),
        project(&mut case, "v"),
    );

    let scores = case.op(
        Op::MatMul(MatMul {
            transpose_a: false,
            transpose_b: true,
        }),
        &[q, k],
    );
    let scale = case.scalar(1.0 / (head_dim as f32).sqrt());
    let scores = case.op(Op::Binary(BinaryOp::Mul), &[scores, scale]);
    let (keep, drop) = (case.scalar(0.0), case.scalar(-1e9));
    let bias = case.op(Op::Where, &[mask, keep, drop]);
    let bias = case.op(
        Op::Reshape(Reshape {
            shape: symbols(&["batch", "1", "1", "seq"]),
        }),
        &[bias],
    );
    let scores = case.op(add.clone(), &[scores, bias]);
    let probs = case.op(Op::Softmax(Softmax { axis: 3 }), &[scores]);
    let context = case.op(matmul.clone(), &[probs, v]);
    let context = case.op(swap_middle, &[context]);
    let context = case.op(
        Op::Reshape(Reshape {
            shape: symbols(&["batch", "seq", &hidden.to_string()]),
        }),
        &[context],
    );

    let (wo, bo) = (case.param("wo"), case.param("bo"));
    let residual = if fused_output_projection {
        let epilogue = LinearEpilogue {
            bias: true,
            activation: None,
            residual: true,
        };
        case.op(
            Op::FusedLinear(FusedLinear {
                transpose_b: false,
                epilogue,
            }),
            &[context, wo, bo, x],
        )
    } else {
        let y = case.op(matmul, &[context, wo]);
        let y = case.op(add.clone(), &[y, bo]);
        case.op(add, &[y, x])
    };
    let (gain, beta) = (case.param("gain"), case.param("bias"));
    let out = case.op(
        Op::LayerNorm(LayerNorm {
            axis: 2,
            eps: Float(1e-5),
        }),
        &[residual, gain, beta],
    );
    case.run(out)
}

#[test]
fn attention_block_matches_numpy_and_fusing_changes_no_bit() {
    let plain = attention(false);
    assert_eq!(
        plain.shape(),
        &[2, 6, 16],
        "batch and seq bound from the inputs"
    );
    assert_matches_numpy("attention", &plain);
    assert_eq!(attention(true), plain);
}

#[test]
fn erf_is_within_1e_7_of_python_math_erf() {
    let points: Vec<f64> = read_npy("erf_grid", "x").into_vec().unwrap();
    let expected: Vec<f64> = read_npy("erf_grid", "out").into_vec().unwrap();
    assert!(points.len() > 1000);
    let mut worst: f64 = 0.0;
    for (&x, &e) in points.iter().zip(&expected) {
        let got = interp::erf(x);
        let relative = if e == 0.0 {
            got.abs()
        } else {
            (got - e).abs() / e.abs()
        };
        assert!(relative <= 1e-7, "erf({x}) = {got}, math.erf gives {e}");
        worst = worst.max(relative);
    }
    // The implementation is meant to be double-precision accurate; a
    // regression to a single-precision formula would still pass 1e-7.
    assert!(worst < 1e-13, "worst relative error {worst:e}");
}

/// Builds a model graph with seeded random weights, for the timing test.
struct RandomModel {
    graph: Graph,
    params: HashMap<String, Tensor>,
    rng: rand_chacha::ChaCha8Rng,
}

impl RandomModel {
    fn op(&mut self, op: Op, operands: &[NodeId]) -> NodeId {
        let types: Vec<TensorType> = operands
            .iter()
            .map(|&o| self.graph.node(o).ty.clone())
            .collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        let ty = shape_rules::infer(&op, &refs).unwrap_or_else(|e| panic!("{e}"));
        self.graph.add_node(op, operands, ty, None)
    }

    fn param(&mut self, name: String, value: Tensor) -> NodeId {
        let ty = TensorType::new(DType::F32, known(value.shape()));
        self.params.insert(name.clone(), value);
        self.graph
            .add_node(Op::Param(Param { name, init: None }), &[], ty, None)
    }

    /// A parameter drawn from N(0, std).
    fn random_param(&mut self, name: String, shape: &[usize], std: f32) -> NodeId {
        use rand_distr::Distribution;
        let normal = rand_distr::Normal::new(0.0f32, std).expect("a valid std");
        let n = shape.iter().product();
        let values = (0..n).map(|_| normal.sample(&mut self.rng)).collect();
        self.param(name, Tensor::f32(shape.to_vec(), values))
    }

    /// x @ w + b with w: [fan_in, fan_out] scaled to keep activations O(1).
    fn linear(&mut self, x: NodeId, name: &str, fan_in: usize, fan_out: usize) -> NodeId {
        let w = self.random_param(
            format!("{name}.w"),
            &[fan_in, fan_out],
            (1.0 / fan_in as f32).sqrt(),
        );
        let b = self.random_param(format!("{name}.b"), &[fan_out], 0.02);
        let y = self.op(
            Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            &[x, w],
        );
        self.op(Op::Binary(BinaryOp::Add), &[y, b])
    }

    /// Layer norm over the last of three axes, unit gain and zero bias.
    fn layer_norm(&mut self, x: NodeId, name: &str, width: usize) -> NodeId {
        let gain = self.param(
            format!("{name}.g"),
            Tensor::f32(vec![width], vec![1.0; width]),
        );
        let bias = self.param(
            format!("{name}.b"),
            Tensor::f32(vec![width], vec![0.0; width]),
        );
        self.op(
            Op::LayerNorm(LayerNorm {
                axis: 2,
                eps: Float(1e-12),
            }),
            &[x, gain, bias],
        )
    }
}

/// A 6-layer BERT-small encoder (hidden 384, 12 heads of 32, FFN 1536) with
/// random weights, built with symbolic `batch` and `seq`, run on batch 12 x
/// seq 128: the size the interpreter must handle in seconds (about 7 s of
/// CPU in the dev profile, almost all of it in matmul). Ignored by default
/// to keep the suite quick; run
/// `cargo test --test interp_numpy -- --ignored --nocapture` for the time.
#[test]
#[ignore]
fn bert_small_forward_pass() {
    use rand::SeedableRng;
    let (layers, hidden, heads, ffn, vocab) = (6usize, 384usize, 12usize, 1536usize, 1000usize);
    let (batch, seq) = (12usize, 128usize);
    let head_dim = hidden / heads;
    let mut model = RandomModel {
        graph: Graph::new("bert_small"),
        params: HashMap::new(),
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(7),
    };
    let ids_ty = TensorType::new(DType::I64, symbols(&["batch", "seq"]));
    let ids = model
        .graph
        .add_node(Op::Input(Input { name: "ids".into() }), &[], ids_ty, None);
    model.graph.inputs.push(ids);
    let table = model.random_param("embed".into(), &[vocab, hidden], 0.5);
    let mut x = model.op(Op::Gather(Gather { axis: 0 }), &[table, ids]);
    let split_heads = Op::Reshape(Reshape {
        shape: symbols(&["batch", "seq", &heads.to_string(), &head_dim.to_string()]),
    });
    let merge_heads = Op::Reshape(Reshape {
        shape: symbols(&["batch", "seq", &hidden.to_string()]),
    });
    let swap_middle = Op::Permute(Permute {
        perm: vec![0, 2, 1, 3],
    });
    for layer in 0..layers {
        let mut qkv = Vec::new();
        for which in ["q", "k", "v"] {
            let y = model.linear(x, &format!("l{layer}.{which}"), hidden, hidden);
            let y = model.op(split_heads.clone(), &[y]);
            qkv.push(model.op(swap_middle.clone(), &[y]));
        }
        let scores = model.op(
            Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: true,
            }),
            &[qkv[0], qkv[1]],
        );
        let scale = Op::Constant(Constant {
            value: Arc::new(Tensor::scalar(1.0 / (head_dim as f32).sqrt())),
        });
        let scale = model.op(scale, &[]);
        let scores = model.op(Op::Binary(BinaryOp::Mul), &[scores, scale]);
        let probs = model.op(Op::Softmax(Softmax { axis: 3 }), &[scores]);
        let context = model.op(
            Op::MatMul(MatMul {
                transpose_a: false,
                transpose_b: false,
            }),
            &[probs, qkv[2]],
        );
        let context = model.op(swap_middle.clone(), &[context]);
        let context = model.op(merge_heads.clone(), &[context]);
        let attended = model.linear(context, &format!("l{layer}.o"), hidden, hidden);
        let residual = model.op(Op::Binary(BinaryOp::Add), &[attended, x]);
        let normed = model.layer_norm(residual, &format!("l{layer}.ln1"), hidden);
        let up = model.linear(normed, &format!("l{layer}.up"), hidden, ffn);
        let up = model.op(Op::Unary(UnaryOp::Gelu), &[up]);
        let down = model.linear(up, &format!("l{layer}.down"), ffn, hidden);
        let residual = model.op(Op::Binary(BinaryOp::Add), &[down, normed]);
        x = model.layer_norm(residual, &format!("l{layer}.ln2"), hidden);
    }
    model.graph.outputs.push(("hidden".into(), x));

    let token_ids: Vec<i64> = (0..batch * seq)
        .map(|i| ((i * 7919) % vocab) as i64)
        .collect();
    let inputs: HashMap<String, Tensor> =
        [("ids".to_string(), Tensor::i64(vec![batch, seq], token_ids))].into();
    let start = std::time::Instant::now();
    let outputs = interp::run(&model.graph, &model.params, &inputs, &Bindings::new())
        .expect("BERT-small runs");
    let elapsed = start.elapsed();
    println!("BERT-small, {layers} layers, batch {batch} x seq {seq}: {elapsed:.2?}");

    let out = &outputs[0].1;
    assert_eq!(out.shape(), &[batch, seq, hidden]);
    // With unit gain and zero bias every row leaves layer norm with mean 0
    // and (biased) variance 1.
    for row in out.as_f32().expect("f32 output").chunks_exact(hidden) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / hidden as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / hidden as f64;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "row mean {mean}, variance {var}"
        );
    }
}
