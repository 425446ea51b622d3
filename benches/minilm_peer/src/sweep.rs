//! Every configuration in its own process, several rounds in rotating
//! order (the machine is shared and noisy), then medians across processes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cpu;
use crate::inputs::Workload;
use crate::measure::{median, Engine, Measurement};
use crate::BenchError;

pub struct SweepOptions {
    pub rounds: usize,
    /// Before each process, wait up to this long for other processes to
    /// leave the cores the configuration uses idle.
    pub max_wait: Duration,
    /// Measure again (up to `retries` times) when other processes took more
    /// than this many cores beyond those the configuration leaves idle
    /// during the timed runs; the quietest attempt counts.
    pub max_others: f64,
    pub retries: usize,
    pub runs: usize,
    pub warmup: usize,
    pub interp_runs: usize,
    pub cache: Option<PathBuf>,
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Config {
    workload: usize,
    threads: usize,
    engine: usize,
}

/// The benchmark machine's cores (2 vCPUs).
const MACHINE_CORES: usize = 2;

const ENGINES: [Engine; 3] = [Engine::Candle, Engine::Jit, Engine::Interp];

fn configs() -> Vec<Config> {
    let mut all = Vec::new();
    for workload in 0..Workload::ALL.len() {
        for threads in [1, 2] {
            for (engine, &kind) in ENGINES.iter().enumerate() {
                if kind == Engine::Interp && threads != 1 {
                    continue;
                }
                all.push(Config {
                    workload,
                    threads,
                    engine,
                });
            }
        }
    }
    all
}

fn arg_value<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn run_one(exe: &Path, config: Config, options: &SweepOptions) -> Result<Measurement, BenchError> {
    let engine = ENGINES[config.engine];
    let (runs, warmup) = match engine {
        Engine::Interp => (options.interp_runs, 1),
        Engine::Candle | Engine::Jit => (options.runs, options.warmup),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("measure")
        .args(["--engine", &arg_value(engine)])
        .args(["--threads", &config.threads.to_string()])
        .args(["--workload", &arg_value(Workload::ALL[config.workload])])
        .args(["--runs", &runs.to_string()])
        .args(["--warmup", &warmup.to_string()]);
    if let Some(cache) = &options.cache {
        cmd.arg("--cache").arg(cache);
    }
    let output = cmd.output().map_err(|source| BenchError::Io {
        path: exe.to_path_buf(),
        source,
    })?;
    if !output.status.success() {
        return Err(BenchError::Child(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| BenchError::Child(format!("{e}: {line}")))
}

/// One process's measurement as the sweep log keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SweepRecord {
    round: usize,
    attempt: usize,
    waited_s: f64,
    measurement: Measurement,
}

/// Waits (up to `max_wait`) until other processes leave `threads` cores
/// idle (within a quarter of a core); returns how long it waited.
fn wait_for_quiet(threads: usize, max_wait: Duration) -> Duration {
    let allowed = MACHINE_CORES.saturating_sub(threads) as f64 + 0.25;
    let start = Instant::now();
    while start.elapsed() < max_wait {
        if cpu::machine_load(Duration::from_millis(500)) < allowed {
            break;
        }
    }
    start.elapsed()
}

pub fn sweep(options: &SweepOptions) -> Result<(), BenchError> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Io {
        path: PathBuf::from("current_exe"),
        source,
    })?;
    let all = configs();
    let mut out = std::fs::File::create(&options.out).map_err(|source| BenchError::Io {
        path: options.out.clone(),
        source,
    })?;
    let mut results: BTreeMap<Config, Vec<Measurement>> = BTreeMap::new();
    for round in 0..options.rounds {
        // Rotate the order so no configuration always follows the same one.
        let shift = (round * all.len()) / options.rounds.max(1);
        for i in 0..all.len() {
            let config = all[(i + shift) % all.len()];
            let mut quietest: Option<Measurement> = None;
            for attempt in 0..=options.retries {
                let waited = wait_for_quiet(config.threads, options.max_wait);
                let m = run_one(&exe, config, options)?;
                eprintln!(
                    "round {} {:>18} {} thread(s) {:>16}: median {:8.2} ms (busy threads {}, cpu/wall {:.2}, others {:.2} cores, waited {:.0} s)",
                    round + 1,
                    m.engine.label(),
                    m.threads,
                    m.workload.label(),
                    m.median_ms,
                    m.cpu.busy_threads,
                    m.cpu.cpu_per_wall,
                    m.cpu.others_cores,
                    waited.as_secs_f64()
                );
                let record = SweepRecord {
                    round,
                    attempt,
                    waited_s: waited.as_secs_f64(),
                    measurement: m.clone(),
                };
                let json =
                    serde_json::to_string(&record).map_err(|e| BenchError::Child(e.to_string()))?;
                writeln!(out, "{json}").map_err(|source| BenchError::Io {
                    path: options.out.clone(),
                    source,
                })?;
                let quiet = is_quiet(&m, options.max_others);
                if quietest
                    .as_ref()
                    .is_none_or(|q| m.cpu.others_cores < q.cpu.others_cores)
                {
                    quietest = Some(m);
                }
                if quiet {
                    break;
                }
            }
            if let Some(m) = quietest.filter(|m| is_quiet(m, options.max_others)) {
                results.entry(config).or_default().push(m);
            }
        }
    }
    print!("{}", render(&results));
    Ok(())
}

/// Did the measurement have the cores it asked for? The machine has two:
/// a one-thread run leaves one to other processes without losing anything.
fn is_quiet(m: &Measurement, max_others: f64) -> bool {
    let spare_cores = MACHINE_CORES.saturating_sub(m.threads) as f64;
    m.cpu.others_cores <= spare_cores + max_others
}

fn config_of(m: &Measurement) -> Option<Config> {
    Some(Config {
        workload: Workload::ALL.iter().position(|&w| w == m.workload)?,
        threads: m.threads,
        engine: ENGINES.iter().position(|&e| e == m.engine)?,
    })
}

/// The tables again from a sweep's log, keeping the quiet measurements.
pub fn report(log: &Path, max_others: f64) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(log).map_err(|source| BenchError::Io {
        path: log.to_path_buf(),
        source,
    })?;
    let mut results: BTreeMap<Config, Vec<Measurement>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: SweepRecord =
            serde_json::from_str(line).map_err(|e| BenchError::Child(format!("{e}: {line}")))?;
        let m = record.measurement;
        if let (true, Some(config)) = (is_quiet(&m, max_others), config_of(&m)) {
            results.entry(config).or_default().push(m);
        }
    }
    print!("{}", render(&results));
    Ok(())
}

/// Median over processes of each process's median, and their spread.
struct Summary {
    median_ms: f64,
    low_ms: f64,
    high_ms: f64,
    cpu_ms: f64,
    busy_threads: usize,
    cpu_per_wall: f64,
    others_cores: f64,
}

fn summarize(ms: &[Measurement]) -> Summary {
    let mut medians: Vec<f64> = ms.iter().map(|m| m.median_ms).collect();
    medians.sort_by(f64::total_cmp);
    let mut cpu_ms: Vec<f64> = ms.iter().map(|m| m.median_cpu_ms).collect();
    cpu_ms.sort_by(f64::total_cmp);
    let mut busy: Vec<usize> = ms.iter().map(|m| m.cpu.busy_threads).collect();
    busy.sort_unstable();
    let mut cpu: Vec<f64> = ms.iter().map(|m| m.cpu.cpu_per_wall).collect();
    cpu.sort_by(f64::total_cmp);
    let mut others: Vec<f64> = ms.iter().map(|m| m.cpu.others_cores).collect();
    others.sort_by(f64::total_cmp);
    Summary {
        median_ms: median(&medians),
        low_ms: medians.first().copied().unwrap_or(f64::NAN),
        high_ms: medians.last().copied().unwrap_or(f64::NAN),
        cpu_ms: median(&cpu_ms),
        busy_threads: busy.get(busy.len() / 2).copied().unwrap_or(0),
        cpu_per_wall: median(&cpu),
        others_cores: median(&others),
    }
}

fn render(results: &BTreeMap<Config, Vec<Measurement>>) -> String {
    let get = |workload, threads, engine| {
        results
            .get(&Config {
                workload,
                threads,
                engine,
            })
            .filter(|v| !v.is_empty())
    };
    let cell = |s: &Summary| format!("{:.2} ({:.2}–{:.2})", s.median_ms, s.low_ms, s.high_ms);
    let mut text = String::new();
    text.push_str(
        "| workload | tokens | threads | candle ms | lamina JIT ms | JIT / candle | JIT / candle, CPU time | interpreter ms | interpreter / candle | processes (candle, JIT) |\n",
    );
    text.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (w, workload) in Workload::ALL.iter().enumerate() {
        for threads in [1, 2] {
            let (Some(candle), Some(jit)) = (get(w, threads, 0), get(w, threads, 1)) else {
                continue;
            };
            let (c, j) = (summarize(candle), summarize(jit));
            let interp = get(w, threads, 2).map(|v| summarize(v));
            let (interp_cell, interp_ratio) = match &interp {
                Some(i) => (cell(i), format!("{:.1}", i.median_ms / c.median_ms)),
                None => ("–".to_string(), "–".to_string()),
            };
            text.push_str(&format!(
                "| {} | {} x {} | {} | {} | {} | **{:.2}** | {:.2} | {} | {} | {}, {} |\n",
                workload.label(),
                candle[0].texts,
                candle[0].tokens,
                threads,
                cell(&c),
                cell(&j),
                j.median_ms / c.median_ms,
                j.cpu_ms / c.cpu_ms,
                interp_cell,
                interp_ratio,
                candle.len(),
                jit.len()
            ));
        }
    }
    text.push_str("\nThreads actually used over the timed runs (median over processes):\n\n");
    text.push_str("| engine | threads asked | workload | busy threads | CPU time / wall time | CPU ms per run | other processes, cores | candle get_num_threads, rayon pool |\n");
    text.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (config, ms) in results {
        let s = summarize(ms);
        let reported = ms[0]
            .candle_threads
            .map_or("–".to_string(), |(a, b)| format!("{a}, {b}"));
        text.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |\n",
            ENGINES[config.engine].label(),
            config.threads,
            Workload::ALL[config.workload].label(),
            s.busy_threads,
            s.cpu_per_wall,
            s.cpu_ms,
            s.others_cores,
            reported
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuUse;

    fn measured(threads: usize, others_cores: f64) -> Measurement {
        Measurement {
            engine: Engine::Jit,
            threads,
            workload: Workload::Twelve,
            texts: 12,
            tokens: 37,
            warmup: 1,
            runs: 1,
            median_ms: 1.0,
            min_ms: 1.0,
            max_ms: 1.0,
            median_cpu_ms: 1.0,
            candle_threads: None,
            cpu: CpuUse {
                cpu_per_wall: 1.0,
                busy_threads: threads,
                live_threads: threads,
                others_cores,
            },
        }
    }

    #[test]
    fn a_one_thread_run_may_share_the_machine_but_a_two_thread_run_may_not() {
        assert!(is_quiet(&measured(1, 1.0), 0.3));
        assert!(!is_quiet(&measured(1, 1.5), 0.3));
        assert!(is_quiet(&measured(2, 0.2), 0.3));
        assert!(!is_quiet(&measured(2, 0.6), 0.3));
    }

    #[test]
    fn every_workload_runs_candle_and_the_jit_on_one_and_two_threads() {
        let all = configs();
        // 3 workloads x (candle, JIT on 1 and 2 threads + interpreter on 1).
        assert_eq!(all.len(), 15);
        assert!(all
            .iter()
            .all(|c| ENGINES[c.engine] != Engine::Interp || c.threads == 1));
    }
}
