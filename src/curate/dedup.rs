//! Deduplication (DINOv2 paper, section 3 and appendix A): self-deduplication keeps one image
//! of every group of near-copies — the k nearest neighbours of each embedding by cosine
//! similarity (k = 64), the pairs above a threshold (0.6) as edges, connected components by a
//! union-find, the smallest index of each component kept; relative deduplication drops every
//! image whose nearest evaluation image is more similar than a threshold (0.45).

use std::path::Path;

use super::embed::csv_field;
use super::embeddings::Embeddings;
use super::knn::{Matrix, Neighbours, TopK};
use super::union_find::UnionFind;
use crate::error::Result;

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

    /// Write `index,path,kept,representative` (header, one row per item) atomically.
    pub fn write_csv(&self, path: &Path, items: &Embeddings) -> Result<()> {
        let mut text = String::from("index,path,kept,representative\n");
        for (i, (&kept, &rep)) in self.kept.iter().zip(&self.representative).enumerate() {
            text.push_str(&format!("{i},{},{},{rep}\n", csv_field(items.path(i)), u8::from(kept)));
        }
        crate::io::write_atomic(path, text.as_bytes())
    }
}

/// The k nearest rows of `database` for every row of `queries`, the database fed in chunks
/// (`progress` gets the rows done after each).
pub fn search(
    queries: Matrix,
    database: Matrix,
    k: usize,
    exclude_self: bool,
    mut progress: impl FnMut(usize),
) -> Neighbours {
    let mut top = TopK::new(queries.n, k);
    let mut offset = 0;
    while offset < database.n {
        let rows = CHUNK_ROWS.min(database.n - offset);
        let chunk =
            Matrix::new(&database.data[offset * database.d..(offset + rows) * database.d], database.d);
        top.update(queries, chunk, offset, exclude_self);
        offset += rows;
        progress(rows);
    }
    top.finish()
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
pub fn self_dedup(items: &Embeddings, k: usize, threshold: f32, progress: impl FnMut(usize)) -> Decisions {
    let m = items.matrix();
    let neighbours = search(m, m, k, true, progress);
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
    progress: impl FnMut(usize),
) -> (Decisions, Vec<f32>) {
    let neighbours = search(items.matrix(), against.matrix(), 1, false, progress);
    let best: Vec<f32> = (0..items.len()).map(|i| neighbours.of(i).1[0]).collect();
    let kept = best.iter().map(|&s| s <= threshold).collect();
    let representative = (0..items.len() as u32).collect();
    (Decisions { kept, representative }, best)
}
