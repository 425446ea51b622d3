//! The values constant folding computes, independently of the reference
//! interpreter, so that comparing a folded graph against the interpreter
//! checks something.
//!
//! Only ops whose result is fully determined without a choice of
//! algorithm are evaluated here:
//!
//! - data movement (`permute`, `reshape`, `slice`, `concat`, `cast`):
//!   every output element is a copy (or a Rust `as` conversion) of one
//!   input element, so the result is exact;
//! - f32 elementwise ops that IEEE 754 defines as correctly rounded
//!   (`add`, `sub`, `mul`, `div`, `sqrt`, `recip` as `1 / x`) or that
//!   only select or flip a sign (`neg`, `abs`, `maximum`, `minimum`),
//!   with numpy broadcasting. Each is one f32 operation,
//!   rounded once, as a kernel computes it; a correctly rounded f32 result
//!   is also what the interpreter's f64-then-round gives, which is why
//!   folding changes no bit of a model's output.
//!
//! `relu` is left out: the sign of `relu(-0.0)` differs between the
//! interpreter (+0.0) and a plain `x < 0 ? 0 : x` (-0.0), and which one is
//! meant is not settled. Everything else (`exp`, `tanh`, `pow`,
//! reductions, matmul, gather, ...)
//! returns `None` and is not folded: its f32 value depends on how it is
//! computed, and an approximation here would make folded and unfolded
//! graphs disagree.

use crate::ir::ops::{Cast, Concat, Permute, Slice};
use crate::ir::{BinaryOp, DType, Op, UnaryOp};
use crate::tensor::{strides, Tensor, TensorData};

/// The value of `op` on `inputs` with output shape `out`, or `None` when
/// the op is outside the set above or its operands do not fit it (left in
/// place, so the error, if any, is reported when the model runs).
pub fn eval(op: &Op, inputs: &[&Tensor], out: &[usize]) -> Option<Tensor> {
    match (op, inputs) {
        (Op::Unary(u), [x]) => unary(*u, x),
        (Op::Binary(b), [a, c]) => binary(*b, a, c, out),
        (Op::Permute(Permute { perm }), [x]) => permute(x, perm, out),
        (Op::Reshape(_), [x]) => {
            if out.iter().product::<usize>() != x.len() {
                return None;
            }
            Some(Tensor::clone(x).reshaped(out.to_vec()))
        }
        (
            Op::Slice(Slice {
                axis, start, step, ..
            }),
            [x],
        ) => slice(x, *axis, *start, *step, out),
        (Op::Concat(Concat { axis }), parts) if !parts.is_empty() => concat(parts, *axis, out),
        (Op::Cast(Cast { to }), [x]) => Some(cast(x, *to)),
        _ => None,
    }
}

fn unary(op: UnaryOp, x: &Tensor) -> Option<Tensor> {
    let f: fn(f32) -> f32 = match op {
        UnaryOp::Neg => |v| -v,
        UnaryOp::Abs => f32::abs,
        UnaryOp::Sqrt => f32::sqrt,
        UnaryOp::Recip => |v| 1.0 / v,
        _ => return None,
    };
    let values = x.as_f32()?;
    Some(Tensor::f32(
        x.shape().to_vec(),
        values.iter().map(|&v| f(v)).collect(),
    ))
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &[usize]) -> Option<Tensor> {
    let f: fn(f32, f32) -> f32 = match op {
        BinaryOp::Add => |x, y| x + y,
        BinaryOp::Sub => |x, y| x - y,
        BinaryOp::Mul => |x, y| x * y,
        BinaryOp::Div => |x, y| x / y,
        // numpy: NaN in either operand wins; on ties (0.0 vs -0.0) the
        // left operand is returned. `f32::max` would drop the NaN.
        BinaryOp::Max => |x, y| {
            if x.is_nan() || y.is_nan() {
                f32::NAN
            } else if x >= y {
                x
            } else {
                y
            }
        },
        BinaryOp::Min => |x, y| {
            if x.is_nan() || y.is_nan() {
                f32::NAN
            } else if x <= y {
                x
            } else {
                y
            }
        },
        BinaryOp::Pow => return None,
    };
    let (av, bv) = (a.as_f32()?, b.as_f32()?);
    let ai = broadcast_index(a.shape(), out)?;
    let bi = broadcast_index(b.shape(), out)?;
    let values = ai.iter().zip(&bi).map(|(&i, &j)| f(av[i], bv[j])).collect();
    Some(Tensor::f32(out.to_vec(), values))
}

/// For every element of `out` in row-major order, the offset of the
/// element of a tensor of shape `shape` that numpy broadcasting reads
/// there; `None` if `shape` does not broadcast to `out`.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    if shape.len() > out.len() {
        return None;
    }
    let lead = out.len() - shape.len();
    let own = strides(shape);
    // Stride 0 along the axes the operand lacks or has as 1.
    let mut step = vec![0; out.len()];
    for (k, (&d, &s)) in shape.iter().zip(&own).enumerate() {
        let o = out[lead + k];
        if d == o {
            step[lead + k] = s;
        } else if d != 1 {
            return None;
        }
    }
    Some(gather_offsets(out, &step))
}

/// Row-major walk over `out`, giving `sum(index[k] * step[k])` per element.
fn gather_offsets(out: &[usize], step: &[usize]) -> Vec<usize> {
    let total: usize = out.iter().product();
    let mut offsets = Vec::with_capacity(total);
    if total == 0 {
        return offsets;
    }
    let mut index = vec![0usize; out.len()];
    let mut offset = 0usize;
    for _ in 0..total {
        offsets.push(offset);
        // Odometer increment from the last axis.
        for k in (0..out.len()).rev() {
            index[k] += 1;
            offset += step[k];
            if index[k] < out[k] {
                break;
            }
            offset -= step[k] * index[k];
            index[k] = 0;
        }
    }
    offsets
}

/// `data` read at `offsets`, any dtype.
fn pick(data: &TensorData, offsets: &[usize]) -> TensorData {
    fn take<T: Copy>(v: &[T], offsets: &[usize]) -> Vec<T> {
        offsets.iter().map(|&i| v[i]).collect()
    }
    match data {
        TensorData::F32(v) => TensorData::F32(take(v, offsets)),
        TensorData::I64(v) => TensorData::I64(take(v, offsets)),
        TensorData::I32(v) => TensorData::I32(take(v, offsets)),
        TensorData::Bool(v) => TensorData::Bool(take(v, offsets)),
    }
}

fn permute(x: &Tensor, perm: &[usize], out: &[usize]) -> Option<Tensor> {
    let shape = x.shape();
    if perm.len() != shape.len() || out.len() != shape.len() {
        return None;
    }
    let own = strides(shape);
    let mut step = Vec::with_capacity(perm.len());
    for (i, &p) in perm.iter().enumerate() {
        if shape.get(p) != Some(&out[i]) {
            return None;
        }
        step.push(own[p]);
    }
    Some(Tensor::new(
        out.to_vec(),
        pick(x.data(), &gather_offsets(out, &step)),
    ))
}

fn slice(x: &Tensor, axis: usize, start: usize, step: usize, out: &[usize]) -> Option<Tensor> {
    let shape = x.shape();
    if axis >= shape.len() || out.len() != shape.len() || step == 0 {
        return None;
    }
    let taken = out[axis];
    // The last element read must exist; a bound past the axis is an error
    // the model reports when it runs, so nothing is folded.
    if taken > 0 && start + (taken - 1) * step >= shape[axis] {
        return None;
    }
    if (0..shape.len()).any(|k| k != axis && shape[k] != out[k]) {
        return None;
    }
    let own = strides(shape);
    let mut steps = own.clone();
    steps[axis] = own[axis] * step;
    let base = if taken > 0 { start * own[axis] } else { 0 };
    let offsets: Vec<usize> = gather_offsets(out, &steps)
        .into_iter()
        .map(|o| o + base)
        .collect();
    Some(Tensor::new(out.to_vec(), pick(x.data(), &offsets)))
}

fn concat(parts: &[&Tensor], axis: usize, out: &[usize]) -> Option<Tensor> {
    let dtype = parts[0].dtype();
    if axis >= out.len() {
        return None;
    }
    let mut along = 0;
    for p in parts {
        let s = p.shape();
        if p.dtype() != dtype
            || s.len() != out.len()
            || (0..s.len()).any(|k| k != axis && s[k] != out[k])
        {
            return None;
        }
        along += s[axis];
    }
    if along != out[axis] {
        return None;
    }
    // Rows are everything before `axis`; each row of the output is the
    // parts' rows one after the other.
    let rows: usize = out[..axis].iter().product();
    let inner: usize = out[axis + 1..].iter().product();
    fn join<T: Copy>(parts: &[&[T]], widths: &[usize], rows: usize) -> Vec<T> {
        let mut v = Vec::with_capacity(rows * widths.iter().sum::<usize>());
        for r in 0..rows {
            for (p, &w) in parts.iter().zip(widths) {
                v.extend_from_slice(&p[r * w..(r + 1) * w]);
            }
        }
        v
    }
    let widths: Vec<usize> = parts.iter().map(|p| p.shape()[axis] * inner).collect();
    macro_rules! joined {
        ($variant:ident) => {{
            let slices: Option<Vec<_>> = parts
                .iter()
                .map(|p| match p.data() {
                    TensorData::$variant(v) => Some(&v[..]),
                    _ => None,
                })
                .collect();
            TensorData::$variant(join(&slices?, &widths, rows))
        }};
    }
    let data = match dtype {
        DType::F32 => joined!(F32),
        DType::I64 => joined!(I64),
        DType::I32 => joined!(I32),
        DType::Bool => joined!(Bool),
    };
    Some(Tensor::new(out.to_vec(), data))
}

/// Rust's `as`: float to integer truncates toward zero, saturates and maps
/// NaN to 0; integer narrowing wraps; anything non-zero (NaN too) is true.
fn cast(x: &Tensor, to: DType) -> Tensor {
    macro_rules! convert {
        ($v:expr, $zero:expr) => {
            match to {
                DType::F32 => TensorData::F32($v.iter().map(|&e| e as f32).collect()),
                DType::I64 => TensorData::I64($v.iter().map(|&e| e as i64).collect()),
                DType::I32 => TensorData::I32($v.iter().map(|&e| e as i32).collect()),
                DType::Bool => TensorData::Bool($v.iter().map(|&e| e != $zero).collect()),
            }
        };
    }
    let data = match x.data() {
        TensorData::F32(v) => convert!(v, 0.0),
        TensorData::I64(v) => convert!(v, 0),
        TensorData::I32(v) => convert!(v, 0),
        TensorData::Bool(v) => {
            let as_int: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
            convert!(as_int, 0)
        }
    };
    Tensor::new(x.shape().to_vec(), data)
}
