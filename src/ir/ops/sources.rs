//! Ops with no operands: model inputs, parameters and constants. Their
//! values come from the run (inputs), the weights or initializers
//! (parameters), or the graph itself (constants).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::shape::{err, ShapeError};
use super::{EvalError, Float, OpKind};
use crate::ir::{Dim, TensorType};
use crate::tensor::{Tensor, TensorData};

/// A seeded initializer for a parameter that has no weight file entry.
/// The seed is mixed with the parameter's full name, so the same block
/// repeated under different prefixes gets different values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Init {
    Zeros,
    Ones,
    Uniform {
        low: Float,
        high: Float,
        seed: u64,
    },
    Normal {
        mean: Float,
        std: Float,
        seed: u64,
    },
    /// Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    Xavier {
        seed: u64,
    },
    /// Kaiming normal: N(0, sqrt(2 / fan_in)).
    He {
        seed: u64,
    },
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Zeros => write!(f, "zeros"),
            Init::Ones => write!(f, "ones"),
            Init::Uniform { low, high, seed } => {
                write!(f, "uniform(low={low}, high={high}, seed={seed})")
            }
            Init::Normal { mean, std, seed } => {
                write!(f, "normal(mean={mean}, std={std}, seed={seed})")
            }
            Init::Xavier { seed } => write!(f, "xavier(seed={seed})"),
            Init::He { seed } => write!(f, "he(seed={seed})"),
        }
    }
}

/// A model input, fed at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Input {
    pub name: String,
}

/// A named parameter: from the weight file, or from `init`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    pub name: String,
    pub init: Option<Init>,
}

/// A literal value known at compile time (scalars from the source, folded
/// constants from passes). `==` compares values; CSE compares bit patterns
/// (so `0.0` and `-0.0` stay apart), which `Hash` follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    pub value: Arc<Tensor>,
}

/// Hashes the shape, dtype and a prefix of the data (by bit pattern): equal
/// constants hash equal, and CSE settles collisions by comparing all bits.
impl Hash for Constant {
    fn hash<H: Hasher>(&self, h: &mut H) {
        const PREFIX: usize = 64;
        let t = &self.value;
        t.shape().hash(h);
        match t.data() {
            TensorData::F32(v) => v.iter().take(PREFIX).for_each(|x| x.to_bits().hash(h)),
            TensorData::I64(v) => v.iter().take(PREFIX).for_each(|x| x.hash(h)),
            TensorData::I32(v) => v.iter().take(PREFIX).for_each(|x| x.hash(h)),
            TensorData::Bool(v) => v.iter().take(PREFIX).for_each(|x| x.hash(h)),
        }
        t.dtype().hash(h);
    }
}

/// Inputs and parameters have a declared type and take their values from
/// the run; the interpreter's driver and the executor handle them.
fn declared(name: &str) -> Result<TensorType, ShapeError> {
    err(format!("{name} has a declared type, not an inferred one"))
}

impl OpKind for Input {
    fn name(&self) -> &'static str {
        "input"
    }

    fn arity(&self) -> (usize, usize) {
        (0, 0)
    }

    fn infer(&self, _inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        declared("input")
    }

    fn eval(&self, _inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        Err(EvalError::SourceOp { op: "input" })
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

impl OpKind for Param {
    fn name(&self) -> &'static str {
        "param"
    }

    fn arity(&self) -> (usize, usize) {
        (0, 0)
    }

    fn infer(&self, _inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        declared("param")
    }

    fn eval(&self, _inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        Err(EvalError::SourceOp { op: "param" })
    }
}

impl OpKind for Constant {
    fn name(&self) -> &'static str {
        "const"
    }

    fn arity(&self) -> (usize, usize) {
        (0, 0)
    }

    fn infer(&self, _inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
        Ok(TensorType::new(
            self.value.dtype(),
            self.value.shape().iter().map(|&d| Dim::known(d)).collect(),
        ))
    }

    fn eval(&self, _inputs: &[&Tensor], _out_shape: &[usize]) -> Result<Tensor, EvalError> {
        Ok(Tensor::clone(&self.value))
    }

    fn attributes(&self) -> Vec<(&'static str, String)> {
        let value = &self.value;
        let shown = if value.len() == 1 {
            format!("{}", value.to_f64_vec()[0] as f32)
        } else {
            format!("<{} values>", value.len())
        };
        vec![("value", shown)]
    }
}
