//! The wide tiers' softmax row kernel: machine code on zmm (AVX-512F) or
//! ymm (AVX2) registers assembled with iced-x86, with the signature and
//! contract of the Cranelift row kernels (`rows.rs`): `(x, out, rows, len,
//! gain, bias)`, System V, rows `len` f32 apart, `gain`/`bias` unused.
//!
//! Per row, as the baseline: m = max(x) (a NaN later in the row does not
//! win the maximum, but reaches every output through the sum); `out = e^(x -
//! m)` with s = sum(out); `out *= 1 / s`. The exponential is `wide_math`'s
//! (the baseline's operation sequence), two vectors interleaved; sums run
//! in two vector accumulators, so the rounding of s differs from the
//! baseline's in the last bits (within tolerance of the interpreter, and
//! the same for every split of rows over threads).
//!
//! The row's last `len % lanes` elements run under a mask (an opmask
//! register on AVX-512, `vmaskmovps` on AVX2), so no lane outside the row
//! is read or written.

use iced_x86::code_asm::*;

use super::target::Isa;
use super::wide_math::{Assembled, Src, VecAsm, YMM, ZMM};
use super::CodegenError;

/// Register plan (indices into the vector register file).
const M: usize = 0;
const ACC0: usize = 1;
const ACC1: usize = 2;
/// Group 0's value and exp temporaries; group 1 is `GROUP_STRIDE` above.
const X: usize = 4;
const TEMPS: [usize; 3] = [5, 6, 7];
const GROUP_STRIDE: usize = 4;
/// AVX2's tail mask (lanes below `len % 8` all-ones).
const TAIL_MASK: usize = 12;
const SCRATCH: usize = 13;

pub(crate) fn assemble_softmax(isa: Isa) -> Result<Assembled, CodegenError> {
    VecAsm::assemble(isa, |v| {
        let vb = v.vec_bytes();
        let lanes = v.lanes() as i32;
        let avx512 = isa == Isa::Avx512;
        let neg_inf = f32::NEG_INFINITY.to_bits();
        let mut done = v.a.create_label();
        // rdi x, rsi out, rdx rows, rcx len.
        v.a.test(rdx, rdx)?;
        v.a.jz(done)?;
        // r9 = row bytes, r10 = bytes of whole vectors, r11 = tail lanes.
        v.a.lea(r9, qword_ptr(rcx * 4))?;
        v.a.mov(r11, rcx)?;
        v.a.and(r11, lanes - 1)?;
        v.a.mov(r10, rcx)?;
        v.a.sub(r10, r11)?;
        v.a.shl(r10, 2)?;
        if avx512 {
            // k2 = (1 << tail) - 1
            v.a.mov(ecx, r11d)?;
            v.a.mov(eax, 1)?;
            v.a.shl(eax, cl)?;
            v.a.dec(eax)?;
            v.a.kmovw(k2, eax)?;
        } else {
            let iota: Vec<u32> = (0..8).collect();
            let iota = v.lanes_constant(&iota);
            v.a.vmovd(xmm12, r11d)?;
            v.a.vpbroadcastd(YMM[TAIL_MASK], xmm12)?;
            v.a.vpcmpgtd(YMM[TAIL_MASK], YMM[TAIL_MASK], iota)?;
        }

        let mut row = v.a.create_label();
        v.a.set_label(&mut row)?;

        // ---- m = max over the row ----------------------------------------
        let mut max_pair = v.a.create_label();
        let mut max_single = v.a.create_label();
        let mut max_tail = v.a.create_label();
        let mut max_done = v.a.create_label();
        v.set_groups(1, 0);
        v.set(ACC0, Src::Bits(neg_inf))?;
        v.set(ACC1, Src::R(ACC0))?;
        v.a.xor(eax, eax)?;
        v.a.set_label(&mut max_pair)?;
        v.a.lea(r8, qword_ptr(rax + 2 * vb))?;
        v.a.cmp(r8, r10)?;
        v.a.ja(max_single)?;
        max_mem(v, ACC0, rdi + rax)?;
        max_mem(v, ACC1, rdi + rax + vb)?;
        v.a.mov(rax, r8)?;
        v.a.jmp(max_pair)?;
        v.a.set_label(&mut max_single)?;
        v.a.cmp(rax, r10)?;
        v.a.jae(max_tail)?;
        max_mem(v, ACC0, rdi + rax)?;
        v.a.add(rax, vb)?;
        v.a.set_label(&mut max_tail)?;
        v.a.test(r11, r11)?;
        v.a.jz(max_done)?;
        // Lanes past the row stay -inf.
        v.set(SCRATCH, Src::Bits(neg_inf))?;
        load_tail(v, SCRATCH, rdi + rax, false)?;
        max_reg(v, ACC1, SCRATCH)?;
        v.a.set_label(&mut max_done)?;
        max_reg(v, ACC0, ACC1)?;
        horizontal(v, Horizontal::Max)?;

        // ---- out = e^(x - m), s = sum(out) --------------------------------
        let mut sum_pair = v.a.create_label();
        let mut sum_single = v.a.create_label();
        let mut sum_tail = v.a.create_label();
        let mut sum_done = v.a.create_label();
        zero(v, ACC0)?;
        zero(v, ACC1)?;
        v.a.xor(eax, eax)?;
        v.a.set_label(&mut sum_pair)?;
        v.a.lea(r8, qword_ptr(rax + 2 * vb))?;
        v.a.cmp(r8, r10)?;
        v.a.ja(sum_single)?;
        v.load(X, rdi + rax)?;
        v.load(X + GROUP_STRIDE, rdi + rax + vb)?;
        v.set_groups(2, GROUP_STRIDE);
        v.sub(X, X, Src::Fixed(M))?;
        v.exp(X, TEMPS)?;
        v.set_groups(1, 0);
        v.store(rsi + rax, X)?;
        v.store(rsi + rax + vb, X + GROUP_STRIDE)?;
        v.add(ACC0, ACC0, Src::R(X))?;
        v.add(ACC1, ACC1, Src::R(X + GROUP_STRIDE))?;
        v.a.mov(rax, r8)?;
        v.a.jmp(sum_pair)?;
        v.a.set_label(&mut sum_single)?;
        v.a.cmp(rax, r10)?;
        v.a.jae(sum_tail)?;
        v.load(X, rdi + rax)?;
        v.sub(X, X, Src::R(M))?;
        v.exp(X, TEMPS)?;
        v.store(rsi + rax, X)?;
        v.add(ACC0, ACC0, Src::R(X))?;
        v.a.add(rax, vb)?;
        v.a.set_label(&mut sum_tail)?;
        v.a.test(r11, r11)?;
        v.a.jz(sum_done)?;
        load_tail(v, X, rdi + rax, true)?;
        v.sub(X, X, Src::R(M))?;
        v.exp(X, TEMPS)?;
        store_tail(v, rsi + rax, X)?;
        // Only the row's lanes join the sum.
        if avx512 {
            v.a.vaddps(ZMM[ACC1].k2(), ZMM[ACC1], ZMM[X])?;
        } else {
            v.a.vandps(YMM[X], YMM[X], YMM[TAIL_MASK])?;
            v.add(ACC1, ACC1, Src::R(X))?;
        }
        v.a.set_label(&mut sum_done)?;
        v.add(ACC0, ACC0, Src::R(ACC1))?;
        horizontal(v, Horizontal::Sum)?;
        // M = 1 / s in every lane.
        let one = v.constant(1.0f32.to_bits());
        v.a.vmovss(xmm13, dword_ptr(one))?;
        v.a.vdivss(xmm1, xmm13, xmm1)?;
        broadcast_lane0(v, M, ACC0)?;

        // ---- out *= 1 / s ------------------------------------------------
        let mut scale = v.a.create_label();
        let mut scale_tail = v.a.create_label();
        let mut next_row = v.a.create_label();
        v.a.xor(eax, eax)?;
        v.a.set_label(&mut scale)?;
        v.a.cmp(rax, r10)?;
        v.a.jae(scale_tail)?;
        v.load(X, rsi + rax)?;
        v.mul(X, X, Src::R(M))?;
        v.store(rsi + rax, X)?;
        v.a.add(rax, vb)?;
        v.a.jmp(scale)?;
        v.a.set_label(&mut scale_tail)?;
        v.a.test(r11, r11)?;
        v.a.jz(next_row)?;
        load_tail(v, X, rsi + rax, true)?;
        v.mul(X, X, Src::R(M))?;
        store_tail(v, rsi + rax, X)?;
        v.a.set_label(&mut next_row)?;
        v.a.add(rdi, r9)?;
        v.a.add(rsi, r9)?;
        v.a.dec(rdx)?;
        v.a.jnz(row)?;

        v.a.set_label(&mut done)?;
        v.a.vzeroupper()?;
        v.a.ret()
    })
}

/// `acc = max(acc, mem)`: `maxps(acc, x)` keeps `x` when it is NaN, so a
/// NaN joins the maximum here; the result is NaN everywhere either way.
fn max_mem(v: &mut VecAsm, acc: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
    match v.isa {
        Isa::Avx512 => v.a.vmaxps(ZMM[acc], ZMM[acc], zmmword_ptr(mem)),
        _ => v.a.vmaxps(YMM[acc], YMM[acc], ymmword_ptr(mem)),
    }
}

fn max_reg(v: &mut VecAsm, acc: usize, x: usize) -> Result<(), IcedError> {
    match v.isa {
        Isa::Avx512 => v.a.vmaxps(ZMM[acc], ZMM[acc], ZMM[x]),
        _ => v.a.vmaxps(YMM[acc], YMM[acc], YMM[x]),
    }
}

fn zero(v: &mut VecAsm, r: usize) -> Result<(), IcedError> {
    match v.isa {
        Isa::Avx512 => v.a.vpxord(ZMM[r], ZMM[r], ZMM[r]),
        _ => v.a.vxorps(YMM[r], YMM[r], YMM[r]),
    }
}

/// Loads the row's tail lanes into `r`: the other lanes keep `r`'s value
/// (`zeroing`: become 0 on AVX-512; AVX2's masked load always zeroes, and
/// for the max it is blended back to -inf).
fn load_tail(
    v: &mut VecAsm,
    r: usize,
    mem: AsmMemoryOperand,
    zeroing: bool,
) -> Result<(), IcedError> {
    match v.isa {
        Isa::Avx512 => {
            if zeroing {
                v.a.vmovups(ZMM[r].k2().z(), zmmword_ptr(mem))
            } else {
                v.a.vmovups(ZMM[r].k2(), zmmword_ptr(mem))
            }
        }
        _ => {
            v.a.vmaskmovps(YMM[SCRATCH + 1], YMM[TAIL_MASK], ymmword_ptr(mem))?;
            if zeroing {
                v.a.vmovaps(YMM[r], YMM[SCRATCH + 1])
            } else {
                v.a.vblendvps(YMM[r], YMM[r], YMM[SCRATCH + 1], YMM[TAIL_MASK])
            }
        }
    }
}

fn store_tail(v: &mut VecAsm, mem: AsmMemoryOperand, r: usize) -> Result<(), IcedError> {
    match v.isa {
        Isa::Avx512 => v.a.vmovups(zmmword_ptr(mem).k2(), ZMM[r]),
        _ => v.a.vmaskmovps(ymmword_ptr(mem), YMM[TAIL_MASK], YMM[r]),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Horizontal {
    Max,
    Sum,
}

/// Reduces ACC0's lanes into lane 0 of xmm1 (ACC0's low part); for `Max`
/// also broadcasts the result into `M`.
fn horizontal(v: &mut VecAsm, op: Horizontal) -> Result<(), IcedError> {
    let combine = |v: &mut VecAsm, a: AsmRegisterXmm, b: AsmRegisterXmm| match op {
        Horizontal::Max => v.a.vmaxps(a, a, b),
        Horizontal::Sum => v.a.vaddps(a, a, b),
    };
    if v.isa == Isa::Avx512 {
        v.a.vextractf64x4(ymm13, zmm1, 1)?;
        match op {
            Horizontal::Max => v.a.vmaxps(ymm1, ymm1, ymm13)?,
            Horizontal::Sum => v.a.vaddps(ymm1, ymm1, ymm13)?,
        }
    }
    v.a.vextractf128(xmm13, ymm1, 1)?;
    combine(v, xmm1, xmm13)?;
    v.a.vmovhlps(xmm13, xmm13, xmm1)?;
    combine(v, xmm1, xmm13)?;
    v.a.vmovshdup(xmm13, xmm1)?;
    combine(v, xmm1, xmm13)?;
    if op == Horizontal::Max {
        broadcast_lane0(v, M, ACC0)?;
    }
    Ok(())
}

fn broadcast_lane0(v: &mut VecAsm, d: usize, from: usize) -> Result<(), IcedError> {
    debug_assert_eq!(from, ACC0, "lane 0 of xmm1");
    match v.isa {
        Isa::Avx512 => v.a.vbroadcastss(ZMM[d], xmm1),
        _ => v.a.vbroadcastss(YMM[d], xmm1),
    }
}
