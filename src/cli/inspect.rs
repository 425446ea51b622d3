//! `check`, `info` and `graph`: the commands that only read a model.

use std::path::Path;

use serde_json::json;

use super::{fail, GraphFormat, Reported};
use crate::ir::{printer, Dim, Graph, TensorType};
use crate::model::{self, LoadedModel};

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

pub(super) fn graph(path: &Path, format: GraphFormat) -> Result<(), Reported> {
    let m = load(path)?;
    match format {
        GraphFormat::Text => print!("{}", printer::print(&m.graph)),
        GraphFormat::Dot => print!("{}", printer::to_dot(&m.graph)),
    }
    Ok(())
}
