//! Row kernels: operations along the last axis of a contiguous tensor,
//! viewed as `rows x len`. One JIT function loops over a range of rows;
//! the driver splits rows across threads.
//!
//! Kernel signature: `(x, out, rows, len, gain, bias)`.

use crate::ir::ops::{LayerNorm, LogSoftmax, Reduce, Softmax};
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, Value};

use super::jit::{JitBuilder, KernelSlot};
use super::loops::run_loop;
use super::simd::{Emitter, F32X4, I64};
use super::target::Isa;
use super::threads::{split_range, SharedMut, Threads};
use super::CodegenError;
use crate::ir::{Op, ReduceOp};

/// An operation over the last axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowOp {
    Softmax,
    LogSoftmax,
    /// `(x - mean) / sqrt(var + eps) * gain + bias`, biased variance.
    LayerNorm {
        eps: f32,
    },
    /// One value per row.
    Reduce(ReduceOp),
}

impl RowOp {
    fn name(&self) -> String {
        match self {
            RowOp::Softmax => "softmax".into(),
            RowOp::LogSoftmax => "log_softmax".into(),
            RowOp::LayerNorm { eps } => format!("layer_norm_eps{eps:e}"),
            RowOp::Reduce(op) => format!("reduce_{}", op.name()),
        }
    }

    /// Whether the output has one value per row (else one per element).
    pub fn reduces(&self) -> bool {
        matches!(self, RowOp::Reduce(_))
    }

    /// The row kernel for a graph op on an input of rank `rank`, when the
    /// op works on the last axis only (`Reduce` over exactly that axis,
    /// keepdims or not); `None` for every other op.
    pub fn from_op(op: &Op, rank: usize) -> Option<RowOp> {
        let last = rank.checked_sub(1)?;
        match op {
            Op::Softmax(Softmax { axis }) if *axis == last => Some(RowOp::Softmax),
            Op::LogSoftmax(LogSoftmax { axis }) if *axis == last => Some(RowOp::LogSoftmax),
            Op::LayerNorm(LayerNorm { axis, eps }) if *axis == last => {
                Some(RowOp::LayerNorm { eps: eps.0 })
            }
            Op::Reduce(Reduce { op, axes, .. }) if axes.as_slice() == [last] => {
                Some(RowOp::Reduce(*op))
            }
            _ => None,
        }
    }
}

/// Operands of a row kernel call: `x` holds `rows x row_len` contiguous
/// values; `out` holds as many (or `rows` for a reduction); `gain` and
/// `bias` (`row_len` each) are for layer norm only.
pub struct RowArgs<'a> {
    pub x: &'a [f32],
    pub rows: usize,
    pub row_len: usize,
    pub out: &'a mut [f32],
    pub gain: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
}

fn args(values: &[Value]) -> Vec<BlockArg> {
    values.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// Row-at-a-time loop: `body(x_row, out_row)` for each row, advancing `x`
/// by `len` elements and `out` by `out_step` bytes.
fn emit_rows(
    e: &mut Emitter<'_, '_>,
    params: &[Value],
    out_step_bytes: Option<i64>,
    mut body: impl FnMut(&mut Emitter<'_, '_>, Value, Value),
) {
    let (x, out, rows, len) = (params[0], params[1], params[2], params[3]);
    let row_bytes = e.fb.ins().ishl_imm_u(len, 2);
    let out_step = match out_step_bytes {
        Some(b) => e.iconst(b),
        None => row_bytes,
    };
    let head = e.fb.create_block();
    let hx = e.fb.append_block_param(head, I64);
    let ho = e.fb.append_block_param(head, I64);
    let hc = e.fb.append_block_param(head, I64);
    let row_block = e.fb.create_block();
    let exit = e.fb.create_block();
    e.fb.ins().jump(head, &args(&[x, out, rows]));

    e.fb.switch_to_block(head);
    e.fb.ins().brif(hc, row_block, &[], exit, &[]);

    e.fb.switch_to_block(row_block);
    body(e, hx, ho);
    let nx = e.fb.ins().iadd(hx, row_bytes);
    let no = e.fb.ins().iadd(ho, out_step);
    let nc = e.fb.ins().iadd_imm_s(hc, -1);
    e.fb.ins().jump(head, &args(&[nx, no, nc]));

    e.fb.switch_to_block(exit);
    e.fb.ins().return_(&[]);
}

/// Loads element(s) at byte offset `off` of `row`: a vector, or one value
/// splatted to all lanes (for the tail).
fn load_vec(e: &mut Emitter<'_, '_>, row: Value, off: Value) -> Value {
    let at = e.fb.ins().iadd(row, off);
    e.load_input(at, 0)
}
fn load_splat(e: &mut Emitter<'_, '_>, row: Value, off: Value) -> Value {
    let at = e.fb.ins().iadd(row, off);
    e.load_input_splat(at, 0)
}
fn load_out_splat(e: &mut Emitter<'_, '_>, row: Value, off: Value) -> Value {
    let at = e.fb.ins().iadd(row, off);
    let v =
        e.fb.ins()
            .load(types::F32, super::simd::output_flags(), at, 0);
    e.fb.ins().splat(F32X4, v)
}

/// Row sum: two vector partial sums (alternating, for two independent add
/// chains) plus the tail in order; `invariants` are handed to `term`.
fn row_sum(
    e: &mut Emitter<'_, '_>,
    len: Value,
    invariants: &[Value],
    term: impl Fn(&mut Emitter<'_, '_>, Value, bool, &[Value]) -> Value,
) -> Value {
    let zero = e.splat_f(0.0);
    let state = run_loop(
        e,
        len,
        vec![zero, zero, zero],
        invariants,
        |e, off, s, inv| {
            let t = term(e, off, true, inv);
            // Swap the two partial sums every step: acc0 += t; (acc0, acc1) = (acc1, acc0).
            vec![s[1], e.add(s[0], t), s[2]]
        },
        |e, off, s, inv| {
            let t = term(e, off, false, inv);
            vec![s[0], s[1], e.add(s[2], t)]
        },
    );
    let both = e.add(state[0], state[1]);
    let lanes = e.horizontal_sum(both);
    let tail = e.fb.ins().extractlane(state[2], 0);
    let total = e.fb.ins().fadd(lanes, tail);
    e.fb.ins().splat(F32X4, total)
}

/// Row maximum; `nan_exact` selects IEEE maximum (NaN-propagating) over
/// the one-instruction max that ignores NaN in later elements.
fn row_max(e: &mut Emitter<'_, '_>, len: Value, row: Value, nan_exact: bool) -> Value {
    let start = e.splat_f(f32::NEG_INFINITY);
    let combine = move |e: &mut Emitter<'_, '_>, acc: Value, x: Value| {
        if nan_exact {
            e.fmax(acc, x)
        } else {
            // acc < x ? x : acc
            e.max_keep_nan(acc, x)
        }
    };
    let state = run_loop(
        e,
        len,
        vec![start],
        &[],
        |e, off, s, _| {
            let x = load_vec(e, row, off);
            vec![combine(e, s[0], x)]
        },
        |e, off, s, _| {
            let x = load_splat(e, row, off);
            vec![combine(e, s[0], x)]
        },
    );
    let lanes: Vec<Value> = (0..4)
        .map(|i| e.fb.ins().extractlane(state[0], i))
        .collect();
    let splats: Vec<Value> = lanes.iter().map(|&l| e.fb.ins().splat(F32X4, l)).collect();
    let a = combine(e, splats[0], splats[1]);
    let b = combine(e, splats[2], splats[3]);
    combine(e, a, b)
}

fn len_as_f32(e: &mut Emitter<'_, '_>, len: Value) -> Value {
    let f = e.fb.ins().fcvt_from_uint(types::F32, len);
    e.fb.ins().splat(F32X4, f)
}

/// Load one vector (`vector`) or one element splatted (the tail).
fn load_at(e: &mut Emitter<'_, '_>, base: Value, off: Value, vector: bool) -> Value {
    if vector {
        load_vec(e, base, off)
    } else {
        load_splat(e, base, off)
    }
}

fn store_at(e: &mut Emitter<'_, '_>, value: Value, base: Value, off: Value, vector: bool) {
    let at = e.fb.ins().iadd(base, off);
    if vector {
        e.store(value, at, 0);
    } else {
        e.store_lane0(value, at, 0);
    }
}

/// A loop writing `out[i] = f(i)` over the row (no state).
fn write_row(
    e: &mut Emitter<'_, '_>,
    len: Value,
    invariants: &[Value],
    f: impl Fn(&mut Emitter<'_, '_>, Value, bool, &[Value]),
) {
    run_loop(
        e,
        len,
        vec![],
        invariants,
        |e, off, _, inv| {
            f(e, off, true, inv);
            vec![]
        },
        |e, off, _, inv| {
            f(e, off, false, inv);
            vec![]
        },
    );
}

/// Row sum accumulated in f64 and returned as a scalar f64: a sum or mean
/// of f32 values near the top of the range (3e38) overflows an f32
/// accumulator, and f64 makes the rounding of long rows negligible, so the
/// result is the interpreter's up to the final rounding.
fn row_sum_f64(e: &mut Emitter<'_, '_>, len: Value, row: Value) -> Value {
    let zero = e.fb.ins().f64const(0.0);
    let zero = e.fb.ins().splat(types::F64X2, zero);
    let zero = e.f64x2_as_state(zero);
    let state = run_loop(
        e,
        len,
        vec![zero, zero, zero],
        &[],
        |e, off, s, _| {
            let at = e.fb.ins().iadd(row, off);
            let low = e.load_pair_f64(at, 0);
            let high = e.load_pair_f64(at, 8);
            let (a, b) = (e.state_as_f64x2(s[0]), e.state_as_f64x2(s[1]));
            let a = e.fb.ins().fadd(a, low);
            let b = e.fb.ins().fadd(b, high);
            vec![e.f64x2_as_state(a), e.f64x2_as_state(b), s[2]]
        },
        |e, off, s, _| {
            let at = e.fb.ins().iadd(row, off);
            let v =
                e.fb.ins()
                    .load(types::F32, super::simd::input_flags(), at, 0);
            let v = e.fb.ins().fpromote(types::F64, v);
            let v = e.fb.ins().splat(types::F64X2, v);
            let t = e.state_as_f64x2(s[2]);
            let t = e.fb.ins().fadd(t, v);
            vec![s[0], s[1], e.f64x2_as_state(t)]
        },
    );
    let a = e.state_as_f64x2(state[0]);
    let b = e.state_as_f64x2(state[1]);
    let both = e.fb.ins().fadd(a, b);
    let l0 = e.fb.ins().extractlane(both, 0);
    let l1 = e.fb.ins().extractlane(both, 1);
    let lanes = e.fb.ins().fadd(l0, l1);
    let tail = e.state_as_f64x2(state[2]);
    let tail = e.fb.ins().extractlane(tail, 0);
    e.fb.ins().fadd(lanes, tail)
}

/// The smallest power of two layer norm divides a row by: rows of tinier
/// magnitude are scaled up by at most 2^40, so `eps * s^2` stays finite for
/// any eps below 1e14. (Such rows are dominated by eps anyway unless eps is
/// 0; with eps = 0 and a row spread below 1e-31 the squares underflow:
/// measured 1e-6 off at 1e-32, 2% at 1e-34.)
const LAYER_NORM_SMALLEST_POWER: f32 = 1.0 / (1u64 << 40) as f32;

/// One layer norm row in three passes over the (L1-resident) row, all f32:
///
/// 1. `a = max |x|` and `sum x`. `s = 2^-floor(log2 a)` (a power of two,
///    so `x s` is exact) makes every `x s` smaller than 2 in magnitude:
///    squares and sums of the scaled row cannot overflow, however large x
///    is (1e19 squared would). `m = sum(x) s / n` is a first mean; when the
///    unscaled sum overflowed (|x| near 3e38), one more pass sums `x s`.
///    The first mean's rounding error is up to half an ulp of the mean,
///    large against the spread when the mean is large ([100, 100.01]; mean
///    1e4 with std 1), so it is corrected next:
/// 2. `d = x s - m` (exact or nearly: close values subtract exactly),
///    `c = sum(d) / n` (the first mean's error) and
///    `v = sum(d^2) / n - c^2`, the corrected two-pass variance (Chan, Golub
///    and LeVeque). A constant row gives d = c exactly, so its output is
///    exactly 0.
/// 3. `y = ((x s - m) - c) / sqrt(v + eps s^2) * gain + bias`.
///
/// Infinite or NaN inputs give s = 0 or NaN sums, so the row becomes NaN,
/// as in the interpreter.
fn emit_layer_norm_row(
    e: &mut Emitter<'_, '_>,
    len: Value,
    x: Value,
    out: Value,
    gain: Value,
    bias: Value,
    eps: f32,
) {
    let n = len_as_f32(e, len);
    let zero = e.splat_f(0.0);
    // State: [max |x|, sum chain a, sum chain b, tail sum].
    let first = run_loop(
        e,
        len,
        vec![zero, zero, zero, zero],
        &[],
        |e, off, st, _| {
            let v = load_vec(e, x, off);
            let a = e.abs(v);
            let max = e.max_keep_nan(a, st[0]);
            let sum = e.add(st[1], v);
            // Two add chains, swapped each step, as in `row_sum`.
            vec![max, st[2], sum, st[3]]
        },
        |e, off, st, _| {
            let v = load_splat(e, x, off);
            let a = e.abs(v);
            let max = e.max_keep_nan(a, st[0]);
            let sum = e.add(st[3], v);
            vec![max, st[1], st[2], sum]
        },
    );
    let lanes: Vec<Value> = (0..4)
        .map(|i| {
            let l = e.fb.ins().extractlane(first[0], i);
            e.fb.ins().splat(F32X4, l)
        })
        .collect();
    let a01 = e.max_keep_nan(lanes[0], lanes[1]);
    let a23 = e.max_keep_nan(lanes[2], lanes[3]);
    let a = e.max_keep_nan(a01, a23);
    let both = e.add(first[1], first[2]);
    let lanes = e.horizontal_sum(both);
    let tail = e.fb.ins().extractlane(first[3], 0);
    let sum = e.fb.ins().fadd(lanes, tail);

    let bits = e.f32_to_bits(a);
    let exponent_mask = e.splat_i(0x7F80_0000);
    let bits = e.fb.ins().band(bits, exponent_mask);
    let power = e.bits_to_f32(bits);
    let floor = e.splat_f(LAYER_NORM_SMALLEST_POWER);
    let power = e.max_keep_nan(power, floor);
    let s = e.recip(power);
    let eps_s = e.mul_const(s, eps);
    let eps_s = e.mul(eps_s, s);
    // For rows of huge magnitude eps s^2 underflows to 0; keep it positive
    // when eps is, so a constant row gives 0 * finite = 0 (not 0 * inf).
    // Against any nonzero variance of the scaled row it is negligible.
    let eps_s = if eps > 0.0 {
        let tiny = e.splat_f(f32::from_bits(1));
        e.max_keep_nan(eps_s, tiny)
    } else {
        eps_s
    };

    // m: from the unscaled sum when it is finite, else by a scaled pass.
    let merge = e.fb.create_block();
    let m = e.fb.append_block_param(merge, F32X4);
    let rescan = e.fb.create_block();
    let sum_v = e.fb.ins().splat(F32X4, sum);
    let sum_s = e.mul(sum_v, s);
    let m_fast = e.div(sum_s, n);
    let abs_sum = e.fb.ins().fabs(sum);
    let inf = e.fb.ins().f32const(f32::INFINITY);
    let finite = e.fb.ins().fcmp(
        cranelift_codegen::ir::condcodes::FloatCC::LessThan,
        abs_sum,
        inf,
    );
    e.fb.ins()
        .brif(finite, merge, &args(&[m_fast]), rescan, &[]);
    e.fb.switch_to_block(rescan);
    let scaled_sum = row_sum(e, len, &[s], |e, off, vector, inv| {
        let v = load_at(e, x, off, vector);
        e.mul(v, inv[0])
    });
    let m_slow = e.div(scaled_sum, n);
    e.fb.ins().jump(merge, &args(&[m_slow]));
    e.fb.switch_to_block(merge);
    let neg_m = e.neg(m);

    let state = run_loop(
        e,
        len,
        vec![zero, zero, zero, zero, zero, zero],
        &[s, neg_m],
        |e, off, st, inv| {
            let v = load_vec(e, x, off);
            let d = e.mul_add(v, inv[0], inv[1]);
            let d1 = e.add(st[0], d);
            let d2 = e.mul_add(d, d, st[2]);
            vec![st[1], d1, st[3], d2, st[4], st[5]]
        },
        |e, off, st, inv| {
            let v = load_splat(e, x, off);
            let d = e.mul_add(v, inv[0], inv[1]);
            let t1 = e.add(st[4], d);
            let t2 = e.mul_add(d, d, st[5]);
            vec![st[0], st[1], st[2], st[3], t1, t2]
        },
    );
    let mut totals = Vec::new();
    for (pair, tail) in [((0, 1), 4), ((2, 3), 5)] {
        let both = e.add(state[pair.0], state[pair.1]);
        let lanes = e.horizontal_sum(both);
        let tail = e.fb.ins().extractlane(state[tail], 0);
        let total = e.fb.ins().fadd(lanes, tail);
        totals.push(e.fb.ins().splat(F32X4, total));
    }
    let c = e.div(totals[0], n);
    let squares = e.div(totals[1], n);
    let c2 = e.mul(c, c);
    let v = e.sub(squares, c2);
    // v >= 0 in exact arithmetic; rounding may leave a tiny negative.
    let v = e.max_keep_nan(v, zero);
    let v = e.add(v, eps_s);
    let sd = e.sqrt(v);
    let r = e.recip(sd);

    write_row(e, len, &[s, neg_m, c, r], |e, off, vector, inv| {
        let v = load_at(e, x, off, vector);
        let g = load_at(e, gain, off, vector);
        let b = load_at(e, bias, off, vector);
        let d = e.mul_add(v, inv[0], inv[1]);
        let d = e.sub(d, inv[2]);
        let normalized = e.mul(d, inv[3]);
        let y = e.mul_add(normalized, g, b);
        store_at(e, y, out, off, vector);
    });
}

fn emit_row_op(e: &mut Emitter<'_, '_>, p: &[Value], op: RowOp) {
    let len = p[3];
    let (gain, bias) = (p[4], p[5]);
    match op {
        RowOp::Softmax => emit_rows(e, p, None, |e, x, out| {
            let m = row_max(e, len, x, false);
            let s = row_sum(e, len, &[m], |e, off, vector, inv| {
                let v = load_at(e, x, off, vector);
                let d = e.sub(v, inv[0]);
                let ex = e.exp(d);
                store_at(e, ex, out, off, vector);
                ex
            });
            let inv_s = e.recip(s);
            write_row(e, len, &[inv_s], |e, off, vector, inv| {
                let v = if vector {
                    let at = e.fb.ins().iadd(out, off);
                    e.load_output(at, 0)
                } else {
                    load_out_splat(e, out, off)
                };
                let y = e.mul(v, inv[0]);
                store_at(e, y, out, off, vector);
            });
        }),
        RowOp::LogSoftmax => emit_rows(e, p, None, |e, x, out| {
            let m = row_max(e, len, x, false);
            let s = row_sum(e, len, &[m], |e, off, vector, inv| {
                let v = load_at(e, x, off, vector);
                let d = e.sub(v, inv[0]);
                e.exp(d)
            });
            let log_s = e.log(s);
            write_row(e, len, &[m, log_s], |e, off, vector, inv| {
                let v = load_at(e, x, off, vector);
                let d = e.sub(v, inv[0]);
                let y = e.sub(d, inv[1]);
                store_at(e, y, out, off, vector);
            });
        }),
        RowOp::LayerNorm { eps } => emit_rows(e, p, None, |e, x, out| {
            emit_layer_norm_row(e, len, x, out, gain, bias, eps)
        }),
        RowOp::Reduce(reduce) => emit_rows(e, p, Some(4), |e, x, out| {
            let r = match reduce {
                ReduceOp::Max => row_max(e, len, x, true),
                ReduceOp::Sum | ReduceOp::Mean => {
                    let total = row_sum_f64(e, len, x);
                    let total = if reduce == ReduceOp::Mean {
                        let n = e.fb.ins().fcvt_from_uint(types::F64, len);
                        e.fb.ins().fdiv(total, n)
                    } else {
                        total
                    };
                    let r = e.fb.ins().fdemote(types::F32, total);
                    e.fb.ins().splat(F32X4, r)
                }
            };
            e.store_lane0(r, out, 0);
        }),
    }
}

pub(crate) struct RowSlot {
    slot: KernelSlot,
    op: RowOp,
}

pub(crate) fn compile(jit: &mut JitBuilder, op: RowOp) -> Result<RowSlot, CodegenError> {
    if let RowOp::LayerNorm { eps } = op {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(CodegenError::Unsupported(format!("layer_norm eps {eps}")));
        }
    }
    let isa = jit.isa();
    let slot = if op == RowOp::Softmax && isa != Isa::Baseline {
        let code = super::rows_wide::assemble_softmax(isa)?;
        jit.define_bytes(&format!("{}_{isa}", op.name()), 6, &code)?
    } else {
        jit.define(&op.name(), 6, |e, p| emit_row_op(e, p, op))?
    };
    Ok(RowSlot { slot, op })
}

type RowFn = unsafe extern "C" fn(
    x: *const f32,
    out: *mut f32,
    rows: usize,
    len: usize,
    gain: *const f32,
    bias: *const f32,
);

pub(crate) struct RowKernel {
    f: RowFn,
    op: RowOp,
}

impl RowSlot {
    pub(crate) fn link(&self, addresses: &[usize]) -> RowKernel {
        let address = addresses[self.slot.0];
        assert_ne!(address, 0, "finalized function has a null address");
        RowKernel {
            // SAFETY: compiled by `compile` with six pointer-sized
            // parameters and no results (or, for the wide tiers' softmax,
            // assembled for exactly this signature under System V).
            f: unsafe { std::mem::transmute::<usize, RowFn>(address) },
            op: self.op,
        }
    }
}

/// Below this many input elements a call stays on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

impl RowKernel {
    pub(crate) fn op(&self) -> RowOp {
        self.op
    }

    pub(crate) fn run(&self, args: RowArgs<'_>, threads: &Threads) -> Result<(), CodegenError> {
        let RowArgs {
            x,
            rows,
            row_len,
            out,
            gain,
            bias,
        } = args;
        let name = match self.op {
            RowOp::Softmax => "softmax",
            RowOp::LogSoftmax => "log_softmax",
            RowOp::LayerNorm { .. } => "layer_norm",
            RowOp::Reduce(op) => op.name(),
        };
        let err = |what: String| CodegenError::shape(name, what);
        let total = rows
            .checked_mul(row_len)
            .ok_or_else(|| err("rows * row_len overflows".into()))?;
        if x.len() != total {
            return Err(err(format!(
                "x must hold {rows}x{row_len} = {total} f32, got {}",
                x.len()
            )));
        }
        let out_len = if self.op.reduces() { rows } else { total };
        if out.len() != out_len {
            return Err(err(format!(
                "out must hold {out_len} f32, got {}",
                out.len()
            )));
        }
        let is_layer_norm = matches!(self.op, RowOp::LayerNorm { .. });
        for (what, v) in [("gain", gain), ("bias", bias)] {
            match v {
                Some(v) if !is_layer_norm => {
                    return Err(err(format!(
                        "{what} is only for layer_norm (got {})",
                        v.len()
                    )))
                }
                Some(v) if v.len() != row_len => {
                    return Err(err(format!(
                        "{what} must hold {row_len} f32, got {}",
                        v.len()
                    )))
                }
                None if is_layer_norm => return Err(err(format!("layer_norm needs a {what}"))),
                _ => {}
            }
        }
        if rows == 0 {
            return Ok(());
        }
        if row_len == 0 {
            // Empty rows: reductions have identities or are undefined;
            // element-wise row ops have nothing to write.
            return match self.op {
                RowOp::Reduce(ReduceOp::Sum) => {
                    out.fill(0.0);
                    Ok(())
                }
                RowOp::Reduce(ReduceOp::Mean) => {
                    out.fill(f32::NAN);
                    Ok(())
                }
                RowOp::Reduce(ReduceOp::Max) => Err(err("max over an empty axis".into())),
                RowOp::Softmax | RowOp::LogSoftmax | RowOp::LayerNorm { .. } => Ok(()),
            };
        }
        let out_per_row = if self.op.reduces() { 1 } else { row_len };
        let out_ptr = SharedMut(out.as_mut_ptr());
        let run = |range: &std::ops::Range<usize>| {
            let gain_ptr = gain.map_or(std::ptr::null(), |g| g.as_ptr());
            let bias_ptr = bias.map_or(std::ptr::null(), |b| b.as_ptr());
            // SAFETY: rows `range` of x (and of out) are in bounds by the
            // length checks above; tasks get disjoint row ranges of `out`,
            // which is exclusively borrowed for the call; gain and bias hold
            // row_len values when the op reads them.
            unsafe {
                (self.f)(
                    x.as_ptr().add(range.start * row_len),
                    out_ptr.get().add(range.start * out_per_row),
                    range.len(),
                    row_len,
                    gain_ptr,
                    bias_ptr,
                )
            }
        };
        if threads.count() > 1 && total >= PARALLEL_MIN_ELEMENTS && rows > 1 {
            let ranges = split_range(rows, 4 * threads.count(), 1);
            threads.for_each(&ranges, run);
        } else {
            run(&(0..rows));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Float;

    #[test]
    fn from_op_accepts_only_the_last_axis() {
        assert_eq!(
            RowOp::from_op(&Op::Softmax(Softmax { axis: 2 }), 3),
            Some(RowOp::Softmax)
        );
        assert_eq!(RowOp::from_op(&Op::Softmax(Softmax { axis: 1 }), 3), None);
        assert_eq!(
            RowOp::from_op(
                &Op::LayerNorm(LayerNorm {
                    axis: 1,
                    eps: Float(1e-5)
                }),
                2
            ),
            Some(RowOp::LayerNorm { eps: 1e-5 })
        );
        let reduce = |axes: Vec<usize>| {
            Op::Reduce(Reduce {
                op: ReduceOp::Mean,
                axes,
                keepdims: true,
            })
        };
        assert_eq!(
            RowOp::from_op(&reduce(vec![1]), 2),
            Some(RowOp::Reduce(ReduceOp::Mean))
        );
        assert_eq!(RowOp::from_op(&reduce(vec![0, 1]), 2), None);
        assert_eq!(RowOp::from_op(&Op::Where, 2), None);
        assert_eq!(RowOp::from_op(&Op::Softmax(Softmax { axis: 0 }), 0), None);
    }
}
