//! lamina on models/minilm/minilm.lam: the JIT (`compile::compile`, as
//! `lamina run` does) and the reference interpreter.

use std::collections::HashMap;

use lamina::compile::compile;
use lamina::ir::Graph;
use lamina::runtime::exec::{CompileOptions, CompiledModel};
use lamina::runtime::{bind_params_owned, WeightFile};
use lamina::tensor::Tensor;

use crate::inputs::Files;
use crate::BenchError;

pub struct LaminaMiniLm {
    graph: Graph,
    params: HashMap<String, Tensor>,
}

impl LaminaMiniLm {
    pub fn load(files: &Files) -> Result<LaminaMiniLm, BenchError> {
        let model = lamina::model::load(&files.lam).map_err(|failure| {
            BenchError::Lamina(lamina::diagnostics::render_all(
                &failure.diagnostics,
                Some(&failure.source),
            ))
        })?;
        let weights = WeightFile::load(&files.weights)?;
        let params = bind_params_owned(&model.graph, Some(weights), &Default::default()).map_err(
            |errors| {
                BenchError::Lamina(
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            },
        )?;
        Ok(LaminaMiniLm {
            graph: model.graph,
            params: params.values,
        })
    }

    pub fn jit(&self, threads: usize) -> Result<CompiledModel, BenchError> {
        let (model, _report) = compile(&self.graph, &self.params, CompileOptions { threads, isa: None })
            .map_err(|e| BenchError::Lamina(e.to_string()))?;
        Ok(model)
    }

    pub fn interpret(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<f32>, BenchError> {
        let outputs = lamina::interp::run(&self.graph, &self.params, inputs, &Default::default())
            .map_err(|e| BenchError::Lamina(e.to_string()))?;
        embedding(outputs)
    }
}

pub fn run_jit(
    model: &CompiledModel,
    inputs: &HashMap<String, Tensor>,
) -> Result<Vec<f32>, BenchError> {
    let outputs = model
        .run(inputs)
        .map_err(|e| BenchError::Lamina(e.to_string()))?;
    embedding(outputs)
}

fn embedding(outputs: Vec<(String, Tensor)>) -> Result<Vec<f32>, BenchError> {
    let (name, tensor) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| BenchError::Lamina("the model has no output".into()))?;
    match tensor.as_f32() {
        Some(v) if name == "embedding" => Ok(v.to_vec()),
        _ => Err(BenchError::Lamina(format!(
            "first output `{name}` is not the f32 embedding"
        ))),
    }
}
