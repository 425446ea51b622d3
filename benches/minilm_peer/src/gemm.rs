//! The model's matrix products alone: lamina's JIT GEMM kernel against the
//! `gemm` crate candle calls, on MiniLM's linear-layer shapes. Nearly all of
//! a batch's time is in these, so their throughput bounds the whole model.

use std::time::Instant;

use candle_core::{Device, Tensor};
use lamina::codegen::{
    Activation, Epilogue, GemmArgs, KernelLibraryBuilder, MatrixRef, PackedB, Threads,
};

use crate::cpu;
use crate::measure::median;
use crate::BenchError;

/// What follows the product: nothing, or the feed-forward layer's bias and
/// exact GELU (fused into lamina's kernel; two more ops in candle).
#[derive(Clone, Copy, PartialEq)]
enum After {
    Nothing,
    BiasGelu,
}

/// `(m, k, n)`: rows are tokens in the batch; `x[m,k] @ W[n,k]^T`.
const SHAPES: [(&str, usize, usize, usize, After); 6] = [
    ("attention q/k/v/out", 444, 384, 384, After::Nothing),
    ("feed-forward up", 444, 384, 1536, After::Nothing),
    (
        "feed-forward up + bias + GELU",
        444,
        384,
        1536,
        After::BiasGelu,
    ),
    ("feed-forward down", 444, 1536, 384, After::Nothing),
    (
        "feed-forward up, one 37-token sentence",
        37,
        384,
        1536,
        After::Nothing,
    ),
    (
        "feed-forward up, one 5-token sentence",
        5,
        384,
        1536,
        After::Nothing,
    ),
];

fn codegen(e: lamina::codegen::CodegenError) -> BenchError {
    BenchError::Lamina(e.to_string())
}

/// Deterministic values in [-0.5, 0.5) without a random-number crate.
fn filler(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

struct Timing {
    wall_ms: f64,
    cpu_ms: f64,
}

fn time(runs: usize, mut f: impl FnMut() -> Result<(), BenchError>) -> Result<Timing, BenchError> {
    for _ in 0..3 {
        f()?;
    }
    let mut wall = Vec::with_capacity(runs);
    let mut cpu_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let c = cpu::process_cpu_ns();
        let t = Instant::now();
        f()?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu_ms.push(cpu::process_cpu_ns().saturating_sub(c) as f64 / 1e6);
    }
    wall.sort_by(f64::total_cmp);
    cpu_ms.sort_by(f64::total_cmp);
    Ok(Timing {
        wall_ms: median(&wall),
        cpu_ms: median(&cpu_ms),
    })
}

pub fn compare(threads: usize, runs: usize) -> Result<(), BenchError> {
    let lamina_threads = Threads::new(threads).map_err(codegen)?;
    let mut builder = KernelLibraryBuilder::new().map_err(codegen)?;
    let plain = builder
        .add_gemm(Epilogue {
            bias: false,
            activation: None,
            residual: false,
        })
        .map_err(codegen)?;
    let bias_gelu = builder
        .add_gemm(Epilogue {
            bias: true,
            activation: Some(Activation::Gelu),
            residual: false,
        })
        .map_err(codegen)?;
    let library = builder.finish().map_err(codegen)?;

    println!(
        "| product | m x k x n | candle (gemm crate) ms | GFLOP/s | lamina JIT ms | GFLOP/s | lamina / candle | max abs diff |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (seed, (what, m, k, n, after)) in SHAPES.iter().copied().enumerate() {
        let x = filler(m * k, 3 * seed as u32 + 1);
        let w = filler(n * k, 3 * seed as u32 + 2); // [n, k], as a PyTorch Linear stores it
        let bias = filler(n, 3 * seed as u32 + 3);

        let cx = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?;
        let cw = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?;
        let cb = Tensor::from_vec(bias.clone(), n, &Device::Cpu)?;
        let cwt = cw.t()?;
        let mut candle_out = Vec::new();
        let candle = time(runs, || {
            let product = cx.matmul(&cwt)?;
            let y = match after {
                After::Nothing => product,
                After::BiasGelu => product.broadcast_add(&cb)?.gelu_erf()?,
            };
            candle_out = y.flatten_all()?.to_vec1::<f32>()?;
            Ok(())
        })?;

        let packed = PackedB::pack(&MatrixRef::transposed(&w, k, n).map_err(codegen)?);
        let mut c = vec![0.0f32; m * n];
        let (kernel, bias) = match after {
            After::Nothing => (plain, None),
            After::BiasGelu => (bias_gelu, Some(bias.as_slice())),
        };
        let lamina = time(runs, || {
            let args = GemmArgs {
                a: MatrixRef::row_major(&x, m, k).map_err(codegen)?,
                b: packed.as_ref(),
                bias,
                residual: None,
                c: &mut c,
            };
            library.gemm(kernel, args, &lamina_threads).map_err(codegen)
        })?;

        let diff = candle_out
            .iter()
            .zip(&c)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        // Single-threaded, CPU time is the time the product would take on
        // an otherwise idle core; with two threads only wall time means it.
        let (candle_ms, lamina_ms) = if threads == 1 {
            (candle.cpu_ms, lamina.cpu_ms)
        } else {
            (candle.wall_ms, lamina.wall_ms)
        };
        println!(
            "| {what} | {m} x {k} x {n} | {candle_ms:.3} | {:.1} | {lamina_ms:.3} | {:.1} | **{:.2}** | {diff:.1e} |",
            gflop / (candle_ms / 1e3),
            gflop / (lamina_ms / 1e3),
            lamina_ms / candle_ms
        );
    }
    Ok(())
}
