//! One configuration timed in this process: load, warm up, time each run.

use std::time::{Duration, Instant};

use crate::candle_side::CandleMiniLm;
use crate::cpu::{self, CpuUse};
use crate::inputs::{Files, Tokens, Workload};
use crate::lamina_side::{run_jit, LaminaMiniLm};
use crate::BenchError;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Engine {
    /// candle-transformers' BertModel (gemm crate matmuls, rayon threads).
    Candle,
    /// lamina's Cranelift JIT (`compile::compile`, what `lamina run` uses).
    Jit,
    /// lamina's reference interpreter (single-threaded).
    Interp,
}

impl Engine {
    pub fn label(self) -> &'static str {
        match self {
            Engine::Candle => "candle",
            Engine::Jit => "lamina JIT",
            Engine::Interp => "lamina interpreter",
        }
    }
}

/// What one process measured for one configuration.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    pub engine: Engine,
    pub threads: usize,
    pub workload: Workload,
    pub texts: usize,
    pub tokens: usize,
    pub warmup: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Median over runs of the process CPU time (all threads) one run took:
    /// less disturbed than wall time when other processes take the CPU
    /// away, and, single-threaded, what the wall time would be alone.
    pub median_cpu_ms: f64,
    /// The thread count candle reports it will use (`get_num_threads`) and
    /// the size of rayon's global pool it runs on; None for lamina.
    pub candle_threads: Option<(usize, usize)>,
    pub cpu: CpuUse,
}

pub struct Setup {
    pub engine: Engine,
    pub threads: usize,
    pub workload: Workload,
    pub warmup: usize,
    pub runs: usize,
}

/// Must run before anything starts a thread: candle sizes its rayon pool
/// and its elementwise barrier pool from these variables.
pub fn pin_thread_count(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
}

pub fn measure(files: &Files, setup: &Setup) -> Result<Measurement, BenchError> {
    if setup.threads == 0 || setup.runs == 0 {
        return Err(BenchError::Args(
            "threads and runs must be at least 1".into(),
        ));
    }
    if setup.engine == Engine::Interp && setup.threads != 1 {
        return Err(BenchError::Args(
            "the interpreter is single-threaded: use --threads 1".into(),
        ));
    }
    let texts = setup.workload.pick(&files.sentences()?)?;
    let tokens = Tokens::encode(&files.tokenizer, &texts)?;

    let (runs, cpu, candle_threads) = match setup.engine {
        Engine::Candle => {
            let model = CandleMiniLm::load(&files.weights)?;
            let batch = model.batch(&tokens)?;
            let (runs, cpu) = time_runs(setup, || model.embed(&batch).map(drop))?;
            let reported = (
                candle_core::utils::get_num_threads(),
                rayon::current_num_threads(),
            );
            (runs, cpu, Some(reported))
        }
        Engine::Jit => {
            let lamina = LaminaMiniLm::load(files)?;
            let model = lamina.jit(setup.threads)?;
            let inputs = tokens.lamina_inputs();
            let (runs, cpu) = time_runs(setup, || run_jit(&model, &inputs).map(drop))?;
            (runs, cpu, None)
        }
        Engine::Interp => {
            let lamina = LaminaMiniLm::load(files)?;
            let inputs = tokens.lamina_inputs();
            let (runs, cpu) = time_runs(setup, || lamina.interpret(&inputs).map(drop))?;
            (runs, cpu, None)
        }
    };

    let mut ms: Vec<f64> = runs.iter().map(|r| r.wall.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mut cpu_ms: Vec<f64> = runs.iter().map(|r| r.cpu_ns as f64 / 1e6).collect();
    cpu_ms.sort_by(f64::total_cmp);
    Ok(Measurement {
        engine: setup.engine,
        threads: setup.threads,
        workload: setup.workload,
        texts: tokens.texts,
        tokens: tokens.tokens,
        warmup: setup.warmup,
        runs: setup.runs,
        median_ms: median(&ms),
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        median_cpu_ms: median(&cpu_ms),
        candle_threads,
        cpu,
    })
}

/// One timed run: wall time and process CPU time.
struct Run {
    wall: Duration,
    cpu_ns: u128,
}

/// Warm-up runs (plans, kernels, caches, thread pools), then each timed run
/// on its own; CPU use is taken over the timed runs only.
fn time_runs(
    setup: &Setup,
    mut run: impl FnMut() -> Result<(), BenchError>,
) -> Result<(Vec<Run>, CpuUse), BenchError> {
    for _ in 0..setup.warmup {
        run()?;
    }
    let before = cpu::snapshot();
    let start = Instant::now();
    let mut runs = Vec::with_capacity(setup.runs);
    for _ in 0..setup.runs {
        let cpu_start = cpu::process_cpu_ns();
        let t = Instant::now();
        run()?;
        let wall = t.elapsed();
        runs.push(Run {
            wall,
            cpu_ns: cpu::process_cpu_ns().saturating_sub(cpu_start),
        });
    }
    let cpu = cpu::since(&before, start.elapsed());
    Ok((runs, cpu))
}

/// The median of sorted values (the mean of the middle two for even counts).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
        assert!(median(&[]).is_nan());
    }
}
