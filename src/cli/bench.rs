//! `lamina bench`: the flags, a progress bar and the report around
//! [`crate::bench::Workload`], which holds the setup, the timing and the
//! flop count (shared with the criterion benches in `benches/`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::run::{default_threads, option_diagnostic, parse_binding};
use super::{fail, Reported};
use crate::bench::{measure, BenchFailure, BenchSetup, NodeProfile, Schedule, Workload};
use crate::diagnostics::Diagnostic;
use crate::engine::{Backend, Options};
use crate::ir::Bindings;
use crate::runtime::exec::Banding;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The .lam model file.
    model: PathBuf,
    /// Bind the first input's first dim (a symbol, usually `batch`) to N.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Fix a symbolic dim, as SYM=N (repeatable); every symbol of every input must be fixed,
    /// since the inputs are generated.
    #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
    binds: Vec<(String, usize)>,
    /// Safetensors weight file [default: the file the model names, else <model-stem>.safetensors
    /// beside it, else none: parameters then need initializers].
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Worker threads for the JIT backend's kernels.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,
    /// Most memory the model may use (parameters, inputs, intermediate values), e.g. 512M or 8G
    /// [default: 3/4 of the RAM this process may use: physical RAM or its cgroup limit].
    #[arg(long, value_name = "SIZE", value_parser = crate::runtime::budget::parse_size)]
    max_memory: Option<usize>,
    /// Time at least this many runs (after the warm-up).
    #[arg(long, value_name = "R", default_value_t = 20)]
    runs: usize,
    /// ... and keep timing until this many seconds have passed.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    min_time: f64,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = BenchBackend::Jit)]
    backend: BenchBackend,
    /// Seed for the generated inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object to stdout (compile_ms, compile_cpu_ms, latency_us_median,
    /// latency_us_p90, gflops, arena_bytes and details) and no progress bar.
    #[arg(long)]
    json: bool,
    /// Also time every node of the optimised graph alone (JIT backend): each compiled as a
    /// one-node model on the same shapes and weights, with GFLOP/s for matrix products and
    /// GB/s of operand and result traffic for the rest. Shows where the time of a run goes.
    #[arg(long)]
    profile: bool,
    /// Kernel tier: avx512, avx2 or baseline (Cranelift f32x4) [default: $LAMINA_ISA, else the
    /// best the CPU runs]. Can lower the tier, never raise it past the CPU's.
    #[arg(long, value_name = "TIER")]
    isa: Option<String>,
    /// When a convolution and the depthwise convolution reading it run as one step, a band of
    /// rows at a time, so that the convolution's output stays in cache: `auto` (when one image
    /// of it is larger than half the L2 cache), `never`, or a number of depthwise output rows
    /// per band for every pair that can.
    #[arg(long, value_name = "auto|never|ROWS", default_value = "auto", value_parser = parse_banding)]
    banding: Banding,
}

fn parse_banding(text: &str) -> Result<Banding, String> {
    match text {
        "auto" => Ok(Banding::Auto),
        "never" => Ok(Banding::Never),
        rows => match rows.parse::<usize>() {
            Ok(rows) if rows > 0 => Ok(Banding::Rows(rows)),
            _ => Err(format!(
                "expected auto, never or a positive number of rows, got `{rows}`"
            )),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchBackend {
    /// Optimised graph, native kernels JIT-compiled with Cranelift.
    Jit,
    /// The reference interpreter (for comparison; slow).
    Interp,
}

impl From<BenchBackend> for Backend {
    fn from(b: BenchBackend) -> Backend {
        match b {
            BenchBackend::Jit => Backend::Jit,
            BenchBackend::Interp => Backend::Interp,
        }
    }
}

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix("timing");
    bar
}

fn bindings_text(bindings: &Bindings) -> String {
    bindings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn bench(args: &BenchArgs) -> Result<(), Reported> {
    let failed = |f: BenchFailure| fail(f.diagnostics, f.source.as_ref());
    let threads = Options {
        threads: args.threads,
        ..Options::default()
    };
    let mut problems: Vec<Diagnostic> = threads.check().iter().map(option_diagnostic).collect();
    if !(args.min_time.is_finite() && args.min_time >= 0.0) {
        problems.push(Diagnostic::error(format!(
            "--min-time must be a non-negative number of seconds, got {}",
            args.min_time
        )));
    }
    if args.profile && args.backend != BenchBackend::Jit {
        problems.push(Diagnostic::error(
            "--profile times the JIT backend's nodes; drop --backend interp",
        ));
    }
    if let Err(e) = super::resolve_isa(args.isa.as_deref()) {
        problems.push(Diagnostic::error(e));
    }
    if !problems.is_empty() {
        return Err(fail(problems, None));
    }
    let setup = BenchSetup {
        model: args.model.clone(),
        weights: args.weights.clone(),
        batch: args.batch,
        binds: args.binds.clone(),
        threads: args.threads,
        backend: args.backend.into(),
        seed: args.seed,
        keep_params: args.profile,
        isa: super::resolve_isa(args.isa.as_deref()).ok(),
        max_memory: args.max_memory,
        banding: args.banding,
    };
    let mut workload = Workload::prepare(&setup).map_err(failed)?;
    let schedule = Schedule {
        warmup_runs: 3,
        warmup_time: Duration::from_secs_f64((args.min_time / 5.0).min(0.5)),
        min_runs: args.runs.max(1),
        min_time: Duration::from_secs_f64(args.min_time),
        max_runs: 1_000_000,
    };
    let bar = progress_bar(args.json);
    bar.set_message("warming up");
    let latencies = measure(&mut workload, &schedule, |fraction, runs| {
        bar.set_position((fraction * 1000.0) as u64);
        bar.set_message(format!("{runs} runs"));
    })
    .map_err(failed)?;
    let profile = if args.profile {
        bar.set_message("profiling nodes");
        let per_node = Schedule {
            warmup_runs: 2,
            warmup_time: Duration::from_secs_f64((args.min_time / 20.0).min(0.05)),
            min_runs: 10,
            min_time: Duration::from_secs_f64((args.min_time / 4.0).min(0.25)),
            max_runs: 100_000,
        };
        Some(workload.profile(&per_node).map_err(failed)?)
    } else {
        None
    };
    bar.finish_and_clear();

    let median_us = latencies.median_us();
    let gflops = workload.flops as f64 / (median_us * 1e3);
    let compile = workload.compile;
    if args.json {
        let plan = workload.plan;
        let object = json!({
            "model": args.model.display().to_string(),
            "backend": workload.backend.name(),
            "threads": workload.threads,
            "isa": workload.isa.map(|i| i.name()),
            "bindings": workload.bindings,
            "compile_ms": compile.total_ms(),
            "compile_cpu_ms": compile.cpu_ms,
            "latency_us_median": median_us,
            "latency_us_p90": latencies.percentile_us(90.0),
            "latency_us_min": latencies.min_us(),
            "latency_us_mean": latencies.mean_us(),
            "cpu_us_per_run": latencies.cpu_us_per_run,
            "runs": latencies.runs(),
            "gflops": gflops,
            "flops_per_run": workload.flops,
            "arena_bytes": plan.map(|p| p.arena_bytes),
            "steps": plan.map(|p| p.steps),
            "native_steps": plan.map(|p| p.native_steps),
            "kernels": plan.map(|p| p.kernels),
            "by_sample": plan.map(|p| p.by_sample),
            "compile_breakdown_ms": {
                "load": compile.load_ms,
                "params": compile.params_ms,
                "passes": compile.passes_ms,
                "packing": compile.packing_ms,
                "plan": compile.plan_ms,
                "kernels": compile.kernels_ms,
            },
            "profile": profile.as_ref().map(|nodes| nodes.iter().map(|n| json!({
                "node": n.label,
                "op": n.op,
                "latency_us_median": n.latency_us_median,
                "flops": n.flops,
                "bytes": n.bytes,
            })).collect::<Vec<_>>()),
        });
        println!("{object}");
        return Ok(());
    }
    println!(
        "{} ({}), backend {}{}, {} thread(s)",
        args.model.display(),
        bindings_text(&workload.bindings),
        workload.backend.name(),
        workload
            .isa
            .map_or(String::new(), |i| format!(" ({i} kernels)")),
        workload.threads
    );
    println!(
        "compile:    {:.2} ms (load {:.2}, params {:.2}, passes {:.2}, packing {:.2}, plan {:.2}, kernels {:.2}){}",
        compile.total_ms(),
        compile.load_ms,
        compile.params_ms,
        compile.passes_ms,
        compile.packing_ms,
        compile.plan_ms,
        compile.kernels_ms,
        compile
            .cpu_ms
            .map_or(String::new(), |cpu| format!(", on-CPU {cpu:.2} ms"))
    );
    println!(
        "latency:    median {:.1} us, p90 {:.1} us, min {:.1} us, mean {:.1} us ({} runs)",
        median_us,
        latencies.percentile_us(90.0),
        latencies.min_us(),
        latencies.mean_us(),
        latencies.runs()
    );
    if let Some(cpu) = latencies.cpu_us_per_run {
        println!(
            "on-CPU:     {cpu:.1} us per run (all threads; steadier than wall time on a busy machine)"
        );
    }
    println!(
        "throughput: {:.2} GFLOP/s ({:.3} MFLOP per run in matrix products)",
        gflops,
        workload.flops as f64 / 1e6
    );
    if let Some(plan) = workload.plan {
        println!(
            "memory:     arena {} bytes ({:.2} MiB), {} steps ({} native), {} kernels{}",
            plan.arena_bytes,
            plan.arena_bytes as f64 / (1024.0 * 1024.0),
            plan.steps,
            plan.native_steps,
            plan.kernels,
            if plan.by_sample {
                "; one sample's plan: the batch runs sample by sample (one per thread)"
            } else {
                ""
            }
        );
    }
    if let Some(nodes) = &profile {
        print!("{}", profile_table(nodes, median_us, workload.threads));
    }
    Ok(())
}

/// The per-node profile as text: time, share of the summed node times,
/// and a rate (GFLOP/s and flop/cycle per core for products, GB/s of
/// traffic otherwise).
fn profile_table(nodes: &[NodeProfile], run_median_us: f64, threads: usize) -> String {
    let total: f64 = nodes.iter().map(|n| n.latency_us_median).sum();
    let clock_ghz = crate::bench::clock_ghz();
    let peak = crate::codegen::Target::detected()
        .features
        .peak_flops_per_cycle();
    let mut text = format!(
        "nodes timed alone (sum {total:.1} us vs {run_median_us:.1} us for a whole run; \
         flop/cycle per core at {clock_ghz:.2} GHz, peak {peak:.0}):\n"
    );
    for n in nodes {
        let rate = if n.flops > 0 {
            let gflops = n.flops as f64 / (n.latency_us_median * 1e3);
            let per_cycle = gflops / clock_ghz / threads.max(1) as f64;
            format!(
                "{gflops:7.2} GFLOP/s {per_cycle:5.1} flop/cycle ({:3.0}% of peak)",
                100.0 * per_cycle / peak
            )
        } else {
            format!(
                "{:7.2} GB/s   ",
                n.bytes as f64 / (n.latency_us_median * 1e3)
            )
        };
        text.push_str(&format!(
            "  {:10.1} us {:5.1}%  {rate}  {}\n",
            n.latency_us_median,
            100.0 * n.latency_us_median / total.max(f64::MIN_POSITIVE),
            n.label
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_parser_rejects_malformed() {
        assert_eq!(parse_binding("m=64"), Ok(("m".to_string(), 64)));
        assert!(parse_binding("m=").is_err());
        assert!(parse_binding("=3").is_err());
        assert!(parse_binding("m=-1").is_err());
    }
}
