//! `lamina run`: weights and inputs found by flag or by convention, the
//! model executed, outputs printed or written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::inspect::load;
use super::{fail, report, Reported};
use crate::diagnostics::Diagnostic;
use crate::ir::{Bindings, Graph};
use crate::model::LoadedModel;
use crate::runtime::budget::MemoryBudget;
use crate::runtime::exec::CompileOptions;
use crate::runtime::npy::{read_npy, write_npy};
use crate::runtime::params::bind_params_within;
use crate::runtime::text::encode_batch;
use crate::runtime::weights::WeightFile;
use crate::tensor::{Tensor, TensorData};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The .lam model file.
    model: PathBuf,
    /// Safetensors weight file [default: the file the model names, else <model-stem>.safetensors beside it].
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// An input as NAME=FILE.npy (repeatable) [default: NAME.npy beside the model].
    #[arg(long = "input", value_name = "NAME=FILE", value_parser = parse_key_value)]
    inputs: Vec<(String, String)>,
    /// Fix a symbolic dim, as SYM=N (repeatable); needed when a seeded parameter's shape uses a symbol.
    #[arg(long = "bind", value_name = "SYM=N", value_parser = parse_binding)]
    binds: Vec<(String, usize)>,
    /// Integer labels (.npy): print the accuracy of the first output's argmax [default: labels.npy beside the model].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Write the (single) output to this .npy file.
    #[arg(long, value_name = "FILE", conflicts_with = "output_dir")]
    output: Option<PathBuf>,
    /// Write every output as DIR/NAME.npy.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Text input for language models (repeatable): tokenized into the model's `input_ids`,
    /// `attention_mask` and `token_type_ids` inputs, padded to the longest text.
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
    /// tokenizer.json for --text [default: tokenizer.json beside the model, else beside the weights].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Longest token sequence for --text; longer texts are truncated.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: usize,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    /// Worker threads for the JIT backend's kernels.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,
    /// Print the Cranelift IR of every JIT kernel (to stdout, before the outputs).
    #[arg(long)]
    dump_clif: bool,
    /// Most memory the model may use (parameters, intermediate values), e.g. 512M or 8G
    /// [default: 3/4 of physical RAM]. A model that needs more is an error, not a crash.
    #[arg(long, value_name = "SIZE", value_parser = crate::runtime::budget::parse_size)]
    max_memory: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// Optimised graph, native kernels JIT-compiled with Cranelift.
    Jit,
    /// The reference interpreter: plain, obviously correct, slow.
    Interp,
}

/// All cores: the kernels split work so results do not depend on the count.
pub(super) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

fn parse_binding(s: &str) -> Result<(String, usize), String> {
    let (k, v) = parse_key_value(s)?;
    let n = v
        .parse::<usize>()
        .map_err(|_| format!("`{v}` in `{s}` is not a non-negative integer"))?;
    Ok((k, n))
}

/// A path given relative to the model file's folder.
fn beside(model: &Path, name: &str) -> PathBuf {
    model.parent().unwrap_or(Path::new(".")).join(name)
}

fn weights_path(args: &RunArgs, m: &LoadedModel) -> Option<PathBuf> {
    if let Some(w) = &args.weights {
        return Some(w.clone());
    }
    if let Some((w, _)) = &m.weights {
        return Some(beside(&m.path, w));
    }
    let stem = m.path.file_stem()?.to_string_lossy();
    let conventional = beside(&m.path, &format!("{stem}.safetensors"));
    conventional.exists().then_some(conventional)
}

/// The tokenizer for --text: the flag, else tokenizer.json beside the model, else beside the weights.
fn tokenizer_path(
    args: &RunArgs,
    m: &LoadedModel,
    weights: Option<&Path>,
) -> Result<PathBuf, Diagnostic> {
    if let Some(t) = &args.tokenizer {
        return Ok(t.clone());
    }
    let mut candidates = vec![beside(&m.path, "tokenizer.json")];
    if let Some(w) = weights {
        candidates.push(beside(w, "tokenizer.json"));
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            Diagnostic::error(format!(
                "--text needs a tokenizer: pass --tokenizer FILE (looked for {})",
                looked.join(", ")
            ))
        })
}

/// The model inputs that --text fills, from the tokenizer's output.
fn text_inputs(
    args: &RunArgs,
    m: &LoadedModel,
    weights: Option<&Path>,
) -> Result<Vec<(String, Tensor)>, Diagnostic> {
    let tokenizer = tokenizer_path(args, m, weights)?;
    let encoded = encode_batch(&tokenizer, &args.texts, args.max_tokens)
        .map_err(|e| Diagnostic::error(e.to_string()))?;
    let declared = m.graph.input_names();
    let all = [
        ("input_ids", encoded.input_ids),
        ("attention_mask", encoded.attention_mask),
        ("token_type_ids", encoded.token_type_ids),
    ];
    if !declared.contains(&"input_ids") {
        return Err(Diagnostic::error(format!(
            "--text fills an input named `input_ids`, but the model's inputs are: {}",
            declared.join(", ")
        )));
    }
    Ok(all
        .into_iter()
        .filter(|(name, _)| declared.contains(name))
        .map(|(name, t)| (name.to_string(), t))
        .collect())
}

fn load_inputs(
    args: &RunArgs,
    m: &LoadedModel,
    from_text: Vec<(String, Tensor)>,
) -> Result<HashMap<String, Tensor>, Vec<Diagnostic>> {
    let mut inputs: HashMap<String, Tensor> = from_text.into_iter().collect();
    let mut errors = Vec::new();
    let declared = m.graph.input_names();
    for (name, _) in &args.inputs {
        if !declared.contains(&name.as_str()) {
            errors.push(Diagnostic::error(format!(
                "--input {name}: the model has no input `{name}` (inputs: {})",
                declared.join(", ")
            )));
        }
    }
    for name in declared {
        if inputs.contains_key(name) {
            continue;
        }
        let path = match args.inputs.iter().find(|(n, _)| n == name) {
            Some((_, file)) => PathBuf::from(file),
            None => {
                let conventional = beside(&m.path, &format!("{name}.npy"));
                if !conventional.exists() {
                    errors.push(Diagnostic::error(format!(
                        "no value for input `{name}`: pass --input {name}=FILE.npy or put {} beside the model",
                        conventional.display()
                    )));
                    continue;
                }
                conventional
            }
        };
        match read_npy(&path) {
            Ok(t) => {
                inputs.insert(name.to_string(), t);
            }
            Err(e) => errors.push(Diagnostic::error(format!("input `{name}`: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(inputs)
    } else {
        Err(errors)
    }
}

pub(super) fn run(args: &RunArgs) -> Result<(), Reported> {
    let m = load(&args.model)?;
    let file = Some(&m.source);
    let fixed: Bindings = args.binds.iter().cloned().collect();

    let weights_file = weights_path(args, &m);
    let weights = match &weights_file {
        Some(p) => Some(
            WeightFile::load(p).map_err(|e| fail(vec![Diagnostic::error(e.to_string())], None))?,
        ),
        None => None,
    };
    let from_text = if args.texts.is_empty() {
        Vec::new()
    } else {
        text_inputs(args, &m, weights_file.as_deref()).map_err(|d| fail(vec![d], None))?
    };
    let inputs = load_inputs(args, &m, from_text).map_err(|d| fail(d, None))?;
    let shapes: Vec<_> = inputs
        .iter()
        .map(|(n, t)| (n.clone(), t.dtype(), t.shape().to_vec()))
        .collect();
    let bindings = crate::ir::bind::bind_inputs(&m.graph, &shapes, &fixed).map_err(|errs| {
        fail(
            errs.iter()
                .map(|e| Diagnostic::error(e.to_string()))
                .collect(),
            None,
        )
    })?;
    let budget = args.max_memory.map(MemoryBudget::new).unwrap_or_default();
    let params =
        bind_params_within(&m.graph, weights.as_ref(), &bindings, &budget).map_err(|errs| {
            fail(
                errs.iter().map(|e| param_diagnostic(&m.graph, e)).collect(),
                file,
            )
        })?;
    if !params.unused.is_empty() {
        let w = weights
            .as_ref()
            .map(|w| w.path.display().to_string())
            .unwrap_or_default();
        report(
            &[Diagnostic::warning(format!(
                "{} tensor(s) in {w} are not used by the model: {}",
                params.unused.len(),
                params.unused.join(", ")
            ))],
            None,
        );
    }

    let outputs = match args.backend {
        Backend::Interp => {
            crate::interp::run_within(&m.graph, &params.values, &inputs, &bindings, &budget)
                .map_err(|e| fail(e.diagnostics(), file))?
        }
        Backend::Jit => run_jit(args, &m, &params.values, &inputs, &bindings, budget)?,
    };

    write_outputs(args, &outputs)?;
    report_labels(args, &m, &outputs)?;
    Ok(())
}

fn run_jit(
    args: &RunArgs,
    m: &LoadedModel,
    params: &HashMap<String, Tensor>,
    inputs: &HashMap<String, Tensor>,
    bindings: &Bindings,
    budget: MemoryBudget,
) -> Result<Vec<(String, Tensor)>, Reported> {
    let error = |e: &crate::runtime::exec::ExecError| fail(e.diagnostics(), Some(&m.source));
    let options = CompileOptions {
        threads: args.threads.max(1),
    };
    let (mut compiled, _) = crate::compile::compile(&m.graph, params, options)
        .map_err(|e| fail(vec![Diagnostic::error(e.to_string())], None))?;
    compiled.set_memory_budget(budget);
    let ordered: Vec<&Tensor> = compiled.input_names().iter().map(|n| &inputs[*n]).collect();
    if args.dump_clif {
        let info = compiled
            .prepare(&ordered, bindings)
            .map_err(|e| error(&e))?;
        print!("{}", info.clif);
    }
    let mut outputs = Vec::new();
    compiled
        .run_into(&ordered, bindings, &mut outputs)
        .map_err(|e| error(&e))?;
    Ok(m.graph
        .outputs
        .iter()
        .map(|(n, _)| n.clone())
        .zip(outputs)
        .collect())
}

fn param_diagnostic(graph: &Graph, e: &crate::runtime::params::ParamError) -> Diagnostic {
    let span = graph
        .params()
        .into_iter()
        .find(|(name, _)| name == e.param_name())
        .and_then(|(_, id)| graph.node(id).span);
    Diagnostic::error(e.to_string()).at(span)
}

fn write_outputs(args: &RunArgs, outputs: &[(String, Tensor)]) -> Result<(), Reported> {
    let io_error = |path: &Path, e: &dyn std::fmt::Display| {
        fail(
            vec![Diagnostic::error(format!(
                "cannot write {}: {e}",
                path.display()
            ))],
            None,
        )
    };
    if let Some(path) = &args.output {
        if outputs.len() != 1 {
            let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(fail(
                vec![Diagnostic::error(format!(
                    "--output takes one output but the model has {} ({}); use --output-dir",
                    outputs.len(),
                    names.join(", ")
                ))],
                None,
            ));
        }
        write_npy(path, &outputs[0].1).map_err(|e| io_error(path, &e))?;
        eprintln!(
            "wrote {} {:?} to {}",
            outputs[0].0,
            outputs[0].1.shape(),
            path.display()
        );
        return Ok(());
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        for (name, t) in outputs {
            let path = dir.join(format!("{name}.npy"));
            write_npy(&path, t).map_err(|e| io_error(&path, &e))?;
            eprintln!("wrote {name} {:?} to {}", t.shape(), path.display());
        }
        return Ok(());
    }
    for (name, t) in outputs {
        println!("{}", summarize(name, t));
    }
    Ok(())
}

/// `probs: f32[450, 10] = [0.0012, 0.9731, ...]`
fn summarize(name: &str, t: &Tensor) -> String {
    const SHOWN: usize = 8;
    let values = t.to_f64_vec();
    let shown: Vec<String> = values
        .iter()
        .take(SHOWN)
        .map(|v| format!("{v:.6}"))
        .collect();
    let more = if values.len() > SHOWN { ", ..." } else { "" };
    format!(
        "{name}: {}{:?} = [{}{more}]",
        t.dtype(),
        t.shape(),
        shown.join(", ")
    )
}

/// Index of the largest value in each row of the last axis.
fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let values = t.to_f64_vec();
    let n = t.shape().last().copied().unwrap_or(1).max(1);
    values
        .chunks(n)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

fn report_labels(
    args: &RunArgs,
    m: &LoadedModel,
    outputs: &[(String, Tensor)],
) -> Result<(), Reported> {
    let path = match &args.labels {
        Some(p) => p.clone(),
        None => {
            let p = beside(&m.path, "labels.npy");
            if !p.exists() {
                return Ok(());
            }
            p
        }
    };
    let labels =
        read_npy(&path).map_err(|e| fail(vec![Diagnostic::error(format!("labels: {e}"))], None))?;
    let labels: Vec<i64> = match labels.data() {
        TensorData::I64(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
        _ => {
            return Err(fail(
                vec![Diagnostic::error(format!(
                    "labels in {} must be integers (int64 or int32), got {}",
                    path.display(),
                    labels.dtype()
                ))],
                None,
            ))
        }
    };
    let (name, first) = &outputs[0];
    let predicted = argmax_rows(first);
    if predicted.len() != labels.len() {
        return Err(fail(
            vec![Diagnostic::error(format!(
                "{} has {} labels but output `{name}` has {} rows",
                path.display(),
                labels.len(),
                predicted.len()
            ))],
            None,
        ));
    }
    const SHOWN: usize = 20;
    let shown: Vec<String> = predicted
        .iter()
        .take(SHOWN)
        .map(|p| p.to_string())
        .collect();
    let more = if predicted.len() > SHOWN { " ..." } else { "" };
    println!("predicted: [{}{more}]", shown.join(" "));
    let correct = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    println!(
        "accuracy: {:.4} ({correct}/{} correct, labels from {})",
        correct as f64 / labels.len() as f64,
        labels.len(),
        path.display()
    );
    Ok(())
}
