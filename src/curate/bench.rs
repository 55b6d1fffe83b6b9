//! `dinov2 bench curate`: self-deduplication of synthetic embeddings with planted duplicate
//! clusters, timed against the plain exact search (every dot product one at a time, a full
//! sort per row) in the same run, with the peak memory and the recall of the planted pairs.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::dedup::{components, search};
use super::embeddings::normalise_rows;
use super::knn::{Matrix, Search, knn_brute_force};

/// What the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct CurateBench {
    pub n: usize,
    pub dim: usize,
    pub k: usize,
    pub threshold: f32,
    /// Rows that have a planted near-copy partner.
    pub planted_rows: usize,
    /// What ran the tiled search ([`Search::describe`]).
    pub search: String,
    pub search_seconds: f64,
    pub union_find_seconds: f64,
    /// The plain search timed on `baseline_queries` rows, scaled to all n.
    pub baseline_queries: usize,
    pub baseline_seconds_estimated: f64,
    pub speedup: f64,
    /// Growth of the process's peak resident memory during the search (the embeddings
    /// themselves excluded), and the size of the embeddings for scale.
    pub search_peak_bytes: Option<u64>,
    pub embeddings_bytes: u64,
    /// Planted pairs found in one component / pairs planted.
    pub recall: f64,
    /// Removed rows that are planted copies / removed rows.
    pub precision: f64,
    pub kept: usize,
}

/// `n` unit vectors of width `dim`: clusters of 2–5 near-copies (noise 0.05 per coordinate
/// around a random centre, cosine ≈ 0.99 within a cluster) make up `planted_fraction` of the
/// rows, the rest independent random directions (cosine ≈ ±0.05 between them at d = 384).
/// Returns the rows and each row's cluster id (`u32::MAX` for a singleton).
pub fn synthetic(n: usize, dim: usize, planted_fraction: f64, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut gauss = move || {
        // Box-Muller
        let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let mut data = Vec::with_capacity(n * dim);
    let mut cluster = Vec::with_capacity(n);
    let planted = (n as f64 * planted_fraction) as usize;
    let mut id = 0u32;
    let mut sizes = ChaCha8Rng::seed_from_u64(seed ^ 1);
    while cluster.len() < planted {
        let size = sizes.random_range(2..=5).min(planted - cluster.len()).max(2).min(n - cluster.len());
        let centre: Vec<f32> = (0..dim).map(|_| gauss()).collect();
        let norm = centre.iter().map(|v| v * v).sum::<f32>().sqrt();
        for _ in 0..size {
            data.extend(centre.iter().map(|c| c / norm + 0.05 / (dim as f32).sqrt() * gauss()));
            cluster.push(id);
        }
        id += 1;
    }
    while cluster.len() < n {
        data.extend((0..dim).map(|_| gauss()));
        cluster.push(u32::MAX);
    }
    normalise_rows(&mut data, dim);
    // shuffle rows so clusters are not contiguous
    let mut order: Vec<usize> = (0..n).collect();
    let mut shuffle = ChaCha8Rng::seed_from_u64(seed ^ 2);
    for i in (1..n).rev() {
        order.swap(i, shuffle.random_range(0..=i));
    }
    let mut shuffled = Vec::with_capacity(n * dim);
    let mut ids = Vec::with_capacity(n);
    for &i in &order {
        shuffled.extend_from_slice(&data[i * dim..(i + 1) * dim]);
        ids.push(cluster[i]);
    }
    (shuffled, ids)
}

/// Run the benchmark (`progress` gets database rows done).
pub fn bench_curate(
    n: usize,
    dim: usize,
    k: usize,
    threshold: f32,
    baseline_queries: usize,
    on: &Search,
    progress: impl FnMut(usize),
) -> CurateBench {
    let (data, cluster) = synthetic(n, dim, 0.1, 0);
    let m = Matrix::new(&data, dim);
    // reset the peak to the current resident size (Linux: `5` to clear_refs), so the growth
    // measured is the search's own, not the generation's
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = crate::bench::process_peak_rss();
    let start = Instant::now();
    let neighbours = search(m, m, k, true, on, progress);
    let search_seconds = start.elapsed().as_secs_f64();
    let search_peak_bytes = crate::bench::process_peak_rss().zip(before).map(|(a, b)| a.saturating_sub(b));
    let start = Instant::now();
    let representative = components(&neighbours, threshold);
    let union_find_seconds = start.elapsed().as_secs_f64();

    // the plain search on a sample of queries (evenly spaced rows), scaled to all rows
    let q = baseline_queries.clamp(1, n.max(1));
    let step = (n / q).max(1);
    let sample: Vec<f32> = (0..q).flat_map(|i| m.row((i * step).min(n - 1)).to_vec()).collect();
    let start = Instant::now();
    let _ = knn_brute_force(Matrix::new(&sample, dim), m, k, false);
    let baseline_seconds_estimated = start.elapsed().as_secs_f64() * n as f64 / q as f64;

    // planted pairs: every row of a cluster with the cluster's first row
    let mut first = std::collections::HashMap::new();
    let (mut planted_pairs, mut found) = (0usize, 0usize);
    for (i, &c) in cluster.iter().enumerate() {
        if c == u32::MAX {
            continue;
        }
        match first.get(&c) {
            None => {
                first.insert(c, i);
            }
            Some(&f) => {
                planted_pairs += 1;
                found += usize::from(representative[i] == representative[f]);
            }
        }
    }
    let removed: Vec<usize> = (0..n).filter(|&i| representative[i] as usize != i).collect();
    let right = removed
        .iter()
        .filter(|&&i| cluster[i] != u32::MAX && cluster[i] == cluster[representative[i] as usize])
        .count();
    CurateBench {
        n,
        dim,
        k,
        threshold,
        planted_rows: cluster.iter().filter(|&&c| c != u32::MAX).count(),
        search: on.describe(),
        search_seconds,
        union_find_seconds,
        baseline_queries: q,
        baseline_seconds_estimated,
        speedup: baseline_seconds_estimated / search_seconds.max(1e-9),
        search_peak_bytes,
        embeddings_bytes: (data.len() * 4) as u64,
        recall: if planted_pairs == 0 { 1.0 } else { found as f64 / planted_pairs as f64 },
        precision: if removed.is_empty() { 1.0 } else { right as f64 / removed.len() as f64 },
        kept: n - removed.len(),
    }
}
