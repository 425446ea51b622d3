//! `lamina analyze`: singular values of the weight matrices and, with
//! `--pca`, the principal components of a batch of outputs, plotted.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use super::run::{default_threads, engine_failure};
use super::{fail, report, Reported};
use crate::diagnostics::Diagnostic;
use crate::engine::analyze::{analyze_weights, pca};
use crate::engine::{Model, Options, Weights};
use crate::plot;
use crate::runtime::npy::read_npy;
use crate::tensor::Tensor;

#[derive(Args, Debug)]
#[command(
    after_help = "Definitions, with s1 >= s2 >= ... >= sr >= 0 the r = min(rows, cols) singular \
values of a matrix (a parameter of rank > 2 is taken as [shape[0], the rest]):\n  \
spectral norm     s1, the most the matrix stretches a vector (L2)\n  \
condition number  s1 / sr (inf when sr = 0)\n  \
effective rank    exp(-sum p_i ln p_i), p_i = s_i / sum_j s_j (Roy & Vetterli 2007): 1 to r\n  \
stable rank       sum s_i^2 / s1^2\n\
The Lipschitz bound is the product of the spectral norms of the matrices the model multiplies by \
(matmul operands, marked *): an upper bound on the L2 Lipschitz constant of a chain of those \
linear maps with 1-Lipschitz activations between them (an MLP); it does not hold through \
residual additions, attention or normalisation. See docs/views.md."
)]
pub struct AnalyzeArgs {
    /// The .lam model file.
    model: PathBuf,
    /// Safetensors weight file [default: the file the model names, else <model-stem>.safetensors beside it].
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Also run the model on a batch (--text-file or --input) and project its outputs on their
    /// first K principal components (K >= 2): prints each component's share of the variance
    /// and every example's coordinates, and plots the first two with labels (--plot).
    #[arg(long, value_name = "K")]
    pca: Option<usize>,
    /// Sentences, one a line, for a language model (tokenized into `input_ids`, ...): the batch
    /// for --pca, each labelled by its text.
    #[arg(long, value_name = "FILE", requires = "pca", conflicts_with = "inputs")]
    text_file: Option<PathBuf>,
    /// An input of the --pca batch as NAME=FILE.npy (repeatable), first axis the batch.
    #[arg(long = "input", value_name = "NAME=FILE", value_parser = parse_key_value, requires = "pca")]
    inputs: Vec<(String, String)>,
    /// Point labels for --pca, one a line [default: the sentences of --text-file, else row numbers].
    #[arg(long, value_name = "FILE", requires = "pca")]
    labels: Option<PathBuf>,
    /// The output to analyse with --pca [default: the first].
    #[arg(long, value_name = "OUTPUT", requires = "pca")]
    output: Option<String>,
    /// Where the --pca plot goes [default: <model-stem>.pca.png in the current folder].
    #[arg(long, value_name = "FILE.png", requires = "pca")]
    plot: Option<PathBuf>,
    /// tokenizer.json for --text-file [default: beside the model, else beside the weights].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Longest token sequence for --text-file; longer texts are truncated.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: usize,
    /// Worker threads for the JIT backend's kernels.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=FILE.npy, got `{s}`")),
    }
}

fn lines_of(flag: &str, path: &PathBuf) -> Result<Vec<String>, Diagnostic> {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .map_err(|e| Diagnostic::error(format!("{flag} {}: {e}", path.display())))
}

pub(super) fn analyze(args: &AnalyzeArgs) -> Result<(), Reported> {
    let mut problems = Vec::new();
    if args.threads == 0 {
        problems.push(Diagnostic::error(
            "--threads: at least one worker thread is needed, got 0",
        ));
    }
    if let Some(k) = args.pca {
        if k < 2 {
            problems.push(Diagnostic::error(format!(
                "--pca {k}: at least 2 components are needed for the 2-D plot"
            )));
        }
        if args.text_file.is_none() && args.inputs.is_empty() {
            problems.push(Diagnostic::error(
                "--pca needs a batch to run the model on: --text-file FILE or --input NAME=FILE.npy",
            ));
        }
    }
    let texts = match &args.text_file {
        Some(path) => match lines_of("--text-file", path) {
            Ok(t) if t.is_empty() => {
                problems.push(Diagnostic::error(format!(
                    "--text-file {}: no sentences",
                    path.display()
                )));
                None
            }
            Ok(t) => Some(t),
            Err(d) => {
                problems.push(d);
                None
            }
        },
        None => None,
    };
    let labels = match &args.labels {
        Some(path) => lines_of("--labels", path)
            .map_err(|d| problems.push(d))
            .ok(),
        None => None,
    };
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    for (name, file) in &args.inputs {
        match read_npy(file.as_ref()) {
            Ok(t) => {
                inputs.insert(name.clone(), t);
            }
            Err(e) => problems.push(Diagnostic::error(format!("--input {name}={file}: {e}"))),
        }
    }
    let model = Model::load(&args.model);
    if !problems.is_empty() {
        if let Err(e) = &model {
            report(e.diagnostics(), e.file());
        }
        return Err(fail(problems, None));
    }
    let model = model.map_err(engine_failure)?;
    let options = Options {
        threads: args.threads,
        ..Options::default()
    };
    let weights = || match &args.weights {
        Some(path) => Weights::File(path.clone()),
        None => Weights::Conventional,
    };
    let analysis = analyze_weights(&model, weights(), &options).map_err(engine_failure)?;
    println!(
        "{:<40} {:>16} {:>14} {:>12} {:>10} {:>10}",
        "matrix", "shape", "spectral norm", "condition", "eff. rank", "stable rk"
    );
    for m in &analysis.matrices {
        let shape = m
            .shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<40} {:>16} {:>14.6} {:>12.4e} {:>10.3} {:>10.3}",
            format!("{}{}", m.name, if m.multiplied { " *" } else { "" }),
            shape,
            m.spectral_norm,
            m.condition_number,
            m.effective_rank,
            m.stable_rank
        );
    }
    match analysis.lipschitz_bound {
        Some(bound) => println!(
            "Lipschitz bound (product of the spectral norms of the {} matrices marked *): {bound:.6e}",
            analysis.matrices.iter().filter(|m| m.multiplied).count()
        ),
        None => println!("no matrix is a matmul operand: no Lipschitz bound"),
    }
    let Some(k) = args.pca else {
        return Ok(());
    };

    let session = model
        .clone()
        .compile(weights(), &options)
        .map_err(engine_failure)?;
    if let Some(texts) = &texts {
        let tokenizer = session
            .tokenizer(args.tokenizer.as_deref(), args.max_tokens)
            .map_err(engine_failure)?;
        inputs = session
            .text_inputs(&tokenizer, texts)
            .map_err(engine_failure)?;
    }
    let outputs = session.run(&inputs).map_err(engine_failure)?;
    let wanted = args
        .output
        .clone()
        .unwrap_or_else(|| outputs.first().map(|(n, _)| n.clone()).unwrap_or_default());
    let Some((_, out)) = outputs.iter().find(|(n, _)| *n == wanted) else {
        let known: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
        return Err(fail(
            vec![Diagnostic::error(format!(
                "--output {wanted}: the model has no such output (outputs: {})",
                known.join(", ")
            ))],
            None,
        ));
    };
    let result = pca(out, k).map_err(|e| {
        fail(
            vec![Diagnostic::error(format!(
                "--pca on output `{wanted}`: {e}"
            ))],
            None,
        )
    })?;
    let rows = result.projected.len();
    let labels: Vec<String> = match (labels, &texts) {
        (Some(l), _) if l.len() == rows => l,
        (Some(l), _) => {
            return Err(fail(
                vec![Diagnostic::error(format!(
                    "--labels: {} labels for {rows} rows",
                    l.len()
                ))],
                None,
            ))
        }
        (None, Some(t)) => t.clone(),
        (None, None) => (0..rows).map(|i| i.to_string()).collect(),
    };
    println!(
        "PCA of output `{wanted}` ({rows} rows x {} features): variance share {}",
        result.mean.len(),
        result
            .variance_ratio
            .iter()
            .enumerate()
            .map(|(c, r)| format!("PC{} {:.2}%", c + 1, 100.0 * r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (label, p) in labels.iter().zip(&result.projected) {
        let coords: Vec<String> = p.iter().map(|v| format!("{v:>10.4}")).collect();
        println!("{} {label}", coords.join(" "));
    }
    let points: Vec<(f64, f64)> = result.projected.iter().map(|p| (p[0], p[1])).collect();
    let path = args.plot.clone().unwrap_or_else(|| {
        let stem = model
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        PathBuf::from(format!("{stem}.pca.png"))
    });
    let caption = format!(
        "{}: output `{wanted}` on its first two principal components",
        model.path().display()
    );
    let pct = |c: usize| {
        format!(
            "PC{} ({:.1}% of the variance)",
            c + 1,
            100.0 * result.variance_ratio[c]
        )
    };
    plot::labelled_scatter(&points, &labels, &caption, &pct(0), &pct(1))
        .and_then(|image| plot::write_png(&path, &image))
        .map_err(|e| fail(vec![Diagnostic::error(format!("--plot {e}"))], None))?;
    println!("wrote {}", path.display());
    Ok(())
}
