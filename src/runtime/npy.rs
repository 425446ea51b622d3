//! Reading and writing NumPy `.npy` files, the format model inputs and
//! outputs are exchanged in.
//!
//! Only the dtypes a `Tensor` can hold are accepted (float32, int64, int32,
//! bool, either byte order); anything else is rejected with the conversion
//! the user should apply on the NumPy side, rather than silently narrowed.

use std::fs::File;
use std::io::{self, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use npyz::{Deserialize, Serialize, TypeChar, TypeStr, WriterBuilder};

use crate::ir::dim::checked_bytes;
use crate::tensor::{Tensor, TensorData};

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("`{path}` is not a valid .npy file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "`{path}` is truncated: its header announces {expected} data bytes, the file holds {found}"
    )]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("`{path}` holds {found}; lamina reads float32, int64, int32, bool{}", hint_suffix(.hint))]
    UnsupportedDType {
        path: PathBuf,
        /// The NumPy name of the dtype in the file (`float64`, `uint8`, ...).
        found: String,
        /// The NumPy call that converts the array to an accepted dtype.
        hint: Option<String>,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!(": save with {h}"),
        None => String::new(),
    }
}

/// The element types a `.npy` file may hold for lamina to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accepted {
    F32,
    I64,
    I32,
    Bool,
}

/// Classifies a plain NumPy type string: accepted, or the error that names
/// it and says how to convert it.
fn classify(ty: &TypeStr) -> Result<Accepted, (String, Option<String>)> {
    let size = ty.size_field();
    let accepted = match (ty.type_char(), size) {
        (TypeChar::Float, 4) => Some(Accepted::F32),
        (TypeChar::Int, 8) => Some(Accepted::I64),
        (TypeChar::Int, 4) => Some(Accepted::I32),
        (TypeChar::Bool, 1) => Some(Accepted::Bool),
        _ => None,
    };
    if let Some(a) = accepted {
        return Ok(a);
    }
    let bits = size * 8;
    let (name, hint) = match ty.type_char() {
        TypeChar::Float => (format!("float{bits}"), Some(".astype(np.float32)")),
        TypeChar::Int => (format!("int{bits}"), Some(".astype(np.int64)")),
        TypeChar::Uint => (format!("uint{bits}"), Some(".astype(np.int64)")),
        TypeChar::Bool => (format!("bool of {size} bytes"), Some(".astype(np.bool_)")),
        TypeChar::Complex => (format!("complex{bits}"), None),
        TypeChar::TimeDelta => ("timedelta64".to_string(), Some(".astype(np.int64)")),
        TypeChar::DateTime => ("datetime64".to_string(), Some(".astype(np.int64)")),
        TypeChar::ByteStr => (format!("bytes (S{size})"), None),
        TypeChar::UnicodeStr => (format!("str (U{size})"), None),
        TypeChar::RawData => (format!("raw void (V{size})"), None),
        // `TypeChar` is non-exhaustive: name future kinds by their type string.
        _ => (format!("dtype '{ty}'"), None),
    };
    Err((name, hint.map(str::to_string)))
}

/// Reads a `.npy` file into a row-major tensor. Fortran-ordered arrays are
/// transposed into C order; big-endian data is byte-swapped.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes).map_err(|e| e.at(path))
}

/// A parse failure before the path is attached.
enum ParseError {
    Corrupt(String),
    Truncated { expected: usize, found: usize },
    Unsupported { found: String, hint: Option<String> },
}

impl ParseError {
    fn at(self, path: &Path) -> NpyError {
        let path = path.to_path_buf();
        match self {
            ParseError::Corrupt(reason) => NpyError::Corrupt { path, reason },
            ParseError::Truncated { expected, found } => NpyError::Truncated {
                path,
                expected,
                found,
            },
            ParseError::Unsupported { found, hint } => {
                NpyError::UnsupportedDType { path, found, hint }
            }
        }
    }
}

fn parse_npy(bytes: &[u8]) -> Result<Tensor, ParseError> {
    let mut cursor = Cursor::new(bytes);
    let header = npyz::NpyHeader::from_reader(&mut cursor)
        .map_err(|e| ParseError::Corrupt(e.to_string()))?;
    let data_start = cursor.position() as usize;
    let dtype = header.dtype();
    let type_str = match &dtype {
        npyz::DType::Plain(ty) => ty.clone(),
        npyz::DType::Record(_) | npyz::DType::Array(..) => {
            return Err(ParseError::Unsupported {
                found: format!("a structured dtype {}", dtype.descr()),
                hint: None,
            });
        }
    };
    let accepted =
        classify(&type_str).map_err(|(found, hint)| ParseError::Unsupported { found, hint })?;

    let shape: Vec<usize> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| ParseError::Corrupt("a dimension does not fit in memory".to_string()))?;
    let item_size = type_str.num_bytes().unwrap_or(usize::MAX);
    // Checked as numpy checks it (zero dims skipped), so `[0, 2^63]` is
    // refused too: lamina could not write such an array back.
    let expected = checked_bytes(&shape, item_size)
        .ok_or_else(|| ParseError::Corrupt(format!("shape {shape:?} overflows")))?;
    let found = bytes.len() - data_start;
    if found < expected {
        return Err(ParseError::Truncated { expected, found });
    }
    if found > expected {
        return Err(ParseError::Corrupt(format!(
            "{} bytes follow the {expected} data bytes its header announces",
            found - expected
        )));
    }

    let file = npyz::NpyFile::with_header(header.clone(), &bytes[data_start..]);
    let fortran = header.order() == npyz::Order::Fortran && shape.len() > 1;
    let data = match accepted {
        Accepted::F32 => TensorData::F32(read_elements(file, &shape, fortran)?),
        Accepted::I64 => TensorData::I64(read_elements(file, &shape, fortran)?),
        Accepted::I32 => TensorData::I32(read_elements(file, &shape, fortran)?),
        Accepted::Bool => TensorData::Bool(read_elements(file, &shape, fortran)?),
    };
    Ok(Tensor::new(shape, data))
}

fn read_elements<T: Deserialize + Copy>(
    file: npyz::NpyFile<&[u8]>,
    shape: &[usize],
    fortran: bool,
) -> Result<Vec<T>, ParseError> {
    let stored: Vec<T> = file
        .into_vec()
        .map_err(|e| ParseError::Corrupt(e.to_string()))?;
    Ok(if fortran {
        fortran_to_c(&stored, shape)
    } else {
        stored
    })
}

/// Reorders column-major elements (first index fastest) into row-major.
fn fortran_to_c<T: Copy>(stored: &[T], shape: &[usize]) -> Vec<T> {
    // Column-major strides: axis 0 has stride 1.
    let mut fortran_strides = vec![1usize; shape.len()];
    for axis in 1..shape.len() {
        fortran_strides[axis] = fortran_strides[axis - 1] * shape[axis - 1];
    }
    let mut out = Vec::with_capacity(stored.len());
    if stored.is_empty() {
        return out;
    }
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    for _ in 0..stored.len() {
        out.push(stored[offset]);
        // Advance the row-major odometer, keeping `offset` in step.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            offset += fortran_strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            offset -= fortran_strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    out
}

/// Writes a tensor as a little-endian, C-ordered `.npy` file that
/// `numpy.load` reads back with the same dtype and shape.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let io_error = |source| NpyError::Write {
        path: path.to_path_buf(),
        source,
    };
    // numpy refuses a header whose sizes overflow its index type, even
    // with a zero dim; such a file would be written but never read.
    if checked_bytes(t.shape(), t.dtype().size_bytes()).is_none() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "shape {:?} is larger than numpy (or any array) can describe",
                t.shape()
            ),
        )));
    }
    let file = File::create(path).map_err(io_error)?;
    let mut writer = BufWriter::new(file);
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    match t.data() {
        TensorData::F32(v) => write_elements(&mut writer, "<f4", &shape, v),
        TensorData::I64(v) => write_elements(&mut writer, "<i8", &shape, v),
        TensorData::I32(v) => write_elements(&mut writer, "<i4", &shape, v),
        TensorData::Bool(v) => write_elements(&mut writer, "|b1", &shape, v),
    }
    .and_then(|()| writer.flush())
    .map_err(io_error)
}

fn write_elements<T: Serialize, W: Write>(
    writer: W,
    type_str: &str,
    shape: &[u64],
    values: &[T],
) -> io::Result<()> {
    let type_str: TypeStr = type_str
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut npy = npyz::WriteOptions::new()
        .dtype(npyz::DType::Plain(type_str))
        .shape(shape)
        .writer(writer)
        .begin_nd()?;
    for v in values {
        npy.push(v)?;
    }
    npy.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_reorder_matches_a_transpose() {
        // A 2x3 matrix [[0,1,2],[3,4,5]] stored column-major is 0,3,1,4,2,5.
        let stored = [0, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&stored, &[2, 3]), vec![0, 1, 2, 3, 4, 5]);
        // 2x3x2, element (i,j,k) = 100i + 10j + k, column-major storage.
        let shape = [2, 3, 2];
        let mut stored = vec![0; 12];
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..2 {
                    stored[i + 2 * j + 6 * k] = 100 * i + 10 * j + k;
                }
            }
        }
        let c = fortran_to_c(&stored, &shape);
        let expected: Vec<usize> = (0..2)
            .flat_map(|i| (0..3).flat_map(move |j| (0..2).map(move |k| 100 * i + 10 * j + k)))
            .collect();
        assert_eq!(c, expected);
    }

    #[test]
    fn classify_names_rejected_dtypes_with_a_fix() {
        let f64_ty: TypeStr = "<f8".parse().unwrap();
        let (name, hint) = classify(&f64_ty).unwrap_err();
        assert_eq!(name, "float64");
        assert_eq!(hint.as_deref(), Some(".astype(np.float32)"));
        let u8_ty: TypeStr = "|u1".parse().unwrap();
        assert_eq!(classify(&u8_ty).unwrap_err().0, "uint8");
        let be_f32: TypeStr = ">f4".parse().unwrap();
        assert_eq!(classify(&be_f32), Ok(Accepted::F32));
    }
}
