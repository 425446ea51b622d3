//! Running a batch sample by sample.
//!
//! A convolutional network's activations grow with the batch: at batch 8,
//! EfficientNet-Lite0's 112 x 112 x 96 expansion is 38 MiB, and every layer
//! writes its output to memory and reads it back from there, while one
//! image's (4.8 MiB) is mostly served from cache. When every op keeps the
//! samples of a batch apart (`OpKind::keeps_samples`) and one sample's
//! arena is larger than a core's L2 cache, the executor runs the batch-1
//! plan once per sample instead of the batch plan: on several threads,
//! one sample per thread (no synchronisation between layers), the
//! remainder with every thread on each sample. Models whose activations
//! are small (an MLP, a transformer block) keep their batch whole, where
//! the weights' reuse across samples is what pays.
//!
//! The results are the same bits: every kernel computes an output element
//! the same way whatever the number of rows around it (the GEMM's FMA
//! chain over k, the window ops per pixel), and thread counts never change
//! a bit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::{shape_outputs, CachedPlan, CompiledModel, ExecError, Plan};
use crate::codegen::Target;
use crate::ir::{Bindings, DType, Dim, Graph, NodeId, Op, TensorType};
use crate::tensor::Tensor;

/// Whether a batch may run sample by sample
/// ([`CompiledModel::set_sample_split`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleSplit {
    /// When the model keeps samples apart and one sample's arena is larger
    /// than a core's L2 cache.
    #[default]
    Auto,
    /// Always run the batch whole.
    Never,
    /// Whenever the model keeps samples apart and the batch is larger than
    /// one (tests compare it with `Never`).
    Always,
}

/// The model's inputs that carry a batch's samples along axis 0, when the
/// whole graph keeps them apart.
#[derive(Clone, Debug)]
pub(super) struct SampleAxis {
    /// The symbol of the batched inputs' axis 0.
    symbol: String,
    /// Per model input, in order: whether it is batched.
    batched: Vec<bool>,
}

/// The sample axis of `graph`: its first input's axis 0 when that is a lone
/// symbol (`batch`) that no parameter fixes; the inputs whose axis 0 is the
/// same symbol are batched (f32 only), the others shared by every sample.
/// `None` unless every node fed by a batched value keeps samples apart, no
/// shared value's shape names the symbol, and every output is batched and
/// f32.
pub(super) fn sample_axis(graph: &Graph, param_bindings: &Bindings) -> Option<SampleAxis> {
    let first = graph.inputs.first()?;
    let dim0 = graph.node(*first).ty.shape.first()?.clone();
    let [symbol] = dim0.symbols() else {
        return None;
    };
    if dim0.factor() != 1 || param_bindings.contains_key(symbol) {
        return None;
    }
    let names_symbol = |dims: &[Dim]| dims.iter().any(|d| d.symbols().contains(symbol));
    let mut batched: HashMap<NodeId, bool> = HashMap::new();
    let mut inputs = Vec::with_capacity(graph.inputs.len());
    for &id in &graph.inputs {
        let ty = &graph.node(id).ty;
        let is_batched = ty.shape.first() == Some(&dim0);
        let rest = &ty.shape[usize::from(is_batched)..];
        if names_symbol(rest) || (is_batched && ty.dtype != DType::F32) {
            return None;
        }
        batched.insert(id, is_batched);
        inputs.push(is_batched);
    }
    for id in graph.topo_order() {
        let node = graph.node(id);
        if matches!(node.op, Op::Input(_)) {
            continue;
        }
        let operands = graph.inputs(id);
        let flags: Vec<bool> = operands.iter().map(|o| batched[o]).collect();
        let is_batched = flags.contains(&true);
        if is_batched {
            let types: Vec<&TensorType> = operands.iter().map(|&o| &graph.node(o).ty).collect();
            let keeps = node.op.kind().keeps_samples(&types, &flags)
                && node.ty.shape.first() == Some(&dim0)
                && !names_symbol(&node.ty.shape[1..]);
            if !keeps {
                return None;
            }
        } else if names_symbol(&node.ty.shape) {
            return None;
        }
        batched.insert(id, is_batched);
    }
    let outputs_batched = graph
        .outputs
        .iter()
        .all(|(_, id)| batched[id] && graph.node(*id).ty.dtype == DType::F32);
    (outputs_batched && inputs.contains(&true)).then(|| SampleAxis {
        symbol: symbol.clone(),
        batched: inputs,
    })
}

impl SampleAxis {
    /// The batch size of inputs of these shapes: the batched inputs' axis 0
    /// when they agree on it.
    fn batch(&self, shapes: &[(DType, Vec<usize>)]) -> Option<usize> {
        let mut sizes = shapes
            .iter()
            .zip(&self.batched)
            .filter(|(_, &b)| b)
            .map(|((_, shape), _)| shape.first().copied());
        let first = sizes.next()??;
        sizes.all(|s| s == Some(first)).then_some(first)
    }
}

/// One sample's inputs (the batched ones; `None` for shared inputs) and
/// outputs, reused from run to run.
pub(super) struct SampleScratch {
    inputs: Vec<Option<Tensor>>,
    outputs: Vec<Tensor>,
}

impl SampleScratch {
    fn new(sample: &Plan, axis: &SampleAxis) -> SampleScratch {
        SampleScratch {
            inputs: sample
                .input_shapes
                .iter()
                .zip(&axis.batched)
                .map(|((dtype, shape), &b)| b.then(|| Tensor::zeros(*dtype, shape.clone())))
                .collect(),
            outputs: Vec::new(),
        }
    }
}

/// A raw output address that sample runs on several threads write into,
/// each its own range.
#[derive(Clone, Copy)]
struct OutputPtr {
    address: usize,
    per_sample: usize,
}

impl CompiledModel {
    /// Chooses whether a batch may run sample by sample (default
    /// [`SampleSplit::Auto`]). Plans made before are dropped.
    pub fn set_sample_split(&mut self, mode: SampleSplit) {
        self.sample_split = mode;
        self.drop_plans();
    }

    /// Whether the model keeps the samples of a batch apart, so that it can
    /// run a batch sample by sample.
    pub fn keeps_samples_apart(&self) -> bool {
        self.samples.is_some()
    }

    /// The input shapes of one sample, and `fixed` without the batch
    /// symbol, when inputs of `shapes`, planned as `plan`, should run
    /// sample by sample.
    pub(super) fn split_shapes(
        &self,
        plan: &Plan,
        shapes: &[(DType, Vec<usize>)],
        fixed: &Bindings,
    ) -> Option<(Vec<(DType, Vec<usize>)>, Bindings)> {
        let axis = self.samples.as_ref()?;
        let batch = axis.batch(shapes)?;
        // The plan bound it: a value fixed for it is this batch size.
        let mut sample_fixed = fixed.clone();
        sample_fixed.remove(&axis.symbol);
        let worth = match self.sample_split {
            SampleSplit::Never => false,
            SampleSplit::Always => true,
            SampleSplit::Auto => {
                plan.arena_len.saturating_mul(4) / batch.max(1) > Target::detected().caches.l2
            }
        };
        (batch > 1 && worth).then(|| {
            let shapes = shapes
                .iter()
                .zip(&axis.batched)
                .map(|((dtype, shape), &b)| {
                    let mut shape = shape.clone();
                    if b {
                        shape[0] = 1;
                    }
                    (*dtype, shape)
                })
                .collect();
            (shapes, sample_fixed)
        })
    }

    /// Runs the batch of `whole`'s shapes through `sample`, its batch-1
    /// plan: one sample per thread while every thread has one, then the
    /// rest with all threads on each. Each sample's outputs go to their
    /// place in `outputs`; the first failing sample's error is returned.
    pub(super) fn run_by_sample(
        &self,
        whole: &CachedPlan,
        sample: &Arc<CachedPlan>,
        inputs: &[&Tensor],
        outputs: &mut Vec<Tensor>,
    ) -> Result<(), ExecError> {
        let axis = self
            .samples
            .as_ref()
            .expect("only a model with a sample axis splits");
        let batch = axis
            .batch(&whole.plan.input_shapes)
            .expect("split plans have a batch");
        shape_outputs(&whole.plan, outputs);
        let targets: SmallVec<[OutputPtr; 8]> = outputs
            .iter_mut()
            .map(|t| {
                let data = t.as_f32_mut().expect("split models have f32 outputs");
                OutputPtr {
                    per_sample: data.len() / batch,
                    address: data.as_mut_ptr() as usize,
                }
            })
            .collect();
        let failure: Mutex<Option<(usize, ExecError)>> = Mutex::new(None);
        let run_sample = |i: usize| {
            let scratch = whole.sample_scratch.lock().expect("scratch lock").pop();
            let mut scratch = scratch.unwrap_or_else(|| SampleScratch::new(&sample.plan, axis));
            self.run_one_sample(i, sample, &mut scratch, inputs, &targets, &failure);
            whole
                .sample_scratch
                .lock()
                .expect("scratch lock")
                .push(scratch);
        };
        // Kernel calls inside a pool task run on that task's thread alone.
        let threads = self.threads.count().max(1);
        let together = batch - batch % threads;
        self.threads.for_each_index(together, &run_sample);
        (together..batch).for_each(&run_sample);
        match failure.into_inner().expect("failure lock") {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Sample `i` of `inputs` through the batch-1 plan `sample`, its
    /// outputs copied to their place in `targets`, or its error kept in
    /// `failure` unless an earlier sample's is there.
    fn run_one_sample(
        &self,
        i: usize,
        sample: &CachedPlan,
        scratch: &mut SampleScratch,
        inputs: &[&Tensor],
        targets: &[OutputPtr],
        failure: &Mutex<Option<(usize, ExecError)>>,
    ) {
        let SampleScratch {
            inputs: own,
            outputs: results,
        } = scratch;
        for (slot, input) in own.iter_mut().zip(inputs) {
            if let Some(slot) = slot {
                let data = slot.as_f32_mut().expect("batched inputs are f32");
                let from = input.as_f32().expect("inputs match the plan's dtypes");
                data.copy_from_slice(&from[i * data.len()..(i + 1) * data.len()]);
            }
        }
        let views: SmallVec<[&Tensor; 8]> = own
            .iter()
            .zip(inputs)
            .map(|(slot, input)| slot.as_ref().unwrap_or(input))
            .collect();
        match self.run_plan(sample, &views, results) {
            Ok(()) => {
                for (result, target) in results.iter().zip(targets) {
                    let data = result.as_f32().expect("split models have f32 outputs");
                    debug_assert_eq!(data.len(), target.per_sample);
                    // SAFETY: output tensor `t` holds `batch * per_sample`
                    // f32 and outlives this call; sample `i` writes only
                    // its own range of it, so no two runs overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            data.as_ptr(),
                            (target.address as *mut f32).add(i * target.per_sample),
                            target.per_sample,
                        );
                    }
                }
            }
            Err(e) => {
                let mut first = failure.lock().expect("failure lock");
                if first.as_ref().is_none_or(|(j, _)| i < *j) {
                    *first = Some((i, e));
                }
            }
        }
    }
}
