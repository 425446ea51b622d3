//! Native kernels JIT-compiled with Cranelift.
//!
//! A graph executor compiles the kernels a fused graph needs into one
//! [`KernelLibrary`] (one Cranelift `JITModule`, finalized once, freed on
//! drop) and calls them on arena buffers. All kernels work on f32, with
//! f32x4 vectors (Cranelift's x86-64 backend lowers at most 128-bit
//! vectors) and fused multiply-adds when the CPU has FMA.
//!
//! # API
//!
//! Build: [`KernelLibraryBuilder::new`] (or `with_options`), then
//! - [`KernelLibraryBuilder::add_gemm`]`(Epilogue) -> GemmId` for `FusedLinear`
//!   (epilogue from [`Epilogue::from_ir`]) and `MatMul` (`Epilogue::none()`).
//!   The micro-kernels depend on neither shapes nor epilogue (runtime
//!   flags), so a library compiles them once (~10 ms); sigmoid/tanh/gelu
//!   epilogues add one small function each. Shapes come with the operands.
//! - [`KernelLibraryBuilder::add_elementwise`]`(&ElementwiseExpr, &[InnerStride]) -> ElementwiseId`
//!   for `FusedElementwise` (and single `Unary`/`Binary`/`Compare`/`Where`
//!   ops as one-step expressions). Inputs are f32; comparisons make lane
//!   masks used by `Where` (an f32 condition counts as true when non-zero);
//!   the result must be f32.
//! - [`KernelLibraryBuilder::add_row_kernel`]`(RowOp) -> RowKernelId` for
//!   `Softmax`/`LogSoftmax`/`LayerNorm`/`Reduce` over the last axis
//!   ([`RowOp::from_op`] maps a graph op when it qualifies).
//! - Use [`InnerStride::for_dims`] on the node's symbolic shapes to say
//!   which elementwise inputs broadcast along the last axis.
//! - [`KernelLibraryBuilder::finish`] `-> KernelLibrary` (`Send + Sync`).
//!
//! Run (every call validates all slice lengths and shapes first and returns
//! [`CodegenError::Shape`] instead of touching memory out of bounds):
//! - [`KernelLibrary::gemm`] with [`GemmArgs`]: `a` a [`MatrixRef`]
//!   (`m x k`, row-major with a row stride, or stored transposed), `b` a
//!   [`PackedBRef`] (weights: [`PackedB::pack`] once at load time, from
//!   `[k, n]` or PyTorch's `[n, k]` via [`MatrixRef::transposed`];
//!   activations: [`PackedBRef::pack_into`] caller scratch of
//!   [`packed_b_len`] floats), optional `bias` (`n`) and `residual`
//!   (`m x n`), output `c` (`m x n`, contiguous).
//! - [`KernelLibrary::batched_matmul`] with [`BatchedMatmulArgs`]: whole
//!   tensors and shapes, numpy-broadcast batch dims, `transpose_a/b`.
//! - [`KernelLibrary::elementwise`] with [`ElementwiseArgs`]: output shape
//!   and one [`TensorView`] (data + shape, numpy broadcasting) per input.
//! - [`KernelLibrary::row_kernel`] with [`RowArgs`] (`rows x row_len`).
//! - [`KernelLibrary::clif_text`] for `--dump-clif`.
//!
//! Threads: every run call takes a [`Threads`] (`Threads::single()` runs on
//! the caller; `Threads::new(n)`: the caller and `n - 1` spinning workers,
//! `threads.rs`; `Threads::from_pool`: a caller-owned rayon pool).
//! Work is split across output rows/columns/batch entries only, never
//! across a reduction, so results are bitwise identical for any thread
//! count.
//!
//! # Example
//!
//! ```
//! use lamina::codegen::*;
//! use lamina::ir::{BinaryOp, ElementwiseExpr, ExprStep, UnaryOp};
//!
//! let mut builder = KernelLibraryBuilder::new()?;
//! // y = relu(x @ W^T + b), W stored [out, in] like a PyTorch Linear.
//! let linear = builder.add_gemm(Epilogue { bias: true, activation: Some(Activation::Relu), residual: false })?;
//! // z = y * scale (scale broadcast along the last axis)
//! let scale = builder.add_elementwise(
//!     &ElementwiseExpr { steps: vec![ExprStep::Input(0), ExprStep::Input(1), ExprStep::Binary(BinaryOp::Mul, 0, 1)] },
//!     &[InnerStride::Contiguous, InnerStride::Broadcast],
//! )?;
//! let softmax = builder.add_row_kernel(RowOp::Softmax)?;
//! let lib = builder.finish()?;
//!
//! let (batch, d_in, d_out) = (2, 3, 4);
//! let w: Vec<f32> = (0..d_out * d_in).map(|i| i as f32 * 0.1).collect(); // [out, in]
//! let packed_w = PackedB::pack(&MatrixRef::transposed(&w, d_in, d_out)?);
//! let bias = vec![0.5f32; d_out];
//! let x = vec![1.0f32; batch * d_in];
//! let mut y = vec![0.0f32; batch * d_out];
//! let threads = Threads::single();
//! lib.gemm(linear, GemmArgs {
//!     a: MatrixRef::row_major(&x, batch, d_in)?,
//!     b: packed_w.as_ref(),
//!     bias: Some(&bias),
//!     residual: None,
//!     c: &mut y,
//! }, &threads)?;
//! assert!((y[1] - (0.3 + 0.4 + 0.5 + 0.5)).abs() < 1e-6);
//!
//! let s = [2.0f32];
//! let mut z = vec![0.0f32; batch * d_out];
//! lib.elementwise(scale, ElementwiseArgs {
//!     out: &mut z,
//!     out_shape: &[batch, d_out],
//!     inputs: &[TensorView { data: &y, shape: &[batch, d_out] }, TensorView { data: &s, shape: &[] }],
//! }, &threads)?;
//! let mut p = vec![0.0f32; batch * d_out];
//! lib.row_kernel(softmax, RowArgs { x: &z, rows: batch, row_len: d_out, out: &mut p, gain: None, bias: None }, &threads)?;
//! assert!((p[..d_out].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//!
//! // Wrong lengths are errors, not undefined behaviour.
//! assert!(lib.row_kernel(softmax, RowArgs { x: &z, rows: batch + 1, row_len: d_out, out: &mut p, gain: None, bias: None }, &threads).is_err());
//! print!("{}", lib.clif_text());
//! # Ok::<(), CodegenError>(())
//! ```
//!
//! # Semantics worth knowing
//!
//! - `maximum`/`minimum` and `Reduce(Max)` propagate NaN (numpy); relu
//!   keeps NaN; comparisons with NaN are false except `ne`.
//! - `pow` with a constant exponent uses exact forms for 0, 1, 2, 3, 4,
//!   0.5, -0.5, -1, -2 and `exp(b log|a|)` otherwise (with C `powf` signs
//!   and special cases; relative error about `(1 + |b ln a|) 1.2e-7`).
//! - softmax subtracts the row max; layer norm uses the biased variance
//!   computed in a second pass (not `E[x^2] - E[x]^2`); sums use two vector
//!   partial sums in a fixed order. Empty rows: sum 0, mean NaN, max error.
//!
//! # Accuracy of the vector math (f32 inputs vs an f64 reference)
//!
//! Written in CLIF (Cranelift has no vector exp/log/tanh); each method is
//! described on its function in `simd.rs`. Measured maximum relative error
//! (tests in `tests/codegen_kernels.rs` enforce the bound column; without
//! FMA the bounds are doubled):
//!
//! | function | range | measured | bound |
//! |---|---|---|---|
//! | exp | [-87, 88.5] | 8.3e-8 | 2e-7 |
//! | log | [1e-30, 1e30], abs. 3e-10 where \|log x\| < 1e-3 | 7.9e-8 | 2e-7 |
//! | tanh | [-12, 12] | 1.35e-7 | 3e-7 |
//! | sigmoid | [-87, 30] | 1.5e-7 | 3e-7 |
//! | erf | [-6, 6] (relative, also near 0) | 1.8e-7 | 3e-7 |
//! | gelu (erf) | [-10, 12] | 4.8e-7 | 8e-7 |
//! | gelu_tanh | [-3, 12] | 7.4e-7 | 1e-6 |
//! | gelu_tanh | [-9, -3] (ill-conditioned tail) | 9.2e-6 | 1.5e-5 |
//! | sqrt, recip | IEEE-exact | 6e-8 | 6e-8 |
//! | rsqrt = 1 / sqrt | | 8.8e-8 | 1.2e-7 |
//!
//! Below these ranges results are tiny and the error is absolute: exp
//! flushes to 0 below e^-104, gelu returns -0 below x = -14 (true value
//! < 1e-43), gelu_tanh -0 below -20.

pub(crate) mod aligned;
mod constants;
pub mod conv;
mod elementwise;
mod gemm;
mod jit;
mod library;
mod loops;
mod rows;
mod rows_wide;
mod simd;
pub mod target;
mod threads;
mod wide_math;
pub mod window_nhwc;

pub use elementwise::{supports as elementwise_supports, ElementwiseArgs, InnerStride, TensorView};
pub(crate) use gemm::{edge_mask as gemm_edge_mask, row_mask as gemm_row_mask};
pub use gemm::{
    packed_b_len, packed_b_len_for, Activation, BatchedMatmulArgs, Epilogue, GemmArgs, MatrixRef,
    PackLayout, PackPiece, PackedB, PackedBRef, KC_MAX,
};
pub use jit::{CodegenOptions, IsaFeatures, KernelInfo};
pub use library::{ElementwiseId, GemmId, KernelLibrary, KernelLibraryBuilder, RowKernelId};
pub use rows::{RowArgs, RowOp};
pub use target::{Isa, Target, TargetError};
pub use threads::Threads;
pub(crate) use threads::{SharedMut, Split};

/// Errors from compiling or calling kernels.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("this CPU is not supported by Cranelift: {0}")]
    UnsupportedHost(String),
    #[error("cranelift: {0}")]
    Cranelift(String),
    #[error("{kernel}: {what}")]
    Shape { kernel: &'static str, what: String },
    #[error("invalid elementwise expression: {0}")]
    InvalidExpr(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("the kernel id belongs to a different KernelLibrary")]
    ForeignKernel,
    #[error("could not start the thread pool: {0}")]
    ThreadPool(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("assembling a wide-tier kernel: {0}")]
    Assembler(String),
}

impl CodegenError {
    pub(crate) fn shape(kernel: &'static str, what: String) -> CodegenError {
        CodegenError::Shape { kernel, what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KernelLibrary>();
        assert_send_sync::<Threads>();
    }
}
