//! Exact k-nearest-neighbour search by inner product. Curation embeddings are L2-normalised,
//! so the inner product is the cosine similarity.
//!
//! The fast path never holds an `n_queries x n_database` matrix: a block of queries times a
//! block of database rows is one GEMM tile (`matrixmultiply::sgemm`), and every query keeps
//! only its running top-k list. Memory is one tile per worker plus `n_queries * k` entries,
//! and the database can be fed chunk by chunk ([`TopK::update`]), e.g. one shard at a time.
//!
//! Ranking is deterministic: similarity descending, ties broken by the smaller database index.
//! A NaN similarity (from NaN inputs) never ranks, so it is never listed.

use std::cmp::Ordering;

use rayon::prelude::*;

/// Most query rows of one GEMM tile.
const QUERY_BLOCK: usize = 256;
/// Fewest query rows of one GEMM tile: below this the GEMM spends its time packing.
const MIN_QUERY_BLOCK: usize = 32;
/// Database rows of one GEMM tile: 256 x 1024 similarities are 1 MiB per worker.
const DATABASE_BLOCK: usize = 1024;
/// The index of a padding entry in a list with fewer than k candidates.
const PADDING_INDEX: u32 = u32::MAX;

/// A row-major `[n, d]` f32 matrix borrowed from elsewhere.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// The values, row after row; at least `n * d` of them.
    pub data: &'a [f32],
    /// Number of rows.
    pub n: usize,
    /// Number of columns (the embedding dimension).
    pub d: usize,
}

impl<'a> Matrix<'a> {
    /// Views `data` as rows of `d` values: `n = data.len() / d` (0 when `d` is 0). A trailing
    /// partial row is a programmer error, caught by a debug assertion only.
    pub fn new(data: &'a [f32], d: usize) -> Self {
        debug_assert!(
            data.len().checked_rem(d).unwrap_or(data.len()) == 0,
            "{} values are not whole rows of {d}",
            data.len()
        );
        Self { data, n: data.len().checked_div(d).unwrap_or(0), d }
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= n` (or `data` is shorter than `n * d`).
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// Rows `start .. end`, contiguous.
    fn rows(&self, start: usize, end: usize) -> &'a [f32] {
        &self.data[start * self.d..end * self.d]
    }

    /// Checks that `data` holds the `n * d` values the fields promise.
    fn check(&self, what: &str) {
        assert!(
            self.data.len() >= self.n * self.d,
            "{what} matrix has {} values, fewer than its {} x {} rows",
            self.data.len(),
            self.n,
            self.d
        );
    }
}

/// `(sim_a, index_a)` ranks before `(sim_b, index_b)`: larger similarity first, then the smaller
/// index. False whenever `sim_a` is NaN, so a NaN never enters a list.
#[inline]
fn ranks_before(sim_a: f32, index_a: u32, sim_b: f32, index_b: u32) -> bool {
    sim_a > sim_b || (sim_a == sim_b && index_a < index_b)
}

/// Inserts a candidate into a sorted list, dropping the last entry. The caller has checked that
/// the candidate ranks before that last entry. A linear shift: once the list has filled, an
/// insertion is rare, and k is small.
#[inline]
fn insert(sims: &mut [f32], indices: &mut [u32], sim: f32, index: u32) {
    let mut p = sims.len() - 1;
    while p > 0 && ranks_before(sim, index, sims[p - 1], indices[p - 1]) {
        sims[p] = sims[p - 1];
        indices[p] = indices[p - 1];
        p -= 1;
    }
    sims[p] = sim;
    indices[p] = index;
}

/// Query rows per tile: enough blocks to keep every worker busy, none so small that the GEMM
/// loses its efficiency.
fn query_block(n_queries: usize) -> usize {
    n_queries.div_ceil(4 * rayon::current_num_threads()).clamp(MIN_QUERY_BLOCK, QUERY_BLOCK)
}

/// The running top-k lists of a set of queries, updated one database chunk at a time (so the
/// database can be streamed from disk shard by shard).
///
/// Every list always holds k entries, sorted best first; slots not yet filled are padding
/// (index `u32::MAX`, similarity `-inf`), which every real candidate outranks.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    n_queries: usize,
    /// `[n_queries, k]`, each row sorted best first.
    sims: Vec<f32>,
    /// `[n_queries, k]`, the database index of each entry of `sims`.
    indices: Vec<u32>,
}

impl TopK {
    /// Empty lists (all padding) for `n_queries` queries.
    ///
    /// # Panics
    /// If `k` is 0.
    pub fn new(n_queries: usize, k: usize) -> Self {
        assert!(k > 0, "k-nearest-neighbour search needs k >= 1");
        Self {
            k,
            n_queries,
            sims: vec![f32::NEG_INFINITY; n_queries * k],
            indices: vec![PADDING_INDEX; n_queries * k],
        }
    }

    /// Lists as [`TopK::into_lists`] returned them: `[n_queries, k]` similarities and indices,
    /// each row sorted best first, padding `(-inf, u32::MAX)`.
    ///
    /// # Panics
    /// If `k` is 0 or the two vectors are not `n_queries * k` long.
    pub fn from_lists(k: usize, sims: Vec<f32>, indices: Vec<u32>) -> Self {
        assert!(k > 0, "k-nearest-neighbour search needs k >= 1");
        assert!(
            sims.len() == indices.len() && sims.len().is_multiple_of(k),
            "top-k lists of unequal or partial rows"
        );
        Self { k, n_queries: sims.len() / k, sims, indices }
    }

    /// The lists: `(similarities, indices)`, `[n_queries, k]` each.
    pub fn into_lists(self) -> (Vec<f32>, Vec<u32>) {
        (self.sims, self.indices)
    }

    /// Entries per query.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Merges database rows `offset .. offset + chunk.n` (global indices) into every query's
    /// list. `self_offset`: the queries are database rows `self_offset ..` (the database
    /// itself, or a block of it), so query `i` never lists database row `self_offset + i`;
    /// `None` for queries from elsewhere. Chunks may come in any order; the result depends
    /// only on the set of rows seen.
    ///
    /// # Panics
    /// If `queries.n` differs from the `n_queries` of [`TopK::new`], if the two matrices differ
    /// in `d`, if either holds fewer than `n * d` values, or if a global index would reach
    /// `u32::MAX` (the padding index).
    pub fn update(&mut self, queries: Matrix, chunk: Matrix, offset: usize, self_offset: Option<usize>) {
        assert_eq!(
            queries.n, self.n_queries,
            "query count differs from the one the top-k lists were made for"
        );
        assert_eq!(queries.d, chunk.d, "queries and database rows differ in dimension");
        queries.check("query");
        chunk.check("database");
        assert!(
            offset.checked_add(chunk.n).is_some_and(|end| end <= PADDING_INDEX as usize),
            "database rows {offset} + {} do not fit u32 indices",
            chunk.n
        );
        if self.n_queries == 0 || chunk.n == 0 {
            return;
        }
        let (k, d) = (self.k, queries.d);
        let block = query_block(self.n_queries);
        self.sims.par_chunks_mut(block * k).zip(self.indices.par_chunks_mut(block * k)).enumerate().for_each(
            |(b, (sims, indices))| {
                let first_query = b * block;
                let m = sims.len() / k;
                let query_rows = queries.rows(first_query, first_query + m);
                let mut tile = vec![0.0f32; m * DATABASE_BLOCK.min(chunk.n)];
                for start in (0..chunk.n).step_by(DATABASE_BLOCK) {
                    let width = DATABASE_BLOCK.min(chunk.n - start);
                    let tile = &mut tile[..m * width];
                    let database_rows = chunk.rows(start, start + width);
                    // SAFETY: A is the `[m, d]` query block (row stride d), B the transposed
                    // `[width, d]` database block read as `[d, width]` (row stride 1, column
                    // stride d), C the `[m, width]` tile (row stride width); all three slices
                    // hold exactly those elements and C does not alias A or B. With beta 0, C
                    // is only written.
                    unsafe {
                        matrixmultiply::sgemm(
                            m,
                            d,
                            width,
                            1.0,
                            query_rows.as_ptr(),
                            d as isize,
                            1,
                            database_rows.as_ptr(),
                            1,
                            d as isize,
                            0.0,
                            tile.as_mut_ptr(),
                            width as isize,
                            1,
                        );
                    }
                    let first_index = offset + start;
                    for (r, tile_row) in tile.chunks_exact(width).enumerate() {
                        let list = r * k..(r + 1) * k;
                        let (sims, indices) = (&mut sims[list.clone()], &mut indices[list]);
                        let skip = self_offset.map_or(usize::MAX, |o| o + first_query + r);
                        let (mut worst_sim, mut worst_index) = (sims[k - 1], indices[k - 1]);
                        for (j, &sim) in tile_row.iter().enumerate() {
                            let index = (first_index + j) as u32;
                            if ranks_before(sim, index, worst_sim, worst_index) && index as usize != skip {
                                insert(sims, indices, sim, index);
                                (worst_sim, worst_index) = (sims[k - 1], indices[k - 1]);
                            }
                        }
                    }
                }
            },
        );
    }

    /// The lists as they stand.
    pub fn finish(self) -> Neighbours {
        Neighbours { k: self.k, indices: self.indices, sims: self.sims }
    }
}

/// Where the exact search runs: the same lists either way (up to the order in which each
/// similarity's terms are summed, which can swap two candidates whose similarities differ in
/// the last bits).
#[derive(Clone, Debug)]
pub enum Search {
    /// SGEMM tiles on all cores ([`TopK::update`]).
    Cpu,
    /// The WGSL tile kernel ([`crate::kernels::knn_update`]) on a burn device: the query
    /// block and its lists stay on the device while the database streams past.
    Device(burn::tensor::Device),
}

impl Search {
    /// `ndarray` is the CPU search, `wgpu` the kernel, `auto` the kernel on a hardware adapter
    /// and the CPU search elsewhere ([`crate::backend::resolve`]).
    pub fn for_backend(kind: crate::backend::BackendKind) -> crate::error::Result<Self> {
        use crate::backend::{BackendKind, device, resolve};
        Ok(match resolve(kind) {
            BackendKind::Wgpu => Search::Device(device(BackendKind::Wgpu)?),
            _ => Search::Cpu,
        })
    }

    /// What runs the search, for progress lines.
    pub fn describe(&self) -> String {
        match self {
            Search::Cpu => format!("CPU, {} threads", rayon::current_num_threads()),
            Search::Device(device) => crate::backend::device_name(device)
                .map_or_else(|| "wgpu".to_string(), |name| format!("wgpu, {name}")),
        }
    }

    /// Empty top-k lists for `queries`, to be fed database chunks.
    pub fn lists<'a>(&self, queries: Matrix<'a>, k: usize) -> Lists<'a> {
        self.lists_in_pieces(queries, k, device_rows(queries.d.max(k)))
    }

    /// [`Search::lists`] whose device buffers hold at most `rows` query rows, and whose
    /// database chunks are uploaded `rows` rows at a time (the tests make them small).
    pub fn lists_in_pieces<'a>(&self, queries: Matrix<'a>, k: usize, rows: usize) -> Lists<'a> {
        let rows = rows.max(1);
        let inner = match self {
            Search::Cpu => ListsInner::Cpu(TopK::new(queries.n, k)),
            Search::Device(device) => {
                use burn::tensor::{Int, Tensor, TensorData};
                assert!(k > 0, "k-nearest-neighbour search needs k >= 1");
                queries.check("query");
                let blocks = (0..queries.n)
                    .step_by(rows)
                    .map(|first| {
                        let n = rows.min(queries.n - first);
                        let data = queries.rows(first, first + n).to_vec();
                        DeviceBlock {
                            first,
                            queries: Tensor::from_data(TensorData::new(data, [n, queries.d]), device),
                            sims: Tensor::full([n, k], crate::kernels::KNN_PADDING_SIM, device),
                            indices: Tensor::<2, Int>::full([n, k], -1, device),
                        }
                    })
                    .collect();
                ListsInner::Device { device: device.clone(), blocks, k, rows }
            }
        };
        Lists { queries, inner }
    }
}

/// Largest bytes of one buffer the device search makes: the 128 MiB storage binding of
/// browsers and software adapters, halved.
const DEVICE_BUFFER_BYTES: usize = 64 << 20;

/// Rows of `width` f32 that fit [`DEVICE_BUFFER_BYTES`].
fn device_rows(width: usize) -> usize {
    (DEVICE_BUFFER_BYTES / (4 * width.max(1))).max(1)
}

/// The running top-k lists of a block of queries on a [`Search`]'s device.
pub struct Lists<'a> {
    queries: Matrix<'a>,
    inner: ListsInner,
}

/// Query rows `first ..` on the device with their lists.
struct DeviceBlock {
    first: usize,
    queries: burn::tensor::Tensor<2>,
    sims: burn::tensor::Tensor<2>,
    indices: burn::tensor::Tensor<2, burn::tensor::Int>,
}

enum ListsInner {
    Cpu(TopK),
    /// The queries in blocks of at most [`DEVICE_BUFFER_BYTES`] each.
    Device {
        device: burn::tensor::Device,
        blocks: Vec<DeviceBlock>,
        k: usize,
        rows: usize,
    },
}

impl Lists<'_> {
    /// Merges database rows `offset .. offset + chunk.n`; as [`TopK::update`] (its panics too).
    /// On a device the chunk is uploaded in pieces of at most [`DEVICE_BUFFER_BYTES`].
    pub fn update(&mut self, chunk: Matrix, offset: usize, self_offset: Option<usize>) {
        match &mut self.inner {
            ListsInner::Cpu(top) => top.update(self.queries, chunk, offset, self_offset),
            ListsInner::Device { device, blocks, rows, .. } => {
                use burn::tensor::{Tensor, TensorData};
                assert_eq!(self.queries.d, chunk.d, "queries and database rows differ in dimension");
                chunk.check("database");
                assert!(
                    offset.checked_add(chunk.n).is_some_and(|end| end <= PADDING_INDEX as usize),
                    "database rows {offset} + {} do not fit u32 indices",
                    chunk.n
                );
                if self.queries.n == 0 || chunk.n == 0 {
                    return;
                }
                for start in (0..chunk.n).step_by(*rows) {
                    let end = (start + *rows).min(chunk.n);
                    let data = chunk.rows(start, end).to_vec();
                    let piece = Tensor::from_data(TensorData::new(data, [end - start, chunk.d]), &*device);
                    for block in blocks.iter_mut() {
                        // query i of the block is query `first + i`, so it skips database row
                        // self_offset + first + i
                        let skip = self_offset.map(|o| {
                            u32::try_from(o + block.first)
                                .ok()
                                .filter(|&o| o < PADDING_INDEX)
                                .expect("self offset fits u32 indices")
                        });
                        let (s, i) = crate::kernels::knn_update(
                            block.queries.clone(),
                            piece.clone(),
                            block.sims.clone(),
                            block.indices.clone(),
                            (offset + start) as u32,
                            skip,
                        );
                        (block.sims, block.indices) = (s, i);
                    }
                }
                // wait for the chunk's kernels: the caller's progress then counts work done,
                // not work queued (without it a bar reached 100% a minute before the end on
                // lavapipe); a failure surfaces at the read-back in `finish`
                let _ = device.sync();
            }
        }
    }

    /// The lists as they stand (read back from the device).
    pub fn finish(self) -> Neighbours {
        match self.inner {
            ListsInner::Cpu(top) => top.finish(),
            ListsInner::Device { blocks, k, .. } => {
                let (mut all_sims, mut all_indices) = (Vec::new(), Vec::new());
                for block in blocks {
                    let indices: Vec<u32> = block
                        .indices
                        .into_data()
                        .convert::<i64>()
                        .try_into_vec::<i64>()
                        .expect("int lists")
                        .into_iter()
                        .map(|i| i as u32)
                        .collect();
                    let sims =
                        block.sims.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 lists");
                    all_sims.extend(
                        sims.into_iter()
                            .zip(&indices)
                            .map(|(s, &i)| if i == PADDING_INDEX { f32::NEG_INFINITY } else { s }),
                    );
                    all_indices.extend(indices);
                }
                Neighbours { k, indices: all_indices, sims: all_sims }
            }
        }
    }
}

/// The k nearest of each query, best first: similarity descending, ties broken by the smaller
/// database index (deterministic). Rows with fewer than k candidates are padded with index
/// `u32::MAX` and similarity `f32::NEG_INFINITY`.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbours {
    /// Entries per query.
    pub k: usize,
    /// `[n_queries, k]` database indices.
    pub indices: Vec<u32>,
    /// `[n_queries, k]` similarities (inner products).
    pub sims: Vec<f32>,
}

impl Neighbours {
    /// The list of query `q`: `(indices, similarities)`, best first.
    ///
    /// # Panics
    /// If `q >= n_queries()`.
    pub fn of(&self, q: usize) -> (&[u32], &[f32]) {
        let list = q * self.k..(q + 1) * self.k;
        (&self.indices[list.clone()], &self.sims[list])
    }

    /// Number of queries.
    pub fn n_queries(&self) -> usize {
        self.indices.len().checked_div(self.k).unwrap_or(0)
    }
}

/// The k most similar rows of `database` for every row of `queries`, the whole database in one
/// call (tiled inside; `exclude_self`: the queries are the database, as [`TopK::update`]'s
/// `self_offset` 0; see there for the panics).
///
/// # Panics
/// If `k` is 0, or as [`TopK::update`].
pub fn knn(queries: Matrix, database: Matrix, k: usize, exclude_self: bool) -> Neighbours {
    let mut top = TopK::new(queries.n, k);
    top.update(queries, database, 0, exclude_self.then_some(0));
    top.finish()
}

/// The plain O(n_q · n_db · d) reference: every similarity is a sequential f32 dot product, and
/// each query's candidates are fully sorted. For tests, and the baseline of benchmarks. Parallel
/// over queries only, so that a benchmark compares algorithms rather than thread counts.
///
/// # Panics
/// As [`knn`].
pub fn knn_brute_force(queries: Matrix, database: Matrix, k: usize, exclude_self: bool) -> Neighbours {
    assert!(k > 0, "k-nearest-neighbour search needs k >= 1");
    assert_eq!(queries.d, database.d, "queries and database rows differ in dimension");
    queries.check("query");
    database.check("database");
    assert!(database.n <= PADDING_INDEX as usize, "{} database rows do not fit u32 indices", database.n);
    let lists: Vec<Vec<(f32, u32)>> = (0..queries.n)
        .into_par_iter()
        .map(|q| {
            let query = queries.row(q);
            let mut scored: Vec<(f32, u32)> = (0..database.n)
                .filter(|&j| !(exclude_self && j == q))
                .map(|j| (dot(query, database.row(j)), j as u32))
                .filter(|(sim, _)| !sim.is_nan())
                .collect();
            scored.sort_unstable_by(|a, b| {
                b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1))
            });
            scored.resize(k, (f32::NEG_INFINITY, PADDING_INDEX));
            scored
        })
        .collect();
    let (sims, indices) = lists.into_iter().flatten().unzip();
    Neighbours { k, indices, sims }
}

/// Sequential f32 dot product, one term after another.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `n` gaussian vectors of dimension `d`, each L2-normalised.
    fn unit_vectors(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            // Box-Muller: the test needs gaussian directions, not a distribution crate
            let row: Vec<f64> = (0..d)
                .map(|_| {
                    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
                })
                .collect();
            let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            out.extend(row.iter().map(|x| (x / norm) as f32));
        }
        out
    }

    /// The similarity in f64, independent of both f32 paths.
    fn exact_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    const SIM_TOLERANCE: f32 = 1e-5;

    /// Checks `got` against `want` where the two computed their similarities in different
    /// orders: similarities position by position within [`SIM_TOLERANCE`], every listed index
    /// carries its own (f64) similarity, no index twice, no self-match, and the index lists
    /// equal except where two candidates are within rounding of each other (a near-tie that may
    /// legitimately flip). Returns the number of such flipped positions.
    fn assert_same_up_to_rounding(
        got: &Neighbours,
        want: &Neighbours,
        queries: Matrix,
        database: Matrix,
        exclude_self: bool,
        case: &str,
    ) -> usize {
        assert_eq!((got.k, got.n_queries()), (want.k, want.n_queries()), "{case}: shapes");
        let mut flipped = 0;
        for q in 0..want.n_queries() {
            let ((got_indices, got_sims), (want_indices, want_sims)) = (got.of(q), want.of(q));
            let mut max_err = 0.0f32;
            for (g, w) in got_sims.iter().zip(want_sims) {
                let err = if g == w { 0.0 } else { (g - w).abs() };
                max_err = max_err.max(err);
            }
            assert!(max_err <= SIM_TOLERANCE, "{case}: query {q}: max sim error {max_err:e}");
            let mut seen = std::collections::HashSet::new();
            for p in 0..got.k {
                let (index, sim) = (got_indices[p], got_sims[p]);
                if index == PADDING_INDEX {
                    assert_eq!(sim, f32::NEG_INFINITY, "{case}: query {q}: padding at {p} has a similarity");
                    assert_eq!(
                        want_indices[p], PADDING_INDEX,
                        "{case}: query {q}: padding at {p} only in one path"
                    );
                    continue;
                }
                assert!(seen.insert(index), "{case}: query {q}: index {index} listed twice");
                assert!(!(exclude_self && index as usize == q), "{case}: query {q} lists itself");
                let exact = exact_dot(queries.row(q), database.row(index as usize));
                assert!(
                    (exact - sim as f64).abs() <= SIM_TOLERANCE as f64,
                    "{case}: query {q}: index {index} listed with {sim}, its similarity is {exact}"
                );
                if index != want_indices[p] {
                    // a flip is only allowed between candidates whose similarities round together
                    let gap =
                        (exact - exact_dot(queries.row(q), database.row(want_indices[p] as usize))).abs();
                    assert!(
                        gap <= 2.0 * SIM_TOLERANCE as f64,
                        "{case}: query {q}, position {p}: index {index} vs {} with similarity gap {gap:e}",
                        want_indices[p]
                    );
                    flipped += 1;
                }
            }
        }
        // a handful of near-ties is expected; a systematic error would flip most positions
        let total = want.indices.len().max(1);
        assert!(flipped * 100 <= total, "{case}: {flipped} of {total} positions differ");
        flipped
    }

    #[test]
    fn fast_path_matches_brute_force_on_random_unit_vectors() {
        // (queries, database, d, k, exclude_self); query sets that are the database use n_q = n_db
        let cases = [
            (2000, 2000, 384, 64, true),
            (2000, 2000, 384, 64, false),
            (1000, 1000, 16, 1, true),
            (300, 1500, 16, 1, false),
            (257, 1025, 33, 64, false),
            (1025, 1025, 128, 10, true),
            (33, 2000, 384, 17, false),
            (1, 3000, 64, 5, false),
        ];
        for (seed, &(n_q, n_db, d, k, exclude_self)) in cases.iter().enumerate() {
            let database_data = unit_vectors(n_db, d, seed as u64);
            let query_data =
                if exclude_self { database_data.clone() } else { unit_vectors(n_q, d, 1000 + seed as u64) };
            let (queries, database) = (Matrix::new(&query_data, d), Matrix::new(&database_data, d));
            let fast = knn(queries, database, k, exclude_self);
            let brute = knn_brute_force(queries, database, k, exclude_self);
            let case = format!("n_q {n_q} n_db {n_db} d {d} k {k} exclude_self {exclude_self}");
            let flipped = assert_same_up_to_rounding(&fast, &brute, queries, database, exclude_self, &case);
            eprintln!("{case}: {flipped} near-tie positions flipped");
            assert!(fast.indices.iter().all(|&i| i != PADDING_INDEX), "{case}: padding although k <= n");
        }
    }

    #[test]
    fn k_beyond_the_database_lists_every_row_then_padding() {
        for (n_db, k, exclude_self) in
            [(5, 8, false), (5, 8, true), (1, 3, true), (0, 4, false), (7, 7, true)]
        {
            let d = 24;
            let data = unit_vectors(n_db, d, 7);
            let database = Matrix::new(&data, d);
            let queries = database;
            let case = format!("n {n_db} k {k} exclude_self {exclude_self}");
            let fast = knn(queries, database, k, exclude_self);
            let brute = knn_brute_force(queries, database, k, exclude_self);
            assert_same_up_to_rounding(&fast, &brute, queries, database, exclude_self, &case);
            for q in 0..n_db {
                let (indices, sims) = fast.of(q);
                let real = n_db - usize::from(exclude_self);
                let mut listed: Vec<u32> = indices[..real].to_vec();
                listed.sort_unstable();
                let expected: Vec<u32> =
                    (0..n_db as u32).filter(|&j| !(exclude_self && j as usize == q)).collect();
                assert_eq!(listed, expected, "{case}: query {q} does not list every other row");
                assert!(
                    indices[real..].iter().all(|&i| i == PADDING_INDEX),
                    "{case}: query {q}: padding indices"
                );
                assert!(
                    sims[real..].iter().all(|&s| s == f32::NEG_INFINITY),
                    "{case}: query {q}: padding sims"
                );
                assert!(sims[..real].iter().all(|s| s.is_finite()), "{case}: query {q}: real entries");
            }
        }
        // no queries at all
        let data = unit_vectors(10, 8, 8);
        let none = knn(Matrix::new(&[], 8), Matrix::new(&data, 8), 3, false);
        assert_eq!(none.n_queries(), 0);
        assert_eq!(none, knn_brute_force(Matrix::new(&[], 8), Matrix::new(&data, 8), 3, false));
    }

    #[test]
    fn uneven_chunks_give_the_one_call_result_in_any_order() {
        let (n, d, k) = (2100, 48, 20);
        let data = unit_vectors(n, d, 11);
        let matrix = Matrix::new(&data, d);
        // pieces smaller than, equal to and larger than a tile, one of them empty
        let bounds = [0, 1, 38, 38, 1062, 2086, 2100];
        let pieces: Vec<(usize, Matrix)> = bounds
            .windows(2)
            .map(|w| (w[0], Matrix { data: matrix.rows(w[0], w[1]), n: w[1] - w[0], d }))
            .collect();
        for exclude_self in [false, true] {
            let whole = knn(matrix, matrix, k, exclude_self);
            let mut forward = TopK::new(n, k);
            for &(offset, piece) in &pieces {
                forward.update(matrix, piece, offset, exclude_self.then_some(0));
            }
            let mut backward = TopK::new(n, k);
            for &(offset, piece) in pieces.iter().rev() {
                backward.update(matrix, piece, offset, exclude_self.then_some(0));
            }
            // the GEMM computes each similarity the same way whatever the tile, so exactly equal
            assert_eq!(forward.finish(), whole, "exclude_self {exclude_self}: chunks in order");
            assert_eq!(backward.finish(), whole, "exclude_self {exclude_self}: chunks reversed");
        }
    }

    #[test]
    fn exact_ties_rank_the_smaller_index_first_in_both_paths() {
        // small integer entries: every product and partial sum is an exact f32 integer, so both
        // paths compute bit-identical similarities and the order is decided by the tie rule alone
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (distinct, copies, d) = (150, 3, 6);
        let rows: Vec<Vec<i64>> =
            (0..distinct).map(|_| (0..d).map(|_| rng.random_range(-3..=3)).collect()).collect();
        // each row three times, the copies spread apart so that tied indices are not adjacent
        let order: Vec<usize> = (0..distinct * copies).map(|i| i % distinct).collect();
        let data: Vec<f32> = order.iter().flat_map(|&r| rows[r].iter().map(|&x| x as f32)).collect();
        let n = order.len();
        let matrix = Matrix::new(&data, d);
        for (k, exclude_self) in [(1, false), (1, true), (10, true), (64, false), (64, true), (n + 2, true)] {
            // independent reference: integer dot products, sorted by (similarity desc, index asc)
            let mut reference_indices = Vec::new();
            let mut reference_sims = Vec::new();
            let mut tied_queries = 0;
            for q in 0..n {
                let mut scored: Vec<(i64, u32)> = (0..n)
                    .filter(|&j| !(exclude_self && j == q))
                    .map(|j| (rows[order[q]].iter().zip(&rows[order[j]]).map(|(a, b)| a * b).sum(), j as u32))
                    .collect();
                scored.sort_by_key(|&(sim, j)| (std::cmp::Reverse(sim), j));
                // a tie the rule has to decide: within the list or across its end
                tied_queries +=
                    usize::from(scored[..(k + 1).min(scored.len())].windows(2).any(|w| w[0].0 == w[1].0));
                for p in 0..k {
                    let (sim, j) =
                        scored.get(p).map_or((f32::NEG_INFINITY, PADDING_INDEX), |&(s, j)| (s as f32, j));
                    reference_indices.push(j);
                    reference_sims.push(sim);
                }
            }
            let reference = Neighbours { k, indices: reference_indices, sims: reference_sims };
            assert!(tied_queries == n, "k {k}: every query should face a tie, {tied_queries} of {n} do");
            assert_eq!(
                knn(matrix, matrix, k, exclude_self),
                reference,
                "fast path, k {k} exclude_self {exclude_self}"
            );
            assert_eq!(
                knn_brute_force(matrix, matrix, k, exclude_self),
                reference,
                "brute force, k {k} exclude_self {exclude_self}"
            );
        }
    }

    #[test]
    fn nan_similarities_are_never_listed() {
        let d = 4;
        let mut data = unit_vectors(6, d, 5);
        data[2 * d + 1] = f32::NAN;
        let matrix = Matrix::new(&data, d);
        for neighbours in [knn(matrix, matrix, 6, false), knn_brute_force(matrix, matrix, 6, false)] {
            for q in 0..6 {
                let (indices, sims) = neighbours.of(q);
                if q == 2 {
                    assert!(indices.iter().all(|&i| i == PADDING_INDEX), "the NaN query lists {indices:?}");
                } else {
                    assert!(
                        !indices[..5].contains(&2) && indices[5] == PADDING_INDEX,
                        "query {q}: {indices:?}"
                    );
                    assert!(sims[..5].iter().all(|s| s.is_finite()), "query {q}: {sims:?}");
                }
            }
        }
    }

    #[test]
    fn matrix_rows_are_the_right_slices() {
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let matrix = Matrix::new(&data, 4);
        assert_eq!((matrix.n, matrix.d), (3, 4));
        assert_eq!(matrix.row(1), &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(Matrix::new(&[], 0).n, 0);
    }

    /// The benchmark of the report: `cargo test --release --lib curate::knn::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark, minutes on two cores"]
    fn bench_self_knn_20000_by_384_k64() {
        let (n, d, k) = (20_000, 384, 64);
        let data = unit_vectors(n, d, 42);
        let matrix = Matrix::new(&data, d);
        let start = std::time::Instant::now();
        let fast = knn(matrix, matrix, k, true);
        let fast_s = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        let brute = knn_brute_force(matrix, matrix, k, true);
        let brute_s = start.elapsed().as_secs_f64();
        let flipped = assert_same_up_to_rounding(&fast, &brute, matrix, matrix, true, "bench");
        eprintln!(
            "self-kNN n {n} d {d} k {k}, {} threads: knn {fast_s:.2} s, knn_brute_force {brute_s:.2} s, ratio {:.1}x, {flipped} near-tie flips",
            rayon::current_num_threads(),
            brute_s / fast_s
        );
    }
}
