//! The window ops' NHWC layout (`layout="nhwc"`): on generated shapes (odd
//! sizes, strides 1-3, dilation, groups, depthwise, every padding form
//! including TensorFlow's "same", with and without bias, fused epilogues
//! with a residual), the interpreter's NHWC result is its NCHW result
//! transposed, bit for bit (the same f64 sums in the same order), and the
//! JIT runs NHWC graphs to the interpreter's values. Plus the text form,
//! its errors, and the gradients.

#[path = "common/random_values.rs"]
#[allow(dead_code)]
mod random_values;
#[path = "common/seeds.rs"]
mod seeds;

use std::collections::HashMap;

use lamina::engine::{Backend, Model, Options, Weights};
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

/// `x` (rank 4) with its axes reordered: output axis `i` is input axis `perm[i]`.
fn permuted(x: &Tensor, perm: [usize; 4]) -> Tensor {
    let shape = x.shape();
    let data = x.as_f32().expect("f32");
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut strides = [0usize; 4];
    let mut stride = 1;
    for axis in (0..4).rev() {
        strides[axis] = stride;
        stride *= shape[axis];
    }
    let mut out = Vec::with_capacity(data.len());
    for a in 0..out_shape[0] {
        for b in 0..out_shape[1] {
            for c in 0..out_shape[2] {
                for d in 0..out_shape[3] {
                    let at = [a, b, c, d]
                        .iter()
                        .zip(perm)
                        .map(|(i, p)| i * strides[p])
                        .sum::<usize>();
                    out.push(data[at]);
                }
            }
        }
    }
    Tensor::f32(out_shape, out)
}

const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

fn f32_type(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.iter().map(|&d| Dim::known(d)).collect())
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

/// One window op in NCHW, its operands' values, and the same op in NHWC.
struct Case {
    what: String,
    nchw: Op,
    nhwc: Op,
    /// NCHW input, weights (and bias), residual (NCHW).
    x: Tensor,
    weights: Vec<Tensor>,
    residual: Option<Tensor>,
}

/// The op with its window's layout set to `layout`.
fn with_layout(op: &Op, layout: DataLayout) -> Op {
    let set = |w: &Window2d| Window2d { layout, ..*w };
    match op {
        Op::Conv2d(c) => Op::Conv2d(Conv2d {
            window: set(&c.window),
            groups: c.groups,
        }),
        Op::FusedConv2d(f) => Op::FusedConv2d(FusedConv2d {
            conv: Conv2d {
                window: set(&f.conv.window),
                groups: f.conv.groups,
            },
            epilogue: f.epilogue.clone(),
        }),
        Op::Pool2d(p) => Op::Pool2d(Pool2d {
            window: set(&p.window),
            ..p.clone()
        }),
        other => panic!("not a window op: {other:?}"),
    }
}

/// A graph of one node: `op(x, weights..., [residual])`, the weights as
/// parameters; `None` when the shape rule rejects it (a window larger
/// than the padded input).
fn one_node(
    op: &Op,
    x: &Tensor,
    weights: &[Tensor],
    residual: Option<&Tensor>,
) -> Option<(Graph, HashMap<String, Tensor>, HashMap<String, Tensor>)> {
    let mut b = GraphBuilder::new("case");
    let mut ids = vec![b.input("x", f32_type(x.shape()))];
    let mut inputs = HashMap::from([("x".to_string(), x.clone())]);
    for (i, w) in weights.iter().enumerate() {
        ids.push(b.param(&format!("w{i}"), w.clone()));
    }
    if let Some(r) = residual {
        ids.push(b.input("r", f32_type(r.shape())));
        inputs.insert("r".into(), r.clone());
    }
    let y = b.try_op(op.clone(), &ids).ok()?;
    b.output("y", y);
    let (graph, params) = b.finish();
    Some((graph, params, inputs))
}

fn generated_cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seeds::run_seed() ^ 0x4e48_5743);
    let r = &mut rng;
    let mut cases = Vec::new();
    while cases.len() < 80 {
        let kind = cases.len() % 4;
        let batch = r.random_range(1..3);
        let (h, w) = (r.random_range(1..12), r.random_range(1..12));
        let window = Window2d {
            stride: [r.random_range(1..4), r.random_range(1..4)],
            dilation: [r.random_range(1..3), r.random_range(1..3)],
            padding: padding(r),
            layout: DataLayout::Nchw,
        };
        let (kh, kw) = (r.random_range(1..4), r.random_range(1..4));
        let (op, channels, weight_shapes) = match kind {
            // Plain, grouped and depthwise (one channel per group) convolutions.
            0..=2 => {
                let groups = match kind {
                    0 => 1,
                    1 => r.random_range(2..4),
                    _ => r.random_range(1..6),
                };
                let (cg, og) = match kind {
                    2 => (1, r.random_range(1..3)),
                    _ => (r.random_range(1..4), r.random_range(1..4)),
                };
                let mut shapes = vec![vec![groups * og, cg, kh, kw]];
                if r.random_bool(0.5) {
                    shapes.push(vec![groups * og]);
                }
                let conv = Conv2d { window, groups };
                let op = if r.random_bool(0.5) {
                    let activation = [None, Some(UnaryOp::Relu6), Some(UnaryOp::HardSwish)]
                        [r.random_range(0..3)];
                    Op::FusedConv2d(FusedConv2d {
                        conv,
                        epilogue: LinearEpilogue {
                            bias: shapes.len() == 2,
                            activation,
                            residual: r.random_bool(0.5),
                        },
                    })
                } else {
                    Op::Conv2d(conv)
                };
                (op, groups * cg, shapes)
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
                let pool = Pool2d {
                    kind,
                    kernel: [kh, kw],
                    window,
                };
                (Op::Pool2d(pool), r.random_range(1..5), vec![])
            }
        };
        let x = random_values::random_tensor(r, DType::F32, vec![batch, channels, h, w]);
        let weights: Vec<Tensor> = weight_shapes
            .into_iter()
            .map(|s| random_values::random_tensor(r, DType::F32, s))
            .collect();
        // The output shape from the NCHW op without a residual.
        let plain = match &op {
            Op::FusedConv2d(f) => Op::FusedConv2d(FusedConv2d {
                epilogue: LinearEpilogue {
                    residual: false,
                    ..f.epilogue.clone()
                },
                conv: f.conv.clone(),
            }),
            other => other.clone(),
        };
        let Some((graph, _, _)) = one_node(&plain, &x, &weights, None) else {
            continue;
        };
        let out_shape = graph.node(graph.outputs[0].1).ty.known_shape().unwrap();
        let residual = matches!(&op, Op::FusedConv2d(f) if f.epilogue.residual)
            .then(|| random_values::random_tensor(r, DType::F32, out_shape));
        cases.push(Case {
            what: format!("{op:?}, x {:?}", x.shape()),
            nhwc: with_layout(&op, DataLayout::Nhwc),
            nchw: op,
            x,
            weights,
            residual,
        });
    }
    cases
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn interpreter_nhwc_is_the_transposed_nchw_result_bit_for_bit() {
    let cases = generated_cases();
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for case in &cases {
        kinds.insert(case.nchw.name());
        let (graph, params, inputs) =
            one_node(&case.nchw, &case.x, &case.weights, case.residual.as_ref()).unwrap();
        let nchw = interp::run(&graph, &params, &inputs, &Bindings::new())
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        let x = permuted(&case.x, TO_NHWC);
        let residual = case.residual.as_ref().map(|r| permuted(r, TO_NHWC));
        let (graph, params, inputs) = one_node(&case.nhwc, &x, &case.weights, residual.as_ref())
            .unwrap_or_else(|| panic!("{}: the NHWC shape rule rejects it", case.what));
        let nhwc = interp::run(&graph, &params, &inputs, &Bindings::new())
            .unwrap_or_else(|e| panic!("{} (nhwc): {e}", case.what));
        let back = permuted(&nhwc[0].1, TO_NCHW);
        if back.shape() != nchw[0].1.shape() || bits(&back) != bits(&nchw[0].1) {
            failures.push(case.what.clone());
        }
    }
    assert_eq!(
        kinds.len(),
        4,
        "conv2d, fused_conv2d and both pools: {kinds:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases (seed {}):\n{}",
        failures.len(),
        cases.len(),
        seeds::run_seed(),
        failures.join("\n")
    );
}

/// Until NHWC kernels exist the NCHW ones must decline NHWC nodes (the
/// interpreter candidate runs them); whichever kernel takes a node, the
/// JIT's result is the interpreter's.
#[test]
fn jit_runs_nhwc_nodes_to_the_interpreters_values() {
    let cases = generated_cases();
    let mut failures = Vec::new();
    for case in cases.iter().step_by(3) {
        let x = permuted(&case.x, TO_NHWC);
        let residual = case.residual.as_ref().map(|r| permuted(r, TO_NHWC));
        let (graph, params, inputs) =
            one_node(&case.nhwc, &x, &case.weights, residual.as_ref()).unwrap();
        let expected = interp::run(&graph, &params, &inputs, &Bindings::new()).unwrap();
        let expected = expected[0].1.as_f32().unwrap();
        for threads in [1, 2] {
            let model =
                CompiledModel::compile(&graph, &params, CompileOptions { threads, isa: None })
                    .unwrap_or_else(|e| panic!("{}: {e}", case.what));
            let got = model
                .run(&inputs)
                .unwrap_or_else(|e| panic!("{}: {e}", case.what));
            let got = got[0].1.as_f32().unwrap();
            let depth = case.weights.first().map_or(9, |w| w.len() / w.shape()[0]);
            let tolerance = 1e-6 * (depth as f32 + 4.0);
            let close = got.iter().zip(expected).all(|(a, e)| {
                (a.is_nan() && e.is_nan()) || a == e || (a - e).abs() <= tolerance * (1.0 + e.abs())
            });
            if !close {
                failures.push(format!("{} on {threads} thread(s)", case.what));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {}:\n{}",
        seeds::run_seed(),
        failures.join("\n")
    );
}

fn load(text: &str) -> Result<Model, String> {
    Model::from_source("m.lam", text).map_err(|e| e.to_string())
}

/// The text form: `layout="nhwc"` on every window built-in, printed only
/// when it is not the default; the whole model runs end to end.
#[test]
fn layout_keyword_parses_prints_and_runs() {
    let text = "model m {
  input x: f32[n, 9, 7, 4]
  param w: f32[6, 2, 3, 3]
  param b: f32[6]
  y = conv2d(x, w, b, stride=2, padding=\"same\", groups=2, layout=\"nhwc\")
  z = avg_pool2d(relu6(y), kernel=2, padding=[1, 0, 0, 0], layout=\"nhwc\")
  p = max_pool2d(z, kernel=[1, 2], stride=1, layout=\"nhwc\")
  output out = global_avg_pool2d(p, layout=\"nhwc\")
}
";
    let model = load(text).unwrap_or_else(|e| panic!("{e}"));
    let shown = lamina::ir::printer::print(model.graph());
    assert!(
        shown.contains("conv2d(%0, %1, %2) {stride=2, dilation=1, padding=\"same\", layout=\"nhwc\", groups=2} : f32[n, 5, 4, 6]"),
        "{shown}"
    );
    assert!(
        shown.contains("max_pool2d(") && shown.contains(": f32[n, 3, 1, 6]"),
        "{shown}"
    );
    assert!(
        shown.contains("mean(") && shown.contains("{axes=[1, 2], keepdims=true} : f32[n, 1, 1, 6]"),
        "{shown}"
    );
    let nchw = load(
        &text
            .replace(", layout=\"nhwc\"", "")
            .replace("f32[n, 9, 7, 4]", "f32[n, 4, 9, 7]"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!lamina::ir::printer::print(nchw.graph()).contains("layout"));

    // End to end on both backends, against the NCHW model on the transposed input.
    let mut rng = ChaCha8Rng::seed_from_u64(seeds::run_seed() ^ 0x6c61);
    let x = random_values::random_tensor(&mut rng, DType::F32, vec![2, 4, 9, 7]);
    let weights = HashMap::from([
        (
            "w".to_string(),
            random_values::random_tensor(&mut rng, DType::F32, vec![6, 2, 3, 3]),
        ),
        (
            "b".to_string(),
            random_values::random_tensor(&mut rng, DType::F32, vec![6]),
        ),
    ]);
    let run = |model: &Model, x: Tensor, backend| {
        let options = Options {
            backend,
            ..Options::default()
        };
        let session = model
            .clone()
            .compile(Weights::Tensors(weights.clone()), &options)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = session
            .run(&HashMap::from([("x".to_string(), x)]))
            .unwrap_or_else(|e| panic!("{e}"));
        out.remove(0).1
    };
    let expected = run(&nchw, x.clone(), Backend::Interp);
    for backend in [Backend::Interp, Backend::Jit] {
        let got = run(&model, permuted(&x, TO_NHWC), backend);
        assert_eq!(got.shape(), &[2, 1, 1, 6]);
        let got = permuted(&got, TO_NCHW);
        for (a, e) in got.as_f32().unwrap().iter().zip(expected.as_f32().unwrap()) {
            assert!(
                (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{backend:?}: {a} vs {e}"
            );
        }
    }
}

#[test]
fn bad_layouts_and_shapes_are_located_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "conv2d(x, w, layout=\"nwhc\")",
            "`layout` is \"nwhc\"; expected one of \"nchw\", \"nhwc\"",
        ),
        (
            "max_pool2d(x, kernel=2, layout=\"NHWC\")",
            "`layout` is \"NHWC\"; expected one of \"nchw\", \"nhwc\"",
        ),
        (
            "global_avg_pool2d(x, layout=\"chw\")",
            "expected one of \"nchw\", \"nhwc\"",
        ),
        ("conv2d(x, w, layout=1)", "`layout` must be a string"),
        // x is [n, 4, 9, 7]: read as NHWC it has 7 channels.
        (
            "conv2d(x, w, layout=\"nhwc\")",
            "the input's 7 channels in 1 group(s) need weights with 7 input channels each",
        ),
        (
            "avg_pool2d(m, kernel=2, layout=\"nhwc\")",
            "takes an input [batch, height, width, channels] (layout \"nhwc\")",
        ),
        (
            "max_pool2d_grad(x, x, kernel=1, layout=\"nhwc\")",
            "max_pool2d_grad: takes NCHW tensors only",
        ),
    ];
    for (call, message) in cases {
        let text = format!(
            "model m {{\n  input x: f32[n, 4, 9, 7]\n  input w: f32[6, 4, 3, 3]\n  input m: f32[4]\n  output y = {call}\n}}\n"
        );
        let shown = load(&text).expect_err(call);
        assert!(shown.contains(message), "{call}: {shown}");
        assert!(
            shown.starts_with("m.lam:5:"),
            "{call}: not located at the call: {shown}"
        );
    }
}
