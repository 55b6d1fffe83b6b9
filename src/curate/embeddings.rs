//! Embedding sets on disk: a folder written by `dinov2 curate embed`, or one safetensors file
//! holding `embeddings` `[N, D]` f32 made elsewhere (row i = item i, no file names).
//!
//! The folder: `manifest.json` (dimension, shard size, item count, source), then for each
//! shard `shard-NNNNN.files.txt` (the items of its rows, one per line, in row order) and
//! `shard-NNNNN.safetensors` (`embeddings` `[n, D]`, L2-normalised; metadata `unreadable`: the
//! items of its range that could not be decoded, with the reason). The safetensors file is
//! written last, each file to a temporary name and renamed: a shard exists once its
//! safetensors file does, and an interrupted run never leaves half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::knn::Matrix;
use crate::error::{Error, Result};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "dinov2-wgpu-embeddings";
/// The tensor name of the embeddings in a shard or a single file.
pub const TENSOR: &str = "embeddings";

/// What `curate embed` records about a folder of shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Embedding width.
    pub dim: usize,
    /// Items per shard (the last may hold fewer).
    pub shard_size: usize,
    /// Items in the source (readable or not).
    pub n_items: usize,
    /// The image folder (or dataset name) embedded.
    pub source: String,
    /// The weights and the image sizing used, so a resume cannot mix models.
    pub weights: String,
    pub size: String,
    /// Each embedding is the normalised mean of the image's and its mirror image's
    /// (`curate embed --flip-average`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flip_average: bool,
}

impl Manifest {
    pub fn n_shards(&self) -> usize {
        self.n_items.div_ceil(self.shard_size.max(1))
    }
}

/// `shard-NNNNN.safetensors` and `shard-NNNNN.files.txt` of shard `i`.
pub fn shard_paths(dir: &Path, i: usize) -> (PathBuf, PathBuf) {
    (dir.join(format!("shard-{i:05}.safetensors")), dir.join(format!("shard-{i:05}.files.txt")))
}

/// An embedding set in memory: `n × dim` f32, each row L2-normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub dim: usize,
    pub data: Vec<f32>,
    /// The item (file) of each row, where the input had a file list.
    pub paths: Option<Vec<String>>,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn matrix(&self) -> Matrix<'_> {
        Matrix::new(&self.data, self.dim)
    }

    /// The file of row `i`, empty without a file list.
    pub fn path(&self, i: usize) -> &str {
        self.paths.as_ref().map_or("", |p| p[i].as_str())
    }

    /// Read a folder written by `curate embed` or a single safetensors file with
    /// `embeddings` `[N, D]`. Rows are L2-normalised on reading (a zero row stays zero).
    pub fn read(path: &Path) -> Result<Self> {
        let mut set = if path.is_dir() { read_folder(path)? } else { read_single(path)? };
        normalise_rows(&mut set.data, set.dim);
        Ok(set)
    }
}

/// Scale each row of `[n, dim]` to unit length (rows of zero length are left as they are).
pub fn normalise_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// Read `manifest.json` of an embedding folder.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Err(Error::Usage(format!(
            "{}: not an embedding folder (no {MANIFEST}; write one with `dinov2 curate embed`, or give a \
             safetensors file holding `{TENSOR}` [N, D])",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("not a manifest of `curate embed`: {e}")))?;
    if manifest.format != FORMAT || manifest.dim == 0 || manifest.shard_size == 0 {
        return Err(Error::checkpoint(&path, "not a manifest of `curate embed`"));
    }
    Ok(manifest)
}

/// One shard: its rows and the items they belong to.
pub struct Shard {
    pub data: Vec<f32>,
    pub paths: Vec<String>,
    /// `(item, reason)` of the items of the shard's range that could not be read.
    pub unreadable: Vec<(String, String)>,
}

/// Read shard `i` of `dir` and check it against the manifest.
pub fn read_shard(dir: &Path, i: usize, manifest: &Manifest) -> Result<Shard> {
    let (tensor_path, files_path) = shard_paths(dir, i);
    let (shape, data, metadata) = read_tensor(&tensor_path)?;
    if shape.len() != 2 || shape[1] != manifest.dim {
        return Err(Error::checkpoint(
            &tensor_path,
            format!("`{TENSOR}` has shape {shape:?}, expected [n, {}] as the manifest says", manifest.dim),
        ));
    }
    if !files_path.exists() {
        return Err(Error::checkpoint(&files_path, "missing: the file list of this shard"));
    }
    let text = std::fs::read_to_string(&files_path).map_err(|e| Error::io(&files_path, e))?;
    let paths: Vec<String> = text.lines().map(str::to_string).collect();
    if paths.len() != shape[0] {
        return Err(Error::checkpoint(
            &files_path,
            format!("lists {} files for the {} rows of {}", paths.len(), shape[0], tensor_path.display()),
        ));
    }
    let unreadable = match metadata.get("unreadable") {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| Error::checkpoint(&tensor_path, format!("unreadable metadata `unreadable`: {e}")))?,
        None => Vec::new(),
    };
    Ok(Shard { data, paths, unreadable })
}

fn read_folder(dir: &Path) -> Result<Embeddings> {
    let manifest = read_manifest(dir)?;
    let mut data = Vec::new();
    let mut paths = Vec::new();
    for i in 0..manifest.n_shards() {
        let (tensor_path, _) = shard_paths(dir, i);
        if !tensor_path.exists() {
            return Err(Error::checkpoint(
                &tensor_path,
                format!(
                    "missing: shard {i} of {} (an interrupted `curate embed`? run it again to finish)",
                    manifest.n_shards()
                ),
            ));
        }
        let shard = read_shard(dir, i, &manifest)?;
        data.extend(shard.data);
        paths.extend(shard.paths);
    }
    if paths.is_empty() {
        return Err(Error::Usage(format!("{}: the embedding folder holds no embeddings", dir.display())));
    }
    Ok(Embeddings { dim: manifest.dim, data, paths: Some(paths) })
}

fn read_single(path: &Path) -> Result<Embeddings> {
    let (shape, data, _) = read_tensor(path)?;
    if shape.len() != 2 || shape[1] == 0 {
        return Err(Error::checkpoint(path, format!("`{TENSOR}` has shape {shape:?}, expected [N, D]")));
    }
    if shape[0] == 0 {
        return Err(Error::Usage(format!("{}: no embeddings (N = 0)", path.display())));
    }
    Ok(Embeddings { dim: shape[1], data, paths: None })
}

/// A tensor's shape, its f32 values, and its file's metadata.
type TensorWithMetadata = (Vec<usize>, Vec<f32>, HashMap<String, String>);

/// The `embeddings` tensor of a safetensors file (f32), its shape and the file's metadata.
fn read_tensor(path: &Path) -> Result<TensorWithMetadata> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let view =
        st.tensor(TENSOR).map_err(|_| Error::checkpoint(path, format!("no tensor `{TENSOR}` [N, D]")))?;
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(Error::checkpoint(path, format!("`{TENSOR}` is {:?}, expected f32", view.dtype())));
    }
    let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((view.shape().to_vec(), data, metadata))
}

/// Write shard `i`: its file list, then its embeddings (each atomically; the safetensors file
/// last, so it marks the shard complete).
pub fn write_shard(dir: &Path, i: usize, dim: usize, shard: &Shard) -> Result<()> {
    let (tensor_path, files_path) = shard_paths(dir, i);
    let mut list = shard.paths.join("\n");
    if !list.is_empty() {
        list.push('\n');
    }
    crate::io::write_atomic(&files_path, list.as_bytes())?;
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), FORMAT.to_string());
    metadata.insert(
        "unreadable".to_string(),
        serde_json::to_string(&shard.unreadable).map_err(|e| Error::Usage(e.to_string()))?,
    );
    let n = shard.data.len() / dim.max(1);
    let bytes = crate::io::safetensors_bytes(&[(TENSOR, vec![n, dim], &shard.data)], Some(metadata))?;
    crate::io::write_atomic(&tensor_path, &bytes)
}

/// Write `embeddings` `[n, dim]` as one safetensors file (the single-file input form).
pub fn write_single(path: &Path, data: &[f32], dim: usize) -> Result<()> {
    let n = data.len() / dim.max(1);
    let bytes = crate::io::safetensors_bytes(&[(TENSOR, vec![n, dim], data)], None)?;
    crate::io::write_atomic(path, &bytes)
}
