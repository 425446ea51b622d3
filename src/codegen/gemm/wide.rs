//! The wide-tier GEMM micro-kernels: x86-64 machine code assembled with
//! iced-x86 at model compile time and placed in the same JIT module as the
//! Cranelift kernels (Cranelift's x86-64 backend stops at 128-bit vectors;
//! these use the full 256 / 512 bits).
//!
//! Same contract and signature as the Cranelift micro-kernel
//! (`microkernel.rs`): `(a, b, c, kc, ldc, flags, bias, residual,
//! b_panel_stride, prefetch)`, System V: the first six in rdi, rsi, rdx,
//! rcx, r8, r9, the last four on the stack at [rsp+8] .. [rsp+32]. Each k
//! step also prefetches one cache line into L2 (`prefetcht1`), walking
//! from `prefetch`: the driver points it at the B panels of its next K or N
//! block, which would otherwise arrive from memory in a burst when the
//! first row panel reaches them (on this Sapphire Rapids-class core that
//! stalled sgemm 1024 by a fifth). A panel is
//! `panel_width` columns (32 = 2 zmm for AVX-512, 16 = 2 ymm for AVX2); a
//! kernel covers `rows` rows x `panels` adjacent panels. Each output element
//! is one sequential fused multiply-add chain over k, as in the baseline,
//! so the split over threads never changes a result.
//!
//! The code touches only caller-saved registers (rax, rcx, rdx, rsi, rdi,
//! r8-r11, every vector register) and no stack, so it needs no prologue;
//! it ends with `vzeroupper` so SSE code after it pays no transition.
//! Bounds are the driver's job (`mod.rs` validates every slice first).

use iced_x86::code_asm::*;

use super::microkernel::{
    CAP6, FLAG_ACCUMULATE, FLAG_BIAS, FLAG_CAP6, FLAG_EPILOGUE, FLAG_RELU, FLAG_RESIDUAL,
};
use super::Activation;
use crate::codegen::target::Isa;
use crate::codegen::wide_math::{asm_err, Assembled, Scratch, VecAsm, WideActivation, YMM, ZMM};
use crate::codegen::CodegenError;

/// Columns per packed B panel for a tier: two vector registers wide, so a
/// k step of one row is two independent FMA chains per panel.
pub(crate) fn panel_width(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 32,
        Isa::Avx2 => 16,
        Isa::Baseline => 4,
    }
}

/// Rows of A per full micro-kernel call: 12 x 2 zmm = 24 accumulators
/// (+2 B vectors, +1 broadcast) of the 32 zmm for AVX-512; 6 x 2 ymm = 12
/// (+2 B, +1 broadcast) of the 16 ymm for AVX2; the baseline's 12 x f32x4.
pub(crate) fn rows_per_kernel(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 12,
        Isa::Avx2 => 6,
        Isa::Baseline => 12,
    }
}

/// Panels per call for a short row count (the M edge, small batches): more
/// panels give the kernel enough independent accumulator chains to hide
/// FMA latency while accumulators + B vectors fit the register file.
pub(crate) fn wide_panels(isa: Isa, rows: usize) -> usize {
    match (isa, rows) {
        (Isa::Avx512, 1..=2) => 4,
        (Isa::Avx512, 3) => 3,
        (Isa::Avx512, 4..=6) => 2,
        (Isa::Avx2, 1) => 3,
        (Isa::Avx2, 2) => 2,
        _ => 1,
    }
}

/// Vector registers of one kernel: accumulators `acc(i, v, h)` (row i,
/// panel v, half h), B vectors `b(v, h)`, and (AVX2) the A broadcast.
#[derive(Clone, Copy)]
struct Layout {
    isa: Isa,
    rows: usize,
    panels: usize,
    /// Vectors computed per panel: 2, or 1 for an N-edge kernel whose
    /// columns all fit the first half.
    halves: usize,
    /// An N-edge kernel (AVX-512): C, bias and residual are read and
    /// written only in the columns of mask `k1`'s lanes of the last half
    /// (the mask comes in the flags, `EDGE_MASK_SHIFT`), so the kernel
    /// touches no column past the matrix's last.
    edge: bool,
    /// A read in place (`assemble_rows_in_place`): row `i` of the panel at
    /// `a + i * lda`, `lda` bytes in the flags' bits `LDA_SHIFT..`, instead
    /// of packed `[kc][rows]`.
    a_in_place: bool,
}

impl Layout {
    fn vectors(self) -> usize {
        match self.isa {
            Isa::Avx512 => 32,
            _ => 16,
        }
    }
    fn acc(self, i: usize, v: usize, h: usize) -> usize {
        (i * self.panels + v) * 2 + h
    }
    /// The A broadcast: the top register.
    fn broadcast(self) -> usize {
        self.vectors() - 1
    }
    fn b(self, v: usize, h: usize) -> usize {
        // Downwards from below the broadcast register.
        self.broadcast() - 1 - (v * 2 + h)
    }
    fn vec_bytes(self) -> i32 {
        match self.isa {
            Isa::Avx512 => 64,
            _ => 32,
        }
    }
    fn panel_bytes(self) -> i32 {
        2 * self.vec_bytes()
    }
    fn fits(self) -> bool {
        // In place, r10 holds A's row stride (not 3 panel strides) and
        // three bases cover 12 rows.
        let in_place_ok = !self.a_in_place || (self.panels <= 3 && self.rows <= 12);
        in_place_ok && self.rows * self.panels * self.halves + self.panels * 2 + 1 <= self.vectors()
    }
    /// Whether half `h` is accessed under the edge mask.
    fn masked(self, h: usize) -> bool {
        self.edge && h + 1 == self.halves
    }
}

/// Where an N-edge kernel finds its column mask in the flags: bits
/// `EDGE_MASK_SHIFT..EDGE_MASK_SHIFT + 16`, one per column of the panel's
/// last computed half.
pub(crate) const EDGE_MASK_SHIFT: usize = 16;

/// Where a kernel reading A in place finds the bytes between A's rows in
/// the flags: bits `LDA_SHIFT..64`.
pub(crate) const LDA_SHIFT: usize = 32;

/// Callee-saved registers a kernel reading A in place pushes: the row
/// bases of rows 4-7 and 8-11 and three times the row stride.
const IN_PLACE_SAVED: [AsmRegister64; 3] = [rbx, r12, r13];

/// Emits one instruction per vector register size; `$z` and `$y` are the
/// register arrays' element expressions.
struct Asm {
    a: CodeAssembler,
    l: Layout,
}

impl Asm {
    fn vmovups_load(&mut self, reg: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
        match self.l.isa {
            Isa::Avx512 => self.a.vmovups(ZMM[reg], zmmword_ptr(mem)),
            _ => self.a.vmovups(YMM[reg], ymmword_ptr(mem)),
        }
    }
    fn vmovups_store(&mut self, mem: AsmMemoryOperand, reg: usize) -> Result<(), IcedError> {
        match self.l.isa {
            Isa::Avx512 => self.a.vmovups(zmmword_ptr(mem), ZMM[reg]),
            _ => self.a.vmovups(ymmword_ptr(mem), YMM[reg]),
        }
    }
    /// Loads half `h` of C's row into an accumulator (masked lanes read
    /// nothing and are zero).
    fn load_c(&mut self, reg: usize, mem: AsmMemoryOperand, h: usize) -> Result<(), IcedError> {
        if self.l.masked(h) {
            return self.a.vmovups(ZMM[reg].k1().z(), zmmword_ptr(mem));
        }
        self.vmovups_load(reg, mem)
    }
    /// Stores an accumulator as half `h` of C's row (masked lanes untouched).
    fn store_c(&mut self, mem: AsmMemoryOperand, reg: usize, h: usize) -> Result<(), IcedError> {
        if self.l.masked(h) {
            return self.a.vmovups(zmmword_ptr(mem).k1(), ZMM[reg]);
        }
        self.vmovups_store(mem, reg)
    }
    /// `reg += mem` for half `h` (masked lanes read nothing: memory past
    /// the last column is never touched).
    fn add_half(&mut self, reg: usize, mem: AsmMemoryOperand, h: usize) -> Result<(), IcedError> {
        if self.l.masked(h) {
            return self.a.vaddps(ZMM[reg].k1(), ZMM[reg], zmmword_ptr(mem));
        }
        self.add_mem(reg, mem)
    }
    fn zero(&mut self, reg: usize) -> Result<(), IcedError> {
        match self.l.isa {
            // vxorps zmm needs AVX512DQ; vpxord is AVX512F.
            Isa::Avx512 => self.a.vpxord(ZMM[reg], ZMM[reg], ZMM[reg]),
            _ => self.a.vxorps(YMM[reg], YMM[reg], YMM[reg]),
        }
    }
    fn add_mem(&mut self, reg: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
        match self.l.isa {
            Isa::Avx512 => self.a.vaddps(ZMM[reg], ZMM[reg], zmmword_ptr(mem)),
            _ => self.a.vaddps(YMM[reg], YMM[reg], ymmword_ptr(mem)),
        }
    }
    /// `reg = max(zero, reg)`: maxps returns its second source when either
    /// is NaN (NaN passes through, as in the baseline's relu).
    fn relu(&mut self, reg: usize, zero: usize) -> Result<(), IcedError> {
        match self.l.isa {
            Isa::Avx512 => self.a.vmaxps(ZMM[reg], ZMM[zero], ZMM[reg]),
            _ => self.a.vmaxps(YMM[reg], YMM[zero], YMM[reg]),
        }
    }
    /// `reg = min(cap, reg)`: minps also returns its second source for a
    /// NaN, so NaN passes through as in the baseline's relu6.
    fn cap(&mut self, reg: usize, cap: usize) -> Result<(), IcedError> {
        match self.l.isa {
            Isa::Avx512 => self.a.vminps(ZMM[reg], ZMM[cap], ZMM[reg]),
            _ => self.a.vminps(YMM[reg], YMM[cap], YMM[reg]),
        }
    }
    /// `6.0` in every lane of the broadcast register (free after the K
    /// loop), which it returns.
    fn load_cap6(&mut self) -> Result<usize, IcedError> {
        let reg = self.l.broadcast();
        self.a.mov(r11d, CAP6.to_bits())?;
        match self.l.isa {
            Isa::Avx512 => self.a.vpbroadcastd(ZMM[reg], r11d)?,
            _ => {
                // The top ymm register is ymm15.
                debug_assert_eq!(reg, 15);
                self.a.vmovd(xmm15, r11d)?;
                self.a.vpbroadcastd(YMM[reg], xmm15)?;
            }
        }
        Ok(reg)
    }

    /// Jumps to `skip` unless both `flag` and `FLAG_EPILOGUE` are set.
    fn unless_flag(&mut self, flag: usize, skip: CodeLabel) -> Result<(), IcedError> {
        let mask = (flag | FLAG_EPILOGUE) as i32;
        self.a.mov(r11, r9)?;
        self.a.and(r11, mask)?;
        self.a.cmp(r11, mask)?;
        self.a.jne(skip)
    }

    /// The address of panel `v`'s half `h` at the current k: panels are
    /// `b_panel_stride` (rax) bytes apart; r10 holds 3 * rax.
    fn b_operand(&self, v: usize, h: usize) -> AsmMemoryOperand {
        let disp = h as i32 * self.l.vec_bytes();
        match v {
            0 => rsi + disp,
            1 => rsi + rax + disp,
            2 => rsi + rax * 2 + disp,
            _ => rsi + r10 + disp,
        }
    }

    /// The stack argument at `[rsp + offset]` on entry, past the registers
    /// pushed since.
    fn stack_arg(&self, offset: i32) -> i32 {
        let pushed = if self.l.a_in_place {
            IN_PLACE_SAVED.len()
        } else {
            0
        };
        offset + 8 * pushed as i32
    }

    /// Row `i`'s A element at the current k: packed, `rdi + 4 i`; in
    /// place, rows 4g..4g + 4 from base g (rdi, r12, r13; each 4 rows
    /// apart) plus 0, 1, 2 or 3 (rbx) row strides (r10).
    fn a_operand(&self, i: usize) -> AsmMemoryOperand {
        if !self.l.a_in_place {
            return rdi + (i as i32 * 4);
        }
        let base = [rdi, r12, r13][i / 4];
        match i % 4 {
            0 => base + 0,
            1 => base + r10,
            2 => base + r10 * 2,
            _ => base + rbx,
        }
    }

    fn body(&mut self) -> Result<(), IcedError> {
        let l = self.l;
        if l.a_in_place {
            for reg in IN_PLACE_SAVED {
                self.a.push(reg)?;
            }
            self.a.mov(r10, r9)?;
            self.a.shr(r10, LDA_SHIFT as u32)?;
            self.a.lea(rbx, qword_ptr(r10 + r10 * 2))?;
            self.a.lea(r12, qword_ptr(rdi + r10 * 4))?;
            self.a.lea(r13, qword_ptr(r12 + r10 * 4))?;
        }
        let (rows, panels) = (l.rows, l.panels);
        let vb = l.vec_bytes();
        let pb = l.panel_bytes();
        let mut load_c = self.a.create_label();
        let mut loop_head = self.a.create_label();
        let mut k_loop = self.a.create_label();
        let mut after = self.a.create_label();
        let mut no_bias = self.a.create_label();
        let mut no_relu = self.a.create_label();
        let mut no_cap = self.a.create_label();
        let mut no_residual = self.a.create_label();

        let halves = l.halves;
        self.a.mov(rax, qword_ptr(rsp + self.stack_arg(24)))?;
        if l.edge {
            self.a.mov(r11, r9)?;
            self.a.shr(r11, EDGE_MASK_SHIFT as u32)?;
            self.a.kmovw(k1, r11d)?;
        }
        if panels > 3 {
            self.a.lea(r10, qword_ptr(rax + rax * 2))?;
        }
        self.a.test(r9, FLAG_ACCUMULATE as i32)?;
        self.a.jnz(load_c)?;
        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.zero(l.acc(i, v, h))?;
                }
            }
        }
        self.a.jmp(loop_head)?;

        // Later K blocks continue each output's chain from C.
        self.a.set_label(&mut load_c)?;
        self.a.mov(r11, rdx)?;
        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.load_c(l.acc(i, v, h), r11 + (v as i32 * pb + h as i32 * vb), h)?;
                }
            }
            if i + 1 < rows {
                self.a.add(r11, r8)?;
            }
        }

        self.a.set_label(&mut loop_head)?;
        self.a.mov(r11, qword_ptr(rsp + self.stack_arg(32)))?;
        self.a.test(rcx, rcx)?;
        self.a.jz(after)?;
        self.a.set_label(&mut k_loop)?;
        self.a.prefetcht1(byte_ptr(r11))?;
        for v in 0..panels {
            for h in 0..halves {
                let mem = self.b_operand(v, h);
                self.vmovups_load(l.b(v, h), mem)?;
            }
        }
        // One broadcast load per row feeding register FMAs: an embedded
        // `{1to16}` broadcast per FMA would load each A value once per
        // vector, and on cores with two 512-bit FMA pipes (Intel server)
        // the loads, not the FMAs, then set the pace.
        let bc = l.broadcast();
        for i in 0..rows {
            let a_elem = self.a_operand(i);
            match l.isa {
                Isa::Avx512 => {
                    self.a.vbroadcastss(ZMM[bc], dword_ptr(a_elem))?;
                    for v in 0..panels {
                        for h in 0..halves {
                            self.a
                                .vfmadd231ps(ZMM[l.acc(i, v, h)], ZMM[l.b(v, h)], ZMM[bc])?;
                        }
                    }
                }
                _ => {
                    self.a.vbroadcastss(YMM[bc], dword_ptr(a_elem))?;
                    for v in 0..panels {
                        for h in 0..halves {
                            self.a
                                .vfmadd231ps(YMM[l.acc(i, v, h)], YMM[l.b(v, h)], YMM[bc])?;
                        }
                    }
                }
            }
        }
        if l.a_in_place {
            for base in [rdi, r12, r13].into_iter().take(rows.div_ceil(4)) {
                self.a.add(base, 4)?;
            }
        } else {
            self.a.add(rdi, (rows * 4) as i32)?;
        }
        self.a.add(rsi, pb)?;
        self.a.add(r11, 64)?;
        self.a.dec(rcx)?;
        self.a.jnz(k_loop)?;
        self.a.set_label(&mut after)?;

        // Epilogue, in the baseline's order: bias, relu, cap, residual.
        self.unless_flag(FLAG_BIAS, no_bias)?;
        self.a.mov(r11, qword_ptr(rsp + self.stack_arg(8)))?;
        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.add_half(l.acc(i, v, h), r11 + (v as i32 * pb + h as i32 * vb), h)?;
                }
            }
        }
        self.a.set_label(&mut no_bias)?;

        self.unless_flag(FLAG_RELU, no_relu)?;
        // The B registers are free once the K loop is done.
        let zero = l.b(0, 0);
        self.zero(zero)?;
        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.relu(l.acc(i, v, h), zero)?;
                }
            }
        }
        self.a.set_label(&mut no_relu)?;

        self.unless_flag(FLAG_CAP6, no_cap)?;
        let cap = self.load_cap6()?;
        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.cap(l.acc(i, v, h), cap)?;
                }
            }
        }
        self.a.set_label(&mut no_cap)?;

        self.unless_flag(FLAG_RESIDUAL, no_residual)?;
        self.a.mov(r11, qword_ptr(rsp + self.stack_arg(16)))?;
        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.add_half(l.acc(i, v, h), r11 + (v as i32 * pb + h as i32 * vb), h)?;
                }
            }
            if i + 1 < rows {
                self.a.add(r11, r8)?;
            }
        }
        self.a.set_label(&mut no_residual)?;

        for i in 0..rows {
            for v in 0..panels {
                for h in 0..halves {
                    self.store_c(rdx + (v as i32 * pb + h as i32 * vb), l.acc(i, v, h), h)?;
                }
            }
            if i + 1 < rows {
                self.a.add(rdx, r8)?;
            }
        }
        if l.a_in_place {
            for reg in IN_PLACE_SAVED.into_iter().rev() {
                self.a.pop(reg)?;
            }
        }
        self.a.vzeroupper()?;
        self.a.ret()
    }
}

/// The machine code of one micro-kernel (position-independent, no
/// relocations) and its instruction listing.
pub(crate) fn assemble(isa: Isa, rows: usize, panels: usize) -> Result<Assembled, CodegenError> {
    assemble_layout(Layout {
        isa,
        rows,
        panels,
        halves: 2,
        edge: false,
        a_in_place: false,
    })
}

/// The AVX-512 kernel of `rows` rows x one panel that reads A in place
/// (row `i` at `a + i * lda`, `lda` bytes in the flags from `LDA_SHIFT`)
/// rather than packed: for a GEMM with few panels of B (a 1x1 convolution
/// projecting to a few channels), packing A costs about as much as the
/// multiply-adds that use it. `edge`: `Some(halves)` for the N-edge
/// kernel of that many vectors (see [`assemble_edge`]). Same FMA chains,
/// so the same bits, as the packed kernels.
pub(crate) fn assemble_a_in_place(
    rows: usize,
    edge: Option<usize>,
) -> Result<Assembled, CodegenError> {
    if edge.is_some_and(|h| !(1..=2).contains(&h)) {
        return Err(CodegenError::Unsupported(format!(
            "an N-edge kernel of {edge:?} vectors per row"
        )));
    }
    assemble_layout(Layout {
        isa: Isa::Avx512,
        rows,
        panels: 1,
        halves: edge.unwrap_or(2),
        edge: edge.is_some(),
        a_in_place: true,
    })
}

/// The AVX-512 N-edge micro-kernel of `rows` rows computing the first
/// `halves` (1 or 2) vectors of one panel, the last under the column mask
/// the flags carry (`EDGE_MASK_SHIFT`): a panel with fewer valid columns
/// than its width is computed and stored in place, with no tile copy and,
/// for at most 16 columns, half the multiply-adds.
pub(crate) fn assemble_edge(rows: usize, halves: usize) -> Result<Assembled, CodegenError> {
    if !(1..=2).contains(&halves) {
        return Err(CodegenError::Unsupported(format!(
            "an N-edge kernel of {halves} vectors per row"
        )));
    }
    assemble_layout(Layout {
        isa: Isa::Avx512,
        rows,
        panels: 1,
        halves,
        edge: true,
        a_in_place: false,
    })
}

fn assemble_layout(l: Layout) -> Result<Assembled, CodegenError> {
    let Layout {
        isa, rows, panels, ..
    } = l;
    if isa == Isa::Baseline || rows == 0 || panels == 0 || panels > 4 || !l.fits() {
        return Err(CodegenError::Unsupported(format!(
            "a {isa} micro-kernel of {rows} rows x {panels} panels"
        )));
    }
    let mut asm = Asm {
        a: CodeAssembler::new(64).map_err(asm_err)?,
        l,
    };
    asm.body().map_err(asm_err)?;
    let bytes = asm.a.assemble(0).map_err(asm_err)?;
    Ok(Assembled {
        code_len: bytes.len(),
        bytes,
    })
}

/// The transcendental epilogue at full width: the tile pass of
/// `microkernel::emit_tile_pass` (same signature, `(c, residual, ldc,
/// rows, vecs, flags)` with `vecs` counted in f32x4 units, System V), for
/// a tile the micro-kernel has just stored (so it is in L1):
/// `c = act(c) (+ residual if flags & FLAG_RESIDUAL)`. The driver only
/// passes tiles a whole number of vectors wide (full panels, or the
/// panel-wide tile copy at the N edge).
pub(crate) fn assemble_tile_pass(
    isa: Isa,
    activation: Activation,
) -> Result<Assembled, CodegenError> {
    let f = match activation {
        Activation::Sigmoid => WideActivation::Sigmoid,
        Activation::Tanh => WideActivation::Tanh,
        Activation::Gelu => WideActivation::Gelu,
        Activation::GeluTanh => WideActivation::GeluTanh,
        Activation::HardSigmoid => WideActivation::HardSigmoid,
        Activation::HardSwish => WideActivation::HardSwish,
        Activation::Relu | Activation::Relu6 => {
            return Err(CodegenError::Unsupported(format!(
                "{} as a tile pass (it runs inside the micro-kernel)",
                activation.name()
            )))
        }
    };
    VecAsm::assemble(isa, |v| {
        let vb = v.vec_bytes();
        // Registers of one vector's evaluation: the value and its scratch.
        let scratch = Scratch {
            temps: [1, 2, 3, 4, 5, 6, 7, 8],
            mask_vector: 9,
        };
        // AVX-512 evaluates two vectors interleaved (registers 0-9 and
        // 16-25, masks k1 and k2): each is a ~60-instruction dependency
        // chain, and interleaving gives the scheduler independent work.
        // Rows are a whole number of panels, i.e. of 2 vectors.
        let (groups, stride) = match isa {
            Isa::Avx512 => (2, 16),
            _ => (1, 0),
        };
        v.set_groups(groups, stride);
        let step = vb * groups as i32;
        let mut row = v.a.create_label();
        let mut col = v.a.create_label();
        let mut store = v.a.create_label();
        let mut done = v.a.create_label();
        // rdi c, rsi residual, rdx ldc (bytes), rcx rows, r8 vecs, r9 flags.
        v.a.test(rcx, rcx)?;
        v.a.jz(done)?;
        v.a.mov(r10, r8)?;
        v.a.shl(r10, 4)?;
        v.a.set_label(&mut row)?;
        v.a.xor(r11d, r11d)?;
        v.a.set_label(&mut col)?;
        for g in 0..groups {
            v.load(g * stride, rdi + r11 + g as i32 * vb)?;
        }
        v.activation(f, 0, &scratch)?;
        v.a.test(r9, FLAG_RESIDUAL as i32)?;
        v.a.jz(store)?;
        for g in 0..groups {
            v.add_mem(g * stride, rsi + r11 + g as i32 * vb)?;
        }
        v.a.set_label(&mut store)?;
        for g in 0..groups {
            v.store(rdi + r11 + g as i32 * vb, g * stride)?;
        }
        v.a.add(r11, step)?;
        v.a.cmp(r11, r10)?;
        v.a.jb(col)?;
        v.a.add(rdi, rdx)?;
        v.a.add(rsi, rdx)?;
        v.a.dec(rcx)?;
        v.a.jnz(row)?;
        v.a.set_label(&mut done)?;
        v.a.vzeroupper()?;
        v.a.ret()
    })
}

/// The packing transpose (AVX-512): `(src, src_ld_bytes, dst,
/// dst_stride_bytes, blocks)`, System V. For `rows` rows of `src` (`rows`
/// <= 16, rows `src_ld_bytes` apart) and `16 * blocks` columns, writes
/// `dst[t][i] = src[i][t]`: output row `t` (the `rows` values of column
/// `t`) at `dst + t * dst_stride_bytes`, under a mask when `rows < 16`.
/// Sixteen columns at a time: `rows` loads, a 16 x 16 register transpose
/// (unpack ps, unpack pd, two 128-bit lane shuffles: 64 shuffles for 256
/// values), 16 stores. It packs A panels (`[kc][12]` from row-major A)
/// and B panels from a transposed source (`[kc][32]` from `k^T`), several
/// times faster than the element-by-element Rust loops, which also
/// remain for the tails.
pub(crate) fn assemble_transpose(rows: usize) -> Result<Assembled, CodegenError> {
    if !(1..=16).contains(&rows) {
        return Err(CodegenError::Unsupported(format!(
            "a packing transpose of {rows} rows"
        )));
    }
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    (|| -> Result<(), IcedError> {
        let mut block = a.create_label();
        let mut done = a.create_label();
        // rdi src, rsi src_ld, rdx dst, rcx dst_stride, r8 blocks.
        a.test(r8, r8)?;
        a.jz(done)?;
        if rows < 16 {
            a.mov(eax, (1u32 << rows) - 1)?;
            a.kmovw(k1, eax)?;
        }
        a.set_label(&mut block)?;
        // Rows in zmm0-15 (missing rows zero), stage results alternate
        // between zmm16-31 and zmm0-15.
        a.mov(r10, rdi)?;
        for i in 0..16 {
            if i < rows {
                a.vmovups(ZMM[i], zmmword_ptr(r10))?;
                if i + 1 < rows {
                    a.add(r10, rsi)?;
                }
            } else {
                a.vpxord(ZMM[i], ZMM[i], ZMM[i])?;
            }
        }
        for i in 0..8 {
            let (x, y) = (ZMM[2 * i], ZMM[2 * i + 1]);
            a.vunpcklps(ZMM[16 + 2 * i], x, y)?;
            a.vunpckhps(ZMM[16 + 2 * i + 1], x, y)?;
        }
        for i in 0..4 {
            let t = |j: usize| ZMM[16 + 4 * i + j];
            a.vunpcklpd(ZMM[4 * i], t(0), t(2))?;
            a.vunpckhpd(ZMM[4 * i + 1], t(0), t(2))?;
            a.vunpcklpd(ZMM[4 * i + 2], t(1), t(3))?;
            a.vunpckhpd(ZMM[4 * i + 3], t(1), t(3))?;
        }
        for i in 0..2 {
            for j in 0..4 {
                let (x, y) = (ZMM[8 * i + j], ZMM[8 * i + j + 4]);
                a.vshuff32x4(ZMM[16 + 8 * i + j], x, y, 0x88)?;
                a.vshuff32x4(ZMM[16 + 8 * i + j + 4], x, y, 0xdd)?;
            }
        }
        for j in 0..8 {
            let (x, y) = (ZMM[16 + j], ZMM[16 + j + 8]);
            a.vshuff32x4(ZMM[j], x, y, 0x88)?;
            a.vshuff32x4(ZMM[j + 8], x, y, 0xdd)?;
        }
        // zmm t is now column t.
        a.mov(r11, rdx)?;
        for t in 0..16 {
            if rows < 16 {
                a.vmovups(zmmword_ptr(r11).k1(), ZMM[t])?;
            } else {
                a.vmovups(zmmword_ptr(r11), ZMM[t])?;
            }
            a.add(r11, rcx)?;
        }
        a.mov(rdx, r11)?;
        a.add(rdi, 64)?;
        a.dec(r8)?;
        a.jnz(block)?;
        a.set_label(&mut done)?;
        a.vzeroupper()?;
        a.ret()
    })()
    .map_err(asm_err)?;
    let bytes = a.assemble(0).map_err(asm_err)?;
    Ok(Assembled {
        code_len: bytes.len(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_driver_shape_fits_and_assembles() {
        for isa in [Isa::Avx512, Isa::Avx2] {
            for rows in 1..=rows_per_kernel(isa) {
                for panels in [1, wide_panels(isa, rows)] {
                    let l = Layout {
                        isa,
                        rows,
                        panels,
                        halves: 2,
                        edge: false,
                        a_in_place: false,
                    };
                    assert!(l.fits(), "{isa} {rows}x{panels}");
                    let code = assemble(isa, rows, panels).unwrap().bytes;
                    // Ends with vzeroupper; ret.
                    assert_eq!(&code[code.len() - 4..], &[0xc5, 0xf8, 0x77, 0xc3]);
                }
            }
        }
        for rows in 1..=rows_per_kernel(Isa::Avx512) {
            for halves in [1, 2] {
                let code = assemble_edge(rows, halves).unwrap().bytes;
                assert_eq!(&code[code.len() - 4..], &[0xc5, 0xf8, 0x77, 0xc3]);
            }
        }
        for rows in 1..=12 {
            for edge in [None, Some(1), Some(2)] {
                let code = assemble_a_in_place(rows, edge).unwrap().bytes;
                assert_eq!(&code[code.len() - 4..], &[0xc5, 0xf8, 0x77, 0xc3]);
            }
        }
        assert!(assemble_a_in_place(13, None).is_err());
        assert!(assemble_edge(1, 3).is_err());
        assert!(assemble(Isa::Avx2, 6, 2).is_err());
        assert!(assemble(Isa::Baseline, 1, 1).is_err());
    }
}
