//! The `lamina` command line. Each subcommand is a thin layer over the
//! library; user errors become rendered diagnostics and exit code 1.

mod analyze;
pub mod bench;
mod import;
mod inspect;
mod run;
mod saliency;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diagnostics::{render_all, Diagnostic, SourceFile};

#[derive(Parser, Debug)]
#[command(
    name = "lamina",
    version,
    about = "A declarative model-graph compiler: .lam model files to optimised, JIT-compiled native code",
    long_about = "A declarative model-graph compiler.\n\n\
        Write a neural network as a short .lam text file, check it, look at its graph, and run it on\n\
        real weights (safetensors) and inputs (.npy). See docs/language.md for the language.\n\n\
        Examples:\n  lamina check models/digits/digits.lam\n  lamina graph models/digits/digits.lam\n  \
        lamina run models/digits/digits.lam"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and type-check a model; exit 0 when it is well-formed and well-shaped.
    Check {
        /// The .lam model file.
        model: PathBuf,
    },
    /// Print a model's inputs, parameters and outputs.
    Info {
        model: PathBuf,
        /// Print one JSON object: {"inputs":[{"name","dtype","shape"}],"params":[..],"outputs":[..]}.
        /// Symbolic dims are strings.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's graph, one line a node (or Graphviz DOT), optionally optimised first.
    Graph {
        model: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
        /// Optimise first: `all`, or passes to run in the given order, comma-separated, repeated
        /// until nothing changes (dce, cse, fold-batch-norm, channels-last, const-fold, simplify,
        /// recognize, transpose-matmul, fuse-linear, fuse-conv, scale-into-linear,
        /// fuse-elementwise).
        #[arg(long, value_name = "all|PASS,...")]
        passes: Option<String>,
        /// Print node counts before and after and what each pass changed, to stderr
        /// (implies --passes all when no passes are given).
        #[arg(long)]
        stats: bool,
        /// Stop after N rewrites, to bisect a bad one (implies --passes all when no passes are given).
        #[arg(long, value_name = "N")]
        max_steps: Option<usize>,
        /// Append the backward graph: the gradient of this scalar f32 output, as outputs
        /// `grad.NAME` (before any --passes run on the whole graph).
        #[arg(long, value_name = "OUTPUT")]
        grad: Option<String>,
        /// What --grad differentiates with respect to: `params` (every f32 parameter), `inputs`
        /// (every f32 input), or parameter and input names, comma-separated.
        #[arg(
            long,
            value_name = "params|inputs|NAME,...",
            default_value = "params",
            requires = "grad"
        )]
        wrt: String,
    },
    /// Run a model on weights and inputs.
    ///
    /// What is not given is found beside the model file: `<model-stem>.safetensors` (or the file the
    /// model names with `weights "..."`) for the weights, `NAME.npy` for input NAME, and `labels.npy`
    /// for labels.
    Run(run::RunArgs),
    /// Measure compile time, run latency, GFLOP/s and arena size on generated inputs.
    Bench(bench::BenchArgs),
    /// Train a model's parameters on examples and integer labels (.npy): one JIT-compiled
    /// program per step (forward, backward, optimiser update). Writes the weights, a checkpoint
    /// after every epoch, and a CSV log; Ctrl-C saves and stops. See docs/training.md.
    Train(train::TrainArgs),
    /// Write a saliency map: a PNG heat map of |d score_K / d input| over one example (a row of
    /// an .npy file or a photo), K the predicted class unless --class is given: which input
    /// values move the class score most. The gradient comes from the model's own backward
    /// graph (autodiff), JIT-compiled. See docs/views.md.
    Saliency(saliency::SaliencyArgs),
    /// Linear-algebra views: for every weight matrix its spectral norm, condition number,
    /// effective rank and stable rank (definitions below), the product of spectral norms as a
    /// Lipschitz bound; with --pca K, a batch of outputs on its first K principal components,
    /// plotted in 2-D with labels. SVD by faer, in f64.
    Analyze(analyze::AnalyzeArgs),
    /// Translate an ONNX model into a .lam file and a safetensors file of its initializers.
    ///
    /// Writes MODEL.lam (or --output) and `<stem>.safetensors` beside it; run the result with
    /// `lamina run`. ONNX value names become lamina names, named dims stay symbols. An op lamina
    /// cannot express is reported with the nodes that use it, and nothing is written. The ops
    /// imported and how they map: docs/onnx.md.
    Import(import::ImportArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
}

/// A failure already explained to the user.
#[derive(Debug)]
pub struct Reported;

/// Prints diagnostics about `file` to stderr.
pub(crate) fn report(diags: &[Diagnostic], file: Option<&SourceFile>) {
    eprint!("{}", render_all(diags, file));
}

/// The kernel tier `--isa` asks for, else the one `LAMINA_ISA` asks for,
/// else the best the CPU runs; an unknown name or a tier above the CPU's
/// is an error (exit 1).
pub(crate) fn resolve_isa(flag: Option<&str>) -> Result<crate::codegen::Isa, String> {
    use crate::codegen::{Isa, Target};
    let target = match flag {
        Some(name) => name
            .parse::<Isa>()
            .and_then(|isa| Target::detected().with_isa(isa)),
        None => Target::from_env(),
    };
    target.map(|t| t.isa).map_err(|e| match flag {
        Some(_) => format!("--isa: {e}"),
        None => format!("{}: {e}", crate::codegen::target::ISA_ENV),
    })
}

/// Prints diagnostics that stop the command.
pub(crate) fn fail(diags: Vec<Diagnostic>, file: Option<&SourceFile>) -> Reported {
    report(&diags, file);
    Reported
}

/// The `lamina` binary's entry point.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are successes; every usage error is a user error (1).
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Check { model } => inspect::check(&model),
        Command::Info { model, json } => inspect::info(&model, json),
        Command::Graph {
            model,
            format,
            passes,
            stats,
            max_steps,
            grad,
            wrt,
        } => inspect::graph(
            &model,
            format,
            grad.map(|output| (output, crate::autodiff::Wrt::parse(&wrt))),
            inspect::GraphPasses {
                passes,
                stats,
                max_steps,
            },
        ),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Train(args) => train::train(&args),
        Command::Saliency(args) => saliency::saliency(&args),
        Command::Analyze(args) => analyze::analyze(&args),
        Command::Import(args) => import::import(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Reported) => ExitCode::from(1),
    }
}
