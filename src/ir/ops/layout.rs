//! Ops that move elements without arithmetic: `permute` (and `transpose`),
//! `reshape`, `concat`, `slice`. They work on every dtype.

use super::Dim;

/// Output axis i is input axis `perm[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permute {
    pub perm: Vec<usize>,
}

/// Target shape with every dim resolved (no -1 left).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reshape {
    pub shape: Vec<Dim>,
}

/// Join the operands along `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    pub axis: usize,
}

/// Elements `start, start+step, ...` below `end` along `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slice {
    pub axis: usize,
    pub start: usize,
    pub end: Dim,
    pub step: usize,
}
