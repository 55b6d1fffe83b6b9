//! Patch embedding: a `patch x patch` convolution with stride `patch` (official `PatchEmbed`),
//! computed as "cut into patches, then one matmul", which is the same sum in the same order.
//!
//! # Shapes
//! - input: `[B, 3, H, W]` with H, W multiples of the patch size
//! - output: `[B, (H/p)*(W/p), D]`, patches in row-major order

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::checkpoint::BackboneWeights;
use crate::error::Result;

#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// PyTorch layout `[D, 3, p, p]`.
    pub weight: Param<Tensor<4>>,
    /// `[D]`.
    pub bias: Param<Tensor<1>>,
    pub patch_size: usize,
}

impl PatchEmbed {
    /// Fresh weights: PyTorch's default `Conv2d` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pub fn new(embed_dim: usize, patch_size: usize, device: &Device) -> Self {
        let bound = 1.0 / ((3 * patch_size * patch_size) as f64).sqrt();
        let dist = Distribution::Uniform(-bound, bound);
        Self {
            weight: Param::from_tensor(Tensor::random([embed_dim, 3, patch_size, patch_size], dist, device)),
            bias: Param::from_tensor(Tensor::random([embed_dim], dist, device)),
            patch_size,
        }
    }

    pub fn from_weights(w: &BackboneWeights, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: crate::model::load(w, "patch_embed.proj.weight", device)?,
            bias: crate::model::load(w, "patch_embed.proj.bias", device)?,
            patch_size: w.config.patch_size,
        })
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<3> {
        let [b, c, height, width] = images.dims();
        let p = self.patch_size;
        let (h, w) = (height / p, width / p);
        let patches =
            images.reshape([b, c, h, p, w, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, h * w, c * p * p]);
        let weight = self.weight.val();
        let d = weight.dims()[0];
        let weight = weight.reshape([d, c * p * p]).transpose();
        crate::model::precision::affine(patches, weight, Some(self.bias.val()))
    }
}
