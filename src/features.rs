//! Feature extraction: images -> the backbone's normalised CLS, register and patch tokens,
//! in input order, batched, with a progress callback; and the safetensors file
//! `dinov2 embed` writes (`cls` [N, D], `patch` [N, h, w, D], `reg` [N, R, D]).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::preprocess::{Prepared, Resize, load_rgb, prepare};
use crate::error::{Error, Result};
use crate::model::DinoVisionTransformer;

/// Features of N images, on the host.
#[derive(Clone, Debug, Default)]
pub struct FeatureSet {
    pub n: usize,
    /// Patch grid height and width.
    pub h: usize,
    pub w: usize,
    /// Token width.
    pub d: usize,
    /// Register tokens per image (0 without registers).
    pub r: usize,
    /// `[N, D]`.
    pub cls: Vec<f32>,
    /// `[N, h, w, D]`.
    pub patch: Vec<f32>,
    /// `[N, R, D]`.
    pub reg: Vec<f32>,
}

impl FeatureSet {
    /// Patch features of image `i`, `[h*w, D]`.
    pub fn patches_of(&self, i: usize) -> &[f32] {
        let size = self.h * self.w * self.d;
        &self.patch[i * size..(i + 1) * size]
    }

    /// Write the safetensors file atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            ("cls", vec![self.n, self.d], &self.cls),
            ("patch", vec![self.n, self.h, self.w, self.d], &self.patch),
        ];
        if self.r > 0 {
            tensors.push(("reg", vec![self.n, self.r, self.d], &self.reg));
        }
        let bytes = crate::io::safetensors_bytes(&tensors, None)?;
        crate::io::write_atomic(path, &bytes)
    }
}

/// Read a tensor of a batch back to the host.
pub fn to_host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| Error::Device(format!("the device failed while computing features: {e}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("cannot read features back: {e:?}")))
}

/// Run the backbone on prepared images of one size, `[B, 3, H, W]`.
pub fn embed_batch(
    model: &DinoVisionTransformer,
    batch: &[Prepared],
    device: &Device,
    out: &mut FeatureSet,
) -> Result<()> {
    let (height, width) = (batch[0].height(), batch[0].width());
    model.check_input(height, width)?;
    let mut pixels = Vec::with_capacity(batch.len() * 3 * height * width);
    for p in batch {
        pixels.extend_from_slice(&p.pixels);
    }
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [batch.len(), 3, height, width]), device);
    let features = model.forward_features(images);
    out.cls.extend(to_host(features.cls)?);
    out.patch.extend(to_host(features.patch)?);
    if let Some(reg) = features.reg {
        out.reg.extend(to_host(reg)?);
    }
    out.n += batch.len();
    Ok(())
}

/// Options of [`embed_files`].
#[derive(Clone, Copy, Debug)]
pub struct EmbedOptions {
    pub resize: Resize,
    pub batch_size: usize,
}

/// Decode, size and embed `paths` in order. `on_image` is called once per image as it is
/// prepared (warnings, progress). All images must come out the same size.
pub fn embed_files(
    model: &DinoVisionTransformer,
    paths: &[PathBuf],
    options: EmbedOptions,
    device: &Device,
    mut on_image: impl FnMut(&Path, &Prepared),
    mut on_batch: impl FnMut(usize),
) -> Result<FeatureSet> {
    let c = &model.config;
    let patch = c.patch_size;
    let mut out = FeatureSet { d: c.embed_dim, r: c.num_register_tokens, ..Default::default() };
    let mut first: Option<(PathBuf, usize, usize)> = None;
    for chunk in paths.chunks(options.batch_size.max(1)) {
        let mut batch = Vec::with_capacity(chunk.len());
        for path in chunk {
            let prepared = prepare(path, load_rgb(path)?, options.resize, patch)?;
            let size = (prepared.height(), prepared.width());
            match &first {
                None => first = Some((path.clone(), size.0, size.1)),
                Some((p0, h0, w0)) if (*h0, *w0) != size => {
                    return Err(Error::Shape(format!(
                        "images differ in size after preprocessing: {} gives {h0}x{w0}, {} gives {}x{}; \
                         use the default transform (centre crop 224) or images of one size",
                        p0.display(),
                        path.display(),
                        size.0,
                        size.1
                    )));
                }
                _ => {}
            }
            on_image(path, &prepared);
            batch.push(prepared);
        }
        embed_batch(model, &batch, device, &mut out)?;
        on_batch(batch.len());
    }
    if let Some((_, h, w)) = first {
        out.h = h / patch;
        out.w = w / patch;
    }
    Ok(out)
}
