//! The default evaluation transform against the official one (torchvision's Resize(256,
//! bicubic) on PIL and CenterCrop(224), fixture `eval_transform.safetensors`). The resampling
//! filters differ in rounding, so this bounds the difference in grey levels; a wrong size,
//! crop offset or filter gives differences of tens of levels.

use std::path::Path;

use crate::common::*;
use dinov2_wgpu::data::preprocess::{Resize, load_rgb, prepare};

#[test]
fn eval_transform_matches_torchvision() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/images");
    for name in ["coffee.jpg", "astronaut.jpg"] {
        let path = assets.join(name);
        let ours = prepare(&path, load_rgb(&path).unwrap(), Resize::Eval, 14).unwrap();
        let (shape, want) = read_u8(&fixtures().join("eval_transform.safetensors"), name);
        assert_eq!(shape, vec![224, 224, 3]);
        assert_eq!(ours.rgb.dimensions(), (224, 224));
        let diffs: Vec<i32> =
            ours.rgb.as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let off = diffs.iter().filter(|&&d| d > 2).count() as f64 / diffs.len() as f64;
        eprintln!("{name}: grey-level difference mean {mean:.3}, max {max}, share > 2: {off:.4}");
        assert!(
            mean < 0.5 && off < 0.01,
            "{name}: mean {mean:.3}, share of pixels off by > 2 levels {off:.4}"
        );
    }
}
