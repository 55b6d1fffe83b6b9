//! Parity of the backbone with the official DINOv2 code and HuggingFace transformers, through
//! the fixtures `tests/reference/make_fixtures.py` writes: small random-weight models (plain
//! MLP, SwiGLU, 4 registers) in both checkpoint formats, at the checkpoint's own grid and at
//! an interpolated non-square size. Tolerance: 1e-4 on ndarray, 1e-3 on wgpu (lavapipe).

mod common;

use std::path::PathBuf;

use burn::tensor::Device;
use common::*;
use dinov2_wgpu::checkpoint::{CheckpointKind, LoadOptions, read_backbone};
use dinov2_wgpu::config::PosInterpolation;
use dinov2_wgpu::data::preprocess::Resize;
use dinov2_wgpu::features::{EmbedOptions, embed_files};
use dinov2_wgpu::model::DinoVisionTransformer;

const SETS: [&str; 2] = ["native", "wide"];

fn images(set: &str) -> Vec<PathBuf> {
    (0..2)
        .map(|i| fixtures().join(format!("images/{set}-{i}.png")))
        .collect()
}

/// Load `variant` in `format` ("official" .pth or "hf" folder), run both image sets, compare
/// with the reference outputs `expected` ("official" or "hf").
fn check(
    variant: &str,
    format: &str,
    expected: &str,
    options: LoadOptions,
    device: &Device,
    tol: f32,
) {
    let path = match format {
        "official" => fixtures().join(format!("{variant}.pth")),
        _ => fixtures().join(format!("{variant}-hf")),
    };
    let weights = read_backbone(&path, &options).unwrap_or_else(|e| panic!("{e}"));
    let registers = weights.config.num_register_tokens;
    let model = DinoVisionTransformer::from_weights(&weights, device).unwrap();
    let reference = fixtures().join(format!("{variant}-{expected}.safetensors"));
    for set in SETS {
        let options = EmbedOptions {
            resize: Resize::Native,
            batch_size: 2,
        };
        let f = embed_files(&model, &images(set), options, device, |_, _| {}, |_| {}).unwrap();
        let (shape, cls) = read_tensor(&reference, &format!("{set}.cls"));
        assert_eq!(shape, vec![f.n, f.d]);
        assert_close(&format!("{variant} {format} {set} cls"), &f.cls, &cls, tol);
        let (shape, patch) = read_tensor(&reference, &format!("{set}.patch"));
        assert_eq!(shape, vec![f.n, f.h, f.w, f.d]);
        assert_close(
            &format!("{variant} {format} {set} patch"),
            &f.patch,
            &patch,
            tol,
        );
        if registers > 0 {
            let (shape, reg) = read_tensor(&reference, &format!("{set}.reg"));
            assert_eq!(shape, vec![f.n, registers, f.d]);
            assert_close(&format!("{variant} {format} {set} reg"), &f.reg, &reg, tol);
        } else {
            assert!(f.reg.is_empty());
        }
    }
}

macro_rules! parity {
    ($name:ident, $variant:literal, $format:literal, $device:ident, $tol:expr) => {
        #[test]
        fn $name() {
            check(
                $variant,
                $format,
                $format,
                LoadOptions::default(),
                &$device(),
                $tol,
            );
        }
    };
}

parity!(
    ndarray_plain_official,
    "plain",
    "official",
    ndarray_device,
    1e-4
);
parity!(ndarray_plain_hf, "plain", "hf", ndarray_device, 1e-4);
parity!(
    ndarray_swiglu_official,
    "swiglu",
    "official",
    ndarray_device,
    1e-4
);
parity!(ndarray_swiglu_hf, "swiglu", "hf", ndarray_device, 1e-4);
parity!(
    ndarray_reg4_official,
    "reg4",
    "official",
    ndarray_device,
    1e-4
);
parity!(ndarray_reg4_hf, "reg4", "hf", ndarray_device, 1e-4);
parity!(wgpu_plain_official, "plain", "official", wgpu_device, 1e-3);
parity!(wgpu_plain_hf, "plain", "hf", wgpu_device, 1e-3);
parity!(
    wgpu_swiglu_official,
    "swiglu",
    "official",
    wgpu_device,
    1e-3
);
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
    assert_eq!(
        kind_and_interp(fixtures().join("plain.pth")),
        (Official, PosInterpolation::OFFICIAL)
    );
    assert_eq!(
        kind_and_interp(fixtures().join("reg4.pth")),
        (Official, PosInterpolation::ANTIALIAS)
    );
    assert_eq!(
        kind_and_interp(fixtures().join("plain-hf")),
        (HuggingFace, PosInterpolation::SIZE)
    );
    assert_eq!(
        kind_and_interp(fixtures().join("reg4-hf")),
        (HuggingFace, PosInterpolation::ANTIALIAS)
    );
}

/// The override takes effect: the official checkpoint with HuggingFace's interpolation gives
/// HuggingFace's numbers, and (the fixtures differ there) not the official ones.
#[test]
fn interpolation_override_changes_the_result() {
    let device = ndarray_device();
    let options = LoadOptions {
        interpolation: Some(PosInterpolation::SIZE),
        ..Default::default()
    };
    check("plain", "official", "hf", options.clone(), &device, 1e-4);
    let failed = std::panic::catch_unwind(|| {
        check(
            "plain",
            "official",
            "official",
            options,
            &ndarray_device(),
            1e-4,
        )
    });
    assert!(
        failed.is_err(),
        "the official numbers must not be reproduced with size-based interpolation"
    );
}
