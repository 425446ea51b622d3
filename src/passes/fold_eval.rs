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
    let (av, bv) = (a.as_f32()?, b.as_f32()?);
    let steps = [
        broadcast_steps(a.shape(), out)?,
        broadcast_steps(b.shape(), out)?,
    ];
    // One monomorphised loop per op: a function pointer called per element
    // costs more than the operation (batch-norm folding multiplies every
    // convolution weight).
    let values = match op {
        BinaryOp::Add => broadcast_map(av, bv, out, steps, |x, y| x + y),
        BinaryOp::Sub => broadcast_map(av, bv, out, steps, |x, y| x - y),
        BinaryOp::Mul => broadcast_map(av, bv, out, steps, |x, y| x * y),
        BinaryOp::Div => broadcast_map(av, bv, out, steps, |x, y| x / y),
        // numpy: NaN in either operand wins; on ties (0.0 vs -0.0) the
        // left operand is returned. `f32::max` would drop the NaN.
        BinaryOp::Max => broadcast_map(av, bv, out, steps, |x, y| {
            if x.is_nan() || y.is_nan() {
                f32::NAN
            } else if x >= y {
                x
            } else {
                y
            }
        }),
        BinaryOp::Min => broadcast_map(av, bv, out, steps, |x, y| {
            if x.is_nan() || y.is_nan() {
                f32::NAN
            } else if x <= y {
                x
            } else {
                y
            }
        }),
        BinaryOp::Pow => return None,
    };
    Some(Tensor::f32(out.to_vec(), values))
}

/// Per axis of `out`, how far a tensor of shape `shape` moves when numpy
/// broadcasting reads it along that axis (0 where it is broadcast); `None`
/// if `shape` does not broadcast to `out`.
fn broadcast_steps(shape: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    if shape.len() > out.len() {
        return None;
    }
    let lead = out.len() - shape.len();
    let own = strides(shape);
    let mut step = vec![0; out.len()];
    for (k, (&d, &s)) in shape.iter().zip(&own).enumerate() {
        let o = out[lead + k];
        if d == o {
            step[lead + k] = s;
        } else if d != 1 {
            return None;
        }
    }
    Some(step)
}

/// `f` of two broadcast operands over `out` in row-major order. The axes
/// are merged where both operands allow it, then walked as runs along the
/// last merged axis, so a same-shape or per-channel operation is a few
/// long loops rather than an index computation per element.
fn broadcast_map(
    a: &[f32],
    b: &[f32],
    out: &[usize],
    steps: [Vec<usize>; 2],
    f: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    let total: usize = out.iter().product();
    let mut values = Vec::with_capacity(total);
    if total == 0 {
        return values;
    }
    let (dims, [sa, sb]) = merge_axes(out, steps);
    let last = dims.len() - 1;
    let (run, ia, ib) = (dims[last], sa[last], sb[last]);
    let mut index = vec![0usize; last];
    let (mut oa, mut ob) = (0usize, 0usize);
    loop {
        match (ia, ib) {
            (1, 1) => values.extend(
                a[oa..oa + run]
                    .iter()
                    .zip(&b[ob..ob + run])
                    .map(|(&x, &y)| f(x, y)),
            ),
            (1, 0) => {
                let y = b[ob];
                values.extend(a[oa..oa + run].iter().map(|&x| f(x, y)));
            }
            (0, 1) => {
                let x = a[oa];
                values.extend(b[ob..ob + run].iter().map(|&y| f(x, y)));
            }
            _ => values.extend((0..run).map(|i| f(a[oa + i * ia], b[ob + i * ib]))),
        }
        // Odometer over the outer axes, last first.
        let mut k = last;
        loop {
            if k == 0 {
                return values;
            }
            k -= 1;
            index[k] += 1;
            oa += sa[k];
            ob += sb[k];
            if index[k] < dims[k] {
                break;
            }
            oa -= sa[k] * dims[k];
            ob -= sb[k] * dims[k];
            index[k] = 0;
        }
    }
}

/// `out` with its size-1 axes dropped and each axis merged into the one
/// before it where every operand steps through both as through one
/// (`step[k] == step[k + 1] * out[k + 1]`). At least one axis remains.
fn merge_axes<const N: usize>(
    out: &[usize],
    steps: [Vec<usize>; N],
) -> (Vec<usize>, [Vec<usize>; N]) {
    let mut dims: Vec<usize> = Vec::with_capacity(out.len());
    let mut merged: [Vec<usize>; N] = std::array::from_fn(|_| Vec::with_capacity(out.len()));
    for (k, &d) in out.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let joins = dims
            .last()
            .is_some_and(|_| (0..N).all(|i| merged[i].last() == Some(&(steps[i][k] * d))));
        if joins {
            *dims.last_mut().expect("checked above") *= d;
            for (m, s) in merged.iter_mut().zip(&steps) {
                *m.last_mut().expect("one per dim") = s[k];
            }
        } else {
            dims.push(d);
            for (m, s) in merged.iter_mut().zip(&steps) {
                m.push(s[k]);
            }
        }
    }
    if dims.is_empty() {
        dims.push(1);
        for m in &mut merged {
            m.push(0);
        }
    }
    (dims, merged)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Element `index` of `out` read from `shape` the numpy way, one index
    /// at a time: what the merged-axis walk must agree with.
    fn naive(values: &[f32], shape: &[usize], out: &[usize], flat: usize) -> f32 {
        let mut rest = flat;
        let mut index = vec![0; out.len()];
        for k in (0..out.len()).rev() {
            index[k] = rest % out[k];
            rest /= out[k];
        }
        let lead = out.len() - shape.len();
        let own = strides(shape);
        let offset: usize = (0..shape.len())
            .map(|k| {
                if shape[k] == 1 {
                    0
                } else {
                    index[lead + k] * own[k]
                }
            })
            .sum();
        values[offset]
    }

    #[test]
    fn broadcast_binary_matches_elementwise_indexing() {
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[2, 3, 4, 5], &[2, 3, 4, 5]),
            (&[8, 3, 3, 3], &[8, 1, 1, 1], &[8, 3, 3, 3]),
            (&[2, 3, 4, 5], &[3, 1, 5], &[2, 3, 4, 5]),
            (&[4, 1], &[1, 6], &[4, 6]),
            (&[1, 6], &[4, 1], &[4, 6]),
            (&[], &[7], &[7]),
            (&[3, 1, 2], &[], &[3, 1, 2]),
            (&[], &[], &[]),
            (&[1, 1, 5], &[5, 1, 1], &[5, 1, 5]),
            (&[2, 0, 3], &[3], &[2, 0, 3]),
        ];
        for &(sa, sb, out) in cases {
            let len = |s: &[usize]| s.iter().product::<usize>();
            let av: Vec<f32> = (0..len(sa)).map(|i| i as f32 * 0.5 + 1.0).collect();
            let bv: Vec<f32> = (0..len(sb)).map(|i| 3.0 - i as f32).collect();
            let a = Tensor::f32(sa.to_vec(), av.clone());
            let b = Tensor::f32(sb.to_vec(), bv.clone());
            let got = binary(BinaryOp::Sub, &a, &b, out).expect("broadcasts");
            assert_eq!(got.shape(), out);
            let want: Vec<f32> = (0..len(out))
                .map(|i| naive(&av, sa, out, i) - naive(&bv, sb, out, i))
                .collect();
            assert_eq!(
                got.as_f32().expect("f32"),
                &want[..],
                "{sa:?} - {sb:?} -> {out:?}"
            );
        }
        let a = Tensor::f32(vec![2, 3], vec![0.0; 6]);
        let b = Tensor::f32(vec![2], vec![0.0; 2]);
        assert!(
            binary(BinaryOp::Add, &a, &b, &[2, 3]).is_none(),
            "2 does not broadcast to 3"
        );
    }
}
