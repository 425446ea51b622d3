//! Normalisations along one axis: `softmax`, `log_softmax`, `layer_norm`.

use super::Float;

/// `softmax(x, axis)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Softmax {
    pub axis: usize,
}

/// `log_softmax(x, axis)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogSoftmax {
    pub axis: usize,
}

/// `layer_norm(x, gain, bias)`: normalise over `axis` (the last axis),
/// gain and bias have that axis's length.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerNorm {
    pub axis: usize,
    pub eps: Float,
}
