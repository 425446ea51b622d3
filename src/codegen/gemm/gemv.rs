//! The GEMV path of the wide tiers: `c[1, n] = epilogue(a[1, k] @ B)` for
//! one row of A, streaming the packed B (weights) once.
//!
//! A one-row product does two flops per B element it loads, so it runs at
//! the speed B arrives (memory, L3, or L2 when B stays there from call to
//! call), not at the FMA units'. The kernel is machine code assembled per
//! shape `(k, n)` with iced-x86, like the micro-kernels (`wide.rs`): the K
//! blocking, the panel strides and the block offsets of the packed B are
//! immediates, the whole depth runs inside one call (the accumulators stay
//! in registers across K blocks: no C round trip per block), and a call
//! sweeps a range of panels, [`GROUP`] panels (2 vectors each: 8 independent
//! FMA chains, enough to hide the FMA latency on two pipes) at a time.
//!
//! Same results as the GEMM path, bit for bit: each output element is the
//! one sequential FMA chain over k the micro-kernels compute, then bias,
//! relu, the cap at 6 (relu6) and residual in their order (transcendental activations run as the
//! same tile pass afterwards). So a model gives the same bits at batch 1 as
//! in any row of a larger batch, and on any thread count.
//!
//! Signature (System V): `(a, b, c, first_panel, end_panel, flags, bias,
//! residual)`: `a` the `k` values of the row (contiguous), `b` the packed B
//! of the shape the kernel was assembled for, `c`, `bias` and `residual`
//! the starts of their rows; the call computes the full panels
//! `first_panel..end_panel` (the driver keeps the N edge on the
//! micro-kernel's tile copy). Flags are the micro-kernel's
//! (`FLAG_EPILOGUE` with `FLAG_BIAS`, `FLAG_RELU`, `FLAG_CAP6`,
//! `FLAG_RESIDUAL`).
//!
//! No software prefetch: the panel streams are sequential, which the
//! hardware prefetchers follow; `prefetcht0` 256 B to 4 KiB ahead measured
//! no faster than none (MLP batch 1, one and two threads, on the
//! Sapphire Rapids-class machine of BENCHMARKS.md), and 4 KiB slower.

use iced_x86::code_asm::*;

use super::microkernel::{CAP6, FLAG_BIAS, FLAG_CAP6, FLAG_EPILOGUE, FLAG_RELU, FLAG_RESIDUAL};
use super::pack::{k_block, panel_count};
use super::wide::panel_width;
use crate::codegen::target::Isa;
use crate::codegen::wide_math::{asm_err, Assembled, YMM, ZMM};
use crate::codegen::CodegenError;

/// Parameters of the GEMV kernel.
pub(crate) const GEMV_PARAMS: usize = 8;

/// Panels per group: 2 accumulators each, so 8 FMA chains in flight.
pub(crate) const GROUP: usize = 4;

pub(crate) type GemvFn = unsafe extern "C" fn(
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    first_panel: usize,
    end_panel: usize,
    flags: usize,
    bias: *const f32,
    residual: *const f32,
);

/// Whether a shape gets a GEMV kernel on this tier: wide tiers, a nonzero
/// depth, at least one full panel, and offsets that fit the immediates.
pub(crate) fn supports(isa: Isa, k: usize, n: usize) -> bool {
    Geometry::new(isa, k, n).is_some()
}

/// The packed-B geometry of one shape, in bytes.
struct Geometry {
    isa: Isa,
    /// Bytes of one vector and of one panel's k row (2 vectors).
    vec: i32,
    row: i32,
    /// K blocks: all but the last are `kc` deep.
    blocks: usize,
    kc: usize,
    last_kc: usize,
    /// Panel stride inside a full block and inside the last one.
    panel_stride: i32,
    last_panel_stride: i32,
    /// From the end of a full block's panel to the same panel of the next
    /// block, and the start of the last block.
    next_block: i32,
    last_block: i64,
}

impl Geometry {
    fn new(isa: Isa, k: usize, n: usize) -> Option<Geometry> {
        let pw = panel_width(isa);
        if isa == Isa::Baseline || k == 0 || n < pw {
            return None;
        }
        let vec = (pw / 2 * 4) as i64;
        let row = 2 * vec;
        let kc = k_block(k);
        let blocks = k.div_ceil(kc);
        let last_kc = k - (blocks - 1) * kc;
        let panels = panel_count(n, pw) as i64;
        let block_bytes = (kc as i64).checked_mul(panels)?.checked_mul(row)?;
        let fits = |x: i64| i32::try_from(x).ok();
        // The largest displacement: the last panel of a group.
        fits(row * kc as i64 * GROUP as i64)?;
        Some(Geometry {
            isa,
            vec: vec as i32,
            row: row as i32,
            blocks,
            kc,
            last_kc,
            panel_stride: fits(kc as i64 * row)?,
            last_panel_stride: fits(last_kc as i64 * row)?,
            next_block: fits(block_bytes - kc as i64 * row)?,
            last_block: (blocks as i64 - 1).checked_mul(block_bytes)?,
        })
    }
}

struct Gemv {
    a: CodeAssembler,
    g: Geometry,
}

/// Registers: the row of A in rdi, packed B in rsi, C in rdx, the current
/// panel in rcx, the end panel in r8, flags in r9; rax counts k steps, rbx
/// (saved) K blocks, r10 walks B, r11 walks A. Accumulator `(v, h)` (panel
/// `v` of the group, half `h`) is vector `2v + h`; the A broadcast is the
/// top vector register.
impl Gemv {
    fn acc(v: usize, h: usize) -> usize {
        2 * v + h
    }

    fn broadcast(&self) -> usize {
        match self.g.isa {
            Isa::Avx512 => 31,
            _ => 15,
        }
    }

    fn zero(&mut self, r: usize) -> Result<(), IcedError> {
        match self.g.isa {
            Isa::Avx512 => self.a.vpxord(ZMM[r], ZMM[r], ZMM[r]),
            _ => self.a.vxorps(YMM[r], YMM[r], YMM[r]),
        }
    }

    fn fma(&mut self, acc: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
        let bc = self.broadcast();
        match self.g.isa {
            Isa::Avx512 => self.a.vfmadd231ps(ZMM[acc], ZMM[bc], zmmword_ptr(mem)),
            _ => self.a.vfmadd231ps(YMM[acc], YMM[bc], ymmword_ptr(mem)),
        }
    }

    fn add_mem(&mut self, r: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
        match self.g.isa {
            Isa::Avx512 => self.a.vaddps(ZMM[r], ZMM[r], zmmword_ptr(mem)),
            _ => self.a.vaddps(YMM[r], YMM[r], ymmword_ptr(mem)),
        }
    }

    /// One K block's k loop over `panels` panels `stride` bytes apart, rax
    /// steps: each step broadcasts one A value and runs 2 FMAs per panel
    /// with B read straight from memory.
    fn k_loop(&mut self, panels: usize, stride: i32) -> Result<(), IcedError> {
        let bc = self.broadcast();
        let mut step = self.a.create_label();
        self.a.set_label(&mut step)?;
        match self.g.isa {
            Isa::Avx512 => self.a.vbroadcastss(ZMM[bc], dword_ptr(r11))?,
            _ => self.a.vbroadcastss(YMM[bc], dword_ptr(r11))?,
        }
        for v in 0..panels {
            let at = v as i32 * stride;
            for h in 0..2 {
                self.fma(Gemv::acc(v, h), r10 + (at + h as i32 * self.g.vec))?;
            }
        }
        self.a.add(r11, 4)?;
        self.a.add(r10, self.g.row)?;
        self.a.dec(rax)?;
        self.a.jnz(step)
    }

    /// Jumps to `skip` unless both `flag` and `FLAG_EPILOGUE` are set.
    fn unless_flag(&mut self, flag: usize, skip: CodeLabel) -> Result<(), IcedError> {
        let mask = (flag | FLAG_EPILOGUE) as i32;
        self.a.mov(rax, r9)?;
        self.a.and(rax, mask)?;
        self.a.cmp(rax, mask)?;
        self.a.jne(skip)
    }

    /// `panels` panels starting at panel rcx: every K block, the epilogue,
    /// the stores.
    fn group(&mut self, panels: usize) -> Result<(), IcedError> {
        let g = &self.g;
        let (kc, last_kc, blocks) = (g.kc, g.last_kc, g.blocks);
        let (stride, last_stride) = (g.panel_stride, g.last_panel_stride);
        let (next_block, last_block, row, vec) = (g.next_block, g.last_block, g.row, g.vec);
        for v in 0..panels {
            for h in 0..2 {
                self.zero(Gemv::acc(v, h))?;
            }
        }
        self.a.mov(r11, rdi)?;
        if blocks > 1 {
            // The full K blocks: the same panel of each, `next_block` apart.
            self.a.imul_3(r10, rcx, stride)?;
            self.a.add(r10, rsi)?;
            self.a.mov(rbx, (blocks - 1) as u64)?;
            let mut block = self.a.create_label();
            self.a.set_label(&mut block)?;
            self.a.mov(rax, kc as u64)?;
            self.k_loop(panels, stride)?;
            self.a.add(r10, next_block)?;
            self.a.dec(rbx)?;
            self.a.jnz(block)?;
        }
        // The last K block (the only one when K fits one).
        self.a.imul_3(r10, rcx, last_stride)?;
        self.a.add(r10, rsi)?;
        if last_block != 0 {
            self.a.mov(rax, last_block as u64)?;
            self.a.add(r10, rax)?;
        }
        self.a.mov(rax, last_kc as u64)?;
        self.k_loop(panels, last_stride)?;

        // Epilogue, in the micro-kernel's order: bias, relu, cap, residual.
        // r10: this group's offset in C, bias and residual.
        self.a.imul_3(r10, rcx, row)?;
        let mut no_bias = self.a.create_label();
        let mut no_relu = self.a.create_label();
        let mut no_cap = self.a.create_label();
        let mut no_residual = self.a.create_label();
        self.unless_flag(FLAG_BIAS, no_bias)?;
        // bias: [rsp + 16] (rbx was pushed).
        self.a.mov(r11, qword_ptr(rsp + 16))?;
        self.a.add(r11, r10)?;
        for v in 0..panels {
            for h in 0..2 {
                self.add_mem(Gemv::acc(v, h), r11 + (v as i32 * row + h as i32 * vec))?;
            }
        }
        self.a.set_label(&mut no_bias)?;
        self.unless_flag(FLAG_RELU, no_relu)?;
        let zero = self.broadcast();
        self.zero(zero)?;
        for v in 0..panels {
            for h in 0..2 {
                let r = Gemv::acc(v, h);
                // maxps returns its second source when either is NaN (NaN
                // passes through, as in the micro-kernels' relu).
                match self.g.isa {
                    Isa::Avx512 => self.a.vmaxps(ZMM[r], ZMM[zero], ZMM[r])?,
                    _ => self.a.vmaxps(YMM[r], YMM[zero], YMM[r])?,
                }
            }
        }
        self.a.set_label(&mut no_relu)?;
        self.unless_flag(FLAG_CAP6, no_cap)?;
        // 6.0 in every lane of the broadcast register; minps returns its
        // second source for a NaN, so NaN passes through as in relu6.
        let cap = self.broadcast();
        self.a.mov(eax, CAP6.to_bits())?;
        match self.g.isa {
            Isa::Avx512 => self.a.vpbroadcastd(ZMM[cap], eax)?,
            _ => {
                self.a.vmovd(xmm15, eax)?;
                self.a.vpbroadcastd(YMM[cap], xmm15)?;
            }
        }
        for v in 0..panels {
            for h in 0..2 {
                let r = Gemv::acc(v, h);
                match self.g.isa {
                    Isa::Avx512 => self.a.vminps(ZMM[r], ZMM[cap], ZMM[r])?,
                    _ => self.a.vminps(YMM[r], YMM[cap], YMM[r])?,
                }
            }
        }
        self.a.set_label(&mut no_cap)?;
        self.unless_flag(FLAG_RESIDUAL, no_residual)?;
        self.a.mov(r11, qword_ptr(rsp + 24))?;
        self.a.add(r11, r10)?;
        for v in 0..panels {
            for h in 0..2 {
                self.add_mem(Gemv::acc(v, h), r11 + (v as i32 * row + h as i32 * vec))?;
            }
        }
        self.a.set_label(&mut no_residual)?;
        self.a.add(r10, rdx)?;
        for v in 0..panels {
            for h in 0..2 {
                let r = Gemv::acc(v, h);
                let mem = r10 + (v as i32 * row + h as i32 * vec);
                match self.g.isa {
                    Isa::Avx512 => self.a.vmovups(zmmword_ptr(mem), ZMM[r])?,
                    _ => self.a.vmovups(ymmword_ptr(mem), YMM[r])?,
                }
            }
        }
        Ok(())
    }

    fn body(&mut self) -> Result<(), IcedError> {
        let mut groups = self.a.create_label();
        let mut tails = self.a.create_label();
        let mut done = self.a.create_label();
        self.a.push(rbx)?;
        self.a.set_label(&mut groups)?;
        self.a.mov(rax, r8)?;
        self.a.sub(rax, rcx)?;
        self.a.cmp(rax, GROUP as i32)?;
        self.a.jb(tails)?;
        self.group(GROUP)?;
        self.a.add(rcx, GROUP as i32)?;
        self.a.jmp(groups)?;
        // Fewer than GROUP panels left (rax of them, possibly none).
        self.a.set_label(&mut tails)?;
        let mut labels: Vec<CodeLabel> = (1..GROUP).map(|_| self.a.create_label()).collect();
        for (i, label) in labels.iter().enumerate() {
            self.a.cmp(rax, (i + 1) as i32)?;
            self.a.je(*label)?;
        }
        self.a.jmp(done)?;
        for (i, label) in labels.iter_mut().enumerate() {
            self.a.set_label(label)?;
            self.group(i + 1)?;
            self.a.jmp(done)?;
        }
        self.a.set_label(&mut done)?;
        self.a.pop(rbx)?;
        self.a.vzeroupper()?;
        self.a.ret()
    }
}

/// The GEMV kernel of shape `(k, n)` on a wide tier (see [`supports`]).
pub(crate) fn assemble(isa: Isa, k: usize, n: usize) -> Result<Assembled, CodegenError> {
    let g = Geometry::new(isa, k, n).ok_or_else(|| {
        CodegenError::Unsupported(format!("a {isa} GEMV kernel for k = {k}, n = {n}"))
    })?;
    let mut gemv = Gemv {
        a: CodeAssembler::new(64).map_err(asm_err)?,
        g,
    };
    gemv.body().map_err(asm_err)?;
    let bytes = gemv.a.assemble(0).map_err(asm_err)?;
    Ok(Assembled {
        code_len: bytes.len(),
        bytes,
    })
}
