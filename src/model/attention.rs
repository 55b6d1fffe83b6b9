//! Multi-head self-attention (official `Attention`): one `qkv` projection, scaled dot-product
//! attention per head (the fused kernel of [`crate::kernels`] by default), an output projection.
//!
//! # Shapes
//! - input/output: `[B, N, D]`; internally q, k, v are `[B, H, N, D/H]`

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::checkpoint::BackboneWeights;
use crate::error::Result;
use crate::kernels::{self, AttentionImpl};
use crate::model::precision;

pub use crate::kernels::attention_reference;

#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
    /// Fused kernel (default) or composed reference.
    #[module(skip)]
    pub implementation: AttentionImpl,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, device: &Device) -> Self {
        Self {
            qkv: crate::model::ffn::linear_init(dim, 3 * dim, device),
            proj: crate::model::ffn::linear_init(dim, dim, device),
            num_heads,
            implementation: AttentionImpl::Fused,
        }
    }

    pub fn from_weights(w: &BackboneWeights, prefix: &str, device: &Device) -> Result<Self> {
        Ok(Self {
            qkv: crate::model::load_linear(w, &format!("{prefix}.qkv"), device)?,
            proj: crate::model::load_linear(w, &format!("{prefix}.proj"), device)?,
            num_heads: w.config.num_heads,
            implementation: AttentionImpl::Fused,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let heads = self.num_heads;
        let qkv =
            precision::linear(&self.qkv, x).reshape([b, n, 3, heads, d / heads]).permute([2, 0, 3, 1, 4]);
        let part =
            |i: usize| precision::to_compute(qkv.clone().narrow(0, i, 1).reshape([b, heads, n, d / heads]));
        let out = precision::to_f32(kernels::attention(part(0), part(1), part(2), self.implementation));
        precision::linear(&self.proj, out.swap_dims(1, 2).reshape([b, n, d]))
    }
}
