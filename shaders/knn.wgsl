// Exact k-nearest-neighbour search by inner product (data curation), one tile of a query
// block against a database block at a time, merged into running top-k lists. No n × m matrix:
// the similarities of one tile (at most KNN_QUERY_BLOCK × KNN_DATABASE_BLOCK) are the only
// scratch, and the lists ([n, k]) are the only state.
//
// info: [n, m, d, k, q0, c0, qn, cn, offset, self_offset, first]: queries [n, d], database
// chunk [m, d]; this launch covers queries q0 .. q0 + qn and chunk rows c0 .. c0 + cn; chunk
// row j is database row offset + j; query q skips database row self_offset + q unless
// self_offset is 0xffffffff; `first` = 1 on the first tile of a query block (the lists are
// read from sims_in / idx_in and written to sims_out / idx_out, later tiles update those).
//
// PASS 0, a small GEMM: workgroup (row tile, column tile) of 8×8 invocations computes a
// T × T block of similarities (T = 8·M = 64), each invocation an M × M block accumulated over d
// in chunks of DK = 16 staged in workgroup memory (two 64×16 f32 tiles = 8 KiB), written to
// the scratch `s` transposed ([cn, qn]) so that pass 1 reads it coalesced. Every dot product
// is summed in the same order, so the result is the same on every run.
// PASS 1: one invocation per query row scans its column of `s` in increasing database index
// and inserts each candidate that ranks before its list's last entry (larger similarity first,
// ties to the smaller index, as the CPU search); an insertion shifts the list in place, rare
// once the list has filled. NaN never compares greater, so it never enters a list. Padding
// entries are (-f32::MAX, 0xffffffff), which every real candidate outranks.
// Every loop bound that contains a barrier comes from workgroupUniformLoad.

@group(0) @binding(0) var<storage, read_write> queries: array<f32>;
@group(0) @binding(1) var<storage, read_write> database: array<f32>;
@group(0) @binding(2) var<storage, read_write> s: array<f32>; // [cn, qn]
@group(0) @binding(3) var<storage, read_write> sims_in: array<f32>; // [n, k]
@group(0) @binding(4) var<storage, read_write> idx_in: array<u32>; // [n, k]
@group(0) @binding(5) var<storage, read_write> sims_out: array<f32>; // [n, k]
@group(0) @binding(6) var<storage, read_write> idx_out: array<u32>; // [n, k]
@group(0) @binding(7) var<storage, read_write> info: array<u32>;

const PASS: u32 = {{ pass }}u;
const T: u32 = {{ tile }}u; // rows per tile (both sides) = 8 · M
const DK: u32 = 16u; // d per chunk
const M: u32 = {{ micro }}u; // rows and columns per invocation
const NONE: u32 = 0xffffffffu;

var<workgroup> a_tile: array<f32, DK * T>; // [kk][query row]
var<workgroup> b_tile: array<f32, DK * T>; // [kk][database row]
var<workgroup> dims_uniform: vec4<u32>;

// (sa, ia) ranks before (sb, ib)
fn ranks_before(sa: f32, ia: u32, sb: f32, ib: u32) -> bool {
    return sa > sb || (sa == sb && ia < ib);
}

// Pass 1 for query row i of the block (global row q): merge column i of `s` into its list.
fn merge_row(i: u32, q: u32, k: u32, qn: u32, cn: u32, c0: u32) {
    let base = q * k;
    if (info[10] == 1u) {
        for (var e = 0u; e < k; e++) {
            sims_out[base + e] = sims_in[base + e];
            idx_out[base + e] = idx_in[base + e];
        }
    }
    let self_offset = info[9];
    var skip = NONE;
    if (self_offset != NONE) { skip = self_offset + q; }
    let first_index = info[8] + c0;
    var worst_s = sims_out[base + k - 1u];
    var worst_j = idx_out[base + k - 1u];
    for (var j = 0u; j < cn; j++) {
        let sim = s[j * qn + i];
        let index = first_index + j;
        if (index != skip && ranks_before(sim, index, worst_s, worst_j)) {
            var p = k - 1u;
            loop {
                if (p == 0u) { break; }
                let ps = sims_out[base + p - 1u];
                let pj = idx_out[base + p - 1u];
                if (!ranks_before(sim, index, ps, pj)) { break; }
                sims_out[base + p] = ps;
                idx_out[base + p] = pj;
                p -= 1u;
            }
            sims_out[base + p] = sim;
            idx_out[base + p] = index;
            worst_s = sims_out[base + k - 1u];
            worst_j = idx_out[base + k - 1u];
        }
    }
}

@compute @workgroup_size(8, 8, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) { dims_uniform = vec4<u32>(info[2], info[6], info[7], 0u); }
    let dims = workgroupUniformLoad(&dims_uniform);
    let d = dims.x;
    let qn = dims.y;
    let cn = dims.z;
    let k = info[3];
    let q0 = info[4];
    let c0 = info[5];
    let flat = wid.y * nwg.x + wid.x;

    if (PASS == 1u) {
        let i = flat * 64u + lid; // query row within the block
        if (i < qn) { merge_row(i, q0 + i, k, qn, cn, c0); }
        return;
    }

    let tiles_j = (cn + T - 1u) / T;
    if (flat >= ((qn + T - 1u) / T) * tiles_j) { return; } // grid padding (uniform)
    let tx = lid3.x; // column group of the invocation
    let ty = lid3.y; // row group of the invocation
    let i0 = (flat / tiles_j) * T; // first query row of the tile, within the block
    let j0 = (flat % tiles_j) * T; // first database row of the tile, within the block

    var acc: array<f32, M * M>; // [r * M + c]
    for (var e = 0u; e < M * M; e++) { acc[e] = 0.0; }
    for (var k0 = 0u; k0 < d; k0 += DK) {
        workgroupBarrier(); // the previous chunk has been consumed
        for (var e = lid; e < DK * T; e += 64u) {
            let row = e / DK;
            let kk = e % DK;
            var av = 0.0;
            var bv = 0.0;
            if (k0 + kk < d) {
                if (i0 + row < qn) { av = queries[(q0 + i0 + row) * d + k0 + kk]; }
                if (j0 + row < cn) { bv = database[(c0 + j0 + row) * d + k0 + kk]; }
            }
            a_tile[kk * T + row] = av;
            b_tile[kk * T + row] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DK; kk++) {
            var av: array<f32, M>;
            for (var r = 0u; r < M; r++) { av[r] = a_tile[kk * T + ty * M + r]; }
            for (var c = 0u; c < M; c++) {
                let bv = b_tile[kk * T + tx * M + c];
                for (var r = 0u; r < M; r++) { acc[r * M + c] += av[r] * bv; }
            }
        }
    }
    for (var c = 0u; c < M; c++) {
        let j = j0 + tx * M + c;
        for (var r = 0u; r < M; r++) {
            let i = i0 + ty * M + r;
            if (i < qn && j < cn) { s[j * qn + i] = acc[r * M + c]; }
        }
    }
}
