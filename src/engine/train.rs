//! Training: gradient descent on a model's parameters, one compiled program
//! per step.
//!
//! [`Trainer::new`] builds the *step graph* from the model: the forward
//! graph with its loss (the output named `loss`, or cross_entropy attached
//! to a classifier's first output), the backward graph
//! ([`crate::autodiff`]), and the optimiser's update of every parameter and
//! of its state as ordinary elementwise ops. Parameters, optimiser state,
//! the learning rate and Adam's bias corrections are inputs of that graph;
//! the new parameters and state are outputs. The graph goes through every
//! pass (the update becomes fused elementwise kernels) and the JIT, once.
//! A step runs it on one mini-batch and swaps the new parameter and state
//! tensors with the old ones (double buffering: the executor writes into
//! the previous step's buffers, so steady-state steps allocate nothing but
//! the list of input references). What runs in Rust per step: gathering the
//! batch rows, the learning-rate schedule (a scalar), the accuracy count.

use std::collections::HashMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Error, ErrorKind, Model};
use crate::autodiff::{append_gradients, Wrt};
use crate::ir::ops::{Input, LogSoftmax, Softmax};
use crate::ir::{
    losses, BinaryOp, Bindings, DType, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp,
};
use crate::runtime::exec::{CompileOptions, CompiledModel};
use crate::runtime::init::materialize;
use crate::runtime::weights::WeightFile;
use crate::tensor::Tensor;

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// Stochastic gradient descent; `momentum` 0 is plain SGD. Weight decay
    /// is added to the gradient (L2).
    Sgd { momentum: f32, nesterov: bool },
    /// Adam; weight decay added to the gradient (L2).
    Adam { beta1: f32, beta2: f32, eps: f32 },
    /// Adam with decoupled weight decay (Loshchilov and Hutter).
    AdamW { beta1: f32, beta2: f32, eps: f32 },
}

impl Optimizer {
    pub fn adam() -> Optimizer {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// The optimiser state each parameter has, by prefix.
    fn state_names(&self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd { momentum, .. } if *momentum == 0.0 => &[],
            Optimizer::Sgd { .. } => &["momentum"],
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => &["adam_m", "adam_v"],
        }
    }
}

/// How the learning rate changes over the run (after warmup).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f32,
    },
    /// Half a cosine from the base rate down to 0 over the steps after warmup.
    Cosine,
}

/// Everything about a training run but the model and the data.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    /// The share of the examples held out for validation (taken from a
    /// seeded shuffle, before training).
    pub val_split: f64,
    pub optimizer: Optimizer,
    pub lr: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    /// Steps over which the rate rises linearly from 0 to `lr`.
    pub warmup: usize,
    /// Scale the gradients down when their global L2 norm is above this.
    pub clip_norm: Option<f32>,
    /// Seeds the initial values (with `init`), the split and the shuffles.
    pub seed: u64,
    /// Start from fresh values: each parameter's declared initializer, else
    /// Glorot-uniform (rank >= 2) or zeros (vectors, scalars).
    pub init: bool,
    /// The scalar output to minimise; `None`: the output `loss`, else
    /// cross_entropy on the first output (see [`Trainer::new`]).
    pub loss: Option<String>,
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            epochs: 10,
            batch: 32,
            val_split: 0.1,
            optimizer: Optimizer::adam(),
            lr: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup: 0,
            clip_norm: None,
            seed: 0,
            init: false,
            loss: None,
            threads: super::all_cores(),
        }
    }
}

/// Why training could not start or go on.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Model(String),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("the loss became {value} at epoch {epoch}, step {step} (lower the learning rate, or clip with --clip-norm)")]
    Diverged {
        value: f32,
        epoch: usize,
        step: usize,
    },
}

/// One training step, as progress reports see it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    pub epoch: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    pub steps_per_epoch: usize,
    pub loss: f32,
    /// Running accuracy over this epoch's batches so far (classifiers).
    pub accuracy: Option<f64>,
    pub samples_per_sec: f64,
    pub lr: f32,
}

/// One epoch's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub samples_per_sec: f64,
    pub seconds: f64,
}

/// What the caller sees as training goes, and how it stops it early.
pub trait Observer {
    /// After every step; return false to stop (after the current step: the
    /// parameters are saved as they are).
    fn step(&mut self, report: &StepReport) -> bool;
    /// After every epoch's validation.
    fn epoch(&mut self, report: &EpochReport);
}

/// Examples: one f32 input tensor, its integer labels, rows along axis 0.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Tensor,
    pub labels: Tensor,
}

/// Where a parameter's state lives among the step graph's inputs and outputs.
struct Slot {
    input: usize,
    output: usize,
}

/// A model being trained: the compiled step and validation programs and
/// the parameters and optimiser state.
pub struct Trainer {
    config: TrainConfig,
    step_program: CompiledModel,
    eval_program: CompiledModel,
    /// Values of the step graph's inputs, in its input order (data slots are
    /// refilled per batch).
    values: Vec<Tensor>,
    /// Parameters and optimiser state: (input, output) positions.
    carried: Vec<Slot>,
    /// Parameter names and positions among `values`.
    params: Vec<(String, usize)>,
    /// Optimiser state names (`adam_m.fc1.weight`) and positions.
    state: Vec<(String, usize)>,
    data_input: usize,
    labels_input: usize,
    lr_input: usize,
    /// Adam's 1/(1-beta1^t), 1/(1-beta2^t).
    corrections: Option<(usize, usize)>,
    loss_output: usize,
    predictions_output: Option<usize>,
    classes: Option<usize>,
    /// Optimiser steps taken so far (over all epochs, resumed ones included).
    steps_done: u64,
    epochs_done: usize,
    outputs: Vec<Tensor>,
    data_name: String,
}

const DATA_LABELS: &str = "labels";
const LR: &str = "train.lr";
const C1: &str = "train.bias_correction1";
const C2: &str = "train.bias_correction2";

fn model_error(model: &Model, message: String) -> Error {
    Error::new(
        ErrorKind::Train(TrainError::Model(message)),
        None,
        Some(model.source()),
    )
}

fn fail(e: TrainError) -> Error {
    Error::new(ErrorKind::Train(e), None, None)
}

/// The model's graph with a scalar `loss` output: the one it declares, or
/// cross_entropy(logits, labels) on its first output, where logits are the
/// operand of a final softmax / log_softmax, else the output itself; a
/// `labels` input is added for it. Returns the graph, the loss output's
/// name and the output whose argmax is the prediction (classifiers).
fn with_loss(model: &Model, loss: Option<&str>) -> Result<(Graph, String, Option<String>), Error> {
    let mut graph = model.graph().clone();
    let declared = loss.unwrap_or("loss");
    let first = graph.outputs.first().map(|(n, id)| (n.clone(), *id));
    if graph.outputs.iter().any(|(n, _)| n == declared) {
        let prediction = first
            .filter(|(n, id)| n != declared && graph.node(*id).ty.rank() >= 1)
            .map(|(n, _)| n);
        return Ok((graph, declared.to_string(), prediction));
    }
    if loss.is_some() {
        let known: Vec<&str> = graph.outputs.iter().map(|(n, _)| n.as_str()).collect();
        return Err(model_error(
            model,
            format!(
                "the model has no output `{declared}` (outputs: {})",
                known.join(", ")
            ),
        ));
    }
    let Some((first_name, out)) = first else {
        return Err(model_error(model, "the model has no outputs".into()));
    };
    let logits = logits_of(&graph, out);
    let logits_ty = graph.node(logits).ty.clone();
    if graph.input_names().contains(&DATA_LABELS) {
        return Err(model_error(
            model,
            format!("the model declares no `loss` output but has an input `{DATA_LABELS}`: declare the loss (output loss = cross_entropy(logits, labels))"),
        ));
    }
    let labels_ty = TensorType::new(
        DType::I64,
        logits_ty.shape[..logits_ty.rank().saturating_sub(1)].to_vec(),
    );
    if let Err(m) = losses::check_cross_entropy(&logits_ty, &labels_ty) {
        return Err(model_error(
            model,
            format!("the model declares no `loss` output, and its first output `{first_name}` cannot be a classifier's: cross_entropy: {m}"),
        ));
    }
    let labels = graph.add_node(
        Op::Input(Input {
            name: DATA_LABELS.into(),
        }),
        &[],
        labels_ty,
        None,
    );
    graph.inputs.push(labels);
    let span = graph.node(out).span;
    let loss = losses::cross_entropy(&mut graph, logits, labels, span)
        .map_err(|e| model_error(model, e.0))?;
    graph.outputs.push(("loss".into(), loss));
    Ok((graph, "loss".into(), Some(first_name)))
}

/// The logits behind a classifier's output: the operand of a final softmax
/// or log_softmax over the last axis, else the output itself.
pub(crate) fn logits_of(graph: &Graph, out: NodeId) -> NodeId {
    match graph.node(out).op {
        Op::Softmax(Softmax { axis }) | Op::LogSoftmax(LogSoftmax { axis })
            if axis + 1 == graph.node(out).ty.rank() =>
        {
            graph.inputs(out)[0]
        }
        _ => out,
    }
}

/// Replaces every parameter node by an input of the same name and type.
fn params_as_inputs(graph: &mut Graph) -> Vec<(String, NodeId)> {
    let params = graph.params();
    for (name, id) in &params {
        graph.node_mut(*id).op = Op::Input(Input { name: name.clone() });
        graph.inputs.push(*id);
    }
    params
}

struct Builder<'g> {
    graph: &'g mut Graph,
}

impl Builder<'_> {
    fn op(&mut self, op: Op, inputs: &[NodeId]) -> NodeId {
        let name = op.name();
        crate::ir::builder::add_typed(self.graph, op, inputs, None)
            .unwrap_or_else(|e| panic!("the optimiser's update built an ill-typed {name}: {e}"))
    }
    fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        self.op(Op::Binary(op), &[a, b])
    }
    fn scalar(&mut self, v: f32) -> NodeId {
        let value = Tensor::scalar(v);
        self.graph.add_node(
            Op::Constant(crate::ir::ops::Constant {
                value: std::sync::Arc::new(value),
            }),
            &[],
            TensorType::new(DType::F32, vec![]),
            None,
        )
    }
    fn input(&mut self, name: &str, ty: TensorType) -> NodeId {
        let id = self
            .graph
            .add_node(Op::Input(Input { name: name.into() }), &[], ty, None);
        self.graph.inputs.push(id);
        id
    }
    /// a * s + b * t for scalars s, t.
    fn axpby(&mut self, a: NodeId, s: f32, b: NodeId, t: f32) -> NodeId {
        let s = self.scalar(s);
        let t = self.scalar(t);
        let x = self.bin(BinaryOp::Mul, a, s);
        let y = self.bin(BinaryOp::Mul, b, t);
        self.bin(BinaryOp::Add, x, y)
    }
}

/// Appends the optimiser's update: outputs `new.NAME` for every parameter
/// and `new.STATE.NAME` for its state.
fn append_update(
    graph: &mut Graph,
    params: &[(String, NodeId)],
    grads: &HashMap<String, NodeId>,
    config: &TrainConfig,
) {
    let mut b = Builder { graph };
    let scalar_ty = TensorType::new(DType::F32, vec![]);
    let lr = b.input(LR, scalar_ty.clone());
    let mut g_of: Vec<NodeId> = params.iter().map(|(n, _)| grads[n]).collect();
    if let Some(max_norm) = config.clip_norm {
        // One scale for all gradients: min(1, max_norm / (||g|| + 1e-6)).
        let mut total = None;
        for &g in &g_of {
            let sq = b.bin(BinaryOp::Mul, g, g);
            let rank = b.graph.node(sq).ty.rank();
            let s = b.op(
                Op::Reduce(crate::ir::ops::Reduce {
                    op: ReduceOp::Sum,
                    axes: (0..rank).collect(),
                    keepdims: false,
                }),
                &[sq],
            );
            total = Some(match total {
                None => s,
                Some(t) => b.bin(BinaryOp::Add, t, s),
            });
        }
        if let Some(total) = total {
            let norm = b.op(Op::Unary(UnaryOp::Sqrt), &[total]);
            let tiny = b.scalar(1e-6);
            let norm = b.bin(BinaryOp::Add, norm, tiny);
            let max = b.scalar(max_norm);
            let ratio = b.bin(BinaryOp::Div, max, norm);
            let one = b.scalar(1.0);
            let scale = b.bin(BinaryOp::Min, ratio, one);
            for g in &mut g_of {
                *g = b.bin(BinaryOp::Mul, *g, scale);
            }
        }
    }
    let corrections = match config.optimizer {
        Optimizer::Adam { .. } | Optimizer::AdamW { .. } => Some((
            b.input(C1, scalar_ty.clone()),
            b.input(C2, scalar_ty.clone()),
        )),
        Optimizer::Sgd { .. } => None,
    };
    let wd = config.weight_decay;
    for ((name, p), g) in params.iter().zip(g_of) {
        let ty = b.graph.node(*p).ty.clone();
        let coupled_decay = wd != 0.0 && !matches!(config.optimizer, Optimizer::AdamW { .. });
        let g = if coupled_decay {
            b.axpby(g, 1.0, *p, wd)
        } else {
            g
        };
        let (step, new_state): (NodeId, Vec<(String, NodeId)>) = match config.optimizer {
            Optimizer::Sgd { momentum, .. } if momentum == 0.0 => (g, vec![]),
            Optimizer::Sgd { momentum, nesterov } => {
                let v = b.input(&format!("momentum.{name}"), ty.clone());
                let v_new = b.axpby(v, momentum, g, 1.0);
                let step = if nesterov {
                    b.axpby(g, 1.0, v_new, momentum)
                } else {
                    v_new
                };
                (step, vec![(format!("momentum.{name}"), v_new)])
            }
            Optimizer::Adam { beta1, beta2, eps } | Optimizer::AdamW { beta1, beta2, eps } => {
                let (c1, c2) = corrections.expect("Adam has bias corrections");
                let m = b.input(&format!("adam_m.{name}"), ty.clone());
                let v = b.input(&format!("adam_v.{name}"), ty.clone());
                let m_new = b.axpby(m, beta1, g, 1.0 - beta1);
                let gg = b.bin(BinaryOp::Mul, g, g);
                let v_new = b.axpby(v, beta2, gg, 1.0 - beta2);
                let m_hat = b.bin(BinaryOp::Mul, m_new, c1);
                let v_hat = b.bin(BinaryOp::Mul, v_new, c2);
                let root = b.op(Op::Unary(UnaryOp::Sqrt), &[v_hat]);
                let eps = b.scalar(eps);
                let denom = b.bin(BinaryOp::Add, root, eps);
                let mut step = b.bin(BinaryOp::Div, m_hat, denom);
                if wd != 0.0 && matches!(config.optimizer, Optimizer::AdamW { .. }) {
                    step = b.axpby(step, 1.0, *p, wd);
                }
                (
                    step,
                    vec![
                        (format!("adam_m.{name}"), m_new),
                        (format!("adam_v.{name}"), v_new),
                    ],
                )
            }
        };
        let scaled = b.bin(BinaryOp::Mul, step, lr);
        let p_new = b.bin(BinaryOp::Sub, *p, scaled);
        b.graph.outputs.push((format!("new.{name}"), p_new));
        for (state, node) in new_state {
            b.graph.outputs.push((format!("new.{state}"), node));
        }
    }
}

fn position(names: &[&str], name: &str) -> usize {
    names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("the step graph has `{name}`"))
}

impl Trainer {
    /// Builds and compiles the step and validation programs and the
    /// initial parameters: fresh (`config.init`), from `weights` (a
    /// safetensors file), or from a checkpoint (`resume`, which also
    /// restores the optimiser state and the step count).
    ///
    /// The loss is the model's output `config.loss` (default `loss`); a
    /// model without one is taken as a classifier: cross_entropy of its
    /// first output's logits (the operand of a final softmax) against an
    /// added `labels` input. The model's one other f32 input takes the
    /// examples.
    pub fn new(
        model: &Model,
        config: TrainConfig,
        weights: Option<&Path>,
        resume: Option<&Path>,
    ) -> Result<Trainer, Error> {
        check_config(&config)?;
        let (forward, loss_name, prediction) = with_loss(model, config.loss.as_deref())?;
        let data_inputs: Vec<&str> = forward
            .input_names()
            .into_iter()
            .filter(|n| *n != DATA_LABELS)
            .collect();
        let [data_name] = data_inputs[..] else {
            return Err(model_error(
                model,
                format!(
                    "training feeds one input of examples (and `labels`), but the model's inputs are: {}",
                    forward.input_names().join(", ")
                ),
            ));
        };
        let data_name = data_name.to_string();
        if !forward.input_names().contains(&DATA_LABELS) {
            return Err(model_error(
                model,
                format!("the loss needs the labels: the model must have an input `{DATA_LABELS}`"),
            ));
        }
        let classes = prediction.as_ref().and_then(|p| {
            let id = forward.outputs.iter().find(|(n, _)| n == p)?.1;
            forward.node(id).ty.shape.last()?.as_known()
        });

        // The step graph: forward + backward + update.
        let mut step = forward.clone();
        step.outputs
            .retain(|(n, _)| *n == loss_name || Some(n) == prediction.as_ref());
        let gradients =
            append_gradients(&mut step, &loss_name, &Wrt::Params).map_err(|errors| {
                Error::new(
                    ErrorKind::Grad(errors),
                    Some(model.graph()),
                    Some(model.source()),
                )
            })?;
        let params = params_as_inputs(&mut step);
        let grads: HashMap<String, NodeId> =
            gradients.iter().map(|g| (g.name.clone(), g.node)).collect();
        step.outputs
            .retain(|(n, _)| !n.starts_with(crate::autodiff::GRAD_PREFIX));
        append_update(&mut step, &params, &grads, &config);

        // The validation graph: forward only, parameters as inputs.
        let mut eval = forward.clone();
        eval.outputs
            .retain(|(n, _)| *n == loss_name || Some(n) == prediction.as_ref());
        params_as_inputs(&mut eval);

        let options = CompileOptions {
            threads: config.threads,
            isa: None,
        };
        let compile = |g: &Graph| {
            crate::compile::compile(g, &HashMap::new(), options)
                .map(|(c, _)| c)
                .map_err(|e| Error::new(e.into(), Some(model.graph()), Some(model.source())))
        };
        let step_program = compile(&step)?;
        let eval_program = compile(&eval)?;

        // Initial values of every input of the step graph.
        let names: Vec<&str> = step_program.input_names();
        let initial = initial_params(model, &params, &step, &config, weights, resume)?;
        let mut values: Vec<Tensor> = Vec::with_capacity(names.len());
        for &id in &step.inputs {
            let name = step.input_name(id);
            let ty = &step.node(id).ty;
            let value = match initial.get(name) {
                Some(v) => v.clone(),
                None => match ty.known_shape() {
                    Some(shape) => Tensor::zeros(ty.dtype, shape),
                    None => Tensor::zeros(ty.dtype, vec![0; ty.rank()]),
                },
            };
            values.push(value);
        }
        let out_names: Vec<String> = step.outputs.iter().map(|(n, _)| n.clone()).collect();
        let out_pos = |n: &str| {
            out_names
                .iter()
                .position(|o| o == n)
                .expect("output exists")
        };
        let mut carried = Vec::new();
        let mut param_slots = Vec::new();
        let mut state_slots = Vec::new();
        for (name, _) in &params {
            let input = position(&names, name);
            carried.push(Slot {
                input,
                output: out_pos(&format!("new.{name}")),
            });
            param_slots.push((name.clone(), input));
            for prefix in config.optimizer.state_names() {
                let state = format!("{prefix}.{name}");
                let input = position(&names, &state);
                carried.push(Slot {
                    input,
                    output: out_pos(&format!("new.{state}")),
                });
                state_slots.push((state, input));
            }
        }
        let steps_done = initial
            .get("train.step")
            .and_then(|t| t.to_f64_vec().first().copied())
            .unwrap_or(0.0) as u64;
        let epochs_done = initial
            .get("train.epoch")
            .and_then(|t| t.to_f64_vec().first().copied())
            .unwrap_or(0.0) as usize;
        let corrections = matches!(
            config.optimizer,
            Optimizer::Adam { .. } | Optimizer::AdamW { .. }
        )
        .then(|| (position(&names, C1), position(&names, C2)));
        Ok(Trainer {
            data_input: position(&names, &data_name),
            labels_input: position(&names, DATA_LABELS),
            lr_input: position(&names, LR),
            corrections,
            loss_output: out_pos(&loss_name),
            predictions_output: prediction.as_deref().map(out_pos),
            classes,
            config,
            step_program,
            eval_program,
            values,
            carried,
            params: param_slots,
            state: state_slots,
            steps_done,
            epochs_done,
            outputs: Vec::new(),
            data_name,
        })
    }

    /// The epochs completed (a resumed run counts the earlier ones).
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// The current parameters, by name, in the model's order.
    pub fn params(&self) -> Vec<(String, &Tensor)> {
        self.params
            .iter()
            .map(|(n, i)| (n.clone(), &self.values[*i]))
            .collect()
    }

    /// The learning rate at `step` (0-based) of `total` steps, in `epoch`.
    pub fn learning_rate(&self, step: u64, total: u64, epoch: usize) -> f32 {
        let c = &self.config;
        let warm = c.warmup as u64;
        if step < warm {
            return c.lr * (step + 1) as f32 / warm as f32;
        }
        match c.schedule {
            Schedule::Constant => c.lr,
            Schedule::Step { every, gamma } => c.lr * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine => {
                let span = total.saturating_sub(warm).max(1) as f64;
                let t = ((step - warm) as f64 / span).min(1.0);
                (c.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }

    /// Trains for the configured epochs (those not already done by a
    /// resumed run) on `train` and validates on `val` after each. Saves
    /// nothing itself; returns the epoch reports and whether the observer
    /// stopped it early.
    pub fn fit(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        observer: &mut dyn Observer,
    ) -> Result<(Vec<EpochReport>, bool), Error> {
        self.check_data(train)?;
        if let Some(v) = val {
            self.check_data(v)?;
        }
        let n = train.x.shape()[0];
        let batch = self.config.batch.min(n);
        // Full batches only: one compiled plan, every step the same size.
        let steps_per_epoch = n / batch;
        let total = (steps_per_epoch * self.config.epochs) as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ 0x7a11);
        // Re-run the shuffles of the epochs a resumed run already did.
        let mut order: Vec<usize> = (0..n).collect();
        for _ in 0..self.epochs_done {
            order.shuffle(&mut rng);
        }
        let row_shape: Vec<usize> = train.x.shape()[1..].to_vec();
        let row_len: usize = row_shape.iter().product();
        let mut batch_shape = vec![batch];
        batch_shape.extend(&row_shape);
        self.values[self.data_input] = Tensor::f32(batch_shape, vec![0.0; batch * row_len]);
        self.values[self.labels_input] = Tensor::i64(vec![batch], vec![0; batch]);
        let x_all = train.x.as_f32().expect("checked f32");
        let labels_all = labels_i64(&train.labels);
        let mut reports = Vec::new();
        let mut stopped = false;
        for epoch in self.epochs_done..self.config.epochs {
            order.shuffle(&mut rng);
            let started = std::time::Instant::now();
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            for s in 0..steps_per_epoch {
                let rows = &order[s * batch..(s + 1) * batch];
                {
                    let xs = self.values[self.data_input]
                        .as_f32_mut()
                        .expect("f32 batch");
                    for (k, &r) in rows.iter().enumerate() {
                        xs[k * row_len..(k + 1) * row_len]
                            .copy_from_slice(&x_all[r * row_len..(r + 1) * row_len]);
                    }
                }
                if let Some(ys) = self.values[self.labels_input].as_i64_mut() {
                    for (k, &r) in rows.iter().enumerate() {
                        ys[k] = labels_all[r];
                    }
                }
                let lr = self.learning_rate(self.steps_done, total, epoch);
                self.values[self.lr_input] = Tensor::scalar(lr);
                if let (
                    Some((c1, c2)),
                    Optimizer::Adam { beta1, beta2, .. } | Optimizer::AdamW { beta1, beta2, .. },
                ) = (self.corrections, self.config.optimizer)
                {
                    let t = (self.steps_done + 1) as i32;
                    self.values[c1] = Tensor::scalar((1.0 / (1.0 - (beta1 as f64).powi(t))) as f32);
                    self.values[c2] = Tensor::scalar((1.0 / (1.0 - (beta2 as f64).powi(t))) as f32);
                }
                let inputs: Vec<&Tensor> = self.values.iter().collect();
                self.step_program
                    .run_into(&inputs, &Bindings::new(), &mut self.outputs)
                    .map_err(|e| Error::new(e.into(), None, None))?;
                let loss = self.outputs[self.loss_output].to_f64_vec()[0] as f32;
                if !loss.is_finite() {
                    return Err(fail(TrainError::Diverged {
                        value: loss,
                        epoch: epoch + 1,
                        step: s + 1,
                    }));
                }
                for slot in &self.carried {
                    std::mem::swap(&mut self.values[slot.input], &mut self.outputs[slot.output]);
                }
                self.steps_done += 1;
                loss_sum += f64::from(loss) * batch as f64;
                seen += batch;
                if let Some(p) = self.predictions_output {
                    correct += count_correct(&self.outputs[p], &labels_all, rows);
                }
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                let report = StepReport {
                    epoch: epoch + 1,
                    step: s + 1,
                    steps_per_epoch,
                    loss,
                    accuracy: self
                        .predictions_output
                        .map(|_| correct as f64 / seen as f64),
                    samples_per_sec: seen as f64 / elapsed,
                    lr,
                };
                if !observer.step(&report) {
                    stopped = true;
                    break;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            if stopped {
                break;
            }
            self.epochs_done = epoch + 1;
            let (val_loss, val_accuracy) = match val {
                Some(v) if v.x.shape()[0] > 0 => {
                    let (l, a) = self.evaluate(v)?;
                    (Some(l), a)
                }
                _ => (None, None),
            };
            let report = EpochReport {
                epoch: epoch + 1,
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: self
                    .predictions_output
                    .map(|_| correct as f64 / seen.max(1) as f64),
                val_loss,
                val_accuracy,
                samples_per_sec: seen as f64 / seconds.max(1e-9),
                seconds,
            };
            observer.epoch(&report);
            reports.push(report);
        }
        Ok((reports, stopped))
    }

    /// Mean loss and accuracy on `data` with the current parameters, in
    /// chunks of at most 1024 examples.
    pub fn evaluate(&self, data: &Dataset) -> Result<(f64, Option<f64>), Error> {
        self.check_data(data)?;
        let names: Vec<String> = self
            .eval_program
            .input_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let n = data.x.shape()[0];
        let row_len: usize = data.x.shape()[1..].iter().product();
        let x_all = data.x.as_f32().expect("checked f32");
        let labels_all = labels_i64(&data.labels);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        let mut start = 0;
        let mut outputs = Vec::new();
        while start < n {
            let end = (start + 1024).min(n);
            let mut shape = vec![end - start];
            shape.extend(&data.x.shape()[1..]);
            let x = Tensor::f32(shape, x_all[start * row_len..end * row_len].to_vec());
            let y = Tensor::i64(vec![end - start], labels_all[start..end].to_vec());
            let mut inputs: Vec<&Tensor> = Vec::with_capacity(names.len());
            for name in &names {
                inputs.push(if *name == self.data_name {
                    &x
                } else if name == DATA_LABELS {
                    &y
                } else {
                    let (_, i) = self
                        .params
                        .iter()
                        .find(|(p, _)| p == name)
                        .expect("every other validation input is a parameter");
                    &self.values[*i]
                });
            }
            self.eval_program
                .run_into(&inputs, &Bindings::new(), &mut outputs)
                .map_err(|e| Error::new(e.into(), None, None))?;
            let loss_at = self.eval_output_index("loss", self.config.loss.as_deref());
            loss_sum += outputs[loss_at].to_f64_vec()[0] * (end - start) as f64;
            if self.predictions_output.is_some() {
                let rows: Vec<usize> = (0..end - start).collect();
                correct += count_correct(&outputs[1 - loss_at], &labels_all[start..end], &rows);
            }
            start = end;
        }
        let accuracy = self
            .predictions_output
            .map(|_| correct as f64 / n.max(1) as f64);
        Ok((loss_sum / n.max(1) as f64, accuracy))
    }

    fn eval_output_index(&self, default: &str, loss: Option<&str>) -> usize {
        let name = loss.unwrap_or(default);
        self.eval_program
            .graph()
            .outputs
            .iter()
            .position(|(n, _)| n == name)
            .expect("the validation graph has the loss")
    }

    /// Checks examples and labels against the model: every problem at once.
    pub fn check_data(&self, data: &Dataset) -> Result<(), Error> {
        let mut problems = Vec::new();
        let expected = &self
            .step_program
            .graph()
            .node(self.step_program.graph().inputs[self.data_input])
            .ty;
        let x = &data.x;
        let fits = x.dtype() == DType::F32
            && x.shape().len() == expected.rank()
            && x.shape()[1..]
                .iter()
                .zip(&expected.shape[1..])
                .all(|(n, d)| d.as_known().is_none_or(|k| k == *n));
        if !fits {
            problems.push(format!(
                "the examples are {}{:?}, the model's input `{}` is {expected} (rows along the first axis)",
                x.dtype(),
                x.shape(),
                self.data_name
            ));
        }
        let labels = &data.labels;
        if !labels.dtype().is_integer() || labels.shape().len() != 1 {
            problems.push(format!(
                "the labels are {}{:?}: integer class ids, one per example, are needed",
                labels.dtype(),
                labels.shape()
            ));
        } else if labels.shape()[0] != x.shape().first().copied().unwrap_or(0) {
            problems.push(format!(
                "{} labels for {} examples",
                labels.shape()[0],
                x.shape().first().copied().unwrap_or(0)
            ));
        } else if let Some(classes) = self.classes {
            if let Some((i, bad)) = labels_i64(labels)
                .iter()
                .enumerate()
                .find(|(_, &l)| l < 0 || l >= classes as i64)
            {
                problems.push(format!(
                    "label {bad} (example {i}) is not a class id of the model's {classes} classes (0 to {})",
                    classes - 1
                ));
            }
        }
        if x.shape().first() == Some(&0) {
            problems.push("there are no examples".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(fail(TrainError::Data(problems.join("\n"))))
        }
    }

    /// Writes the parameters as a safetensors file `lamina run --weights`
    /// reads; atomically (a temporary file beside it, then renamed).
    pub fn save_weights(&self, path: &Path) -> Result<(), Error> {
        let tensors: Vec<(String, &Tensor)> = self.params();
        write_safetensors(path, &tensors)
    }

    /// Writes a checkpoint: parameters, optimiser state and step and epoch
    /// counts, for `resume`; atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), Error> {
        let step = Tensor::i64(vec![1], vec![self.steps_done as i64]);
        let epoch = Tensor::i64(vec![1], vec![self.epochs_done as i64]);
        let mut tensors: Vec<(String, &Tensor)> = self.params();
        for (name, i) in &self.state {
            tensors.push((name.clone(), &self.values[*i]));
        }
        tensors.push(("train.step".into(), &step));
        tensors.push(("train.epoch".into(), &epoch));
        write_safetensors(path, &tensors)
    }
}

fn check_config(c: &TrainConfig) -> Result<(), Error> {
    let mut problems = Vec::new();
    if c.batch == 0 {
        problems.push("--batch must be at least 1".to_string());
    }
    if !(c.lr.is_finite() && c.lr > 0.0) {
        problems.push(format!("--lr must be a positive number, got {}", c.lr));
    }
    if !(0.0..1.0).contains(&c.val_split) {
        problems.push(format!(
            "--val-split must be in [0, 1), got {}",
            c.val_split
        ));
    }
    if !(c.weight_decay.is_finite() && c.weight_decay >= 0.0) {
        problems.push(format!(
            "--weight-decay must be >= 0, got {}",
            c.weight_decay
        ));
    }
    if let Some(clip) = c.clip_norm {
        if !(clip.is_finite() && clip > 0.0) {
            problems.push(format!("--clip-norm must be positive, got {clip}"));
        }
    }
    if let Optimizer::Sgd { momentum, nesterov } = c.optimizer {
        if !(0.0..1.0).contains(&momentum) {
            problems.push(format!("--momentum must be in [0, 1), got {momentum}"));
        }
        if nesterov && momentum == 0.0 {
            problems.push("--nesterov needs --momentum above 0".into());
        }
    }
    if c.threads == 0 {
        problems.push("--threads must be at least 1".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(fail(TrainError::Config(problems.join("\n"))))
    }
}

fn labels_i64(labels: &Tensor) -> Vec<i64> {
    labels.to_f64_vec().iter().map(|&v| v as i64).collect()
}

/// Rows (of `rows`, in batch order) whose argmax matches the label.
fn count_correct(predictions: &Tensor, labels: &[i64], rows: &[usize]) -> usize {
    let Some(values) = predictions.as_f32() else {
        return 0;
    };
    let classes = predictions.shape().last().copied().unwrap_or(1).max(1);
    values
        .chunks(classes)
        .zip(rows)
        .filter(|(row, &r)| {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                );
            best.0 as i64 == labels[r]
        })
        .count()
}

/// The starting values: a checkpoint, fresh ones, or the weight file.
fn initial_params(
    model: &Model,
    params: &[(String, NodeId)],
    step: &Graph,
    config: &TrainConfig,
    weights: Option<&Path>,
    resume: Option<&Path>,
) -> Result<HashMap<String, Tensor>, Error> {
    let mut values = HashMap::new();
    let source = match (resume, config.init) {
        (Some(path), _) => Some(path.to_path_buf()),
        (None, true) => None,
        (None, false) => match weights {
            Some(p) => Some(p.to_path_buf()),
            None => Some(model.conventional_weights().ok_or_else(|| {
                fail(TrainError::Config(
                    "no weights to start from: give --init (fresh values), --weights FILE or --resume CHECKPOINT".into(),
                ))
            })?),
        },
    };
    let file = match &source {
        Some(path) => Some(WeightFile::load(path).map_err(|e| Error::new(e.into(), None, None))?),
        None => None,
    };
    let mut problems = Vec::new();
    for (name, id) in params {
        let ty = &step.node(*id).ty;
        let Some(shape) = ty.known_shape() else {
            problems.push(format!(
                "parameter `{name}` is {ty}: a trained parameter needs known dims"
            ));
            continue;
        };
        let value = match &file {
            Some(f) => match f.get(name) {
                Some(t) if t.dtype() == ty.dtype && t.shape() == shape.as_slice() => t.clone(),
                Some(t) => {
                    problems.push(format!(
                        "parameter `{name}` is {}{:?} in {}, the model declares {ty}",
                        t.dtype(),
                        t.shape(),
                        source
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ));
                    continue;
                }
                None => {
                    problems.push(format!(
                        "parameter `{name}` is not in {}",
                        source
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ));
                    continue;
                }
            },
            None => {
                let init = match &model.graph().node(*id).op {
                    Op::Param(p) => p.init.clone(),
                    _ => None,
                };
                let init = init.unwrap_or(if shape.len() >= 2 {
                    crate::ir::Init::Xavier { seed: config.seed }
                } else {
                    crate::ir::Init::Zeros
                });
                materialize(&init, name, &shape)
            }
        };
        values.insert(name.clone(), value);
    }
    if let (Some(f), Some(_)) = (&file, resume) {
        for prefix in config.optimizer.state_names() {
            for (name, _) in params {
                let key = format!("{prefix}.{name}");
                match f.get(&key) {
                    Some(t) => {
                        values.insert(key, t.clone());
                    }
                    None => problems.push(format!(
                        "the checkpoint has no `{key}` (was it written with another --optimizer?)"
                    )),
                }
            }
        }
        for key in ["train.step", "train.epoch"] {
            match f.get(key) {
                Some(t) => {
                    values.insert(key.to_string(), t.clone());
                }
                None => problems.push(format!(
                    "the checkpoint has no `{key}`: is it a checkpoint of `lamina train`?"
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(fail(TrainError::Config(problems.join("\n"))))
    }
}

/// Writes `tensors` as safetensors to `path` through a temporary file in
/// the same folder and a rename, so a crash never leaves a broken file.
pub fn write_safetensors(path: &Path, tensors: &[(String, &Tensor)]) -> Result<(), Error> {
    use safetensors::tensor::{Dtype, TensorView};
    let write_error = |message: String| {
        fail(TrainError::Write {
            path: path.display().to_string(),
            message,
        })
    };
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, data): (Dtype, Vec<u8>) = match t.dtype() {
                DType::F32 => (
                    Dtype::F32,
                    t.as_f32()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                _ => (
                    Dtype::I64,
                    labels_i64(t).iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            };
            (name.clone(), dtype, t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| write_error(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let serialized =
        safetensors::tensor::serialize(views, None).map_err(|e| write_error(e.to_string()))?;
    crate::runtime::files::write_atomically(path, &serialized)
        .map_err(|e| write_error(e.to_string()))
}

/// Splits `data` into (train, validation) by a seeded shuffle: the first
/// `val_split` share of the shuffled rows validates.
pub fn split(data: &Dataset, val_split: f64, seed: u64) -> (Dataset, Dataset) {
    let n = data.x.shape()[0];
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5911));
    let held = ((n as f64) * val_split).round() as usize;
    let pick = |rows: &[usize]| {
        let row_len: usize = data.x.shape()[1..].iter().product();
        let xs = data.x.as_f32().map(|x| {
            rows.iter()
                .flat_map(|&r| x[r * row_len..(r + 1) * row_len].iter().copied())
                .collect::<Vec<f32>>()
        });
        let mut shape = vec![rows.len()];
        shape.extend(&data.x.shape()[1..]);
        let labels = labels_i64(&data.labels);
        Dataset {
            x: Tensor::f32(shape, xs.unwrap_or_default()),
            labels: Tensor::i64(
                vec![rows.len()],
                rows.iter()
                    .map(|&r| labels.get(r).copied().unwrap_or(0))
                    .collect(),
            ),
        }
    };
    let (val, train) = order.split_at(held);
    (pick(train), pick(val))
}
