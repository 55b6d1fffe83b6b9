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

/// The samples of a batch that keep one residual branch, and the factor their residual is
/// scaled by (`B / kept` of the batch the subset was drawn from).
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    pub rows: Vec<usize>,
    pub scale: f64,
}

impl Kept {
    /// `rows` of a batch of `batch` samples: scaled by `batch / rows.len()`.
    pub fn subset(batch: usize, rows: Vec<usize>) -> Self {
        let scale = batch as f64 / rows.len().max(1) as f64;
        Self { rows, scale }
    }

    /// The part of the plan that falls in samples `start .. start + len`, renumbered from 0,
    /// with the whole batch's scale: a shard of the batch computes exactly its rows of the
    /// whole batch's step (possibly none).
    pub fn shard(&self, start: usize, len: usize) -> Self {
        let rows = self.rows.iter().filter(|&&r| r >= start && r < start + len).map(|&r| r - start).collect();
        Self { rows, scale: self.scale }
    }
}

/// Which samples of a batch keep each residual branch of one block in a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDrop {
    pub attn: Kept,
    pub ffn: Kept,
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
            Kept::subset(batch, order)
        };
        let attn = subset();
        Self { attn, ffn: subset() }
    }

    /// The plan of a shard made of the given sample ranges of the batch, concatenated
    /// (`(start, len)` each): see [`Kept::shard`].
    pub fn shard(&self, ranges: &[(usize, usize)]) -> Self {
        let part = |kept: &Kept| {
            let mut rows = Vec::new();
            let mut offset = 0;
            for &(start, len) in ranges {
                rows.extend(kept.shard(start, len).rows.into_iter().map(|r| r + offset));
                offset += len;
            }
            Kept { rows, scale: kept.scale }
        };
        Self { attn: part(&self.attn), ffn: part(&self.ffn) }
    }
}

/// `x + index_add(residual(x[kept]) · scale)`; every sample kept at scale 1 is the plain
/// residual, none kept is `x`.
pub fn drop_add_residual(x: Tensor<3>, kept: &Kept, residual: impl Fn(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
    let batch = x.dims()[0];
    if kept.rows.is_empty() {
        return x;
    }
    if kept.scale == 1.0 && kept.rows.len() == batch && kept.rows.iter().enumerate().all(|(i, &k)| i == k) {
        return x.clone() + residual(x);
    }
    let device = x.device();
    let indices = Tensor::<1, Int>::from_data(
        TensorData::new(kept.rows.iter().map(|&i| i as i64).collect::<Vec<_>>(), [kept.rows.len()]),
        &device,
    );
    let update = residual(x.clone().select(0, indices.clone())).mul_scalar(kept.scale);
    x.select_assign(0, indices, update, IndexingUpdateOp::Add)
}
