//! Ops with no operands: model inputs, parameters and constants. Their
//! values come from the run (inputs), the weights or initializers
//! (parameters), or the graph itself (constants).

use std::fmt;
use std::sync::Arc;

use super::Float;
use crate::tensor::Tensor;

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
/// constants from passes). Compared by value; CSE compares bit patterns.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    pub value: Arc<Tensor>,
}
