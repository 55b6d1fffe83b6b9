//! The DINO / iBOT projection head (official `dinov2/layers/dino_head.py`, `DINOHead`):
//! a 3-layer MLP `in → hidden → hidden → bottleneck` with GELU, L2 normalisation
//! (eps 1e-12), then a weight-normalised linear layer without bias onto K prototypes:
//! `W = g · v / ‖v‖` per prototype (PyTorch `weight_norm`, `g` initialised to 1).
//!
//! The last layer is kept in chunks of prototypes ([`prototype_chunks`]): each chunk's weight
//! stays within 64 MiB, so ViT-L/g's 384 × 131072 (192 MiB in one piece) fits the 128 MiB a
//! software adapter or a browser can bind. The chunks' logits are joined into one `[rows, K]`.
//!
//! # Shapes
//! - input `[rows, in_dim]`, output `[rows, K]`

use std::collections::BTreeMap;
use std::ops::Range;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};

use crate::model::ffn::linear_init;
use crate::model::precision;
use crate::train::params::HostTensor;

/// Bytes one chunk of a last layer's weight may take (f32): half the 128 MiB that software
/// adapters and browsers bind.
pub const LAST_LAYER_CHUNK_BYTES: usize = 64 << 20;

/// The prototype ranges of a last layer `[bottleneck, k]` in chunks: the largest power of two
/// of prototypes within [`LAST_LAYER_CHUNK_BYTES`] (32768 at bottleneck 384, 65536 at 256),
/// the last chunk shorter where it does not divide `k`; one chunk where `k` fits.
pub fn prototype_chunks(bottleneck: usize, k: usize) -> Vec<Range<usize>> {
    let fit = (LAST_LAYER_CHUNK_BYTES / 4 / bottleneck.max(1)).max(1);
    let chunk = (1usize << fit.ilog2()).min(k.max(1));
    (0..k.div_ceil(chunk)).map(|i| i * chunk..((i + 1) * chunk).min(k)).collect()
}

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
    /// Weight-norm direction `v` in chunks of prototypes ([`prototype_chunks`]), each
    /// `[bottleneck, chunk]`.
    pub last_layer_v: Vec<Param<Tensor<2>>>,
    /// Weight-norm magnitude `g` in the same chunks, each `[chunk]`.
    pub last_layer_g: Vec<Param<Tensor<1>>>,
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
        let chunks = prototype_chunks(c.bottleneck_dim, c.n_prototypes);
        Self {
            mlp,
            last_layer_v: chunks
                .iter()
                .map(|r| {
                    Param::from_tensor(Tensor::random(
                        [c.bottleneck_dim, r.len()],
                        Distribution::Uniform(-bound, bound),
                        device,
                    ))
                })
                .collect(),
            last_layer_g: chunks
                .iter()
                .map(|r| Param::from_tensor(Tensor::ones([r.len()], device)))
                .collect(),
        }
    }

    /// K, the number of prototypes.
    pub fn n_prototypes(&self) -> usize {
        self.last_layer_g.iter().map(|g| g.dims()[0]).sum()
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.mlp.len() - 1;
        let mut x = x;
        for (i, layer) in self.mlp.iter().enumerate() {
            x = precision::linear(layer, x);
            if i < last {
                x = crate::kernels::gelu(x);
            }
        }
        let x = x.clone() / x.square().sum_dim(1).sqrt().clamp_min(1e-12);
        let mut logits: Vec<Tensor<2>> = self
            .last_layer_v
            .iter()
            .zip(&self.last_layer_g)
            .map(|(v, g)| {
                let v = v.val();
                let weight = v.clone() / v.square().sum_dim(0).sqrt() * g.val().unsqueeze::<2>();
                precision::matmul2(x.clone(), weight)
            })
            .collect();
        if logits.len() == 1 { logits.pop().expect("one chunk") } else { Tensor::cat(logits, 1) }
    }
}

/// Checkpoints written before the last layers were kept in chunks hold each as one tensor
/// (`….last_layer_v` `[bottleneck, K]`, `….last_layer_g` `[K]`, and AdamW's flattened moments
/// and step counts under the same names): split them into the chunks of `heads` (the DINO head
/// and the iBOT head, by name) as `….last_layer_v.0`, `.1`, …. Other tensors are left alone.
pub fn split_unchunked_last_layers(
    tensors: &mut BTreeMap<String, HostTensor>,
    dino: &HeadConfig,
    ibot: &HeadConfig,
) {
    let old: Vec<String> = tensors
        .keys()
        .filter(|k| k.ends_with(".last_layer_v") || k.ends_with(".last_layer_g"))
        .cloned()
        .collect();
    for name in old {
        let host = tensors.remove(&name).expect("listed");
        let head = if name.contains("ibot_head.") { ibot } else { dino };
        let k = head.n_prototypes;
        for (i, r) in prototype_chunks(head.bottleneck_dim, k).into_iter().enumerate() {
            let part = if host.data.len() == 1 {
                // an AdamW step count
                host.clone()
            } else {
                // row-major [rows, K] (rows = 1 for g)
                let rows = host.data.len() / k.max(1);
                let data: Vec<f32> = (0..rows)
                    .flat_map(|row| host.data[row * k + r.start..row * k + r.end].iter().copied())
                    .collect();
                let shape = match host.shape.len() {
                    2 => vec![rows, r.len()],
                    _ => vec![data.len()],
                };
                HostTensor { shape, data }
            };
            tensors.insert(format!("{name}.{i}"), part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_prototypes_within_the_budget() {
        assert_eq!(prototype_chunks(128, 1024), vec![0..1024]);
        assert_eq!(prototype_chunks(256, 65536), vec![0..65536]);
        assert_eq!(prototype_chunks(384, 131072), vec![0..32768, 32768..65536, 65536..98304, 98304..131072]);
        assert_eq!(prototype_chunks(256, 100000), vec![0..65536, 65536..100000]);
        for (b, k) in [(384, 131072), (256, 100000), (7, 3), (4096, 70000)] {
            let chunks = prototype_chunks(b, k);
            assert_eq!(chunks.first().unwrap().start, 0);
            assert_eq!(chunks.last().unwrap().end, k);
            assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
            assert!(chunks.iter().all(|r| r.len() * b * 4 <= LAST_LAYER_CHUNK_BYTES));
        }
    }

    #[test]
    fn unchunked_last_layers_split_by_columns() {
        let head = HeadConfig {
            n_prototypes: 5,
            hidden_dim: 8,
            bottleneck_dim: LAST_LAYER_CHUNK_BYTES / 4 / 2,
            n_layers: 3,
        };
        // chunks of 2 prototypes: 0..2, 2..4, 4..5
        assert_eq!(prototype_chunks(head.bottleneck_dim, 5), vec![0..2, 2..4, 4..5]);
        let v = HostTensor { shape: vec![2, 5], data: (0..10).map(|i| i as f32).collect() };
        let g = HostTensor { shape: vec![5], data: vec![1.0, 2.0, 3.0, 4.0, 5.0] };
        let t = HostTensor { shape: vec![1], data: vec![7.0] };
        let mut tensors = BTreeMap::from([
            ("student.dino_head.last_layer_v".to_string(), v.clone()),
            ("teacher.ibot_head.last_layer_g".to_string(), g),
            ("optimizer.m.dino_head.last_layer_v".to_string(), HostTensor { shape: vec![10], data: v.data }),
            ("optimizer.t.dino_head.last_layer_v".to_string(), t.clone()),
            ("student.dino_head.mlp.0.weight".to_string(), t.clone()),
        ]);
        split_unchunked_last_layers(&mut tensors, &head, &head);
        let get = |k: &str| tensors.get(k).unwrap_or_else(|| panic!("{k}")).clone();
        assert_eq!(
            get("student.dino_head.last_layer_v.1"),
            HostTensor { shape: vec![2, 2], data: vec![2.0, 3.0, 7.0, 8.0] }
        );
        assert_eq!(
            get("student.dino_head.last_layer_v.2"),
            HostTensor { shape: vec![2, 1], data: vec![4.0, 9.0] }
        );
        assert_eq!(
            get("teacher.ibot_head.last_layer_g.0"),
            HostTensor { shape: vec![2], data: vec![1.0, 2.0] }
        );
        assert_eq!(
            get("optimizer.m.dino_head.last_layer_v.0"),
            HostTensor { shape: vec![4], data: vec![0.0, 1.0, 5.0, 6.0] }
        );
        assert_eq!(get("optimizer.t.dino_head.last_layer_v.2"), t);
        assert_eq!(get("student.dino_head.mlp.0.weight"), t);
        assert!(!tensors.contains_key("student.dino_head.last_layer_v"));
        assert_eq!(tensors.len(), 1 + 3 * 4);
    }
}
