//! f32 GEMM, `C[m,n] = epilogue(A[m,k] @ B[k,n])`, row-major C.
//!
//! The micro-kernels (see `microkernel.rs`) depend on neither the shapes
//! nor the epilogue (runtime flags; transcendental activations run in a
//! small per-activation tile pass right after the last K block). K, N and
//! the K blocking are fixed by the packed B (packed once per weight), M
//! comes with each call; the Rust driver here does the M/N blocking, packs
//! A panels, splits work over threads and validates every slice length
//! before any JIT code runs.
//!
//! Loop order per task (a range of rows x a range of B panels): M blocks
//! of `MC` rows; inside, every K block; inside, `mr`-row panels of A
//! (packed `[kc][mr]`, at most 12 KiB, stays in L1); inside, the task's B
//! panels (the task's B columns for all K blocks are sized to stay in L2).
//!
//! Kernel tiers (`Target::isa`): the baseline's micro-kernels are Cranelift
//! f32x4 code (12 rows, 4-column panels); the wide tiers' are machine code
//! assembled in `wide.rs` (AVX2: 6 rows x 16 columns; AVX-512: 12 x 32).
//! The tier fixes the packed-B panel width ([`PackLayout`]), `mr` and the
//! kernels; this driver, the validation and the epilogue flags are shared.

mod gemv;
mod microkernel;
mod pack;
mod wide;

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use crate::codegen::jit::{JitBuilder, KernelSlot};
use crate::codegen::simd::Emitter;
use crate::codegen::target::Isa;
use crate::codegen::threads::{split_range, SharedMut, Split, Threads};
use crate::codegen::CodegenError;
use crate::ir::{LinearEpilogue, UnaryOp};

use gemv::{GemvFn, GEMV_PARAMS};
use microkernel::{
    emit_micro_kernel, emit_tile_pass, wide_vecs, MicroShape, FLAG_ACCUMULATE, FLAG_BIAS,
    FLAG_CAP6, FLAG_EPILOGUE, FLAG_RELU, FLAG_RESIDUAL, MICRO_KERNEL_PARAMS, TILE_PASS_PARAMS,
};
use pack::{k_block, pack_a_panel_with, panel_count, TransposeFn, Transposes};
pub use pack::{
    packed_b_len, packed_b_len_for, MatrixRef, PackLayout, PackPiece, PackedB, PackedBRef, KC_MAX,
};

/// The most rows of A per micro-kernel call in any tier.
const MAX_MR: usize = 12;
/// The widest B panel of any tier.
const MAX_PANEL_WIDTH: usize = 32;
/// Bytes of packed B (all K blocks of one N block) a task sweeps per M
/// block; kept within L2 so B is read from memory once per M block.
const B_BLOCK_BUDGET: usize = 512 * 1024;

/// B panels per N block for a given K: as wide as the L2 budget allows,
/// between 64 and 256 columns.
fn nc_panels(k: usize, panel_width: usize) -> usize {
    (B_BLOCK_BUDGET / (k.max(1) * panel_width * 4)).clamp(64 / panel_width, 256 / panel_width)
}

/// Rows of C per M block: an `MC x 256` tile of C (96 KiB) stays in L2
/// next to the task's B while all K blocks update it.
const MC: usize = 96;
/// Below this many flops a call stays on the calling thread (waking a pool
/// thread costs several microseconds on this machine).
const PARALLEL_MIN_FLOPS: usize = 1 << 17;

/// Activations a GEMM epilogue can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
    /// Exact (erf) GELU.
    Gelu,
    GeluTanh,
    /// min(max(x, 0), 6).
    Relu6,
    /// relu6(x + 3) / 6.
    HardSigmoid,
    /// x * relu6(x + 3) / 6.
    HardSwish,
}

impl Activation {
    pub const ALL: [Activation; 8] = [
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu6,
        Activation::HardSigmoid,
        Activation::HardSwish,
    ];

    pub fn from_unary(op: UnaryOp) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.unary() == op)
    }

    /// The unary op this activation computes (and whose code the tile
    /// passes emit, so a fused activation rounds as the unfused op).
    pub fn unary(self) -> UnaryOp {
        match self {
            Activation::Relu => UnaryOp::Relu,
            Activation::Sigmoid => UnaryOp::Sigmoid,
            Activation::Tanh => UnaryOp::Tanh,
            Activation::Gelu => UnaryOp::Gelu,
            Activation::GeluTanh => UnaryOp::GeluTanh,
            Activation::Relu6 => UnaryOp::Relu6,
            Activation::HardSigmoid => UnaryOp::HardSigmoid,
            Activation::HardSwish => UnaryOp::HardSwish,
        }
    }

    pub fn name(self) -> &'static str {
        self.unary().name()
    }

    pub(crate) fn emit(
        self,
        e: &mut Emitter<'_, '_>,
        x: cranelift_codegen::ir::Value,
    ) -> cranelift_codegen::ir::Value {
        crate::codegen::elementwise::emit_unary(e, self.unary(), x)
    }
}

/// What happens to each accumulator before it is stored:
/// `activation(acc + bias[col]) + residual[row, col]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epilogue {
    pub bias: bool,
    pub activation: Option<Activation>,
    pub residual: bool,
}

impl Epilogue {
    /// Plain `C = A @ B`.
    pub fn none() -> Epilogue {
        Epilogue::default()
    }

    pub fn is_identity(&self) -> bool {
        !self.bias && self.activation.is_none() && !self.residual
    }

    /// The epilogue of an IR `FusedLinear`.
    pub fn from_ir(epilogue: &LinearEpilogue) -> Result<Epilogue, CodegenError> {
        let activation = match epilogue.activation {
            None => None,
            Some(op) => Some(Activation::from_unary(op).ok_or_else(|| {
                CodegenError::Unsupported(format!("{} as a GEMM epilogue activation", op.name()))
            })?),
        };
        Ok(Epilogue {
            bias: epilogue.bias,
            activation,
            residual: epilogue.residual,
        })
    }

    /// A short tag for kernel names: `plain`, `bias_gelu_res`, ...
    pub(crate) fn tag(&self) -> String {
        let mut parts = Vec::new();
        if self.bias {
            parts.push("bias");
        }
        if let Some(a) = self.activation {
            parts.push(a.name());
        }
        if self.residual {
            parts.push("res");
        }
        if parts.is_empty() {
            "plain".to_string()
        } else {
            parts.join("_")
        }
    }
}

/// Operands of one GEMM call. `c` and `residual` are contiguous `m x n`.
pub struct GemmArgs<'a> {
    /// `m x k`, any [`MatrixRef`] layout.
    pub a: MatrixRef<'a>,
    /// `k x n`, packed.
    pub b: PackedBRef<'a>,
    /// `n` values, required iff the epilogue has a bias.
    pub bias: Option<&'a [f32]>,
    /// `m x n` values, required iff the epilogue has a residual.
    pub residual: Option<&'a [f32]>,
    pub c: &'a mut [f32],
}

/// A left operand the driver packs one row panel at a time: a matrix in
/// memory, or values that exist only as a rule (a convolution's input
/// patches), gathered straight into the packed panels.
#[derive(Clone, Copy)]
pub(crate) enum LeftOperand<'a> {
    Matrix(MatrixRef<'a>),
    /// `rows x cols`; `pack(i0, r, k0, dst)` writes rows `i0..i0 + r` at
    /// depth `k0..k0 + dst.len() / r` into `dst` as `[kc][r]` (element
    /// `(i0 + i, k0 + kk)` at `kk * r + i`). It must index safely: the driver
    /// calls it only inside `rows x cols`.
    Gathered {
        rows: usize,
        cols: usize,
        pack: &'a (dyn Fn(usize, usize, usize, &mut [f32]) + Sync),
    },
}

impl LeftOperand<'_> {
    fn rows(&self) -> usize {
        match self {
            LeftOperand::Matrix(a) => a.rows(),
            LeftOperand::Gathered { rows, .. } => *rows,
        }
    }

    fn cols(&self) -> usize {
        match self {
            LeftOperand::Matrix(a) => a.cols(),
            LeftOperand::Gathered { cols, .. } => *cols,
        }
    }

    fn pack_panel(
        &self,
        i0: usize,
        r: usize,
        k0: usize,
        dst: &mut [f32],
        transposes: Option<&Transposes>,
    ) {
        match self {
            LeftOperand::Matrix(a) => pack_a_panel_with(a, i0, r, k0, dst, transposes),
            LeftOperand::Gathered { pack, .. } => pack(i0, r, k0, dst),
        }
    }
}

/// Operands of a GEMM whose rows of C (and of the residual) are `ldc`
/// floats apart, `ldc >= n`: `c` holds `(m - 1) * ldc + n` f32 (a group's
/// columns of a wider output). Otherwise as [`GemmArgs`].
pub(crate) struct StridedGemmArgs<'a> {
    pub a: LeftOperand<'a>,
    pub b: PackedBRef<'a>,
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub c: &'a mut [f32],
    pub ldc: usize,
}

/// Operands of a batched `a @ b` (the IR `MatMul`): both may carry batch
/// dims that broadcast numpy-style; the last two dims are the matrix, stored
/// transposed when `transpose_*` is set. `c` is contiguous
/// `[broadcast batch..., m, n]`.
pub struct BatchedMatmulArgs<'a> {
    pub a: &'a [f32],
    pub a_shape: &'a [usize],
    pub transpose_a: bool,
    pub b: &'a [f32],
    pub b_shape: &'a [usize],
    pub transpose_b: bool,
    pub c: &'a mut [f32],
}

pub(crate) type MicroFn = unsafe extern "C" fn(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    kc: usize,
    ldc_bytes: usize,
    flags: usize,
    bias: *const f32,
    residual: *const f32,
    b_panel_stride_bytes: usize,
    prefetch: *const f32,
);

pub(crate) type TilePassFn = unsafe extern "C" fn(
    c: *mut f32,
    residual: *const f32,
    ldc_bytes: usize,
    rows: usize,
    vecs: usize,
    flags: usize,
);

/// Compiled-but-not-linked micro-kernels, shared by every GEMM of a
/// library (the epilogue is selected by runtime flags).
pub(crate) struct MicroSlots {
    isa: Isa,
    /// Per row count `1..=mr` (index `rows - 1`): the single-panel kernel,
    /// when assembled. The `mr`-row one always is.
    narrow: Vec<Option<KernelSlot>>,
    /// Per row count: the kernel spanning several panels (the narrow one
    /// again when the row count has none), when assembled.
    wide: Vec<Option<(usize, KernelSlot)>>,
    /// The packing transposes of 12 and 16 rows (AVX-512), assembled with
    /// the first request for full `mr`-row panels.
    transposes: Option<(KernelSlot, KernelSlot)>,
    /// Per row count: the N-edge kernels of one and two vectors (AVX-512),
    /// when assembled (with the row count's other kernels when asked for).
    edge: Vec<Option<[KernelSlot; 2]>>,
    /// The AVX-512 `mr`-row kernels reading A in place: one panel, and the
    /// N-edge ones of one and two vectors when the edge was asked for.
    in_place: Option<(KernelSlot, Option<[KernelSlot; 2]>)>,
    /// Row counts asked for (`row_mask`): bit `rows - 1`.
    rows_asked: u32,
    /// GEMV kernels by shape `(k, n)` (wide tiers).
    gemv: Vec<((usize, usize), KernelSlot)>,
}

/// Parameters of `wide::assemble_transpose`'s code.
const TRANSPOSE_PARAMS: usize = 5;

/// The micro-kernel row counts a GEMM of `m` rows calls on `isa`'s tier,
/// as a mask (bit `rows - 1`): full `mr`-row panels and the `m mod mr`
/// edge (the driver splits rows over threads and M chunks at multiples of
/// `mr`; a 1-row GEMV's N edge is a 1-row call). `None` (M not known when
/// the kernels are built): every row count.
pub(crate) fn row_mask(isa: Isa, m: Option<usize>) -> u32 {
    let mr = wide::rows_per_kernel(isa);
    let bit = |rows: usize| 1u32 << (rows - 1);
    match m {
        None => (1u32 << mr) - 1,
        Some(0) => 0,
        Some(m) => {
            let edge = m % mr;
            bit(m.min(mr)) | if edge == 0 { 0 } else { bit(edge) }
        }
    }
}

/// Where `edge_mask` puts its row counts: above every tier's `mr` bits.
const EDGE_SHIFT: u32 = 16;

/// The AVX-512 N-edge kernels a GEMM of `m` rows and `n` columns with
/// `epilogue` calls, as `row_mask`'s row counts shifted by `EDGE_SHIFT`:
/// none when `n` fills whole panels or a tile pass runs (it needs the tile
/// copy); `None` for `n`: as if it had an edge.
pub(crate) fn edge_mask(isa: Isa, m: Option<usize>, n: Option<usize>, epilogue: Epilogue) -> u32 {
    let tile_pass = epilogue.activation.is_some_and(|a| !is_inline(a));
    let edge = n.is_none_or(|n| n % wide::panel_width(isa) != 0);
    if isa != Isa::Avx512 || tile_pass || !edge {
        0
    } else {
        row_mask(isa, m) << EDGE_SHIFT
    }
}

/// The micro-kernels of a tier: the `mr`-row kernel, which every row count
/// can fall back on (`run_chunk`); other row counts are added by
/// [`MicroSlots::add_rows`].
pub(crate) fn compile_micro_kernels(
    jit: &mut JitBuilder,
    isa: Isa,
) -> Result<MicroSlots, CodegenError> {
    let mr = wide::rows_per_kernel(isa);
    let mut slots = MicroSlots {
        isa,
        narrow: vec![None; mr],
        wide: vec![None; mr],
        transposes: None,
        edge: vec![None; mr],
        in_place: None,
        rows_asked: 0,
        gemv: Vec::new(),
    };
    slots.assemble_rows(jit, mr)?;
    Ok(slots)
}

impl MicroSlots {
    /// Assembles (compiles, on the baseline) the kernels of `rows` rows:
    /// one of a single panel and, for short row counts, one of several.
    fn assemble_rows(&mut self, jit: &mut JitBuilder, rows: usize) -> Result<(), CodegenError> {
        if self.narrow[rows - 1].is_some() {
            return Ok(());
        }
        let isa = self.isa;
        let (narrow, wide) = if isa == Isa::Baseline {
            let shape = MicroShape { rows, vecs: 1 };
            let slot = jit.define(&format!("gemm_{rows}x1"), MICRO_KERNEL_PARAMS, |e, p| {
                emit_micro_kernel(e, p, shape)
            })?;
            let vecs = wide_vecs(rows);
            if vecs > 1 {
                let shape = MicroShape { rows, vecs };
                let wide = jit.define(
                    &format!("gemm_{rows}x{vecs}"),
                    MICRO_KERNEL_PARAMS,
                    |e, p| emit_micro_kernel(e, p, shape),
                )?;
                (slot, (vecs, wide))
            } else {
                (slot, (1, slot))
            }
        } else {
            let code = wide::assemble(isa, rows, 1)?;
            let slot =
                jit.define_bytes(&format!("gemm_{isa}_{rows}x1"), MICRO_KERNEL_PARAMS, &code)?;
            let panels = wide::wide_panels(isa, rows);
            if panels > 1 {
                let code = wide::assemble(isa, rows, panels)?;
                let wide = jit.define_bytes(
                    &format!("gemm_{isa}_{rows}x{panels}"),
                    MICRO_KERNEL_PARAMS,
                    &code,
                )?;
                (slot, (panels, wide))
            } else {
                (slot, (1, slot))
            }
        };
        self.narrow[rows - 1] = Some(narrow);
        self.wide[rows - 1] = Some(wide);
        Ok(())
    }

    /// The row counts in `mask` (see [`row_mask`]), the AVX-512 N-edge
    /// kernels of those in its `edge_mask` bits, and with full `mr`-row
    /// panels the AVX-512 packing transposes. Row counts not asked for still
    /// run, on a larger kernel over zero-padded rows (slower, same bits).
    pub(crate) fn add_rows(&mut self, jit: &mut JitBuilder, mask: u32) -> Result<(), CodegenError> {
        let mr = self.narrow.len();
        let isa = self.isa;
        for rows in 1..=mr {
            if mask & (1 << (rows - 1)) != 0 {
                self.assemble_rows(jit, rows)?;
            }
            let edge_asked = mask & (1 << (rows - 1 + EDGE_SHIFT as usize)) != 0;
            if edge_asked {
                self.assemble_rows(jit, rows)?;
                if isa == Isa::Avx512 && self.edge[rows - 1].is_none() {
                    let mut slot = |halves: usize| {
                        let code = wide::assemble_edge(rows, halves)?;
                        jit.define_bytes(
                            &format!("gemm_{isa}_{rows}x{halves}h_edge"),
                            MICRO_KERNEL_PARAMS,
                            &code,
                        )
                    };
                    self.edge[rows - 1] = Some([slot(1)?, slot(2)?]);
                }
            }
        }
        if mask & (1 << (mr - 1)) != 0 && isa == Isa::Avx512 && self.transposes.is_none() {
            let mut slot = |rows: usize| {
                jit.define_bytes(
                    &format!("gemm_{isa}_transpose{rows}"),
                    TRANSPOSE_PARAMS,
                    &wide::assemble_transpose(rows)?,
                )
            };
            self.transposes = Some((slot(12)?, slot(16)?));
        }
        if mask & (1 << (mr - 1)) != 0 && isa == Isa::Avx512 {
            let mut slot = |edge: Option<usize>| {
                let name = match edge {
                    None => format!("gemm_{isa}_{mr}x1_a_in_place"),
                    Some(h) => format!("gemm_{isa}_{mr}x{h}h_edge_a_in_place"),
                };
                jit.define_bytes(
                    &name,
                    MICRO_KERNEL_PARAMS,
                    &wide::assemble_a_in_place(mr, edge)?,
                )
            };
            let narrow = match self.in_place {
                Some((narrow, _)) => narrow,
                None => slot(None)?,
            };
            let mut edge = self.in_place.and_then(|(_, edge)| edge);
            if edge.is_none() && mask & (1 << (mr - 1 + EDGE_SHIFT as usize)) != 0 {
                edge = Some([slot(Some(1))?, slot(Some(2))?]);
            }
            self.in_place = Some((narrow, edge));
        }
        self.rows_asked |= mask;
        Ok(())
    }

    /// Row counts asked for so far (a mask, see [`row_mask`]).
    pub(crate) fn rows_asked(&self) -> u32 {
        self.rows_asked & ((1 << EDGE_SHIFT) - 1)
    }
}

/// The tile pass applying a transcendental activation (and the residual):
/// Cranelift f32x4 code on the baseline tier, full-width machine code
/// (`wide::assemble_tile_pass`) on the wide tiers.
pub(crate) fn compile_tile_pass(
    jit: &mut JitBuilder,
    activation: Activation,
) -> Result<KernelSlot, CodegenError> {
    let isa = jit.isa();
    if isa != Isa::Baseline {
        let code = wide::assemble_tile_pass(isa, activation)?;
        return jit.define_bytes(
            &format!("gemm_{isa}_epilogue_{}", activation.name()),
            TILE_PASS_PARAMS,
            &code,
        );
    }
    jit.define(
        &format!("gemm_epilogue_{}", activation.name()),
        TILE_PASS_PARAMS,
        |e, p| emit_tile_pass(e, p, activation),
    )
}

/// Whether an activation runs inside the micro-kernel (else in a tile pass).
pub(crate) fn is_inline(activation: Activation) -> bool {
    match activation {
        Activation::Relu | Activation::Relu6 => true,
        Activation::Sigmoid
        | Activation::Tanh
        | Activation::Gelu
        | Activation::GeluTanh
        | Activation::HardSigmoid
        | Activation::HardSwish => false,
    }
}

/// Linked micro-kernels.
pub(crate) struct MicroKernels {
    isa: Isa,
    /// Rows per full call (`narrow.len()`).
    mr: usize,
    layout: PackLayout,
    /// Per row count (index `rows - 1`), when assembled; `mr` always is.
    narrow: Vec<Option<MicroFn>>,
    wide: Vec<Option<(usize, MicroFn)>>,
    transposes: Option<Transposes>,
    /// N-edge kernels by row count, of one and two vectors, when assembled
    /// (AVX-512 only: the other tiers' N edge takes the tile copy).
    edge: Vec<Option<[MicroFn; 2]>>,
    /// The `mr`-row kernels reading A in place (AVX-512), when assembled.
    in_place: Option<InPlaceKernels>,
    /// GEMV kernels by shape `(k, n)`: 1-row products of those shapes
    /// take the GEMV path.
    gemv: Vec<((usize, usize), GemvFn)>,
}

/// The AVX-512 `mr`-row micro-kernels that read A in place
/// (`wide::assemble_a_in_place`): one panel, and the N-edge kernels.
#[derive(Clone, Copy)]
struct InPlaceKernels {
    narrow: MicroFn,
    edge: Option<[MicroFn; 2]>,
}

/// At most this many B panels (`n` up to 128 on AVX-512) for a GEMM to
/// read A in place: each panel reads the row panel again, from A's rows
/// in L1/L2 rather than a packed panel; for wider products packing A
/// once pays (at 8 panels the encoder block's d=256 projections measured
/// slower in place, sgemm 64's 2 panels faster).
const IN_PLACE_MAX_PANELS: usize = 4;

fn transpose_fn(address: usize) -> TransposeFn {
    assert_ne!(address, 0, "finalized function has a null address");
    // SAFETY: assembled by `wide::assemble_transpose` for exactly this
    // signature under System V (the wide tiers' only ABI).
    unsafe { std::mem::transmute::<usize, TransposeFn>(address) }
}

fn micro_fn(address: usize) -> MicroFn {
    assert_ne!(address, 0, "finalized function has a null address");
    // SAFETY: `address` is the entry of a finalized function compiled by
    // `emit_micro_kernel` with MICRO_KERNEL_PARAMS pointer-sized integer
    // parameters and no results, which is this signature under the host
    // calling convention, or assembled by `wide::assemble` for exactly
    // this signature under System V (the only ABI of the x86-64 hosts the
    // wide tiers are chosen on).
    unsafe { std::mem::transmute::<usize, MicroFn>(address) }
}

impl MicroSlots {
    /// Assembles the GEMV kernel of shape `(k, n)` (once per shape) when
    /// the tier has one for it; 1-row GEMMs of that shape then use it.
    pub(crate) fn add_gemv(
        &mut self,
        jit: &mut JitBuilder,
        k: usize,
        n: usize,
    ) -> Result<bool, CodegenError> {
        if !gemv::supports(self.isa, k, n) {
            return Ok(false);
        }
        if !self.gemv.iter().any(|&(shape, _)| shape == (k, n)) {
            let code = gemv::assemble(self.isa, k, n)?;
            let name = format!("gemv_{}_{k}x{n}", self.isa);
            let slot = jit.define_bytes(&name, GEMV_PARAMS, &code)?;
            self.gemv.push(((k, n), slot));
        }
        Ok(true)
    }

    pub(crate) fn link(&self, addresses: &[usize]) -> MicroKernels {
        assert!(
            self.narrow.last().is_some_and(Option::is_some),
            "the mr-row micro-kernel, every row count's fallback, is always assembled"
        );
        MicroKernels {
            isa: self.isa,
            mr: self.narrow.len(),
            layout: PackLayout::for_isa(self.isa),
            narrow: self
                .narrow
                .iter()
                .map(|s| s.map(|s| micro_fn(addresses[s.0])))
                .collect(),
            wide: self
                .wide
                .iter()
                .map(|w| w.map(|(vecs, s)| (vecs, micro_fn(addresses[s.0]))))
                .collect(),
            edge: self
                .edge
                .iter()
                .map(|slots| slots.map(|slots| slots.map(|s| micro_fn(addresses[s.0]))))
                .collect(),
            in_place: self.in_place.map(|(narrow, edge)| InPlaceKernels {
                narrow: micro_fn(addresses[narrow.0]),
                edge: edge.map(|slots| slots.map(|s| micro_fn(addresses[s.0]))),
            }),
            transposes: self.transposes.map(|(r12, r16)| Transposes {
                rows12: transpose_fn(addresses[r12.0]),
                rows16: transpose_fn(addresses[r16.0]),
            }),
            gemv: self
                .gemv
                .iter()
                .map(|&(shape, slot)| {
                    let address = addresses[slot.0];
                    assert_ne!(address, 0, "finalized function has a null address");
                    // SAFETY: assembled by `gemv::assemble` for exactly this
                    // signature under System V (the wide tiers' only ABI).
                    (shape, unsafe {
                        std::mem::transmute::<usize, GemvFn>(address)
                    })
                })
                .collect(),
        }
    }
}

/// One GEMM epilogue: its flags and, for transcendental activations, the
/// tile pass.
pub(crate) struct GemmSlots {
    pub(crate) epilogue: Epilogue,
    pub(crate) tile_pass: Option<KernelSlot>,
}

pub(crate) struct GemmKernels {
    epilogue: Epilogue,
    micro: Arc<MicroKernels>,
    tile_pass: Option<TilePassFn>,
    /// Epilogue flags for the micro-kernel's last K block.
    micro_flags: usize,
    /// Flags for the tile pass.
    tile_flags: usize,
}

impl GemmSlots {
    pub(crate) fn link(&self, addresses: &[usize], micro: &Arc<MicroKernels>) -> GemmKernels {
        let epilogue = self.epilogue;
        let inline_activation = epilogue.activation.is_none_or(is_inline);
        let mut micro_flags = 0;
        if epilogue.bias {
            micro_flags |= FLAG_BIAS;
        }
        match epilogue.activation {
            Some(Activation::Relu) => micro_flags |= FLAG_RELU,
            // relu, then the cap at 6.
            Some(Activation::Relu6) => micro_flags |= FLAG_RELU | FLAG_CAP6,
            _ => {}
        }
        if epilogue.residual && inline_activation {
            micro_flags |= FLAG_RESIDUAL;
        }
        let tile_flags = if epilogue.residual && !inline_activation {
            FLAG_RESIDUAL
        } else {
            0
        };
        GemmKernels {
            epilogue,
            micro: micro.clone(),
            tile_pass: self.tile_pass.map(|s| {
                let address = addresses[s.0];
                assert_ne!(address, 0, "finalized function has a null address");
                // SAFETY: compiled by `emit_tile_pass` with TILE_PASS_PARAMS
                // pointer-sized integer parameters and no results, or
                // assembled by `wide::assemble_tile_pass` for exactly this
                // signature under System V (the wide tiers' only ABI).
                unsafe { std::mem::transmute::<usize, TilePassFn>(address) }
            }),
            micro_flags,
            tile_flags,
        }
    }
}

thread_local! {
    /// Packed A of the current M chunk (see `pack_a_chunk`): grows to the
    /// largest chunk a thread has run, then is reused.
    static A_CHUNK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

struct Job<'a> {
    kernels: &'a GemmKernels,
    a: LeftOperand<'a>,
    b: PackedBRef<'a>,
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    c: SharedMut,
    n: usize,
    k: usize,
    /// Floats between rows of C and of the residual.
    ldc: usize,
    /// Full row panels read A where it is (`InPlaceKernels`), unpacked.
    a_in_place: Option<InPlaceKernels>,
}

struct Task {
    rows: Range<usize>,
    panels: Range<usize>,
}

fn shape_err(what: String) -> CodegenError {
    CodegenError::shape("gemm", what)
}

impl GemmKernels {
    pub(crate) fn epilogue(&self) -> Epilogue {
        self.epilogue
    }

    pub(crate) fn layout(&self) -> PackLayout {
        self.micro.layout
    }

    pub(crate) fn run(&self, args: GemmArgs<'_>, threads: &Threads) -> Result<(), CodegenError> {
        let ldc = args.b.n();
        self.run_strided(
            StridedGemmArgs {
                a: LeftOperand::Matrix(args.a),
                b: args.b,
                bias: args.bias,
                residual: args.residual,
                c: args.c,
                ldc,
            },
            threads,
        )
    }

    pub(crate) fn run_strided(
        &self,
        args: StridedGemmArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        let StridedGemmArgs {
            a,
            b,
            bias,
            residual,
            c,
            ldc,
        } = args;
        let (m, k, n) = (a.rows(), a.cols(), b.n());
        if b.k() != k {
            return Err(shape_err(format!("A is {m}x{k} but B is {}x{n}", b.k())));
        }
        if b.layout() != self.micro.layout {
            return Err(shape_err(format!(
                "B was packed in {}-column panels but the {} kernels read {}-column panels",
                b.layout().panel_width(),
                self.micro.isa,
                self.micro.layout.panel_width()
            )));
        }
        if ldc < n {
            return Err(shape_err(format!(
                "rows of C {ldc} f32 apart cannot hold {n} columns"
            )));
        }
        // Rows `ldc` apart, the last one `n` long.
        let out_len = match m {
            0 => Some(0),
            _ => (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n)),
        }
        .ok_or_else(|| shape_err("the size of C overflows".into()))?;
        if c.len() != out_len {
            return Err(shape_err(if ldc == n {
                format!("C must hold {m}x{n} = {out_len} f32, got {}", c.len())
            } else {
                format!(
                    "C ({m} rows of {n}, {ldc} f32 apart) must hold {out_len} f32, got {}",
                    c.len()
                )
            }));
        }
        match (self.epilogue.bias, bias) {
            (true, Some(bias)) if bias.len() != n => {
                return Err(shape_err(format!(
                    "bias must hold {n} f32, got {}",
                    bias.len()
                )))
            }
            (true, None) => {
                return Err(shape_err(
                    "the epilogue adds a bias but none was given".into(),
                ))
            }
            (false, Some(_)) => {
                return Err(shape_err(
                    "a bias was given but the epilogue has none".into(),
                ))
            }
            _ => {}
        }
        match (self.epilogue.residual, residual) {
            (true, Some(r)) if r.len() != out_len => {
                return Err(shape_err(format!(
                    "residual must hold {out_len} f32, got {}",
                    r.len()
                )))
            }
            (true, None) => {
                return Err(shape_err(
                    "the epilogue adds a residual but none was given".into(),
                ))
            }
            (false, Some(_)) => {
                return Err(shape_err(
                    "a residual was given but the epilogue has none".into(),
                ))
            }
            _ => {}
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let pw = self.micro.layout.panel_width();
        let a_in_place = self.a_in_place(&a, n);
        let job = Job {
            kernels: self,
            a,
            b,
            bias,
            residual,
            c: SharedMut(c.as_mut_ptr()),
            n,
            k,
            ldc,
            a_in_place,
        };
        if m == 1 {
            let kernel = self.micro.gemv.iter().find(|&&(shape, _)| shape == (k, n));
            if let Some(&(_, kernel)) = kernel {
                self.run_gemv(kernel, &job, threads);
                return Ok(());
            }
        }
        // SAFETY (for `run_task`): tasks cover disjoint (row range x panel
        // range) rectangles of C, and `c` is exclusively borrowed until
        // every task has finished.
        if !runs_parallel(m, n, k, threads.count()) {
            // The per-inference path on one thread: no task list, so a call
            // allocates nothing.
            run_task(
                &job,
                &Task {
                    rows: 0..m,
                    panels: 0..panel_count(n, pw),
                },
            );
            return Ok(());
        }
        let grid = plan_tasks(m, n, k, threads.count(), self.micro.mr, pw);
        threads.for_each_index(grid.count(), |i| run_task(&job, &grid.get(i)));
        Ok(())
    }
}

impl GemmKernels {
    /// The kernels reading A in place, when this product uses them: A
    /// stored row by row, rows not a multiple of 4 KiB apart (twelve rows
    /// in the same L1 set would evict each other), at most
    /// `IN_PLACE_MAX_PANELS` panels of B, no tile pass, and the N edge
    /// (if any) on the in-place edge kernels.
    fn a_in_place(&self, a: &LeftOperand<'_>, n: usize) -> Option<InPlaceKernels> {
        let kernels = self.micro.in_place?;
        let LeftOperand::Matrix(a) = a else {
            return None;
        };
        let pw = self.micro.layout.panel_width();
        let row_bytes = a.row_bytes()?;
        let fits = !row_bytes.is_multiple_of(4096)
            && panel_count(n, pw) <= IN_PLACE_MAX_PANELS
            && self.tile_pass.is_none()
            && (n.is_multiple_of(pw) || kernels.edge.is_some());
        fits.then_some(kernels)
    }
}

thread_local! {
    /// A row panel zero-padded to a larger kernel's rows (`run_chunk`, for
    /// a row count without its own kernel).
    static PADDED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A's row for the GEMV path when it is not stored contiguously.
    static A_ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Bytes of packed B from which a GEMV is split over threads: about a
/// microsecond of streaming from L2, several hand-offs' worth.
const GEMV_PARALLEL_MIN_BYTES: usize = 128 * 1024;

impl GemmKernels {
    /// `c = epilogue(a @ b)` for one row of A: the full panels on the GEMV
    /// kernel of the shape, the N edge (a partial panel) on the
    /// micro-kernel's tile copy. Split over threads by panel ranges of
    /// whole groups, each thread keeping the same part of B from call to
    /// call (in its L2, when its part fits).
    fn run_gemv(&self, kernel: GemvFn, job: &Job<'_>, threads: &Threads) {
        let (k, n) = (job.k, job.n);
        let pw = self.micro.layout.panel_width();
        let (full, panels) = (n / pw, panel_count(n, pw));
        let run_panels = |range: Range<usize>, a_row: &[f32]| {
            let end = range.end.min(full);
            if range.start < end {
                let flags = FLAG_EPILOGUE | self.micro_flags;
                let bias = job.bias.map_or(std::ptr::null(), |b| b.as_ptr());
                let residual = job.residual.map_or(std::ptr::null(), |r| r.as_ptr());
                // SAFETY: the kernel was assembled for this (k, n) and reads
                // the k values of `a_row`, the packed B of that shape
                // (validated by `run`), and for panels range.start..end
                // (all full: inside n) the same columns of bias and
                // residual (n values each when present, checked by `run`);
                // it writes only those columns of C, which this task owns.
                // The tile pass touches the same columns.
                unsafe {
                    kernel(
                        a_row.as_ptr(),
                        job.b.data().as_ptr(),
                        job.c.get(),
                        range.start,
                        end,
                        flags,
                        bias,
                        residual,
                    );
                    if let Some(pass) = self.tile_pass {
                        let offset = range.start * pw;
                        pass(
                            job.c.get().add(offset),
                            residual.wrapping_add(offset),
                            n * 4,
                            1,
                            (end - range.start) * pw / 4,
                            self.tile_flags,
                        );
                    }
                }
            }
            if range.end > full {
                run_task(
                    job,
                    &Task {
                        rows: 0..1,
                        panels: full.max(range.start)..range.end,
                    },
                );
            }
        };
        let stored_row = match &job.a {
            LeftOperand::Matrix(a) => a.contiguous_row(0),
            LeftOperand::Gathered { .. } => None,
        };
        let with_row = |range: Range<usize>| match stored_row {
            Some(row) => run_panels(range, row),
            None => A_ROW.with(|cell| {
                let mut row = cell.borrow_mut();
                row.resize(k, 0.0);
                // One row packed `[k][1]` is the row itself.
                job.a.pack_panel(0, 1, 0, &mut row, None);
                run_panels(range, &row);
            }),
        };
        let parallel =
            threads.count() > 1 && k.saturating_mul(n).saturating_mul(4) >= GEMV_PARALLEL_MIN_BYTES;
        if parallel {
            // Two ranges per thread: a late thread's part can be taken over
            // in halves.
            let split = Split::new(panels, 2 * threads.count(), gemv::GROUP);
            threads.for_each_index(split.count(), |i| with_row(split.get(i)));
        } else {
            with_row(0..panels);
        }
    }
}

/// Whether a call is worth handing to the thread pool.
fn runs_parallel(m: usize, n: usize, k: usize, threads: usize) -> bool {
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    threads > 1 && flops >= PARALLEL_MIN_FLOPS
}

/// The tasks of a parallel call: row ranges x panel ranges, numbered row
/// range first, so that thread `t`'s contiguous share of the numbers is a
/// band of rows (it packs those rows of A, not everyone's).
#[derive(Clone, Copy, Debug)]
struct TaskGrid {
    rows: Split,
    panels: Split,
}

impl TaskGrid {
    fn count(&self) -> usize {
        self.rows.count() * self.panels.count()
    }

    fn get(&self, i: usize) -> Task {
        let per_row = self.panels.count();
        Task {
            rows: self.rows.get(i / per_row),
            panels: self.panels.get(i % per_row),
        }
    }
}

/// The tasks of a call on `threads` threads (computed, not stored: a call
/// allocates nothing).
fn plan_tasks(
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    mr: usize,
    panel_width: usize,
) -> TaskGrid {
    let panels = panel_count(n, panel_width);
    let nc = nc_panels(k, panel_width);
    let target = 4 * threads;
    let row_panels = m.div_ceil(mr);
    // What a split repeats: each column part packs its rows of A again
    // (`m x k` read strided and written), each row part reads its columns
    // of packed B again (`k x n`, read in order). Split along rows when
    // repeating B costs no more than repeating A.
    let (row_parts, col_parts) = if n <= 2 * m {
        let row_parts = target.min(row_panels).max(1);
        (row_parts, target.div_ceil(row_parts).min(panels))
    } else {
        let col_blocks = panels.div_ceil(nc);
        let row_parts = target.div_ceil(col_blocks).min(row_panels).max(1);
        let col_parts = if row_parts * col_blocks >= target {
            col_blocks
        } else {
            target.div_ceil(row_parts).min(panels)
        };
        (row_parts, col_parts)
    };
    // Column ranges start on multiples of 4 panels so wide kernels group
    // the same panels whatever the split (not needed for the result, which
    // is split-independent, but keeps the work per task even).
    TaskGrid {
        rows: Split::new(m, row_parts, mr),
        panels: Split::new(panels, col_parts, 4),
    }
}

/// Packed A a task keeps per M chunk (every K block of the chunk's rows),
/// in f32: 96 rows x 1024 deep (384 KiB, in L2 beside the task's B block).
/// A is then packed once per chunk, not once per N block.
const A_CHUNK_BUDGET: usize = MC * 1024;

/// Rows per M chunk for depth `k`: `MC`, fewer for deep products so the
/// packed chunk stays within `A_CHUNK_BUDGET` (never fewer than `mr`).
fn chunk_rows(k: usize, mr: usize) -> usize {
    let rows = (A_CHUNK_BUDGET / k.max(1)).clamp(mr, MC);
    rows - rows % mr
}

/// The N blocks of a panel range: as wide as the L2 budget allows, even.
fn n_blocks(panels: Range<usize>, nc: usize) -> impl Iterator<Item = Range<usize>> {
    let len = panels.len();
    let chunk = len.div_ceil(len.div_ceil(nc).max(1)).max(1);
    panels
        .clone()
        .step_by(chunk)
        .map(move |start| start..(start + chunk).min(panels.end))
}

fn run_task(job: &Job<'_>, task: &Task) {
    let micro = &job.kernels.micro;
    let pw = micro.layout.panel_width();
    let rows_per_chunk = chunk_rows(job.k, micro.mr);
    A_CHUNK.with(|cell| {
        let mut a_chunk = cell.borrow_mut();
        // At most `mr` rows beyond the budget (deep products), and never
        // more rows than A has.
        let needed = rows_per_chunk.min(task.rows.len()) * job.k;
        if a_chunk.len() < needed {
            a_chunk.resize(needed, 0.0);
        }
        let nc = nc_panels(job.k, pw);
        let first_block = n_blocks(task.panels.clone(), nc).next();
        for start in task.rows.clone().step_by(rows_per_chunk) {
            let chunk = start..(start + rows_per_chunk).min(task.rows.end);
            let last_chunk = chunk.end == task.rows.end;
            let packed = &mut a_chunk[..chunk.len() * job.k];
            // The first N block packs each row panel just before its first
            // use (so small products keep the panel hot in L1); later N
            // blocks reuse the packed chunk.
            let mut blocks = n_blocks(task.panels.clone(), nc).enumerate().peekable();
            while let Some((i, panels)) = blocks.next() {
                // The N block after this one, whose first K block the last
                // K block of this one prefetches.
                let next = match blocks.peek() {
                    Some((_, next)) => Some(next.clone()),
                    None if !last_chunk => first_block.clone(),
                    None => None,
                };
                run_chunk(job, chunk.clone(), panels, next, packed, i == 0);
            }
        }
    });
}

/// All K blocks of rows `rows` x panels `panels`, with the C tile kept hot.
/// `a_chunk` holds those rows of A packed for every K block: block `p`
/// (depth `k0..k0 + kcp`) at `k0 * rows.len()`, in it the row panel
/// starting at row `i0` at `(i0 - rows.start) * kcp`, laid out `[kcp][r]`;
/// `pack` fills each panel right before its first use.
fn run_chunk(
    job: &Job<'_>,
    rows: Range<usize>,
    panels_range: Range<usize>,
    next_panels: Option<Range<usize>>,
    a_chunk: &mut [f32],
    pack: bool,
) {
    let (n, k) = (job.n, job.k);
    let kc = k_block(k);
    let blocks = if k == 0 { 1 } else { k.div_ceil(kc) };
    let micro = &job.kernels.micro;
    let pw = micro.layout.panel_width();
    let panels = panel_count(n, pw);
    let full_panels = n / pw;
    let b_data = job.b.data();
    let ldc_bytes = job.ldc * 4;
    for p in 0..blocks {
        let k0 = p * kc;
        let kcp = if k == 0 { 0 } else { kc.min(k - k0) };
        let mut flags = 0;
        if p > 0 {
            flags |= FLAG_ACCUMULATE;
        }
        let last = p + 1 == blocks;
        if last {
            flags |= FLAG_EPILOGUE | job.kernels.micro_flags;
        }
        let tile_pass = if last { job.kernels.tile_pass } else { None };
        let block_base = k0 * panels * pw;
        let b_panel_stride = kcp * pw * 4;
        // The packed B this pass's calls prefetch into L2, in f32 indices of
        // `b_data`: the same panels in the next K block, else the next N
        // block's panels in the first K block (panels of one K block are
        // contiguous). Each call takes its share, in call order.
        let ahead = if !last {
            let k1 = k0 + kcp;
            let kcp1 = kc.min(k - k1);
            let start = k1 * panels * pw + panels_range.start * kcp1 * pw;
            Some(start..start + panels_range.len() * kcp1 * pw)
        } else {
            next_panels.as_ref().map(|next| {
                let kcp0 = kc.min(k);
                next.start * kcp0 * pw..next.end * kcp0 * pw
            })
        };
        let calls = rows.len().div_ceil(micro.mr) * panels_range.len();
        let mut call_index = 0;
        let mut i0 = rows.start;
        while i0 < rows.end {
            let r = micro.mr.min(rows.end - i0);
            // A full row panel of an in-place product is read where it is.
            let in_place = match (&job.a, job.a_in_place) {
                (LeftOperand::Matrix(a), Some(kernels)) if r == micro.mr => a
                    .rows_in_place(i0, r, k0, kcp)
                    .map(|(address, row_bytes)| (kernels, address, row_bytes)),
                _ => None,
            };
            let at = k0 * rows.len() + (i0 - rows.start) * kcp;
            let packed_a = &mut a_chunk[at..at + r * kcp];
            if pack && in_place.is_none() {
                job.a
                    .pack_panel(i0, r, k0, packed_a, micro.transposes.as_ref());
            }
            let packed_a: &[f32] = packed_a;
            let mut run_panels = |narrow: MicroFn,
                                  (vecs, wide): (usize, MicroFn),
                                  edge: Option<&[MicroFn; 2]>,
                                  kernel_rows: usize,
                                  a: *const f32,
                                  flags: usize| {
                // Through a tile unless the kernel has exactly r rows.
                let full_end = if kernel_rows == r {
                    panels_range.end.min(full_panels)
                } else {
                    panels_range.start
                };
                let mut j = panels_range.start;
                while j < panels_range.end {
                    let b_ptr = b_data[block_base + j * kcp * pw..].as_ptr();
                    let prefetch = prefetch_target(b_data, ahead.as_ref(), call_index, calls, kcp)
                        .unwrap_or(b_ptr);
                    call_index += 1;
                    let call = MicroCall {
                        job,
                        a,
                        b: b_ptr,
                        kc: kcp,
                        flags,
                        tile_pass,
                        b_panel_stride,
                        prefetch,
                        ldc_bytes,
                        pw,
                    };
                    if j < full_end {
                        if vecs > 1 && j + vecs <= full_end {
                            call.full(wide, i0, r, j, vecs);
                            j += vecs;
                        } else {
                            call.full(narrow, i0, r, j, 1);
                            j += 1;
                        }
                    } else {
                        // The masked edge kernels store straight into C;
                        // a tile pass (whole vectors only) or padded rows
                        // need the tile copy.
                        match edge {
                            Some(edge) if job.kernels.tile_pass.is_none() => call.edge(edge, i0, j),
                            _ => call.tile(narrow, kernel_rows, i0, r, j),
                        }
                        j += 1;
                    }
                }
            };
            match (in_place, micro.narrow[r - 1]) {
                (Some((kernels, address, row_bytes)), _) => {
                    // `a_in_place` chose these kernels only with no tile
                    // pass and an edge kernel for any N edge, so no call
                    // goes through a tile; the row stride rides in the flags.
                    let narrow = kernels.narrow;
                    run_panels(
                        narrow,
                        (1, narrow),
                        kernels.edge.as_ref(),
                        r,
                        address,
                        flags | row_bytes << wide::LDA_SHIFT,
                    );
                }
                (None, Some(narrow)) => {
                    let wide = micro.wide[r - 1].expect("assembled with the narrow kernel");
                    let edge = micro.edge.get(r - 1).and_then(Option::as_ref);
                    run_panels(narrow, wide, edge, r, packed_a.as_ptr(), flags);
                }
                (None, None) => {
                    // A row count without its own kernel (not asked for
                    // when the library was built) runs on the next larger
                    // one (`mr` always exists) over A zero-padded to its
                    // rows, one panel per call through a tile: each output
                    // element is the same FMA chain, so the same bits.
                    let (rows, f) = micro.narrow[r..]
                        .iter()
                        .enumerate()
                        .find_map(|(i, f)| f.map(|f| (r + 1 + i, f)))
                        .expect("the mr-row micro-kernel is always assembled");
                    PADDED_A.with(|cell| {
                        let mut padded = cell.borrow_mut();
                        padded.clear();
                        padded.resize(rows * kcp, 0.0);
                        for (dst, src) in
                            padded.chunks_exact_mut(rows).zip(packed_a.chunks_exact(r))
                        {
                            dst[..r].copy_from_slice(src);
                        }
                        run_panels(f, (1, f), None, rows, padded.as_ptr(), flags);
                    });
                }
            }
            i0 += r;
        }
    }
}

/// Where call `index` of `calls` starts prefetching `kcp` cache lines
/// (one per k step): its share of `ahead`, kept inside it so the kernel
/// never prefetches past B. `None` (prefetch the panel being read) when
/// there is nothing ahead or it is shorter than one call's lines.
fn prefetch_target(
    b_data: &[f32],
    ahead: Option<&Range<usize>>,
    index: usize,
    calls: usize,
    kcp: usize,
) -> Option<*const f32> {
    let ahead = ahead?;
    // 16 f32 per 64-byte line.
    let lines = kcp * 16;
    let room = ahead.len().checked_sub(lines)?;
    let share = (ahead.len() / calls.max(1)) * index.min(calls);
    let at = ahead.start + share.min(room) / 16 * 16;
    Some(b_data[at..].as_ptr())
}

/// The per-(row panel, K block) arguments of micro-kernel calls.
struct MicroCall<'j, 'a> {
    job: &'j Job<'a>,
    a: *const f32,
    b: *const f32,
    kc: usize,
    flags: usize,
    /// The transcendental-activation pass to run after the kernel (last K
    /// block only).
    tile_pass: Option<TilePassFn>,
    b_panel_stride: usize,
    /// Start of the B lines the kernel prefetches (`prefetch_target`).
    prefetch: *const f32,
    ldc_bytes: usize,
    /// Columns per B panel.
    pw: usize,
}

impl MicroCall<'_, '_> {
    /// Panels `j..j + vecs` are all full (`pw` valid columns) and rows
    /// `i0..i0 + r` exist: the kernel touches exactly that block of C, the
    /// residual and the bias.
    fn full(&self, f: MicroFn, i0: usize, r: usize, j: usize, vecs: usize) {
        let job = self.job;
        let offset = i0 * job.ldc + j * self.pw;
        let bias = job
            .bias
            .map_or(std::ptr::null(), |b| b[j * self.pw..].as_ptr());
        let residual = job
            .residual
            .map_or(std::ptr::null(), |r| r[offset..].as_ptr());
        // SAFETY: the caller checked the block (rows i0..i0 + r, panels
        // j..j + vecs) is inside C (m x n) and belongs to this task; A and B
        // pointers cover `kc` steps of the packed panels (bounds established
        // by the packing lengths); the tile pass touches the same block.
        unsafe {
            f(
                self.a,
                self.b,
                job.c.0.add(offset),
                self.kc,
                self.ldc_bytes,
                self.flags,
                bias,
                residual,
                self.b_panel_stride,
                self.prefetch,
            );
            if let Some(pass) = self.tile_pass {
                pass(
                    job.c.0.add(offset),
                    residual,
                    self.ldc_bytes,
                    r,
                    // The tile pass counts f32x4 vectors per row.
                    vecs * self.pw / 4,
                    job.kernels.tile_flags,
                );
            }
        }
    }

    /// The last panel has fewer than `pw` valid columns: run the N-edge
    /// kernel of one or two vectors (`kernels[halves - 1]`) on C in place,
    /// the columns past the last masked off (bias, residual and C).
    fn edge(&self, kernels: &[MicroFn; 2], i0: usize, j: usize) {
        let job = self.job;
        let c0 = j * self.pw;
        let width = job.n - c0;
        let half = self.pw / 2;
        let halves = width.div_ceil(half);
        let lanes = width - (halves - 1) * half;
        debug_assert!((1..=2).contains(&halves) && (1..=16).contains(&lanes));
        let mask = (1usize << lanes) - 1;
        let offset = i0 * job.ldc + c0;
        let bias = job.bias.map_or(std::ptr::null(), |b| b[c0..].as_ptr());
        let residual = job
            .residual
            .map_or(std::ptr::null(), |r| r[offset..].as_ptr());
        // SAFETY: rows i0..i0 + r exist and columns c0..c0 + width are the
        // last panel's valid ones, in this task; the kernel reads and
        // writes C, bias and residual only in those columns (the last
        // vector under the mask, whose lanes past `width` access nothing),
        // and reads `kc` steps of the packed A and B panels.
        unsafe {
            kernels[halves - 1](
                self.a,
                self.b,
                job.c.0.add(offset),
                self.kc,
                self.ldc_bytes,
                self.flags | mask << wide::EDGE_MASK_SHIFT,
                bias,
                residual,
                self.b_panel_stride,
                self.prefetch,
            );
        }
    }

    /// Panel `j` through a full-width tile: the last panel, with fewer than
    /// `pw` valid columns (so the kernel never touches memory past row
    /// ends), or any panel when the kernel computes `kernel_rows > r` rows
    /// (A zero-padded to them; only the `r` valid rows are read and
    /// written back).
    fn tile(&self, f: MicroFn, kernel_rows: usize, i0: usize, r: usize, j: usize) {
        let job = self.job;
        let pw = self.pw;
        let c0 = j * pw;
        let width = (job.n - c0).min(pw);
        let mut tile = [0.0f32; MAX_MR * MAX_PANEL_WIDTH];
        let mut residual_tile = [0.0f32; MAX_MR * MAX_PANEL_WIDTH];
        let mut bias_tile = [0.0f32; MAX_PANEL_WIDTH];
        if let Some(bias) = job.bias {
            bias_tile[..width].copy_from_slice(&bias[c0..c0 + width]);
        }
        for i in 0..r {
            let row = (i0 + i) * job.ldc + c0;
            if self.flags & FLAG_ACCUMULATE != 0 {
                for col in 0..width {
                    // SAFETY: (i0 + i, c0 + col) is inside C and in this task.
                    tile[i * pw + col] = unsafe { job.c.0.add(row + col).read() };
                }
            }
            if let Some(residual) = job.residual {
                residual_tile[i * pw..i * pw + width].copy_from_slice(&residual[row..row + width]);
            }
        }
        debug_assert!(r <= kernel_rows && kernel_rows <= MAX_MR);
        // SAFETY: the tile buffers hold MAX_MR x MAX_PANEL_WIDTH and the
        // kernel touches kernel_rows <= mr <= MAX_MR rows of pw <=
        // MAX_PANEL_WIDTH columns at a pw * 4-byte row stride; `self.a`
        // holds kernel_rows rows of packed A.
        unsafe {
            f(
                self.a,
                self.b,
                tile.as_mut_ptr(),
                self.kc,
                pw * 4,
                self.flags,
                bias_tile.as_ptr(),
                residual_tile.as_ptr(),
                self.b_panel_stride,
                self.prefetch,
            );
            if let Some(pass) = self.tile_pass {
                pass(
                    tile.as_mut_ptr(),
                    residual_tile.as_ptr(),
                    pw * 4,
                    r,
                    pw / 4,
                    job.kernels.tile_flags,
                );
            }
        }
        for i in 0..r {
            let row = (i0 + i) * job.ldc + c0;
            for col in 0..width {
                // SAFETY: as above.
                unsafe { job.c.0.add(row + col).write(tile[i * pw + col]) };
            }
        }
    }
}

/// Batch dims: inline up to the executor's native rank limit, so a batched
/// call allocates nothing (larger ranks spill to the heap).
type BatchDims = smallvec::SmallVec<[usize; 8]>;

thread_local! {
    /// Packed B of the current batch entry (`run_batched`): grows to the
    /// largest B a thread has packed, then is reused.
    static B_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `f` on `len` f32 of this thread's B scratch (contents unspecified:
/// packing writes every element, padding included); a fresh buffer if the
/// scratch is already in use further up this thread's stack.
fn with_b_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    B_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            f(&mut scratch[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Numpy broadcast of two batch shapes.
fn broadcast_batch(a: &[usize], b: &[usize]) -> Option<BatchDims> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = (i + a.len()).checked_sub(rank).map_or(1, |j| a[j]);
            let db = (i + b.len()).checked_sub(rank).map_or(1, |j| b[j]);
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// Element strides of `batch` (an operand's batch dims) against the
/// broadcast `out` batch dims: 0 where the operand broadcasts.
fn batch_strides(batch: &[usize], out: &[usize], matrix_len: usize) -> BatchDims {
    let mut strides: BatchDims = smallvec::smallvec![0; out.len()];
    let mut stride = matrix_len;
    for (i, &d) in batch.iter().enumerate().rev() {
        let o = out.len() - batch.len() + i;
        strides[o] = if d == 1 { 0 } else { stride };
        stride *= d;
    }
    strides
}

fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl GemmKernels {
    pub(crate) fn run_batched(
        &self,
        args: BatchedMatmulArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        let err = |what: String| CodegenError::shape("matmul", what);
        if !self.epilogue.is_identity() {
            return Err(err(format!(
                "batched matmul needs a kernel without epilogue, this one has `{}`",
                self.epilogue.tag()
            )));
        }
        let BatchedMatmulArgs {
            a,
            a_shape,
            transpose_a,
            b,
            b_shape,
            transpose_b,
            c,
        } = args;
        if a_shape.len() < 2 || b_shape.len() < 2 {
            return Err(err(format!(
                "operands must have rank >= 2, got {a_shape:?} and {b_shape:?}"
            )));
        }
        let (a_batch, a_mat) = a_shape.split_at(a_shape.len() - 2);
        let (b_batch, b_mat) = b_shape.split_at(b_shape.len() - 2);
        let (m, k) = if transpose_a {
            (a_mat[1], a_mat[0])
        } else {
            (a_mat[0], a_mat[1])
        };
        let (kb, n) = if transpose_b {
            (b_mat[1], b_mat[0])
        } else {
            (b_mat[0], b_mat[1])
        };
        if k != kb {
            return Err(err(format!(
                "inner dimensions differ: {a_shape:?} (transposed: {transpose_a}) @ {b_shape:?} (transposed: {transpose_b})"
            )));
        }
        let batch = broadcast_batch(a_batch, b_batch).ok_or_else(|| {
            err(format!(
                "batch dims of {a_shape:?} and {b_shape:?} do not broadcast"
            ))
        })?;
        let overflow = || err("shape product overflows".to_string());
        if product(a_shape).ok_or_else(overflow)? != a.len() {
            return Err(err(format!(
                "A has shape {a_shape:?} but holds {} f32",
                a.len()
            )));
        }
        if product(b_shape).ok_or_else(overflow)? != b.len() {
            return Err(err(format!(
                "B has shape {b_shape:?} but holds {} f32",
                b.len()
            )));
        }
        let batches = product(&batch).ok_or_else(overflow)?;
        let mn = m.checked_mul(n).ok_or_else(overflow)?;
        let out_len = batches.checked_mul(mn).ok_or_else(overflow)?;
        if c.len() != out_len {
            return Err(err(format!(
                "C must hold {batch:?} x {m}x{n} = {out_len} f32, got {}",
                c.len()
            )));
        }
        if out_len == 0 {
            return Ok(());
        }
        let a_strides = batch_strides(a_batch, &batch, m * k);
        let b_strides = batch_strides(b_batch, &batch, k * n);
        let offsets = |index: usize| {
            let (mut rem, mut a_off, mut b_off) = (index, 0, 0);
            for d in (0..batch.len()).rev() {
                let i = rem % batch[d];
                rem /= batch[d];
                a_off += i * a_strides[d];
                b_off += i * b_strides[d];
            }
            (a_off, b_off)
        };
        fn matrix(
            data: &[f32],
            off: usize,
            rows: usize,
            cols: usize,
            t: bool,
        ) -> Result<MatrixRef<'_>, CodegenError> {
            let slice = &data[off..off + rows * cols];
            if t {
                MatrixRef::transposed(slice, rows, cols)
            } else {
                MatrixRef::row_major(slice, rows, cols)
            }
        }

        // B shared by every batch entry and A's batches contiguous: one
        // GEMM with the batch folded into M.
        let a_contiguous =
            !transpose_a && a_batch.len() == batch.len() && a_batch == batch.as_slice();
        if b_strides.iter().all(|&s| s == 0) && a_contiguous {
            let a_view = MatrixRef::row_major(a, batches * m, k)?;
            let b_view = matrix(b, 0, k, n, transpose_b)?;
            let layout = self.layout();
            return with_b_scratch(packed_b_len_for(k, n, layout), |scratch| {
                let packed = PackedBRef::pack_into_with(
                    &b_view,
                    scratch,
                    layout,
                    self.micro.transposes.as_ref(),
                )?;
                self.run(
                    GemmArgs {
                        a: a_view,
                        b: packed,
                        bias: None,
                        residual: None,
                        c,
                    },
                    threads,
                )
            });
        }

        let run_range = |range: Range<usize>,
                         out: SharedMut,
                         inner_threads: &Threads|
         -> Result<(), CodegenError> {
            let layout = self.layout();
            with_b_scratch(packed_b_len_for(k, n, layout), |scratch| {
                let mut packed_for: Option<usize> = None;
                for index in range {
                    let (a_off, b_off) = offsets(index);
                    if packed_for != Some(b_off) {
                        PackedBRef::pack_into_with(
                            &matrix(b, b_off, k, n, transpose_b)?,
                            scratch,
                            layout,
                            self.micro.transposes.as_ref(),
                        )?;
                        packed_for = Some(b_off);
                    }
                    let packed = PackedBRef::from_packed(scratch, k, n, layout);
                    // SAFETY: batch entry `index` owns C[index * mn..][..mn];
                    // ranges handed to different tasks are disjoint and `c` is
                    // exclusively borrowed for the whole call.
                    let c_entry =
                        unsafe { std::slice::from_raw_parts_mut(out.0.add(index * mn), mn) };
                    self.run(
                        GemmArgs {
                            a: matrix(a, a_off, m, k, transpose_a)?,
                            b: packed,
                            bias: None,
                            residual: None,
                            c: c_entry,
                        },
                        inner_threads,
                    )?;
                }
                Ok(())
            })
        };

        let out = SharedMut(c.as_mut_ptr());
        if threads.count() == 1 || batches == 1 {
            return run_range(0..batches, out, threads);
        }
        let groups = split_range(batches, 2 * threads.count(), 1);
        let results: std::sync::Mutex<Vec<CodegenError>> = std::sync::Mutex::new(Vec::new());
        let single = Threads::single();
        threads.for_each(&groups, |range| {
            if let Err(e) = run_range(range.clone(), out, &single) {
                results.lock().unwrap_or_else(|p| p.into_inner()).push(e);
            }
        });
        match results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_strides() {
        let dims = |d: &[usize]| BatchDims::from_slice(d);
        assert_eq!(broadcast_batch(&[2, 1, 3], &[4, 1]), Some(dims(&[2, 4, 3])));
        assert_eq!(broadcast_batch(&[2], &[3]), None);
        assert_eq!(broadcast_batch(&[], &[5]), Some(dims(&[5])));
        assert_eq!(batch_strides(&[4, 1], &[2, 4, 3], 10), dims(&[0, 10, 0]));
        assert_eq!(
            batch_strides(&[2, 4, 3], &[2, 4, 3], 10),
            dims(&[120, 30, 10])
        );
    }

    /// A product with about as many rows as columns or more is split
    /// along rows only, so no two tasks pack the same rows of A.
    #[test]
    fn tall_products_split_rows_so_each_row_is_packed_once() {
        for &(m, n, k) in &[(1024, 1024, 1024), (512, 256, 64), (300, 500, 100)] {
            let grid = plan_tasks(m, n, k, 2, 12, 32);
            assert!(grid.count() >= 2, "{m}x{n}x{k}: {} tasks", grid.count());
            for i in 0..grid.count() {
                assert_eq!(grid.get(i).panels, 0..panel_count(n, 32), "{m}x{n}x{k}");
            }
        }
    }

    /// Every row panel the driver hands a micro-kernel (thread split, M
    /// chunks, panels of `mr`) has a row count `row_mask` names for M, so a
    /// library built for M never takes the zero-padded fallback.
    #[test]
    fn row_mask_names_every_row_count_the_driver_calls() {
        for isa in Isa::ALL {
            let (mr, pw) = (wide::rows_per_kernel(isa), wide::panel_width(isa));
            assert_eq!(row_mask(isa, None), (1 << mr) - 1);
            assert_eq!(row_mask(isa, Some(0)), 0);
            for m in (1..=3 * mr + 2).chain([95, 96, 97, 128, 200, 513, 1000]) {
                let mask = row_mask(isa, Some(m));
                for &(n, k) in &[(10, 512), (512, 784), (1000, 64), (64, 3000)] {
                    for threads in [1, 2, 3] {
                        let tasks: Vec<Range<usize>> = if runs_parallel(m, n, k, threads) {
                            let grid = plan_tasks(m, n, k, threads, mr, pw);
                            (0..grid.count()).map(|i| grid.get(i).rows).collect()
                        } else {
                            vec![0..m]
                        };
                        let chunk = chunk_rows(k, mr);
                        for rows in tasks {
                            for start in rows.clone().step_by(chunk) {
                                let end = (start + chunk).min(rows.end);
                                for i0 in (start..end).step_by(mr) {
                                    let r = mr.min(end - i0);
                                    assert!(
                                        mask & (1 << (r - 1)) != 0,
                                        "{isa}: m {m}, n {n}, k {k}, {threads} threads: {r} rows"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The N edge (a last panel with fewer columns than its width; on
    /// AVX-512 the masked edge kernels, else the tile copy) computes the
    /// bits the full-width kernels give the same columns of a zero-padded
    /// B, and writes no column past the last: C's rows here are `n + 5`
    /// apart and the gaps hold a sentinel. Depths 5 and 300 (two K blocks:
    /// the edge kernel continues C), inline and tile-pass epilogues.
    /// Rows 4 KiB apart are packed (`GemmKernels::a_in_place`), rows `k`
    /// apart read in place: the same bits, edges and epilogues included.
    #[test]
    fn reading_a_in_place_gives_the_packed_bits() {
        use crate::codegen::{CodegenOptions, KernelLibraryBuilder, Target};
        if Target::detected().with_isa(Isa::Avx512).is_err() {
            return;
        }
        let value = |i: usize| ((i * 7919 % 97) as f32 - 48.0) / 32.0;
        let epilogues = [
            Epilogue {
                bias: true,
                activation: Some(Activation::Relu6),
                residual: true,
            },
            Epilogue::none(),
        ];
        let mut builder = KernelLibraryBuilder::with_options(&CodegenOptions {
            isa: Some(Isa::Avx512),
            ..CodegenOptions::default()
        })
        .unwrap();
        let ids: Vec<_> = epilogues
            .iter()
            .map(|&e| builder.add_gemm(e).unwrap())
            .collect();
        let lib = builder.finish().unwrap();
        let layout = lib.pack_layout();
        const PACKED_LD: usize = 1024;
        for (&epilogue, &id) in epilogues.iter().zip(&ids) {
            for k in [1, 16, 300, 1000] {
                for m in [12, 25, 100] {
                    for n in [1usize, 16, 24, 32, 40, 96, 256] {
                        let a: Vec<f32> = (0..m * k).map(value).collect();
                        let mut a_far = vec![0.0; m * PACKED_LD];
                        for i in 0..m {
                            a_far[i * PACKED_LD..i * PACKED_LD + k]
                                .copy_from_slice(&a[i * k..(i + 1) * k]);
                        }
                        let b: Vec<f32> = (0..k * n).map(|i| value(i + 1)).collect();
                        let bias: Vec<f32> = (0..n).map(|i| value(i + 2)).collect();
                        let residual: Vec<f32> = (0..m * n).map(|i| value(i + 3)).collect();
                        let packed =
                            PackedB::pack_for(&MatrixRef::row_major(&b, k, n).unwrap(), layout);
                        let run = |a: MatrixRef<'_>, threads: &Threads| {
                            let mut c = vec![0.0; m * n];
                            lib.gemm_strided(
                                id,
                                StridedGemmArgs {
                                    a: LeftOperand::Matrix(a),
                                    b: packed.as_ref(),
                                    bias: epilogue.bias.then_some(&bias[..]),
                                    residual: epilogue.residual.then_some(&residual[..]),
                                    c: &mut c,
                                    ldc: n,
                                },
                                threads,
                            )
                            .unwrap();
                            c
                        };
                        let threads = Threads::new(2).unwrap();
                        let packed_c = run(
                            MatrixRef::strided(&a_far, m, k, PACKED_LD, false).unwrap(),
                            &Threads::single(),
                        );
                        for threads in [&Threads::single(), &threads] {
                            let in_place = run(MatrixRef::row_major(&a, m, k).unwrap(), threads);
                            let differ = packed_c
                                .iter()
                                .zip(&in_place)
                                .position(|(x, y)| x.to_bits() != y.to_bits());
                            assert_eq!(differ, None, "m {m} k {k} n {n} {epilogue:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_n_edge_gives_the_full_panels_bits_and_stays_inside_c() {
        use crate::codegen::{CodegenOptions, KernelLibraryBuilder, Target};
        let sentinel = f32::from_bits(0x7fc0_1234);
        let value = |i: usize| ((i * 7919 % 97) as f32 - 48.0) / 32.0;
        let epilogues = [
            Epilogue {
                bias: true,
                activation: Some(Activation::Relu6),
                residual: true,
            },
            Epilogue {
                bias: true,
                activation: Some(Activation::HardSwish),
                residual: true,
            },
            Epilogue::none(),
        ];
        for isa in Isa::ALL {
            if Target::detected().with_isa(isa).is_err() {
                continue;
            }
            let mut builder = KernelLibraryBuilder::with_options(&CodegenOptions {
                isa: Some(isa),
                ..CodegenOptions::default()
            })
            .unwrap();
            let ids: Vec<_> = epilogues
                .iter()
                .map(|&e| builder.add_gemm(e).unwrap())
                .collect();
            let lib = builder.finish().unwrap();
            let layout = lib.pack_layout();
            let pw = layout.panel_width();
            for (&epilogue, &id) in epilogues.iter().zip(&ids) {
                for k in [5, 300] {
                    for n in [1usize, 3, 8, 16, 17, 24, 31, 33, 40] {
                        let m = 13;
                        let padded = n.div_ceil(pw) * pw;
                        let a: Vec<f32> = (0..m * k).map(value).collect();
                        let b: Vec<f32> = (0..k * n).map(|i| value(i + 1)).collect();
                        let bias: Vec<f32> = (0..n).map(|i| value(i + 2)).collect();
                        let residual: Vec<f32> = (0..m * n).map(|i| value(i + 3)).collect();
                        let pad_rows = |v: &[f32], rows: usize| -> Vec<f32> {
                            let mut out = vec![0.0; rows * padded];
                            for r in 0..rows {
                                out[r * padded..r * padded + n]
                                    .copy_from_slice(&v[r * n..(r + 1) * n]);
                            }
                            out
                        };
                        let run = |cols: usize, b: &[f32], bias: &[f32], residual: &[f32], ldc| {
                            let packed = PackedB::pack_for(
                                &MatrixRef::row_major(b, k, cols).unwrap(),
                                layout,
                            );
                            let mut c = vec![sentinel; (m - 1) * ldc + cols];
                            let residual_strided: Vec<f32> = (0..(m - 1) * ldc + cols)
                                .map(|i| match i % ldc < cols {
                                    true => residual[i / ldc * cols + i % ldc],
                                    false => sentinel,
                                })
                                .collect();
                            lib.gemm_strided(
                                id,
                                StridedGemmArgs {
                                    a: LeftOperand::Matrix(MatrixRef::row_major(&a, m, k).unwrap()),
                                    b: packed.as_ref(),
                                    bias: epilogue.bias.then_some(bias),
                                    residual: epilogue.residual.then_some(&residual_strided[..]),
                                    c: &mut c,
                                    ldc,
                                },
                                &Threads::single(),
                            )
                            .unwrap();
                            c
                        };
                        let edge = run(n, &b, &bias, &residual, n + 5);
                        let full = run(
                            padded,
                            &pad_rows(&b, k),
                            &pad_rows(&bias, 1),
                            &pad_rows(&residual, m),
                            padded,
                        );
                        for i in 0..m {
                            for j in 0..n + 5 {
                                let at = i * (n + 5) + j;
                                let Some(&got) = edge.get(at) else { continue };
                                let want = if j < n {
                                    full[i * padded + j]
                                } else {
                                    sentinel
                                };
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{isa} {epilogue:?} m {m} k {k} n {n}: row {i} column {j}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn plans_cover_the_output_once() {
        for isa in Isa::ALL {
            let (mr, pw) = (wide::rows_per_kernel(isa), wide::panel_width(isa));
            for &(m, n, k, threads) in &[
                (1, 1, 1, 2),
                (1000, 1000, 1000, 2),
                (1, 512, 784, 2),
                (513, 17, 300, 4),
                (64, 64, 64, 1),
                (37, 3000, 8, 2),
            ] {
                let panels = panel_count(n, pw);
                let grid = plan_tasks(m, n, k, threads, mr, pw);
                let tasks: Vec<Task> = (0..grid.count()).map(|i| grid.get(i)).collect();
                let mut covered = vec![0u8; m * panels];
                for t in &tasks {
                    for i in t.rows.clone() {
                        for j in t.panels.clone() {
                            covered[i * panels + j] += 1;
                        }
                    }
                }
                assert!(
                    covered.iter().all(|&c| c == 1),
                    "{isa}: {m}x{n}x{k} on {threads}"
                );
                if panels > 1 {
                    assert!(
                        tasks.len() >= threads,
                        "{isa}: {m}x{n}x{k}: {} tasks",
                        tasks.len()
                    );
                }
            }
        }
    }
}
