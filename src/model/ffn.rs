//! The block's feed-forward layer: the official `Mlp` (`fc1 -> GELU -> fc2`, exact erf GELU)
//! or `SwiGLUFFNFused` (`w12 -> silu(x1) * x2 -> w3`, ViT-g).
//!
//! # Shapes
//! - input/output: `[B, N, D]`; hidden `[B, N, ffn_hidden]`

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, activation};

use crate::checkpoint::BackboneWeights;
use crate::config::FfnKind;
use crate::error::Result;
use crate::model::precision;

#[derive(Module, Debug)]
pub struct FeedForward {
    /// `fc1` `[D, hidden]`, or SwiGLU's `w12` `[D, 2 * hidden]`.
    pub fc1: Linear,
    /// `fc2` / `w3` `[hidden, D]`.
    pub fc2: Linear,
    pub swiglu: bool,
}

/// A linear layer initialised as the official ViT does (`trunc_normal_(std=0.02)`, which
/// truncates at ±2, i.e. never at this std; zero bias).
pub fn linear_init(d_in: usize, d_out: usize, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(Tensor::random([d_in, d_out], Distribution::Normal(0.0, 0.02), device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

impl FeedForward {
    pub fn new(dim: usize, hidden: usize, kind: FfnKind, device: &Device) -> Self {
        let swiglu = kind == FfnKind::Swiglu;
        let width = if swiglu { 2 * hidden } else { hidden };
        Self { fc1: linear_init(dim, width, device), fc2: linear_init(hidden, dim, device), swiglu }
    }

    pub fn from_weights(w: &BackboneWeights, prefix: &str, device: &Device) -> Result<Self> {
        let swiglu = w.config.ffn == FfnKind::Swiglu;
        let (a, b) = if swiglu { ("w12", "w3") } else { ("fc1", "fc2") };
        Ok(Self {
            fc1: crate::model::load_linear(w, &format!("{prefix}.{a}"), device)?,
            fc2: crate::model::load_linear(w, &format!("{prefix}.{b}"), device)?,
            swiglu,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = precision::linear(&self.fc1, x);
        let hidden = if self.swiglu {
            let half = hidden.dims()[2] / 2;
            let x1 = hidden.clone().narrow(2, 0, half);
            let x2 = hidden.narrow(2, half, half);
            activation::silu(x1) * x2
        } else {
            crate::kernels::gelu(hidden)
        };
        precision::linear(&self.fc2, hidden)
    }
}
