//! [`KernelOps`] on burn's cubecl backend (wgpu): the WGSL kernels of `shaders/`, launched on
//! the client, queue and memory pool burn's own kernels use.

use std::sync::atomic::{AtomicU32, Ordering};

use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{
    CubeBackend, CubeDim, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::cubecl::CubeCount;
use burn::cubecl::prelude::KernelId;
use burn::cubecl::server::{Handle, KernelArguments};
use burn::tensor::{DType, Shape};

use super::KernelOps;
use super::shaders::{
    KNN_DATABASE_BLOCK, KNN_MICRO, KNN_QUERY_BLOCK, KOLEO_CPU_COLUMNS, KOLEO_CPU_INVOCATIONS, KOLEO_CPU_ROWS,
    KOLEO_TILE, KernelShape, REDUCE_WG, Rows, Shader,
};

/// One launchable variant.
#[derive(Debug)]
struct Kernel(Shader);

impl KernelSource for Kernel {
    fn source(&self) -> SourceTemplate {
        self.0.template()
    }

    fn id(&self) -> KernelId {
        // everything that changes the generated text is in the variant
        KernelId::new::<Self>().info(self.0)
    }

    fn lang(&self) -> &'static str {
        // burn's `wgpu` feature compiles kernels to WGSL (the `vulkan` feature, which picks
        // SPIR-V, would reject these launches)
        "wgsl"
    }
}

/// Workgroups per grid dimension that every adapter allows (WebGPU's
/// `maxComputeWorkgroupsPerDimension` default; Vulkan, Metal and DX12 allow at least as many).
pub const MAX_WORKGROUPS_PER_DIMENSION: u32 = 65535;

static GRID_WIDTH: AtomicU32 = AtomicU32::new(MAX_WORKGROUPS_PER_DIMENSION);

/// Narrows the grids of every later launch to `width` workgroups in x (0 restores
/// [`MAX_WORKGROUPS_PER_DIMENSION`]), so small launches take the 2-D path that launches of more
/// than 65535 workgroups need. Results do not change: each workgroup finds its tile from its
/// flattened index. For tests, which would otherwise need 65536 workgroups (minutes on a
/// software adapter).
#[doc(hidden)]
pub fn set_grid_width(width: u32) {
    let width =
        if width == 0 { MAX_WORKGROUPS_PER_DIMENSION } else { width.min(MAX_WORKGROUPS_PER_DIMENSION) };
    GRID_WIDTH.store(width, Ordering::Relaxed);
}

/// `(x, y)` workgroups covering `groups` with at most `width` in x; kernels flatten
/// `wid.y * nwg.x + wid.x` and skip the indices past `groups`.
pub fn grid_dims(groups: usize, width: u32) -> (u32, u32) {
    let x = groups.clamp(1, width.max(1) as usize);
    (x as u32, groups.div_ceil(x).max(1) as u32)
}

fn grid(groups: usize) -> CubeCount {
    let (x, y) = grid_dims(groups, GRID_WIDTH.load(Ordering::Relaxed));
    CubeCount::Static(x, y, 1)
}

fn empty(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    let handle = like.client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, handle, dtype)
}

fn info(like: &CubeTensor, values: &[u32]) -> Handle {
    like.client.create_from_slice(bytemuck::cast_slice(values))
}

fn launch(like: &CubeTensor, shader: Shader, workgroup: CubeDim, groups: usize, buffers: Vec<Handle>) {
    like.client.launch(
        Box::new(SourceKernel::new(Kernel(shader), workgroup)),
        grid(groups),
        KernelArguments::new().with_buffers(buffers.into_iter().map(|h| h.binding()).collect()),
    );
}

fn is_f16(t: &CubeTensor) -> bool {
    match t.dtype {
        DType::F32 => false,
        DType::F16 => true,
        other => panic!("attention kernels take f32 or f16 tensors, got {other:?}"),
    }
}

/// `(batch·heads, tokens)` of a `[B, H, N, 64]` tensor.
fn attention_dims(t: &CubeTensor) -> (usize, usize) {
    let s = t.meta.shape();
    let d = s.as_slice();
    assert!(
        d.len() == 4 && d[3] == super::HEAD_DIM,
        "fused attention takes [B, H, N, 64] tensors, got {d:?}"
    );
    (d[0] * d[1], d[2])
}

fn attention_groups(bh: usize, n: usize, rows_per_group: u32) -> usize {
    bh * n.div_ceil(rows_per_group as usize)
}

/// Workgroups the GPU-shape forward aims for: a large GPU (132 multiprocessors on an H200) holds
/// several 64-invocation workgroups on each.
const FORWARD_WORKGROUPS: usize = 1024;
/// Most splits over keys of one forward row block.
const MAX_FORWARD_SPLITS: usize = 8;
/// Fewest keys per split: on an H200 4 splits of 64 keys (B = 8, H = 6, N = 257) made the
/// forward slower (0.37 to 0.43 ms), 3 splits of 464 keys (N = 1370) faster (3.26 to 2.92 ms).
const MIN_KEYS_PER_SPLIT: usize = 256;

/// How the GPU-shape forward splits its keys, `(splits, keys per split)`: where `groups` row
/// blocks are fewer than [`FORWARD_WORKGROUPS`] (a small batch: B = 2, H = 6, N = 1370 gives 264
/// blocks of 64 rows), each block's keys are split into up to [`MAX_FORWARD_SPLITS`] runs of
/// whole tiles, at least [`MIN_KEYS_PER_SPLIT`] keys each; the combine pass merges them. `(1, n)`
/// where no split pays.
fn forward_splits(groups: usize, n: usize) -> (usize, usize) {
    let tile = super::shaders::ATTENTION_TILE as usize;
    let wanted = (FORWARD_WORKGROUPS / groups.max(1)).clamp(1, MAX_FORWARD_SPLITS);
    let splits = wanted.min(n / MIN_KEYS_PER_SPLIT).max(1);
    if splits == 1 {
        return (1, n);
    }
    let per_split = n.div_ceil(splits).div_ceil(tile) * tile;
    (n.div_ceil(per_split), per_split)
}

/// `DINOV2_KERNEL_SHAPE=gpu` or `cpu` forces the shape of the kernels that have two (attention,
/// KoLeo; see [`KernelShape`]) on every adapter, for tests and measurements; read once per
/// process. Unset, the adapter decides ([`kernel_shape`]).
pub fn forced_kernel_shape() -> Option<KernelShape> {
    static FORCED: std::sync::OnceLock<Option<KernelShape>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("DINOV2_KERNEL_SHAPE").ok()?.as_str() {
        "gpu" => Some(KernelShape::Gpu),
        "cpu" => Some(KernelShape::Cpu),
        other => {
            eprintln!("warning: DINOV2_KERNEL_SHAPE={other} ignored: expected gpu or cpu");
            None
        }
    })
}

/// The kernel shape for the adapter `t` lives on: [`KernelShape::Cpu`] on a software adapter
/// (cubecl describes no physical card there), [`KernelShape::Gpu`] elsewhere.
pub fn kernel_shape(t: &CubeTensor) -> KernelShape {
    forced_kernel_shape().unwrap_or_else(|| {
        if t.client.properties().identity.physical.is_none() { KernelShape::Cpu } else { KernelShape::Gpu }
    })
}

fn attention_rows(t: &CubeTensor) -> Rows {
    Rows::of(kernel_shape(t))
}

impl KernelOps for CubeBackend {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        Self::attention_forward(q, k, v, scale).0
    }

    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let (bh, n) = attention_dims(&q);
        let f16 = is_f16(&q);
        let out = empty(&q, q.meta.shape().clone(), q.dtype);
        let d = q.meta.shape().as_slice().to_vec();
        let lse = empty(&q, Shape::new([d[0], d[1], d[2]]), DType::F32);
        if bh * n > 0 {
            let rows = attention_rows(&q);
            let groups = attention_groups(bh, n, rows.per_workgroup());
            let (splits, per_split) = if rows == Rows::GPU { forward_splits(groups, n) } else { (1, n) };
            let params = info(&q, &[bh as u32, n as u32, scale.to_bits(), splits as u32, per_split as u32]);
            // one split: placeholders (the kernel writes o and lse itself)
            let part_rows = if splits > 1 { splits * bh * n } else { 1 };
            let part_acc = q.client.empty(part_rows * super::HEAD_DIM * 4);
            let part_ml = q.client.empty(part_rows * 2 * 4);
            launch(
                &q,
                Shader::AttentionForward { f16, rows },
                CubeDim::new_1d(rows.invocations),
                groups * splits,
                vec![
                    q.handle.clone(),
                    k.handle.clone(),
                    v.handle.clone(),
                    out.handle.clone(),
                    lse.handle.clone(),
                    params,
                    part_acc.clone(),
                    part_ml.clone(),
                ],
            );
            if splits > 1 {
                let params = info(&q, &[(bh * n) as u32, splits as u32]);
                launch(
                    &q,
                    Shader::AttentionForwardCombine { f16 },
                    CubeDim::new_1d(REDUCE_WG),
                    (bh * n * super::HEAD_DIM / 4).div_ceil(REDUCE_WG as usize),
                    vec![part_acc, part_ml, out.handle.clone(), lse.handle.clone(), params],
                );
            }
        }
        (out, lse)
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let (out, lse, dout) = (into_contiguous(out), into_contiguous(lse), into_contiguous(dout));
        let (bh, n) = attention_dims(&q);
        let f16 = is_f16(&q);
        let dq = empty(&q, q.meta.shape().clone(), q.dtype);
        let dk = empty(&q, q.meta.shape().clone(), q.dtype);
        let dv = empty(&q, q.meta.shape().clone(), q.dtype);
        let rows = bh * n;
        if rows == 0 {
            return (dq, dk, dv);
        }
        let stats = q.client.empty(rows * 2 * DType::F32.size());
        let params = info(&q, &[rows as u32]);
        launch(
            &q,
            Shader::AttentionBackwardDelta { f16 },
            CubeDim::new_1d(REDUCE_WG),
            rows.div_ceil(REDUCE_WG as usize),
            vec![out.handle.clone(), dout.handle.clone(), lse.handle.clone(), stats.clone(), params],
        );
        let params = info(&q, &[bh as u32, n as u32, scale.to_bits()]);
        let rows = attention_rows(&q).backward();
        launch(
            &q,
            Shader::AttentionBackwardDq { f16, rows },
            CubeDim::new_1d(rows.invocations),
            attention_groups(bh, n, rows.per_workgroup()),
            vec![
                q.handle.clone(),
                k.handle.clone(),
                v.handle.clone(),
                dout.handle.clone(),
                stats.clone(),
                dq.handle.clone(),
                params.clone(),
            ],
        );
        launch(
            &q,
            Shader::AttentionBackwardDkDv { f16, rows },
            CubeDim::new_1d(rows.invocations),
            attention_groups(bh, n, rows.per_workgroup()),
            vec![
                q.handle.clone(),
                k.handle.clone(),
                v.handle.clone(),
                dout.handle.clone(),
                stats,
                dk.handle.clone(),
                dv.handle.clone(),
                params,
            ],
        );
        (dq, dk, dv)
    }

    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu(x)
    }

    fn exact_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        // dy · (Φ(x) + x φ(x)), Φ(x) = (1 + erf(x/√2)) / 2, φ(x) = e^(−x²/2) / √(2π)
        type B = CubeBackend;
        let cdf = B::float_mul_scalar(
            B::float_add_scalar(
                B::float_erf(B::float_mul_scalar(x.clone(), std::f64::consts::FRAC_1_SQRT_2.into())),
                1.0.into(),
            ),
            0.5.into(),
        );
        let gauss = B::float_exp(B::float_mul_scalar(B::float_mul(x.clone(), x.clone()), (-0.5).into()));
        let pdf = B::float_mul_scalar(gauss, (0.5 * super::SQRT_2_OVER_PI).into());
        B::float_mul(B::float_add(cdf, B::float_mul(x, pdf)), dy)
    }

    fn sinkhorn_knopp(logits: FloatTensor<Self>, temperature: f32, iterations: u32) -> FloatTensor<Self> {
        let logits = into_contiguous(logits);
        assert_eq!(logits.dtype, DType::F32, "sinkhorn_knopp takes f32 logits");
        let dims = logits.meta.shape().as_slice().to_vec();
        assert_eq!(dims.len(), 2, "sinkhorn_knopp takes [B, K] logits");
        let (b, k) = (dims[0], dims[1]);
        assert!(iterations > 0, "sinkhorn_knopp needs at least one iteration");
        let out = empty(&logits, logits.meta.shape().clone(), DType::F32);
        if b * k == 0 {
            return out;
        }
        let client = &logits.client;
        let col_scale = client.empty(k * 4);
        let row_scale = client.empty(b * 4);
        let run = |pass: u32, iteration: u32, groups: usize| {
            let params = info(&logits, &[b as u32, k as u32, (1.0 / temperature).to_bits(), iteration]);
            let buffers =
                vec![logits.handle.clone(), out.handle.clone(), col_scale.clone(), row_scale.clone(), params];
            launch(&logits, Shader::Sinkhorn { pass }, CubeDim::new_1d(REDUCE_WG), groups, buffers);
        };
        for it in 0..iterations {
            run(0, it, k.div_ceil(REDUCE_WG as usize));
            run(1, it, b);
        }
        run(2, 0, (b * k).div_ceil(REDUCE_WG as usize));
        out
    }

    fn koleo_nearest(x: FloatTensor<Self>) -> IntTensor<Self> {
        let x = into_contiguous(x);
        assert_eq!(x.dtype, DType::F32, "koleo_nearest takes f32 features");
        let dims = x.meta.shape().as_slice().to_vec();
        assert_eq!(dims.len(), 2, "koleo_nearest takes [n, d] features");
        let (n, d) = (dims[0], dims[1]);
        assert!(
            d % 4 == 0,
            "koleo_nearest reads vec4: d = {d} must be a multiple of 4 (kernels::koleo_nearest pads)"
        );
        let nearest = empty(&x, Shape::new([n]), DType::I32);
        if n > 0 {
            // (rows per workgroup, columns per tile, column groups wanted, pass-0 workgroup)
            let shape = kernel_shape(&x);
            let (rows, columns, want_groups, dim) = match shape {
                // enough workgroups to fill a GPU: 16 × 16 at n = 1024
                KernelShape::Gpu => (KOLEO_TILE, KOLEO_TILE, 64, CubeDim::new_2d(16, 16)),
                // a few long workgroups per core
                KernelShape::Cpu => (
                    KOLEO_CPU_INVOCATIONS * KOLEO_CPU_ROWS,
                    KOLEO_CPU_COLUMNS,
                    4,
                    CubeDim::new_1d(KOLEO_CPU_INVOCATIONS as u32),
                ),
            };
            let tiles = n.div_ceil(columns);
            let span = tiles.div_ceil(want_groups);
            let groups = tiles.div_ceil(span);
            let part_val = x.client.empty(n * groups * 4);
            let part_idx = x.client.empty(n * groups * 4);
            let params = info(&x, &[n as u32, (d / 4) as u32, groups as u32, span as u32]);
            let buffers = vec![x.handle.clone(), part_val, part_idx, nearest.handle.clone(), params];
            // koleo_registers.wgsl binds no `nearest` (only the reduce pass writes it)
            let first_pass = match shape {
                KernelShape::Gpu => buffers.clone(),
                KernelShape::Cpu => [&buffers[..3], &buffers[4..]].concat(),
            };
            launch(&x, Shader::Koleo { shape }, dim, n.div_ceil(rows) * groups, first_pass);
            launch(&x, Shader::KoleoReduce, CubeDim::new_2d(16, 16), n.div_ceil(256), buffers);
        }
        nearest
    }

    fn knn_update(
        queries: FloatTensor<Self>,
        chunk: FloatTensor<Self>,
        sims: FloatTensor<Self>,
        indices: IntTensor<Self>,
        offset: u32,
        self_offset: u32,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (queries, chunk) = (into_contiguous(queries), into_contiguous(chunk));
        let (sims, indices) = (into_contiguous(sims), into_contiguous(indices));
        for (t, what) in [(&queries, "queries"), (&chunk, "database rows"), (&sims, "similarities")] {
            assert_eq!(t.dtype, DType::F32, "knn_update takes f32 {what}");
        }
        assert_eq!(indices.dtype.size(), 4, "knn_update takes 32-bit indices, got {:?}", indices.dtype);
        let (q, c, l) =
            (queries.meta.shape().as_slice(), chunk.meta.shape().as_slice(), sims.meta.shape().as_slice());
        assert!(
            q.len() == 2 && c.len() == 2 && q[1] == c[1],
            "knn_update takes [n, d] queries and [m, d] rows"
        );
        assert!(l.len() == 2 && l[0] == q[0] && indices.meta.shape().as_slice() == l, "lists must be [n, k]");
        let (n, d, m, k) = (q[0], q[1], c[0], l[1]);
        assert!(
            (offset as u64 + m as u64) < u32::MAX as u64,
            "database rows {offset} + {m} do not fit u32 indices"
        );
        if n == 0 || m == 0 || k == 0 {
            return (sims, indices);
        }
        let sims_out = empty(&sims, sims.meta.shape().clone(), DType::F32);
        let idx_out = empty(&sims, sims.meta.shape().clone(), indices.dtype);
        let tile = KNN_MICRO * 8;
        let scratch = queries.client.empty(KNN_QUERY_BLOCK.min(n) * KNN_DATABASE_BLOCK.min(m) * 4);
        for q0 in (0..n).step_by(KNN_QUERY_BLOCK) {
            let qn = KNN_QUERY_BLOCK.min(n - q0);
            for c0 in (0..m).step_by(KNN_DATABASE_BLOCK) {
                let cn = KNN_DATABASE_BLOCK.min(m - c0);
                let values = [n, m, d, k, q0, c0, qn, cn].map(|v| v as u32);
                let params =
                    info(&queries, &[&values[..], &[offset, self_offset, u32::from(c0 == 0)]].concat());
                let buffers = vec![
                    queries.handle.clone(),
                    chunk.handle.clone(),
                    scratch.clone(),
                    sims.handle.clone(),
                    indices.handle.clone(),
                    sims_out.handle.clone(),
                    idx_out.handle.clone(),
                    params,
                ];
                let gemm_groups = qn.div_ceil(tile) * cn.div_ceil(tile);
                launch(
                    &queries,
                    Shader::Knn { pass: 0 },
                    CubeDim::new_2d(8, 8),
                    gemm_groups,
                    buffers.clone(),
                );
                launch(&queries, Shader::Knn { pass: 1 }, CubeDim::new_2d(8, 8), qn.div_ceil(64), buffers);
            }
        }
        (sims_out, idx_out)
    }
}
