// Fused attention forward, FlashAttention-2 style: softmax(scale · Q Kᵀ) V without the N×N matrix.
//
// Layout: q, k, v, o are [BH, N, D] row-major (D = 64); lse is [BH, N] (f32), the row
// log-sum-exp of the scaled scores, kept for the backward. One workgroup owns BR · R query rows of
// one (batch, head): BR invocations, each with R rows (row first + r · BR for r < R) whose query
// row and output accumulator live in registers (q{r}_0..15, acc{r}_0..15: 16 vec4 each). K and V
// tiles of BC rows are staged in workgroup memory (2·BC·D·4 bytes = 8 KiB at BC = 16, half of
// wgpu's default 16 KiB), and the softmax is accumulated online (running max m{r}, running sum
// l{r}), U keys at a time. Keys past N get the score NEG and weigh exactly 0; rows past N compute
// but do not write, so any N works.
//
// Two shapes, chosen per adapter (src/kernels/shaders.rs, `Rows`): on a GPU R = 1 and U = BC
// with 64 invocations, the FlashAttention-2 shape (every invocation reads the same K/V element
// at once, a broadcast). On a software adapter R = 32 and U = 1 with 8 invocations: lavapipe runs
// eight invocations in the lanes of one AVX register but performs every memory read inside a loop
// as eight scalar reads, uniform address or not, so each K/V element read must serve many rows.
//
// The per-step arithmetic is unrolled by the template (slots `unrolled_*`, generated in
// src/kernels/shaders.rs): register arrays indexed in loops are spilled to memory by some
// compilers (lavapipe's among them), named registers never are.
//
// Split over keys (GPU shape, when batch × heads × row blocks leave a GPU idle): info[3] =
// splits, info[4] = keys per split (a multiple of BC). Workgroup (bh, block, split) runs the keys
// [split · kps, min(n, (split + 1) · kps)) and writes its unnormalised accumulators to part_acc
// [splits, BH·N, D] and (m, l) to part_ml [splits, BH·N, 2]; attention_forward_combine.wgsl
// merges them into o and lse. With one split the workgroup writes o and lse itself, and the
// part buffers are placeholders.
//
// Other slots: elem (f32 | f16: storage type, arithmetic is f32), enable ("enable f16;" or
// empty), br (invocations per workgroup), rows (R), bc (keys per tile), unroll (U).
{{ enable }}

@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> o: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
// [BH, N, bitcast(scale), splits, keys per split]. All bindings are read_write: burn
// sub-allocates tensors from shared buffers, and mixed read-only/read-write views of one buffer
// conflict in a dispatch.
@group(0) @binding(5) var<storage, read_write> info: array<u32>;
@group(0) @binding(6) var<storage, read_write> part_acc: array<f32>;
@group(0) @binding(7) var<storage, read_write> part_ml: array<f32>;

const D: u32 = 64u;
const D4: u32 = 16u;
const BR: u32 = {{ br }}u;
const R: u32 = {{ rows }}u;
const BC: u32 = {{ bc }}u;
const U: u32 = {{ unroll }}u;
// Finite stand-in for -inf: exp(NEG - x) is exactly 0 without inf - inf = NaN.
const NEG: f32 = -1.0e30;

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;
var<workgroup> dims_uniform: vec4<u32>; // n, splits, keys per split

fn load4_q(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(q[i]), f32(q[i + 1u]), f32(q[i + 2u]), f32(q[i + 3u]));
}
fn load4_k(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(k[i]), f32(k[i + 1u]), f32(k[i + 2u]), f32(k[i + 3u]));
}
fn load4_v(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(v[i]), f32(v[i + 1u]), f32(v[i + 2u]), f32(v[i + 3u]));
}

@compute @workgroup_size({{ br }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Loop bounds that contain barriers must be uniform: a value read from storage is not,
    // a workgroupUniformLoad of it is.
    if (lid == 0u) { dims_uniform = vec4<u32>(info[1], info[3], info[4], 0u); }
    let dims = workgroupUniformLoad(&dims_uniform);
    let n = dims.x;
    let splits = dims.y;
    let bh_count = info[0];
    let scale = bitcast<f32>(info[2]);

    let blocks = (n + BR * R - 1u) / (BR * R);
    let flat = wid.y * nwg.x + wid.x;
    let split = flat % splits;
    let bh = flat / (blocks * splits);
    let first = ((flat / splits) % blocks) * BR * R + lid;
    let k_begin = split * dims.z;
    let k_end = min(n, k_begin + dims.z);
    let live = bh < bh_count; // padding workgroups of the 2-D grid do no memory traffic
    let base = bh * n * D;

    // per row r: row{r}, valid{r}, at{r}; q{r}_0..15 (the scaled query row), acc{r}_0..15 (zero),
    // m{r} = NEG, l{r} = 0
    {{ unrolled_registers }}

    // keys past k_end are past n too: kps is a multiple of BC and only the last split ends early
    for (var t = k_begin; t < k_end; t += BC) {
        workgroupBarrier(); // everyone is done with the previous tile
        for (var e = lid; e < BC * D4; e += BR) {
            let key = t + e / D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (live && key < n) {
                let kat = base + key * D + 4u * (e % D4);
                kv = load4_k(kat);
                vv = load4_v(kat);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();

        for (var j0 = 0u; j0 < BC; j0 += U) {
            // keys t + j0 + u, u < U: s{r}_{u} = q{r} · k, NEG past N; the running max, sum and
            // accumulators of every row rescaled and updated
            {{ unrolled_step }}
        }
    }

    if (splits == 1u) {
        // per row r, if valid{r}: o[at{r} ..] = acc{r} / l{r}; lse = m{r} + log(l{r})
        {{ unrolled_store }}
    } else {
        // per row r, if valid{r}: part_acc[pbase + at{r} ..] = acc{r}; part_ml = (m{r}, l{r})
        let pbase = split * bh_count * n * D;
        {{ unrolled_partial_store }}
    }
}
