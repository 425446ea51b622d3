//! Graph optimisation passes and the pass manager.
//!
//! Each pass is one file and one small [`Pass`] implementation. The
//! [`PassManager`] runs a list of passes in order, repeating the list until
//! no pass changes anything (or an iteration cap is hit). After every pass it
//! re-verifies the graph with [`verify::verify`] and checks that the model's
//! signature (input and output names, dtypes and shapes) is unchanged, so a
//! faulty rewrite is caught at the pass that made it. (A pass that left the
//! graph as it was verified, by [`Graph::revision`], is not checked again.)
//!
//! The passes, in the order `all` runs them (see [`all_passes`] for why):
//!
//! | name | file | does |
//! |---|---|---|
//! | `dce` | `dce.rs` | removes nodes no output depends on |
//! | `cse` | `cse.rs` | merges equal computations; constants by value |
//! | `fold-batch-norm` | `fold_batch_norm.rs` | `batch_norm(conv2d(...))` -> the conv's weights and bias scaled |
//! | `channels-last` | `channels_last.rs` | regions of NCHW convolutions and pools -> NHWC, permutes only at their boundary |
//! | `const-fold` | `const_fold.rs` | evaluates constant (and, with bound values, parameter-only) subgraphs |
//! | `simplify` | `simplify.rs` | `x*1`, `x+0`, `x-x`, `x/c`, `neg(neg(x))`, permute/reshape chains |
//! | `recognize` | `recognize.rs` | hand-written softmax, log_softmax, layer_norm -> the built-in ops |
//! | `transpose-matmul` | `transpose_matmul.rs` | `a @ transpose(w)` -> `transpose_b` (and `transpose_a`) |
//! | `fuse-linear` | `fuse_linear.rs` | matmul + bias + activation + residual -> `fused_linear` |
//! | `fuse-conv` | `fuse_conv.rs` | conv2d + bias + activation + residual -> `fused_conv2d` |
//! | `scale-into-linear` | `scale_into_linear.rs` | `matmul(q, k) * c` -> `c` folded into the weights of the layer making `q` |
//! | `fuse-elementwise` | `fuse_elementwise.rs` | trees of elementwise ops -> `fused_elementwise` |
//!
//! Every individual rewrite is one *step*. Passes ask [`Steps::take`] before
//! each rewrite; with a step limit the manager stops after exactly N
//! rewrites, so a bad rewrite can be bisected (`lamina graph --max-steps N`).

mod channels_last;
mod const_fold;
mod cse;
mod dce;
mod edit;
mod epilogue;
mod fold_batch_norm;
mod fold_eval;
mod fuse_conv;
mod fuse_elementwise;
mod fuse_linear;
mod recognize;
mod scale_into_linear;
mod simplify;
mod transpose_matmul;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

pub use channels_last::ChannelsLast;
pub use const_fold::ConstantFolding;
pub use cse::CommonSubexpressions;
pub use dce::DeadCodeElimination;
pub use fold_batch_norm::FoldBatchNorm;
pub use fuse_conv::ConvFusion;
pub use fuse_elementwise::{ElementwiseFusion, MAX_FUSED_INPUTS};
pub use fuse_linear::LinearFusion;
pub use recognize::RecognizeNormalizations;
pub use scale_into_linear::ScaleIntoLinear;
pub use simplify::AlgebraicSimplification;
pub use transpose_matmul::TransposeIntoMatMul;

use crate::ir::verify::{self, VerifyError};
use crate::ir::{Graph, NodeId, TensorType};
use crate::span::Span;
use crate::tensor::Tensor;

/// What a pass may know besides the graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassContext<'a> {
    /// Bound parameter values. When present, constant folding treats
    /// parameters as known and folds parameter-only subgraphs (a transposed
    /// or scaled weight) into constants once, at compile time. Without them
    /// parameters are opaque.
    pub params: Option<&'a HashMap<String, Tensor>>,
}

impl<'a> PassContext<'a> {
    pub fn with_params(params: &'a HashMap<String, Tensor>) -> PassContext<'a> {
        PassContext {
            params: Some(params),
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PassError {
    #[error("unknown pass `{name}` (passes: {known}, or `all`)")]
    UnknownPass { name: String, known: String },
    #[error("no passes given (passes: {known}, or `all`)")]
    EmptyPassList { known: String },
    #[error("internal error: pass `{pass}` left an inconsistent graph: {error}")]
    Verify {
        pass: &'static str,
        error: VerifyError,
    },
    #[error("internal error: pass `{pass}` changed the model's signature: {what}")]
    SignatureChanged { pass: &'static str, what: String },
    #[error("internal error: pass `{pass}` built an ill-typed `{op}` node: {message}")]
    IllTyped {
        pass: &'static str,
        op: &'static str,
        message: String,
    },
    #[error("parameter `{name}` is {actual}, the model declares {declared}")]
    ParamType {
        name: String,
        declared: String,
        actual: String,
    },
}

/// One graph rewrite.
pub trait Pass {
    /// The name used on the command line (`--passes dce,cse`).
    fn name(&self) -> &'static str;
    /// One line for `--help` and the statistics.
    fn description(&self) -> &'static str;
    /// Rewrites `graph`, asking `steps` before every single rewrite and
    /// stopping as soon as it refuses.
    fn run(
        &self,
        graph: &mut Graph,
        cx: &PassContext<'_>,
        steps: &mut Steps,
    ) -> Result<(), PassError>;
}

/// One rewrite a pass made, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    pub pass: &'static str,
    /// What kind of rewrite (`"bias+relu"`, `"x*1"`, `"merged"`).
    pub kind: String,
    /// The source span of the node the rewrite was made at.
    pub span: Option<Span>,
}

/// The rewrite budget and log shared by all passes of one manager run.
#[derive(Clone, Debug, Default)]
pub struct Steps {
    limit: Option<usize>,
    pass: &'static str,
    log: Vec<StepRecord>,
}

impl Steps {
    pub fn new(limit: Option<usize>) -> Steps {
        Steps {
            limit,
            pass: "",
            log: Vec::new(),
        }
    }

    /// Asks to make one rewrite of `kind` at a node with `span`. Returns
    /// false, recording nothing, when the step limit is reached; the caller
    /// must then leave the graph as it is.
    pub fn take(&mut self, kind: impl Into<String>, span: Option<Span>) -> bool {
        if self.exhausted() {
            return false;
        }
        self.log.push(StepRecord {
            pass: self.pass,
            kind: kind.into(),
            span,
        });
        true
    }

    pub fn exhausted(&self) -> bool {
        self.limit.is_some_and(|limit| self.log.len() >= limit)
    }

    pub fn taken(&self) -> usize {
        self.log.len()
    }

    pub fn log(&self) -> &[StepRecord] {
        &self.log
    }
}

/// What one pass did over a whole manager run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassStats {
    pub name: &'static str,
    pub runs: usize,
    /// Rewrites by kind.
    pub rewrites: BTreeMap<String, usize>,
    /// Node count change summed over its runs (negative: it removed nodes).
    pub node_delta: isize,
}

impl PassStats {
    pub fn total_rewrites(&self) -> usize {
        self.rewrites.values().sum()
    }
}

/// What a manager run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassReport {
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// How many times the pass list ran.
    pub iterations: usize,
    /// The last iteration changed nothing.
    pub reached_fixpoint: bool,
    /// The step limit stopped the run.
    pub stopped_at_limit: bool,
    pub per_pass: Vec<PassStats>,
    pub steps: Vec<StepRecord>,
}

impl PassReport {
    /// The report as text; when the step limit stopped the run, also the
    /// last rewrite made, with its source place shown by `locate`.
    pub fn render(&self, locate: impl Fn(Span) -> String) -> String {
        let mut text = self.to_string();
        if self.stopped_at_limit {
            if let Some(last) = self.steps.last() {
                let at = last
                    .span
                    .map(|s| format!(" at {}", locate(s)))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "last step: #{} {}: {}{at}\n",
                    self.steps.len(),
                    last.pass,
                    last.kind
                ));
            }
        }
        text
    }
}

/// The summary: rewrites, node counts, and each pass's changes by kind.
impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = if self.stopped_at_limit {
            "stopped at the step limit"
        } else if self.reached_fixpoint {
            "fixpoint reached"
        } else {
            "iteration cap reached before a fixpoint"
        };
        writeln!(
            f,
            "passes: {} rewrite(s) in {} iteration(s), {ending}",
            self.steps.len(),
            self.iterations
        )?;
        writeln!(f, "nodes: {} -> {}", self.nodes_before, self.nodes_after)?;
        let width = self
            .per_pass
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0);
        for p in &self.per_pass {
            let kinds: Vec<String> = p
                .rewrites
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            let detail = if kinds.is_empty() {
                "no change".to_string()
            } else {
                format!("{} ({})", p.total_rewrites(), kinds.join(", "))
            };
            writeln!(f, "  {:width$}  nodes {:+}  {detail}", p.name, p.node_delta)?;
        }
        Ok(())
    }
}

/// Every pass in the order `all` runs them: clean up (dead code, duplicates,
/// constants, algebra), then recognise hand-written composites before
/// fusion can swallow their pieces, then fold transposes into matmuls so
/// linear fusion sees plain weights, then fuse linear and convolution
/// layers (and fold a product's scale into a linear layer) before
/// elementwise fusion takes their bias adds, activations and scales.
/// Batch norms fold into convolutions just before const-fold, which then
/// computes the new weights in the same iteration: later, elementwise
/// fusion would take that parameter arithmetic, which const-fold cannot
/// evaluate. Channels-last comes between the two: after fold-batch-norm,
/// which folds only into NCHW convolutions (`batch_norm` normalises axis
/// 1), and before const-fold, which then folds the weight reshapes and
/// batch-norm arithmetic it adds in the same iteration; and before the
/// fusions, so fuse-conv and fuse-elementwise fuse the NHWC nodes (fuse-conv
/// takes NHWC biases and residuals).
pub fn all_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(DeadCodeElimination),
        Box::new(CommonSubexpressions),
        Box::new(FoldBatchNorm),
        Box::new(ChannelsLast),
        Box::new(ConstantFolding),
        Box::new(AlgebraicSimplification),
        Box::new(RecognizeNormalizations),
        Box::new(TransposeIntoMatMul),
        Box::new(LinearFusion),
        Box::new(ConvFusion),
        Box::new(ScaleIntoLinear),
        Box::new(ElementwiseFusion),
    ]
}

/// The names of all passes, in `all` order.
pub fn pass_names() -> Vec<&'static str> {
    all_passes().iter().map(|p| p.name()).collect()
}

/// How often the pass list may repeat before the manager gives up on a
/// fixpoint. Every pass strictly simplifies, so real models settle in a few.
pub const DEFAULT_MAX_ITERATIONS: usize = 16;

pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    max_iterations: usize,
}

impl PassManager {
    pub fn new(passes: Vec<Box<dyn Pass>>) -> PassManager {
        PassManager {
            passes,
            max_iterations: DEFAULT_MAX_ITERATIONS,
        }
    }

    /// Every pass, in the standard order.
    pub fn all() -> PassManager {
        PassManager::new(all_passes())
    }

    /// `"all"`, or a comma-separated list of pass names run in that order.
    pub fn from_spec(spec: &str) -> Result<PassManager, PassError> {
        let spec = spec.trim();
        if spec == "all" {
            return Ok(PassManager::all());
        }
        let known = || pass_names().join(", ");
        let mut passes = Vec::new();
        for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let pass = all_passes()
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| PassError::UnknownPass {
                    name: name.to_string(),
                    known: known(),
                })?;
            passes.push(pass);
        }
        if passes.is_empty() {
            return Err(PassError::EmptyPassList { known: known() });
        }
        Ok(PassManager::new(passes))
    }

    pub fn with_max_iterations(mut self, max_iterations: usize) -> PassManager {
        self.max_iterations = max_iterations.max(1);
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs the passes in order, repeatedly, until an iteration makes no
    /// rewrite, the iteration cap is hit, or `max_steps` rewrites are made.
    pub fn run(
        &self,
        graph: &mut Graph,
        cx: &PassContext<'_>,
        max_steps: Option<usize>,
    ) -> Result<PassReport, PassError> {
        let signature = Signature::of(graph);
        let nodes_before = graph.node_count();
        let mut steps = Steps::new(max_steps);
        let mut per_pass: Vec<PassStats> = self
            .passes
            .iter()
            .map(|p| PassStats {
                name: p.name(),
                runs: 0,
                rewrites: BTreeMap::new(),
                node_delta: 0,
            })
            .collect();
        let mut iterations = 0;
        let mut reached_fixpoint = false;
        // The graph as last verified: a pass that leaves it exactly so
        // (same revision, inputs and outputs) needs no second check.
        let mut verified: Option<(u64, Vec<NodeId>, Vec<(String, NodeId)>)> = None;
        while iterations < self.max_iterations && !steps.exhausted() {
            iterations += 1;
            let taken_before_iteration = steps.taken();
            for (pass, stats) in self.passes.iter().zip(per_pass.iter_mut()) {
                if steps.exhausted() {
                    break;
                }
                let (log_start, count_before) = (steps.taken(), graph.node_count());
                steps.pass = pass.name();
                pass.run(graph, cx, &mut steps)?;
                let unchanged = verified
                    .as_ref()
                    .is_some_and(|(revision, inputs, outputs)| {
                        *revision == graph.revision()
                            && *inputs == graph.inputs
                            && *outputs == graph.outputs
                    });
                if !unchanged {
                    verify::verify(graph).map_err(|error| PassError::Verify {
                        pass: pass.name(),
                        error,
                    })?;
                    signature.check(graph, pass.name())?;
                    verified = Some((
                        graph.revision(),
                        graph.inputs.clone(),
                        graph.outputs.clone(),
                    ));
                }
                stats.runs += 1;
                stats.node_delta += graph.node_count() as isize - count_before as isize;
                for record in &steps.log()[log_start..] {
                    *stats.rewrites.entry(record.kind.clone()).or_default() += 1;
                }
            }
            if steps.taken() == taken_before_iteration {
                reached_fixpoint = true;
                break;
            }
        }
        Ok(PassReport {
            nodes_before,
            nodes_after: graph.node_count(),
            iterations,
            reached_fixpoint,
            stopped_at_limit: steps.exhausted() && !reached_fixpoint,
            per_pass,
            steps: steps.log,
        })
    }
}

/// Runs every pass with opaque parameters.
pub fn optimize(graph: &mut Graph) -> Result<PassReport, PassError> {
    PassManager::all().run(graph, &PassContext::default(), None)
}

/// The parts of a graph passes must preserve.
struct Signature {
    inputs: Vec<(String, TensorType)>,
    outputs: Vec<(String, TensorType)>,
}

impl Signature {
    fn of(graph: &Graph) -> Signature {
        Signature {
            inputs: graph
                .inputs
                .iter()
                .map(|&id| (graph.input_name(id).to_string(), graph.node(id).ty.clone()))
                .collect(),
            outputs: graph
                .outputs
                .iter()
                .map(|(name, id)| (name.clone(), graph.node(*id).ty.clone()))
                .collect(),
        }
    }

    fn check(&self, graph: &Graph, pass: &'static str) -> Result<(), PassError> {
        let now = Signature::of(graph);
        let show = |items: &[(String, TensorType)]| {
            items
                .iter()
                .map(|(n, t)| format!("{n}: {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (what, before, after) in [
            ("inputs", &self.inputs, &now.inputs),
            ("outputs", &self.outputs, &now.outputs),
        ] {
            if before != after {
                return Err(PassError::SignatureChanged {
                    pass,
                    what: format!("{what} were [{}], now [{}]", show(before), show(after)),
                });
            }
        }
        Ok(())
    }
}
