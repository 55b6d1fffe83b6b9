// Fused attention backward, pass 2 of 3: dQ. One invocation per query row i (BR rows of one
// (batch, head) per workgroup), K and V tiles of BC rows in workgroup memory (8 KiB at BC = 16).
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
const BC: u32 = {{ bc }}u;

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

    let blocks = (n + BR - 1u) / BR;
    let flat = wid.y * nwg.x + wid.x;
    let bh = flat / blocks;
    let row = (flat % blocks) * BR + lid;
    let live = bh < bh_count;
    let valid = live && row < n;
    let base = bh * n * D;

    var qr: array<vec4<f32>, D4>;
    var dor: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    var lse_i = 0.0;
    var delta_i = 0.0;
    for (var c = 0u; c < D4; c++) {
        qr[c] = vec4<f32>(0.0);
        dor[c] = vec4<f32>(0.0);
        acc[c] = vec4<f32>(0.0);
        if (valid) {
            qr[c] = load4_q(base + row * D + 4u * c) * scale;
            dor[c] = load4_do(base + row * D + 4u * c);
        }
    }
    if (valid) {
        lse_i = stats[2u * (bh * n + row)];
        delta_i = stats[2u * (bh * n + row) + 1u];
    }

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

        let count = min(BC, n - t);
        for (var j = 0u; j < count; j++) {
            var s = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < D4; c++) {
                s += dot(qr[c], k_tile[j * D4 + c]);
                dp += dot(dor[c], v_tile[j * D4 + c]);
            }
            let ds = exp(s - lse_i) * (dp - delta_i);
            for (var c = 0u; c < D4; c++) { acc[c] += ds * k_tile[j * D4 + c]; }
        }
    }

    if (valid) {
        let at = base + row * D;
        for (var c = 0u; c < D4; c++) {
            let r = acc[c] * scale;
            dq[at + 4u * c] = {{ elem }}(r.x);
            dq[at + 4u * c + 1u] = {{ elem }}(r.y);
            dq[at + 4u * c + 2u] = {{ elem }}(r.z);
            dq[at + 4u * c + 3u] = {{ elem }}(r.w);
        }
    }
}
