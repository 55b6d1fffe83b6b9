// Fused attention forward, the merge of a split over keys (see attention_forward.wgsl): split s
// of row r left its unnormalised accumulator part_acc[s, r, :] and its running max and sum
// part_ml[s, r] = (m_s, l_s). With M = max_s m_s and L = Σ_s l_s·exp(m_s − M):
// o[r] = Σ_s part_acc[s, r]·exp(m_s − M) / L and lse[r] = M + log(L), what one pass over all
// keys gives. One invocation per (row, vec4 of the row), splits in order: deterministic.
// Layout: R = BH·N rows of D = 64; info = [R, splits].
{{ enable }}

@group(0) @binding(0) var<storage, read_write> part_acc: array<vec4<f32>>; // [splits, R, D / 4]
@group(0) @binding(1) var<storage, read_write> part_ml: array<f32>; // [splits, R, 2]
@group(0) @binding(2) var<storage, read_write> o: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const D4: u32 = 16u;
const WG: u32 = {{ wg }}u;

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let rows = info[0];
    let splits = info[1];
    let e = (wid.y * nwg.x + wid.x) * WG + lid;
    let r = e / D4;
    let c = e % D4;
    if (r >= rows) { return; } // no barriers in this kernel
    var m = part_ml[2u * r];
    for (var s = 1u; s < splits; s++) { m = max(m, part_ml[2u * (s * rows + r)]); }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < splits; s++) {
        let w = exp(part_ml[2u * (s * rows + r)] - m);
        l += part_ml[2u * (s * rows + r) + 1u] * w;
        acc += part_acc[(s * rows + r) * D4 + c] * w;
    }
    let x = acc / l;
    let at = 4u * (r * D4 + c);
    o[at] = {{ elem }}(x.x);
    o[at + 1u] = {{ elem }}(x.y);
    o[at + 2u] = {{ elem }}(x.z);
    o[at + 3u] = {{ elem }}(x.w);
    if (c == 0u) { lse[r] = m + log(l); }
}
