//! Mixed precision, as PyTorch's `torch.autocast` does it for DINOv2 (`compute_precision`
//! fp16 in the official configs): inside an [`autocast`] scope the matrix products (every
//! linear layer, the attention kernel, the heads' prototype product) read f16 copies of their
//! inputs and weights and run in f16; their results come back as f32, so layer norms,
//! softmaxes, GELU, the losses and the parameters themselves (the optimizer's master copy)
//! stay f32. Outside a scope nothing changes.
//!
//! The scope is per thread, as autocast is: a burn graph is built on the thread that calls
//! the modules, and tests running side by side do not see each other's setting.

use std::cell::Cell;

use burn::nn::Linear;
use burn::tensor::{DType, Tensor};

thread_local! {
    static COMPUTE: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Restores the previous setting when dropped.
#[must_use = "the scope ends when the guard is dropped"]
pub struct AutocastGuard {
    previous: Option<DType>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        COMPUTE.with(|c| c.set(self.previous));
    }
}

/// Run matrix products in `dtype` (f16) until the guard drops; `None` is plain f32.
pub fn autocast(dtype: Option<DType>) -> AutocastGuard {
    AutocastGuard { previous: COMPUTE.with(|c| c.replace(dtype)) }
}

/// The element type matrix products run in on this thread, `None` for f32.
pub fn compute_dtype() -> Option<DType> {
    COMPUTE.with(Cell::get)
}

/// `x` in the autocast element type (unchanged outside a scope).
pub fn to_compute<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match compute_dtype() {
        Some(dtype) if x.dtype() != dtype => x.cast(dtype),
        _ => x,
    }
}

/// `x` back in f32 after a product ran in the autocast type.
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 { x } else { x.cast(DType::F32) }
}

/// `x · w + b` for burn's `Linear` (`weight` `[in, out]`), in the autocast type, f32 out.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    affine(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// `x · w (+ b)` with `w` `[in, out]` over the last axis of `x`, in the autocast type, f32 out.
pub fn affine<const D: usize>(x: Tensor<D>, w: Tensor<2>, b: Option<Tensor<1>>) -> Tensor<D> {
    if compute_dtype().is_none() {
        return burn::tensor::module::linear(x, w, b);
    }
    let y = to_compute(x).matmul(to_compute(w).unsqueeze::<D>());
    to_f32(match b {
        Some(b) => y + to_compute(b).unsqueeze::<D>(),
        None => y,
    })
}

/// `x · w` for 2-d tensors in the autocast type, f32 out.
pub fn matmul2(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    if compute_dtype().is_none() {
        return x.matmul(w);
    }
    to_f32(to_compute(x).matmul(to_compute(w)))
}
