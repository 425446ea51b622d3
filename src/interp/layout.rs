//! Ops that move or convert elements without arithmetic: permute, reshape,
//! concat, slice, gather and cast. They work on every dtype.

use crate::ir::DType;
use crate::tensor::{strides, Tensor, TensorData};

use super::InterpError;
use crate::ir::ops::values::{elements, take, with_element_type, Element, StridedOffsets};
use crate::ir::ops::EvalError;

/// Output axis i is input axis `perm[i]`.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor, InterpError> {
    let own = strides(x.shape());
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let view_strides: Vec<usize> = perm.iter().map(|&p| own[p]).collect();
    take(
        "permute",
        x,
        out_shape.clone(),
        StridedOffsets::new(&out_shape, &view_strides, 0),
    )
    .map_err(InterpError::from)
}

/// Swaps the last two axes (for matmul's transpose flags).
pub fn transpose_last_two(x: &Tensor) -> Result<Tensor, InterpError> {
    let rank = x.shape().len();
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    permute(x, &perm)
}

/// Row-major data is unchanged; only the shape is new.
pub fn reshape(x: &Tensor, out_shape: &[usize]) -> Tensor {
    Tensor::new(out_shape.to_vec(), x.data().clone())
}

pub fn concat(parts: &[&Tensor], axis: usize, out_shape: &[usize]) -> Result<Tensor, InterpError> {
    fn typed<T: Element>(
        parts: &[&Tensor],
        axis: usize,
        out_shape: &[usize],
    ) -> Result<TensorData, InterpError> {
        // Each part contributes one contiguous block of `size[axis] * inner`
        // elements per index of the axes before `axis`.
        let outer: usize = out_shape[..axis].iter().product();
        let inner: usize = out_shape[axis + 1..].iter().product();
        let slices = parts
            .iter()
            .map(|p| Ok((elements::<T>("concat", p)?, p.shape()[axis] * inner)))
            .collect::<Result<Vec<_>, InterpError>>()?;
        let mut values = Vec::with_capacity(out_shape.iter().product());
        for o in 0..outer {
            for (part, block) in &slices {
                values.extend_from_slice(&part[o * block..(o + 1) * block]);
            }
        }
        Ok(T::wrap(values))
    }
    let dtype = parts.first().map_or(DType::F32, |p| p.dtype());
    let data = with_element_type!(dtype, T => typed::<T>(parts, axis, out_shape)?);
    Ok(Tensor::new(out_shape.to_vec(), data))
}

/// Elements `start, start + step, ...` below `end` along `axis`. `end` past
/// the axis size is an error, not a clamp: symbolic ends are bound at run
/// time, and a too-short input must not silently give a shorter result.
pub fn check_slice_end(x: &Tensor, axis: usize, end: usize) -> Result<(), InterpError> {
    match x.shape().get(axis) {
        Some(&size) if end > size => Err(EvalError::SliceEnd { end, size, axis }.into()),
        _ => Ok(()),
    }
}

pub fn slice(
    x: &Tensor,
    axis: usize,
    start: usize,
    step: usize,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let mut view_strides = strides(x.shape());
    let base = start * view_strides[axis];
    view_strides[axis] *= step;
    take(
        "slice",
        x,
        out_shape.to_vec(),
        StridedOffsets::new(out_shape, &view_strides, base),
    )
    .map_err(InterpError::from)
}

/// Rows of `table` along `axis`, picked by integer `ids`.
pub fn gather(
    table: &Tensor,
    ids: &Tensor,
    axis: usize,
    out_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let ids: Vec<i64> = match ids.data() {
        TensorData::I64(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&i| i64::from(i)).collect(),
        TensorData::F32(_) | TensorData::Bool(_) => {
            return Err(EvalError::OperandDType {
                op: "gather",
                expected: DType::I64,
                actual: ids.dtype(),
            }
            .into())
        }
    };
    let size = table.shape()[axis];
    let mut rows = Vec::with_capacity(ids.len());
    for (position, &index) in ids.iter().enumerate() {
        match gather_row(index, size) {
            Some(row) => rows.push(row),
            None => {
                return Err(EvalError::GatherIndex {
                    index,
                    position,
                    axis,
                    size,
                }
                .into())
            }
        }
    }
    let outer: usize = table.shape()[..axis].iter().product();
    let inner: usize = table.shape()[axis + 1..].iter().product();
    let offsets = (0..outer).flat_map(|o| {
        rows.iter()
            .flat_map(move |&row| (0..inner).map(move |j| (o * size + row) * inner + j))
    });
    take("gather", table, out_shape.to_vec(), offsets).map_err(InterpError::from)
}

/// The row an id picks on an axis of `size`: ids in `0..size` count from
/// the start and ids in `-size..0` from the end, as numpy's `take` and
/// ONNX `Gather`; anything else is out of range.
fn gather_row(index: i64, size: usize) -> Option<usize> {
    let size = i64::try_from(size).ok()?;
    let row = if index < 0 {
        index.checked_add(size)?
    } else {
        index
    };
    (0..size).contains(&row).then_some(row as usize)
}

/// Conversions between the element types, one table row per source type.
/// Float to integer truncates toward zero like numpy's `astype`; where
/// numpy's result is platform-defined (NaN, out of range) the value
/// saturates and NaN becomes 0, as Rust's `as` defines. Integer narrowing
/// wraps like numpy. Anything non-zero (NaN included) is `true`.
trait Convert: Element {
    fn to_f32(self) -> f32;
    fn to_i64(self) -> i64;
    fn to_i32(self) -> i32;
    fn to_bool(self) -> bool;
}

impl Convert for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
    fn to_bool(self) -> bool {
        self != 0.0
    }
}

impl Convert for i64 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_i64(self) -> i64 {
        self
    }
    fn to_i32(self) -> i32 {
        self as i32
    }
    fn to_bool(self) -> bool {
        self != 0
    }
}

impl Convert for i32 {
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    fn to_i32(self) -> i32 {
        self
    }
    fn to_bool(self) -> bool {
        self != 0
    }
}

impl Convert for bool {
    fn to_f32(self) -> f32 {
        f32::from(u8::from(self))
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
    fn to_bool(self) -> bool {
        self
    }
}

pub fn cast(x: &Tensor, to: DType) -> Result<Tensor, InterpError> {
    fn typed<T: Convert>(x: &Tensor, to: DType) -> Result<TensorData, InterpError> {
        let values = elements::<T>("cast", x)?;
        Ok(match to {
            DType::F32 => TensorData::F32(values.iter().map(|v| v.to_f32()).collect()),
            DType::I64 => TensorData::I64(values.iter().map(|v| v.to_i64()).collect()),
            DType::I32 => TensorData::I32(values.iter().map(|v| v.to_i32()).collect()),
            DType::Bool => TensorData::Bool(values.iter().map(|v| v.to_bool()).collect()),
        })
    }
    let data = with_element_type!(x.dtype(), T => typed::<T>(x, to)?);
    Ok(Tensor::new(x.shape().to_vec(), data))
}
