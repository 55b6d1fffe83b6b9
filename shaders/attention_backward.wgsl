// Fused attention backward, pass 3 of 3: dK and dV. BR invocations of R key rows each (BR · R
// keys of one (batch, head) per workgroup; the forward's two shapes, see attention_forward.wgsl,
// U queries per unrolled step); Q and dO tiles of BQ rows, with their (lse, delta), are staged in
// workgroup memory (2·BQ·D·4 + 8·BQ bytes ≈ 8 KiB at BQ = 16). With P_ij recomputed from lse:
//   dV_j = Σ_i P_ij dO_i,   dS_ij = P_ij (dO_i·v_j − delta_i),   dK_j = scale · Σ_i dS_ij q_i.
// Each row is summed by one invocation in query order: no atomics, same result every run.
// Layout: q, k, v, dout, dk, dv [BH, N, D] (D = 64); stats [BH·N, 2] = (lse, delta).
{{ enable }}

@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> dout: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> dk: array<{{ elem }}>;
@group(0) @binding(6) var<storage, read_write> dv: array<{{ elem }}>;
@group(0) @binding(7) var<storage, read_write> info: array<u32>; // [BH, N, bitcast(scale)]

const D: u32 = 64u;
const D4: u32 = 16u;
const BR: u32 = {{ br }}u;
const R: u32 = {{ rows }}u;
const BQ: u32 = {{ bc }}u;
const U: u32 = {{ unroll }}u;
// Padding query rows get lse = BIG, so P = exp(s - BIG) = 0 and they contribute nothing.
const BIG: f32 = 1.0e30;

var<workgroup> q_tile: array<vec4<f32>, BQ * D4>;
var<workgroup> do_tile: array<vec4<f32>, BQ * D4>;
var<workgroup> lse_tile: array<f32, BQ>;
var<workgroup> delta_tile: array<f32, BQ>;
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

    // per key row r (row first + r · BR): row{r}, valid{r}, at{r}; k{r}_0..15 (scaled),
    // v{r}_0..15, dk{r}_0..15 and dv{r}_0..15 (zero)
    {{ unrolled_registers }}

    for (var t = 0u; t < n; t += BQ) {
        workgroupBarrier();
        for (var e = lid; e < BQ * D4; e += BR) {
            let qi = t + e / D4;
            var qv = vec4<f32>(0.0);
            var dov = vec4<f32>(0.0);
            if (live && qi < n) {
                let at = base + qi * D + 4u * (e % D4);
                qv = load4_q(at);
                dov = load4_do(at);
            }
            q_tile[e] = qv;
            do_tile[e] = dov;
        }
        for (var e = lid; e < BQ; e += BR) {
            let qi = t + e;
            var l = BIG;
            var dl = 0.0;
            if (live && qi < n) {
                l = stats[2u * (bh * n + qi)];
                dl = stats[2u * (bh * n + qi) + 1u];
            }
            lse_tile[e] = l;
            delta_tile[e] = dl;
        }
        workgroupBarrier();

        for (var i0 = 0u; i0 < BQ; i0 += U) {
            // queries t + i0 + u, u < U (padding ones weigh P = 0): dv{r} += P dO,
            // dk{r} += P (dO·v − delta) q
            {{ unrolled_step }}
        }
    }

    // per key row r, if valid{r}: dk[at{r} ..] = dk{r} · scale, dv[at{r} ..] = dv{r}
    {{ unrolled_store }}
}
