//! The three hand-written kernels of the design, as one burn backend extension:
//!
//! - fused attention (FlashAttention-2 style), forward and backward
//!   (`shaders/attention_forward.wgsl`, `attention_backward*.wgsl`);
//! - Sinkhorn-Knopp centering of teacher logits (`shaders/sinkhorn.wgsl`);
//! - the KoLeo nearest neighbour (`shaders/koleo.wgsl`);
//! - the exact GELU with its exact derivative, one pass each on the CPU ([`gelu`]);
//! - and, for data curation, the exact k-nearest-neighbour search (`shaders/knn.wgsl`).
//!
//! [`KernelOps`] is implemented by burn's wgpu backend with the WGSL kernels ([`wgsl`]), by the
//! ndarray backend with the `*_reference` functions below (plain burn tensor ops: the test
//! oracle, the benchmark baseline and the CPU implementation), and by autodiff with a
//! hand-written attention backward ([`autodiff`]). burn's fusion (the default `fusion`
//! feature) sees the kernels as opaque custom ops; the browser build goes without it.
//!
//! The public functions ([`attention`], [`sinkhorn_knopp`], [`koleo_nearest`], [`koleo_loss`])
//! take and return ordinary tensors on any of these devices.

// burn 0.22 deprecates ndarray in favour of flex; the project keeps ndarray as its CPU backend
#![allow(deprecated)]

#[cfg(feature = "native")]
pub mod autodiff;
// burn 0.22 deprecates ndarray in favour of flex; the project keeps ndarray as its CPU backend
#[cfg(feature = "native")]
#[allow(deprecated)]
mod cpu;
pub mod shaders;
pub mod wgsl;

#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
#[cfg(feature = "fusion")]
use burn::tensor::Shape;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Int, Tensor};

/// The head width the attention kernels are written for (every preset uses it).
pub const HEAD_DIM: usize = 64;

/// Largest score block the reference attention materialises at once, in elements (32 MiB of
/// f32): well under the 128 MiB storage binding of software adapters and browsers.
pub const MAX_SCORE_ELEMENTS: usize = 8 << 20;

#[backend_extension(Cube, Fusion: cfg(feature = "fusion"), NdArray: cfg(feature = "native"), Autodiff: cfg(feature = "native"))]
pub trait KernelOps: Backend {
    /// `softmax(scale · q kᵀ) v` for q, k, v `[B, H, N, 64]`: the differentiable entry point.
    #[fusion(dtype = q, shape = q)]
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// The forward pass with what the backward needs: `(out [B, H, N, 64], lse [B, H, N] f32)`,
    /// `lse` the log-sum-exp of each row of scaled scores.
    #[fusion(meta = attention_forward_meta)]
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dq, dk, dv)` of the attention given the forward's `out` and `lse` and the
    /// upstream gradient `dout`.
    #[fusion(meta = attention_backward_meta)]
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Sinkhorn-Knopp of teacher logits `[B, K]` at temperature `temperature`, `iterations`
    /// rounds; rows of the result sum to 1. Not differentiated (the teacher has no gradient).
    #[fusion(dtype = logits, shape = logits)]
    fn sinkhorn_knopp(logits: FloatTensor<Self>, temperature: f32, iterations: u32) -> FloatTensor<Self>;

    /// For rows of `x` `[n, d]`, the index of the row with the largest inner product, itself
    /// excluded: `[n]` int.
    #[fusion(meta = koleo_meta)]
    fn koleo_nearest(x: FloatTensor<Self>) -> IntTensor<Self>;

    /// GELU, exact as PyTorch's `nn.GELU()`: `x Φ(x)` with `Φ(x) = (1 + erf(x / √2)) / 2`, for
    /// f32 `x` of any shape: the differentiable entry point, whose backward under autodiff is
    /// [`KernelOps::exact_gelu_backward`].
    #[fusion(dtype = x, shape = x)]
    fn exact_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The exact GELU derivative applied to the upstream gradient:
    /// `dy · (Φ(x) + x φ(x))`, `φ` the standard normal density.
    #[fusion(dtype = x, shape = x)]
    fn exact_gelu_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Merges the rows of a database chunk `[m, d]` into the running top-k lists of `queries`
    /// `[n, d]` by inner product, and returns the updated lists: `sims` `[n, k]` f32 and
    /// `indices` `[n, k]` int (u32 bit patterns), each row sorted best first (larger
    /// similarity, then smaller index), unfilled entries `(-f32::MAX, u32::MAX)`. Chunk row j
    /// is database row `offset + j`; query q never lists database row `self_offset + q`
    /// (`u32::MAX`: no row is skipped). Not differentiated.
    #[fusion(meta = knn_meta)]
    fn knn_update(
        queries: FloatTensor<Self>,
        chunk: FloatTensor<Self>,
        sims: FloatTensor<Self>,
        indices: IntTensor<Self>,
        offset: u32,
        self_offset: u32,
    ) -> (FloatTensor<Self>, IntTensor<Self>);
}

#[cfg(feature = "fusion")]
fn attention_forward_meta(
    q: &TensorSpec,
    _k: &TensorSpec,
    _v: &TensorSpec,
    _scale: &f32,
) -> (TensorSpec, TensorSpec) {
    let d = q.shape.as_slice();
    (q.clone(), TensorSpec::new(Shape::new([d[0], d[1], d[2]]), DType::F32))
}

#[cfg(feature = "fusion")]
#[allow(clippy::too_many_arguments)]
fn attention_backward_meta(
    q: &TensorSpec,
    k: &TensorSpec,
    v: &TensorSpec,
    _out: &TensorSpec,
    _lse: &TensorSpec,
    _dout: &TensorSpec,
    _scale: &f32,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (q.clone(), k.clone(), v.clone())
}

#[cfg(feature = "fusion")]
fn knn_meta(
    _queries: &TensorSpec,
    _chunk: &TensorSpec,
    sims: &TensorSpec,
    indices: &TensorSpec,
    _offset: &u32,
    _self_offset: &u32,
) -> (TensorSpec, TensorSpec) {
    (sims.clone(), indices.clone())
}

#[cfg(feature = "fusion")]
fn koleo_meta(x: &TensorSpec) -> TensorSpec {
    TensorSpec::new(Shape::new([x.shape.as_slice()[0]]), DType::I32)
}

/// Which implementation [`attention`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionImpl {
    /// The extension op: WGSL on wgpu, the reference forward/backward formulas on ndarray,
    /// with the hand-written backward under autodiff. Head width 64 and f32/f16 only; other
    /// widths and element types use [`AttentionImpl::Reference`].
    Fused,
    /// [`attention_reference`]: composed burn ops, differentiated by burn's autodiff.
    Reference,
}

/// `softmax(q kᵀ / sqrt(d)) v` for q, k, v `[B, H, N, d]` through the chosen implementation
/// (k, v of another length, as in cross-attention, take the reference).
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, which: AttentionImpl) -> Tensor<4> {
    let [_, _, n, d] = q.dims();
    let kernel_dtype = matches!(q.dtype(), DType::F32 | DType::F16);
    // the kernels are self-attention: k and v shaped as q
    let same_shapes = k.dims() == q.dims() && v.dims() == q.dims();
    if which == AttentionImpl::Reference || d != HEAD_DIM || n == 0 || !kernel_dtype || !same_shapes {
        return attention_reference(q, k, v);
    }
    let scale = (d as f32).powf(-0.5);
    let (k, v) = (k.cast(q.dtype()), v.cast(q.dtype()));
    Tensor::from_dispatch(<Dispatch as KernelOps>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
    ))
}

/// Query rows per chunk such that a `[B, H, rows, N]` score block stays under
/// [`MAX_SCORE_ELEMENTS`].
fn rows_per_chunk(b: usize, h: usize, n: usize) -> usize {
    (MAX_SCORE_ELEMENTS / (b * h * n).max(1)).max(1)
}

/// Apply `f` to chunks of query rows (dim 2) and concatenate the results along `dim`.
fn by_query_chunks<const D: usize>(
    q: Tensor<4>,
    dim: usize,
    f: impl Fn(Tensor<4>) -> Tensor<D>,
) -> Tensor<D> {
    let [b, h, n, _] = q.dims();
    let rows = rows_per_chunk(b, h, n);
    if rows >= n {
        return f(q);
    }
    let parts =
        (0..n).step_by(rows).map(|start| f(q.clone().narrow(2, start, rows.min(n - start)))).collect();
    Tensor::cat(parts, dim)
}

/// `softmax(q kᵀ / sqrt(d)) v` from plain tensor ops (differentiable by burn's autodiff), the
/// `[B, H, n, N]` score matrix materialised for chunks of query rows small enough that no block
/// exceeds [`MAX_SCORE_ELEMENTS`]; each row is computed exactly as without chunking.
pub fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let scale = (q.dims()[3] as f32).powf(-0.5);
    attention_reference_scaled(q, k, v, scale)
}

/// [`attention_reference`] with an explicit score scale.
pub fn attention_reference_scaled(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Tensor<4> {
    let keys = k.swap_dims(2, 3);
    by_query_chunks(q, 2, |q| softmax(q.mul_scalar(scale).matmul(keys.clone()), 3).matmul(v.clone()))
}

/// Reference of [`KernelOps::attention_forward`]: `(out, lse)` from plain tensor ops, one
/// score block per query chunk (`out = exp(s − lse) v`).
pub fn attention_forward_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
) -> (Tensor<4>, Tensor<3>) {
    let keys = k.swap_dims(2, 3);
    let d = v.dims()[3];
    // out and lse side by side, [B, H, N, d + 1], so one chunked pass yields both
    let both = by_query_chunks(q, 2, |q| {
        let s = q.mul_scalar(scale).matmul(keys.clone());
        let m = s.clone().max_dim(3);
        let lse = (s.clone() - m.clone()).exp().sum_dim(3).log() + m;
        let out = (s - lse.clone()).exp().matmul(v.clone());
        Tensor::cat(vec![out, lse], 3)
    });
    (both.clone().narrow(3, 0, d), both.narrow(3, d, 1).squeeze_dim(3))
}

/// Reference of [`KernelOps::attention_backward`], the FlashAttention backward formulas in
/// plain tensor ops, with `P = exp(scale·q kᵀ − lse)`:
/// `dV = Pᵀ dO`, `dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))`, `dQ = scale·dS K`, `dK = scale·dSᵀ Q`.
pub fn attention_backward_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    out: Tensor<4>,
    lse: Tensor<3>,
    dout: Tensor<4>,
    scale: f32,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let delta = (dout.clone() * out).sum_dim(3);
    let p = (q.clone().mul_scalar(scale).matmul(k.clone().swap_dims(2, 3)) - lse.unsqueeze_dim(3)).exp();
    let dv = p.clone().swap_dims(2, 3).matmul(dout.clone());
    let ds = p * (dout.matmul(v.swap_dims(2, 3)) - delta);
    let dq = ds.clone().matmul(k).mul_scalar(scale);
    let dk = ds.swap_dims(2, 3).matmul(q).mul_scalar(scale);
    (dq, dk, dv)
}

/// Sinkhorn-Knopp centering of teacher logits `[B, K]` (DINOv2's `sinkhorn_knopp_teacher`,
/// single process): the WGSL kernel on wgpu, [`sinkhorn_knopp_reference`] elsewhere. Rows of
/// the result sum to 1; no gradient flows back to `logits`.
pub fn sinkhorn_knopp(logits: Tensor<2>, temperature: f32, iterations: u32) -> Tensor<2> {
    let logits = logits.cast(DType::F32);
    if iterations == 0 || logits.dims()[0] * logits.dims()[1] == 0 {
        return sinkhorn_knopp_reference(logits, temperature, iterations);
    }
    Tensor::from_dispatch(<Dispatch as KernelOps>::sinkhorn_knopp(
        logits.into_dispatch(),
        temperature,
        iterations,
    ))
}

/// The official Sinkhorn-Knopp in plain tensor ops, in `[B, K]` orientation and log space:
/// `log Q = t/τ`; repeat {subtract each column's logsumexp and log K; subtract each row's
/// logsumexp and log B}; `Q = exp(log Q) · B`. The same as the official
/// `Q = exp(t/τ); Q /= ΣQ; repeat {Q /= Q.sum(over B) · K; Q /= Q.sum(over K) · B}; Q · B`
/// (the ΣQ step is a constant the first column step removes), without its overflow for large
/// logits or underflow for columns far below the others.
pub fn sinkhorn_knopp_reference(logits: Tensor<2>, temperature: f32, iterations: u32) -> Tensor<2> {
    let [b, k] = logits.dims();
    let logsumexp = |x: Tensor<2>, dim: usize| {
        let m = x.clone().max_dim(dim);
        (x - m.clone()).exp().sum_dim(dim).log() + m
    };
    let mut q = logits.div_scalar(temperature);
    let all = logsumexp(q.clone().reshape([1, b * k]), 1);
    q = q - all; // Q /= ΣQ
    for _ in 0..iterations {
        q = q.clone() - logsumexp(q, 0) - (k as f32).ln();
        q = q.clone() - logsumexp(q, 1) - (b as f32).ln();
    }
    q.exp().mul_scalar(b as f32)
}

/// For L2-normalised rows of `x` `[n, d]` (n ≥ 2), the index of each row's nearest other row by
/// inner product: the WGSL kernel on wgpu, [`koleo_nearest_reference`] elsewhere.
pub fn koleo_nearest(x: Tensor<2>) -> Tensor<1, Int> {
    let x = x.cast(DType::F32);
    let [n, d] = x.dims();
    if n < 2 {
        return koleo_nearest_reference(x);
    }
    // the kernels read vec4: zeros add nothing to a dot product
    let x = if d % 4 == 0 {
        x
    } else {
        Tensor::cat(vec![x.clone(), Tensor::zeros([n, 4 - d % 4], &x.device())], 1)
    };
    Tensor::from_dispatch(<Dispatch as KernelOps>::koleo_nearest(x.into_dispatch()))
}

/// The official `pairwise_NNs_inner` in plain tensor ops: `x xᵀ`, the diagonal excluded,
/// argmax per row.
pub fn koleo_nearest_reference(x: Tensor<2>) -> Tensor<1, Int> {
    let n = x.dims()[0];
    let dots = x.clone().matmul(x.transpose());
    let eye = Tensor::<2, Int>::eye(n, &dots.device()).bool();
    dots.mask_fill(eye, f32::NEG_INFINITY).argmax(1).squeeze_dim(1)
}

/// `x / max(‖x‖, 1e-8)` row by row (PyTorch's `F.normalize(x, eps=1e-8, p=2, dim=-1)`, as
/// KoLeo normalises).
pub fn l2_normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
    x / norm
}

/// `√(2/π)`, twice the standard normal density at 0.
pub(crate) const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// GELU, exact as PyTorch's `nn.GELU()` (erf, not the tanh approximation), with the exact
/// derivative under autodiff. On the CPU backend (f32) forward and backward are one pass each
/// over the data ([`KernelOps::exact_gelu`], [`KernelOps::exact_gelu_backward`]): burn's own GELU
/// backward is the tanh approximation's derivative, 13 passes over the tensor, which took a
/// fifth of a tiny-preset training step. On wgpu training composes it from erf and exp, which
/// burn's fusion merges into neighbouring kernels; inference there keeps burn's one-kernel GELU.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "native")]
    if x.dtype() == DType::F32 && x.device() == burn::tensor::Device::ndarray() {
        let shape = x.shape();
        let flat: Tensor<1> = x.flatten(0, D - 1);
        return Tensor::<1>::from_dispatch(<Dispatch as KernelOps>::exact_gelu(flat.into_dispatch()))
            .reshape(shape);
    }
    if x.device().is_autodiff() { gelu_reference(x) } else { burn::tensor::activation::gelu(x) }
}

/// The exact GELU in plain tensor ops, `x (1 + erf(x / √2)) / 2`, differentiated by burn's
/// autodiff (erf's derivative `2/√π e^(−z²)`): the oracle of [`gelu`] and its wgpu training path.
pub fn gelu_reference<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5)
}

/// DINOv2's KoLeo loss of student features `[n, d]`: normalise the rows (eps 1e-8), find each
/// row's nearest neighbour with [`koleo_nearest`], `−mean(log(‖x_i − x_nn(i) + 1e-8‖ + 1e-8))`
/// (PyTorch's `PairwiseDistance` adds its eps to the difference). Differentiable in `x`.
pub fn koleo_loss(x: Tensor<2>) -> Tensor<1> {
    const EPS: f64 = 1e-8;
    let x = l2_normalize_rows(x);
    let nearest = koleo_nearest(x.clone().detach());
    let neighbours = x.clone().select(0, nearest);
    let distance = (x - neighbours).add_scalar(EPS).square().sum_dim(1).sqrt();
    distance.add_scalar(EPS).log().mean().neg()
}

/// The padding similarity of [`knn_update`]'s lists (the kernels avoid infinities).
pub const KNN_PADDING_SIM: f32 = -f32::MAX;

/// Merges database rows `chunk` `[m, d]` (global indices `offset ..`) into the running top-k
/// lists `(sims [n, k], indices [n, k])` of `queries` `[n, d]` by inner product and returns
/// the new lists (see [`KernelOps::knn_update`]; `self_offset`: the queries are database rows
/// `self_offset ..`, so query q skips row `self_offset + q`). The WGSL kernel on wgpu,
/// [`knn_update_reference`] elsewhere. The curation search ([`crate::curate::knn::Search`])
/// calls it one shard at a time.
pub fn knn_update(
    queries: Tensor<2>,
    chunk: Tensor<2>,
    sims: Tensor<2>,
    indices: Tensor<2, Int>,
    offset: u32,
    self_offset: Option<u32>,
) -> (Tensor<2>, Tensor<2, Int>) {
    let (sims, indices) = <Dispatch as KernelOps>::knn_update(
        queries.cast(DType::F32).into_dispatch(),
        chunk.cast(DType::F32).into_dispatch(),
        sims.cast(DType::F32).into_dispatch(),
        indices.into_dispatch(),
        offset,
        self_offset.unwrap_or(u32::MAX),
    );
    (Tensor::from_dispatch(sims), Tensor::from_dispatch(indices))
}

/// [`knn_update`] by the exact CPU search of [`crate::curate::knn::TopK`] (SGEMM tiles, the
/// same ranking), on the host: the reference of the kernel and its ndarray implementation.
#[cfg(feature = "native")]
pub fn knn_update_reference(
    queries: Tensor<2>,
    chunk: Tensor<2>,
    sims: Tensor<2>,
    indices: Tensor<2, Int>,
    offset: u32,
    self_offset: u32,
) -> (Tensor<2>, Tensor<2, Int>) {
    use crate::curate::knn::{Matrix, TopK};
    let device = sims.device();
    let [n, k] = sims.dims();
    let d = queries.dims()[1];
    let host = |t: Tensor<2>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data");
    let (q, c) = (host(queries), host(chunk));
    let list_indices: Vec<u32> = indices
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int data")
        .iter()
        .map(|&i| i as u32)
        .collect();
    // TopK pads with -inf
    let list_sims = host(sims)
        .into_iter()
        .zip(&list_indices)
        .map(|(s, &i)| if i == u32::MAX { f32::NEG_INFINITY } else { s })
        .collect();
    let mut top = TopK::from_lists(k, list_sims, list_indices);
    top.update(
        Matrix::new(&q, d),
        Matrix::new(&c, d),
        offset as usize,
        (self_offset != u32::MAX).then_some(self_offset as usize),
    );
    let (mut sims, indices) = top.into_lists();
    for (s, &i) in sims.iter_mut().zip(&indices) {
        if i == u32::MAX {
            *s = KNN_PADDING_SIM;
        }
    }
    let indices: Vec<i64> = indices.iter().map(|&i| i as i32 as i64).collect();
    (
        Tensor::from_data(burn::tensor::TensorData::new(sims, [n, k]), &device),
        Tensor::from_data(burn::tensor::TensorData::new(indices, [n, k]), &device),
    )
}
