//! The DINO / iBOT projection head (official `dinov2/layers/dino_head.py`, `DINOHead`):
//! a 3-layer MLP `in → hidden → hidden → bottleneck` with GELU, L2 normalisation
//! (eps 1e-12), then a weight-normalised linear layer without bias onto K prototypes:
//! `W = g · v / ‖v‖` per prototype (PyTorch `weight_norm`, `g` initialised to 1).
//!
//! # Shapes
//! - input `[rows, in_dim]`, output `[rows, K]`

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, activation};

use crate::model::ffn::linear_init;
use crate::model::precision;

/// Widths of a head.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadConfig {
    /// Prototypes K (65536 official; 131072 for ViT-L/g).
    pub n_prototypes: usize,
    /// MLP hidden width (2048 official).
    pub hidden_dim: usize,
    /// Bottleneck width before the prototypes (256 official; 384 for ViT-L/g).
    pub bottleneck_dim: usize,
    /// MLP layers (3 official).
    pub n_layers: usize,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { n_prototypes: 65536, hidden_dim: 2048, bottleneck_dim: 256, n_layers: 3 }
    }
}

#[derive(Module, Debug)]
pub struct DinoHead {
    /// The MLP's linear layers (`[in, out]` weights), GELU between them.
    pub mlp: Vec<Linear>,
    /// Weight-norm direction `v`, `[bottleneck, K]`.
    pub last_layer_v: Param<Tensor<2>>,
    /// Weight-norm magnitude `g`, `[K]`.
    pub last_layer_g: Param<Tensor<1>>,
}

impl DinoHead {
    /// Official init: MLP `trunc_normal(std 0.02)` with zero bias; the last layer PyTorch's
    /// default `Linear` init `U(±1/√bottleneck)` and `g = 1`.
    pub fn new(in_dim: usize, c: &HeadConfig, device: &Device) -> Self {
        let n = c.n_layers.max(1);
        let mut widths = vec![in_dim];
        widths.extend(std::iter::repeat_n(c.hidden_dim, n - 1));
        widths.push(c.bottleneck_dim);
        let mlp = widths.windows(2).map(|w| linear_init(w[0], w[1], device)).collect();
        let bound = 1.0 / (c.bottleneck_dim as f64).sqrt();
        Self {
            mlp,
            last_layer_v: Param::from_tensor(Tensor::random(
                [c.bottleneck_dim, c.n_prototypes],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            last_layer_g: Param::from_tensor(Tensor::ones([c.n_prototypes], device)),
        }
    }

    /// K, the number of prototypes.
    pub fn n_prototypes(&self) -> usize {
        self.last_layer_g.dims()[0]
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.mlp.len() - 1;
        let mut x = x;
        for (i, layer) in self.mlp.iter().enumerate() {
            x = precision::linear(layer, x);
            if i < last {
                x = activation::gelu(x);
            }
        }
        let x = x.clone() / x.square().sum_dim(1).sqrt().clamp_min(1e-12);
        let v = self.last_layer_v.val();
        let weight = v.clone() / v.square().sum_dim(0).sqrt() * self.last_layer_g.val().unsqueeze::<2>();
        precision::matmul2(x, weight)
    }
}
