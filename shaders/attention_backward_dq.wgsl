// Fused attention backward, pass 2 of 3: dQ. BR invocations of R query rows each (BR · R rows of
// one (batch, head) per workgroup; the forward's two shapes, see attention_forward.wgsl), K and V
// tiles of BC rows in workgroup memory (8 KiB at BC = 16), U keys per unrolled step.
// With P_ij = exp(scale·q_i·k_j − lse_i) recomputed from the saved log-sum-exp:
//   dS_ij = P_ij (dO_i·v_j − delta_i),   dQ_i = scale · Σ_j dS_ij k_j.
// Each dQ row is summed by one invocation in key order: no atomics, same result every run.
// Layout: q, k, v, dout, dq [BH, N, D] (D = 64); stats [BH·N, 2] = (lse, delta).
{{ enable }}

@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> dout: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> dq: array<{{ elem }}>;
@group(0) @binding(6) var<storage, read_write> info: array<u32>; // [BH, N, bitcast(scale)]

const D: u32 = 64u;
const D4: u32 = 16u;
const BR: u32 = {{ br }}u;
const R: u32 = {{ rows }}u;
const BC: u32 = {{ bc }}u;
const U: u32 = {{ unroll }}u;

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;
var<workgroup> n_uniform: u32;

fn load4_q(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(q[i]), f32(q[i + 1u]), f32(q[i + 2u]), f32(q[i + 3u]));
}
fn load4_k(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(k[i]), f32(k[i + 1u]), f32(k[i + 2u]), f32(k[i + 3u]));
}
fn load4_v(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(v[i]), f32(v[i + 1u]), f32(v[i + 2u]), f32(v[i + 3u]));
}
fn load4_do(i: u32) -> vec4<f32> {
    return vec4<f32>(f32(dout[i]), f32(dout[i + 1u]), f32(dout[i + 2u]), f32(dout[i + 3u]));
}

@compute @workgroup_size({{ br }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) { n_uniform = info[1]; }
    let n = workgroupUniformLoad(&n_uniform);
    let bh_count = info[0];
    let scale = bitcast<f32>(info[2]);

    let blocks = (n + BR * R - 1u) / (BR * R);
    let flat = wid.y * nwg.x + wid.x;
    let bh = flat / blocks;
    let first = (flat % blocks) * BR * R + lid;
    let live = bh < bh_count;
    let base = bh * n * D;

    // per row r (row first + r · BR): row{r}, valid{r}, at{r}; q{r}_0..15 (scaled), do{r}_0..15,
    // acc{r}_0..15 (zero); lse{r}, delta{r}
    {{ unrolled_registers }}

    for (var t = 0u; t < n; t += BC) {
        workgroupBarrier();
        for (var e = lid; e < BC * D4; e += BR) {
            let key = t + e / D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (live && key < n) {
                let at = base + key * D + 4u * (e % D4);
                kv = load4_k(at);
                vv = load4_v(at);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();

        for (var j0 = 0u; j0 < BC; j0 += U) {
            // keys t + j0 + u, u < U: ds = P (dO·v − delta), zero past N; acc{r} += ds · k
            {{ unrolled_step }}
        }
    }

    // per row r, if valid{r}: dq[at{r} ..] = acc{r} · scale
    {{ unrolled_store }}
}
