// KoLeo nearest neighbour: for n rows x_i of x [n, d] (L2-normalised by the caller), the index
// of argmax_{j ≠ i} x_i·x_j, exact. Ties go to the smaller j, and every dot product is summed in
// the same order, so the result is the same on every run. x is read as vec4: d4 = d / 4 (the
// caller pads d to a multiple of 4 with zeros, which add nothing to a dot product).
//
// PASS 0 in a GPU's shape (a software adapter runs koleo_registers.wgsl instead, which writes
// the same partials): workgroup (row tile, column group) of 16 × 16 invocations owns T = 64 rows
// and sweeps the `span` column tiles of T columns of group g. Invocation (tx, ty) keeps the
// 4 × 4 dot products of rows ty + 16r and columns tx + 16c in registers (acc{r}, a vec4 over c);
// d is staged 8 at a time (two vec4 per row) in workgroup memory, rows padded to S = 3 vec4 so
// that the 16-byte reads of 8 neighbouring invocations fall in distinct banks (6 KiB). Each
// invocation keeps, per row it owns, the best (value, index); the 16 invocations sharing a row
// reduce their candidates through workgroup memory (8 KiB) and write one partial per (row,
// group). Column groups keep a GPU busy: at n = 1024, 16 row tiles × 16 groups.
// PASS 1: one invocation per row reduces its partials in group order.
// Every loop bound that contains a barrier comes from workgroupUniformLoad.

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> part_val: array<f32>; // [n, groups]
@group(0) @binding(2) var<storage, read_write> part_idx: array<u32>; // [n, groups]
@group(0) @binding(3) var<storage, read_write> nearest: array<i32>;
// [n, d4, groups, span (column tiles per group)]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const PASS: u32 = {{ pass }}u;
const T: u32 = 64u; // rows and columns per tile
const W: u32 = 16u; // invocations per side of the workgroup
const DK4: u32 = 2u; // vec4 of d per staged chunk
const S: u32 = 3u; // row stride of the staged tiles, in vec4 (DK4 + 1: no bank conflicts)
const NEG: f32 = -3.0e38;

var<workgroup> a_tile: array<vec4<f32>, T * S>; // [row][k4]
var<workgroup> b_tile: array<vec4<f32>, T * S>; // [column][k4]
var<workgroup> red_val: array<f32, T * W>; // [row][tx]
var<workgroup> red_idx: array<u32, T * W>;
var<workgroup> dims_uniform: vec4<u32>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) { dims_uniform = vec4<u32>(info[0], info[1], info[2], info[3]); }
    let dims = workgroupUniformLoad(&dims_uniform);
    let n = dims.x;
    let d4 = dims.y;
    let groups = dims.z;
    let span = dims.w;
    let flat = wid.y * nwg.x + wid.x;

    if (PASS == 1u) {
        let i = flat * W * W + lid;
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

    let tx = lid3.x;
    let ty = lid3.y;
    let group = flat % groups;
    let i0 = (flat / groups) * T; // first row of this tile (>= n for padding workgroups)
    let j_begin = group * span * T;
    let j_end = min(n, j_begin + span * T);
    // staging: invocations 0..127 load vec4 `sk` of row `srow` of the row tile, 128..255 of the
    // column tile; rows past n repeat row n - 1 (computed, never chosen or written)
    let stage_a = lid < T * DK4;
    let srow = (lid % (T * DK4)) / DK4;
    let sk = lid % DK4;
    let a_at = min(i0 + srow, n - 1u) * d4;
    let i = i0 + ty; // rows i + 16r of this invocation

    var best0 = NEG;
    var best1 = NEG;
    var best2 = NEG;
    var best3 = NEG;
    var bj0 = 0xffffffffu;
    var bj1 = 0xffffffffu;
    var bj2 = 0xffffffffu;
    var bj3 = 0xffffffffu;

    for (var j0 = j_begin; j0 < j_end; j0 += T) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        let at = select(min(j0 + srow, n - 1u) * d4, a_at, stage_a);
        for (var k0 = 0u; k0 < d4; k0 += DK4) {
            workgroupBarrier(); // the previous chunk has been consumed
            var v = vec4<f32>(0.0);
            if (k0 + sk < d4) { v = x[at + k0 + sk]; }
            if (stage_a) { a_tile[srow * S + sk] = v; } else { b_tile[srow * S + sk] = v; }
            workgroupBarrier();
            for (var kk = 0u; kk < DK4; kk++) {
                let a0 = a_tile[ty * S + kk];
                let a1 = a_tile[(ty + 16u) * S + kk];
                let a2 = a_tile[(ty + 32u) * S + kk];
                let a3 = a_tile[(ty + 48u) * S + kk];
                let b0 = b_tile[tx * S + kk];
                let b1 = b_tile[(tx + 16u) * S + kk];
                let b2 = b_tile[(tx + 32u) * S + kk];
                let b3 = b_tile[(tx + 48u) * S + kk];
                acc0 += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
                acc1 += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
                acc2 += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
                acc3 += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
            }
        }
        // columns in increasing j, so ">" keeps the smallest j on ties
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx + 16u * c;
            if (j < n) {
                if (j != i && acc0[c] > best0) { best0 = acc0[c]; bj0 = j; }
                if (j != i + 16u && acc1[c] > best1) { best1 = acc1[c]; bj1 = j; }
                if (j != i + 32u && acc2[c] > best2) { best2 = acc2[c]; bj2 = j; }
                if (j != i + 48u && acc3[c] > best3) { best3 = acc3[c]; bj3 = j; }
            }
        }
    }

    red_val[ty * W + tx] = best0;
    red_val[(ty + 16u) * W + tx] = best1;
    red_val[(ty + 32u) * W + tx] = best2;
    red_val[(ty + 48u) * W + tx] = best3;
    red_idx[ty * W + tx] = bj0;
    red_idx[(ty + 16u) * W + tx] = bj1;
    red_idx[(ty + 32u) * W + tx] = bj2;
    red_idx[(ty + 48u) * W + tx] = bj3;
    workgroupBarrier();
    let row = lid; // one invocation per row of the tile
    if (row < T && i0 + row < n) {
        var v = red_val[row * W];
        var j = red_idx[row * W];
        for (var t = 1u; t < W; t++) {
            let cv = red_val[row * W + t];
            let cj = red_idx[row * W + t];
            if (cv > v || (cv == v && cj < j)) {
                v = cv;
                j = cj;
            }
        }
        part_val[(i0 + row) * groups + group] = v;
        part_idx[(i0 + row) * groups + group] = j;
    }
}
