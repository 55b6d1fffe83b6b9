//! Retrieval (DINOv2 paper, section 3): images of an uncurated pool close to a curated query
//! set. For a large query set, the N nearest pool images of each query (N = 4 in the paper);
//! for a small one, the pool is clustered by k-means and M images are sampled from the
//! cluster of each query (M = 10000 in the paper).

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dedup::{Decisions, search};
use super::embeddings::normalise_rows;
use super::knn::{Matrix, Search};

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
    PerCluster { clusters: usize, per_cluster: usize, iterations: usize },
}

/// Select pool rows for `queries`: `kept` marks the selected pool items.
pub fn retrieve(
    pool: Matrix,
    queries: Matrix,
    selection: Selection,
    seed: u64,
    on: &Search,
    progress: impl FnMut(usize),
) -> Decisions {
    let n = pool.n;
    let mut kept = vec![false; n];
    match selection {
        Selection::PerQuery(per_query) => {
            let neighbours = search(queries, pool, per_query, false, on, progress);
            for q in 0..queries.n {
                for &j in neighbours.of(q).0 {
                    if j != u32::MAX {
                        kept[j as usize] = true;
                    }
                }
            }
        }
        Selection::PerCluster { clusters, per_cluster, iterations } => {
            let model = kmeans(pool, clusters, iterations, seed, on, progress);
            let of_query = search(queries, Matrix::new(&model.centroids, model.dim), 1, false, on, |_| {});
            let mut wanted: Vec<u32> = (0..queries.n).map(|q| of_query.of(q).0[0]).collect();
            wanted.sort_unstable();
            wanted.dedup();
            let mut members: Vec<Vec<usize>> = vec![Vec::new(); model.k];
            for (i, &c) in model.assignment.iter().enumerate() {
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
        }
    }
    Decisions { representative: (0..n as u32).collect(), kept }
}
