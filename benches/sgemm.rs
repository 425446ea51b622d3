//! sgemm throughput of the JIT GEMM: square sizes, 1 and 2 threads.
//! Throughput is reported in elements = flops (2 m n k), so criterion's
//! `Gelem/s` reads as GFLOP/s. `prepacked` packs B once outside the timed
//! loop (a weight); `with_pack` packs B on every call (an activation).
//!
//! `LAMINA_SGEMM_TABLE=1 cargo bench --bench sgemm` instead prints a compact
//! table (median and best of many short runs, interleaving thread counts),
//! which is more robust on a machine shared with other jobs;
//! `LAMINA_SGEMM_SIZES=100,1000` picks the sizes. The table mode also times
//! a few model-shaped GEMMs and kernel compilation.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lamina::codegen::*;

fn matrix(n: usize, seed: u32) -> Vec<f32> {
    values(n * n, seed)
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 9) as f32 / 8_388_608.0
                - 1.0
        })
        .collect()
}

/// Median and best GFLOP/s of `rounds` timed batches of calls.
fn table() {
    let mut builder = KernelLibraryBuilder::new().expect("host ISA");
    let id = builder.add_gemm(Epilogue::none()).expect("compile");
    let lib = builder.finish().expect("link");
    let pools = [
        (1usize, Threads::single()),
        (2, Threads::new(2).expect("pool")),
    ];
    println!("features: {:?}", lib.features());
    println!(
        "{:>6} {:>8} {:>14} {:>14}",
        "n", "threads", "median GF/s", "best GF/s"
    );
    let sizes: Vec<usize> = match std::env::var("LAMINA_SGEMM_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => vec![64, 128, 256, 512, 1024],
    };
    for n in sizes {
        let a = matrix(n, 1);
        let b = matrix(n, 2);
        let packed = PackedB::pack(&MatrixRef::row_major(&b, n, n).unwrap());
        let mut out = vec![0.0f32; n * n];
        let flops = 2.0 * (n as f64).powi(3);
        let calls = ((2e8 / flops) as usize).max(1);
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); pools.len()];
        for _round in 0..15 {
            for (slot, (_, threads)) in pools.iter().enumerate() {
                let start = std::time::Instant::now();
                for _ in 0..calls {
                    lib.gemm(
                        id,
                        GemmArgs {
                            a: MatrixRef::row_major(&a, n, n).unwrap(),
                            b: packed.as_ref(),
                            bias: None,
                            residual: None,
                            c: &mut out,
                        },
                        threads,
                    )
                    .unwrap();
                }
                let secs = start.elapsed().as_secs_f64();
                rates[slot].push(flops * calls as f64 / secs / 1e9);
            }
        }
        for ((count, _), r) in pools.iter().zip(rates.iter_mut()) {
            r.sort_by(|x, y| x.total_cmp(y));
            println!(
                "{n:>6} {count:>8} {:>14.1} {:>14.1}",
                r[r.len() / 2],
                r[r.len() - 1]
            );
        }
    }
}

/// Model-shaped GEMMs (m x k x n): median microseconds per call, and the
/// time to compile and link the kernels of a few epilogues.
fn model_shapes() {
    let start = std::time::Instant::now();
    let mut builder = KernelLibraryBuilder::new().expect("host ISA");
    println!(
        "compile: ISA setup {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let t = std::time::Instant::now();
    let plain = builder.add_gemm(Epilogue::none()).expect("compile");
    println!(
        "compile: first GEMM (the shared micro-kernels) {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for activation in [
        None,
        Some(Activation::Relu),
        Some(Activation::Gelu),
        Some(Activation::Tanh),
    ] {
        let t = std::time::Instant::now();
        builder
            .add_gemm(Epilogue {
                bias: true,
                activation,
                residual: true,
            })
            .expect("compile");
        println!(
            "compile: GEMM kernels for bias+{}+residual: {:.1} ms",
            activation.map_or("none", |a| a.name()),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let t = std::time::Instant::now();
    let lib = builder.finish().expect("link");
    println!(
        "compile: link {} functions {:.1} ms; total {:.1} ms",
        lib.kernels().len(),
        t.elapsed().as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
    let pools = [
        (1usize, Threads::single()),
        (2, Threads::new(2).expect("pool")),
    ];
    println!(
        "{:>18} {:>8} {:>12} {:>10}",
        "m x k x n", "threads", "median us", "GF/s"
    );
    for (m, k, n) in [
        (1, 784, 512),
        (8, 784, 512),
        (64, 784, 512),
        (128, 256, 768),
        (128, 1024, 256),
    ] {
        let a = values(m * k, 3);
        let b = values(k * n, 4);
        let packed = PackedB::pack(&MatrixRef::row_major(&b, k, n).unwrap());
        let mut out = vec![0.0f32; m * n];
        for (count, threads) in &pools {
            let mut times = Vec::new();
            for _ in 0..200 {
                let t = std::time::Instant::now();
                lib.gemm(
                    plain,
                    GemmArgs {
                        a: MatrixRef::row_major(&a, m, k).unwrap(),
                        b: packed.as_ref(),
                        bias: None,
                        residual: None,
                        c: &mut out,
                    },
                    threads,
                )
                .unwrap();
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(|x, y| x.total_cmp(y));
            let median = times[times.len() / 2];
            println!(
                "{:>18} {count:>8} {:>12.1} {:>10.1}",
                format!("{m}x{k}x{n}"),
                median * 1e6,
                2.0 * (m * k * n) as f64 / median / 1e9
            );
        }
    }
}

fn sgemm(c: &mut Criterion) {
    if std::env::var_os("LAMINA_SGEMM_TABLE").is_some() {
        table();
        model_shapes();
        return;
    }
    let mut builder = KernelLibraryBuilder::new().expect("host ISA");
    let id = builder.add_gemm(Epilogue::none()).expect("compile");
    let lib = builder.finish().expect("link");
    let pools = [
        (1usize, Threads::single()),
        (2, Threads::new(2).expect("pool")),
    ];
    for mode in ["prepacked", "with_pack"] {
        let mut group = c.benchmark_group(format!("sgemm_{mode}"));
        group.sample_size(20);
        group.measurement_time(std::time::Duration::from_secs(3));
        group.warm_up_time(std::time::Duration::from_secs(1));
        for n in [64usize, 128, 256, 512, 1024] {
            let a = matrix(n, 1);
            let b = matrix(n, 2);
            let b_view = MatrixRef::row_major(&b, n, n).unwrap();
            let packed = PackedB::pack(&b_view);
            let mut scratch = vec![0.0f32; packed_b_len(n, n)];
            let mut out = vec![0.0f32; n * n];
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            for (count, threads) in &pools {
                group.bench_with_input(BenchmarkId::new(format!("{count}t"), n), &n, |bench, _| {
                    bench.iter(|| {
                        let b_ref = if mode == "prepacked" {
                            packed.as_ref()
                        } else {
                            PackedBRef::pack_into(&b_view, &mut scratch).unwrap()
                        };
                        lib.gemm(
                            id,
                            GemmArgs {
                                a: MatrixRef::row_major(&a, n, n).unwrap(),
                                b: b_ref,
                                bias: None,
                                residual: None,
                                c: &mut out,
                            },
                            threads,
                        )
                        .unwrap()
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, sgemm);
criterion_main!(benches);
