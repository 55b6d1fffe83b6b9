// Sinkhorn-Knopp centering of teacher logits t [B, K] (DINOv2's sinkhorn_knopp_teacher):
//   Q = exp(t / τ); Q /= ΣQ; repeat: (each prototype column /= its sum, /= K;
//   each sample row /= its sum, /= B); Q *= B.
// Computed in log-scaling form, Q_bk = exp(t_bk/τ + a_k + c_b) · B, where each iteration sets
//   a_k = −log K − logsumexp_b(t_bk/τ + c_b)      (columns; c = 0 in the first iteration)
//   c_b = −log B − logsumexp_k(t_bk/τ + a_k)      (rows)
// which is the official algorithm exactly (the global ΣQ step is a constant the first column
// step removes) with every exp taken relative to a running maximum: no overflow for large
// logits and no 0/0 for columns far below the rest. Nothing of size B·K is written until the
// last pass; each pass streams the logits once.
//
// PASS (template): 0 columns → a (one invocation per prototype k, coalesced over k);
// 1 rows → c (one workgroup per sample, tree-reduced (max, sum) pairs); 2 out = Q.
// One pipeline per pass, so barriers sit in uniform control flow.

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> col_scale: array<f32>; // a [K]
@group(0) @binding(3) var<storage, read_write> row_scale: array<f32>; // c [B]
// [B, K, bitcast(1/τ), iteration]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const PASS: u32 = {{ pass }}u;
const WG: u32 = {{ wg }}u;
const NEG: f32 = -3.0e38;

var<workgroup> red_max: array<f32, WG>;
var<workgroup> red_sum: array<f32, WG>;
var<workgroup> dims_uniform: vec2<u32>;

/// Online log-sum-exp state (m, s): the sum of exp(x) is s · exp(m).
fn lse_push(state: vec2<f32>, value: f32) -> vec2<f32> {
    if (value > state.x) {
        return vec2<f32>(value, state.y * exp(state.x - value) + 1.0);
    }
    return vec2<f32>(state.x, state.y + exp(value - state.x));
}

fn lse_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) { dims_uniform = vec2<u32>(info[0], info[1]); }
    let dims = workgroupUniformLoad(&dims_uniform);
    let b_count = dims.x;
    let k_count = dims.y;
    let inv_temp = bitcast<f32>(info[2]);
    let group = wid.y * nwg.x + wid.x;

    if (PASS == 0u) {
        let kk = group * WG + lid;
        let first = info[3] == 0u;
        if (kk < k_count) {
            var state = vec2<f32>(NEG, 0.0);
            for (var b = 0u; b < b_count; b++) {
                var c = 0.0;
                if (!first) { c = row_scale[b]; }
                state = lse_push(state, logits[b * k_count + kk] * inv_temp + c);
            }
            col_scale[kk] = -log(f32(k_count)) - (state.x + log(state.y));
        }
    } else if (PASS == 1u) {
        let b = group;
        var state = vec2<f32>(NEG, 0.0);
        if (b < b_count) {
            for (var k = lid; k < k_count; k += WG) {
                state = lse_push(state, logits[b * k_count + k] * inv_temp + col_scale[k]);
            }
        }
        red_max[lid] = state.x;
        red_sum[lid] = state.y;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s = s / 2u) {
            if (lid < s) {
                let merged = lse_merge(vec2<f32>(red_max[lid], red_sum[lid]), vec2<f32>(red_max[lid + s], red_sum[lid + s]));
                red_max[lid] = merged.x;
                red_sum[lid] = merged.y;
            }
            workgroupBarrier();
        }
        if (b < b_count && lid == 0u) {
            row_scale[b] = -log(f32(b_count)) - (red_max[0] + log(red_sum[0]));
        }
    } else {
        let i = group * WG + lid;
        if (i < b_count * k_count) {
            let b = i / k_count;
            let kk = i % k_count;
            out[i] = exp(logits[i] * inv_temp + col_scale[kk] + row_scale[b] + log(f32(b_count)));
        }
    }
}
