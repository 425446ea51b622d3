//! The GEMM micro-kernel in CLIF: `rows` rows of packed A times `vecs`
//! 4-column panels of packed B, accumulated in `rows * vecs` f32x4
//! registers, with the fused epilogue before the store.
//!
//! Signature (all pointer-sized integers, byte strides):
//! `(a, b, c, kc, ldc, flags, bias, residual, b_panel_stride, prefetch)`.
//! - `a`: packed A panel `[kc][rows]`; `b`: first B panel `[kc][4]`, the
//!   next panels `b_panel_stride` bytes apart;
//! - `c`, `residual`: top-left output element, rows `ldc` bytes apart;
//! - `flags`: `FLAG_ACCUMULATE` = add into C (later K blocks);
//!   `FLAG_EPILOGUE` marks the last K block, where `FLAG_BIAS`,
//!   `FLAG_RELU`, `FLAG_CAP6` (min with 6: relu6 with the relu) and
//!   `FLAG_RESIDUAL` apply in that order; `bias` points at
//!   the first panel's columns. Other activations run in `emit_tile_pass`.
//! - `prefetch`: where B data the driver will need next starts; the wide
//!   tiers' kernels pull `kc` cache lines from there into L2 while they
//!   compute (a hint: it never faults and changes no result). This f32x4
//!   kernel ignores it.
//!
//! Shape of the code (facts from the notes on this machine): loads of A
//! and B are readonly+notrap+can_move so A broadcasts fold into
//! `vbroadcastss m32` and nothing is hoisted into spills; the loop test is
//! at the top so every accumulator value has a single use; K is unrolled
//! twice with a one-step tail for odd `kc`. Each output element is one
//! sequential fused multiply-add chain over k in every variant, so results
//! do not depend on the variant, the tiling or the thread count.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{Block, BlockArg, InstBuilder, Value};

use super::Activation;
use crate::codegen::simd::{Emitter, F32X4, I64};

pub(crate) const FLAG_ACCUMULATE: usize = 1;
pub(crate) const FLAG_EPILOGUE: usize = 2;
pub(crate) const FLAG_BIAS: usize = 4;
pub(crate) const FLAG_RELU: usize = 8;
pub(crate) const FLAG_RESIDUAL: usize = 16;
/// `min(x, 6)` after the relu: with `FLAG_RELU`, relu6.
pub(crate) const FLAG_CAP6: usize = 32;
/// The cap `FLAG_CAP6` applies.
pub(crate) const CAP6: f32 = 6.0;
pub(crate) const MICRO_KERNEL_PARAMS: usize = 10;

/// Rows and 4-column panels of one micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MicroShape {
    pub(crate) rows: usize,
    pub(crate) vecs: usize,
}

/// The widest panel group for a row count: short row panels (the M edge,
/// or small batches) use several B panels so the kernel still has enough
/// independent accumulator chains to hide FMA latency, while keeping
/// accumulators + B vectors + one broadcast within 16 registers.
pub(crate) fn wide_vecs(rows: usize) -> usize {
    match rows {
        1 | 2 => 4,
        3 => 3,
        4 | 5 => 2,
        _ => 1,
    }
}

fn args(values: &[Value]) -> Vec<BlockArg> {
    values.iter().map(|&v| BlockArg::Value(v)).collect()
}

fn block_with_params(e: &mut Emitter<'_, '_>, ints: usize, vectors: usize) -> (Block, Vec<Value>) {
    let block = e.fb.create_block();
    let mut params = Vec::with_capacity(ints + vectors);
    for _ in 0..ints {
        params.push(e.fb.append_block_param(block, I64));
    }
    for _ in 0..vectors {
        params.push(e.fb.append_block_param(block, F32X4));
    }
    (block, params)
}

/// One k step: `acc[i][v] += a[k][i] * b_v[k]`.
fn k_step(
    e: &mut Emitter<'_, '_>,
    shape: MicroShape,
    a: Value,
    b_panels: &[Value],
    step: usize,
    accs: &mut [Value],
) {
    let b_vectors: Vec<Value> = b_panels
        .iter()
        .map(|&panel| e.load_input(panel, (step * 16) as i32))
        .collect();
    for i in 0..shape.rows {
        let a_splat = e.load_input_splat(a, ((step * shape.rows + i) * 4) as i32);
        for (v, &b_vector) in b_vectors.iter().enumerate() {
            let acc = &mut accs[i * shape.vecs + v];
            *acc = e.mul_add(a_splat, b_vector, *acc);
        }
    }
}

pub(crate) fn emit_micro_kernel(e: &mut Emitter<'_, '_>, params: &[Value], shape: MicroShape) {
    let [a0, b0, c, kc, ldc, flags, bias, residual, b_stride, _prefetch] = params else {
        unreachable!("micro-kernel has {MICRO_KERNEL_PARAMS} parameters")
    };
    let (a0, b0, c, kc, ldc, flags, bias, residual, b_stride) =
        (*a0, *b0, *c, *kc, *ldc, *flags, *bias, *residual, *b_stride);
    let n_acc = shape.rows * shape.vecs;

    // Row addresses of C and the residual, and offsets of the B panels
    // (used by the prologue/epilogue and loop body respectively).
    let row_offsets: Vec<Value> = (0..shape.rows)
        .map(|i| e.fb.ins().imul_imm_u(ldc, i as i64))
        .collect();
    let panel_offsets: Vec<Value> = (0..shape.vecs)
        .map(|v| e.fb.ins().imul_imm_u(b_stride, v as i64))
        .collect();

    let pairs = e.fb.ins().ushr_imm_u(kc, 1);
    let accumulate = e.fb.ins().band_imm_u(flags, FLAG_ACCUMULATE as i64);
    let (header, header_params) = block_with_params(e, 3, n_acc);
    let zero_block = e.fb.create_block();
    let load_block = e.fb.create_block();
    e.fb.ins()
        .brif(accumulate, load_block, &[], zero_block, &[]);

    e.fb.switch_to_block(zero_block);
    let zero = e.splat_f(0.0);
    let mut init = vec![a0, b0, pairs];
    init.extend(std::iter::repeat_n(zero, n_acc));
    e.fb.ins().jump(header, &args(&init));

    e.fb.switch_to_block(load_block);
    let mut init = vec![a0, b0, pairs];
    for &row_offset in &row_offsets {
        let row = e.fb.ins().iadd(c, row_offset);
        for v in 0..shape.vecs {
            init.push(e.load_output(row, (v * 16) as i32));
        }
    }
    e.fb.ins().jump(header, &args(&init));

    // Loop header: test first, so the body's results feed only the back edge.
    let (body, body_params) = block_with_params(e, 3, n_acc);
    let (after, after_params) = block_with_params(e, 2, n_acc);
    e.fb.switch_to_block(header);
    let count = header_params[2];
    let mut to_after = vec![header_params[0], header_params[1]];
    to_after.extend_from_slice(&header_params[3..]);
    e.fb.ins()
        .brif(count, body, &args(&header_params), after, &args(&to_after));

    e.fb.switch_to_block(body);
    let (a, b, count) = (body_params[0], body_params[1], body_params[2]);
    let b_panels: Vec<Value> = panel_offsets
        .iter()
        .enumerate()
        .map(|(v, &off)| if v == 0 { b } else { e.fb.ins().iadd(b, off) })
        .collect();
    let mut accs = body_params[3..].to_vec();
    k_step(e, shape, a, &b_panels, 0, &mut accs);
    k_step(e, shape, a, &b_panels, 1, &mut accs);
    let a_next = e.fb.ins().iadd_imm_s(a, (2 * shape.rows * 4) as i64);
    let b_next = e.fb.ins().iadd_imm_s(b, 32);
    let count_next = e.fb.ins().iadd_imm_s(count, -1);
    let mut back = vec![a_next, b_next, count_next];
    back.extend_from_slice(&accs);
    e.fb.ins().jump(header, &args(&back));

    // Odd kc: one more k step.
    let (tail, tail_params) = block_with_params(e, 2, n_acc);
    let (finish, finish_params) = block_with_params(e, 0, n_acc);
    e.fb.switch_to_block(after);
    let odd = e.fb.ins().band_imm_u(kc, 1);
    e.fb.ins().brif(
        odd,
        tail,
        &args(&after_params),
        finish,
        &args(&after_params[2..]),
    );

    e.fb.switch_to_block(tail);
    let (a, b) = (tail_params[0], tail_params[1]);
    let b_panels: Vec<Value> = panel_offsets
        .iter()
        .enumerate()
        .map(|(v, &off)| if v == 0 { b } else { e.fb.ins().iadd(b, off) })
        .collect();
    let mut accs = tail_params[2..].to_vec();
    k_step(e, shape, a, &b_panels, 0, &mut accs);
    e.fb.ins().jump(finish, &args(&accs));

    e.fb.switch_to_block(finish);
    let accs = finish_params;
    // Epilogue steps, each behind a runtime flag tested once per call
    // (outside the K loop), so one kernel set serves every epilogue.
    let steps: [(usize, EpilogueStep); 4] = [
        (FLAG_BIAS, EpilogueStep::Bias),
        (FLAG_RELU, EpilogueStep::Relu),
        (FLAG_CAP6, EpilogueStep::Cap6),
        (FLAG_RESIDUAL, EpilogueStep::Residual),
    ];
    let mut accs = accs;
    for (flag, step) in steps {
        let (apply, apply_params) = block_with_params(e, 0, n_acc);
        let (next, next_params) = block_with_params(e, 0, n_acc);
        // Epilogue flags only count on the last K block.
        let active = e.fb.ins().band_imm_u(flags, (flag | FLAG_EPILOGUE) as i64);
        let wanted =
            e.fb.ins()
                .icmp_imm_u(IntCC::Equal, active, (flag | FLAG_EPILOGUE) as i64);
        e.fb.ins()
            .brif(wanted, apply, &args(&accs), next, &args(&accs));
        e.fb.switch_to_block(apply);
        let mut out = apply_params;
        match step {
            EpilogueStep::Bias => {
                let bias_vectors: Vec<Value> = (0..shape.vecs)
                    .map(|v| e.load_input(bias, (v * 16) as i32))
                    .collect();
                for (j, x) in out.iter_mut().enumerate() {
                    *x = e.add(*x, bias_vectors[j % shape.vecs]);
                }
            }
            EpilogueStep::Relu => {
                for x in out.iter_mut() {
                    *x = e.relu(*x);
                }
            }
            EpilogueStep::Cap6 => {
                // As the unfused relu6's second half: NaN passes through.
                let cap = e.splat_f(CAP6);
                for x in out.iter_mut() {
                    *x = e.min_keep_nan(*x, cap);
                }
            }
            EpilogueStep::Residual => {
                for (i, &row_offset) in row_offsets.iter().enumerate() {
                    let row = e.fb.ins().iadd(residual, row_offset);
                    for v in 0..shape.vecs {
                        let r = e.load_input(row, (v * 16) as i32);
                        let x = &mut out[i * shape.vecs + v];
                        *x = e.add(*x, r);
                    }
                }
            }
        }
        e.fb.ins().jump(next, &args(&out));
        e.fb.switch_to_block(next);
        accs = next_params;
    }
    store_tile(e, shape, c, &row_offsets, &accs);
    e.fb.ins().return_(&[]);
}

#[derive(Clone, Copy)]
enum EpilogueStep {
    Bias,
    Relu,
    Cap6,
    Residual,
}

pub(crate) const TILE_PASS_PARAMS: usize = 6;

/// The epilogue for the transcendental activations, as its own function:
/// `(c, residual, ldc, rows, vecs, flags)` applies
/// `c = act(c) (+ residual if flags & FLAG_RESIDUAL)` to a stored
/// `rows x (4 * vecs)` tile. Emitting these activations once per
/// accumulator in every micro-kernel made a GELU kernel set take ~80 ms to
/// compile; applied to the just-stored tile (in L1) they cost little and
/// give bit-identical values.
pub(crate) fn emit_tile_pass(e: &mut Emitter<'_, '_>, params: &[Value], activation: Activation) {
    let [c, residual, ldc, rows, vecs, flags] = params else {
        unreachable!("tile pass has {TILE_PASS_PARAMS} parameters")
    };
    let (c, residual, ldc, rows, vecs, flags) = (*c, *residual, *ldc, *rows, *vecs, *flags);
    let row_bytes = e.fb.ins().ishl_imm_u(vecs, 4);
    let add_residual = e.fb.ins().band_imm_u(flags, FLAG_RESIDUAL as i64);
    // rh = (c_row, residual_row, rows_left)
    let (row_head, rh) = block_with_params(e, 3, 0);
    // vh = (c_ptr, residual_ptr, c_row_end)
    let (vec_head, vh) = block_with_params(e, 3, 0);
    let (vec_body, vb) = block_with_params(e, 3, 0);
    let (with_residual, wr) = block_with_params(e, 3, 1);
    let (store, st) = block_with_params(e, 3, 1);
    let done = e.fb.create_block();
    e.fb.ins().jump(row_head, &args(&[c, residual, rows]));

    e.fb.switch_to_block(row_head);
    let row_end = e.fb.ins().iadd(rh[0], row_bytes);
    let after_row = e.fb.create_block();
    e.fb.ins()
        .brif(rh[2], vec_head, &args(&[rh[0], rh[1], row_end]), done, &[]);

    e.fb.switch_to_block(vec_head);
    let more = e.fb.ins().icmp(IntCC::NotEqual, vh[0], vh[2]);
    e.fb.ins().brif(more, vec_body, &args(&vh), after_row, &[]);

    e.fb.switch_to_block(vec_body);
    let x = e.load_output(vb[0], 0);
    let y = activation.emit(e, x);
    let mut carry = vb.clone();
    carry.push(y);
    e.fb.ins().brif(
        add_residual,
        with_residual,
        &args(&carry),
        store,
        &args(&carry),
    );

    e.fb.switch_to_block(with_residual);
    let r = e.load_input(wr[1], 0);
    let y = e.add(wr[3], r);
    e.fb.ins().jump(store, &args(&[wr[0], wr[1], wr[2], y]));

    e.fb.switch_to_block(store);
    e.store(st[3], st[0], 0);
    let next_c = e.fb.ins().iadd_imm_s(st[0], 16);
    let next_r = e.fb.ins().iadd_imm_s(st[1], 16);
    e.fb.ins().jump(vec_head, &args(&[next_c, next_r, st[2]]));

    // The row loop continues from the row start in `rh`, which dominates.
    e.fb.switch_to_block(after_row);
    let c_row = e.fb.ins().iadd(rh[0], ldc);
    let r_row = e.fb.ins().iadd(rh[1], ldc);
    let left = e.fb.ins().iadd_imm_s(rh[2], -1);
    e.fb.ins().jump(row_head, &args(&[c_row, r_row, left]));

    e.fb.switch_to_block(done);
    e.fb.ins().return_(&[]);
}

fn store_tile(
    e: &mut Emitter<'_, '_>,
    shape: MicroShape,
    c: Value,
    row_offsets: &[Value],
    values: &[Value],
) {
    for (i, &row_offset) in row_offsets.iter().enumerate() {
        let row = e.fb.ins().iadd(c, row_offset);
        for v in 0..shape.vecs {
            e.store(values[i * shape.vecs + v], row, (v * 16) as i32);
        }
    }
}
