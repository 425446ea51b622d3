//! all-MiniLM-L6-v2 sentence embeddings: lamina against candle-transformers'
//! BERT on the same checkpoint and the same token ids. See README.md.

mod candle_side;
mod check;
mod cpu;
mod gemm;
mod inputs;
mod lamina_side;
mod measure;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use inputs::{Files, Workload};
use measure::{Engine, Setup};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0} is missing (run models/minilm/fetch.sh, or pass --cache / set LAMINA_CACHE)")]
    MissingFile(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("need at least 12 sentences in testdata/sentences.txt, found {0}")]
    TooFewSentences(usize),
    #[error("unexpected shape or dtype: {0}")]
    Shape(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("lamina: {0}")]
    Lamina(String),
    #[error(transparent)]
    Text(#[from] lamina::runtime::text::TextError),
    #[error(transparent)]
    Weights(#[from] lamina::runtime::WeightError),
    #[error(transparent)]
    Npy(#[from] lamina::runtime::NpyError),
    #[error("{0}")]
    Args(String),
    #[error("a measuring process failed: {0}")]
    Child(String),
    #[error("the engines disagree: {0}")]
    Disagree(String),
}

#[derive(Parser)]
#[command(about = "all-MiniLM-L6-v2: lamina against candle-transformers' BERT")]
struct Cli {
    /// Folder holding model.safetensors and tokenizer.json (default:
    /// $LAMINA_CACHE, else models/minilm/cache of this checkout).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare candle's embeddings with lamina's (JIT, interpreter) and the
    /// numpy reference: max abs difference and min cosine.
    Check,
    /// Time one configuration in this process; prints one JSON line.
    Measure {
        #[arg(long, value_enum)]
        engine: Engine,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, value_enum)]
        workload: Workload,
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
    /// The model's linear-layer matrix products alone: lamina's GEMM kernel
    /// against the gemm crate candle uses (single-threaded: CPU time).
    Gemm {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// The tables again from a sweep's JSON-lines log.
    Report {
        log: PathBuf,
        #[arg(long, default_value_t = 0.3)]
        max_others: f64,
    },
    /// Every configuration, each in its own process, `rounds` times; prints
    /// the markdown tables of medians.
    Sweep {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        interp_runs: usize,
        /// Seconds to wait for a quiet machine before each process.
        #[arg(long, default_value_t = 60.0)]
        max_wait: f64,
        /// Retry a measurement when other processes took more cores than this.
        #[arg(long, default_value_t = 0.3)]
        max_others: f64,
        #[arg(long, default_value_t = 2)]
        retries: usize,
        /// Every process's measurement, one JSON object a line.
        #[arg(long, default_value = "sweep.jsonl")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Measure { threads, .. } | Command::Gemm { threads, .. } => {
            measure::pin_thread_count(*threads)
        }
        Command::Check | Command::Sweep { .. } | Command::Report { .. } => {}
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), BenchError> {
    match cli.command {
        Command::Gemm { threads, runs } => return gemm::compare(threads, runs),
        Command::Report { log, max_others } => return sweep::report(&log, max_others),
        Command::Check | Command::Measure { .. } | Command::Sweep { .. } => {}
    }
    let files = Files::locate(cli.cache.as_deref())?;
    match cli.command {
        Command::Gemm { .. } | Command::Report { .. } => unreachable!("handled above"),
        Command::Check => check::check(&files),
        Command::Measure {
            engine,
            threads,
            workload,
            runs,
            warmup,
        } => {
            let m = measure::measure(
                &files,
                &Setup {
                    engine,
                    threads,
                    workload,
                    warmup,
                    runs,
                },
            )?;
            let json = serde_json::to_string(&m).map_err(|e| BenchError::Args(e.to_string()))?;
            println!("{json}");
            Ok(())
        }
        Command::Sweep {
            rounds,
            runs,
            warmup,
            interp_runs,
            max_wait,
            max_others,
            retries,
            out,
        } => sweep::sweep(&sweep::SweepOptions {
            rounds,
            max_wait: std::time::Duration::from_secs_f64(max_wait.max(0.0)),
            max_others,
            retries,
            runs,
            warmup,
            interp_runs,
            cache: cli.cache,
            out,
        }),
    }
}
