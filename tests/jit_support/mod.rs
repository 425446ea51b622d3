//! Shared helpers for the JIT executor tests: comparing outputs with the
//! interpreter's, bit-exact comparison across thread counts, and a small
//! graph builder.
#![allow(dead_code)]

pub mod random_graph;

use lamina::ir::ops::{LayerNorm, MatMul, Permute, Reshape, Softmax};
use std::collections::HashMap;

use lamina::codegen::{Isa, Target};
use lamina::ir::{Dim, Graph, NodeId, Op, TensorType};
use lamina::runtime::exec::{CompileOptions, CompiledModel};
use lamina::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Outputs in declaration order, as `run` and `interp::run` return them.
pub type Outputs = Vec<(String, Tensor)>;

/// Absolute differences up to this always pass (when `rtol > 0`). The
/// tests feed values of order 1 (the random graphs keep every intermediate
/// below 16), where f32 kernels that sum in another order than the
/// interpreter differ by a few 1e-7 absolute; a result that cancels to
/// nearly 0 (in a tensor of small values, so the scale below does not
/// cover it) would otherwise fail a relative test on rounding alone.
pub const ABS_FLOOR: f64 = 1e-6;

/// How far a JIT value may be from the interpreter's: `|jit - interp|`
/// at most `ABS_FLOOR`, or at most `rtol` times the larger of the two
/// magnitudes or of the output's largest magnitude (so elements that
/// cancel to nearly zero are judged against the scale of their tensor, not
/// against themselves). `rtol = 0` asks for equality. NaN must meet NaN;
/// infinities must be equal. Returns the worst relative error seen among
/// differences above the floor.
pub fn compare(what: &str, jit: &Tensor, reference: &Tensor, rtol: f64) -> Result<f64, String> {
    if jit.shape() != reference.shape() {
        return Err(format!(
            "{what}: shape {:?}, the interpreter gives {:?}",
            jit.shape(),
            reference.shape()
        ));
    }
    if jit.dtype() != reference.dtype() {
        return Err(format!(
            "{what}: dtype {}, the interpreter gives {}",
            jit.dtype(),
            reference.dtype()
        ));
    }
    let ours = jit.to_f64_vec();
    let theirs = reference.to_f64_vec();
    let scale = theirs
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = (0.0f64, 0usize);
    for (i, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
        if a.is_nan() || b.is_nan() {
            if a.is_nan() != b.is_nan() {
                return Err(format!("{what} element {i}: jit {a}, interpreter {b}"));
            }
            continue;
        }
        if a.is_infinite() || b.is_infinite() {
            if a != b {
                return Err(format!("{what} element {i}: jit {a}, interpreter {b}"));
            }
            continue;
        }
        let bound = a.abs().max(b.abs()).max(scale);
        let error = if bound == 0.0 || (rtol > 0.0 && (a - b).abs() <= ABS_FLOOR) {
            0.0
        } else {
            (a - b).abs() / bound
        };
        if error > worst.0 {
            worst = (error, i);
        }
    }
    if worst.0 > rtol {
        let i = worst.1;
        return Err(format!(
            "{what} element {i}: jit {}, interpreter {} (relative error {:.3e} > {rtol:e})",
            ours[i], theirs[i], worst.0
        ));
    }
    Ok(worst.0)
}

/// Compares whole output lists (names, order and values); returns the
/// worst relative error of any output.
pub fn compare_outputs(
    what: &str,
    jit: &Outputs,
    reference: &Outputs,
    rtol: f64,
) -> Result<f64, String> {
    if jit.len() != reference.len() {
        return Err(format!(
            "{what}: {} outputs, the interpreter gives {}",
            jit.len(),
            reference.len()
        ));
    }
    let mut worst = 0.0f64;
    for ((name, a), (ref_name, b)) in jit.iter().zip(reference) {
        if name != ref_name {
            return Err(format!(
                "{what}: output `{name}` where the interpreter has `{ref_name}`"
            ));
        }
        worst = worst.max(compare(&format!("{what} output `{name}`"), a, b, rtol)?);
    }
    Ok(worst)
}

/// The same bits everywhere (NaN payloads included), as runs with
/// different thread counts must give.
pub fn same_bits(what: &str, a: &Outputs, b: &Outputs) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{what}: {} outputs vs {}", a.len(), b.len()));
    }
    for ((name, x), (_, y)) in a.iter().zip(b) {
        if x.shape() != y.shape() || x.dtype() != y.dtype() {
            return Err(format!("{what} output `{name}`: shapes or dtypes differ"));
        }
        let equal = match (x.data(), y.data()) {
            (TensorData::F32(p), TensorData::F32(q)) => p
                .iter()
                .zip(q)
                .position(|(u, v)| u.to_bits() != v.to_bits())
                .map(|i| format!("element {i}: {:e} vs {:e}", p[i], q[i])),
            (p, q) if p == q => None,
            _ => Some("integer or bool values differ".to_string()),
        };
        if let Some(detail) = equal {
            return Err(format!("{what} output `{name}` {detail}"));
        }
    }
    Ok(())
}

pub fn compile_plain(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    threads: usize,
) -> CompiledModel {
    compile_plain_on(graph, params, threads, None)
}

pub fn compile_all_passes(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    threads: usize,
) -> CompiledModel {
    compile_all_passes_on(graph, params, threads, None)
}

/// Every kernel tier this CPU runs, best first (the CPU's lacking tiers
/// are named on stderr, not skipped silently).
#[allow(dead_code)]
pub fn tiers() -> Vec<Isa> {
    let supported = Target::detected().supported_isas();
    for isa in Isa::ALL {
        if !supported.contains(&isa) {
            eprintln!("this CPU lacks the {isa} kernel tier: not tested");
        }
    }
    supported
}

/// The tier a generated case runs on: cases rotate through the tiers, so
/// every tier sees the generated graphs without multiplying the cases.
#[allow(dead_code)]
pub fn tier_for(seed: u64) -> Isa {
    let t = Target::detected().supported_isas();
    t[(seed % t.len() as u64) as usize]
}

pub fn compile_plain_on(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    threads: usize,
    isa: Option<Isa>,
) -> CompiledModel {
    CompiledModel::compile(graph, params, CompileOptions { threads, isa })
        .unwrap_or_else(|e| panic!("{}: compile fails: {e}", graph.name))
}

pub fn compile_all_passes_on(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    threads: usize,
    isa: Option<Isa>,
) -> CompiledModel {
    lamina::compile::compile(graph, params, CompileOptions { threads, isa })
        .unwrap_or_else(|e| panic!("{}: compile fails: {e}", graph.name))
        .0
}

pub fn random_f32(rng: &mut ChaCha8Rng, shape: Vec<usize>, low: f32, high: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::f32(shape, (0..n).map(|_| rng.random_range(low..high)).collect())
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `"f32[batch, 784]"` -> a tensor type; integers are known dims, other
/// names symbols.
pub fn ty(text: &str) -> TensorType {
    lamina::ir::builder::parse_type(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The library's graph builder: nodes typed by their shape rules,
/// parameters with values.
pub use lamina::ir::builder::GraphBuilder as Builder;

/// Inputs for a graph in declaration order from a name -> tensor map.
pub fn ordered<'a>(model: &CompiledModel, inputs: &'a HashMap<String, Tensor>) -> Vec<&'a Tensor> {
    model.input_names().iter().map(|n| &inputs[*n]).collect()
}

/// An i64 tensor of ids in `0..bound`.
pub fn random_ids(rng: &mut ChaCha8Rng, shape: Vec<usize>, bound: i64) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape,
        TensorData::I64((0..n).map(|_| rng.random_range(0..bound)).collect()),
    )
}

fn matmul(transpose_a: bool, transpose_b: bool) -> Op {
    Op::MatMul(MatMul {
        transpose_a,
        transpose_b,
    })
}

/// `x @ W^T + b` with `W` stored `[d_out, d_in]` like PyTorch.
fn torch_linear(
    b: &mut Builder,
    rng: &mut ChaCha8Rng,
    name: &str,
    x: NodeId,
    d_in: usize,
    d_out: usize,
) -> NodeId {
    use lamina::ir::BinaryOp;
    let s = (1.0 / d_in as f32).sqrt();
    let w = b.param(
        &format!("{name}.weight"),
        random_f32(rng, vec![d_out, d_in], -s, s),
    );
    let bias = b.param(&format!("{name}.bias"), random_f32(rng, vec![d_out], -s, s));
    let y = b.op(matmul(false, true), &[x, w]);
    b.op(Op::Binary(BinaryOp::Add), &[y, bias])
}

fn layer_norm(b: &mut Builder, rng: &mut ChaCha8Rng, name: &str, x: NodeId, d: usize) -> NodeId {
    let gain = b.param(
        &format!("{name}.weight"),
        random_f32(rng, vec![d], 0.9, 1.1),
    );
    let bias = b.param(&format!("{name}.bias"), random_f32(rng, vec![d], -0.1, 0.1));
    let axis = b.ty(x).rank() - 1;
    b.op(
        Op::LayerNorm(LayerNorm {
            axis,
            eps: lamina::ir::Float(1e-5),
        }),
        &[x, gain, bias],
    )
}

/// A small post-norm transformer encoder block on `x: f32[batch, seq, 32]`:
/// 4 heads of 8 (projections stored `[out, in]` like PyTorch, batched
/// `q k^T`, softmax, `p v`), residuals with layer norms, a GELU
/// feed-forward of 64. Output `y: f32[batch, seq, 32]`.
pub fn transformer_block(seed: u64) -> (Graph, HashMap<String, Tensor>) {
    use lamina::ir::{BinaryOp, UnaryOp};
    const D: usize = 32;
    const HEADS: usize = 4;
    const HEAD: usize = 8;
    const FFN: usize = 64;
    let mut rng = rng(seed);
    let rng = &mut rng;
    let mut b = Builder::new("transformer_block");
    let x = b.input("x", &format!("f32[batch, seq, {D}]"));
    let (batch, seq) = (Dim::symbol("batch"), Dim::symbol("seq"));
    let q = torch_linear(&mut b, rng, "q", x, D, D);
    let k = torch_linear(&mut b, rng, "k", x, D, D);
    let v = torch_linear(&mut b, rng, "v", x, D, D);
    let heads = |b: &mut Builder, t: NodeId| {
        let split = b.op(
            Op::Reshape(Reshape {
                shape: vec![batch.clone(), seq.clone(), HEADS.into(), HEAD.into()],
            }),
            &[t],
        );
        b.op(
            Op::Permute(Permute {
                perm: vec![0, 2, 1, 3],
            }),
            &[split],
        )
    };
    let (qh, kh, vh) = (heads(&mut b, q), heads(&mut b, k), heads(&mut b, v));
    let scores = b.op(matmul(false, true), &[qh, kh]);
    let inv_sqrt = b.scalar(1.0 / (HEAD as f32).sqrt());
    let scores = b.op(Op::Binary(BinaryOp::Mul), &[scores, inv_sqrt]);
    let probs = b.op(Op::Softmax(Softmax { axis: 3 }), &[scores]);
    let ctx = b.op(matmul(false, false), &[probs, vh]);
    let ctx = b.op(
        Op::Permute(Permute {
            perm: vec![0, 2, 1, 3],
        }),
        &[ctx],
    );
    let ctx = b.op(
        Op::Reshape(Reshape {
            shape: vec![batch.clone(), seq.clone(), D.into()],
        }),
        &[ctx],
    );
    let attended = torch_linear(&mut b, rng, "o", ctx, D, D);
    let res = b.op(Op::Binary(BinaryOp::Add), &[attended, x]);
    let h = layer_norm(&mut b, rng, "ln1", res, D);
    let inner = torch_linear(&mut b, rng, "ffn.in", h, D, FFN);
    let inner = b.op(Op::Unary(UnaryOp::Gelu), &[inner]);
    let out = torch_linear(&mut b, rng, "ffn.out", inner, FFN, D);
    let res = b.op(Op::Binary(BinaryOp::Add), &[out, h]);
    let y = layer_norm(&mut b, rng, "ln2", res, D);
    b.output("y", y);
    b.finish()
}

/// models/mlp/mlp.lam with its seeded parameters.
pub fn mlp() -> (Graph, HashMap<String, Tensor>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mlp/mlp.lam");
    let graph = lamina::model::load(&path)
        .unwrap_or_else(|f| panic!("mlp.lam does not load: {:?}", f.diagnostics))
        .graph;
    let params = lamina::runtime::bind_params(&graph, None, &lamina::ir::Bindings::new())
        .unwrap_or_else(|e| panic!("mlp parameters: {e:?}"))
        .values;
    (graph, params)
}

/// The model in `text` and its parameters from their seeded initializers.
pub fn load_source(text: &str) -> (Graph, HashMap<String, Tensor>) {
    let loaded = lamina::model::load_source("m.lam".as_ref(), text.to_string())
        .unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let params = lamina::runtime::bind_params(&loaded.graph, None, &lamina::ir::Bindings::new())
        .unwrap_or_else(|e| panic!("{e:?}"))
        .values;
    (loaded.graph, params)
}

/// The model in `text` (parameters from their seeded initializers),
/// through every pass.
pub fn compile_source(text: &str, options: CompileOptions) -> CompiledModel {
    let (graph, params) = load_source(text);
    lamina::compile::compile(&graph, &params, options)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// The reference interpreter's outputs of the model in `text` (parameters
/// from their seeded initializers).
pub fn interpret_source(text: &str, inputs: &HashMap<String, Tensor>) -> Outputs {
    let (graph, params) = load_source(text);
    lamina::interp::run(&graph, &params, inputs, &lamina::ir::Bindings::new())
        .unwrap_or_else(|e| panic!("{e}"))
}
