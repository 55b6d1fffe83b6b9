//! A pre-norm transformer block with LayerScale (official `Block`):
//! `x = x + ls1 ⊙ attn(norm1(x))`, `x = x + ls2 ⊙ ffn(norm2(x))`.
//! LayerScale (Touvron et al., arXiv 2103.17239) starts at `layerscale_init` (1e-5 in DINOv2).
//!
//! # Shapes
//! - input/output: `[B, N, D]`

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};

use crate::checkpoint::BackboneWeights;
use crate::config::VitConfig;
use crate::error::Result;
use crate::model::attention::Attention;
use crate::model::ffn::FeedForward;

#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    /// LayerScale gamma `[D]`.
    pub ls1: Param<Tensor<1>>,
    pub norm2: LayerNorm,
    pub mlp: FeedForward,
    pub ls2: Param<Tensor<1>>,
}

impl Block {
    pub fn new(c: &VitConfig, device: &Device) -> Self {
        let norm = || LayerNormConfig::new(c.embed_dim).with_epsilon(c.layer_norm_eps).init(device);
        let gamma = || Param::from_tensor(Tensor::full([c.embed_dim], c.layerscale_init, device));
        Self {
            norm1: norm(),
            attn: Attention::new(c.embed_dim, c.num_heads, device),
            ls1: gamma(),
            norm2: norm(),
            mlp: FeedForward::new(c.embed_dim, c.ffn_hidden, c.ffn, device),
            ls2: gamma(),
        }
    }

    pub fn from_weights(w: &BackboneWeights, index: usize, device: &Device) -> Result<Self> {
        let p = format!("blocks.{index}");
        let eps = w.config.layer_norm_eps;
        Ok(Self {
            norm1: crate::model::load_layer_norm(w, &format!("{p}.norm1"), eps, device)?,
            attn: Attention::from_weights(w, &format!("{p}.attn"), device)?,
            ls1: crate::model::load(w, &format!("{p}.ls1.gamma"), device)?,
            norm2: crate::model::load_layer_norm(w, &format!("{p}.norm2"), eps, device)?,
            mlp: FeedForward::from_weights(w, &format!("{p}.mlp"), device)?,
            ls2: crate::model::load(w, &format!("{p}.ls2.gamma"), device)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gamma = |g: &Param<Tensor<1>>| g.val().unsqueeze::<3>();
        let x = x.clone() + self.attn.forward(self.norm1.forward(x)) * gamma(&self.ls1);
        x.clone() + self.mlp.forward(self.norm2.forward(x)) * gamma(&self.ls2)
    }
}
