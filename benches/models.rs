//! Run latency of the benchmark models (`models/bench/`) on the JIT backend,
//! through the same setup as `lamina bench` (`lamina::bench::Workload`):
//! seeded parameters, generated inputs, one plan prepared before timing.
//! Throughput is reported in elements = matmul flops, so criterion's
//! `Gelem/s` reads as GFLOP/s.
//!
//! MiniLM (`models/minilm/`) is included when its checkpoint has been fetched
//! (`bash models/minilm/fetch.sh`), and skipped with a note otherwise.
//!
//! Default run time is modest (a few seconds per benchmark); criterion's own
//! flags lengthen it, e.g. `cargo bench --bench models -- --measurement-time 10`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lamina::bench::{BenchSetup, Workload};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

struct Case {
    name: &'static str,
    model: &'static str,
    batch: usize,
    binds: &'static [(&'static str, usize)],
    threads: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "mlp",
        model: "models/bench/mlp.lam",
        batch: 1,
        binds: &[],
        threads: 1,
    },
    Case {
        name: "mlp",
        model: "models/bench/mlp.lam",
        batch: 64,
        binds: &[],
        threads: 1,
    },
    Case {
        name: "mlp",
        model: "models/bench/mlp.lam",
        batch: 64,
        binds: &[],
        threads: 2,
    },
    Case {
        name: "encoder",
        model: "models/bench/encoder.lam",
        batch: 1,
        binds: &[],
        threads: 1,
    },
    Case {
        name: "encoder",
        model: "models/bench/encoder.lam",
        batch: 1,
        binds: &[],
        threads: 2,
    },
    Case {
        name: "minilm_seq64",
        model: "models/minilm/minilm.lam",
        batch: 1,
        binds: &[("seq", 64)],
        threads: 1,
    },
];

/// MiniLM needs its fetched checkpoint; the bench models need nothing.
fn available(case: &Case) -> bool {
    if case.model.starts_with("models/minilm/") {
        let checkpoint = repo_path("models/minilm/cache/model.safetensors");
        if !checkpoint.exists() {
            eprintln!(
                "skipping {}: {} is missing (run models/minilm/fetch.sh)",
                case.name,
                checkpoint.display()
            );
            return false;
        }
    }
    true
}

fn setup(case: &Case) -> BenchSetup {
    let mut setup = BenchSetup::new(repo_path(case.model));
    setup.batch = Some(case.batch);
    setup.binds = case
        .binds
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
    setup.threads = case.threads;
    setup
}

fn run_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("run");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for case in CASES.iter().filter(|c| available(c)) {
        let mut workload = Workload::prepare(&setup(case)).unwrap_or_else(|f| panic!("{f}"));
        group.throughput(Throughput::Elements(workload.flops));
        let id = BenchmarkId::new(
            case.name,
            format!("batch{}_threads{}", case.batch, case.threads),
        );
        group.bench_function(id, |b| {
            b.iter(|| workload.run_once().unwrap_or_else(|f| panic!("{f}")))
        });
    }
    group.finish();
}

/// Parse to ready-to-run (what `lamina bench` reports as compile_ms).
fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for case in CASES
        .iter()
        .filter(|c| c.threads == 1 && c.batch == 1 && available(c))
    {
        let setup = setup(case);
        group.bench_function(case.name, |b| {
            b.iter(|| Workload::prepare(&setup).unwrap_or_else(|f| panic!("{f}")))
        });
    }
    group.finish();
}

criterion_group!(benches, run_latency, compile_time);
criterion_main!(benches);
