// Fused attention backward, pass 3 of 3: dK and dV. One invocation per key row j (BR keys of one
// (batch, head) per workgroup); Q and dO tiles of BQ rows, with their (lse, delta), are staged in
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
const BQ: u32 = {{ bc }}u;
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

    let blocks = (n + BR - 1u) / BR;
    let flat = wid.y * nwg.x + wid.x;
    let bh = flat / blocks;
    let row = (flat % blocks) * BR + lid;
    let live = bh < bh_count;
    let valid = live && row < n;
    let base = bh * n * D;

    var kr: array<vec4<f32>, D4>;
    var vr: array<vec4<f32>, D4>;
    var dk_acc: array<vec4<f32>, D4>;
    var dv_acc: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        kr[c] = vec4<f32>(0.0);
        vr[c] = vec4<f32>(0.0);
        dk_acc[c] = vec4<f32>(0.0);
        dv_acc[c] = vec4<f32>(0.0);
        if (valid) {
            kr[c] = load4_k(base + row * D + 4u * c) * scale;
            vr[c] = load4_v(base + row * D + 4u * c);
        }
    }

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

        let count = min(BQ, n - t);
        for (var i = 0u; i < count; i++) {
            var s = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < D4; c++) {
                s += dot(kr[c], q_tile[i * D4 + c]);
                dp += dot(vr[c], do_tile[i * D4 + c]);
            }
            let p = exp(s - lse_tile[i]);
            let ds = p * (dp - delta_tile[i]);
            for (var c = 0u; c < D4; c++) {
                dv_acc[c] += p * do_tile[i * D4 + c];
                dk_acc[c] += ds * q_tile[i * D4 + c];
            }
        }
    }

    if (valid) {
        let at = base + row * D;
        for (var c = 0u; c < D4; c++) {
            let a = dk_acc[c] * scale;
            let b = dv_acc[c];
            dk[at + 4u * c] = {{ elem }}(a.x);
            dk[at + 4u * c + 1u] = {{ elem }}(a.y);
            dk[at + 4u * c + 2u] = {{ elem }}(a.z);
            dk[at + 4u * c + 3u] = {{ elem }}(a.w);
            dv[at + 4u * c] = {{ elem }}(b.x);
            dv[at + 4u * c + 1u] = {{ elem }}(b.y);
            dv[at + 4u * c + 2u] = {{ elem }}(b.z);
            dv[at + 4u * c + 3u] = {{ elem }}(b.w);
        }
    }
}
