// Fused attention backward, pass 1 of 3: per query row, delta = rowsum(dO ∘ O), stored next to
// the forward's log-sum-exp as stats[2·r] = lse, stats[2·r + 1] = delta (one binding fewer in
// the later passes, which keeps every pass within WebGPU's 8 storage buffers per stage).
// Layout: o, dout are [R, D] row-major with R = BH·N, D = 64; lse is [R]; stats is [R, 2].
{{ enable }}

@group(0) @binding(0) var<storage, read_write> o: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> dout: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>; // [R]

const D: u32 = 64u;
const WG: u32 = {{ wg }}u;

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wid.y * nwg.x + wid.x) * WG + lid;
    if (r >= info[0]) { return; } // no barriers in this kernel
    var acc = 0.0;
    for (var c = 0u; c < D; c++) { acc += f32(o[r * D + c]) * f32(dout[r * D + c]); }
    stats[2u * r] = lse[r];
    stats[2u * r + 1u] = acc;
}
