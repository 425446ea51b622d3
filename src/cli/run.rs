//! `lamina run`: weights and inputs found by flag or by convention, the
//! model executed, outputs printed or written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::{fail, report, Reported};
use crate::diagnostics::Diagnostic;
use crate::engine::{self, Model, OptionError, Options, Weights};
use crate::runtime::npy::{read_npy, write_npy};
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
    /// A photo (JPEG or PNG) for the model's input declared `= image(...)`, which says how to
    /// crop, resize and normalise it (repeatable: a batch). Prints the top classes of each.
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// Class names, one a line, in output order, for --image [default: classes.txt beside the model].
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// How many of the highest-scoring classes --image prints per photo.
    #[arg(long, value_name = "N", default_value_t = 5)]
    top: usize,
    /// Longest token sequence for --text; longer texts are truncated.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: usize,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    /// Worker threads for the JIT backend's kernels.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,
    /// Print the Cranelift IR of every JIT kernel (to stdout, before the outputs); assembled
    /// kernels appear with their listing.
    #[arg(long)]
    dump_clif: bool,
    /// Print the machine code of every assembled kernel (the AVX2 / AVX-512 tiers' GEMM
    /// micro-kernels and epilogues, generated for this model's shapes) as an Intel-syntax
    /// listing, to stdout before the outputs. The baseline tier assembles nothing.
    #[arg(long)]
    dump_asm: bool,
    /// Most memory the model may use (parameters, intermediate values), e.g. 512M or 8G
    /// [default: 3/4 of the RAM this process may use: physical RAM or its cgroup limit]. A model that needs more is an error, not a crash.
    #[arg(long, value_name = "SIZE", value_parser = crate::runtime::budget::parse_size)]
    max_memory: Option<usize>,
    /// Kernel tier: avx512, avx2 or baseline (Cranelift f32x4) [default: $LAMINA_ISA, else the
    /// best the CPU runs]. Can lower the tier, never raise it past the CPU's.
    #[arg(long, value_name = "TIER")]
    isa: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Backend {
    /// Optimised graph, native kernels JIT-compiled with Cranelift.
    Jit,
    /// The reference interpreter: plain, obviously correct, slow.
    Interp,
}

impl From<Backend> for engine::Backend {
    fn from(b: Backend) -> engine::Backend {
        match b {
            Backend::Jit => engine::Backend::Jit,
            Backend::Interp => engine::Backend::Interp,
        }
    }
}

/// All cores: the kernels split work so results do not depend on the count.
pub(super) fn default_threads() -> usize {
    engine::all_cores()
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

pub(super) fn parse_binding(s: &str) -> Result<(String, usize), String> {
    let (k, v) = parse_key_value(s)?;
    let n = v
        .parse::<usize>()
        .map_err(|_| format!("`{v}` in `{s}` is not a non-negative integer"))?;
    Ok((k, n))
}

/// A compile option problem, phrased with the flag that set it.
pub(super) fn option_diagnostic(e: &OptionError) -> Diagnostic {
    let flag = match e {
        OptionError::NoThreads => "--threads",
        OptionError::UnknownSymbol { .. } | OptionError::ConflictingBind { .. } => "--bind",
    };
    Diagnostic::error(format!("{flag}: {e}"))
}

/// Reports an engine failure against the source it points into.
pub(super) fn engine_failure(e: engine::Error) -> Reported {
    fail(e.diagnostics().to_vec(), e.file())
}

/// Flag problems that do not depend on the model: reported even when the
/// model does not load.
fn model_free_problems(args: &RunArgs, options: &Options) -> Vec<Diagnostic> {
    let mut problems: Vec<Diagnostic> = options.check().iter().map(option_diagnostic).collect();
    if let Err(e) = super::resolve_isa(args.isa.as_deref()) {
        problems.push(Diagnostic::error(e));
    }
    let mut files: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, file) in &args.inputs {
        match files.iter_mut().find(|(n, _)| n == name) {
            Some((_, given)) => given.push(file),
            None => files.push((name, vec![file])),
        }
    }
    for (name, given) in files.iter().filter(|(_, given)| given.len() > 1) {
        problems.push(Diagnostic::error(format!(
            "--input {name}: given {} times ({}); give each input once",
            given.len(),
            given.join(", ")
        )));
    }
    problems
}

/// Flag problems that need the model: symbols and inputs it does not have,
/// a symbol bound to two values.
fn model_problems(args: &RunArgs, model: &Model, options: &Options) -> Vec<Diagnostic> {
    let mut problems: Vec<Diagnostic> = model
        .check_bindings(&options.bind)
        .iter()
        .map(option_diagnostic)
        .collect();
    let declared = model.input_names();
    let mut reported: Vec<&str> = Vec::new();
    for (name, _) in &args.inputs {
        if !declared.contains(&name.as_str()) && !reported.contains(&name.as_str()) {
            reported.push(name);
            problems.push(Diagnostic::error(format!(
                "--input {name}: the model has no input `{name}` (inputs: {})",
                declared.join(", ")
            )));
        }
    }
    problems
}

/// The inputs not filled from text: from --input, else `NAME.npy` beside the model.
fn load_inputs(
    args: &RunArgs,
    model: &Model,
    inputs: &mut HashMap<String, Tensor>,
) -> Result<(), Vec<Diagnostic>> {
    let mut errors = Vec::new();
    for name in model.input_names() {
        if inputs.contains_key(name) {
            continue;
        }
        let path = match args.inputs.iter().find(|(n, _)| n == name) {
            Some((_, file)) => PathBuf::from(file),
            None => {
                let conventional = model.beside(format!("{name}.npy"));
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
        Ok(())
    } else {
        Err(errors)
    }
}

pub(super) fn run(args: &RunArgs) -> Result<(), Reported> {
    let options = Options {
        backend: args.backend.into(),
        threads: args.threads,
        bind: args.binds.clone(),
        max_memory: args.max_memory,
        // An unknown or unsupported tier is reported with the other flag problems.
        isa: super::resolve_isa(args.isa.as_deref()).ok(),
    };
    let mut problems = model_free_problems(args, &options);
    let model = match Model::load(&args.model) {
        Ok(model) => model,
        Err(e) => {
            report(&problems, None);
            return Err(engine_failure(e));
        }
    };
    problems.extend(model_problems(args, &model, &options));
    if !problems.is_empty() {
        return Err(fail(problems, None));
    }
    let weights = match &args.weights {
        Some(path) => Weights::File(path.clone()),
        None => Weights::Conventional,
    };
    let session = model.compile(weights, &options).map_err(engine_failure)?;
    if !session.unused_weights().is_empty() {
        let file = session
            .weights_path()
            .map(|w| w.display().to_string())
            .unwrap_or_default();
        report(
            &[Diagnostic::warning(format!(
                "{} tensor(s) in {file} are not used by the model: {}",
                session.unused_weights().len(),
                session.unused_weights().join(", ")
            ))],
            None,
        );
    }
    let mut inputs = if args.texts.is_empty() {
        HashMap::new()
    } else {
        let filled = session.text_input_names();
        let both: Vec<Diagnostic> = args
            .inputs
            .iter()
            .filter(|(name, _)| filled.contains(&name.as_str()))
            .map(|(name, file)| {
                Diagnostic::error(format!(
                    "--input {name}={file}: --text fills `{name}`; give one or the other"
                ))
            })
            .collect();
        if !both.is_empty() {
            return Err(fail(both, None));
        }
        let tokenizer = session
            .tokenizer(args.tokenizer.as_deref(), args.max_tokens)
            .map_err(engine_failure)?;
        session
            .text_inputs(&tokenizer, &args.texts)
            .map_err(engine_failure)?
    };
    if !args.images.is_empty() {
        let spec = session
            .image_input()
            .map_err(|kind| fail(vec![Diagnostic::error(format!("--image: {kind}"))], None))?;
        if let Some((_, file)) = args.inputs.iter().find(|(name, _)| *name == spec.input) {
            return Err(fail(
                vec![Diagnostic::error(format!(
                    "--input {}={file}: --image fills `{}`; give one or the other",
                    spec.input, spec.input
                ))],
                None,
            ));
        }
        inputs.extend(session.image_inputs(&args.images).map_err(engine_failure)?);
    }
    load_inputs(args, session.model(), &mut inputs).map_err(|d| fail(d, None))?;
    if args.dump_clif {
        if let Some(clif) = session.kernel_ir(&inputs).map_err(engine_failure)? {
            print!("{clif}");
        }
    }
    if args.dump_asm {
        if let Some(asm) = session.kernel_asm(&inputs).map_err(engine_failure)? {
            print!("{asm}");
        }
    }
    let outputs = session.run(&inputs).map_err(engine_failure)?;
    if !args.images.is_empty() && args.output.is_none() && args.output_dir.is_none() {
        return report_top_classes(args, session.model(), &outputs);
    }
    write_outputs(args, &outputs)?;
    report_labels(args, session.model(), &outputs)?;
    Ok(())
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

/// For `--image`: each photo's highest-scoring classes in the first output,
/// by name when a class file is found.
fn report_top_classes(
    args: &RunArgs,
    model: &Model,
    outputs: &[(String, Tensor)],
) -> Result<(), Reported> {
    let names = class_names(args.classes.as_deref(), model)?;
    let (output, scores) = &outputs[0];
    let classes = scores.shape().last().copied().unwrap_or(1);
    let rows = scores.shape().first().copied().unwrap_or(1);
    if scores.shape().len() != 2 || rows != args.images.len() {
        return Err(fail(
            vec![Diagnostic::error(format!(
                "--image: output `{output}` is {}{:?}, not one row of class scores per photo ({})",
                scores.dtype(),
                scores.shape(),
                args.images.len()
            ))],
            None,
        ));
    }
    if let Some(names) = &names {
        if names.len() != classes {
            report(
                &[Diagnostic::warning(format!(
                    "{} class names for {classes} classes in output `{output}`",
                    names.len()
                ))],
                None,
            );
        }
    }
    let values = scores.to_f64_vec();
    for (path, row) in args.images.iter().zip(values.chunks(classes.max(1))) {
        println!("{}:", path.display());
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Highest first; NaN last; ties by class index.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &class in order.iter().take(args.top) {
            let name = names
                .as_ref()
                .and_then(|n| n.get(class))
                .map(String::as_str)
                .unwrap_or("");
            println!("  {:>8.4}  {class:>4}  {name}", row[class]);
        }
    }
    Ok(())
}

/// `--classes`, else `classes.txt` beside the model, else none.
pub(super) fn class_names(
    flag: Option<&Path>,
    model: &Model,
) -> Result<Option<Vec<String>>, Reported> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => {
            let p = model.beside("classes.txt");
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.lines().map(|l| l.trim().to_string()).collect())),
        Err(e) => Err(fail(
            vec![Diagnostic::error(format!(
                "--classes: cannot read {}: {e}",
                path.display()
            ))],
            None,
        )),
    }
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
    model: &Model,
    outputs: &[(String, Tensor)],
) -> Result<(), Reported> {
    let path = match &args.labels {
        Some(p) => p.clone(),
        None => {
            let p = model.beside("labels.npy");
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
