//! The one loop shape shared by elementwise and row kernels: f32x4 steps
//! over a run of `len` elements, then single-element steps for `len % 4`,
//! with the exit test at the top of each loop.

use cranelift_codegen::ir::{
    BlockArg, InstBuilder, StackSlot, StackSlotData, StackSlotKind, Type, Value,
};

use super::simd::{Emitter, F32X4, I64};

fn args(values: &[Value]) -> Vec<BlockArg> {
    values.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// Emits the loop at the current position and leaves the builder in the
/// block after it. `state` is a list of f32x4 values threaded through every
/// step; the steps get the byte offset of their first element, the state
/// and the invariants, and return the new state. Returns the final state.
///
/// `invariants` are values computed before the loop (a row's max, mean,
/// 1/sum, ...). Cranelift's elaboration places pure computations at their
/// use, inside the loop, and would redo them (horizontal sums, divisions)
/// on every iteration; block parameters do not help (they are removed as
/// constant phis). So each invariant is stored to a stack slot before the
/// loop and the steps get a load of it, which stays where it is.
pub(crate) fn run_loop(
    e: &mut Emitter<'_, '_>,
    len: Value,
    state: Vec<Value>,
    invariants: &[Value],
    mut vector_step: impl FnMut(&mut Emitter<'_, '_>, Value, &[Value], &[Value]) -> Vec<Value>,
    mut scalar_step: impl FnMut(&mut Emitter<'_, '_>, Value, &[Value], &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let n_state = state.len();
    let pinned: Vec<(StackSlot, Type)> = invariants.iter().map(|&v| pin(e, v)).collect();
    // Block parameters: [off, count, state...].
    let make_block = |e: &mut Emitter<'_, '_>, ints: usize| {
        let block = e.fb.create_block();
        let mut params = Vec::new();
        for _ in 0..ints {
            params.push(e.fb.append_block_param(block, I64));
        }
        for _ in 0..n_state {
            params.push(e.fb.append_block_param(block, F32X4));
        }
        (block, params)
    };
    let split = |e: &mut Emitter<'_, '_>, params: &[Value]| -> (Vec<Value>, Vec<Value>) {
        let inv = pinned
            .iter()
            .map(|&(slot, ty)| e.fb.ins().stack_load(I64, ty, slot, 0))
            .collect();
        (params.to_vec(), inv)
    };
    let (vector_head, vh) = make_block(e, 2);
    let (vector_body, vb) = make_block(e, 2);
    let (scalar_head, sh) = make_block(e, 2);
    let (scalar_body, sb) = make_block(e, 2);
    let done = e.fb.create_block();
    let dp: Vec<Value> = (0..n_state)
        .map(|_| e.fb.append_block_param(done, F32X4))
        .collect();

    let vectors = e.fb.ins().ushr_imm_u(len, 2);
    let rest = e.fb.ins().band_imm_u(len, 3);
    let zero = e.iconst(0);
    let mut init = vec![zero, vectors];
    init.extend(state);
    e.fb.ins().jump(vector_head, &args(&init));

    e.fb.switch_to_block(vector_head);
    let mut to_scalar = vec![vh[0], rest];
    to_scalar.extend_from_slice(&vh[2..]);
    e.fb.ins().brif(
        vh[1],
        vector_body,
        &args(&vh),
        scalar_head,
        &args(&to_scalar),
    );

    e.fb.switch_to_block(vector_body);
    let (state, inv) = split(e, &vb[2..]);
    let next = vector_step(e, vb[0], &state, &inv);
    assert_eq!(next.len(), n_state, "vector step must keep the state arity");
    let off = e.fb.ins().iadd_imm_s(vb[0], 16);
    let count = e.fb.ins().iadd_imm_s(vb[1], -1);
    let mut back = vec![off, count];
    back.extend(next);
    e.fb.ins().jump(vector_head, &args(&back));

    e.fb.switch_to_block(scalar_head);
    e.fb.ins().brif(
        sh[1],
        scalar_body,
        &args(&sh),
        done,
        &args(&sh[2..2 + n_state]),
    );

    e.fb.switch_to_block(scalar_body);
    let (state, inv) = split(e, &sb[2..]);
    let next = scalar_step(e, sb[0], &state, &inv);
    assert_eq!(next.len(), n_state, "scalar step must keep the state arity");
    let off = e.fb.ins().iadd_imm_s(sb[0], 4);
    let count = e.fb.ins().iadd_imm_s(sb[1], -1);
    let mut back = vec![off, count];
    back.extend(next);
    e.fb.ins().jump(scalar_head, &args(&back));

    e.fb.switch_to_block(done);
    dp
}

/// Stores `v` in a fresh stack slot (see `run_loop` for why).
fn pin(e: &mut Emitter<'_, '_>, v: Value) -> (StackSlot, Type) {
    let ty = e.fb.func.dfg.value_type(v);
    let slot = e.fb.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        ty.bytes(),
        4,
    ));
    e.fb.ins().stack_store(I64, v, slot, 0);
    (slot, ty)
}
