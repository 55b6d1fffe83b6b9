//! The DINOv2 ViT backbone (official `dinov2/models/vision_transformer.py`), one file per
//! layer kind.

pub mod attention;
pub mod block;
pub mod ffn;
pub mod patch_embed;
pub mod pos_embed;
pub mod precision;
pub mod vit;

pub use vit::{DinoVisionTransformer, Features};

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::BackboneWeights;
use crate::error::Result;

/// A parameter from host data.
pub(crate) fn param<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
}

/// Read `key` (official name) and check it has `D` axes.
pub(crate) fn load<const D: usize>(
    w: &BackboneWeights,
    key: &str,
    device: &Device,
) -> Result<Param<Tensor<D>>> {
    let (shape, data) = w.tensor(key)?;
    let shape: [usize; D] = shape.try_into().map_err(|s: Vec<usize>| {
        crate::error::Error::checkpoint(
            w.path(),
            format!("tensor `{key}` has {} axes, expected {D}", s.len()),
        )
    })?;
    Ok(param(data, shape, device))
}

/// A PyTorch `nn.Linear` (`weight` [out, in]) as burn's `Linear` (`weight` [in, out]).
pub(crate) fn load_linear(w: &BackboneWeights, prefix: &str, device: &Device) -> Result<Linear> {
    let (shape, data) = w.tensor(&format!("{prefix}.weight"))?;
    let (out, inp) = (shape[0], shape[1]);
    let mut transposed = vec![0.0f32; data.len()];
    for o in 0..out {
        for i in 0..inp {
            transposed[i * out + o] = data[o * inp + i];
        }
    }
    Ok(Linear {
        weight: param(transposed, [inp, out], device),
        bias: Some(load::<1>(w, &format!("{prefix}.bias"), device)?),
    })
}

/// A LayerNorm with the checkpoint's `weight`/`bias`.
pub(crate) fn load_layer_norm(
    w: &BackboneWeights,
    prefix: &str,
    eps: f64,
    device: &Device,
) -> Result<LayerNorm> {
    let weight = load::<1>(w, &format!("{prefix}.weight"), device)?;
    let mut norm = LayerNormConfig::new(weight.dims()[0]).with_epsilon(eps).init(device);
    norm.gamma = weight;
    norm.beta = Some(load::<1>(w, &format!("{prefix}.bias"), device)?);
    Ok(norm)
}
