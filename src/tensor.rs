//! Dense, row-major, owned tensors: the data that flows in and out of a model.

use crate::dtype::DType;

#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::Bool(_) => DType::Bool,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Tensor {
    /// Panics if the element count does not match the shape: callers build
    /// tensors from data they sized themselves; file loaders check first.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Tensor {
        assert_eq!(
            shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)),
            Some(data.len()),
            "tensor data length does not match shape {shape:?}"
        );
        Tensor { shape, data }
    }

    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::new(shape, TensorData::F32(data))
    }

    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor::new(shape, TensorData::I64(data))
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::f32(vec![], vec![value])
    }

    /// Panics if the shape's element count overflows: callers size tensors
    /// from concrete graphs, whose every shape has been checked to fit.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .expect("tensor shapes are checked to fit in memory before allocation");
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
        };
        Tensor { shape, data }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64_mut(&mut self) -> Option<&mut [i64]> {
        match &mut self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Same data, new shape of the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> Tensor {
        Tensor::new(shape, self.data)
    }

    /// Every element as f64 (bool as 0/1): for comparisons in tests and printing.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }
}
