//! The one indexing helper the kernels share: walk a shape in row-major
//! order and yield, for every position, the flat offset of that position in
//! a buffer read through arbitrary strides.
//!
//! Broadcasting (stride 0 on stretched axes), permutation (permuted
//! strides), slicing (scaled strides plus a base offset), reduction (stride 0
//! on reduced axes of the output) and matmul batch broadcasting are all this
//! walk with different strides, so none of them has its own index maths.

use crate::ir::DType;
use crate::tensor::{Tensor, TensorData};

use super::EvalError;

/// Flat offsets of every position of `shape`, in row-major order, into a
/// buffer addressed as `base + sum(index[i] * strides[i])`.
#[derive(Clone, Debug)]
pub struct StridedOffsets {
    shape: Vec<usize>,
    strides: Vec<usize>,
    index: Vec<usize>,
    offset: usize,
    remaining: usize,
}

impl StridedOffsets {
    pub fn new(shape: &[usize], strides: &[usize], base: usize) -> StridedOffsets {
        assert_eq!(shape.len(), strides.len(), "one stride per axis");
        StridedOffsets {
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            index: vec![0; shape.len()],
            offset: base,
            remaining: shape.iter().product(),
        }
    }
}

impl Iterator for StridedOffsets {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset;
        // Odometer step: bump the last axis, carrying into earlier ones. The
        // walk is over once `remaining` hits zero, so the final carry out of
        // axis 0 never has to be undone.
        for axis in (0..self.shape.len()).rev() {
            self.index[axis] += 1;
            self.offset += self.strides[axis];
            if self.index[axis] < self.shape[axis] {
                break;
            }
            self.offset -= self.strides[axis] * self.shape[axis];
            self.index[axis] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets {}

/// Strides that read a row-major tensor of `shape` as if it had `out_shape`
/// under numpy broadcasting: shapes align on the right, and an axis of size
/// 1 (or one `shape` lacks) gets stride 0.
///
/// `shape` must broadcast to `out_shape`; every caller sizes `out_shape`
/// with `shape_rules::infer`, which checks exactly that.
pub fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let own = crate::tensor::strides(shape);
    let lead = out_shape.len() - shape.len();
    (0..out_shape.len())
        .map(|axis| match axis.checked_sub(lead) {
            Some(i) if shape[i] != 1 => own[i],
            _ => 0,
        })
        .collect()
}

/// Offsets into a row-major tensor of `shape` for every element of the
/// broadcast `out_shape`, in row-major order of `out_shape`.
pub fn broadcast_offsets(shape: &[usize], out_shape: &[usize]) -> StridedOffsets {
    StridedOffsets::new(out_shape, &broadcast_strides(shape, out_shape), 0)
}

/// A Rust type that stores one of the tensor dtypes.
pub trait Element: Copy + PartialOrd {
    const DTYPE: DType;
    fn slice(data: &TensorData) -> Option<&[Self]>;
    fn wrap(values: Vec<Self>) -> TensorData;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn slice(data: &TensorData) -> Option<&[f32]> {
        match data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(values: Vec<f32>) -> TensorData {
        TensorData::F32(values)
    }
}

impl Element for i64 {
    const DTYPE: DType = DType::I64;
    fn slice(data: &TensorData) -> Option<&[i64]> {
        match data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(values: Vec<i64>) -> TensorData {
        TensorData::I64(values)
    }
}

impl Element for i32 {
    const DTYPE: DType = DType::I32;
    fn slice(data: &TensorData) -> Option<&[i32]> {
        match data {
            TensorData::I32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(values: Vec<i32>) -> TensorData {
        TensorData::I32(values)
    }
}

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn slice(data: &TensorData) -> Option<&[bool]> {
        match data {
            TensorData::Bool(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(values: Vec<bool>) -> TensorData {
        TensorData::Bool(values)
    }
}

/// The elements of `tensor` as `T`. Kernels call this after
/// `shape_rules::infer` accepted the operand dtypes, so a mismatch means an
/// inconsistent caller; it is reported, not panicked on.
pub fn elements<'a, T: Element>(
    op: &'static str,
    tensor: &'a Tensor,
) -> Result<&'a [T], EvalError> {
    T::slice(tensor.data()).ok_or(EvalError::OperandDType {
        op,
        expected: T::DTYPE,
        actual: tensor.dtype(),
    })
}

/// Runs `$body` with the type alias `$T` set to the Rust type of `$dtype`,
/// so one generic kernel serves every dtype.
macro_rules! with_element_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::ir::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::ir::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::ir::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::ir::DType::Bool => {
                type $T = bool;
                $body
            }
        }
    };
}
pub(crate) use with_element_type;

/// A new tensor of `shape` holding the elements of `source` at `offsets`.
pub fn take(
    op: &'static str,
    source: &Tensor,
    shape: Vec<usize>,
    offsets: impl Iterator<Item = usize>,
) -> Result<Tensor, EvalError> {
    fn typed<T: Element>(
        op: &'static str,
        source: &Tensor,
        offsets: impl Iterator<Item = usize>,
    ) -> Result<TensorData, EvalError> {
        let values = elements::<T>(op, source)?;
        Ok(T::wrap(offsets.map(|o| values[o]).collect()))
    }
    let data = with_element_type!(source.dtype(), T => typed::<T>(op, source, offsets)?);
    Ok(Tensor::new(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_offsets_repeat_stretched_axes() {
        // [3, 1] read as [2, 3, 4]: the leading axis and the size-1 axis repeat.
        let offsets: Vec<usize> = broadcast_offsets(&[3, 1], &[2, 3, 4]).collect();
        let expected: Vec<usize> = (0..2).flat_map(|_| (0..3).flat_map(|r| [r; 4])).collect();
        assert_eq!(offsets, expected);
    }

    #[test]
    fn strided_offsets_walk_a_permutation_and_a_slice() {
        // The transpose of a row-major [2, 3]: shape [3, 2], strides [1, 3].
        let transposed: Vec<usize> = StridedOffsets::new(&[3, 2], &[1, 3], 0).collect();
        assert_eq!(transposed, vec![0, 3, 1, 4, 2, 5]);
        // Columns 1 and 3 of a [2, 5]: base 1, column stride 2.
        let sliced: Vec<usize> = StridedOffsets::new(&[2, 2], &[5, 2], 1).collect();
        assert_eq!(sliced, vec![1, 3, 6, 8]);
    }

    #[test]
    fn rank_zero_has_one_position_and_size_zero_has_none() {
        assert_eq!(
            StridedOffsets::new(&[], &[], 7).collect::<Vec<_>>(),
            vec![7]
        );
        assert_eq!(StridedOffsets::new(&[3, 0, 2], &[0, 2, 1], 0).count(), 0);
    }
}
