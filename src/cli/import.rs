//! `lamina import`: an ONNX file to a .lam model and its safetensors weights.

use std::path::{Path, PathBuf};

use super::{fail, Reported};
use crate::diagnostics::{Diagnostic, SourceFile};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The ONNX model file (weights inside the file; external data is not read).
    pub model: PathBuf,
    /// The .lam file to write [default: MODEL with the extension .lam]. The initializers go
    /// to `<stem>.safetensors` beside it.
    #[arg(short, long, value_name = "FILE.lam")]
    pub output: Option<PathBuf>,
    /// Give graph input NAME a fixed value (a .npy file) at import time; it becomes a constant of
    /// the model. For inputs that ONNX passes as tensors but lamina needs known when the model is
    /// compiled (a Reshape shape, Slice starts, reduction axes). Repeatable.
    #[arg(long = "fix", value_name = "NAME=FILE.npy")]
    pub fix: Vec<String>,
}

pub(super) fn import(args: &ImportArgs) -> Result<(), Reported> {
    let file = SourceFile {
        path: args.model.display().to_string(),
        text: None,
    };
    let mut fixed = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for spec in &args.fix {
        let Some((name, path)) = spec.split_once('=') else {
            problems.push(Diagnostic::error(format!(
                "--fix `{spec}`: expected NAME=FILE.npy"
            )));
            continue;
        };
        match crate::runtime::read_npy(Path::new(path)) {
            Ok(t) => {
                fixed.insert(name.to_string(), t);
            }
            Err(e) => problems.push(Diagnostic::error(format!("--fix {name}: {e}"))),
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems, None));
    }
    let written = crate::onnx::import_file(&args.model, args.output.as_deref(), &fixed)
        .map_err(|e| fail(e.diagnostics(), Some(&file)))?;
    let show = |p: &Path| p.display().to_string();
    let weights = written
        .weights
        .as_deref()
        .map_or("no parameters".to_string(), |w| {
            format!(
                "{} tensor(s) in {}",
                written.imported.weights.len(),
                show(w)
            )
        });
    println!(
        "{}: wrote {} ({} input(s), {} output(s)); {weights}",
        show(&args.model),
        show(&written.model),
        written.imported.inputs.len(),
        written.imported.outputs.len(),
    );
    Ok(())
}
