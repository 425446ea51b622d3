//! f32x4 code generation helpers and vector math written in CLIF.
//!
//! Cranelift has no vector exp/log/tanh, and on x86-64 it lowers vectors of
//! at most 128 bits, so every function here works on `f32x4` values. The
//! accuracy of each function (measured against f64 in
//! `tests/codegen_kernels.rs`) is stated on the function.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, Endianness, GlobalValue, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

use super::constants::ConstantTable;

pub(crate) const F32X4: Type = types::F32X4;
pub(crate) const I32X4: Type = types::I32X4;
pub(crate) const I64: Type = types::I64;

/// Flags for loads from buffers the kernel only reads and that the Rust
/// driver has bounds-checked: they may be hoisted, folded into arithmetic
/// and never trap.
pub(crate) fn input_flags() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
}

/// Flags for loads and stores of buffers the kernel also writes.
pub(crate) fn output_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn lane_cast_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

// Cephes-style single precision constants.
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for the |n| <= 150 that occur.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
pub(crate) const ROUND_MAGIC_BITS: i32 = 0x4B40_0000;

/// exp(r) = 1 + r + r^2 * P(r) on |r| <= ln2/2, highest power first.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// log(1+f) = f - f^2/2 + f^3 * P(f) on sqrt(1/2)-1 <= f < sqrt(2)-1.
const LOG_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

/// tanh(x) = x + x^3 * P(x^2) on |x| < 0.625.
pub(crate) const TANH_POLY: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];

// The erf/erfc polynomials below were fitted for this crate (iteratively
// reweighted least squares towards minimax relative error, in f64, then
// rounded to f32), highest power first.

/// erf(x) = x * P(x^2) on |x| <= 1; fit error 1.2e-9 relative. (The
/// constant term is the fitted value, one ulp from 2/sqrt(pi).)
#[allow(clippy::approx_constant)]
const ERF_SMALL: [f32; 7] = [
    7.853_847e-5,
    -8.010_189e-4,
    5.188_327_3e-3,
    -2.685_381e-2,
    1.128_358_5e-1,
    -3.761_262_6e-1,
    1.128_379_1,
];

/// erfc(z) = t e^{-z^2} Q(t) with t = 1 / (1 + 0.3 z), for 0 <= z <= 10;
/// Q as a polynomial in (t - 0.625). Fit error 2e-8 relative; evaluated in
/// f32 about 4e-7 (the rounding of t is amplified ~4x near z = 0).
pub(crate) const ERFC_T_SCALE: f32 = 0.3;
pub(crate) const ERFC_Q_CENTER: f32 = 0.625;
pub(crate) const ERFC_Q: [f32; 9] = [
    -0.129_524_34,
    -0.162_051_26,
    0.195_404_57,
    0.838_991_94,
    1.380_990_7,
    1.517_933_1,
    1.250_464_1,
    0.804_314_6,
    0.408_633_08,
];

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// sqrt(2 / pi), for the tanh form of GELU.
pub(crate) const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// Where a function's vector constants live: the module's constant table,
/// reached through the function's global value for it.
pub(crate) struct ConstantPool<'t> {
    pub(crate) global: GlobalValue,
    pub(crate) table: &'t mut ConstantTable,
}

/// Emits f32x4 code into a function under construction.
pub(crate) struct Emitter<'a, 'b> {
    pub(crate) fb: &'a mut FunctionBuilder<'b>,
    fused: bool,
    constants: ConstantPool<'a>,
    constant_copy: u8,
}

impl<'a, 'b> Emitter<'a, 'b> {
    pub(crate) fn new(
        fb: &'a mut FunctionBuilder<'b>,
        fused: bool,
        constants: ConstantPool<'a>,
    ) -> Self {
        Emitter {
            fb,
            fused,
            constants,
            constant_copy: 0,
        }
    }

    /// Constants emitted from now on come from table copy `copy` (see
    /// `ConstantTable::offset`): give each independent evaluation in a loop
    /// body its own copy.
    pub(crate) fn set_constant_copy(&mut self, copy: u8) {
        self.constant_copy = copy;
    }

    // ---- constants -------------------------------------------------------

    fn constant(&mut self, ty: Type, lane_bits: u32) -> Value {
        let offset = self.constants.table.offset(lane_bits, self.constant_copy);
        let base = self.fb.ins().symbol_value(I64, self.constants.global);
        let flags = MemFlagsData::new()
            .with_notrap()
            .with_readonly()
            .with_can_move()
            .with_aligned();
        self.fb.ins().load(ty, flags, base, offset)
    }

    pub(crate) fn splat_f(&mut self, x: f32) -> Value {
        self.constant(F32X4, x.to_bits())
    }

    pub(crate) fn splat_i(&mut self, x: i32) -> Value {
        self.constant(I32X4, x as u32)
    }

    pub(crate) fn iconst(&mut self, x: i64) -> Value {
        self.fb.ins().iconst(I64, x)
    }

    // ---- memory ----------------------------------------------------------

    pub(crate) fn load_input(&mut self, ptr: Value, offset: i32) -> Value {
        self.fb.ins().load(F32X4, input_flags(), ptr, offset)
    }

    /// Loads one f32 and broadcasts it to all lanes.
    pub(crate) fn load_input_splat(&mut self, ptr: Value, offset: i32) -> Value {
        let scalar = self.fb.ins().load(types::F32, input_flags(), ptr, offset);
        self.fb.ins().splat(F32X4, scalar)
    }

    pub(crate) fn load_output(&mut self, ptr: Value, offset: i32) -> Value {
        self.fb.ins().load(F32X4, output_flags(), ptr, offset)
    }

    pub(crate) fn store(&mut self, value: Value, ptr: Value, offset: i32) {
        self.fb.ins().store(output_flags(), value, ptr, offset);
    }

    /// Stores lane 0 of `value` as one f32.
    pub(crate) fn store_lane0(&mut self, value: Value, ptr: Value, offset: i32) {
        let scalar = self.fb.ins().extractlane(value, 0);
        self.fb.ins().store(output_flags(), scalar, ptr, offset);
    }

    /// Two f32 at `ptr + offset` widened to f64x2 (an 8-byte load, so a
    /// vector step can read its four elements as two pairs without reading
    /// past them).
    pub(crate) fn load_pair_f64(&mut self, ptr: Value, offset: i32) -> Value {
        let pair = self.fb.ins().load(types::I64, input_flags(), ptr, offset);
        let v = self.fb.ins().scalar_to_vector(types::I64X2, pair);
        let v = self.fb.ins().bitcast(F32X4, lane_cast_flags(), v);
        self.fb.ins().fvpromote_low(v)
    }

    /// Loop state is typed f32x4 (`loops::run_loop`); f64x2 accumulators
    /// travel through it bit-cast, which costs no instruction.
    pub(crate) fn f64x2_as_state(&mut self, v: Value) -> Value {
        self.fb.ins().bitcast(F32X4, lane_cast_flags(), v)
    }
    pub(crate) fn state_as_f64x2(&mut self, v: Value) -> Value {
        self.fb.ins().bitcast(types::F64X2, lane_cast_flags(), v)
    }

    // ---- arithmetic ------------------------------------------------------

    pub(crate) fn add(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fadd(a, b)
    }
    pub(crate) fn sub(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fsub(a, b)
    }
    pub(crate) fn mul(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fmul(a, b)
    }
    pub(crate) fn div(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fdiv(a, b)
    }
    pub(crate) fn neg(&mut self, a: Value) -> Value {
        self.fb.ins().fneg(a)
    }
    pub(crate) fn abs(&mut self, a: Value) -> Value {
        self.fb.ins().fabs(a)
    }
    pub(crate) fn sqrt(&mut self, a: Value) -> Value {
        self.fb.ins().sqrt(a)
    }
    pub(crate) fn recip(&mut self, a: Value) -> Value {
        let one = self.splat_f(1.0);
        self.div(one, a)
    }
    pub(crate) fn add_const(&mut self, a: Value, c: f32) -> Value {
        let c = self.splat_f(c);
        self.add(a, c)
    }
    pub(crate) fn mul_const(&mut self, a: Value, c: f32) -> Value {
        let c = self.splat_f(c);
        self.mul(a, c)
    }
    /// `c - a`
    pub(crate) fn const_sub(&mut self, c: f32, a: Value) -> Value {
        let c = self.splat_f(c);
        self.sub(c, a)
    }

    /// `a * b + c`: one fused instruction when the ISA has FMA, otherwise a
    /// multiply and an add (so results differ in the last bit between the
    /// two kinds of machines, never between runs on one machine).
    pub(crate) fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fused {
            self.fb.ins().fma(a, b, c)
        } else {
            let p = self.fb.ins().fmul(a, b);
            self.fb.ins().fadd(p, c)
        }
    }

    /// The rounding error of `hi = a * a`: `a * a - hi` exactly (barring
    /// overflow), by FMA or by Dekker's splitting without it.
    pub(crate) fn square_error(&mut self, a: Value, hi: Value) -> Value {
        if self.fused {
            let neg_hi = self.neg(hi);
            self.fb.ins().fma(a, a, neg_hi)
        } else {
            // Veltkamp split a = a_hi + a_lo with 12-bit halves, so every
            // partial product below is exact.
            let c = self.mul_const(a, 4097.0);
            let c_minus_a = self.sub(c, a);
            let a_hi = self.sub(c, c_minus_a);
            let a_lo = self.sub(a, a_hi);
            let hh = self.mul(a_hi, a_hi);
            let hl = self.mul(a_hi, a_lo);
            let ll = self.mul(a_lo, a_lo);
            let e = self.sub(hh, hi);
            let e = self.add(e, hl);
            let e = self.add(e, hl);
            self.add(e, ll)
        }
    }

    /// Horner evaluation; coefficients from the highest power down.
    pub(crate) fn poly(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.splat_f(coeffs[0]);
        for &c in &coeffs[1..] {
            let c = self.splat_f(c);
            acc = self.mul_add(acc, x, c);
        }
        acc
    }

    // ---- comparisons and selection ---------------------------------------

    pub(crate) fn fcmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.fb.ins().fcmp(cc, a, b)
    }

    pub(crate) fn fcmp_const(&mut self, cc: FloatCC, a: Value, c: f32) -> Value {
        let c = self.splat_f(c);
        self.fcmp(cc, a, c)
    }

    /// Lane-wise `mask ? a : b` for a mask produced by `fcmp` (or combined
    /// masks); lowers to one blend.
    pub(crate) fn select(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let mask = self.fb.ins().bitcast(F32X4, lane_cast_flags(), mask);
        self.fb.ins().bitselect(mask, a, b)
    }

    /// `v < lo ? lo : v`: lowers to one `maxps` and keeps a NaN in `v`.
    pub(crate) fn max_keep_nan(&mut self, v: Value, lo: Value) -> Value {
        let lt = self.fcmp(FloatCC::LessThan, v, lo);
        let lt = self.fb.ins().bitcast(F32X4, lane_cast_flags(), lt);
        self.fb.ins().bitselect(lt, lo, v)
    }

    /// `hi < v ? hi : v`: lowers to one `minps` and keeps a NaN in `v`.
    pub(crate) fn min_keep_nan(&mut self, v: Value, hi: Value) -> Value {
        let lt = self.fcmp(FloatCC::LessThan, hi, v);
        let lt = self.fb.ins().bitcast(F32X4, lane_cast_flags(), lt);
        self.fb.ins().bitselect(lt, hi, v)
    }

    pub(crate) fn clamp_keep_nan(&mut self, v: Value, lo: f32, hi: f32) -> Value {
        let lo = self.splat_f(lo);
        let hi = self.splat_f(hi);
        let v = self.max_keep_nan(v, lo);
        self.min_keep_nan(v, hi)
    }

    /// IEEE maximum/minimum with NaN propagation (numpy `maximum`).
    pub(crate) fn fmax(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fmax(a, b)
    }
    pub(crate) fn fmin(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fmin(a, b)
    }

    pub(crate) fn mask_and(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().band(a, b)
    }
    pub(crate) fn mask_not(&mut self, a: Value) -> Value {
        self.fb.ins().bnot(a)
    }

    /// 1.0 where the mask is set, 0.0 elsewhere.
    pub(crate) fn mask_to_f32(&mut self, mask: Value) -> Value {
        let one_bits = self.splat_i(1.0f32.to_bits() as i32);
        let bits = self.fb.ins().band(mask, one_bits);
        self.bits_to_f32(bits)
    }

    /// All-ones where `v != 0` (NaN counts as true, like a C truth test).
    pub(crate) fn f32_to_mask(&mut self, v: Value) -> Value {
        let zero = self.splat_f(0.0);
        self.fcmp(FloatCC::NotEqual, v, zero)
    }

    pub(crate) fn f32_to_bits(&mut self, v: Value) -> Value {
        self.fb.ins().bitcast(I32X4, lane_cast_flags(), v)
    }
    pub(crate) fn bits_to_f32(&mut self, v: Value) -> Value {
        self.fb.ins().bitcast(F32X4, lane_cast_flags(), v)
    }

    /// |magnitude| with the sign of `sign`.
    pub(crate) fn copysign(&mut self, magnitude: Value, sign: Value) -> Value {
        let m = self.f32_to_bits(magnitude);
        let s = self.f32_to_bits(sign);
        let abs_mask = self.splat_i(0x7FFF_FFFF);
        let sign_mask = self.splat_i(i32::MIN);
        let m = self.fb.ins().band(m, abs_mask);
        let s = self.fb.ins().band(s, sign_mask);
        let r = self.fb.ins().bor(m, s);
        self.bits_to_f32(r)
    }

    /// Horizontal reductions to a scalar f32 (lane order 0, 1, 2, 3).
    pub(crate) fn horizontal_sum(&mut self, v: Value) -> Value {
        let l0 = self.fb.ins().extractlane(v, 0);
        let l1 = self.fb.ins().extractlane(v, 1);
        let l2 = self.fb.ins().extractlane(v, 2);
        let l3 = self.fb.ins().extractlane(v, 3);
        let a = self.fb.ins().fadd(l0, l1);
        let b = self.fb.ins().fadd(l2, l3);
        self.fb.ins().fadd(a, b)
    }

    // ---- activations -------------------------------------------------------

    /// max(x, 0) as one `maxps`; relu(NaN) = NaN.
    pub(crate) fn relu(&mut self, x: Value) -> Value {
        let zero = self.splat_f(0.0);
        // (x < 0) ? 0 : x, which is `maxps(0, x)`: NaN in x passes through.
        self.max_keep_nan(x, zero)
    }

    /// e^x: Cephes-style reduction x = n ln2 + r (ln2 in two parts),
    /// degree-5 polynomial, 2^n built in two exponent factors. Measured max
    /// relative error 8.3e-8 on [-87, 88.5] (normal results); results below
    /// 2^-126 lose precision as subnormals and flush to 0 below e^-104;
    /// overflow gives +inf; NaN stays NaN.
    pub(crate) fn exp(&mut self, x: Value) -> Value {
        let x = self.clamp_keep_nan(x, -104.0, 89.0);
        let log2e = self.splat_f(LOG2E);
        let magic = self.splat_f(ROUND_MAGIC);
        let t = self.mul_add(x, log2e, magic);
        let n = self.sub(t, magic);
        let t_bits = self.f32_to_bits(t);
        let magic_bits = self.splat_i(ROUND_MAGIC_BITS);
        let n_int = self.fb.ins().isub(t_bits, magic_bits);
        let minus_ln2_hi = self.splat_f(-LN2_HI);
        let minus_ln2_lo = self.splat_f(-LN2_LO);
        let r = self.mul_add(n, minus_ln2_hi, x);
        let r = self.mul_add(n, minus_ln2_lo, r);
        let p = self.poly(r, &EXP_POLY);
        let r2 = self.mul(r, r);
        let y = self.mul_add(p, r2, r);
        let y = self.add_const(y, 1.0);
        // 2^n in two factors: n reaches -150 and 128, outside one f32 exponent.
        let n_half = self.fb.ins().sshr_imm_u(n_int, 1);
        let n_rest = self.fb.ins().isub(n_int, n_half);
        let s1 = self.pow2_int(n_half);
        let s2 = self.pow2_int(n_rest);
        let y = self.mul(y, s1);
        self.mul(y, s2)
    }

    /// 2^n for integer lanes -126 <= n <= 127.
    fn pow2_int(&mut self, n: Value) -> Value {
        let bias = self.splat_i(127);
        let biased = self.fb.ins().iadd(n, bias);
        let bits = self.fb.ins().ishl_imm_u(biased, 23);
        self.bits_to_f32(bits)
    }

    /// Natural log: exponent/mantissa split (mantissa in [sqrt(1/2),
    /// sqrt 2)), degree-8 polynomial for log(1+f). Measured max relative
    /// error 7.9e-8 on [1e-30, 1e30] where |log x| >= 1e-3, absolute below
    /// 3e-10 nearer x = 1; log(0) = -inf, log(x<0) = NaN, log(inf) = inf;
    /// subnormal inputs are handled.
    pub(crate) fn log(&mut self, x: Value) -> Value {
        let is_subnormal = self.fcmp_const(FloatCC::LessThan, x, f32::MIN_POSITIVE);
        let scaled = self.mul_const(x, 8_388_608.0); // 2^23
        let xs = self.select(is_subnormal, scaled, x);
        let bits = self.f32_to_bits(xs);
        let exponent_field = self.fb.ins().ushr_imm_u(bits, 23);
        let byte = self.splat_i(0xFF);
        let exponent_field = self.fb.ins().band(exponent_field, byte);
        let bias = self.splat_i(126);
        let e_int = self.fb.ins().isub(exponent_field, bias);
        let e = self.fb.ins().fcvt_from_sint(F32X4, e_int);
        let subnormal_shift = self.splat_f(23.0);
        let zero = self.splat_f(0.0);
        let shift = self.select(is_subnormal, subnormal_shift, zero);
        let e = self.sub(e, shift);
        // mantissa m in [0.5, 1)
        let mantissa_mask = self.splat_i(0x007F_FFFF);
        let half_bits = self.splat_i(0x3F00_0000);
        let m_bits = self.fb.ins().band(bits, mantissa_mask);
        let m_bits = self.fb.ins().bor(m_bits, half_bits);
        let m = self.bits_to_f32(m_bits);
        // Below sqrt(1/2) use 2m - 1 and e - 1, so f stays in
        // [sqrt(1/2) - 1, sqrt(2) - 1]; both subtractions are exact.
        let below = self.fcmp_const(FloatCC::LessThan, m, std::f32::consts::FRAC_1_SQRT_2);
        let one = self.splat_f(1.0);
        let e_dec = self.select(below, one, zero);
        let e = self.sub(e, e_dec);
        let m2 = self.add(m, m);
        let m = self.select(below, m2, m);
        let f = self.sub(m, one);
        let z = self.mul(f, f);
        let p = self.poly(f, &LOG_POLY);
        let y = self.mul(p, f);
        let y = self.mul(y, z);
        let ln2_lo = self.splat_f(LN2_LO);
        let y = self.mul_add(e, ln2_lo, y);
        let minus_half = self.splat_f(-0.5);
        let y = self.mul_add(z, minus_half, y);
        let r = self.add(f, y);
        let ln2_hi = self.splat_f(LN2_HI);
        let r = self.mul_add(e, ln2_hi, r);
        // Special values.
        let positive = self.fcmp(FloatCC::GreaterThan, x, zero);
        let is_zero = self.fcmp(FloatCC::Equal, x, zero);
        let neg_inf = self.splat_f(f32::NEG_INFINITY);
        let nan = self.splat_f(f32::NAN);
        let non_positive = self.select(is_zero, neg_inf, nan);
        let r = self.select(positive, r, non_positive);
        let inf = self.splat_f(f32::INFINITY);
        let is_inf = self.fcmp(FloatCC::Equal, x, inf);
        self.select(is_inf, inf, r)
    }

    /// tanh: odd polynomial below |x| = 0.625, `1 - 2 / (e^{2|x|} + 1)`
    /// above. Measured max relative error 1.35e-7 on [-12, 12].
    pub(crate) fn tanh(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let z = self.mul(x, x);
        let p = self.poly(z, &TANH_POLY);
        let pz = self.mul(p, z);
        let small = self.mul_add(pz, x, x);
        let two_a = self.add(a, a);
        let e = self.exp(two_a);
        let e1 = self.add_const(e, 1.0);
        let two = self.splat_f(2.0);
        let q = self.div(two, e1);
        let large = self.const_sub(1.0, q);
        let large = self.copysign(large, x);
        let is_small = self.fcmp_const(FloatCC::LessThan, a, 0.625);
        self.select(is_small, small, large)
    }

    /// 1 / (1 + e^-x). Measured max relative error 1.5e-7 on [-87, 30].
    pub(crate) fn sigmoid(&mut self, x: Value) -> Value {
        let nx = self.neg(x);
        let e = self.exp(nx);
        let d = self.add_const(e, 1.0);
        self.recip(d)
    }

    /// erfc(z) for 0 <= z <= 10 given z^2 = hi + lo (lo the rounding
    /// error of hi), so e^{-z^2} keeps its relative accuracy for large z.
    fn erfc_tail(&mut self, z: Value, z2_hi: Value, z2_lo: Value) -> Value {
        let one = self.splat_f(1.0);
        let scale = self.splat_f(ERFC_T_SCALE);
        let d = self.mul_add(z, scale, one);
        let t = self.recip(d);
        let u = self.add_const(t, -ERFC_Q_CENTER);
        let q = self.poly(u, &ERFC_Q);
        // e^{-(hi + lo)} = e^{-hi} (1 - lo) to first order; lo is tiny.
        let neg_hi = self.neg(z2_hi);
        let e = self.exp(neg_hi);
        let correction = self.const_sub(1.0, z2_lo);
        let e = self.mul(e, correction);
        let tq = self.mul(t, q);
        self.mul(e, tq)
    }

    /// erf: `x P(x^2)` below |x| = 1, `1 - erfc(|x|)` above. Measured max
    /// relative error 1.8e-7 on [-6, 6] (erf(x) rounds to +-1 for |x| > 3.9),
    /// including near 0 (no absolute-error exception needed).
    pub(crate) fn erf(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let s = self.mul(a, a);
        let p = self.poly(s, &ERF_SMALL);
        let small = self.mul(a, p);
        let z = self.clamp_keep_nan(a, 1.0, 10.0);
        let hi = self.mul(z, z);
        let lo = self.square_error(z, hi);
        let erfc = self.erfc_tail(z, hi, lo);
        let large = self.const_sub(1.0, erfc);
        let one = self.splat_f(1.0);
        let is_small = self.fcmp(FloatCC::LessThan, a, one);
        let r = self.select(is_small, small, large);
        self.copysign(r, x)
    }

    /// 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2), evaluated as
    /// `0.5 x erfc(z)` for x < 0 and `0.5 x (2 - erfc(z))` for x >= 0 with
    /// z = |x| / sqrt 2: no cancellation anywhere, and e^{-x^2/2} comes
    /// from an exact x^2, so the negative tail keeps its relative accuracy.
    /// Measured max relative error 4.8e-7 on [-10, 12] (gelu(-10) = -7.6e-23).
    pub(crate) fn gelu(&mut self, x: Value) -> Value {
        let xc = self.clamp_keep_nan(x, -14.0, 14.0);
        let ac = self.abs(xc);
        let z = self.mul_const(ac, FRAC_1_SQRT_2);
        let x2_hi = self.mul(xc, xc);
        let x2_lo = self.square_error(xc, x2_hi);
        let z2_hi = self.mul_const(x2_hi, 0.5);
        let z2_lo = self.mul_const(x2_lo, 0.5);
        let erfc = self.erfc_tail(z, z2_hi, z2_lo);
        let two_minus = self.const_sub(2.0, erfc);
        let negative = self.fcmp_const(FloatCC::LessThan, x, 0.0);
        let w = self.select(negative, erfc, two_minus);
        let half_x = self.mul_const(x, 0.5);
        let r = self.mul(half_x, w);
        // Below -14 the result is under 1e-43: return -0 (also for -inf,
        // where the product would be -inf * 0).
        let underflow = self.fcmp_const(FloatCC::LessThan, x, -14.0);
        let minus_zero = self.splat_f(-0.0);
        self.select(underflow, minus_zero, r)
    }

    /// 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), evaluated as
    /// x / (1 + e^{-2u}) to avoid cancellation for negative x. Measured
    /// max relative error 7.4e-7 on [-3, 12]; below -3 the function is
    /// ill-conditioned in f32 (relative condition ~2|u|, and u itself
    /// carries ~1e-7 rounding): 9.2e-6 on [-9, -3], where |result| < 4e-3.
    pub(crate) fn gelu_tanh(&mut self, x: Value) -> Value {
        // -2u = x (a + b x^2) with the constants folded in f64: three
        // roundings instead of five (the tail's error is proportional).
        let a = (-2.0 * SQRT_2_OVER_PI) as f32;
        let b = (-2.0 * SQRT_2_OVER_PI * 0.044_715) as f32;
        let x2 = self.mul(x, x);
        let one = self.splat_f(1.0);
        let a = self.splat_f(a);
        let b = self.splat_f(b);
        let inner = self.mul_add(x2, b, a);
        let minus_two_u = self.mul(x, inner);
        let e = self.exp(minus_two_u);
        let d = self.add(e, one);
        let r = self.div(x, d);
        let underflow = self.fcmp_const(FloatCC::LessThan, x, -20.0);
        let minus_zero = self.splat_f(-0.0);
        self.select(underflow, minus_zero, r)
    }

    /// a^b as exp(b log|a|) with the signs and special cases of C `powf`
    /// (which numpy and the interpreter follow): a finite a < 0 needs an
    /// integer b; the sign of a (also of -0 and -inf) carries to the result
    /// for odd b; b = 0 or a = 1 give 1. pow(-inf, 0.5) = +inf,
    /// pow(-0, 3) = -0, pow(-0, -1) = -inf. Relative error about
    /// (1 + |b ln a|) * 1.2e-7.
    pub(crate) fn pow(&mut self, a: Value, b: Value) -> Value {
        let abs_a = self.abs(a);
        let log_a = self.log(abs_a);
        let y = self.mul(b, log_a);
        let r = self.exp(y);
        let b_round = self.fb.ins().nearest(b);
        let is_int = self.fcmp(FloatCC::Equal, b_round, b);
        let half_b = self.mul_const(b, 0.5);
        let half_round = self.fb.ins().nearest(half_b);
        let is_even = self.fcmp(FloatCC::Equal, half_round, half_b);
        let not_even = self.mask_not(is_even);
        let is_odd = self.mask_and(is_int, not_even);
        let a_bits = self.f32_to_bits(a);
        let sign_set = self.fb.ins().sshr_imm_u(a_bits, 31);
        let flip = self.mask_and(sign_set, is_odd);
        let neg_r = self.neg(r);
        let r = self.select(flip, neg_r, r);
        let zero = self.splat_f(0.0);
        let a_negative = self.fcmp(FloatCC::LessThan, a, zero);
        let a_finite = self.fcmp_const(FloatCC::GreaterThan, a, f32::NEG_INFINITY);
        let a_finite_negative = self.mask_and(a_negative, a_finite);
        let not_int = self.mask_not(is_int);
        let invalid = self.mask_and(a_finite_negative, not_int);
        let nan = self.splat_f(f32::NAN);
        let r = self.select(invalid, nan, r);
        let one = self.splat_f(1.0);
        let b_zero = self.fcmp(FloatCC::Equal, b, zero);
        let r = self.select(b_zero, one, r);
        let a_one = self.fcmp(FloatCC::Equal, a, one);
        self.select(a_one, one, r)
    }

    /// `pow(a, 0.5)` by a square root, with pow's answers where sqrt's
    /// differ: pow(-0, 0.5) = +0 and pow(-inf, 0.5) = +inf.
    fn pow_half(&mut self, a: Value) -> Value {
        let r = self.sqrt(a);
        // -0 + 0 = +0; every other value is unchanged.
        let r = self.add_const(r, 0.0);
        let inf = self.splat_f(f32::INFINITY);
        let is_neg_inf = self.fcmp_const(FloatCC::Equal, a, f32::NEG_INFINITY);
        self.select(is_neg_inf, inf, r)
    }

    /// a^c for a compile-time exponent: exact shortcuts for the exponents
    /// models write (2, 3, 0.5, -1, ...), `pow` otherwise.
    pub(crate) fn pow_const(&mut self, a: Value, c: f32) -> Value {
        match c {
            0.0 => self.splat_f(1.0),
            1.0 => a,
            2.0 => self.mul(a, a),
            3.0 => {
                let a2 = self.mul(a, a);
                self.mul(a2, a)
            }
            4.0 => {
                let a2 = self.mul(a, a);
                self.mul(a2, a2)
            }
            0.5 => self.pow_half(a),
            -0.5 => {
                let s = self.pow_half(a);
                self.recip(s)
            }
            -1.0 => self.recip(a),
            -2.0 => {
                let a2 = self.mul(a, a);
                self.recip(a2)
            }
            _ => {
                let b = self.splat_f(c);
                self.pow(a, b)
            }
        }
    }
}
