//! The convolution and pooling kernels (`conv_gemm`, `window2d`) on
//! generated shapes: odd sizes, strides 1-3, dilation, groups (depthwise,
//! channel multipliers, plain groups), every padding form (explicit
//! asymmetric sides, "valid", TensorFlow's "same"), with and without a
//! bias; on every tier the CPU runs, against the interpreter, and bit for
//! bit the same on 1 and 2 threads; half the convolutions are
//! `fused_conv2d` with an activation (in the GEMM epilogue or the pass
//! after it) and a residual. Each case also checks that the
//! intended kernel took the node (not the interpreter fallback).

#[path = "common/random_values.rs"]
#[allow(dead_code)]
mod random_values;
#[path = "common/seeds.rs"]
mod seeds;

use std::collections::HashMap;

use lamina::codegen::{Isa, Target};
use lamina::interp;
use lamina::ir::builder::GraphBuilder;
use lamina::ir::ops::conv::{Conv2d, FusedConv2d};
use lamina::ir::ops::pool::{Pool2d, PoolKind};
use lamina::ir::ops::window::{DataLayout, Padding2d, Window2d};
use lamina::ir::{Bindings, DType, Dim, Graph, LinearEpilogue, Op, TensorType, UnaryOp};
use lamina::runtime::exec::{CompileOptions, CompiledModel};
use lamina::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    what: String,
    graph: Graph,
    params: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
    kernel: &'static str,
    /// Products summed per output (the tolerance grows with it).
    depth: usize,
}

fn padding(rng: &mut ChaCha8Rng) -> Padding2d {
    match rng.random_range(0..4) {
        0 => Padding2d::Same,
        1 => Padding2d::Explicit {
            top: 0,
            left: 0,
            bottom: 0,
            right: 0,
        },
        _ => Padding2d::Explicit {
            top: rng.random_range(0..3),
            left: rng.random_range(0..3),
            bottom: rng.random_range(0..3),
            right: rng.random_range(0..3),
        },
    }
}

fn window(rng: &mut ChaCha8Rng) -> Window2d {
    Window2d {
        stride: [rng.random_range(1..4), rng.random_range(1..4)],
        dilation: [rng.random_range(1..3), rng.random_range(1..3)],
        padding: padding(rng),
        layout: DataLayout::Nchw,
    }
}

fn f32_type(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.iter().map(|&d| Dim::known(d)).collect())
}

/// A graph of one node `op(x, weights..., [residual])`; with `fused`, the
/// convolution becomes a `fused_conv2d` with that epilogue (its residual
/// an input of the output's shape). `None` when the window does not fit
/// the padded input.
fn one_node(
    op: Op,
    x: Vec<usize>,
    weights: Vec<Vec<usize>>,
    fused: Option<(Option<UnaryOp>, bool)>,
    rng: &mut ChaCha8Rng,
) -> Option<(Graph, HashMap<String, Tensor>, HashMap<String, Tensor>)> {
    let mut b = GraphBuilder::new("case");
    let mut ids = vec![b.input("x", f32_type(&x))];
    let mut inputs = HashMap::from([(
        "x".to_string(),
        random_values::random_tensor(rng, DType::F32, x.clone()),
    )]);
    let bias = weights.len() == 2;
    for (i, shape) in weights.into_iter().enumerate() {
        let value = random_values::random_tensor(rng, DType::F32, shape);
        ids.push(b.param(&format!("w{i}"), value));
    }
    let op = match (op, fused) {
        (Op::Conv2d(conv), Some((activation, residual))) => {
            // The output's shape, from the plain convolution in a scratch graph.
            let mut scratch = GraphBuilder::new("shape");
            let mut scratch_ids = vec![scratch.input("x", f32_type(&x))];
            for &id in &ids[1..] {
                let ty = b.graph.node(id).ty.clone();
                scratch_ids.push(scratch.param_decl(&format!("p{}", scratch_ids.len()), ty));
            }
            let y = scratch
                .try_op(Op::Conv2d(conv.clone()), &scratch_ids)
                .ok()?;
            let out = scratch.graph.node(y).ty.known_shape().unwrap();
            if residual {
                ids.push(b.input("r", f32_type(&out)));
                inputs.insert(
                    "r".into(),
                    random_values::random_tensor(rng, DType::F32, out),
                );
            }
            Op::FusedConv2d(FusedConv2d {
                conv,
                epilogue: LinearEpilogue {
                    bias,
                    activation,
                    residual,
                },
            })
        }
        (op, _) => op,
    };
    let y = b.try_op(op, &ids).ok()?;
    b.output("y", y);
    let (graph, params) = b.finish();
    Some((graph, params, inputs))
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seeds::run_seed() ^ 0xc0);
    let r = &mut rng;
    let mut cases = Vec::new();
    while cases.len() < 60 {
        let kind = cases.len() % 4;
        let batch = r.random_range(1..3);
        let (h, w) = (r.random_range(1..12), r.random_range(1..12));
        let win = window(r);
        let (kh, kw) = (r.random_range(1..4), r.random_range(1..4));
        let (op, x, weights, kernel, depth, what) = match kind {
            // Plain and grouped convolutions (groups of 1-3 channels, 1-3 outputs each).
            0 | 1 => {
                let groups = if kind == 0 { 1 } else { r.random_range(2..4) };
                let (cg, og) = (r.random_range(1..4), r.random_range(1..4));
                if cg == 1 && og == 1 && groups > 1 {
                    continue;
                }
                let bias = r.random_bool(0.5);
                let mut weights = vec![vec![groups * og, cg, kh, kw]];
                if bias {
                    weights.push(vec![groups * og]);
                }
                let what = format!("conv groups {groups} x ({cg} -> {og}) k {kh}x{kw} bias {bias}");
                (
                    Op::Conv2d(Conv2d {
                        window: win,
                        groups,
                    }),
                    vec![batch, groups * cg, h, w],
                    weights,
                    // One input and one output channel per group is depthwise.
                    if cg == 1 && og == 1 {
                        "window2d"
                    } else {
                        "conv_gemm"
                    },
                    cg * kh * kw,
                    what,
                )
            }
            2 => {
                let c = r.random_range(1..6);
                let bias = r.random_bool(0.5);
                let mut weights = vec![vec![c, 1, kh, kw]];
                if bias {
                    weights.push(vec![c]);
                }
                (
                    Op::Conv2d(Conv2d {
                        window: win,
                        groups: c,
                    }),
                    vec![batch, c, h, w],
                    weights,
                    "window2d",
                    kh * kw,
                    format!("depthwise {c} k {kh}x{kw} bias {bias}"),
                )
            }
            _ => {
                let kind = match r.random_range(0..3) {
                    0 => PoolKind::Max,
                    1 => PoolKind::Avg {
                        count_include_pad: false,
                    },
                    _ => PoolKind::Avg {
                        count_include_pad: true,
                    },
                };
                (
                    Op::Pool2d(Pool2d {
                        kind,
                        kernel: [kh, kw],
                        window: win,
                    }),
                    vec![batch, r.random_range(1..4), h, w],
                    vec![],
                    "window2d",
                    kh * kw,
                    format!("{kind:?} k {kh}x{kw}"),
                )
            }
        };
        // Convolutions: half of them fused with an activation and a residual.
        let fused = (kind < 3 && r.random_bool(0.5)).then(|| {
            let activation = [
                None,
                Some(UnaryOp::Relu),
                Some(UnaryOp::Relu6),
                Some(UnaryOp::HardSigmoid),
                Some(UnaryOp::HardSwish),
                Some(UnaryOp::Sigmoid),
                Some(UnaryOp::Tanh),
            ][r.random_range(0..7)];
            (activation, r.random_bool(0.5))
        });
        let what = format!("{what}, x {x:?}, {win:?}, epilogue {fused:?}");
        let Some((graph, params, inputs)) = one_node(op, x, weights, fused, r) else {
            continue;
        };
        cases.push(Case {
            what,
            graph,
            params,
            inputs,
            kernel,
            depth,
        });
    }
    cases
}

fn run(case: &Case, isa: Isa, threads: usize) -> (Vec<&'static str>, Tensor) {
    let model = CompiledModel::compile(
        &case.graph,
        &case.params,
        CompileOptions {
            threads,
            isa: Some(isa),
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
    let given: Vec<&Tensor> = model
        .input_names()
        .iter()
        .map(|n| &case.inputs[*n])
        .collect();
    let info = model.prepare(&given, &Bindings::new()).unwrap();
    let out = model
        .run(&case.inputs)
        .unwrap_or_else(|e| panic!("{} on {isa}: {e}", case.what));
    (info.step_kernels, out[0].1.clone())
}

#[test]
fn generated_convolutions_and_pools_match_the_interpreter_on_every_tier_and_thread_count() {
    let tiers: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&isa| Target::detected().with_isa(isa).is_ok())
        .collect();
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let oracle = interp::run(&case.graph, &case.params, &case.inputs, &Bindings::new())
            .unwrap_or_else(|e| panic!("interpreter, {}: {e}", case.what));
        let expected = oracle[0].1.as_f32().unwrap();
        // f32 sums of `depth` products of values in [-1, 1).
        let tolerance = 1e-6 * (case.depth as f32 + 4.0);
        for &isa in &tiers {
            let (kernels, one) = run(case, isa, 1);
            if kernels != [case.kernel] {
                failures.push(format!("{} on {isa}: planned {kernels:?}", case.what));
                continue;
            }
            let (_, two) = run(case, isa, 2);
            let (one, two) = (one.as_f32().unwrap(), two.as_f32().unwrap());
            if one.iter().zip(two).any(|(a, b)| a.to_bits() != b.to_bits()) {
                failures.push(format!("{} on {isa}: 1 and 2 threads differ", case.what));
            }
            for (i, (a, e)) in one.iter().zip(expected).enumerate() {
                let ok = (a.is_nan() && e.is_nan())
                    || a == e
                    || (a - e).abs() <= tolerance * (1.0 + e.abs());
                if !ok {
                    failures.push(format!("{} on {isa}: element {i}: {a} vs {e}", case.what));
                    break;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases (seed {}):\n{}",
        failures.len(),
        cases.len(),
        seeds::run_seed(),
        failures.join("\n")
    );
}

// ---- NHWC depthwise convolution and pooling (`codegen::window_nhwc`) ------

/// `[N, C, H, W]` -> `[N, H, W, C]`.
fn nchw_to_nhwc(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * h + y) * w + xx) * c + ch] = x[((b * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    out
}

fn shape4(t: &Tensor) -> [usize; 4] {
    <[usize; 4]>::try_from(t.shape()).unwrap()
}

/// A generated NCHW case run by the interpreter, with the input, output and
/// residual transposed to NHWC for the NHWC kernels; `None` when the shape
/// does not fit its window.
struct NhwcOracle {
    params: HashMap<String, Tensor>,
    expected: Vec<f32>,
    out_nchw: [usize; 4],
    x: Vec<f32>,
    residual: Option<Vec<f32>>,
}

fn nhwc_oracle(
    op: &Op,
    x_shape: &[usize],
    weights: &[Vec<usize>],
    fused: Option<(Option<UnaryOp>, bool)>,
    rng: &mut ChaCha8Rng,
    what: &str,
) -> Option<NhwcOracle> {
    let (graph, params, inputs) =
        one_node(op.clone(), x_shape.to_vec(), weights.to_vec(), fused, rng)?;
    let oracle = interp::run(&graph, &params, &inputs, &Bindings::new())
        .unwrap_or_else(|e| panic!("interpreter, {what}: {e}"));
    let out_nchw = shape4(&oracle[0].1);
    let x_nchw = <[usize; 4]>::try_from(x_shape).unwrap();
    Some(NhwcOracle {
        expected: nchw_to_nhwc(oracle[0].1.as_f32().unwrap(), out_nchw),
        out_nchw,
        x: nchw_to_nhwc(inputs["x"].as_f32().unwrap(), x_nchw),
        residual: inputs
            .get("r")
            .map(|r| nchw_to_nhwc(r.as_f32().unwrap(), out_nchw)),
        params,
    })
}

/// A case of the NHWC kernels: the op, its NCHW input's shape, its
/// parameters' shapes (weights, then the bias if any), and the activation
/// fused into it with whether a residual is added.
type KernelCase = (
    Op,
    Vec<usize>,
    Vec<Vec<usize>>,
    Option<(Option<UnaryOp>, bool)>,
);

/// The shapes the NHWC kernels are checked on: channels 1, 3, 17, 64, 1152
/// (full vectors of every tier, tails of every width) times planes 1x1,
/// 7x7, 13x9 and 112x112 (all but the 1152-channel 112x112 one), each
/// with a depthwise convolution, a max and an average pool; windows of 1
/// to 5 taps, strides 1 and 2, dilation 1 and 2, every padding form; the
/// convolutions through every activation, with and without bias and
/// residual.
fn nhwc_cases() -> Vec<KernelCase> {
    let activations = [
        None,
        Some(UnaryOp::Relu),
        Some(UnaryOp::Relu6),
        Some(UnaryOp::HardSigmoid),
        Some(UnaryOp::HardSwish),
        Some(UnaryOp::Sigmoid),
        Some(UnaryOp::Tanh),
    ];
    let kernels = [[3, 3], [5, 5], [1, 1], [2, 3], [3, 3], [5, 5]];
    let paddings = [
        Padding2d::Same,
        Padding2d::Explicit {
            top: 0,
            left: 0,
            bottom: 0,
            right: 0,
        },
        Padding2d::Explicit {
            top: 1,
            left: 2,
            bottom: 0,
            right: 1,
        },
        Padding2d::Same,
    ];
    let mut cases = Vec::new();
    let mut i = 0usize;
    for c in [1usize, 3, 17, 64, 1152] {
        for (h, w) in [(1usize, 1usize), (7, 7), (13, 9), (112, 112)] {
            if c == 1152 && h == 112 {
                continue;
            }
            let batch = if h * w * c > 100_000 { 1 } else { 2 };
            for kind in 0..3 {
                i += 1;
                let kernel = kernels[i % kernels.len()];
                let window = Window2d {
                    stride: [[1, 2][i % 2], [1, 2][(i / 2) % 2]],
                    dilation: if i % 5 == 0 { [2, 2] } else { [1, 1] },
                    padding: paddings[i % paddings.len()],
                    layout: DataLayout::Nchw,
                };
                let x = vec![batch, c, h, w];
                cases.push(match kind {
                    0 => {
                        let mut weights = vec![vec![c, 1, kernel[0], kernel[1]]];
                        if i % 3 != 0 {
                            weights.push(vec![c]);
                        }
                        let fused =
                            (i % 4 != 0).then(|| (activations[i % activations.len()], i % 2 == 1));
                        (Op::Conv2d(Conv2d { window, groups: c }), x, weights, fused)
                    }
                    _ => (
                        Op::Pool2d(Pool2d {
                            kind: match (kind, i % 2) {
                                (1, _) => PoolKind::Max,
                                (_, p) => PoolKind::Avg {
                                    count_include_pad: p == 1,
                                },
                            },
                            kernel,
                            window,
                        }),
                        x,
                        vec![],
                        None,
                    ),
                });
            }
        }
    }
    cases
}

/// The window classes `window2d_nhwc` specialises (3 and 5 wide, stride 1
/// and 2, no dilation) and the run-time ones around them (1 and 2 wide,
/// kh != kw, dilated), each as a depthwise convolution and the three
/// pools, over planes whose output rows take every group size and an
/// overlapping last group (input widths 3, 9, 30, 57), images narrower
/// than the window, channels with a partial vector on the wide tiers (7,
/// 20) and without (16, 48), "same" (asymmetric at stride 2 on even
/// sizes), asymmetric explicit and no padding; the convolutions with
/// activations fused in registers (relu, relu6) and in the row pass
/// (hard_swish), with and without residual.
fn nhwc_specialised_cases() -> Vec<KernelCase> {
    let classes = [
        ([3, 3], [1, 1], [1, 1]),
        ([3, 3], [2, 2], [1, 1]),
        ([5, 5], [1, 1], [1, 1]),
        ([5, 5], [2, 2], [1, 1]),
        ([1, 3], [1, 2], [1, 1]),
        ([5, 3], [2, 1], [1, 1]),
        ([3, 3], [1, 1], [2, 2]),
        ([3, 5], [1, 1], [1, 2]),
        ([2, 2], [2, 2], [1, 1]),
    ];
    let paddings = [
        Padding2d::Same,
        Padding2d::Explicit {
            top: 0,
            left: 2,
            bottom: 1,
            right: 0,
        },
        Padding2d::Explicit {
            top: 0,
            left: 0,
            bottom: 0,
            right: 0,
        },
    ];
    let epilogues = [
        None,
        Some((Some(UnaryOp::Relu6), true)),
        Some((Some(UnaryOp::Relu), false)),
        Some((Some(UnaryOp::HardSwish), true)),
        Some((None, true)),
    ];
    let mut cases = Vec::new();
    let mut i = 0usize;
    for (kernel, stride, dilation) in classes {
        for (h, w) in [(3usize, 3usize), (4, 9), (5, 30), (3, 57)] {
            for kind in 0..4 {
                i += 1;
                let c = [7usize, 16, 20, 48][i % 4];
                let window = Window2d {
                    stride,
                    dilation,
                    padding: paddings[i % paddings.len()],
                    layout: DataLayout::Nchw,
                };
                let x = vec![1 + i % 2, c, h, w];
                cases.push(match kind {
                    0 => {
                        let mut weights = vec![vec![c, 1, kernel[0], kernel[1]]];
                        if i % 3 != 0 {
                            weights.push(vec![c]);
                        }
                        let conv = Op::Conv2d(Conv2d { window, groups: c });
                        (conv, x, weights, epilogues[i % epilogues.len()])
                    }
                    _ => (
                        Op::Pool2d(Pool2d {
                            kind: match kind {
                                1 => PoolKind::Max,
                                k => PoolKind::Avg {
                                    count_include_pad: k == 3,
                                },
                            },
                            kernel,
                            window,
                        }),
                        x,
                        vec![],
                        None,
                    ),
                });
            }
        }
    }
    cases
}

/// Many channels with a partial vector (1160: 72 vectors of 16 and 8
/// more, 145 of 8) over few rows and over many: `window2d_nhwc` runs the
/// rows a chunk of channels at a time and splits few rows over threads by
/// chunks, so every chunk, the tail after the last one and the row pass of
/// other activations (hard_swish, with the residual) over each chunk's
/// channels are covered.
fn nhwc_chunked_cases() -> Vec<KernelCase> {
    let c = 1160;
    let window = |stride: usize| Window2d {
        stride: [stride, stride],
        dilation: [1, 1],
        padding: Padding2d::Same,
        layout: DataLayout::Nchw,
    };
    let depthwise = |k: usize, stride: usize, hw: [usize; 2], fused| {
        (
            Op::Conv2d(Conv2d {
                window: window(stride),
                groups: c,
            }),
            vec![1, c, hw[0], hw[1]],
            vec![vec![c, 1, k, k], vec![c]],
            fused,
        )
    };
    vec![
        depthwise(3, 1, [7, 7], Some((Some(UnaryOp::HardSwish), true))),
        depthwise(5, 1, [7, 7], Some((Some(UnaryOp::Relu6), false))),
        depthwise(3, 2, [14, 11], Some((Some(UnaryOp::HardSwish), false))),
        depthwise(5, 1, [20, 6], Some((Some(UnaryOp::Relu6), true))),
        (
            Op::Pool2d(Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: false,
                },
                kernel: [3, 3],
                window: window(1),
            }),
            vec![1, c, 7, 7],
            vec![],
            None,
        ),
    ]
}

#[test]
fn nhwc_depthwise_and_pools_match_the_interpreter_on_every_tier_and_thread_count() {
    use lamina::codegen::conv::{PostActivation, WindowGeometry, WindowOp};
    use lamina::codegen::window_nhwc::{pack_depthwise_taps, window2d_nhwc, NhwcWindowArgs};
    use lamina::codegen::Threads;
    let tiers: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&isa| Target::detected().with_isa(isa).is_ok())
        .collect();
    let two = Threads::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seeds::run_seed() ^ 0x4c);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (op, x_shape, weights, fused) in nhwc_cases()
        .into_iter()
        .chain(nhwc_specialised_cases())
        .chain(nhwc_chunked_cases())
    {
        let what = format!("{op:?} x {x_shape:?} epilogue {fused:?}");
        let Some(NhwcOracle {
            params,
            expected,
            out_nchw,
            x,
            residual,
        }) = nhwc_oracle(&op, &x_shape, &weights, fused, &mut rng, &what)
        else {
            continue;
        };
        checked += 1;
        let [n, c, h, w] = <[usize; 4]>::try_from(x_shape.as_slice()).unwrap();
        let (window, kernel, wop) = match &op {
            Op::Conv2d(conv) => (
                conv.window,
                [weights[0][2], weights[0][3]],
                WindowOp::Depthwise,
            ),
            Op::Pool2d(pool) => (
                pool.window,
                pool.kernel,
                match pool.kind {
                    PoolKind::Max => WindowOp::Max,
                    PoolKind::Avg { count_include_pad } => WindowOp::Avg { count_include_pad },
                },
            ),
            _ => unreachable!(),
        };
        let taps = params.get("w0").map(|t| {
            let mut packed = vec![0.0; t.len()];
            pack_depthwise_taps(t.as_f32().unwrap(), c, kernel[0] * kernel[1], &mut packed)
                .unwrap();
            packed
        });
        let g = WindowGeometry {
            batch: n,
            in_channels: c,
            in_h: h,
            in_w: w,
            out_channels: c,
            out_h: out_nchw[2],
            out_w: out_nchw[3],
            kernel,
            stride: window.stride,
            dilation: window.dilation,
            pad: [
                window.pads(0, h, kernel[0]).unwrap().0,
                window.pads(1, w, kernel[1]).unwrap().0,
            ],
            groups: if wop == WindowOp::Depthwise { c } else { 1 },
        };
        let post = fused
            .and_then(|(a, _)| a)
            .map(|a| PostActivation::from_unary(a).unwrap());
        let tolerance = 1e-6 * (kernel[0] * kernel[1] + 4) as f32;
        let nhwc_case = nhwc_case(
            "window2d_nhwc",
            &op,
            fused,
            &params,
            &x,
            [n, h, w, c],
            residual.as_ref(),
            out_nchw,
        );
        for &isa in &tiers {
            let direct = |threads: &Threads| {
                let mut out = vec![f32::NAN; expected.len()];
                let args = NhwcWindowArgs {
                    x: &x,
                    taps: taps.as_deref(),
                    bias: params.get("w1").map(|b| b.as_f32().unwrap()),
                    post,
                    residual: residual.as_deref(),
                    out: &mut out,
                };
                window2d_nhwc(isa, wop, &g, args, threads)
                    .unwrap_or_else(|e| panic!("{what} on {isa}: {e}"));
                out
            };
            let one = direct(&Threads::single());
            if one
                .iter()
                .zip(&direct(&two))
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                failures.push(format!("{what} on {isa}: 1 and 2 threads differ"));
            }
            // The same node in NHWC through the planner: its candidate,
            // the same bits as the kernel called directly.
            for threads in [1, 2] {
                let (kernels, planned) = run(&nhwc_case, isa, threads);
                if kernels != ["window2d_nhwc"] {
                    failures.push(format!("{what} on {isa}: planned {kernels:?}"));
                } else if !same_bits(&planned, &one) {
                    failures.push(format!(
                        "{what} on {isa}, {threads} threads: the plan differs"
                    ));
                }
            }
            for (i, (a, e)) in one.iter().zip(&expected).enumerate() {
                let ok = (a.is_nan() && e.is_nan())
                    || a == e
                    || (a - e).abs() <= tolerance * (1.0 + e.abs());
                if !ok {
                    failures.push(format!("{what} on {isa}: element {i}: {a} vs {e}"));
                    break;
                }
            }
        }
    }
    assert!(checked >= 150, "only {checked} shapes fit their windows");
    assert!(
        failures.is_empty(),
        "{} failures (seed {}):\n{}",
        failures.len(),
        seeds::run_seed(),
        failures.join("\n")
    );
}

/// A NaN in a max pool's window wins wherever it sits among the taps (as
/// the interpreter's `nan_max`): first, middle or last in the chain, in a
/// full channel vector or a partial one; windows without it get their
/// plain maximum.
#[test]
fn nhwc_max_pool_propagates_nan_from_any_tap_on_every_tier() {
    use lamina::codegen::conv::{WindowGeometry, WindowOp};
    use lamina::codegen::window_nhwc::{window2d_nhwc, NhwcWindowArgs};
    use lamina::codegen::Threads;
    let (h, w, c) = (5usize, 19usize, 20usize);
    let at = |y: usize, x: usize, ch: usize| (y * w + x) * c + ch;
    let mut x: Vec<f32> = (0..h * w * c)
        .map(|i| ((i * 37) % 101) as f32 - 50.0)
        .collect();
    // Channel 3: a full vector on every tier; channel 17: past the last
    // full vector on AVX-512 (16 lanes), inside one on AVX2 (8 lanes).
    let nans = [(2usize, 4usize, 3usize), (0, 0, 17), (4, 18, 17), (1, 9, 3)];
    for &(y, xx, ch) in &nans {
        x[at(y, xx, ch)] = f32::NAN;
    }
    let g = WindowGeometry {
        batch: 1,
        in_channels: c,
        in_h: h,
        in_w: w,
        out_channels: c,
        out_h: h,
        out_w: w,
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pad: [1, 1],
        groups: 1,
    };
    for isa in Isa::ALL {
        if Target::detected().with_isa(isa).is_err() {
            continue;
        }
        let mut out = vec![0.0; x.len()];
        let args = NhwcWindowArgs {
            x: &x,
            taps: None,
            bias: None,
            post: None,
            residual: None,
            out: &mut out,
        };
        window2d_nhwc(isa, WindowOp::Max, &g, args, &Threads::single()).unwrap();
        for oy in 0..h {
            for ox in 0..w {
                for ch in 0..c {
                    let window = (oy.saturating_sub(1)..(oy + 2).min(h)).flat_map(|y| {
                        (ox.saturating_sub(1)..(ox + 2).min(w)).map(move |xx| (y, xx))
                    });
                    let has_nan = window.clone().any(|(y, xx)| nans.contains(&(y, xx, ch)));
                    let got = out[at(oy, ox, ch)];
                    if has_nan {
                        assert!(got.is_nan(), "{isa}: ({oy}, {ox}, {ch}) = {got}, want NaN");
                    } else {
                        let want = window
                            .map(|(y, xx)| x[at(y, xx, ch)])
                            .fold(f32::NEG_INFINITY, f32::max);
                        assert_eq!(got, want, "{isa}: ({oy}, {ox}, {ch})");
                    }
                }
            }
        }
    }
}

// ---- NHWC convolutions as GEMMs (`codegen::conv::conv2d_nhwc`) -------------

/// Non-depthwise NHWC convolutions: channels 1, 3, 17 and 64 in and out
/// (twice those in two groups),
/// planes 1x1, 7x7 and 13x9, kernels 1x1 (in place when stride 1 and
/// unpadded) to 3x3, strides 1 and 2, dilation 1 and 2, every padding form
/// ("same" included), groups 1 and 2, every activation of the GEMM
/// epilogue, with and without bias and residual.
fn nhwc_gemm_cases() -> Vec<KernelCase> {
    let activations = [
        None,
        Some(UnaryOp::Relu),
        Some(UnaryOp::Relu6),
        Some(UnaryOp::HardSigmoid),
        Some(UnaryOp::HardSwish),
        Some(UnaryOp::Sigmoid),
        Some(UnaryOp::Tanh),
        Some(UnaryOp::Gelu),
        Some(UnaryOp::GeluTanh),
    ];
    let kernels = [[1, 1], [3, 3], [1, 1], [2, 3], [3, 1]];
    let paddings = [
        Padding2d::Explicit {
            top: 0,
            left: 0,
            bottom: 0,
            right: 0,
        },
        Padding2d::Same,
        Padding2d::Explicit {
            top: 1,
            left: 2,
            bottom: 0,
            right: 1,
        },
    ];
    let mut cases = Vec::new();
    let mut i = 0usize;
    for c in [1usize, 3, 17, 64] {
        for (h, w) in [(1usize, 1usize), (7, 7), (13, 9)] {
            for o in [1usize, 3, 17, 64] {
                i += 1;
                // Every third case in two groups of the channels.
                let groups = if i % 3 == 0 { 2 } else { 1 };
                let (c, o) = (c * groups, o * groups);
                // Every fourth a pointwise convolution, read in place.
                let pointwise = i % 4 == 0;
                let kernel = if pointwise {
                    [1, 1]
                } else {
                    kernels[i % kernels.len()]
                };
                let window = Window2d {
                    stride: match pointwise {
                        true => [1, 1],
                        false => [[1, 2][(i / 2) % 2], [1, 2][(i / 5) % 2]],
                    },
                    dilation: if i % 7 == 3 { [2, 2] } else { [1, 1] },
                    padding: paddings[if pointwise { 0 } else { i % paddings.len() }],
                    layout: DataLayout::Nchw,
                };
                let mut weights = vec![vec![o, c / groups, kernel[0], kernel[1]]];
                if i % 3 != 1 {
                    weights.push(vec![o]);
                }
                let fused = (i % 5 != 0).then(|| (activations[i % activations.len()], i % 2 == 0));
                cases.push((
                    Op::Conv2d(Conv2d { window, groups }),
                    vec![2, c, h, w],
                    weights,
                    fused,
                ));
            }
        }
    }
    cases
}

#[test]
fn nhwc_gemm_convolutions_match_the_interpreter_on_every_tier_and_thread_count() {
    use lamina::codegen::conv::{conv2d_nhwc, pack_nhwc_weights, NhwcConvArgs, WindowGeometry};
    use lamina::codegen::{
        Activation, CodegenOptions, Epilogue, KernelLibraryBuilder, PackLayout, Threads,
    };
    let tiers: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&isa| Target::detected().with_isa(isa).is_ok())
        .collect();
    let two = Threads::new(2).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seeds::run_seed() ^ 0x9e);
    let mut failures = Vec::new();
    let mut checked = 0;
    let (mut strided, mut in_place, mut grouped) = (0, 0, 0);
    for (op, x_shape, weights, fused) in nhwc_gemm_cases() {
        let what = format!("{op:?} x {x_shape:?} w {weights:?} epilogue {fused:?}");
        let Some(NhwcOracle {
            params,
            expected,
            out_nchw,
            x,
            residual,
        }) = nhwc_oracle(&op, &x_shape, &weights, fused, &mut rng, &what)
        else {
            continue;
        };
        checked += 1;
        let [n, c, h, w] = <[usize; 4]>::try_from(x_shape.as_slice()).unwrap();
        let Op::Conv2d(conv) = &op else {
            unreachable!()
        };
        let [o, cg, kh, kw] = <[usize; 4]>::try_from(weights[0].as_slice()).unwrap();
        let window = conv.window;
        let g = WindowGeometry {
            batch: n,
            in_channels: c,
            in_h: h,
            in_w: w,
            out_channels: o,
            out_h: out_nchw[2],
            out_w: out_nchw[3],
            kernel: [kh, kw],
            stride: window.stride,
            dilation: window.dilation,
            pad: [
                window.pads(0, h, kh).unwrap().0,
                window.pads(1, w, kw).unwrap().0,
            ],
            groups: conv.groups,
        };
        if [kh, kw, g.stride[0], g.stride[1], g.pad[0], g.pad[1]] == [1, 1, 1, 1, 0, 0] {
            in_place += 1;
        } else if g.stride != [1, 1] {
            strided += 1;
        }
        if conv.groups > 1 {
            grouped += 1;
        }
        let bias = params.get("w1").map(|b| b.as_f32().unwrap());
        let epilogue = Epilogue {
            bias: bias.is_some(),
            activation: fused
                .and_then(|(a, _)| a)
                .map(|a| Activation::from_unary(a).unwrap()),
            residual: residual.is_some(),
        };
        // Every output is a chain of `cg * kh * kw` products, then the activation.
        let tolerance = 2e-6 * (cg * kh * kw + 4) as f32;
        // One input and one output channel per group is depthwise: the
        // window kernel's (checked by the depthwise test), not the GEMM's.
        let depthwise = cg == 1 && o == conv.groups;
        let nhwc_case = nhwc_case(
            if depthwise {
                "window2d_nhwc"
            } else {
                "conv_nhwc_gemm"
            },
            &op,
            fused,
            &params,
            &x,
            [n, h, w, c],
            residual.as_ref(),
            out_nchw,
        );
        for &isa in &tiers {
            let mut builder = KernelLibraryBuilder::with_options(&CodegenOptions {
                isa: Some(isa),
                ..CodegenOptions::default()
            })
            .unwrap();
            let id = builder.add_gemm(epilogue).unwrap();
            let lib = builder.finish().unwrap();
            let packed = pack_nhwc_weights(
                params["w0"].as_f32().unwrap(),
                o,
                conv.groups,
                [cg, kh, kw],
                PackLayout::for_isa(isa),
            )
            .unwrap();
            let direct = |threads: &Threads| {
                let mut out = vec![f32::NAN; expected.len()];
                let args = NhwcConvArgs {
                    x: &x,
                    weights: &packed,
                    bias,
                    residual: residual.as_deref(),
                    out: &mut out,
                };
                conv2d_nhwc(&lib, id, &g, args, threads)
                    .unwrap_or_else(|e| panic!("{what} on {isa}: {e}"));
                out
            };
            let one = direct(&Threads::single());
            if one
                .iter()
                .zip(&direct(&two))
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                failures.push(format!("{what} on {isa}: 1 and 2 threads differ"));
            }
            // The same node in NHWC through the planner: its candidate,
            // the same bits as the kernel called directly.
            for threads in [1, 2] {
                let (kernels, planned) = run(&nhwc_case, isa, threads);
                if kernels != [nhwc_case.kernel] {
                    failures.push(format!("{what} on {isa}: planned {kernels:?}"));
                } else if !depthwise && !same_bits(&planned, &one) {
                    failures.push(format!(
                        "{what} on {isa}, {threads} threads: the plan differs"
                    ));
                }
            }
            for (i, (a, e)) in one.iter().zip(&expected).enumerate() {
                let ok = (a.is_nan() && e.is_nan())
                    || a == e
                    || (a - e).abs() <= tolerance * (1.0 + e.abs());
                if !ok {
                    failures.push(format!("{what} on {isa}: element {i}: {a} vs {e}"));
                    break;
                }
            }
        }
    }
    assert!(checked >= 40, "only {checked} shapes fit their windows");
    assert!(
        in_place >= 10 && strided >= 20 && grouped >= 10,
        "in place {in_place}, strided {strided}, grouped {grouped}"
    );
    assert!(
        failures.is_empty(),
        "{} failures (seed {}):\n{}",
        failures.len(),
        seeds::run_seed(),
        failures.join("\n")
    );
}

/// The one-node graph of a case in NHWC (`layout="nhwc"`), over the same
/// weights (OIHW, whatever the layout) and the NHWC input and residual,
/// expected on candidate `kernel`.
fn nhwc_case(
    kernel: &'static str,
    op: &Op,
    fused: Option<(Option<UnaryOp>, bool)>,
    params: &HashMap<String, Tensor>,
    x: &[f32],
    x_shape: [usize; 4],
    residual: Option<&Vec<f32>>,
    [n, c, oh, ow]: [usize; 4],
) -> Case {
    let nhwc = |window: Window2d| Window2d {
        layout: DataLayout::Nhwc,
        ..window
    };
    let mut b = GraphBuilder::new("nhwc");
    let mut ids = vec![b.input("x", f32_type(&x_shape))];
    let mut inputs = HashMap::from([("x".to_string(), Tensor::f32(x_shape.to_vec(), x.to_vec()))]);
    for name in ["w0", "w1"] {
        if let Some(value) = params.get(name) {
            ids.push(b.param(name, value.clone()));
        }
    }
    let out_shape = vec![n, oh, ow, c];
    if let Some(r) = residual {
        ids.push(b.input("r", f32_type(&out_shape)));
        inputs.insert("r".into(), Tensor::f32(out_shape.clone(), r.clone()));
    }
    let op = match (op, fused) {
        (Op::Conv2d(conv), Some((activation, residual))) => Op::FusedConv2d(FusedConv2d {
            conv: Conv2d {
                window: nhwc(conv.window),
                ..conv.clone()
            },
            epilogue: LinearEpilogue {
                bias: params.contains_key("w1"),
                activation,
                residual,
            },
        }),
        (Op::Conv2d(conv), None) => Op::Conv2d(Conv2d {
            window: nhwc(conv.window),
            ..conv.clone()
        }),
        (Op::Pool2d(pool), _) => Op::Pool2d(Pool2d {
            window: nhwc(pool.window),
            ..pool.clone()
        }),
        (other, _) => unreachable!("{other:?}"),
    };
    let what = format!("{op:?} in NHWC");
    let y = b
        .try_op(op, &ids)
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    b.output("y", y);
    let (graph, params) = b.finish();
    Case {
        what,
        graph,
        params,
        inputs,
        kernel,
        depth: x_shape[3],
    }
}

/// Whether `planned` has exactly the bits of `direct` (the kernel called
/// without the planner).
fn same_bits(planned: &lamina::tensor::Tensor, direct: &[f32]) -> bool {
    planned
        .as_f32()
        .unwrap()
        .iter()
        .zip(direct)
        .all(|(a, b)| a.to_bits() == b.to_bits())
}
