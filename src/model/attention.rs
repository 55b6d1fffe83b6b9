//! Multi-head self-attention (official `Attention`): one `qkv` projection, scaled dot-product
//! attention per head, an output projection.
//!
//! # Shapes
//! - input/output: `[B, N, D]`; internally q, k, v are `[B, H, N, D/H]`

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, activation::softmax};

use crate::checkpoint::BackboneWeights;
use crate::error::Result;

#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

/// `softmax(q kᵀ / sqrt(d)) v` from plain tensor ops (materialises the `[B, H, N, N]` scores).
pub fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let scale = (q.dims()[3] as f64).powf(-0.5);
    let scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3));
    softmax(scores, 3).matmul(v)
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, device: &Device) -> Self {
        Self {
            qkv: crate::model::ffn::linear_init(dim, 3 * dim, device),
            proj: crate::model::ffn::linear_init(dim, dim, device),
            num_heads,
        }
    }

    pub fn from_weights(w: &BackboneWeights, prefix: &str, device: &Device) -> Result<Self> {
        Ok(Self {
            qkv: crate::model::load_linear(w, &format!("{prefix}.qkv"), device)?,
            proj: crate::model::load_linear(w, &format!("{prefix}.proj"), device)?,
            num_heads: w.config.num_heads,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let heads = self.num_heads;
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, heads, d / heads])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([b, heads, n, d / heads])
        };
        let out = attention_reference(part(0), part(1), part(2));
        self.proj.forward(out.swap_dims(1, 2).reshape([b, n, d]))
    }
}
