//! Deduplication (DINOv2 paper, section 3 and appendix A): self-deduplication keeps one image
//! of every group of near-copies — the k nearest neighbours of each embedding by cosine
//! similarity (k = 64), the pairs above a threshold (0.6) as edges, connected components by a
//! union-find, the smallest index of each component kept; relative deduplication drops every
//! image whose nearest evaluation image is more similar than a threshold (0.45).

use std::path::Path;

use super::embed::csv_field;
use super::embeddings::{Embeddings, normalise_rows, read_manifest, read_shard, shard_paths};
use super::knn::{Matrix, Neighbours, Search};
use super::union_find::UnionFind;
use crate::error::{Error, Result};

/// The paper's values.
pub const SELF_K: usize = 64;
pub const SELF_THRESHOLD: f32 = 0.6;
pub const RELATIVE_THRESHOLD: f32 = 0.45;

/// Rows of the database fed to the search at a time (streams the similarity tiles).
const CHUNK_ROWS: usize = 16384;

/// One decision per item.
#[derive(Clone, Debug, PartialEq)]
pub struct Decisions {
    pub kept: Vec<bool>,
    /// The index kept in the item's place (its own index when kept, or when nothing replaces it).
    pub representative: Vec<u32>,
}

impl Decisions {
    pub fn n_kept(&self) -> usize {
        self.kept.iter().filter(|k| **k).count()
    }

    /// Write `index,path,kept,representative` (header, one row per item) atomically; `paths`:
    /// the file of each item, where known.
    pub fn write_csv(&self, path: &Path, paths: Option<&[String]>) -> Result<()> {
        let mut text = String::from("index,path,kept,representative\n");
        for (i, (&kept, &rep)) in self.kept.iter().zip(&self.representative).enumerate() {
            let file = paths.map_or("", |p| p[i].as_str());
            text.push_str(&format!("{i},{},{},{rep}\n", csv_field(file), u8::from(kept)));
        }
        crate::io::write_atomic(path, text.as_bytes())
    }
}

/// The k nearest rows of `database` for every row of `queries` on `on`, the database fed in
/// chunks (`progress` gets the rows done after each).
pub fn search(
    queries: Matrix,
    database: Matrix,
    k: usize,
    exclude_self: bool,
    on: &Search,
    mut progress: impl FnMut(usize),
) -> Neighbours {
    let mut lists = on.lists(queries, k);
    let mut offset = 0;
    while offset < database.n {
        let rows = CHUNK_ROWS.min(database.n - offset);
        let chunk =
            Matrix::new(&database.data[offset * database.d..(offset + rows) * database.d], database.d);
        lists.update(chunk, offset, exclude_self.then_some(0));
        offset += rows;
        progress(rows);
    }
    lists.finish()
}

/// Components of the graph whose edges are the neighbour pairs with similarity above
/// `threshold`: each item's representative is the smallest index of its component.
pub fn components(neighbours: &Neighbours, threshold: f32) -> Vec<u32> {
    let n = neighbours.n_queries();
    let mut uf = UnionFind::new(n);
    for i in 0..n {
        let (indices, sims) = neighbours.of(i);
        for (&j, &s) in indices.iter().zip(sims) {
            if j != u32::MAX && s > threshold {
                uf.union(i, j as usize);
            }
        }
    }
    uf.representatives()
}

/// Self-deduplication of `items`: keep one item per component of near-copies.
pub fn self_dedup(
    items: &Embeddings,
    k: usize,
    threshold: f32,
    on: &Search,
    progress: impl FnMut(usize),
) -> Decisions {
    let m = items.matrix();
    let neighbours = search(m, m, k, true, on, progress);
    let representative = components(&neighbours, threshold);
    let kept = representative.iter().enumerate().map(|(i, &r)| r as usize == i).collect();
    Decisions { kept, representative }
}

/// Relative deduplication: drop every item of `items` more similar than `threshold` to any
/// item of `against`. Returns the decisions and each item's best similarity to `against`.
pub fn relative_dedup(
    items: &Embeddings,
    against: &Embeddings,
    threshold: f32,
    on: &Search,
    progress: impl FnMut(usize),
) -> (Decisions, Vec<f32>) {
    let neighbours = search(items.matrix(), against.matrix(), 1, false, on, progress);
    let best: Vec<f32> = (0..items.len()).map(|i| neighbours.of(i).1[0]).collect();
    let kept = best.iter().map(|&s| s <= threshold).collect();
    let representative = (0..items.len() as u32).collect();
    (Decisions { kept, representative }, best)
}

/// Self-deduplication of an embedding folder too large to hold at once: the shards are taken
/// in query blocks of at most `max_rows` rows (whole shards; one shard when a shard alone is
/// larger), and for each block every shard is streamed past it; each block's neighbour pairs
/// go into one union-find over all rows. Memory: one block, one shard, the block's neighbour
/// lists and the file names. Gives the same decisions as [`self_dedup`] on the whole set.
/// Returns the decisions and the file of each row.
pub fn self_dedup_folder(
    dir: &Path,
    k: usize,
    threshold: f32,
    max_rows: usize,
    on: &Search,
    mut progress: impl FnMut(usize),
) -> Result<(Decisions, Vec<String>)> {
    let manifest = read_manifest(dir)?;
    let n_shards = manifest.n_shards();
    // the rows of each shard, from the file lists (cheap), so blocks and offsets are known
    let mut paths = Vec::new();
    let mut offsets = Vec::with_capacity(n_shards + 1);
    for i in 0..n_shards {
        let (tensor, files) = shard_paths(dir, i);
        if !tensor.exists() {
            return Err(Error::checkpoint(&tensor, "missing: run `curate embed` again to finish the folder"));
        }
        if !files.exists() {
            return Err(Error::checkpoint(&files, "missing: the file list of this shard"));
        }
        offsets.push(paths.len());
        let text = std::fs::read_to_string(&files).map_err(|e| Error::io(&files, e))?;
        paths.extend(text.lines().map(str::to_string));
    }
    offsets.push(paths.len());
    let n = paths.len();
    if n == 0 {
        return Err(Error::Usage(format!("{}: the embedding folder holds no embeddings", dir.display())));
    }
    let load = |i: usize| -> Result<Vec<f32>> {
        let shard = read_shard(dir, i, &manifest)?;
        let mut data = shard.data;
        normalise_rows(&mut data, manifest.dim);
        Ok(data)
    };
    let mut uf = UnionFind::new(n);
    let mut first = 0;
    while first < n_shards {
        // the next block of whole shards
        let mut last = first + 1;
        while last < n_shards && offsets[last + 1] - offsets[first] <= max_rows {
            last += 1;
        }
        let block: Vec<f32> = (first..last).map(load).collect::<Result<Vec<_>>>()?.concat();
        let block_offset = offsets[first];
        let queries = Matrix::new(&block, manifest.dim);
        let mut lists = on.lists(queries, k);
        for j in 0..n_shards {
            let data;
            let chunk = if (first..last).contains(&j) {
                let start = (offsets[j] - block_offset) * manifest.dim;
                let end = (offsets[j + 1] - block_offset) * manifest.dim;
                Matrix::new(&block[start..end], manifest.dim)
            } else {
                data = load(j)?;
                Matrix::new(&data, manifest.dim)
            };
            lists.update(chunk, offsets[j], Some(block_offset));
            progress(chunk.n * queries.n / n.max(1));
        }
        let neighbours = lists.finish();
        for q in 0..queries.n {
            let (indices, sims) = neighbours.of(q);
            for (&j, &s) in indices.iter().zip(sims) {
                if j != u32::MAX && s > threshold {
                    uf.union(block_offset + q, j as usize);
                }
            }
        }
        first = last;
    }
    let representative = uf.representatives();
    let kept = representative.iter().enumerate().map(|(i, &r)| r as usize == i).collect();
    Ok((Decisions { kept, representative }, paths))
}

/// [`relative_dedup`] over a folder of shards, one shard in memory at a time (the evaluation
/// set whole). Returns the decisions and the file of each row.
pub fn relative_dedup_folder(
    dir: &Path,
    against: &Embeddings,
    threshold: f32,
    on: &Search,
    mut progress: impl FnMut(usize),
) -> Result<(Decisions, Vec<String>)> {
    let manifest = read_manifest(dir)?;
    if manifest.dim != against.dim {
        return Err(Error::Usage(format!(
            "{} has {}-d embeddings, the evaluation set {}-d: embed both with the same model",
            dir.display(),
            manifest.dim,
            against.dim
        )));
    }
    let mut kept = Vec::new();
    let mut paths = Vec::new();
    for i in 0..manifest.n_shards() {
        let shard = read_shard(dir, i, &manifest)?;
        let mut data = shard.data;
        normalise_rows(&mut data, manifest.dim);
        let items = Embeddings { dim: manifest.dim, data, paths: None };
        let (decisions, _) = relative_dedup(&items, against, threshold, on, |_| {});
        kept.extend(decisions.kept);
        progress(shard.paths.len());
        paths.extend(shard.paths);
    }
    if paths.is_empty() {
        return Err(Error::Usage(format!("{}: the embedding folder holds no embeddings", dir.display())));
    }
    let representative = (0..kept.len() as u32).collect();
    Ok((Decisions { kept, representative }, paths))
}
