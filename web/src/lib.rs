//! dinov2-web: the library's feature demos — PCA of patch features, patch matching — compiled
//! to wasm32 and run by burn's wgpu backend on the browser's WebGPU. The page (`web/www/`)
//! calls [`Engine`]; everything it computes is the library's own code (`dinov2_wgpu`): the
//! checkpoint reader, the evaluation transform, the ViT with its WGSL kernels, the PCA and the
//! matching. Only reading results back differs: the browser allows asynchronous reads only.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use dinov2_wgpu::checkpoint::{LoadOptions, read_backbone_bytes};
use dinov2_wgpu::data::preprocess::{Prepared, Resize, prepare};
use dinov2_wgpu::eval::{matching, pca};
use dinov2_wgpu::model::DinoVisionTransformer;
use wasm_bindgen::prelude::*;

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The model on the browser's WebGPU device.
#[wasm_bindgen]
pub struct Engine {
    model: DinoVisionTransformer,
    device: Device,
    adapter: String,
    describe: String,
}

/// Patch features of one image and its PCA picture.
#[wasm_bindgen(getter_with_clone)]
pub struct PcaResult {
    /// The image as the model saw it beside its PCA map, PNG.
    pub png: Vec<u8>,
    /// `[h, w, D]` patch features, row-major (as `dinov2 embed` writes `patch`).
    pub patch: Vec<f32>,
    pub h: usize,
    pub w: usize,
    pub d: usize,
}

/// Two images side by side with their mutual nearest patches joined.
#[wasm_bindgen(getter_with_clone)]
pub struct MatchResult {
    pub png: Vec<u8>,
    pub matches: usize,
    pub mean_similarity: f32,
}

/// Features of one image: `(prepared image, patch features, h, w)`.
struct OneImage {
    prepared: Prepared,
    patch: Vec<f32>,
    h: usize,
    w: usize,
}

#[wasm_bindgen]
impl Engine {
    /// Opens WebGPU and loads a safetensors backbone (official key layout, HuggingFace's, or
    /// this project's export). `name` stands for the file in error messages.
    pub async fn load(weights: Vec<u8>, name: String) -> Result<Engine, JsError> {
        let backbone = read_backbone_bytes(&name, weights, &LoadOptions::default()).map_err(js)?;
        let (device, setup) = Device::wgpu_options()
            .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
            .init_with_setup_async()
            .await
            .map_err(|e| js(format!("WebGPU: {e}")))?;
        let info = setup.adapter.get_info();
        let adapter = format!("{} ({:?})", info.name, info.device_type);
        let model = DinoVisionTransformer::from_weights(&backbone, &device).map_err(js)?;
        let c = &model.config;
        let describe = format!(
            "{} blocks, width {}, patch {}, {:.2}M parameters",
            c.depth,
            c.embed_dim,
            c.patch_size,
            c.num_params() as f64 / 1e6
        );
        Ok(Engine { model, device, adapter, describe })
    }

    /// The WebGPU adapter the model runs on.
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// The architecture, in words.
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// The patch size (input sides are centre-cropped to multiples of it).
    pub fn patch_size(&self) -> usize {
        self.model.config.patch_size
    }

    /// PCA of the patch features of an image (PNG or JPEG bytes): `size` as `dinov2 pca
    /// --size` (`eval`, N, `native`); `mask` splits foreground from background first.
    pub async fn pca(
        &self,
        image: Vec<u8>,
        name: String,
        size: String,
        mask: bool,
    ) -> Result<PcaResult, JsError> {
        let one = self.features(&image, &name, &size).await?;
        let d = self.model.config.embed_dim;
        let maps = pca::pca_maps(&[&one.patch], one.h, one.w, d, mask);
        let picture = pca::side_by_side(std::slice::from_ref(&one.prepared.rgb), &maps.maps);
        Ok(PcaResult { png: png(&picture)?, patch: one.patch, h: one.h, w: one.w, d })
    }

    /// The `top_k` most similar mutual nearest patches of two images, drawn.
    #[allow(clippy::too_many_arguments)]
    pub async fn matches(
        &self,
        a: Vec<u8>,
        a_name: String,
        b: Vec<u8>,
        b_name: String,
        size: String,
        top_k: usize,
    ) -> Result<MatchResult, JsError> {
        let fa = self.features(&a, &a_name, &size).await?;
        let fb = self.features(&b, &b_name, &size).await?;
        let d = self.model.config.embed_dim;
        let found = matching::mutual_nearest_neighbours(&fa.patch, &fb.patch, d, top_k);
        let picture = matching::draw_matches(
            &fa.prepared.rgb,
            &fb.prepared.rgb,
            &found,
            self.model.config.patch_size,
            fa.w,
            fb.w,
        );
        let mean = found.iter().map(|m| m.similarity).sum::<f32>() / found.len().max(1) as f32;
        Ok(MatchResult { png: png(&picture)?, matches: found.len(), mean_similarity: mean })
    }
}

impl Engine {
    async fn features(&self, bytes: &[u8], name: &str, size: &str) -> Result<OneImage, JsError> {
        let path = Path::new(name);
        let rgb = image::load_from_memory(bytes)
            .map_err(|e| js(format!("{name}: not a readable image: {e}")))?
            .to_rgb8();
        let prepared =
            prepare(path, rgb, Resize::parse(size).map_err(js)?, self.model.config.patch_size).map_err(js)?;
        let (h, w) = (prepared.height(), prepared.width());
        self.model.check_input(h, w).map_err(js)?;
        let input =
            Tensor::<4>::from_data(TensorData::new(prepared.pixels.clone(), [1, 3, h, w]), &self.device);
        let patch = self.model.forward_features(input).patch;
        let [_, gh, gw, _] = patch.dims();
        let data = patch.into_data_async().await.map_err(|e| js(format!("reading features back: {e:?}")))?;
        let patch = data.convert::<f32>().try_into_vec::<f32>().map_err(|e| js(format!("{e:?}")))?;
        Ok(OneImage { prepared, patch, h: gh, w: gw })
    }
}

fn png(image: &image::RgbImage) -> Result<Vec<u8>, JsError> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| js(format!("cannot encode PNG: {e}")))?;
    Ok(bytes)
}
