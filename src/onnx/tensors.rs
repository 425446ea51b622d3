//! ONNX tensors (`TensorProto`) and element types to lamina's.

use crate::dtype::DType;
use crate::tensor::{Tensor, TensorData};

use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::TensorProto;

/// The ONNX element type's name (`FLOAT`, `DOUBLE`, ...), for messages.
pub fn onnx_type_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("data type {code}"))
}

/// lamina's dtype for an ONNX element type, or why there is none.
pub fn dtype_of(code: i32) -> Result<DType, String> {
    match DataType::try_from(code) {
        Ok(DataType::Float) => Ok(DType::F32),
        Ok(DataType::Int64) => Ok(DType::I64),
        Ok(DataType::Int32) => Ok(DType::I32),
        Ok(DataType::Bool) => Ok(DType::Bool),
        _ => Err(format!(
            "element type {} (lamina has f32, i64, i32 and bool)",
            onnx_type_name(code)
        )),
    }
}

/// The ONNX element type code for a lamina dtype.
pub fn onnx_code(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => DataType::Float as i32,
        DType::I64 => DataType::Int64 as i32,
        DType::I32 => DataType::Int32 as i32,
        DType::Bool => DataType::Bool as i32,
    }
}

/// Decodes a tensor stored in the file (raw bytes or typed fields).
pub fn to_tensor(t: &TensorProto) -> Result<Tensor, String> {
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err("external data (tensor stored outside the .onnx file)".into());
    }
    if t.segment.is_some() {
        return Err("segmented tensors".into());
    }
    let code = t.data_type.unwrap_or(0);
    let dtype = dtype_of(code)?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| format!("negative dim {d}"))?);
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let data = match &t.raw_data {
        Some(raw) => {
            let want = count.checked_mul(dtype.size_bytes());
            if want != Some(raw.len()) {
                return Err(format!(
                    "raw data holds {} bytes, shape {shape:?} of {} needs {}",
                    raw.len(),
                    onnx_type_name(code),
                    want.map_or("more than fit".into(), |w| w.to_string())
                ));
            }
            decode_raw(dtype, raw)?
        }
        None => {
            let data = match dtype {
                DType::F32 => TensorData::F32(t.float_data.clone()),
                DType::I64 => TensorData::I64(t.int64_data.clone()),
                DType::I32 => TensorData::I32(t.int32_data.clone()),
                DType::Bool => TensorData::Bool(t.int32_data.iter().map(|&v| v != 0).collect()),
            };
            if data.len() != count {
                return Err(format!(
                    "holds {} values, shape {shape:?} needs {count}",
                    data.len()
                ));
            }
            data
        }
    };
    Ok(Tensor::new(shape, data))
}

fn decode_raw(dtype: DType, raw: &[u8]) -> Result<TensorData, String> {
    fn words<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
            .collect()
    }
    Ok(match dtype {
        DType::F32 => TensorData::F32(words(raw, f32::from_le_bytes)),
        DType::I64 => TensorData::I64(words(raw, i64::from_le_bytes)),
        DType::I32 => TensorData::I32(words(raw, i32::from_le_bytes)),
        DType::Bool => TensorData::Bool(raw.iter().map(|&b| b != 0).collect()),
    })
}

/// Reads a `TensorProto` file (as the ONNX test data sets store inputs and
/// expected outputs).
pub fn read_tensor_file(bytes: &[u8]) -> Result<Tensor, String> {
    use prost::Message;
    let t = TensorProto::decode(bytes).map_err(|e| e.to_string())?;
    to_tensor(&t)
}

/// The little-endian bytes safetensors stores.
pub fn le_bytes(t: &Tensor) -> Vec<u8> {
    match t.data() {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
    }
}
