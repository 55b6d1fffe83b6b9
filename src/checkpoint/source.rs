//! Raw tensors from a checkpoint file: PyTorch pickles (`.pth`, `.pt`, `.bin`) through
//! `pytorch-reader`, safetensors through `safetensors`. Everything becomes f32 on the host;
//! shapes are known before any data is read, so a checkpoint is validated before it is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Shapes and lazily read f32 data of the tensors in one file.
pub struct TensorSource {
    path: PathBuf,
    shapes: BTreeMap<String, Vec<usize>>,
    /// safetensors `__metadata__` (empty for PyTorch files).
    metadata: BTreeMap<String, String>,
    kind: SourceKind,
}

enum SourceKind {
    #[cfg(feature = "native")]
    Pickle(pytorch_reader::PytorchReader),
    Safetensors {
        bytes: Vec<u8>,
        header_len: usize,
        infos: BTreeMap<String, (safetensors::Dtype, usize, usize)>,
    },
}

impl TensorSource {
    /// Open a checkpoint file; the format is told by its first bytes, not its name.
    pub fn open(path: &Path) -> Result<Self> {
        let mut head = [0u8; 9];
        let n = {
            use std::io::Read;
            let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            file.read(&mut head).map_err(|e| Error::io(path, e))?
        };
        if n < 8 {
            return Err(Error::checkpoint(path, format!("file is {n} bytes long: not a checkpoint")));
        }
        // safetensors: a little-endian u64 header length, then the JSON header ("{"). Checked
        // first: the length's low byte can be anything, 0x80 included.
        let safetensors = n == 9 && head[8] == b'{';
        // A ZIP archive (torch.save since 1.6) starts with "PK"; the legacy pickle stream with
        // the pickle protocol byte 0x80. Anything else is tried as safetensors.
        if !safetensors && (head.starts_with(b"PK") || head[0] == 0x80) {
            Self::open_pickle(path)
        } else {
            Self::open_safetensors(path)
        }
    }

    #[cfg(not(feature = "native"))]
    fn open_pickle(path: &Path) -> Result<Self> {
        Err(Error::checkpoint(path, "PyTorch checkpoints need the native build; convert to safetensors"))
    }

    #[cfg(feature = "native")]
    fn open_pickle(path: &Path) -> Result<Self> {
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| Error::checkpoint(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let shapes = reader.tensors().iter().map(|(k, t)| (k.clone(), t.shape().to_vec())).collect();
        Ok(Self {
            path: path.to_path_buf(),
            shapes,
            metadata: BTreeMap::new(),
            kind: SourceKind::Pickle(reader),
        })
    }

    fn open_safetensors(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_safetensors_bytes(path, bytes)
    }

    /// A safetensors file already in memory (the browser has no file system); `path` names it
    /// in errors.
    pub fn from_safetensors_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            use safetensors::SafeTensorError as E;
            let message = match e {
                E::MetadataIncompleteBuffer | E::InvalidHeaderLength => {
                    "file length does not match its safetensors header (truncated or corrupt)".to_string()
                }
                other => format!("not a readable checkpoint (PyTorch or safetensors): {other}"),
            };
            Error::checkpoint(path, message)
        })?;
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        let mut shapes = BTreeMap::new();
        let mut infos = BTreeMap::new();
        for (name, info) in meta.tensors() {
            shapes.insert(name.clone(), info.shape.clone());
            infos.insert(name, (info.dtype, info.data_offsets.0, info.data_offsets.1));
        }
        Ok(Self {
            path: path.to_path_buf(),
            shapes,
            metadata,
            kind: SourceKind::Safetensors { bytes, header_len, infos },
        })
    }

    /// A safetensors metadata value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name with its shape.
    pub fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// The shape of `key`, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.shapes.get(key).map(Vec::as_slice)
    }

    /// Read `key` as f32, converting from f64/f16/bf16.
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        let bad = |msg: String| Error::checkpoint(&self.path, format!("tensor `{key}`: {msg}"));
        match &self.kind {
            #[cfg(feature = "native")]
            SourceKind::Pickle(reader) => {
                let tensor = reader.get(key).ok_or_else(|| bad("not in the checkpoint".into()))?;
                let bytes = tensor
                    .read()
                    .map_err(|e| bad(format!("unreadable data ({e}); is the file truncated?")))?;
                use pytorch_reader::DType as D;
                let dtype = match tensor.dtype() {
                    D::F32 => ElemType::F32,
                    D::F64 => ElemType::F64,
                    D::F16 => ElemType::F16,
                    D::BF16 => ElemType::BF16,
                    other => {
                        return Err(bad(format!("element type {other:?} is not a float type")));
                    }
                };
                Ok(to_f32(&bytes, dtype))
            }
            SourceKind::Safetensors { bytes, header_len, infos } => {
                let &(dtype, start, end) =
                    infos.get(key).ok_or_else(|| bad("not in the checkpoint".into()))?;
                let begin = 8 + header_len;
                let data = bytes.get(begin + start..begin + end).ok_or_else(|| {
                    bad("data lies past the end of the file; is the file truncated?".into())
                })?;
                let dtype = match dtype {
                    safetensors::Dtype::F32 => ElemType::F32,
                    safetensors::Dtype::F64 => ElemType::F64,
                    safetensors::Dtype::F16 => ElemType::F16,
                    safetensors::Dtype::BF16 => ElemType::BF16,
                    other => {
                        return Err(bad(format!("element type {other:?} is not a float type")));
                    }
                };
                Ok(to_f32(data, dtype))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum ElemType {
    F32,
    F64,
    F16,
    BF16,
}

fn to_f32(bytes: &[u8], dtype: ElemType) -> Vec<f32> {
    match dtype {
        ElemType::F32 => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        ElemType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        ElemType::F16 => {
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        ElemType::BF16 => {
            bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
    }
}
