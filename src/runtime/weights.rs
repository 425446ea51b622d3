//! Loading a safetensors checkpoint into named tensors.
//!
//! Half-precision checkpoints (F16, BF16) are widened to f32 on load because
//! all arithmetic in lamina is f32; integer tensors (position ids, masks)
//! keep their type so that parameter binding can check them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::tensor::{Tensor, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read weight file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "tensor `{tensor}` in `{path}` has dtype {dtype}; lamina reads F32, F16, BF16 (as f32), I64, I32 and BOOL"
    )]
    UnsupportedDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("tensor `{tensor}` in `{path}` is BOOL but holds the byte {byte} (only 0 and 1 are booleans)")]
    InvalidBool {
        path: PathBuf,
        tensor: String,
        byte: u8,
    },
}

/// The tensors of one weight file, by name.
#[derive(Clone, Debug)]
pub struct WeightFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    /// Tensors lamina cannot read (a dtype it does not support, invalid
    /// booleans), with why. They only matter if the model binds them:
    /// checkpoints often carry extra tensors (an f64 step counter, say) that
    /// a model never uses, and those must not stop it from loading.
    /// The values are the messages (`WeightError` is not `Clone`).
    pub unreadable: BTreeMap<String, String>,
}

impl WeightFile {
    pub fn load(path: impl AsRef<Path>) -> Result<WeightFile, WeightError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| WeightError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        WeightFile::from_bytes(path, &bytes)
    }

    /// Decodes a safetensors image already in memory; `path` is only used in
    /// messages and recorded in the result.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<WeightFile, WeightError> {
        let path = path.as_ref();
        let file = SafeTensors::deserialize(bytes).map_err(|e| WeightError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for (name, view) in file.iter() {
            let data = decode(view.dtype(), view.data()).map_err(|problem| match problem {
                DecodeProblem::Unsupported => WeightError::UnsupportedDType {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    dtype: format!("{:?}", view.dtype()),
                },
                DecodeProblem::InvalidBool(byte) => WeightError::InvalidBool {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    byte,
                },
            });
            match data {
                // safetensors has already checked that the byte length
                // matches shape x dtype size, so the element count is right.
                Ok(data) => {
                    tensors.insert(name.to_string(), Tensor::new(view.shape().to_vec(), data));
                }
                Err(e) => {
                    unreadable.insert(name.to_string(), e.to_string());
                }
            }
        }
        Ok(WeightFile {
            path: path.to_path_buf(),
            tensors,
            unreadable,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Why the tensor `name` could not be read, if it is one of those.
    pub fn unreadable(&self, name: &str) -> Option<&str> {
        self.unreadable.get(name).map(String::as_str)
    }

    /// Every tensor name in the file, readable or not, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .tensors
            .keys()
            .chain(self.unreadable.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.into_iter()
    }
}

enum DecodeProblem {
    Unsupported,
    InvalidBool(u8),
}

/// Converts little-endian tensor bytes (the safetensors layout) into owned
/// elements.
fn decode(dtype: Dtype, bytes: &[u8]) -> Result<TensorData, DecodeProblem> {
    fn words<const N: usize, T>(bytes: &[u8], convert: impl Fn([u8; N]) -> T) -> Vec<T> {
        bytes
            .chunks_exact(N)
            .map(|c| convert(c.try_into().expect("chunks_exact yields N bytes")))
            .collect()
    }
    Ok(match dtype {
        Dtype::F32 => TensorData::F32(words(bytes, f32::from_le_bytes)),
        Dtype::F16 => TensorData::F32(words(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => TensorData::F32(words(bytes, |b| half::bf16::from_le_bytes(b).to_f32())),
        Dtype::I64 => TensorData::I64(words(bytes, i64::from_le_bytes)),
        Dtype::I32 => TensorData::I32(words(bytes, i32::from_le_bytes)),
        Dtype::BOOL => TensorData::Bool(
            bytes
                .iter()
                .map(|&b| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(DecodeProblem::InvalidBool(other)),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(DecodeProblem::Unsupported),
    })
}
