//! Retrieval (DINOv2 paper, section 3): images of an uncurated pool close to a curated query
//! set. For a large query set, the N nearest pool images of each query (N = 4 in the paper);
//! for a small one, the pool is clustered by k-means and M images are sampled from the
//! cluster of each query (M = 10000 in the paper).
//!
//! The pool streams ([`Pool`]): per query, each pool chunk is merged into the queries' lists;
//! per cluster, k-means is trained on a sample of at most [`MAX_POINTS_PER_CENTROID`] rows
//! per cluster (faiss's default; adjustable), then every pool row is assigned to its nearest centroid,
//! chunk by chunk. Memory: the queries, the sample, one chunk and one cluster id per row.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dedup::{Decisions, search};
use super::embeddings::{Manifest, normalise_rows, read_manifest, read_shard, shard_paths};
use super::knn::{Matrix, Search};
use crate::error::{Error, Result};

/// k-means trains on at most this many pool rows per cluster by default (faiss's
/// `max_points_per_centroid`).
pub const MAX_POINTS_PER_CENTROID: usize = 256;

/// Pool rows in memory or in a folder of shards written by `curate embed`.
pub enum Pool<'a> {
    Memory(Matrix<'a>),
    /// Shards read one at a time (rows normalised on reading); `rows` from their file lists.
    Folder {
        dir: &'a Path,
        manifest: Manifest,
        rows: usize,
    },
}

impl<'a> Pool<'a> {
    /// A folder of shards, its manifest checked and its rows counted from the shards' file
    /// lists (unreadable images have no row).
    pub fn folder(dir: &'a Path) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let mut rows = 0;
        for i in 0..manifest.n_shards() {
            let (tensor, files) = shard_paths(dir, i);
            if !tensor.exists() {
                return Err(Error::checkpoint(
                    &tensor,
                    "missing: run `curate embed` again to finish the folder",
                ));
            }
            let text = std::fs::read_to_string(&files)
                .map_err(|_| Error::checkpoint(&files, "missing: the file list of this shard"))?;
            rows += text.lines().count();
        }
        if rows == 0 {
            return Err(Error::Usage(format!("{}: the embedding folder holds no embeddings", dir.display())));
        }
        Ok(Pool::Folder { dir, manifest, rows })
    }

    pub fn len(&self) -> usize {
        match self {
            Pool::Memory(m) => m.n,
            Pool::Folder { rows, .. } => *rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        match self {
            Pool::Memory(m) => m.d,
            Pool::Folder { manifest, .. } => manifest.dim,
        }
    }

    /// Calls `f(rows, offset)` for consecutive chunks of the pool (a shard at a time for a
    /// folder, the whole matrix in memory); returns the file of each row for a folder.
    pub fn for_each_chunk(&self, mut f: impl FnMut(Matrix, usize)) -> Result<Option<Vec<String>>> {
        match self {
            Pool::Memory(m) => {
                f(*m, 0);
                Ok(None)
            }
            Pool::Folder { dir, manifest, rows } => {
                let mut paths = Vec::with_capacity(*rows);
                for i in 0..manifest.n_shards() {
                    let shard = read_shard(dir, i, manifest)?;
                    let mut data = shard.data;
                    normalise_rows(&mut data, manifest.dim);
                    f(Matrix::new(&data, manifest.dim), paths.len());
                    paths.extend(shard.paths);
                }
                if paths.len() != *rows {
                    return Err(Error::Usage(format!(
                        "{}: the shards changed while they were read ({} rows, then {})",
                        dir.display(),
                        rows,
                        paths.len()
                    )));
                }
                Ok(Some(paths))
            }
        }
    }
}

/// Spherical k-means on L2-normalised rows: the result of [`kmeans`].
#[derive(Clone, Debug, PartialEq)]
pub struct Clusters {
    pub k: usize,
    pub dim: usize,
    /// `[k, dim]`, unit rows.
    pub centroids: Vec<f32>,
    /// The cluster of each row.
    pub assignment: Vec<u32>,
}

/// k-means with k-means++ seeding (on squared Euclidean distance, which for unit rows is
/// `2 − 2 cos`), Lloyd iterations assigning each row to its most similar centroid and moving
/// each centroid to the normalised mean of its rows; an emptied cluster is re-seeded with
/// the row worst served by its centroid. Stops after `iterations` or when no row moves.
/// Deterministic for a given `seed`.
pub fn kmeans(
    data: Matrix,
    k: usize,
    iterations: usize,
    seed: u64,
    on: &Search,
    mut progress: impl FnMut(usize),
) -> Clusters {
    let (n, d) = (data.n, data.d);
    let k = k.clamp(1, n.max(1));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centroids = Vec::with_capacity(k * d);
    if n == 0 {
        return Clusters { k: 0, dim: d, centroids, assignment: Vec::new() };
    }
    // k-means++: first centre uniform, then proportional to the squared distance to the nearest
    let first = rand::Rng::random_range(&mut rng, 0..n);
    centroids.extend_from_slice(data.row(first));
    let mut nearest: Vec<f32> = (0..n).into_par_iter().map(|i| dist2(data.row(i), data.row(first))).collect();
    for _ in 1..k {
        let total: f64 = nearest.iter().map(|&v| v as f64).sum();
        let pick = if total > 0.0 {
            let mut target = rand::Rng::random::<f64>(&mut rng) * total;
            let mut chosen = n - 1;
            for (i, &v) in nearest.iter().enumerate() {
                target -= v as f64;
                if target <= 0.0 && v > 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rand::Rng::random_range(&mut rng, 0..n)
        };
        let c = data.row(pick).to_vec();
        nearest.par_iter_mut().enumerate().for_each(|(i, v)| *v = v.min(dist2(data.row(i), &c)));
        centroids.extend(c);
    }
    let mut assignment = vec![u32::MAX; n];
    for _ in 0..iterations.max(1) {
        let neighbours = search(data, Matrix::new(&centroids, d), 1, false, on, |_| {});
        let mut moved = 0usize;
        let mut sims = vec![0f32; n];
        for (i, (slot, best)) in assignment.iter_mut().zip(sims.iter_mut()).enumerate() {
            let (idx, sim) = neighbours.of(i);
            if *slot != idx[0] {
                moved += 1;
                *slot = idx[0];
            }
            *best = sim[0];
        }
        // new centroids: normalised means
        let mut sums = vec![0f32; k * d];
        let mut counts = vec![0usize; k];
        for (i, &c) in assignment.iter().enumerate() {
            let c = c as usize;
            counts[c] += 1;
            sums[c * d..(c + 1) * d].iter_mut().zip(data.row(i)).for_each(|(s, v)| *s += v);
        }
        // re-seed empty clusters with the rows farthest from their centroids
        let mut worst: Vec<usize> = (0..n).collect();
        worst.sort_by(|&a, &b| sims[a].total_cmp(&sims[b]).then(a.cmp(&b)));
        let mut spare = worst.into_iter();
        for c in 0..k {
            if counts[c] == 0
                && let Some(i) = spare.next()
            {
                sums[c * d..(c + 1) * d].copy_from_slice(data.row(i));
                moved += 1;
            }
        }
        normalise_rows(&mut sums, d);
        centroids = sums;
        progress(1);
        if moved == 0 {
            break;
        }
    }
    Clusters { k, dim: d, centroids, assignment }
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// How to select pool images for the queries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The N nearest pool images of each query.
    PerQuery(usize),
    /// M pool images sampled from the cluster of each query (all of a smaller cluster).
    /// k-means trains on at most `max_points_per_centroid · clusters` rows drawn evenly.
    PerCluster { clusters: usize, per_cluster: usize, iterations: usize, max_points_per_centroid: usize },
}

/// Rows `take` (sorted, unique) of the pool, in order, gathered chunk by chunk.
fn gather_rows(pool: &Pool, take: &[usize]) -> Result<Vec<f32>> {
    let d = pool.dim();
    let mut out = Vec::with_capacity(take.len() * d);
    let mut next = 0;
    pool.for_each_chunk(|chunk, offset| {
        while next < take.len() && take[next] < offset + chunk.n {
            out.extend_from_slice(chunk.row(take[next] - offset));
            next += 1;
        }
    })?;
    Ok(out)
}

/// Select pool rows for `queries`: `kept` marks the selected pool items. Returns the decisions
/// and, for a folder, the file of each pool row. `progress` gets pool rows (per query) or
/// k-means iterations (per cluster).
pub fn retrieve(
    pool: &Pool,
    queries: Matrix,
    selection: Selection,
    seed: u64,
    on: &Search,
    mut progress: impl FnMut(usize),
) -> Result<(Decisions, Option<Vec<String>>)> {
    let n = pool.len();
    let mut kept = vec![false; n];
    let paths = match selection {
        Selection::PerQuery(per_query) => {
            let mut lists = on.lists(queries, per_query.max(1));
            let paths = pool.for_each_chunk(|chunk, offset| {
                lists.update(chunk, offset, None);
                progress(chunk.n);
            })?;
            let neighbours = lists.finish();
            for q in 0..queries.n {
                for &j in neighbours.of(q).0 {
                    if j != u32::MAX {
                        kept[j as usize] = true;
                    }
                }
            }
            paths
        }
        Selection::PerCluster { clusters, per_cluster, iterations, max_points_per_centroid } => {
            // train on a sample, evenly drawn, kept in pool order (all rows when few)
            let max_points = clusters.max(1).saturating_mul(max_points_per_centroid.max(1));
            let mut take: Vec<usize> = if n > max_points {
                sample(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d1e), n, max_points).into_vec()
            } else {
                (0..n).collect()
            };
            take.sort_unstable();
            let training = gather_rows(pool, &take)?;
            let model = kmeans(Matrix::new(&training, pool.dim()), clusters, iterations, seed, on, progress);
            let centroids = Matrix::new(&model.centroids, model.dim);
            // every pool row's cluster
            let mut assignment = Vec::with_capacity(n);
            let paths = pool.for_each_chunk(|chunk, _| {
                let nearest = search(chunk, centroids, 1, false, on, |_| {});
                assignment.extend_from_slice(&nearest.indices);
            })?;
            let of_query = search(queries, centroids, 1, false, on, |_| {});
            let mut wanted: Vec<u32> = (0..queries.n).map(|q| of_query.of(q).0[0]).collect();
            wanted.sort_unstable();
            wanted.dedup();
            let mut members: Vec<Vec<usize>> = vec![Vec::new(); model.k];
            for (i, &c) in assignment.iter().enumerate() {
                members[c as usize].push(i);
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
            for c in wanted {
                let rows = &members[c as usize];
                let take = per_cluster.min(rows.len());
                for pick in sample(&mut rng, rows.len(), take) {
                    kept[rows[pick]] = true;
                }
            }
            paths
        }
    };
    Ok((Decisions { representative: (0..n as u32).collect(), kept }, paths))
}
