//! Loading a safetensors checkpoint into named tensors.
//!
//! Half-precision checkpoints (F16, BF16) are widened to f32 on load because
//! all arithmetic in lamina is f32; integer tensors (position ids, masks)
//! keep their type so that parameter binding can check them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// bytes straight into its own buffer (no copy of the whole file), by
    /// positional reads spread over the cores (first touches of fresh
    /// memory dominate reading a checkpoint, and they go in parallel).
    pub fn load(path: impl AsRef<Path>) -> Result<WeightFile, WeightError> {
        let path = path.as_ref();
        let read_error = |source| WeightError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        WeightFile::read(path, &FileSource::new(file), len)
    }

    /// Decodes a safetensors image already in memory; `path` is only used in
    /// messages and recorded in the result.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<WeightFile, WeightError> {
        WeightFile::read(path.as_ref(), bytes, bytes.len() as u64)
    }

    /// A safetensors image of `len` bytes from `source`. The header is
    /// checked against `len` before anything it describes is allocated.
    fn read(
        path: &Path,
        source: &(impl Source + ?Sized),
        len: u64,
    ) -> Result<WeightFile, WeightError> {
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
        source.read_at(&mut header_len, 0).map_err(read_error)?;
        let header_len = u64::from_le_bytes(header_len);
        if header_len > MAX_HEADER_BYTES || header_len > len - 8 {
            return Err(corrupt(format!(
                "the header claims {header_len} bytes but the file holds {len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        source.read_at(&mut header, 8).map_err(read_error)?;
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
        // In file order. f32 tensors are allocated up front and read in
        // place; the others are decoded from their bytes as they arrive.
        let names = metadata.offset_keys();
        let infos: Vec<_> = names
            .iter()
            .map(|name| metadata.info(name).expect("offset_keys lists tensors"))
            .collect();
        let mut buffers: Vec<Vec<f32>> = infos
            .iter()
            .map(|info| {
                let bytes = info.data_offsets.1 - info.data_offsets.0;
                // `Metadata` has checked that `bytes` is the shape's size in f32.
                vec![
                    0f32;
                    if info.dtype == Dtype::F32 {
                        bytes / 4
                    } else {
                        0
                    }
                ]
            })
            .collect();
        let data_start = 8 + header_len;
        let jobs = read_jobs(infos.iter().zip(buffers.iter_mut()).enumerate().map(
            |(index, (info, buffer))| Planned {
                index,
                dtype: info.dtype,
                offset: data_start + info.data_offsets.0 as u64,
                bytes: info.data_offsets.1 - info.data_offsets.0,
                f32_buffer: bytemuck::cast_slice_mut(buffer.as_mut_slice()),
            },
        ));
        let done =
            crate::runtime::parallel::map_by_cost(jobs, |job| job.len / 4, |job| job.run(source));
        let mut decoded: Vec<Option<Result<TensorData, DecodeProblem>>> =
            (0..infos.len()).map(|_| None).collect();
        for result in done {
            for (index, data) in result.map_err(read_error)? {
                decoded[index] = Some(data);
            }
        }
        let mut tensors = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for (((name, info), mut values), data) in
            names.into_iter().zip(&infos).zip(buffers).zip(decoded)
        {
            let data = match data {
                Some(data) => data,
                None => {
                    // The file is little-endian; a no-op on little-endian hosts.
                    for v in &mut values {
                        *v = f32::from_le_bytes(v.to_ne_bytes());
                    }
                    Ok(TensorData::F32(values))
                }
            };
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

/// Where a safetensors image's bytes come from: positional reads, so that
/// several threads can read one file at once.
trait Source: Sync {
    /// Fills `buf` with the bytes from `offset` on (an error if there are
    /// fewer).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// An open file read by offset: `pread` on Unix; elsewhere a seek and a
/// read under a lock.
struct FileSource {
    #[cfg(unix)]
    file: std::fs::File,
    #[cfg(not(unix))]
    file: std::sync::Mutex<std::fs::File>,
}

impl FileSource {
    fn new(file: std::fs::File) -> FileSource {
        FileSource {
            #[cfg(unix)]
            file,
            #[cfg(not(unix))]
            file: std::sync::Mutex::new(file),
        }
    }
}

impl Source for FileSource {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    #[cfg(not(unix))]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

/// An f32 tensor this large or larger is read straight into its buffer in
/// pieces of at most `CHUNK_BYTES`; smaller tensors (and other dtypes) are
/// read together, up to `CHUNK_BYTES` at a time, and copied or decoded.
const DIRECT_BYTES: usize = 1 << 16;
const CHUNK_BYTES: usize = 1 << 20;

/// One tensor of the file, in file order, as `read_jobs` takes it.
struct Planned<'a> {
    /// Its position in file order.
    index: usize,
    dtype: Dtype,
    /// Where its bytes start in the file.
    offset: u64,
    bytes: usize,
    /// Its f32 buffer's bytes (empty for other dtypes).
    f32_buffer: &'a mut [u8],
}

/// Where one piece of a read goes.
enum Piece<'a> {
    /// Into (part of) an f32 tensor's buffer.
    F32(&'a mut [u8]),
    /// A whole tensor of another dtype, decoded from its bytes.
    Decode {
        index: usize,
        dtype: Dtype,
        bytes: usize,
    },
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::F32(dst) => dst.len(),
            Piece::Decode { bytes, .. } => *bytes,
        }
    }
}

/// One read: `len` contiguous bytes of the file at `offset`, cut into
/// `pieces` in order.
struct ReadJob<'a> {
    offset: u64,
    len: usize,
    pieces: Vec<Piece<'a>>,
}

/// What a read decoded: the tensors of other dtypes, by file-order index.
type Decoded = Vec<(usize, Result<TensorData, DecodeProblem>)>;

impl ReadJob<'_> {
    /// Reads the job's bytes: an f32 piece alone straight into its buffer,
    /// several pieces (or one to decode) through one byte buffer.
    fn run(self, source: &(impl Source + ?Sized)) -> std::io::Result<Decoded> {
        let ReadJob {
            offset,
            len,
            mut pieces,
        } = self;
        if let [Piece::F32(dst)] = pieces.as_mut_slice() {
            source.read_at(dst, offset)?;
            return Ok(Vec::new());
        }
        let mut bytes = vec![0u8; len];
        source.read_at(&mut bytes, offset)?;
        let mut decoded = Vec::new();
        let mut at = 0;
        for piece in pieces {
            let raw = &bytes[at..at + piece.len()];
            at += piece.len();
            match piece {
                Piece::F32(dst) => dst.copy_from_slice(raw),
                Piece::Decode { index, dtype, .. } => decoded.push((index, decode(dtype, raw))),
            }
        }
        Ok(decoded)
    }
}

/// The reads that fill `tensors` (in file order, their byte ranges tiling
/// the data section).
fn read_jobs<'a>(tensors: impl Iterator<Item = Planned<'a>>) -> Vec<ReadJob<'a>> {
    let mut jobs: Vec<ReadJob<'a>> = Vec::new();
    // The batch of small pieces being gathered (the last job, when open).
    let mut open = false;
    for t in tensors {
        if t.dtype == Dtype::F32 && t.bytes >= DIRECT_BYTES {
            open = false;
            let mut offset = t.offset;
            for chunk in t.f32_buffer.chunks_mut(CHUNK_BYTES) {
                let len = chunk.len();
                jobs.push(ReadJob {
                    offset,
                    len,
                    pieces: vec![Piece::F32(chunk)],
                });
                offset += len as u64;
            }
            continue;
        }
        let piece = if t.dtype == Dtype::F32 {
            Piece::F32(t.f32_buffer)
        } else {
            Piece::Decode {
                index: t.index,
                dtype: t.dtype,
                bytes: t.bytes,
            }
        };
        match jobs.last_mut() {
            Some(job)
                if open
                    && job.offset + job.len as u64 == t.offset
                    && job.len + t.bytes <= CHUNK_BYTES =>
            {
                job.len += t.bytes;
                job.pieces.push(piece);
            }
            _ => {
                jobs.push(ReadJob {
                    offset: t.offset,
                    len: t.bytes,
                    pieces: vec![piece],
                });
                open = true;
            }
        }
    }
    jobs
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
