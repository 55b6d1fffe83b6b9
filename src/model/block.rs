//! A pre-norm transformer block with LayerScale (official `Block`):
//! `x = x + ls1 ⊙ attn(norm1(x))`, `x = x + ls2 ⊙ ffn(norm2(x))`.
//! LayerScale (Touvron et al., arXiv 2103.17239) starts at `layerscale_init` (1e-5 in DINOv2).
//!
//! # Shapes
//! - input/output: `[B, N, D]`

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

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
        let x = x.clone() + self.attn_residual(x);
        x.clone() + self.ffn_residual(x)
    }

    fn attn_residual(&self, x: Tensor<3>) -> Tensor<3> {
        self.attn.forward(self.norm1.forward(x)) * self.ls1.val().unsqueeze::<3>()
    }

    fn ffn_residual(&self, x: Tensor<3>) -> Tensor<3> {
        self.mlp.forward(self.norm2.forward(x)) * self.ls2.val().unsqueeze::<3>()
    }

    /// The training forward with efficient stochastic depth (official
    /// `drop_add_residual_stochastic_depth`): each residual branch runs only on the kept samples
    /// `drop.attn` / `drop.ffn` (indices into the batch) and is added back scaled by
    /// `B / kept`, so dropped samples cost nothing. Without a plan it is [`Self::forward`].
    pub fn forward_train(&self, x: Tensor<3>, drop: Option<&BlockDrop>) -> Tensor<3> {
        let Some(drop) = drop else { return self.forward(x) };
        let x = drop_add_residual(x, &drop.attn, |x| self.attn_residual(x));
        drop_add_residual(x, &drop.ffn, |x| self.ffn_residual(x))
    }
}

/// Which samples of a batch keep each residual branch of one block in a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDrop {
    pub attn: Vec<usize>,
    pub ffn: Vec<usize>,
}

impl BlockDrop {
    /// The official subset: `max(int(B * (1 - rate)), 1)` samples, a random permutation's head,
    /// drawn separately for the two branches.
    pub fn sample(batch: usize, rate: f64, rng: &mut impl rand::Rng) -> Self {
        let keep = ((batch as f64 * (1.0 - rate)) as usize).max(1).min(batch);
        let mut subset = || {
            let mut order: Vec<usize> = (0..batch).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng);
            order.truncate(keep);
            order
        };
        let attn = subset();
        Self { attn, ffn: subset() }
    }
}

/// `x + index_add(residual(x[kept]) · B / kept)`; every sample kept is the plain residual.
pub fn drop_add_residual(
    x: Tensor<3>,
    kept: &[usize],
    residual: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    let batch = x.dims()[0];
    if kept.len() == batch && kept.iter().enumerate().all(|(i, &k)| i == k) {
        return x.clone() + residual(x);
    }
    let device = x.device();
    let indices = Tensor::<1, Int>::from_data(
        TensorData::new(kept.iter().map(|&i| i as i64).collect::<Vec<_>>(), [kept.len()]),
        &device,
    );
    let scale = batch as f64 / kept.len() as f64;
    let update = residual(x.clone().select(0, indices.clone())).mul_scalar(scale);
    x.select_assign(0, indices, update, IndexingUpdateOp::Add)
}
