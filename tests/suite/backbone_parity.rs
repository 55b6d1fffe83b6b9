//! Parity of the backbone with the official DINOv2 code and HuggingFace transformers, through
//! the fixtures `tests/reference/make_fixtures.py` writes: small random-weight models (plain
//! MLP, SwiGLU, 4 registers) in both checkpoint formats, at the checkpoint's own grid and at
//! an interpolated non-square size. Tolerance: 1e-4 on ndarray, 1e-3 on wgpu (lavapipe).

use std::path::PathBuf;

use crate::common::*;
use burn::tensor::Device;
use dinov2_wgpu::checkpoint::{CheckpointKind, LoadOptions, read_backbone};
use dinov2_wgpu::config::PosInterpolation;
use dinov2_wgpu::data::preprocess::Resize;
use dinov2_wgpu::features::{EmbedOptions, embed_files};
use dinov2_wgpu::model::DinoVisionTransformer;

const SETS: [&str; 2] = ["native", "wide"];

fn images(set: &str) -> Vec<PathBuf> {
    (0..2).map(|i| fixtures().join(format!("images/{set}-{i}.png"))).collect()
}

/// Load `variant` in `format` ("official" .pth or "hf" folder), run both image sets, compare
/// with the reference outputs `expected` ("official" or "hf") within `tol`; returns the largest
/// error seen.
fn check(
    variant: &str,
    format: &str,
    expected: &str,
    options: LoadOptions,
    device: &Device,
    tol: f32,
) -> f32 {
    let path = match format {
        "official" => fixtures().join(format!("{variant}.pth")),
        _ => fixtures().join(format!("{variant}-hf")),
    };
    let weights = read_backbone(&path, &options).unwrap_or_else(|e| panic!("{e}"));
    let registers = weights.config.num_register_tokens;
    let model = DinoVisionTransformer::from_weights(&weights, device).unwrap();
    let reference = fixtures().join(format!("{variant}-{expected}.safetensors"));
    let mut worst = 0.0f32;
    for set in SETS {
        let options = EmbedOptions { resize: Resize::Native, batch_size: 2 };
        let f = embed_files(&model, &images(set), options, device, |_, _| {}, |_| {}).unwrap();
        let mut outputs =
            vec![("cls", vec![f.n, f.d], &f.cls), ("patch", vec![f.n, f.h, f.w, f.d], &f.patch)];
        if registers > 0 {
            outputs.push(("reg", vec![f.n, registers, f.d], &f.reg));
        } else {
            assert!(f.reg.is_empty());
        }
        for (name, shape, actual) in outputs {
            let (want_shape, want) = read_tensor(&reference, &format!("{set}.{name}"));
            assert_eq!(shape, want_shape, "{set}.{name}");
            worst = worst.max(max_abs_diff(actual, &want));
            assert_close(&format!("{variant} {format} {set} {name}"), actual, &want, tol);
        }
    }
    worst
}

macro_rules! parity {
    ($name:ident, $variant:literal, $format:literal, $device:ident, $tol:expr) => {
        #[test]
        fn $name() {
            check($variant, $format, $format, LoadOptions::default(), &$device(), $tol);
        }
    };
}

parity!(ndarray_plain_official, "plain", "official", ndarray_device, 1e-4);
parity!(ndarray_plain_hf, "plain", "hf", ndarray_device, 1e-4);
parity!(ndarray_swiglu_official, "swiglu", "official", ndarray_device, 1e-4);
parity!(ndarray_swiglu_hf, "swiglu", "hf", ndarray_device, 1e-4);
parity!(ndarray_reg4_official, "reg4", "official", ndarray_device, 1e-4);
parity!(ndarray_reg4_hf, "reg4", "hf", ndarray_device, 1e-4);
parity!(wgpu_plain_official, "plain", "official", wgpu_device, 1e-3);
parity!(wgpu_plain_hf, "plain", "hf", wgpu_device, 1e-3);
parity!(wgpu_swiglu_official, "swiglu", "official", wgpu_device, 1e-3);
parity!(wgpu_swiglu_hf, "swiglu", "hf", wgpu_device, 1e-3);
parity!(wgpu_reg4_official, "reg4", "official", wgpu_device, 1e-3);
parity!(wgpu_reg4_hf, "reg4", "hf", wgpu_device, 1e-3);

#[test]
fn interpolation_is_chosen_from_the_checkpoint_kind() {
    let kind_and_interp = |path: PathBuf| {
        let w = read_backbone(&path, &LoadOptions::default()).unwrap();
        (w.kind, w.config.interpolation)
    };
    use CheckpointKind::*;
    assert_eq!(kind_and_interp(fixtures().join("plain.pth")), (Official, PosInterpolation::OFFICIAL));
    assert_eq!(kind_and_interp(fixtures().join("reg4.pth")), (Official, PosInterpolation::ANTIALIAS));
    assert_eq!(kind_and_interp(fixtures().join("plain-hf")), (HuggingFace, PosInterpolation::SIZE));
    assert_eq!(kind_and_interp(fixtures().join("reg4-hf")), (HuggingFace, PosInterpolation::ANTIALIAS));
}

/// The override takes effect: the official checkpoint with HuggingFace's interpolation gives
/// HuggingFace's numbers, and (the fixtures differ there) not the official ones.
#[test]
fn interpolation_override_changes_the_result() {
    let device = ndarray_device();
    let options = LoadOptions { interpolation: Some(PosInterpolation::SIZE), ..Default::default() };
    check("plain", "official", "hf", options.clone(), &device, 1e-4);
    // against the official numbers, with no tolerance limit: how far off is it?
    let off = check("plain", "official", "official", options, &device, f32::INFINITY);
    assert!(off > 1e-2, "size-based interpolation reproduced the official numbers (max error {off})");
}
