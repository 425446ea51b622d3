//! The kernel candidates' shared conformance suite: every candidate runs
//! every sample node it takes, on every kernel tier the CPU runs (a tier's
//! candidates need its CPU features), and must match the interpreter.
//! Each candidate must take at least one sample on a tier that can use it,
//! so a new candidate without a sample here fails instead of going untested.

#[path = "common/random_values.rs"]
#[allow(dead_code)]
mod random_values;
#[path = "common/seeds.rs"]
mod seeds;

use std::collections::{HashMap, HashSet};

use lamina::codegen::{Isa, Target};
use lamina::interp;
use lamina::ir::builder::GraphBuilder;
use lamina::ir::ops::batch_norm::BatchNorm;
use lamina::ir::ops::conv::{Conv2d, FusedConv2d};
use lamina::ir::ops::pool::{Pool2d, PoolKind};
use lamina::ir::ops::window::{DataLayout, Padding2d, Window2d};
use lamina::ir::ops::{
    Cast, Concat, FusedElementwise, FusedLinear, Gather, LayerNorm, LogSoftmax, MatMul, Permute,
    Reduce, Slice, Softmax,
};
use lamina::ir::{
    BinaryOp, Bindings, CompareOp, DType, Dim, ElementwiseExpr, ExprStep, Float, Graph,
    LinearEpilogue, Op, ReduceOp, UnaryOp,
};
use lamina::runtime::exec::{candidate_names, candidate_runs_on, CompileOptions, CompiledModel};
use lamina::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One node over inputs `x0, x1, ...` (inputs listed as `Some(type)`,
/// weights as `None` with a value drawn here), as a one-node graph.
struct Sample {
    name: String,
    graph: Graph,
    params: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
}

/// An operand of a sample: a run-time input or a weight (param).
enum Operand {
    Input(DType, Vec<usize>),
    Weight(Vec<usize>),
}

fn sample(name: &str, op: Op, operands: Vec<Operand>, rng: &mut ChaCha8Rng) -> Sample {
    let mut b = GraphBuilder::new(name);
    let mut inputs = HashMap::new();
    let mut ids = Vec::new();
    for (i, operand) in operands.into_iter().enumerate() {
        let id = match operand {
            Operand::Input(dtype, shape) => {
                let ty = lamina::ir::TensorType::new(
                    dtype,
                    shape.iter().map(|&d| Dim::known(d)).collect(),
                );
                let value = random_values::random_tensor(rng, dtype, shape);
                inputs.insert(format!("x{i}"), value);
                b.input(&format!("x{i}"), ty)
            }
            Operand::Weight(shape) => {
                let value = random_values::random_tensor(rng, DType::F32, shape);
                b.param(&format!("w{i}"), value)
            }
        };
        ids.push(id);
    }
    let y = b.op(op, &ids);
    b.output("y", y);
    let (graph, params) = b.finish();
    Sample {
        name: name.to_string(),
        graph,
        params,
        inputs,
    }
}

fn f32_in(shape: &[usize]) -> Operand {
    Operand::Input(DType::F32, shape.to_vec())
}

fn weight(shape: &[usize]) -> Operand {
    Operand::Weight(shape.to_vec())
}

/// One sample per kind of node the candidates distinguish.
fn samples() -> Vec<Sample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seeds::run_seed());
    let r = &mut rng;
    let matmul = |transpose_a, transpose_b| {
        Op::MatMul(MatMul {
            transpose_a,
            transpose_b,
        })
    };
    let mut all = vec![
        sample(
            "matmul_weight",
            matmul(false, false),
            vec![f32_in(&[5, 7]), weight(&[7, 9])],
            r,
        ),
        sample(
            "matmul_activation_b",
            matmul(false, true),
            vec![f32_in(&[6, 13]), f32_in(&[35, 13])],
            r,
        ),
        sample(
            "matmul_transposed_a",
            matmul(true, false),
            vec![f32_in(&[7, 5]), weight(&[7, 33])],
            r,
        ),
        sample(
            "matmul_batched_a",
            matmul(false, false),
            vec![f32_in(&[2, 3, 7]), weight(&[7, 17])],
            r,
        ),
        sample(
            "matmul_batched_both",
            matmul(false, true),
            vec![f32_in(&[2, 4, 8]), f32_in(&[2, 5, 8])],
            r,
        ),
        sample(
            "fused_linear",
            Op::FusedLinear(FusedLinear {
                transpose_b: false,
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::Gelu),
                    residual: true,
                },
            }),
            vec![
                f32_in(&[3, 16]),
                weight(&[16, 20]),
                weight(&[20]),
                f32_in(&[3, 20]),
            ],
            r,
        ),
        sample(
            "fused_linear_relu6",
            Op::FusedLinear(FusedLinear {
                transpose_b: true,
                epilogue: LinearEpilogue {
                    bias: false,
                    activation: Some(UnaryOp::Relu6),
                    residual: false,
                },
            }),
            vec![f32_in(&[13, 9]), weight(&[35, 9])],
            r,
        ),
        sample(
            "fused_linear_hard_sigmoid_residual",
            Op::FusedLinear(FusedLinear {
                transpose_b: false,
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::HardSigmoid),
                    residual: true,
                },
            }),
            vec![
                f32_in(&[5, 16]),
                weight(&[16, 33]),
                weight(&[33]),
                f32_in(&[5, 33]),
            ],
            r,
        ),
        sample(
            "add_broadcast",
            Op::Binary(BinaryOp::Add),
            vec![f32_in(&[4, 6]), f32_in(&[6])],
            r,
        ),
        sample(
            "maximum_column",
            Op::Binary(BinaryOp::Max),
            vec![f32_in(&[4, 6]), f32_in(&[4, 1])],
            r,
        ),
        sample(
            "where",
            Op::Where,
            vec![
                Operand::Input(DType::Bool, vec![3, 5]),
                f32_in(&[3, 5]),
                f32_in(&[5]),
            ],
            r,
        ),
        sample(
            "fused_elementwise",
            Op::FusedElementwise(FusedElementwise {
                expr: ElementwiseExpr {
                    steps: vec![
                        ExprStep::Input(0),
                        ExprStep::Input(1),
                        ExprStep::Binary(BinaryOp::Mul, 0, 1),
                        ExprStep::Const(Float(0.5)),
                        ExprStep::Compare(CompareOp::Gt, 2, 3),
                        ExprStep::Unary(UnaryOp::Tanh, 2),
                        ExprStep::Where(4, 5, 0),
                    ],
                },
            }),
            vec![f32_in(&[2, 3, 8]), f32_in(&[8])],
            r,
        ),
        sample(
            "softmax_last",
            Op::Softmax(Softmax { axis: 1 }),
            vec![f32_in(&[3, 10])],
            r,
        ),
        sample(
            "softmax_first",
            Op::Softmax(Softmax { axis: 0 }),
            vec![f32_in(&[3, 10])],
            r,
        ),
        sample(
            "log_softmax_last",
            Op::LogSoftmax(LogSoftmax { axis: 2 }),
            vec![f32_in(&[2, 3, 9])],
            r,
        ),
        sample(
            "layer_norm",
            Op::LayerNorm(LayerNorm {
                axis: 1,
                eps: Float(1e-5),
            }),
            vec![f32_in(&[4, 12]), weight(&[12]), weight(&[12])],
            r,
        ),
        sample(
            "permute",
            Op::Permute(Permute {
                perm: vec![2, 0, 1],
            }),
            vec![f32_in(&[2, 3, 4])],
            r,
        ),
        sample(
            "slice_step",
            Op::Slice(Slice {
                axis: 1,
                start: 1,
                end: Dim::known(8),
                step: 3,
            }),
            vec![f32_in(&[3, 9])],
            r,
        ),
        sample(
            "concat",
            Op::Concat(Concat { axis: 1 }),
            vec![f32_in(&[2, 3]), f32_in(&[2, 5])],
            r,
        ),
        sample(
            "gather_rows",
            Op::Gather(Gather { axis: 0 }),
            vec![weight(&[4, 6]), Operand::Input(DType::I64, vec![2, 3])],
            r,
        ),
        sample(
            "cast_i64_f32",
            Op::Cast(Cast { to: DType::F32 }),
            vec![Operand::Input(DType::I64, vec![3, 4])],
            r,
        ),
    ];
    all.extend(vision_samples(r));
    for (op, axes) in [
        (ReduceOp::Sum, vec![1]),
        (ReduceOp::Mean, vec![0]),
        (ReduceOp::Max, vec![0, 1]),
    ] {
        let name = format!("{}_{axes:?}", op.name());
        let reduce = Op::Reduce(Reduce {
            op,
            axes,
            keepdims: false,
        });
        all.push(sample(&name, reduce, vec![f32_in(&[5, 11])], r));
    }
    for u in UnaryOp::ALL {
        let name = format!("unary_{}", u.name());
        // Positive operands keep log, sqrt and rsqrt in their domain.
        let x = random_values::random_tensor(r, DType::F32, vec![3, 7]);
        let positive = Tensor::f32(
            vec![3, 7],
            x.as_f32().unwrap().iter().map(|v| v.abs() + 0.1).collect(),
        );
        let mut s = sample(&name, Op::Unary(u), vec![f32_in(&[3, 7])], r);
        s.inputs.insert("x0".into(), positive);
        all.push(s);
    }
    all
}

fn window(stride: [usize; 2], dilation: [usize; 2], padding: Padding2d) -> Window2d {
    Window2d {
        stride,
        dilation,
        padding,
        layout: DataLayout::Nchw,
    }
}

fn explicit(top: usize, left: usize, bottom: usize, right: usize) -> Padding2d {
    Padding2d::Explicit {
        top,
        left,
        bottom,
        right,
    }
}

/// Convolutions (pointwise, strided "same", dilated and grouped,
/// depthwise, a channel multiplier) and pooling: the GEMM convolution and
/// the window kernel each take several. `tests/conv_kernels.rs` has the
/// generated shapes.
fn vision_samples(r: &mut ChaCha8Rng) -> Vec<Sample> {
    let conv = |window, groups| Op::Conv2d(Conv2d { window, groups });
    // The variance (an input here) must be positive.
    let mut batch_norm = sample(
        "batch_norm",
        Op::BatchNorm(BatchNorm { eps: Float(1e-3) }),
        vec![
            f32_in(&[2, 3, 4, 5]),
            weight(&[3]),
            f32_in(&[3]),
            weight(&[3]),
            weight(&[3]),
        ],
        r,
    );
    batch_norm
        .inputs
        .insert("x2".into(), Tensor::f32(vec![3], vec![0.5, 1.7, 0.01]));
    let pool = |kind, kernel, window| {
        Op::Pool2d(Pool2d {
            kind,
            kernel,
            window,
        })
    };
    vec![
        batch_norm,
        sample(
            "conv_pointwise_bias",
            conv(window([1, 1], [1, 1], explicit(0, 0, 0, 0)), 1),
            vec![f32_in(&[2, 8, 5, 7]), weight(&[12, 8, 1, 1]), weight(&[12])],
            r,
        ),
        sample(
            "conv_3x3_same_stride2",
            conv(window([2, 2], [1, 1], Padding2d::Same), 1),
            vec![f32_in(&[1, 3, 9, 11]), weight(&[5, 3, 3, 3])],
            r,
        ),
        sample(
            "conv_dilated_grouped",
            conv(window([1, 2], [2, 1], explicit(1, 0, 2, 1)), 2),
            vec![f32_in(&[1, 4, 8, 9]), weight(&[6, 2, 3, 2]), weight(&[6])],
            r,
        ),
        sample(
            "conv_channel_multiplier",
            conv(window([1, 1], [1, 1], explicit(1, 1, 1, 1)), 3),
            vec![f32_in(&[1, 3, 6, 5]), weight(&[6, 1, 3, 3])],
            r,
        ),
        sample(
            "conv_depthwise_bias",
            conv(window([1, 1], [1, 1], Padding2d::Same), 6),
            vec![f32_in(&[2, 6, 7, 8]), weight(&[6, 1, 3, 3]), weight(&[6])],
            r,
        ),
        sample(
            "conv_depthwise_stride2_dilated",
            conv(window([2, 2], [2, 1], Padding2d::Same), 5),
            vec![f32_in(&[1, 5, 11, 10]), weight(&[5, 1, 5, 5])],
            r,
        ),
        sample(
            "fused_conv_relu6_residual",
            Op::FusedConv2d(FusedConv2d {
                conv: Conv2d {
                    window: window([1, 1], [1, 1], explicit(0, 0, 0, 0)),
                    groups: 1,
                },
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::Relu6),
                    residual: true,
                },
            }),
            vec![
                f32_in(&[1, 6, 5, 5]),
                weight(&[8, 6, 1, 1]),
                weight(&[8]),
                f32_in(&[1, 8, 5, 5]),
            ],
            r,
        ),
        sample(
            "fused_conv_sigmoid",
            Op::FusedConv2d(FusedConv2d {
                conv: Conv2d {
                    window: window([1, 1], [1, 1], Padding2d::Same),
                    groups: 1,
                },
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::Sigmoid),
                    residual: false,
                },
            }),
            vec![f32_in(&[1, 3, 6, 7]), weight(&[4, 3, 3, 3]), weight(&[4])],
            r,
        ),
        sample(
            "fused_depthwise_hard_swish_residual",
            Op::FusedConv2d(FusedConv2d {
                conv: Conv2d {
                    window: window([2, 2], [1, 1], Padding2d::Same),
                    groups: 4,
                },
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::HardSwish),
                    residual: true,
                },
            }),
            vec![
                f32_in(&[1, 4, 7, 6]),
                weight(&[4, 1, 3, 3]),
                weight(&[4]),
                f32_in(&[1, 4, 4, 3]),
            ],
            r,
        ),
        sample(
            "max_pool_padded",
            pool(
                PoolKind::Max,
                [3, 3],
                window([2, 2], [1, 1], explicit(1, 1, 1, 1)),
            ),
            vec![f32_in(&[2, 3, 9, 8])],
            r,
        ),
        sample(
            "avg_pool_same",
            pool(
                PoolKind::Avg {
                    count_include_pad: false,
                },
                [3, 2],
                window([2, 1], [1, 1], Padding2d::Same),
            ),
            vec![f32_in(&[1, 4, 7, 6])],
            r,
        ),
        sample(
            "avg_pool_counting_padding",
            pool(
                PoolKind::Avg {
                    count_include_pad: true,
                },
                [2, 3],
                window([1, 2], [2, 1], explicit(2, 1, 0, 2)),
            ),
            vec![f32_in(&[1, 2, 6, 9])],
            r,
        ),
        // NHWC: the channels-last window kernel (17 channels: a full
        // vector and tails on every tier).
        sample(
            "conv_depthwise_nhwc_bias",
            conv(nhwc(window([1, 1], [1, 1], Padding2d::Same)), 17),
            vec![
                f32_in(&[2, 7, 9, 17]),
                weight(&[17, 1, 3, 3]),
                weight(&[17]),
            ],
            r,
        ),
        sample(
            "conv_depthwise_nhwc_weights_input",
            conv(nhwc(window([2, 2], [2, 1], explicit(1, 2, 0, 1))), 5),
            vec![f32_in(&[1, 11, 10, 5]), f32_in(&[5, 1, 5, 3])],
            r,
        ),
        sample(
            "fused_depthwise_nhwc_relu6_residual",
            Op::FusedConv2d(FusedConv2d {
                conv: Conv2d {
                    window: nhwc(window([1, 1], [1, 1], Padding2d::Same)),
                    groups: 24,
                },
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::Relu6),
                    residual: true,
                },
            }),
            vec![
                f32_in(&[1, 6, 5, 24]),
                weight(&[24, 1, 5, 5]),
                weight(&[24]),
                f32_in(&[1, 6, 5, 24]),
            ],
            r,
        ),
        // NHWC convolutions that are not depthwise: GEMMs with the output
        // pixels as rows (in place when pointwise, else gathered patches).
        sample(
            "conv_pointwise_nhwc_bias",
            conv(nhwc(window([1, 1], [1, 1], explicit(0, 0, 0, 0))), 1),
            vec![
                f32_in(&[2, 5, 7, 24]),
                weight(&[40, 24, 1, 1]),
                weight(&[40]),
            ],
            r,
        ),
        sample(
            "conv_3x3_nhwc_same_stride2",
            conv(nhwc(window([2, 2], [1, 1], Padding2d::Same)), 1),
            vec![f32_in(&[1, 9, 11, 3]), weight(&[16, 3, 3, 3])],
            r,
        ),
        sample(
            "conv_nhwc_channel_multiplier",
            conv(nhwc(window([1, 1], [1, 1], explicit(1, 1, 1, 1))), 3),
            vec![f32_in(&[1, 6, 5, 3]), weight(&[6, 1, 3, 3])],
            r,
        ),
        sample(
            "fused_conv_nhwc_dilated_grouped_hard_swish_residual",
            Op::FusedConv2d(FusedConv2d {
                conv: Conv2d {
                    window: nhwc(window([1, 2], [2, 1], explicit(1, 0, 2, 1))),
                    groups: 2,
                },
                epilogue: LinearEpilogue {
                    bias: true,
                    activation: Some(UnaryOp::HardSwish),
                    residual: true,
                },
            }),
            vec![
                f32_in(&[1, 8, 9, 4]),
                weight(&[6, 2, 3, 2]),
                weight(&[6]),
                f32_in(&[1, 7, 5, 6]),
            ],
            r,
        ),
        sample(
            "max_pool_nhwc_padded",
            pool(
                PoolKind::Max,
                [3, 3],
                nhwc(window([2, 2], [1, 1], explicit(1, 1, 1, 1))),
            ),
            vec![f32_in(&[2, 9, 8, 19])],
            r,
        ),
        sample(
            "avg_pool_nhwc_counting_padding",
            pool(
                PoolKind::Avg {
                    count_include_pad: true,
                },
                [2, 3],
                nhwc(window([1, 2], [2, 1], explicit(2, 1, 0, 2))),
            ),
            vec![f32_in(&[1, 6, 9, 3])],
            r,
        ),
    ]
}

fn nhwc(window: Window2d) -> Window2d {
    Window2d {
        layout: DataLayout::Nhwc,
        ..window
    }
}

fn runnable_tiers() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|&isa| Target::detected().with_isa(isa).is_ok())
        .collect()
}

fn close(actual: &Tensor, expected: &Tensor) -> Result<(), String> {
    if actual.shape() != expected.shape() || actual.dtype() != expected.dtype() {
        return Err(format!(
            "{:?}{:?} vs {:?}{:?}",
            actual.dtype(),
            actual.shape(),
            expected.dtype(),
            expected.shape()
        ));
    }
    for (i, (a, e)) in actual
        .to_f64_vec()
        .into_iter()
        .zip(expected.to_f64_vec())
        .enumerate()
    {
        let ok = (a.is_nan() && e.is_nan()) || (a - e).abs() <= 1e-5 + 1e-5 * e.abs();
        if !ok {
            return Err(format!("element {i}: {a} vs {e}"));
        }
    }
    Ok(())
}

#[test]
fn every_candidate_matches_the_interpreter_on_every_node_it_takes() {
    let samples = samples();
    let tiers = runnable_tiers();
    let mut tested: HashSet<&'static str> = HashSet::new();
    let mut failures = Vec::new();
    for name in candidate_names() {
        for &isa in &tiers {
            if !candidate_runs_on(name, isa) {
                continue;
            }
            for s in &samples {
                let options = CompileOptions {
                    threads: 1,
                    isa: Some(isa),
                };
                let mut model = CompiledModel::compile(&s.graph, &s.params, options)
                    .unwrap_or_else(|e| panic!("{}: {e}", s.name));
                model.set_only_kernel(Some(name));
                let given: Vec<&Tensor> =
                    model.input_names().iter().map(|n| &s.inputs[*n]).collect();
                let info = model
                    .prepare(&given, &Bindings::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", s.name));
                if info.step_kernels != [name] {
                    continue;
                }
                tested.insert(name);
                let ours = model
                    .run(&s.inputs)
                    .unwrap_or_else(|e| panic!("{name} on {isa}, {}: {e}", s.name));
                let oracle = interp::run(&s.graph, &s.params, &s.inputs, &Bindings::new())
                    .unwrap_or_else(|e| panic!("interpreter, {}: {e}", s.name));
                if let Err(why) = close(&ours[0].1, &oracle[0].1) {
                    failures.push(format!("{name} on {isa}, {}: {why}", s.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let untested: Vec<&str> = candidate_names()
        .into_iter()
        .filter(|n| tiers.iter().any(|&isa| candidate_runs_on(n, isa)) && !tested.contains(n))
        .collect();
    assert!(
        untested.is_empty(),
        "candidates that took no sample (add one): {untested:?}"
    );
}

#[test]
fn the_cheapest_candidate_is_chosen_and_the_interpreter_only_when_nothing_fits() {
    let samples = samples();
    let isa = Target::detected().isa;
    let chosen = |sample: &str| {
        let s = samples.iter().find(|s| s.name == sample).unwrap();
        let model = CompiledModel::compile(
            &s.graph,
            &s.params,
            CompileOptions {
                threads: 1,
                isa: Some(isa),
            },
        )
        .unwrap();
        let given: Vec<&Tensor> = model.input_names().iter().map(|n| &s.inputs[*n]).collect();
        model
            .prepare(&given, &Bindings::new())
            .unwrap()
            .step_kernels
    };
    let gemm = match isa {
        Isa::Avx512 => "gemm_avx512",
        Isa::Avx2 => "gemm_avx2",
        Isa::Baseline => "gemm_f32x4",
    };
    assert_eq!(chosen("matmul_weight"), [gemm]);
    assert_eq!(chosen("matmul_batched_both"), ["batched_gemm"]);
    assert_eq!(chosen("fused_linear_relu6"), [gemm]);
    assert_eq!(chosen("fused_linear_hard_sigmoid_residual"), [gemm]);
    // A reduction over the last axis alone: the row kernel beats the strided walk.
    assert_eq!(chosen("sum_[1]"), ["row_f32x4"]);
    assert_eq!(chosen("mean_[0]"), ["reduce_strided"]);
    assert_eq!(chosen("softmax_first"), ["interpreter"]);
    assert_eq!(chosen("unary_sin"), ["interpreter"]);
    assert_eq!(chosen("unary_exp"), ["elementwise_f32x4"]);
    assert_eq!(chosen("conv_pointwise_bias"), ["conv_gemm"]);
    assert_eq!(chosen("conv_channel_multiplier"), ["conv_gemm"]);
    assert_eq!(chosen("conv_depthwise_bias"), ["window2d"]);
    assert_eq!(chosen("max_pool_padded"), ["window2d"]);
    assert_eq!(chosen("batch_norm"), ["batch_norm_affine"]);
    assert_eq!(chosen("fused_conv_relu6_residual"), ["conv_gemm"]);
    assert_eq!(chosen("fused_depthwise_hard_swish_residual"), ["window2d"]);
    for nhwc in [
        "conv_depthwise_nhwc_bias",
        "conv_depthwise_nhwc_weights_input",
        "fused_depthwise_nhwc_relu6_residual",
        "max_pool_nhwc_padded",
        "avg_pool_nhwc_counting_padding",
    ] {
        assert_eq!(chosen(nhwc), ["window2d_nhwc"], "{nhwc}");
    }
    for nhwc in [
        "conv_pointwise_nhwc_bias",
        "conv_3x3_nhwc_same_stride2",
        "conv_nhwc_channel_multiplier",
        "fused_conv_nhwc_dilated_grouped_hard_swish_residual",
    ] {
        assert_eq!(chosen(nhwc), ["conv_nhwc_gemm"], "{nhwc}");
    }
}
