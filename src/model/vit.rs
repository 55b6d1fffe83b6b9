//! The DINOv2 vision transformer (Oquab et al., arXiv 2304.07193; registers: Darcet et al.,
//! arXiv 2309.16588), as the official `DinoVisionTransformer.forward_features` computes it:
//!
//! 1. patch embedding, CLS token prepended, position embedding added (interpolated to the
//!    input's patch grid, see [`pos_embed`](crate::model::pos_embed));
//! 2. register tokens inserted after the CLS token (they get no position embedding);
//! 3. the blocks, then a final LayerNorm;
//! 4. split into CLS `[B, D]`, registers `[B, R, D]` and patch tokens `[B, h, w, D]`.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Bool, Device, Distribution, Tensor};

use crate::checkpoint::BackboneWeights;
use crate::config::VitConfig;
use crate::error::{Error, Result};
use crate::model::block::{Block, BlockDrop};
use crate::model::patch_embed::PatchEmbed;
use crate::model::pos_embed::interpolate_grid;

#[derive(Module, Debug)]
pub struct DinoVisionTransformer {
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`.
    pub cls_token: Param<Tensor<3>>,
    /// `[1, 1 + M*M, D]`: the CLS position, then an `M x M` grid.
    pub pos_embed: Param<Tensor<3>>,
    /// `[1, R, D]`, absent without registers.
    pub register_tokens: Option<Param<Tensor<3>>>,
    /// `[1, D]`: replaces masked patches in iBOT training.
    pub mask_token: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    #[module(skip)]
    pub config: VitConfig,
}

/// The backbone's outputs after the final LayerNorm.
#[derive(Clone, Debug)]
pub struct Features {
    /// `[B, D]`.
    pub cls: Tensor<2>,
    /// `[B, R, D]`, `None` without registers.
    pub reg: Option<Tensor<3>>,
    /// `[B, h, w, D]`.
    pub patch: Tensor<4>,
}

impl DinoVisionTransformer {
    /// A freshly initialised model (the official init: position embedding N(0, 0.02), CLS and
    /// register tokens N(0, 1e-6), linear layers N(0, 0.02) with zero bias, LayerScale at
    /// `layerscale_init`).
    pub fn new(config: &VitConfig, device: &Device) -> Self {
        let d = config.embed_dim;
        let normal = |shape: [usize; 3], std: f64| {
            Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, std), device))
        };
        Self {
            patch_embed: PatchEmbed::new(d, config.patch_size, device),
            cls_token: normal([1, 1, d], 1e-6),
            pos_embed: normal([1, 1 + config.pos_grid * config.pos_grid, d], 0.02),
            register_tokens: (config.num_register_tokens > 0)
                .then(|| normal([1, config.num_register_tokens, d], 1e-6)),
            mask_token: Param::from_tensor(Tensor::zeros([1, d], device)),
            blocks: (0..config.depth).map(|_| Block::new(config, device)).collect(),
            norm: LayerNormConfig::new(d).with_epsilon(config.layer_norm_eps).init(device),
            config: config.clone(),
        }
    }

    /// The model a validated checkpoint describes.
    pub fn from_weights(w: &BackboneWeights, device: &Device) -> Result<Self> {
        let c = &w.config;
        let mask_token = if w.contains("mask_token") {
            crate::model::load(w, "mask_token", device)?
        } else {
            Param::from_tensor(Tensor::zeros([1, c.embed_dim], device))
        };
        Ok(Self {
            patch_embed: PatchEmbed::from_weights(w, device)?,
            cls_token: crate::model::load(w, "cls_token", device)?,
            pos_embed: crate::model::load(w, "pos_embed", device)?,
            register_tokens: if c.num_register_tokens > 0 {
                Some(crate::model::load(w, "register_tokens", device)?)
            } else {
                None
            },
            mask_token,
            blocks: (0..c.depth).map(|i| Block::from_weights(w, i, device)).collect::<Result<_>>()?,
            norm: crate::model::load_layer_norm(w, "norm", c.layer_norm_eps, device)?,
            config: c.clone(),
        })
    }

    /// Run every block's attention through `implementation` (the fused kernel by default).
    pub fn with_attention(mut self, implementation: crate::kernels::AttentionImpl) -> Self {
        for block in &mut self.blocks {
            block.attn.implementation = implementation;
        }
        self
    }

    /// Check an input of `height x width` pixels can go through the model.
    pub fn check_input(&self, height: usize, width: usize) -> Result<()> {
        let p = self.config.patch_size;
        if height < p || width < p {
            return Err(Error::Shape(format!("input {height}x{width} is smaller than one {p}x{p} patch")));
        }
        if height % p != 0 || width % p != 0 {
            return Err(Error::Shape(format!(
                "input {height}x{width} is not a multiple of the patch size {p}"
            )));
        }
        Ok(())
    }

    /// Position embeddings for an `h x w` patch grid: `[1, 1 + h*w, D]`. The checkpoint's own
    /// embedding is used unchanged when the grid is its own (the official rule).
    pub fn position_embedding(&self, h: usize, w: usize) -> Tensor<3> {
        let pos = self.pos_embed.val();
        let m = self.config.pos_grid;
        if h == m && w == m {
            return pos;
        }
        let d = self.config.embed_dim;
        let cls_pos = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, m * m).reshape([m, m, d]);
        let patch_pos = interpolate_grid(grid, h, w, self.config.interpolation).reshape([1, h * w, d]);
        Tensor::cat(vec![cls_pos, patch_pos], 1)
    }

    /// Tokens before the blocks: `[B, 1 + R + h*w, D]`.
    pub fn prepare_tokens(&self, images: Tensor<4>) -> Tensor<3> {
        self.prepare_tokens_with_masks(images, None)
    }

    /// [`Self::prepare_tokens`] with iBOT masking (official `prepare_tokens_with_masks`): the
    /// embeddings of masked patches (`masks` `[B, h*w]`, true = masked) are replaced by the
    /// learned mask token before the position embedding is added.
    pub fn prepare_tokens_with_masks(&self, images: Tensor<4>, masks: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let [b, _, height, width] = images.dims();
        let p = self.config.patch_size;
        let (h, w) = (height / p, width / p);
        let mut patches = self.patch_embed.forward(images);
        if let Some(masks) = masks {
            let d = self.config.embed_dim;
            let token = self.mask_token.val().unsqueeze::<3>().expand([b, h * w, d]);
            patches = patches.mask_where(masks.unsqueeze_dim::<3>(2).expand([b, h * w, d]), token);
        }
        let d = self.config.embed_dim;
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1) + self.position_embedding(h, w);
        match &self.register_tokens {
            None => x,
            Some(reg) => {
                let r = self.config.num_register_tokens;
                let n = x.dims()[1];
                let cls = x.clone().narrow(1, 0, 1);
                let rest = x.narrow(1, 1, n - 1);
                Tensor::cat(vec![cls, reg.val().expand([b, r, d]), rest], 1)
            }
        }
    }

    /// Features of a batch of normalised images `[B, 3, H, W]` (H, W multiples of the patch
    /// size; see [`Self::check_input`]).
    pub fn forward_features(&self, images: Tensor<4>) -> Features {
        self.forward_train(images, None, &[])
    }

    /// The training forward: optional iBOT masks `[B, h*w]` and, per block, the samples that
    /// keep each residual branch (efficient stochastic depth; an empty plan drops nothing).
    pub fn forward_train(
        &self,
        images: Tensor<4>,
        masks: Option<Tensor<2, Bool>>,
        drops: &[BlockDrop],
    ) -> Features {
        let [_, _, height, width] = images.dims();
        let p = self.config.patch_size;
        let (h, w) = (height / p, width / p);
        let mut x = self.prepare_tokens_with_masks(images, masks);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_train(x, drops.get(i));
        }
        self.split(self.norm.forward(x), h, w)
    }

    /// The outputs of the last `n` blocks (official `get_intermediate_layers(x, n, norm=True)`):
    /// each block's tokens through the final LayerNorm, split as [`Features`], oldest first.
    /// `n` is capped at the depth.
    pub fn forward_last_blocks(&self, images: Tensor<4>, n: usize) -> Vec<Features> {
        let [_, _, height, width] = images.dims();
        let p = self.config.patch_size;
        let (h, w) = (height / p, width / p);
        let first = self.blocks.len().saturating_sub(n);
        let mut x = self.prepare_tokens(images);
        let mut out = Vec::with_capacity(n.min(self.blocks.len()));
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_train(x, None);
            if i >= first {
                out.push(self.split(self.norm.forward(x.clone()), h, w));
            }
        }
        out
    }

    /// Tokens `[B, 1 + R + h*w, D]` split into CLS, registers and the patch grid.
    fn split(&self, x: Tensor<3>, h: usize, w: usize) -> Features {
        let b = x.dims()[0];
        let (d, r) = (self.config.embed_dim, self.config.num_register_tokens);
        Features {
            cls: x.clone().narrow(1, 0, 1).reshape([b, d]),
            reg: (r > 0).then(|| x.clone().narrow(1, 1, r)),
            patch: x.narrow(1, 1 + r, h * w).reshape([b, h, w, d]),
        }
    }
}
