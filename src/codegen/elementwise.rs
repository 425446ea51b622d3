//! Fused elementwise kernels: an `ir::ElementwiseExpr` compiled into one
//! vectorised loop over a contiguous run of output elements.
//!
//! Kernel signature: `(out, len, inputs)`, `inputs` pointing at one data
//! pointer per expression input. Each input's inner stride is fixed at
//! compile time: `Contiguous` (one element per output element) or
//! `Broadcast` (one value for the whole run). The Rust driver handles the
//! outer dimensions (numpy broadcasting) by computing each run's base
//! pointers, after checking every shape and slice length.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{BlockArg, InstBuilder, Value};

use super::jit::{JitBuilder, KernelSlot};
use super::simd::{input_flags, Emitter, I64};
use super::threads::{split_range, SharedMut, Threads};
use super::CodegenError;
use crate::ir::{BinaryOp, CompareOp, Dim, ElementwiseExpr, ExprStep, UnaryOp};
use smallvec::SmallVec;

/// How an input advances along the innermost (last) output axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InnerStride {
    /// The input's last dim equals the output's: one element per output element.
    Contiguous,
    /// The input's last dim is 1 (or missing): one value per run.
    Broadcast,
}

impl InnerStride {
    /// The stride an input of this shape has against an output whose last
    /// dim is `out_last`.
    pub fn for_shape(input_shape: &[usize], out_last: usize) -> InnerStride {
        match input_shape.last() {
            Some(&d) if d == out_last && d != 1 => InnerStride::Contiguous,
            _ => InnerStride::Broadcast,
        }
    }

    /// The same decision on symbolic graph shapes (at compile time):
    /// broadcasting is static in the IR (a dim broadcasts only if it is the
    /// literal 1), so this matches every later binding.
    pub fn for_dims(input_shape: &[Dim], out_shape: &[Dim]) -> InnerStride {
        match (input_shape.last(), out_shape.last()) {
            (Some(d), Some(o)) if d == o && !d.is_one() => InnerStride::Contiguous,
            _ => InnerStride::Broadcast,
        }
    }
}

/// A read-only input of an elementwise call: row-major data and its shape,
/// which must broadcast (numpy rules) to the output shape.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub data: &'a [f32],
    pub shape: &'a [usize],
}

pub struct ElementwiseArgs<'a> {
    pub out: &'a mut [f32],
    pub out_shape: &'a [usize],
    pub inputs: &'a [TensorView<'a>],
}

/// An expression value: f32 lanes, or an all-ones/all-zeros lane mask
/// produced by a comparison.
#[derive(Clone, Copy)]
enum Lanes {
    F32(Value),
    Mask(Value),
}

fn as_f32(e: &mut Emitter<'_, '_>, v: Lanes) -> Value {
    match v {
        Lanes::F32(x) => x,
        Lanes::Mask(m) => e.mask_to_f32(m),
    }
}

fn as_mask(e: &mut Emitter<'_, '_>, v: Lanes) -> Value {
    match v {
        Lanes::F32(x) => e.f32_to_mask(x),
        Lanes::Mask(m) => m,
    }
}

fn float_cc(op: CompareOp) -> FloatCC {
    match op {
        CompareOp::Lt => FloatCC::LessThan,
        CompareOp::Le => FloatCC::LessThanOrEqual,
        CompareOp::Gt => FloatCC::GreaterThan,
        CompareOp::Ge => FloatCC::GreaterThanOrEqual,
        CompareOp::Eq => FloatCC::Equal,
        // `ne` is true for unordered operands, like numpy's `!=`.
        CompareOp::Ne => FloatCC::NotEqual,
    }
}

/// Whether `emit_unary` has code for `op`. Ops without it make the whole
/// expression unsupported (the planner then runs the node on the interpreter).
pub(crate) fn has_vector_code(op: UnaryOp) -> bool {
    !matches!(op, UnaryOp::Sin | UnaryOp::Cos)
}

pub(crate) fn emit_unary(e: &mut Emitter<'_, '_>, op: UnaryOp, x: Value) -> Value {
    match op {
        UnaryOp::Neg => e.neg(x),
        UnaryOp::Relu => e.relu(x),
        UnaryOp::Sigmoid => e.sigmoid(x),
        UnaryOp::Tanh => e.tanh(x),
        UnaryOp::Gelu => e.gelu(x),
        UnaryOp::GeluTanh => e.gelu_tanh(x),
        UnaryOp::Exp => e.exp(x),
        UnaryOp::Log => e.log(x),
        UnaryOp::Sqrt => e.sqrt(x),
        UnaryOp::Rsqrt => {
            // sqrt then divide: both correctly rounded, unlike rsqrtps.
            let s = e.sqrt(x);
            e.recip(s)
        }
        UnaryOp::Erf => e.erf(x),
        UnaryOp::Abs => e.abs(x),
        UnaryOp::Recip => e.recip(x),
        UnaryOp::Relu6 => e.clamp_keep_nan(x, 0.0, 6.0),
        // relu6(x + 3) / 6 as a product with the rounded 1/6: within 1.5 ulp of the f64 value.
        UnaryOp::HardSigmoid => {
            let shifted = e.add_const(x, 3.0);
            let clamped = e.clamp_keep_nan(shifted, 0.0, 6.0);
            e.mul_const(clamped, 1.0 / 6.0)
        }
        UnaryOp::HardSwish => {
            let shifted = e.add_const(x, 3.0);
            let clamped = e.clamp_keep_nan(shifted, 0.0, 6.0);
            let gate = e.mul_const(clamped, 1.0 / 6.0);
            e.mul(x, gate)
        }
        UnaryOp::Sin | UnaryOp::Cos => {
            unreachable!("validate rejects unary ops without vector code")
        }
    }
}

/// Whether the code generator takes `expr` over `inputs` inputs (the
/// planner asks before choosing this kernel for a node).
pub fn supports(expr: &ElementwiseExpr, inputs: usize) -> Result<(), CodegenError> {
    validate(expr, inputs)
}

/// Checks step references and that the result is f32, before any code is
/// emitted (a malformed expression must be an error, not a panic).
fn validate(expr: &ElementwiseExpr, inputs: usize) -> Result<(), CodegenError> {
    // (`expr` is not printed: its Display follows step references, which
    // are what is being checked.)
    let bad = |i: usize, what: String| CodegenError::InvalidExpr(format!("step {i}: {what}"));
    if expr.steps.is_empty() {
        return Err(CodegenError::InvalidExpr(
            "the expression has no steps".into(),
        ));
    }
    let mut is_mask = Vec::with_capacity(expr.steps.len());
    for (i, step) in expr.steps.iter().enumerate() {
        let refs: Vec<usize> = match step {
            ExprStep::Input(k) => {
                if *k >= inputs {
                    return Err(bad(
                        i,
                        format!("input {k} but the kernel has {inputs} inputs"),
                    ));
                }
                vec![]
            }
            ExprStep::Const(_) => vec![],
            ExprStep::Unary(op, a) => {
                if !has_vector_code(*op) {
                    return Err(CodegenError::Unsupported(format!(
                        "`{}` has no vector code; the node runs on the interpreter",
                        op.name()
                    )));
                }
                vec![*a]
            }
            ExprStep::Binary(_, a, b) | ExprStep::Compare(_, a, b) => vec![*a, *b],
            ExprStep::Where(c, a, b) => vec![*c, *a, *b],
        };
        if let Some(r) = refs.iter().find(|&&r| r >= i) {
            return Err(bad(i, format!("refers to step {r}, which is not earlier")));
        }
        is_mask.push(matches!(step, ExprStep::Compare(..)));
    }
    if is_mask.last() == Some(&true) {
        return Err(CodegenError::Unsupported(format!(
            "elementwise expression `{expr}` produces a boolean; kernels produce f32"
        )));
    }
    Ok(())
}

fn emit_expr(e: &mut Emitter<'_, '_>, expr: &ElementwiseExpr, inputs: &[Value]) -> Value {
    let mut values: Vec<Lanes> = Vec::with_capacity(expr.steps.len());
    for step in &expr.steps {
        let v = match *step {
            ExprStep::Input(k) => Lanes::F32(inputs[k]),
            ExprStep::Const(c) => Lanes::F32(e.splat_f(c.0)),
            ExprStep::Unary(op, a) => {
                let x = as_f32(e, values[a]);
                Lanes::F32(emit_unary(e, op, x))
            }
            ExprStep::Binary(op, a, b) => {
                let x = as_f32(e, values[a]);
                if let (BinaryOp::Pow, ExprStep::Const(c)) = (op, &expr.steps[b]) {
                    Lanes::F32(e.pow_const(x, c.0))
                } else {
                    let y = as_f32(e, values[b]);
                    Lanes::F32(match op {
                        BinaryOp::Add => e.add(x, y),
                        BinaryOp::Sub => e.sub(x, y),
                        BinaryOp::Mul => e.mul(x, y),
                        BinaryOp::Div => e.div(x, y),
                        BinaryOp::Pow => e.pow(x, y),
                        BinaryOp::Max => e.fmax(x, y),
                        BinaryOp::Min => e.fmin(x, y),
                    })
                }
            }
            ExprStep::Compare(op, a, b) => {
                let x = as_f32(e, values[a]);
                let y = as_f32(e, values[b]);
                Lanes::Mask(e.fcmp(float_cc(op), x, y))
            }
            ExprStep::Where(c, a, b) => {
                let m = as_mask(e, values[c]);
                let x = as_f32(e, values[a]);
                let y = as_f32(e, values[b]);
                Lanes::F32(e.select(m, x, y))
            }
        };
        values.push(v);
    }
    match values.last() {
        Some(&Lanes::F32(v)) => v,
        _ => unreachable!("validated: the expression ends in an f32 step"),
    }
}

/// Elements per loop iteration: two independent f32x4 evaluations, each
/// reading its own copy of the constants (shared constants would be held
/// in registers across both and spill).
pub(crate) const STEP: usize = 8;

fn args(values: &[Value]) -> Vec<BlockArg> {
    values.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// `(out, len, inputs)` with `len % STEP == 0` (the driver runs the
/// remainder through padded copies).
fn emit_kernel(
    e: &mut Emitter<'_, '_>,
    p: &[Value],
    expr: &ElementwiseExpr,
    strides: &[InnerStride],
) {
    let (out, len, table) = (p[0], p[1], p[2]);
    // Each input's pointer, or its broadcast value. (These are cheap loads;
    // Cranelift may place them inside the loop, which costs an L1 hit.)
    let inputs: Vec<Value> = strides
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ptr = e.fb.ins().load(I64, input_flags(), table, (i * 8) as i32);
            match s {
                InnerStride::Contiguous => ptr,
                InnerStride::Broadcast => e.load_input_splat(ptr, 0),
            }
        })
        .collect();
    let head = e.fb.create_block();
    let h_off = e.fb.append_block_param(head, I64);
    let h_count = e.fb.append_block_param(head, I64);
    let body = e.fb.create_block();
    let exit = e.fb.create_block();
    let steps = e.fb.ins().ushr_imm_u(len, STEP.trailing_zeros() as i64);
    let zero = e.iconst(0);
    e.fb.ins().jump(head, &args(&[zero, steps]));

    // Test at the top; the body runs with the head's values.
    e.fb.switch_to_block(head);
    e.fb.ins().brif(h_count, body, &[], exit, &[]);

    e.fb.switch_to_block(body);
    for half in 0..STEP / 4 {
        e.set_constant_copy(half as u8);
        let offset = (half * 16) as i32;
        let xs: Vec<Value> = strides
            .iter()
            .zip(&inputs)
            .map(|(s, &v)| match s {
                InnerStride::Broadcast => v,
                InnerStride::Contiguous => {
                    let at = e.fb.ins().iadd(v, h_off);
                    e.load_input(at, offset)
                }
            })
            .collect();
        let y = emit_expr(e, expr, &xs);
        let at = e.fb.ins().iadd(out, h_off);
        e.store(y, at, offset);
    }
    e.set_constant_copy(0);
    let next_off = e.fb.ins().iadd_imm_s(h_off, (STEP * 4) as i64);
    let next_count = e.fb.ins().iadd_imm_s(h_count, -1);
    e.fb.ins().jump(head, &args(&[next_off, next_count]));

    e.fb.switch_to_block(exit);
    e.fb.ins().return_(&[]);
}

pub(crate) struct ElementwiseSlot {
    slot: KernelSlot,
    strides: Vec<InnerStride>,
}

pub(crate) fn compile(
    jit: &mut JitBuilder,
    name: &str,
    expr: &ElementwiseExpr,
    strides: &[InnerStride],
) -> Result<ElementwiseSlot, CodegenError> {
    validate(expr, strides.len())?;
    let slot = jit.define(name, 3, |e, p| emit_kernel(e, p, expr, strides))?;
    Ok(ElementwiseSlot {
        slot,
        strides: strides.to_vec(),
    })
}

type ElementwiseFn = unsafe extern "C" fn(out: *mut f32, len: usize, inputs: *const *const f32);

pub(crate) struct ElementwiseKernel {
    f: ElementwiseFn,
    strides: Vec<InnerStride>,
}

impl ElementwiseSlot {
    pub(crate) fn link(&self, addresses: &[usize]) -> ElementwiseKernel {
        let address = addresses[self.slot.0];
        assert_ne!(address, 0, "finalized function has a null address");
        ElementwiseKernel {
            // SAFETY: the function was compiled by `compile` with three
            // pointer-sized parameters and no results.
            f: unsafe { std::mem::transmute::<usize, ElementwiseFn>(address) },
            strides: self.strides.clone(),
        }
    }
}

/// Below this many output elements a call stays on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

fn err(what: String) -> CodegenError {
    CodegenError::shape("elementwise", what)
}

/// Dims or strides of one tensor: inline up to the executor's native rank
/// limit, so a call allocates nothing (larger ranks spill to the heap).
type Dims = SmallVec<[usize; 8]>;
/// One entry per input: inline up to the executor's operand limit.
type PerInput<T> = SmallVec<[T; 16]>;

/// The iteration space after dropping size-1 output dims and merging
/// dims that every input walks contiguously (or not at all).
struct Layout {
    outer: Dims,
    /// Per input, strides of the outer dims.
    outer_strides: PerInput<Dims>,
    inner: usize,
}

fn collapse(out_shape: &[usize], strides: &[Dims], squeeze: bool) -> Layout {
    let keep: Dims = (0..out_shape.len())
        .filter(|&d| !squeeze || out_shape[d] != 1)
        .collect();
    let mut dims: Dims = keep.iter().map(|&d| out_shape[d]).collect();
    let mut st: PerInput<Dims> = strides
        .iter()
        .map(|s| keep.iter().map(|&d| s[d]).collect())
        .collect();
    if dims.is_empty() {
        dims.push(1);
        st.iter_mut().for_each(|s| s.push(0));
    }
    // Merge dim d-1 into d (from the inside out) while every input agrees.
    let mut d = dims.len() - 1;
    while d > 0 {
        let mergeable = st.iter().all(|s| s[d - 1] == s[d] * dims[d]);
        if mergeable {
            dims[d - 1] *= dims[d];
            dims.remove(d);
            for s in st.iter_mut() {
                s.remove(d - 1);
            }
        }
        d -= 1;
    }
    let inner = *dims.last().expect("at least one dim");
    dims.pop();
    for s in st.iter_mut() {
        s.pop();
    }
    Layout {
        outer: dims,
        outer_strides: st,
        inner,
    }
}

/// Per-task buffers reused across runs.
#[derive(Default)]
struct SpanScratch {
    pointers: PerInput<*const f32>,
    padded: PerInput<[f32; STEP]>,
}

impl ElementwiseKernel {
    /// One run: `out[c] = expr(runs[i][c] or runs[i][0])`. The kernel
    /// handles multiples of STEP; the remainder goes through zero-padded
    /// copies on the stack, through the same code.
    fn run_span(&self, out: &mut [f32], runs: &[&[f32]], scratch: &mut SpanScratch) {
        let len = out.len();
        let main = len - len % STEP;
        let SpanScratch { pointers, padded } = scratch;
        pointers.clear();
        pointers.extend(runs.iter().map(|r| r.as_ptr()));
        if main > 0 {
            // SAFETY: every contiguous run holds `len >= main` values (a
            // broadcast run is read at index 0 only), `out` holds `len`.
            unsafe { (self.f)(out.as_mut_ptr(), main, pointers.as_ptr()) };
        }
        let rest = len - main;
        if rest > 0 {
            padded.clear();
            padded.resize(runs.len(), [0.0f32; STEP]);
            for ((p, run), (buffer, stride)) in pointers
                .iter_mut()
                .zip(runs)
                .zip(padded.iter_mut().zip(&self.strides))
            {
                if *stride == InnerStride::Contiguous {
                    buffer[..rest].copy_from_slice(&run[main..]);
                    *p = buffer.as_ptr();
                }
            }
            let mut out_buffer = [0.0f32; STEP];
            // SAFETY: the padded buffers and `out_buffer` hold STEP values;
            // broadcast runs are read at index 0.
            unsafe { (self.f)(out_buffer.as_mut_ptr(), STEP, pointers.as_ptr()) };
            out[main..].copy_from_slice(&out_buffer[..rest]);
        }
    }

    pub(crate) fn run(
        &self,
        args: ElementwiseArgs<'_>,
        threads: &Threads,
    ) -> Result<(), CodegenError> {
        let ElementwiseArgs {
            out,
            out_shape,
            inputs,
        } = args;
        if inputs.len() != self.strides.len() {
            return Err(err(format!(
                "the kernel takes {} inputs, {} given",
                self.strides.len(),
                inputs.len()
            )));
        }
        let total = out_shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err("output size overflows".into()))?;
        if out.len() != total {
            return Err(err(format!(
                "output shape {out_shape:?} needs {total} f32, got {}",
                out.len()
            )));
        }
        let rank = out_shape.len();
        let mut strides: PerInput<Dims> = PerInput::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let len = input
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| err("input size overflows".into()))?;
            if input.data.len() != len {
                return Err(err(format!(
                    "input {i} has shape {:?} but holds {} f32",
                    input.shape,
                    input.data.len()
                )));
            }
            if input.shape.len() > rank {
                return Err(err(format!(
                    "input {i} of shape {:?} has more dims than the output {out_shape:?}",
                    input.shape
                )));
            }
            let mut s: Dims = smallvec::smallvec![0usize; rank];
            let mut stride = 1;
            for (j, &d) in input.shape.iter().enumerate().rev() {
                let o = rank - input.shape.len() + j;
                if d != out_shape[o] && d != 1 {
                    return Err(err(format!(
                        "input {i} of shape {:?} does not broadcast to {out_shape:?}",
                        input.shape
                    )));
                }
                s[o] = if d == 1 { 0 } else { stride };
                stride *= d;
            }
            strides.push(s);
        }
        if total == 0 {
            return Ok(());
        }
        // Prefer the squeezed layout (size-1 dims dropped: longer runs);
        // fall back to the literal one when squeezing changes which inputs
        // vary along the run.
        let rank_dims = |squeeze: bool| (0..rank).rev().find(|&d| !squeeze || out_shape[d] != 1);
        let mut chosen = None;
        for squeeze in [true, false] {
            let layout = collapse(out_shape, &strides, squeeze);
            if run_strides_match(&layout, &strides, rank_dims(squeeze), &self.strides) {
                chosen = Some(layout);
                break;
            }
        }
        let Some(layout) = chosen else {
            return Err(err(format!(
                "input shapes {:?} do not match the inner strides the kernel was compiled for ({:?})",
                inputs.iter().map(|i| i.shape).collect::<Vec<_>>(),
                self.strides
            )));
        };
        self.run_layout(&layout, out, inputs, threads);
        Ok(())
    }

    fn run_layout(
        &self,
        layout: &Layout,
        out: &mut [f32],
        inputs: &[TensorView<'_>],
        threads: &Threads,
    ) {
        let rows: usize = layout.outer.iter().product();
        let inner = layout.inner;
        let out_ptr = SharedMut(out.as_mut_ptr());
        // (row range, column range) tasks: rows when there are many, else
        // column chunks of the single long run.
        let parallel = threads.count() > 1 && rows * inner >= PARALLEL_MIN_ELEMENTS;
        let inner_steps: PerInput<usize> = self
            .strides
            .iter()
            .map(|s| match s {
                InnerStride::Contiguous => 1,
                InnerStride::Broadcast => 0,
            })
            .collect();
        let run_task = |(rows, cols): &(std::ops::Range<usize>, std::ops::Range<usize>)| {
            let mut runs: PerInput<&[f32]> = PerInput::with_capacity(inputs.len());
            let mut scratch = SpanScratch::default();
            let mut input_offsets: PerInput<usize> = smallvec::smallvec![0usize; inputs.len()];
            for row in rows.clone() {
                // Offsets of this run in every input.
                let mut rem = row;
                input_offsets.fill(0);
                for d in (0..layout.outer.len()).rev() {
                    let i = rem % layout.outer[d];
                    rem /= layout.outer[d];
                    for (o, s) in input_offsets.iter_mut().zip(&layout.outer_strides) {
                        *o += i * s[d];
                    }
                }
                // Each input's elements for this run: `cols.len()` values, or
                // the one broadcast value. (Validation made these in bounds;
                // slicing re-checks.)
                runs.clear();
                for ((input, &base), &step) in inputs.iter().zip(&input_offsets).zip(&inner_steps) {
                    runs.push(if step == 1 {
                        &input.data[base + cols.start..base + cols.end]
                    } else {
                        &input.data[base..base + 1]
                    });
                }
                let out_start = row * inner + cols.start;
                // SAFETY: `out_start..out_start + cols.len()` is inside `out`
                // and owned by this task alone (tasks partition rows x
                // columns of the output).
                let out_run = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add(out_start), cols.len())
                };
                self.run_span(out_run, &runs, &mut scratch);
            }
        };
        if !parallel {
            // The per-inference path on one thread: one task, no task list.
            run_task(&(0..rows, 0..inner));
            return;
        }
        let parts = 4 * threads.count();
        let tasks: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = if rows >= parts {
            split_range(rows, parts, 1)
                .into_iter()
                .map(|r| (r, 0..inner))
                .collect()
        } else {
            let cols = split_range(inner, parts.div_ceil(rows), 16);
            (0..rows)
                .flat_map(|r| cols.iter().map(move |c| (r..r + 1, c.clone())))
                .collect()
        };
        threads.for_each(&tasks, run_task);
    }
}

/// Whether every input's stride along the run (output dim `run_dim`, the
/// innermost dim that survived collapsing) is what the kernel was compiled
/// for. Runs of one element read one value either way.
fn run_strides_match(
    layout: &Layout,
    strides: &[Dims],
    run_dim: Option<usize>,
    compiled: &[InnerStride],
) -> bool {
    let Some(d) = run_dim else { return true };
    layout.inner == 1
        || strides.iter().zip(compiled).all(|(s, c)| match c {
            InnerStride::Contiguous => s[d] == 1,
            InnerStride::Broadcast => s[d] == 0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_contiguous_dims() {
        // [2, 3, 4] + [4]: the bias is stride 0 on the outer dims.
        let out = [2, 3, 4];
        let dims = |d: &[usize]| Dims::from_slice(d);
        let strides = [dims(&[12, 4, 1]), dims(&[0, 0, 1])];
        let l = collapse(&out, &strides, true);
        assert_eq!(l.outer.as_slice(), &[6]);
        assert_eq!(l.inner, 4);
        assert_eq!(l.outer_strides.as_slice(), &[dims(&[4]), dims(&[0])]);
        // Everything contiguous: one run.
        let l = collapse(&out, &[dims(&[12, 4, 1])], true);
        assert!(l.outer.is_empty());
        assert_eq!(l.inner, 24);
        // [2, 3, 1] output: squeezing removes the trailing 1.
        let l = collapse(&[2, 3, 1], &[dims(&[3, 1, 0])], true);
        assert_eq!((l.outer.len(), l.inner), (0, 6));
    }

    #[test]
    fn invalid_expressions_are_errors() {
        let forward = ElementwiseExpr {
            steps: vec![ExprStep::Unary(UnaryOp::Exp, 1), ExprStep::Input(0)],
        };
        assert!(matches!(
            validate(&forward, 1),
            Err(CodegenError::InvalidExpr(_))
        ));
        let missing_input = ElementwiseExpr {
            steps: vec![ExprStep::Input(2)],
        };
        assert!(validate(&missing_input, 2).is_err());
        let boolean = ElementwiseExpr {
            steps: vec![
                ExprStep::Input(0),
                ExprStep::Input(1),
                ExprStep::Compare(CompareOp::Lt, 0, 1),
            ],
        };
        assert!(matches!(
            validate(&boolean, 2),
            Err(CodegenError::Unsupported(_))
        ));
        assert!(validate(&ElementwiseExpr { steps: vec![] }, 0).is_err());
    }

    #[test]
    fn inner_stride_for_shape() {
        assert_eq!(InnerStride::for_shape(&[3, 4], 4), InnerStride::Contiguous);
        assert_eq!(InnerStride::for_shape(&[3, 1], 4), InnerStride::Broadcast);
        assert_eq!(InnerStride::for_shape(&[], 4), InnerStride::Broadcast);
        assert_eq!(InnerStride::for_shape(&[1], 1), InnerStride::Broadcast);
        let seq = Dim::symbol("seq");
        let d = Dim::known(64);
        assert_eq!(
            InnerStride::for_dims(&[seq.clone(), d.clone()], &[seq.clone(), d.clone()]),
            InnerStride::Contiguous
        );
        assert_eq!(
            InnerStride::for_dims(&[seq.clone(), Dim::known(1)], &[seq.clone(), d]),
            InnerStride::Broadcast
        );
        assert_eq!(InnerStride::for_dims(&[], &[seq]), InnerStride::Broadcast);
    }
}
