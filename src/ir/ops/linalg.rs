//! Matrix products: `matmul` (`a @ b`) and the `fused_linear` layer the
//! `fuse-linear` pass makes of matmul + bias + activation + residual.

use super::UnaryOp;

/// `a @ b`: 2-D, or batched with broadcast batch dims; a 1-D operand is
/// not promoted (write a reshape). `transpose_*` swap the last two axes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MatMul {
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// The epilogue of a fused linear layer, applied to each output element
/// before it is stored: `act(acc + bias) + residual`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearEpilogue {
    pub bias: bool,
    pub activation: Option<UnaryOp>,
    pub residual: bool,
}

/// matmul + epilogue. Inputs: a, b, then bias (if any), then residual (if any).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FusedLinear {
    pub transpose_b: bool,
    pub epilogue: LinearEpilogue,
}
