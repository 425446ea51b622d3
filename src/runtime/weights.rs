//! Loading a safetensors checkpoint into named tensors.
//!
//! Half-precision checkpoints (F16, BF16) are widened to f32 on load because
//! all arithmetic in lamina is f32; integer tensors (position ids, masks)
//! keep their type so that parameter binding can check them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::io::Read;

use safetensors::tensor::Metadata;
use safetensors::Dtype;

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

/// safetensors' own limit on the header's size.
const MAX_HEADER_BYTES: u64 = 100_000_000;

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
    /// Reads a safetensors file: the header first, then every tensor's
    /// bytes straight into its own buffer (no copy of the whole file).
    pub fn load(path: impl AsRef<Path>) -> Result<WeightFile, WeightError> {
        let path = path.as_ref();
        let read_error = |source| WeightError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        WeightFile::read(path, std::io::BufReader::with_capacity(1 << 16, file), len)
    }

    /// Decodes a safetensors image already in memory; `path` is only used in
    /// messages and recorded in the result.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<WeightFile, WeightError> {
        WeightFile::read(path.as_ref(), bytes, bytes.len() as u64)
    }

    /// A safetensors image of `len` bytes from `source`. The header is
    /// checked against `len` before anything it describes is allocated.
    fn read(path: &Path, mut source: impl Read, len: u64) -> Result<WeightFile, WeightError> {
        let corrupt = |reason: String| WeightError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let read_error = |source| WeightError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut header_len = [0u8; 8];
        if len < 8 {
            return Err(corrupt(
                "the file is shorter than the 8-byte header length".into(),
            ));
        }
        source.read_exact(&mut header_len).map_err(read_error)?;
        let header_len = u64::from_le_bytes(header_len);
        if header_len > MAX_HEADER_BYTES || header_len > len - 8 {
            return Err(corrupt(format!(
                "the header claims {header_len} bytes but the file holds {len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        source.read_exact(&mut header).map_err(read_error)?;
        // `Metadata` checks that the tensors' byte ranges tile the data
        // section and that each matches its shape and dtype.
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| corrupt(format!("invalid header: {e}")))?;
        let data_len = len - 8 - header_len;
        if metadata.data_len() as u64 != data_len {
            return Err(corrupt(format!(
                "the header describes {} bytes of tensor data but the file holds {data_len}",
                metadata.data_len()
            )));
        }
        let mut tensors = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        // In file order: one sequential pass.
        for name in metadata.offset_keys() {
            let info = metadata.info(&name).expect("offset_keys lists tensors");
            let bytes = info.data_offsets.1 - info.data_offsets.0;
            let data = read_tensor(info.dtype, bytes, &mut source).map_err(read_error)?;
            match data {
                Ok(data) => {
                    tensors.insert(name, Tensor::new(info.shape.clone(), data));
                }
                Err(problem) => {
                    let e = match problem {
                        DecodeProblem::Unsupported => WeightError::UnsupportedDType {
                            path: path.to_path_buf(),
                            tensor: name.clone(),
                            dtype: format!("{:?}", info.dtype),
                        },
                        DecodeProblem::InvalidBool(byte) => WeightError::InvalidBool {
                            path: path.to_path_buf(),
                            tensor: name.clone(),
                            byte,
                        },
                    };
                    unreadable.insert(name, e.to_string());
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

/// The next `bytes` bytes of `source` as a tensor of `dtype`: f32 is read
/// straight into its buffer, other dtypes through a byte buffer.
fn read_tensor(
    dtype: Dtype,
    bytes: usize,
    source: &mut impl Read,
) -> std::io::Result<Result<TensorData, DecodeProblem>> {
    if dtype == Dtype::F32 {
        // `Metadata` has checked that `bytes` is the shape's size in f32.
        let mut values = vec![0f32; bytes / 4];
        source.read_exact(bytemuck::cast_slice_mut(&mut values))?;
        // The file is little-endian; a no-op on little-endian hosts.
        for v in &mut values {
            *v = f32::from_le_bytes(v.to_ne_bytes());
        }
        return Ok(Ok(TensorData::F32(values)));
    }
    let mut raw = vec![0u8; bytes];
    source.read_exact(&mut raw)?;
    Ok(decode(dtype, &raw))
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
