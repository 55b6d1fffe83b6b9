// KoLeo nearest neighbour: for n rows x_i of x [n, d] (L2-normalised by the caller), the index
// of argmax_{j ≠ i} x_i·x_j, exact. Ties go to the smaller j, and every dot product is summed in
// the same order, so the result is the same on every run.
//
// PASS 0, a small GEMM with an argmax epilogue: workgroup (row tile r, column group g) of 8×8
// invocations owns T = 8·M rows and sweeps the `span` column tiles of T rows of group g (M = 8:
// 64 rows); each invocation accumulates an M×M block of dot products over d in chunks of DK = 16
// staged in workgroup memory (two 64×16 f32 tiles = 8 KiB at M = 8) and keeps, per row it owns, the best
// (value, index). The eight invocations sharing a row reduce their candidates through workgroup
// memory (4 KiB) and write one partial per (row, group). Splitting the columns into groups
// keeps every workgroup short: on lavapipe a single workgroup sweeping all columns (n = 1024,
// d = 384, 384 barrier rounds) returned wrong maxima for the late column tiles.
// PASS 1: one invocation per row reduces its partials in group order.
// Every loop bound that contains a barrier comes from workgroupUniformLoad.

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> part_val: array<f32>; // [n, groups]
@group(0) @binding(2) var<storage, read_write> part_idx: array<u32>; // [n, groups]
@group(0) @binding(3) var<storage, read_write> nearest: array<i32>;
// [n, d, groups, span (column tiles per group)]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const PASS: u32 = {{ pass }}u;
const T: u32 = {{ tile }}u; // rows per tile (both sides) = 8 · M
const DK: u32 = 16u; // d per chunk
const M: u32 = {{ micro }}u; // rows and columns per invocation
const TX: u32 = 8u; // invocations per row group (workgroup 8 × 8)
const NEG: f32 = -3.0e38;

var<workgroup> a_tile: array<f32, DK * T>; // [kk][row]
var<workgroup> b_tile: array<f32, DK * T>; // [kk][col]
var<workgroup> best_val: array<f32, T * TX>; // [row][tx]
var<workgroup> best_idx: array<u32, T * TX>;
var<workgroup> dims_uniform: vec4<u32>;

@compute @workgroup_size(8, 8, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) { dims_uniform = vec4<u32>(info[0], info[1], info[2], info[3]); }
    let dims = workgroupUniformLoad(&dims_uniform);
    let n = dims.x;
    let d = dims.y;
    let groups = dims.z;
    let span = dims.w;
    let flat = wid.y * nwg.x + wid.x;

    if (PASS == 1u) {
        let i = flat * 64u + lid;
        if (i < n) {
            var v = part_val[i * groups];
            var j = part_idx[i * groups];
            for (var g = 1u; g < groups; g++) {
                let cv = part_val[i * groups + g];
                let cj = part_idx[i * groups + g];
                if (cv > v || (cv == v && cj < j)) {
                    v = cv;
                    j = cj;
                }
            }
            // no candidate compared greater (NaN features): any other row rather than -1
            if (j >= n) { j = (i + 1u) % n; }
            nearest[i] = i32(j);
        }
        return;
    }

    let tx = lid3.x; // column group of the invocation
    let ty = lid3.y; // row group of the invocation
    let group = flat % groups;
    let i0 = (flat / groups) * T; // first row of this tile (>= n for padding workgroups)
    let j_begin = group * span * T;
    let j_end = min(n, j_begin + span * T);

    var best: array<f32, M>;
    var best_j: array<u32, M>;
    for (var r = 0u; r < M; r++) { best[r] = NEG; best_j[r] = 0xffffffffu; }

    for (var j0 = j_begin; j0 < j_end; j0 += T) {
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
                    if (i0 + row < n) { av = x[(i0 + row) * d + k0 + kk]; }
                    if (j0 + row < n) { bv = x[(j0 + row) * d + k0 + kk]; }
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

        for (var r = 0u; r < M; r++) {
            let i = i0 + ty * M + r;
            for (var c = 0u; c < M; c++) {
                let j = j0 + tx * M + c;
                let s = acc[r * M + c];
                // columns are visited in increasing j, so ">" keeps the smallest j on ties
                if (j < n && j != i && s > best[r]) {
                    best[r] = s;
                    best_j[r] = j;
                }
            }
        }
    }

    for (var r = 0u; r < M; r++) {
        best_val[(ty * M + r) * TX + tx] = best[r];
        best_idx[(ty * M + r) * TX + tx] = best_j[r];
    }
    workgroupBarrier();
    let row = lid; // one invocation per row of the tile
    let i = i0 + row;
    if (row < T && i < n) {
        var v = best_val[row * TX];
        var j = best_idx[row * TX];
        for (var t = 1u; t < TX; t++) {
            let cv = best_val[row * TX + t];
            let cj = best_idx[row * TX + t];
            if (cv > v || (cv == v && cj < j)) {
                v = cv;
                j = cj;
            }
        }
        part_val[i * groups + group] = v;
        part_idx[i * groups + group] = j;
    }
}
