//! The public face of the codegen module: a builder that compiles kernels
//! into one JIT module, and the finalized library that runs them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::elementwise::{self, ElementwiseArgs, ElementwiseKernel, ElementwiseSlot, InnerStride};
use super::gemm::{
    self, Activation, BatchedMatmulArgs, Epilogue, GemmArgs, GemmKernels, GemmSlots, MicroSlots,
    PackLayout, StridedGemmArgs,
};
use super::jit::KernelSlot;
use super::jit::{CodegenOptions, FinalizedCode, IsaFeatures, JitBuilder, KernelInfo};
use super::rows::{self, RowArgs, RowKernel, RowOp, RowSlot};
use super::target::Isa;
use super::threads::Threads;
use super::CodegenError;
use crate::ir::ElementwiseExpr;

/// Distinguishes libraries so an id cannot be used with the wrong one.
static NEXT_LIBRARY: AtomicU64 = AtomicU64::new(1);

/// A GEMM kernel set (one epilogue) in a [`KernelLibrary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmId {
    library: u64,
    index: usize,
}

/// A fused elementwise kernel in a [`KernelLibrary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ElementwiseId {
    library: u64,
    index: usize,
}

/// A row kernel (softmax, layer norm, reduction) in a [`KernelLibrary`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowKernelId {
    library: u64,
    index: usize,
}

/// Collects kernels and compiles each as it is added; `finish` links them
/// into a [`KernelLibrary`].
pub struct KernelLibraryBuilder {
    jit: JitBuilder,
    library: u64,
    gemms: Vec<GemmSlots>,
    gemm_by_epilogue: HashMap<Epilogue, usize>,
    /// Compiled at the first `add_gemm`, shared by all GEMMs.
    micro: Option<MicroSlots>,
    tile_passes: HashMap<Activation, KernelSlot>,
    elementwise: Vec<ElementwiseSlot>,
    rows: Vec<RowSlot>,
}

impl KernelLibraryBuilder {
    /// Compile for the host CPU with default options.
    pub fn new() -> Result<KernelLibraryBuilder, CodegenError> {
        Self::with_options(&CodegenOptions::default())
    }

    pub fn with_options(options: &CodegenOptions) -> Result<KernelLibraryBuilder, CodegenError> {
        Ok(KernelLibraryBuilder {
            jit: JitBuilder::new(options)?,
            library: NEXT_LIBRARY.fetch_add(1, Ordering::Relaxed),
            gemms: Vec::new(),
            gemm_by_epilogue: HashMap::new(),
            micro: None,
            tile_passes: HashMap::new(),
            elementwise: Vec::new(),
            rows: Vec::new(),
        })
    }

    pub fn features(&self) -> IsaFeatures {
        self.jit.features()
    }

    /// The kernel tier GEMMs are generated for.
    pub fn isa(&self) -> Isa {
        self.jit.isa()
    }

    /// The packed-B layout this library's GEMM kernels read: pack weights
    /// with [`PackedB::pack_for`](super::PackedB::pack_for) and this.
    pub fn pack_layout(&self) -> PackLayout {
        PackLayout::for_isa(self.jit.isa())
    }

    /// A GEMM with the given epilogue, for any M: [`add_gemm_for`](Self::add_gemm_for)
    /// with every micro-kernel row count.
    pub fn add_gemm(&mut self, epilogue: Epilogue) -> Result<GemmId, CodegenError> {
        self.add_gemm_for(epilogue, None)
    }

    /// A GEMM with the given epilogue, for `m` rows (`None`: any M). The
    /// micro-kernels depend on neither N, K nor the epilogue (selected by
    /// runtime flags), so they are shared by every GEMM of the library; M
    /// decides which of them a call runs: `mr`-row panels and the `m mod mr`
    /// edge, so those row counts are assembled (once per library; the
    /// `mr`-row kernel always is). A row count never asked for still runs,
    /// on the `mr`-row kernel over zero-padded rows (slower, same bits).
    /// Transcendental activations add one small tile-pass function each.
    /// The same epilogue twice gives the same id.
    pub fn add_gemm_for(
        &mut self,
        epilogue: Epilogue,
        m: Option<usize>,
    ) -> Result<GemmId, CodegenError> {
        self.add_gemm_for_shape(epilogue, m, None)
    }

    /// [`add_gemm_for`](Self::add_gemm_for) for `n` columns (`None`: any
    /// N): the AVX-512 N-edge kernels only when `n` ends in a partial panel
    /// (without them the edge takes the tile copy: same bits).
    pub fn add_gemm_for_shape(
        &mut self,
        epilogue: Epilogue,
        m: Option<usize>,
        n: Option<usize>,
    ) -> Result<GemmId, CodegenError> {
        let isa = self.jit.isa();
        let mask = gemm::row_mask(isa, m) | gemm::edge_mask(isa, m, n, epilogue);
        micro_kernels(&mut self.micro, &mut self.jit)?.add_rows(&mut self.jit, mask)?;
        if let Some(&index) = self.gemm_by_epilogue.get(&epilogue) {
            return Ok(GemmId {
                library: self.library,
                index,
            });
        }
        let tile_pass = match epilogue.activation {
            Some(activation) if !gemm::is_inline(activation) => {
                Some(match self.tile_passes.get(&activation) {
                    Some(&slot) => slot,
                    None => {
                        let slot = gemm::compile_tile_pass(&mut self.jit, activation)?;
                        self.tile_passes.insert(activation, slot);
                        slot
                    }
                })
            }
            _ => None,
        };
        self.gemms.push(GemmSlots {
            epilogue,
            tile_pass,
        });
        let index = self.gemms.len() - 1;
        self.gemm_by_epilogue.insert(epilogue, index);
        Ok(GemmId {
            library: self.library,
            index,
        })
    }

    /// The micro-kernel row counts asked for so far (by
    /// [`add_gemm_for`](Self::add_gemm_for)'s M), as a mask: bit `rows - 1`.
    pub fn gemm_rows(&self) -> u32 {
        self.micro.as_ref().map_or(0, |m| m.rows_asked())
    }

    /// The GEMV kernel for 1-row products of depth `k` and width `n` (a
    /// batch-1 dense layer): machine code for that shape, which every GEMM
    /// of this library then uses when it gets one row of A and a B of that
    /// shape (same results, bit for bit). `Ok(false)` when the tier has
    /// none for the shape (the baseline tier, `n` under one panel); such
    /// products stay on the micro-kernels.
    pub fn add_gemv(&mut self, k: usize, n: usize) -> Result<bool, CodegenError> {
        micro_kernels(&mut self.micro, &mut self.jit)?.add_gemv(&mut self.jit, k, n)
    }

    /// A fused elementwise kernel; `inputs[i]` says how input `i` advances
    /// along the output's last axis.
    pub fn add_elementwise(
        &mut self,
        expr: &ElementwiseExpr,
        inputs: &[InnerStride],
    ) -> Result<ElementwiseId, CodegenError> {
        let index = self.elementwise.len();
        let slot =
            elementwise::compile(&mut self.jit, &format!("elementwise_{index}"), expr, inputs)?;
        self.elementwise.push(slot);
        Ok(ElementwiseId {
            library: self.library,
            index,
        })
    }

    pub fn add_row_kernel(&mut self, op: RowOp) -> Result<RowKernelId, CodegenError> {
        let slot = rows::compile(&mut self.jit, op)?;
        self.rows.push(slot);
        Ok(RowKernelId {
            library: self.library,
            index: self.rows.len() - 1,
        })
    }

    /// Link every kernel (one `finalize_definitions` for the module).
    pub fn finish(self) -> Result<KernelLibrary, CodegenError> {
        let features = self.jit.features();
        let isa = self.jit.isa();
        let (code, addresses, infos) = self.jit.finish()?;
        let micro = self
            .micro
            .as_ref()
            .map(|m| std::sync::Arc::new(m.link(&addresses)));
        let gemms = match &micro {
            Some(micro) => self
                .gemms
                .iter()
                .map(|s| s.link(&addresses, micro))
                .collect(),
            None => Vec::new(),
        };
        Ok(KernelLibrary {
            library: self.library,
            gemms,
            elementwise: self
                .elementwise
                .iter()
                .map(|s| s.link(&addresses))
                .collect(),
            rows: self.rows.iter().map(|s| s.link(&addresses)).collect(),
            infos,
            features,
            isa,
            _code: code,
        })
    }
}

/// The library's GEMM micro-kernel set, assembled on first use (by the
/// first GEMM or GEMV asked for).
fn micro_kernels<'a>(
    micro: &'a mut Option<MicroSlots>,
    jit: &mut JitBuilder,
) -> Result<&'a mut MicroSlots, CodegenError> {
    match micro {
        Some(micro) => Ok(micro),
        None => {
            let isa = jit.isa();
            Ok(micro.insert(gemm::compile_micro_kernels(jit, isa)?))
        }
    }
}

/// Compiled kernels, immutable and shareable across threads. Every entry
/// point checks its slices against the shapes before running JIT code;
/// the executable memory is freed when the library is dropped.
pub struct KernelLibrary {
    library: u64,
    gemms: Vec<GemmKernels>,
    elementwise: Vec<ElementwiseKernel>,
    rows: Vec<RowKernel>,
    infos: Vec<KernelInfo>,
    features: IsaFeatures,
    isa: Isa,
    // Declared last: dropped after the kernel tables holding its addresses.
    _code: FinalizedCode,
}

impl KernelLibrary {
    fn check(&self, library: u64) -> Result<(), CodegenError> {
        if library == self.library {
            Ok(())
        } else {
            Err(CodegenError::ForeignKernel)
        }
    }

    /// `c = epilogue(a @ b)`.
    pub fn gemm(
        &self,
        id: GemmId,
        args: GemmArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        self.check(id.library)?;
        self.gemms[id.index].run(args, threads)
    }

    /// A GEMM whose C rows are `ldc` apart and whose left operand may be
    /// gathered by a rule (the convolution kernels).
    pub(crate) fn gemm_strided(
        &self,
        id: GemmId,
        args: StridedGemmArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        self.check(id.library)?;
        self.gemms[id.index].run_strided(args, threads)
    }

    /// Batched `a @ b` with broadcast batch dims and optional transposes;
    /// `id` must be a GEMM without epilogue.
    pub fn batched_matmul(
        &self,
        id: GemmId,
        args: BatchedMatmulArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        self.check(id.library)?;
        self.gemms[id.index].run_batched(args, threads)
    }

    pub fn gemm_epilogue(&self, id: GemmId) -> Result<Epilogue, CodegenError> {
        self.check(id.library)?;
        Ok(self.gemms[id.index].epilogue())
    }

    pub fn elementwise(
        &self,
        id: ElementwiseId,
        args: ElementwiseArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        self.check(id.library)?;
        self.elementwise[id.index].run(args, threads)
    }

    pub fn row_kernel(
        &self,
        id: RowKernelId,
        args: RowArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        self.check(id.library)?;
        self.rows[id.index].run(args, threads)
    }

    pub fn row_op(&self, id: RowKernelId) -> Result<RowOp, CodegenError> {
        self.check(id.library)?;
        Ok(self.rows[id.index].op())
    }

    pub fn features(&self) -> IsaFeatures {
        self.features
    }

    /// The kernel tier GEMMs were generated for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The packed-B layout this library's GEMM kernels read.
    pub fn pack_layout(&self) -> PackLayout {
        PackLayout::for_isa(self.isa)
    }

    /// Every compiled function, in compilation order.
    pub fn kernels(&self) -> &[KernelInfo] {
        &self.infos
    }

    /// The CLIF of every kernel as emitted (before Cranelift's
    /// optimisations), in compilation order: deterministic for a given
    /// sequence of `add_*` calls and ISA features.
    pub fn clif_text(&self) -> String {
        let mut text = String::new();
        for info in &self.infos {
            text.push_str(&format!("; kernel {}\n{}\n", info.name, info.text()));
        }
        text
    }

    /// The Intel-syntax listing of every assembled (wide-tier) kernel, in
    /// compilation order; empty on the baseline tier, whose kernels are
    /// all Cranelift's.
    pub fn asm_text(&self) -> String {
        let mut text = String::new();
        for info in self.infos.iter().filter(|info| info.is_assembled()) {
            text.push_str(&format!("; kernel {}\n{}\n", info.name, info.text()));
        }
        text
    }
}
