//! `check`, `info` and `graph`: the commands that only read a model.

use std::path::Path;

use serde_json::json;

use super::{fail, GraphFormat, Reported};
use crate::autodiff::{append_gradients, Wrt};
use crate::diagnostics::Diagnostic;
use crate::ir::{printer, Dim, Graph, TensorType};
use crate::model::{self, LoadedModel};
use crate::passes::{PassContext, PassManager};
use crate::span::line_col;

pub(super) fn load(path: &Path) -> Result<LoadedModel, Reported> {
    model::load(path).map_err(|f| fail(f.diagnostics, Some(&f.source)))
}

pub(super) fn check(path: &Path) -> Result<(), Reported> {
    let m = load(path)?;
    println!(
        "{}: ok: model `{}`, {} input(s), {} parameter(s), {} output(s), {} node(s)",
        path.display(),
        m.graph.name,
        m.graph.inputs.len(),
        m.graph.params().len(),
        m.graph.outputs.len(),
        m.graph.node_count()
    );
    Ok(())
}

fn shape_json(shape: &[Dim]) -> serde_json::Value {
    shape
        .iter()
        .map(|d| match d.as_known() {
            Some(n) => json!(n),
            None => json!(d.to_string()),
        })
        .collect()
}

fn entry(name: &str, ty: &TensorType) -> serde_json::Value {
    json!({"name": name, "dtype": ty.dtype.name(), "shape": shape_json(&ty.shape)})
}

pub(super) fn signature_json(graph: &Graph) -> serde_json::Value {
    let inputs: Vec<_> = graph
        .inputs
        .iter()
        .map(|&id| entry(graph.input_name(id), &graph.node(id).ty))
        .collect();
    let params: Vec<_> = graph
        .params()
        .iter()
        .map(|(name, id)| entry(name, &graph.node(*id).ty))
        .collect();
    let outputs: Vec<_> = graph
        .outputs
        .iter()
        .map(|(name, id)| entry(name, &graph.node(*id).ty))
        .collect();
    json!({"inputs": inputs, "params": params, "outputs": outputs})
}

pub(super) fn info(path: &Path, as_json: bool) -> Result<(), Reported> {
    let m = load(path)?;
    let g = &m.graph;
    if as_json {
        println!("{}", signature_json(g));
        return Ok(());
    }
    println!("model {}", g.name);
    println!("inputs:");
    for &id in &g.inputs {
        println!("  {}: {}", g.input_name(id), g.node(id).ty);
    }
    let params = g.params();
    let total: Option<usize> = params
        .iter()
        .map(|(_, id)| {
            g.node(*id)
                .ty
                .known_shape()
                .map(|s| s.iter().product::<usize>())
        })
        .sum();
    println!(
        "params: {}{}",
        params.len(),
        total.map_or(String::new(), |t| format!(" ({t} values)"))
    );
    for (name, id) in &params {
        println!("  {name}: {}", g.node(*id).ty);
    }
    println!("outputs:");
    for (name, id) in &g.outputs {
        println!("  {name}: {}", g.node(*id).ty);
    }
    if let Some((w, _)) = &m.weights {
        println!("weights: {w}");
    }
    Ok(())
}

/// The optimisation flags of `lamina graph`.
pub(super) struct GraphPasses {
    pub passes: Option<String>,
    pub stats: bool,
    pub max_steps: Option<usize>,
}

pub(super) fn graph(
    path: &Path,
    format: GraphFormat,
    grad: Option<(String, Wrt)>,
    opts: GraphPasses,
) -> Result<(), Reported> {
    let mut m = load(path)?;
    if let Some((output, wrt)) = grad {
        append_gradients(&mut m.graph, &output, &wrt).map_err(|errors| {
            let diags = errors.iter().map(|e| e.diagnostic()).collect();
            fail(diags, Some(&m.source))
        })?;
    }
    let implied = (opts.stats || opts.max_steps.is_some()).then_some("all");
    if let Some(spec) = opts.passes.as_deref().or(implied) {
        let manager = PassManager::from_spec(spec)
            .map_err(|e| fail(vec![Diagnostic::error(e.to_string())], None))?;
        let report = manager
            .run(&mut m.graph, &PassContext::default(), opts.max_steps)
            .map_err(|e| fail(vec![Diagnostic::error(e.to_string())], Some(&m.source)))?;
        if opts.stats {
            // stderr, so that stdout stays the graph alone.
            let text = m.source.text.as_deref().unwrap_or("");
            eprint!(
                "{}",
                report.render(|span| {
                    let (line, col) = line_col(text, span.start);
                    format!("{}:{line}:{col}", m.source.path)
                })
            );
        }
    }
    match format {
        GraphFormat::Text => print!("{}", printer::print(&m.graph)),
        GraphFormat::Dot => print!("{}", printer::to_dot(&m.graph)),
    }
    Ok(())
}
