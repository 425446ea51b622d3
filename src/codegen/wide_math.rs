//! Full-width vector math for the wide tiers: the activation functions of
//! `simd.rs` (exp, sigmoid, tanh, erf-GELU, tanh-GELU) as x86-64 machine
//! code on zmm (AVX-512F) or ymm (AVX2 + FMA) registers, assembled with
//! iced-x86.
//!
//! Each function here is the same sequence of IEEE operations as its
//! f32x4 twin in `simd.rs` (same constants, same fused multiply-adds, same
//! selects), so the wide tiers compute bit-identical activations to the
//! baseline on an FMA machine; only the vector width differs.
//!
//! Constants live in a table appended after the code (one full vector per
//! distinct value, 64-byte aligned) and are read as RIP-relative memory
//! operands, so the code stays position-independent and needs no
//! relocation or register for them.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use super::simd::{
    ERFC_Q, ERFC_Q_CENTER, ERFC_T_SCALE, EXP_POLY, LN2_HI, LN2_LO, LOG2E, ROUND_MAGIC,
    ROUND_MAGIC_BITS, SQRT_2_OVER_PI, TANH_POLY,
};
use crate::codegen::target::Isa;
use crate::codegen::CodegenError;

pub(crate) const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];
pub(crate) const YMM: [AsmRegisterYmm; 16] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14,
    ymm15,
];

const SIGN_BITS: u32 = 0x8000_0000;
const ABS_BITS: u32 = 0x7FFF_FFFF;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `vcmpps` predicate: ordered less-than (false when either is NaN), as
/// Cranelift's `fcmp lt`.
const CMP_LT_OS: i32 = 1;

pub(crate) fn asm_err(e: IcedError) -> CodegenError {
    CodegenError::Assembler(e.to_string())
}

/// A second source operand: a vector register or a constant (all lanes
/// equal to these bits) from the table.
#[derive(Clone, Copy)]
pub(crate) enum Src {
    R(usize),
    Bits(u32),
    /// A register shared by every group (not offset per group).
    Fixed(usize),
}

/// `Src::Bits` of an f32.
pub(crate) fn cf(x: f32) -> Src {
    Src::Bits(x.to_bits())
}

#[derive(Clone, Copy)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    And,
    Or,
    Xor,
    AddI32,
    SubI32,
}

/// Machine code and how much of it is instructions (the rest is the
/// constant table), for the kernel listing.
pub(crate) struct Assembled {
    pub(crate) bytes: Vec<u8>,
    pub(crate) code_len: usize,
}

/// An iced-x86 assembler for one tier's vectors plus the constant table.
pub(crate) struct VecAsm {
    pub(crate) a: CodeAssembler,
    pub(crate) isa: Isa,
    /// Each entry: the value of every lane, and its label.
    constants: Vec<(Vec<u32>, CodeLabel)>,
    /// Bytes of padding before the table (found by a first assembly).
    table_padding: usize,
    /// Math operations are emitted once per group, on registers
    /// `group_stride` apart (and opmask k1 + group): see `each`.
    groups: usize,
    group_stride: usize,
}

impl VecAsm {
    /// Assembles `body` (which must end in `ret`) followed by its constant
    /// table, 64-byte aligned relative to the start (where the JIT places
    /// the code, at a 64-byte boundary). The code before the table has the
    /// same length whatever the padding (RIP-relative operands always take a
    /// 32-bit displacement), so a first assembly finds the padding.
    pub(crate) fn assemble(
        isa: Isa,
        body: impl Fn(&mut VecAsm) -> Result<(), IcedError>,
    ) -> Result<Assembled, CodegenError> {
        if isa == Isa::Baseline {
            return Err(CodegenError::Unsupported(
                "assembled vector code for the baseline tier".to_string(),
            ));
        }
        let build = |padding: usize| -> Result<(Assembled, usize), IcedError> {
            let mut v = VecAsm {
                a: CodeAssembler::new(64)?,
                isa,
                constants: Vec::new(),
                table_padding: padding,
                groups: 1,
                group_stride: 0,
            };
            body(&mut v)?;
            if v.constants.is_empty() {
                let bytes = v.a.assemble(0)?;
                let code_len = bytes.len();
                return Ok((Assembled { bytes, code_len }, 0));
            }
            if v.table_padding > 0 {
                v.a.db(&vec![0xCC; v.table_padding])?;
            }
            let lanes = v.lanes();
            let constants = std::mem::take(&mut v.constants);
            // The first constant's label marks the table's start.
            let mut table = None;
            for (values, mut label) in constants {
                debug_assert_eq!(values.len(), lanes);
                v.a.set_label(&mut label)?;
                table.get_or_insert(label);
                v.a.dd(&values)?;
            }
            let table = table.expect("the table is not empty");
            let result =
                v.a.assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
            let table_ip = result.label_ip(&table)? as usize;
            let bytes = result.inner.code_buffer;
            Ok((
                Assembled {
                    bytes,
                    code_len: table_ip - padding,
                },
                table_ip,
            ))
        };
        let (first, table_ip) = build(0).map_err(asm_err)?;
        if first.code_len == first.bytes.len() || table_ip % 64 == 0 {
            return Ok(first);
        }
        let (second, table_ip) = build(64 - table_ip % 64).map_err(asm_err)?;
        debug_assert_eq!(table_ip % 64, 0);
        Ok(second)
    }

    /// From now on, math operations run on `groups` vectors at once, the
    /// registers of group g being those of group 0 plus `g * stride`.
    pub(crate) fn set_groups(&mut self, groups: usize, stride: usize) {
        self.groups = groups;
        self.group_stride = stride;
    }

    pub(crate) fn lanes(&self) -> usize {
        match self.isa {
            Isa::Avx512 => 16,
            _ => 8,
        }
    }

    pub(crate) fn vec_bytes(&self) -> i32 {
        self.lanes() as i32 * 4
    }

    /// The table entry holding `bits` in every lane.
    pub(crate) fn constant(&mut self, bits: u32) -> AsmMemoryOperand {
        let lanes = vec![bits; self.lanes()];
        self.lanes_constant(&lanes)
    }

    /// The table entry holding `values` (one per lane).
    pub(crate) fn lanes_constant(&mut self, values: &[u32]) -> AsmMemoryOperand {
        assert_eq!(values.len(), self.lanes(), "one value per lane");
        if let Some((_, label)) = self.constants.iter().find(|(v, _)| v == values) {
            let label = *label;
            return self.vector_ptr(label);
        }
        let label = self.a.create_label();
        self.constants.push((values.to_vec(), label));
        self.vector_ptr(label)
    }

    fn vector_ptr(&self, label: CodeLabel) -> AsmMemoryOperand {
        match self.isa {
            Isa::Avx512 => zmmword_ptr(label),
            _ => ymmword_ptr(label),
        }
    }

    fn src_mem(&mut self, s: Src) -> Option<AsmMemoryOperand> {
        match s {
            Src::R(_) | Src::Fixed(_) => None,
            Src::Bits(bits) => Some(self.constant(bits)),
        }
    }

    // ---- moves ---------------------------------------------------------------

    pub(crate) fn load(&mut self, d: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
        match self.isa {
            Isa::Avx512 => self.a.vmovups(ZMM[d], zmmword_ptr(mem)),
            _ => self.a.vmovups(YMM[d], ymmword_ptr(mem)),
        }
    }

    pub(crate) fn store(&mut self, mem: AsmMemoryOperand, s: usize) -> Result<(), IcedError> {
        match self.isa {
            Isa::Avx512 => self.a.vmovups(zmmword_ptr(mem), ZMM[s]),
            _ => self.a.vmovups(ymmword_ptr(mem), YMM[s]),
        }
    }

    /// `d += mem` (the residual).
    pub(crate) fn add_mem(&mut self, d: usize, mem: AsmMemoryOperand) -> Result<(), IcedError> {
        match self.isa {
            Isa::Avx512 => self.a.vaddps(ZMM[d], ZMM[d], zmmword_ptr(mem)),
            _ => self.a.vaddps(YMM[d], YMM[d], ymmword_ptr(mem)),
        }
    }

    fn set_one(&mut self, d: usize, s: Src) -> Result<(), IcedError> {
        match (self.isa, s) {
            (Isa::Avx512, Src::R(r)) => self.a.vmovaps(ZMM[d], ZMM[r]),
            (_, Src::R(r)) => self.a.vmovaps(YMM[d], YMM[r]),
            (_, Src::Fixed(_)) => unreachable!("grouped operations resolve shared registers"),
            (_, Src::Bits(bits)) => {
                let mem = self.constant(bits);
                match self.isa {
                    Isa::Avx512 => self.a.vmovaps(ZMM[d], mem),
                    _ => self.a.vmovaps(YMM[d], mem),
                }
            }
        }
    }

    fn load_f(&mut self, d: usize, x: f32) -> Result<(), IcedError> {
        self.set(d, cf(x))
    }

    // ---- arithmetic --------------------------------------------------------

    fn bin_one(&mut self, op: Bin, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        macro_rules! emit {
            ($z:ident, $y:ident) => {
                match (self.isa, b, self.src_mem(b)) {
                    (Isa::Avx512, Src::R(r), _) => self.a.$z(ZMM[d], ZMM[a], ZMM[r]),
                    (Isa::Avx512, _, Some(m)) => self.a.$z(ZMM[d], ZMM[a], m),
                    (_, Src::R(r), _) => self.a.$y(YMM[d], YMM[a], YMM[r]),
                    (_, _, Some(m)) => self.a.$y(YMM[d], YMM[a], m),
                    _ => unreachable!(
                        "constants have table entries, shared registers resolve per group"
                    ),
                }
            };
        }
        // Bitwise and integer ops: vpandd/vpord/vpxord are AVX-512F (the
        // vandps forms need DQ); their ymm twins are AVX/AVX2.
        match op {
            Bin::Add => emit!(vaddps, vaddps),
            Bin::Sub => emit!(vsubps, vsubps),
            Bin::Mul => emit!(vmulps, vmulps),
            Bin::Div => emit!(vdivps, vdivps),
            Bin::Max => emit!(vmaxps, vmaxps),
            Bin::Min => emit!(vminps, vminps),
            Bin::And => emit!(vpandd, vandps),
            Bin::Or => emit!(vpord, vorps),
            Bin::Xor => emit!(vpxord, vxorps),
            Bin::AddI32 => emit!(vpaddd, vpaddd),
            Bin::SubI32 => emit!(vpsubd, vpsubd),
        }
    }

    pub(crate) fn add(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.bin(Bin::Add, d, a, b)
    }
    pub(crate) fn sub(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.bin(Bin::Sub, d, a, b)
    }
    pub(crate) fn mul(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.bin(Bin::Mul, d, a, b)
    }
    fn div(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.bin(Bin::Div, d, a, b)
    }
    /// `d = a > b ? a : b`, `b` when either is NaN (x86 `maxps`).
    fn max(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.bin(Bin::Max, d, a, b)
    }
    /// `d = a < b ? a : b`, `b` when either is NaN (x86 `minps`).
    fn min(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.bin(Bin::Min, d, a, b)
    }

    /// `d = d * b + c` (one rounding).
    fn fmadd213_one(&mut self, d: usize, b: usize, c: Src) -> Result<(), IcedError> {
        match (self.isa, c, self.src_mem(c)) {
            (Isa::Avx512, Src::R(r), _) => self.a.vfmadd213ps(ZMM[d], ZMM[b], ZMM[r]),
            (Isa::Avx512, _, Some(m)) => self.a.vfmadd213ps(ZMM[d], ZMM[b], m),
            (_, Src::R(r), _) => self.a.vfmadd213ps(YMM[d], YMM[b], YMM[r]),
            (_, _, Some(m)) => self.a.vfmadd213ps(YMM[d], YMM[b], m),
            _ => unreachable!("constants have table entries, shared registers resolve per group"),
        }
    }

    /// `d = a * b + d` (one rounding).
    fn fmadd231_one(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        match (self.isa, b, self.src_mem(b)) {
            (Isa::Avx512, Src::R(r), _) => self.a.vfmadd231ps(ZMM[d], ZMM[a], ZMM[r]),
            (Isa::Avx512, _, Some(m)) => self.a.vfmadd231ps(ZMM[d], ZMM[a], m),
            (_, Src::R(r), _) => self.a.vfmadd231ps(YMM[d], YMM[a], YMM[r]),
            (_, _, Some(m)) => self.a.vfmadd231ps(YMM[d], YMM[a], m),
            _ => unreachable!("constants have table entries, shared registers resolve per group"),
        }
    }

    /// `d = d * c + b` (one rounding).
    fn fmadd132_one(&mut self, d: usize, b: usize, c: Src) -> Result<(), IcedError> {
        match (self.isa, c, self.src_mem(c)) {
            (Isa::Avx512, Src::R(r), _) => self.a.vfmadd132ps(ZMM[d], ZMM[b], ZMM[r]),
            (Isa::Avx512, _, Some(m)) => self.a.vfmadd132ps(ZMM[d], ZMM[b], m),
            (_, Src::R(r), _) => self.a.vfmadd132ps(YMM[d], YMM[b], YMM[r]),
            (_, _, Some(m)) => self.a.vfmadd132ps(YMM[d], YMM[b], m),
            _ => unreachable!("constants have table entries, shared registers resolve per group"),
        }
    }

    fn shift_right_i32_one(&mut self, d: usize, a: usize, by: i32) -> Result<(), IcedError> {
        match self.isa {
            Isa::Avx512 => self.a.vpsrad(ZMM[d], ZMM[a], by),
            _ => self.a.vpsrad(YMM[d], YMM[a], by),
        }
    }

    fn shift_left_i32_one(&mut self, d: usize, a: usize, by: i32) -> Result<(), IcedError> {
        match self.isa {
            Isa::Avx512 => self.a.vpslld(ZMM[d], ZMM[a], by),
            _ => self.a.vpslld(YMM[d], YMM[a], by),
        }
    }

    /// Horner evaluation into `d` (not `x`); coefficients from the highest
    /// power down, as `Emitter::poly`.
    fn poly(&mut self, d: usize, x: usize, coeffs: &[f32]) -> Result<(), IcedError> {
        self.load_f(d, coeffs[0])?;
        for &c in &coeffs[1..] {
            self.fmadd213(d, x, cf(c))?;
        }
        Ok(())
    }

    // ---- masks: k registers (AVX-512) or vector registers (AVX2) ------------

    /// `mask = a < b` lane-wise (ordered).
    fn less_than_one(&mut self, mask: Mask, a: usize, b: Src) -> Result<(), IcedError> {
        match (self.isa, mask, b, self.src_mem(b)) {
            (Isa::Avx512, Mask::K(k), Src::R(r), _) => {
                self.a.vcmpps(K[k], ZMM[a], ZMM[r], CMP_LT_OS)
            }
            (Isa::Avx512, Mask::K(k), _, Some(m)) => self.a.vcmpps(K[k], ZMM[a], m, CMP_LT_OS),
            (_, Mask::V(v), Src::R(r), _) => self.a.vcmpps(YMM[v], YMM[a], YMM[r], CMP_LT_OS),
            (_, Mask::V(v), _, Some(m)) => self.a.vcmpps(YMM[v], YMM[a], m, CMP_LT_OS),
            _ => unreachable!("mask kind matches the tier"),
        }
    }

    /// `d = mask ? t : f` lane-wise.
    fn select_one(&mut self, d: usize, mask: Mask, t: Src, f: usize) -> Result<(), IcedError> {
        match (self.isa, mask, t, self.src_mem(t)) {
            (Isa::Avx512, Mask::K(k), Src::R(r), _) => {
                self.a.vblendmps(with_k(ZMM[d], k), ZMM[f], ZMM[r])
            }
            (Isa::Avx512, Mask::K(k), _, Some(m)) => self.a.vblendmps(with_k(ZMM[d], k), ZMM[f], m),
            (_, Mask::V(v), Src::R(r), _) => self.a.vblendvps(YMM[d], YMM[f], YMM[r], YMM[v]),
            (_, Mask::V(v), _, Some(m)) => self.a.vblendvps(YMM[d], YMM[f], m, YMM[v]),
            _ => unreachable!("mask kind matches the tier"),
        }
    }
    // ---- grouped forms: one instruction per interleaved group ----------------

    /// Emits `f(offset, group)` once per group: the same operation on each
    /// group's registers (`offset` added to every register index), so
    /// independent vectors' long dependency chains interleave and the
    /// scheduler finds work while one chain waits.
    fn each(
        &mut self,
        mut f: impl FnMut(&mut Self, usize, usize) -> Result<(), IcedError>,
    ) -> Result<(), IcedError> {
        for g in 0..self.groups {
            f(self, g * self.group_stride, g)?;
        }
        Ok(())
    }

    pub(crate) fn set(&mut self, d: usize, s: Src) -> Result<(), IcedError> {
        self.each(|v, o, _| v.set_one(d + o, s.shifted(o)))
    }
    fn bin(&mut self, op: Bin, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.each(|v, o, _| v.bin_one(op, d + o, a + o, b.shifted(o)))
    }
    fn fmadd213(&mut self, d: usize, b: usize, c: Src) -> Result<(), IcedError> {
        self.each(|v, o, _| v.fmadd213_one(d + o, b + o, c.shifted(o)))
    }
    fn fmadd231(&mut self, d: usize, a: usize, b: Src) -> Result<(), IcedError> {
        self.each(|v, o, _| v.fmadd231_one(d + o, a + o, b.shifted(o)))
    }
    fn fmadd132(&mut self, d: usize, b: usize, c: Src) -> Result<(), IcedError> {
        self.each(|v, o, _| v.fmadd132_one(d + o, b + o, c.shifted(o)))
    }
    fn shift_right_i32(&mut self, d: usize, a: usize, by: i32) -> Result<(), IcedError> {
        self.each(|v, o, _| v.shift_right_i32_one(d + o, a + o, by))
    }
    fn shift_left_i32(&mut self, d: usize, a: usize, by: i32) -> Result<(), IcedError> {
        self.each(|v, o, _| v.shift_left_i32_one(d + o, a + o, by))
    }
    fn less_than(&mut self, mask: Mask, a: usize, b: Src) -> Result<(), IcedError> {
        self.each(|v, o, g| v.less_than_one(mask.shifted(o, g), a + o, b.shifted(o)))
    }
    fn select(&mut self, d: usize, mask: Mask, t: Src, f: usize) -> Result<(), IcedError> {
        self.each(|v, o, g| v.select_one(d + o, mask.shifted(o, g), t.shifted(o), f + o))
    }
}

impl Src {
    fn shifted(self, offset: usize) -> Src {
        match self {
            Src::R(r) => Src::R(r + offset),
            Src::Fixed(r) => Src::R(r),
            bits => bits,
        }
    }
}

impl Mask {
    fn shifted(self, offset: usize, group: usize) -> Mask {
        match self {
            Mask::K(k) => Mask::K(k + group),
            Mask::V(v) => Mask::V(v + offset),
        }
    }
}

const K: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];

fn with_k(r: AsmRegisterZmm, k: usize) -> AsmRegisterZmm {
    match k {
        1 => r.k1(),
        2 => r.k2(),
        3 => r.k3(),
        4 => r.k4(),
        5 => r.k5(),
        6 => r.k6(),
        _ => r.k7(),
    }
}

/// A lane mask: an opmask register (AVX-512) or a vector register (AVX2).
#[derive(Clone, Copy)]
enum Mask {
    K(usize),
    V(usize),
}

/// Registers an activation may use besides its argument: vector
/// temporaries and (AVX2) one more vector for the mask.
pub(crate) struct Scratch {
    pub(crate) temps: [usize; 8],
    /// The mask: k1 on AVX-512; on AVX2 this vector register.
    pub(crate) mask_vector: usize,
}

impl Scratch {
    fn mask(&self, isa: Isa) -> Mask {
        match isa {
            Isa::Avx512 => Mask::K(1),
            _ => Mask::V(self.mask_vector),
        }
    }
}

/// Which activations `activation` can emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WideActivation {
    Sigmoid,
    Tanh,
    Gelu,
    GeluTanh,
    HardSigmoid,
    HardSwish,
}

impl VecAsm {
    /// Replaces register `x` with `f(x)`.
    pub(crate) fn activation(
        &mut self,
        f: WideActivation,
        x: usize,
        s: &Scratch,
    ) -> Result<(), IcedError> {
        match f {
            WideActivation::Sigmoid => self.sigmoid(x, s),
            WideActivation::Tanh => self.tanh(x, s),
            WideActivation::Gelu => self.gelu(x, s),
            WideActivation::GeluTanh => self.gelu_tanh(x, s),
            WideActivation::HardSigmoid => self.hard_sigmoid(x, x, s),
            WideActivation::HardSwish => {
                let [gate, ..] = s.temps;
                self.hard_sigmoid(gate, x, s)?;
                self.mul(x, x, Src::R(gate))
            }
        }
    }

    /// `d = clamp_keep_nan(x + 3, 0, 6) * (1/6)`, as `elementwise::emit_unary`'s
    /// hard_sigmoid (the rounded 1/6, no FMA), so every tier rounds alike.
    fn hard_sigmoid(&mut self, d: usize, x: usize, s: &Scratch) -> Result<(), IcedError> {
        let [_, t1, t2, ..] = s.temps;
        self.add(t2, x, cf(3.0))?;
        // maxps(lo, v), then minps(hi, .): NaN passes through.
        self.load_f(t1, 0.0)?;
        self.max(t1, t1, Src::R(t2))?;
        self.load_f(t2, 6.0)?;
        self.min(t1, t2, Src::R(t1))?;
        self.mul(d, t1, cf(1.0 / 6.0))
    }

    /// e^x in place (as `Emitter::exp`), using three temporaries.
    pub(crate) fn exp(&mut self, x: usize, t: [usize; 3]) -> Result<(), IcedError> {
        let [t1, t2, t3] = t;
        // clamp_keep_nan(x, -104, 89): maxps(lo, x), then minps(hi, .).
        self.load_f(t1, -104.0)?;
        self.max(t1, t1, Src::R(x))?;
        self.load_f(t2, 89.0)?;
        self.min(x, t2, Src::R(t1))?;
        // t = x * log2e + magic; n = t - magic; n_int = bits(t) - bits(magic).
        self.load_f(t2, ROUND_MAGIC)?;
        self.set(t1, Src::R(x))?;
        self.fmadd132(t1, t2, cf(LOG2E))?;
        self.sub(t3, t1, Src::R(t2))?;
        self.bin(Bin::SubI32, t1, t1, Src::Bits(ROUND_MAGIC_BITS as u32))?;
        // r = n * -ln2_hi + x; r = n * -ln2_lo + r.
        self.fmadd231(x, t3, cf(-LN2_HI))?;
        self.fmadd231(x, t3, cf(-LN2_LO))?;
        // y = p(r) * r^2 + r + 1.
        self.poly(t2, x, &EXP_POLY)?;
        self.mul(t3, x, Src::R(x))?;
        self.fmadd213(t2, t3, Src::R(x))?;
        self.add(t2, t2, cf(1.0))?;
        // 2^n in two factors.
        self.shift_right_i32(t3, t1, 1)?;
        self.bin(Bin::SubI32, t1, t1, Src::R(t3))?;
        self.bin(Bin::AddI32, t3, t3, Src::Bits(127))?;
        self.shift_left_i32(t3, t3, 23)?;
        self.bin(Bin::AddI32, t1, t1, Src::Bits(127))?;
        self.shift_left_i32(t1, t1, 23)?;
        self.mul(t2, t2, Src::R(t3))?;
        self.mul(x, t2, Src::R(t1))
    }

    /// 1 / (1 + e^-x), as `Emitter::sigmoid`.
    fn sigmoid(&mut self, x: usize, s: &Scratch) -> Result<(), IcedError> {
        let [t1, t2, t3, t4, ..] = s.temps;
        self.bin(Bin::Xor, x, x, Src::Bits(SIGN_BITS))?;
        self.exp(x, [t1, t2, t3])?;
        self.add(x, x, cf(1.0))?;
        self.load_f(t4, 1.0)?;
        self.div(x, t4, Src::R(x))
    }

    /// As `Emitter::tanh`.
    fn tanh(&mut self, x: usize, s: &Scratch) -> Result<(), IcedError> {
        let [t1, t2, t3, a, z, small, ..] = s.temps;
        let mask = s.mask(self.isa);
        self.bin(Bin::And, a, x, Src::Bits(ABS_BITS))?;
        self.mul(z, x, Src::R(x))?;
        self.poly(small, z, &TANH_POLY)?;
        self.mul(small, small, Src::R(z))?;
        self.fmadd213(small, x, Src::R(x))?;
        // large = copysign(1 - 2 / (e^{2|x|} + 1), x)
        self.add(z, a, Src::R(a))?;
        self.exp(z, [t1, t2, t3])?;
        self.add(z, z, cf(1.0))?;
        self.load_f(t1, 2.0)?;
        self.div(z, t1, Src::R(z))?;
        self.load_f(t1, 1.0)?;
        self.sub(z, t1, Src::R(z))?;
        self.bin(Bin::And, z, z, Src::Bits(ABS_BITS))?;
        self.bin(Bin::And, t1, x, Src::Bits(SIGN_BITS))?;
        self.bin(Bin::Or, z, z, Src::R(t1))?;
        self.less_than(mask, a, cf(0.625))?;
        self.select(x, mask, Src::R(small), z)
    }

    /// erf-GELU, as `Emitter::gelu` (with its `erfc_tail` inline).
    fn gelu(&mut self, x: usize, s: &Scratch) -> Result<(), IcedError> {
        let [r1, r2, r3, r4, r5, r6, e2, e3] = s.temps;
        let mask = s.mask(self.isa);
        // xc = clamp_keep_nan(x, -14, 14)
        self.load_f(r1, -14.0)?;
        self.max(r1, r1, Src::R(x))?;
        self.load_f(r2, 14.0)?;
        self.min(r1, r2, Src::R(r1))?;
        // z = |xc| / sqrt 2; x^2 = hi + lo exactly; z^2 = (hi + lo) / 2.
        self.bin(Bin::And, r2, r1, Src::Bits(ABS_BITS))?;
        self.mul(r2, r2, cf(FRAC_1_SQRT_2))?;
        self.mul(r3, r1, Src::R(r1))?;
        self.bin(Bin::Xor, r4, r3, Src::Bits(SIGN_BITS))?;
        self.fmadd231(r4, r1, Src::R(r1))?;
        self.mul(r3, r3, cf(0.5))?;
        self.mul(r4, r4, cf(0.5))?;
        // erfc(z) = t e^{-z^2} Q(t - center), t = 1 / (1 + 0.3 z).
        self.load_f(r1, 1.0)?;
        self.set(r5, Src::R(r2))?;
        self.fmadd132(r5, r1, cf(ERFC_T_SCALE))?;
        self.div(r2, r1, Src::R(r5))?;
        self.add(r5, r2, cf(-ERFC_Q_CENTER))?;
        self.poly(r6, r5, &ERFC_Q)?;
        self.bin(Bin::Xor, r3, r3, Src::Bits(SIGN_BITS))?;
        self.exp(r3, [r5, e2, e3])?;
        self.sub(r4, r1, Src::R(r4))?;
        self.mul(r3, r3, Src::R(r4))?;
        self.mul(r2, r2, Src::R(r6))?;
        self.mul(r3, r3, Src::R(r2))?;
        // w = x < 0 ? erfc : 2 - erfc; result 0.5 x w, -0 below -14.
        self.load_f(r2, 2.0)?;
        self.sub(r2, r2, Src::R(r3))?;
        self.less_than(mask, x, cf(0.0))?;
        self.select(r2, mask, Src::R(r3), r2)?;
        self.mul(r1, x, cf(0.5))?;
        self.mul(r1, r1, Src::R(r2))?;
        self.less_than(mask, x, cf(-14.0))?;
        self.select(x, mask, cf(-0.0), r1)
    }

    /// tanh-GELU, as `Emitter::gelu_tanh`.
    fn gelu_tanh(&mut self, x: usize, s: &Scratch) -> Result<(), IcedError> {
        let [r1, r2, r3, r4, ..] = s.temps;
        let mask = s.mask(self.isa);
        let a = (-2.0 * SQRT_2_OVER_PI) as f32;
        let b = (-2.0 * SQRT_2_OVER_PI * 0.044_715) as f32;
        self.mul(r1, x, Src::R(x))?;
        self.load_f(r2, a)?;
        self.fmadd132(r1, r2, cf(b))?;
        self.mul(r1, x, Src::R(r1))?;
        self.exp(r1, [r2, r3, r4])?;
        self.add(r1, r1, cf(1.0))?;
        self.div(r2, x, Src::R(r1))?;
        self.less_than(mask, x, cf(-20.0))?;
        self.select(x, mask, cf(-0.0), r2)
    }
}
