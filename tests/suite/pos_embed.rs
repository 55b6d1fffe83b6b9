//! Position-embedding interpolation against `torch.nn.functional.interpolate` (fixture
//! `interp.safetensors` from tests/reference/make_fixtures.py): scale-factor form with the
//! 0.1 offset, size form, size form with antialias; grids up- and down-sampled, non-square.

use crate::common::*;
use burn::tensor::{Tensor, TensorData};
use dinov2_wgpu::config::PosInterpolation;
use dinov2_wgpu::model::pos_embed::interpolate_grid;

/// PyTorch computes in f32 (the scale factor, the cubic weights, the sums); we compute the
/// weights in f64 and apply them in f32. Values are N(0, 1), so this is ~1e-5 relative.
const TOL: f32 = 5e-5;

const CASES: [(usize, usize, usize); 6] =
    [(37, 16, 16), (37, 16, 23), (37, 52, 40), (37, 37, 37), (4, 3, 5), (4, 9, 2)];
const MODES: [(&str, PosInterpolation); 3] = [
    ("offset", PosInterpolation::OFFICIAL),
    ("size", PosInterpolation::SIZE),
    ("size_aa", PosInterpolation::ANTIALIAS),
];

/// [C, H, W] -> [H, W, C]
fn chw_to_hwc(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for ci in 0..c {
        for i in 0..h * w {
            out[i * c + ci] = x[ci * h * w + i];
        }
    }
    out
}

#[test]
fn device_matches_pytorch() {
    let device = ndarray_device();
    let file = fixtures().join("interp.safetensors");
    for (m, h, w) in CASES {
        let (shape, input) = read_tensor(&file, &format!("{m}-{h}x{w}.input"));
        let c = shape[0];
        let grid = Tensor::<3>::from_data(TensorData::new(chw_to_hwc(&input, c, m, m), [m, m, c]), &device);
        for (name, mode) in MODES {
            let (_, expected) = read_tensor(&file, &format!("{m}-{h}x{w}.{name}"));
            let actual = dinov2_wgpu::features::to_host(interpolate_grid(grid.clone(), h, w, mode)).unwrap();
            assert_close(
                &format!("device {m}->{h}x{w} {name}"),
                &actual,
                &chw_to_hwc(&expected, c, h, w),
                TOL,
            );
        }
    }
}
