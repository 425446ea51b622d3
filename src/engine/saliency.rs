//! Saliency maps: how much each input value moves one class score, as the
//! gradient of that score with respect to the input.
//!
//! [`SaliencyModel`] appends to a copy of the model's graph the score
//! `sum(scores * select)` (`select` a one-hot input over the classes) and,
//! with [`crate::autodiff::append_gradients`], its gradient with respect to
//! one f32 input; the result compiles like any model (JIT by default). The
//! scores are the logits: the operand of a final softmax or log_softmax
//! over the last axis, else the output itself. Examples of a batch do not
//! mix in a model's forward pass, so one run yields every example's
//! gradient for one class; a batch whose examples ask for different classes
//! runs once per class.

use std::collections::HashMap;

use super::train::logits_of;
use super::{Error, ErrorKind, Model, Options, Session, Weights};
use crate::autodiff::{append_gradients, Wrt, GRAD_PREFIX};
use crate::ir::builder::add_typed;
use crate::ir::ops::{Input, Reduce, ReduceOp};
use crate::ir::{BinaryOp, DType, Graph, Op, TensorType};
use crate::model::LoadedModel;
use crate::tensor::Tensor;

/// The one-hot input that picks the class whose score is differentiated.
pub const SELECT_INPUT: &str = "saliency.select";
/// The outputs of the saliency graph: every class score, and the score
/// differentiated (summed over the batch).
pub const SCORES_OUTPUT: &str = "saliency.scores";
pub const SCORE_OUTPUT: &str = "saliency.score";

/// Why a saliency map cannot be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SaliencyError {
    #[error("the model has no output `{name}` (outputs: {known})")]
    UnknownOutput { name: String, known: String },
    #[error("the model has no outputs")]
    NoOutputs,
    #[error(
        "output `{name}` is {ty}: a saliency map needs f32 class scores whose last axis has a known size"
    )]
    NotScores { name: String, ty: String },
    #[error("the model has no f32 input to differentiate against (inputs: {inputs})")]
    NoF32Input { inputs: String },
    #[error("the model has several f32 inputs ({inputs}): name the one to differentiate against")]
    WhichInput { inputs: String },
    #[error("the model has no f32 input `{name}` (its f32 inputs: {inputs})")]
    UnknownInput { name: String, inputs: String },
    #[error("the input `{name}` is missing")]
    MissingInput { name: String },
    #[error("class {class} is out of range: the scores have {classes} classes (0 to {})", .classes - 1)]
    ClassOutOfRange { class: usize, classes: usize },
    #[error("the scores of example {example} are not finite ({value}): no class is predicted")]
    NotFinite { example: usize, value: f32 },
    #[error("input `{input}` {shape:?}: {message}")]
    Layout {
        input: String,
        shape: Vec<usize>,
        message: String,
    },
}

/// A model compiled to give class scores and the gradient of one of them
/// with respect to an input.
///
/// ```
/// use std::collections::HashMap;
/// use lamina::engine::saliency::SaliencyModel;
/// use lamina::engine::{Model, Options, Weights};
/// use lamina::tensor::Tensor;
///
/// let model = Model::from_source("m.lam", "model m {\n  input x: f32[n, 2]\n  param w: f32[2, 2] = xavier(seed=1)\n  output p = softmax(x @ w, axis=-1)\n}\n")?;
/// let saliency = SaliencyModel::new(&model, Weights::None, &Options::default(), None, None)?;
/// let x = Tensor::f32(vec![1, 2], vec![0.5, -1.0]);
/// let s = saliency.run(HashMap::from([("x".to_string(), x)]), Some(1))?;
/// assert_eq!(s.classes, [1]);
/// assert_eq!(s.gradient.shape(), [1, 2]); // d (x @ w)[1] / d x = w[:, 1]
/// # Ok::<(), lamina::engine::Error>(())
/// ```
pub struct SaliencyModel {
    session: Session,
    input: String,
    classes: usize,
}

/// One run's result.
#[derive(Clone, Debug)]
pub struct Saliency {
    /// The input differentiated against, and its value.
    pub input_name: String,
    pub input: Tensor,
    /// Every class score (logits) of every example: `[..., classes]`.
    pub scores: Tensor,
    /// Per example: the class with the highest score, and the class whose
    /// score was differentiated.
    pub predicted: Vec<usize>,
    pub classes: Vec<usize>,
    /// d score(class) / d input, shaped like the input.
    pub gradient: Tensor,
}

/// One example's map, ready to draw: `height` x `width` pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct SaliencyMap {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// |d score / d input| at each pixel, the largest over its channels; row-major.
    pub map: Vec<f32>,
    /// The example's input values, row-major, channels last.
    pub picture: Vec<f32>,
    pub class: usize,
    pub predicted: usize,
    /// The score of `class`.
    pub score: f32,
}

fn fail(model: &Model, e: SaliencyError) -> Error {
    Error::new(ErrorKind::Saliency(e), None, Some(model.source()))
}

impl SaliencyModel {
    /// Builds and compiles the saliency graph of `model`: the scores behind
    /// `output` (default: the first output) and their gradient with respect
    /// to `input` (default: the model's only f32 input).
    pub fn new(
        model: &Model,
        weights: Weights,
        options: &Options,
        input: Option<&str>,
        output: Option<&str>,
    ) -> Result<SaliencyModel, Error> {
        let mut graph: Graph = model.graph().clone();
        let (out_name, out) = match output {
            Some(name) => graph
                .outputs
                .iter()
                .find(|(n, _)| n == name)
                .cloned()
                .ok_or_else(|| {
                    fail(
                        model,
                        SaliencyError::UnknownOutput {
                            name: name.to_string(),
                            known: model.output_names().join(", "),
                        },
                    )
                })?,
            None => graph
                .outputs
                .first()
                .cloned()
                .ok_or_else(|| fail(model, SaliencyError::NoOutputs))?,
        };
        let out_ty = graph.node(out).ty.clone();
        let classes = out_ty
            .shape
            .last()
            .and_then(|d| d.as_known())
            .filter(|&c| c > 0 && out_ty.dtype == DType::F32);
        let Some(classes) = classes else {
            return Err(fail(
                model,
                SaliencyError::NotScores {
                    name: out_name,
                    ty: out_ty.to_string(),
                },
            ));
        };
        let f32_inputs: Vec<String> = model
            .input_types()
            .into_iter()
            .filter(|(_, ty)| ty.dtype == DType::F32)
            .map(|(n, _)| n.to_string())
            .collect();
        let input = match (input, &f32_inputs[..]) {
            (Some(name), _) if f32_inputs.iter().any(|n| n == name) => name.to_string(),
            (Some(name), _) => {
                return Err(fail(
                    model,
                    SaliencyError::UnknownInput {
                        name: name.to_string(),
                        inputs: f32_inputs.join(", "),
                    },
                ))
            }
            (None, [only]) => only.clone(),
            (None, []) => {
                return Err(fail(
                    model,
                    SaliencyError::NoF32Input {
                        inputs: model.input_names().join(", "),
                    },
                ))
            }
            (None, _) => {
                return Err(fail(
                    model,
                    SaliencyError::WhichInput {
                        inputs: f32_inputs.join(", "),
                    },
                ))
            }
        };

        let logits = logits_of(&graph, out);
        let span = graph.node(out).span;
        let select = graph.add_node(
            Op::Input(Input {
                name: SELECT_INPUT.into(),
            }),
            &[],
            TensorType::new(DType::F32, vec![crate::ir::Dim::known(classes)]),
            span,
        );
        graph.inputs.push(select);
        let built =
            |e: crate::ir::shape_rules::ShapeError| panic!("the saliency score is ill-typed: {e}");
        let picked = add_typed(
            &mut graph,
            Op::Binary(BinaryOp::Mul),
            &[logits, select],
            span,
        )
        .unwrap_or_else(built);
        let rank = graph.node(picked).ty.rank();
        let score = add_typed(
            &mut graph,
            Op::Reduce(Reduce {
                op: ReduceOp::Sum,
                axes: (0..rank).collect(),
                keepdims: false,
            }),
            &[picked],
            span,
        )
        .unwrap_or_else(built);
        graph.outputs = vec![
            (SCORES_OUTPUT.to_string(), logits),
            (SCORE_OUTPUT.to_string(), score),
        ];
        append_gradients(&mut graph, SCORE_OUTPUT, &Wrt::Names(vec![input.clone()])).map_err(
            |errors| {
                Error::new(
                    ErrorKind::Grad(errors),
                    Some(model.graph()),
                    Some(model.source()),
                )
            },
        )?;
        let derived = Model {
            loaded: LoadedModel {
                graph,
                ..model.loaded.clone()
            },
        };
        let session = derived.compile(weights, options)?;
        Ok(SaliencyModel {
            session,
            input,
            classes,
        })
    }

    /// The input the gradient is taken with respect to.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// How many classes the scores have.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The compiled session (for its image and text helpers).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Runs the model on `inputs` and differentiates the score of `class`
    /// (default: each example's predicted class) with respect to the input.
    pub fn run(
        &self,
        mut inputs: HashMap<String, Tensor>,
        class: Option<usize>,
    ) -> Result<Saliency, Error> {
        let model = self.session.model();
        if let Some(class) = class.filter(|&c| c >= self.classes) {
            return Err(fail(
                model,
                SaliencyError::ClassOutOfRange {
                    class,
                    classes: self.classes,
                },
            ));
        }
        let Some(input) = inputs.get(&self.input).cloned() else {
            return Err(fail(
                model,
                SaliencyError::MissingInput {
                    name: self.input.clone(),
                },
            ));
        };
        let grad_name = format!("{GRAD_PREFIX}{}", self.input);
        let mut run = |class: Option<usize>| -> Result<(Tensor, Tensor), Error> {
            let mut select = vec![0.0f32; self.classes];
            if let Some(c) = class {
                select[c] = 1.0;
            }
            inputs.insert(
                SELECT_INPUT.to_string(),
                Tensor::f32(vec![self.classes], select),
            );
            let mut outputs: HashMap<String, Tensor> =
                self.session.run(&inputs)?.into_iter().collect();
            let scores = outputs
                .remove(SCORES_OUTPUT)
                .expect("the saliency graph's scores");
            let grad = outputs
                .remove(&grad_name)
                .expect("the saliency graph's gradient");
            Ok((scores, grad))
        };
        // Without a class, a first run (nothing selected) finds the predictions.
        let (scores, first_grad) = run(class)?;
        let values = scores.as_f32().expect("f32 scores");
        let mut predicted = Vec::with_capacity(values.len() / self.classes);
        for (example, row) in values.chunks(self.classes).enumerate() {
            if let Some(&value) = row.iter().find(|v| !v.is_finite()) {
                return Err(fail(model, SaliencyError::NotFinite { example, value }));
            }
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (k, &v)| if v > row[best] { k } else { best });
            predicted.push(best);
        }
        let chosen: Vec<usize> = match class {
            Some(c) => vec![c; predicted.len()],
            None => predicted.clone(),
        };
        let gradient = if class.is_some() {
            first_grad
        } else {
            self.gradient_per_class(&chosen, &input, &mut run)?
        };
        Ok(Saliency {
            input_name: self.input.clone(),
            input,
            scores,
            predicted,
            classes: chosen,
            gradient,
        })
    }

    /// The gradient for examples that each want their own class: one run
    /// per distinct class, each example's rows taken from its class's run.
    fn gradient_per_class(
        &self,
        chosen: &[usize],
        input: &Tensor,
        run: &mut impl FnMut(Option<usize>) -> Result<(Tensor, Tensor), Error>,
    ) -> Result<Tensor, Error> {
        let mut distinct = chosen.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let total = input.shape().iter().product::<usize>();
        let per_example = if chosen.len() > 1 && input.shape().first() == Some(&chosen.len()) {
            total / chosen.len()
        } else {
            total
        };
        let mut gradient = vec![0.0f32; total];
        for class in distinct {
            let (_, grad) = run(Some(class))?;
            let grad = grad.as_f32().expect("an f32 gradient");
            if per_example == total {
                gradient.copy_from_slice(grad);
                continue;
            }
            for (example, _) in chosen.iter().enumerate().filter(|(_, &c)| c == class) {
                let rows = example * per_example..(example + 1) * per_example;
                gradient[rows.clone()].copy_from_slice(&grad[rows]);
            }
        }
        Ok(Tensor::f32(input.shape().to_vec(), gradient))
    }
}

impl Saliency {
    /// One map per example. The input's first axis is the batch when the
    /// scores have one row per entry of it (else the whole input is one
    /// example). An example of shape `[C, H, W]` (channels first, as
    /// `image(...)` inputs and conv2d have them) or `[H, W]` is a picture as
    /// it is; a flat `[N]` one is `picture` = (H, W) with N / (H * W)
    /// channels first, or a square of side sqrt(N) when not given.
    pub fn maps(&self, picture: Option<(usize, usize)>) -> Result<Vec<SaliencyMap>, SaliencyError> {
        let shape = self.input.shape();
        let examples = self.predicted.len();
        let layout_error = |message: String| SaliencyError::Layout {
            input: self.input_name.clone(),
            shape: shape.to_vec(),
            message,
        };
        let dims: &[usize] =
            if shape.first() == Some(&examples) && (examples > 1 || shape.len() > 1) {
                &shape[1..]
            } else if examples == 1 {
                shape
            } else {
                return Err(layout_error(format!(
                    "the scores have {examples} rows but the input's first axis is not the batch"
                )));
            };
        let size: usize = dims.iter().product();
        let (channels, height, width) = match (picture, dims) {
            (Some((h, w)), _) => {
                let pixels = h.checked_mul(w).filter(|&p| p > 0 && size % p == 0);
                let Some(pixels) = pixels else {
                    return Err(layout_error(format!(
                        "an example has {size} values, which is not a whole number of {h}x{w} pictures"
                    )));
                };
                (size / pixels, h, w)
            }
            (None, &[c, h, w]) => (c, h, w),
            (None, &[h, w]) => (1, h, w),
            (None, &[n]) => {
                let side = (n as f64).sqrt().round() as usize;
                if side * side != n {
                    return Err(layout_error(format!(
                        "an example of {n} values is not a square picture: give its height and width"
                    )));
                }
                (1, side, side)
            }
            (None, _) => return Err(layout_error(
                "an example must be [channels, height, width], [height, width] or flat to be drawn"
                    .into(),
            )),
        };
        let input = self.input.as_f32().expect("an f32 input");
        let grad = self.gradient.as_f32().expect("an f32 gradient");
        let scores = self.scores.as_f32().expect("f32 scores");
        let classes = scores.len() / examples.max(1);
        let pixels = height * width;
        Ok((0..examples)
            .map(|e| {
                let at = e * size;
                let mut map = vec![0.0f32; pixels];
                let mut picture = vec![0.0f32; pixels * channels];
                for c in 0..channels {
                    for p in 0..pixels {
                        let i = at + c * pixels + p;
                        map[p] = map[p].max(grad[i].abs());
                        picture[p * channels + c] = input[i];
                    }
                }
                SaliencyMap {
                    height,
                    width,
                    channels,
                    map,
                    picture,
                    class: self.classes[e],
                    predicted: self.predicted[e],
                    score: scores[e * classes + self.classes[e]],
                }
            })
            .collect())
    }
}
