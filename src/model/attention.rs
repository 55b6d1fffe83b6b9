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

/// Largest score block materialised at once, in elements (32 MiB of f32): well under the
/// 128 MiB storage binding of software adapters and browsers.
const MAX_SCORE_ELEMENTS: usize = 8 << 20;

/// `softmax(q kᵀ / sqrt(d)) v` from plain tensor ops. The `[B, H, n, N]` score matrix is
/// materialised for chunks of `n` queries small enough that no block exceeds
/// [`MAX_SCORE_ELEMENTS`]; each query row is computed exactly as without chunking.
pub fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [b, h, n, d] = q.dims();
    let scale = (d as f64).powf(-0.5);
    let keys = k.swap_dims(2, 3);
    let rows_per_chunk = (MAX_SCORE_ELEMENTS / (b * h * n).max(1)).max(1);
    let attend = |q: Tensor<4>| softmax(q.mul_scalar(scale).matmul(keys.clone()), 3).matmul(v.clone());
    if rows_per_chunk >= n {
        return attend(q);
    }
    let chunks = (0..n)
        .step_by(rows_per_chunk)
        .map(|start| attend(q.clone().narrow(2, start, rows_per_chunk.min(n - start))))
        .collect();
    Tensor::cat(chunks, 2)
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
        let qkv = self.qkv.forward(x).reshape([b, n, 3, heads, d / heads]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, d / heads]);
        let out = attention_reference(part(0), part(1), part(2));
        self.proj.forward(out.swap_dims(1, 2).reshape([b, n, d]))
    }
}
