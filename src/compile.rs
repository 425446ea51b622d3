//! The JIT pipeline in one call: optimise a lowered graph with its bound
//! parameters (so parameter-only subgraphs fold once), then compile it.

use std::collections::HashMap;

use crate::ir::Graph;
use crate::passes::{PassContext, PassError, PassManager, PassReport};
use crate::runtime::exec::{CompileOptions, CompiledModel, ExecError};
use crate::tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// Runs every pass (to a fixpoint) and compiles the result.
pub fn compile(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
    options: CompileOptions,
) -> Result<(CompiledModel, PassReport), CompileError> {
    let (optimised, report) = optimise(graph, params)?;
    let model = CompiledModel::compile(&optimised, params, options)?;
    Ok((model, report))
}

/// [`compile`] taking the parameter values over: the compiled model keeps
/// them without a copy.
pub fn compile_owned(
    graph: &Graph,
    params: HashMap<String, Tensor>,
    options: CompileOptions,
) -> Result<(CompiledModel, PassReport), CompileError> {
    let (optimised, report) = optimise(graph, &params)?;
    let model = CompiledModel::compile_owned(&optimised, params, options)?;
    Ok((model, report))
}

/// The passes alone (to a fixpoint) on a copy of `graph`, with the bound
/// parameter values known to constant folding.
pub fn optimise(
    graph: &Graph,
    params: &HashMap<String, Tensor>,
) -> Result<(Graph, PassReport), PassError> {
    let mut optimised = graph.clone();
    let report = PassManager::all().run(&mut optimised, &PassContext::with_params(params), None)?;
    Ok((optimised, report))
}
