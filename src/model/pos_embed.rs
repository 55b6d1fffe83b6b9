//! Position-embedding interpolation to any patch grid, exactly as PyTorch's
//! `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` computes it, in the
//! three forms DINOv2 checkpoints use (see [`PosInterpolation`]).
//!
//! Bicubic resampling is separable, so it is two small matrices: `out = Wh · grid · Wwᵀ` per
//! channel. The matrices are computed here on the host in f64 from the sizes alone (the same
//! index and weight rules as ATen's CPU kernels, `UpSampleKernel.cpp`), and applied on the
//! device with two matmuls, which keeps the operation differentiable for training at new
//! resolutions.
//!
//! # Shapes
//! - grid: `[M, M, D]` (the checkpoint's `pos_embed` without the CLS position)
//! - output: `[h, w, D]`

use burn::tensor::{Tensor, TensorData};

use crate::config::PosInterpolation;

/// Keys' cubic convolution kernel with parameter `a` (ATen: `cubic_convolution1/2`).
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// Row-major `[output, input]` weights of 1-D bicubic resampling.
///
/// `scale_factor`: the factor the caller passed to `interpolate` (the kernel then samples with
/// `1 / scale_factor`); `None` when an output size was passed (samples with `input / output`).
pub fn resample_weights(input: usize, output: usize, scale_factor: Option<f64>, antialias: bool) -> Vec<f64> {
    // area_pixel_compute_scale
    let scale = match scale_factor {
        Some(s) if s > 0.0 => 1.0 / s,
        _ => input as f64 / output as f64,
    };
    let mut weights = vec![0.0f64; output * input];
    for i in 0..output {
        let row = &mut weights[i * input..(i + 1) * input];
        if antialias {
            // _compute_indices_min_size_weights_aa with the bicubic aa_filter (a = -0.5): the
            // kernel widens by `scale` when downsampling and is renormalised to sum to 1.
            let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
            let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64).max(0) as usize;
            let mut total = 0.0;
            for j in xmin..xmax {
                let w = cubic((j as f64 - center + 0.5) * invscale, -0.5);
                row[j] = w;
                total += w;
            }
            if total != 0.0 {
                row[xmin..xmax].iter_mut().for_each(|w| *w /= total);
            }
        } else {
            // area_pixel_compute_source_index (cubic: no clamp) + guard_index_and_lambda, then
            // four taps at clamped indices (a = -0.75).
            let real = scale * (i as f64 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(input as i64 - 1);
            let t = (real - index as f64).clamp(0.0, 1.0);
            let coeffs =
                [cubic(t + 1.0, -0.75), cubic(t, -0.75), cubic(1.0 - t, -0.75), cubic(2.0 - t, -0.75)];
            for (k, c) in coeffs.iter().enumerate() {
                let j = (index - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
                row[j] += c;
            }
        }
    }
    weights
}

/// The `[h, M]` and `[w, M]` resampling matrices that take an `M x M` grid to `h x w`.
pub fn grid_weights(grid: usize, h: usize, w: usize, mode: PosInterpolation) -> (Vec<f64>, Vec<f64>) {
    match mode {
        PosInterpolation::ScaleFactor { offset } => {
            let sh = (h as f64 + offset) / grid as f64;
            let sw = (w as f64 + offset) / grid as f64;
            (resample_weights(grid, h, Some(sh), false), resample_weights(grid, w, Some(sw), false))
        }
        PosInterpolation::Size { antialias } => {
            (resample_weights(grid, h, None, antialias), resample_weights(grid, w, None, antialias))
        }
    }
}

/// Resample `grid` `[M, M, D]` to `[h, w, D]` on the grid's device.
pub fn interpolate_grid(grid: Tensor<3>, h: usize, w: usize, mode: PosInterpolation) -> Tensor<3> {
    let [m, m2, d] = grid.dims();
    debug_assert_eq!(m, m2, "position grid must be square");
    let device = grid.device();
    let (wh, ww) = grid_weights(m, h, w, mode);
    let to_tensor = |v: Vec<f64>, rows: usize| {
        let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
        Tensor::<2>::from_data(TensorData::new(v, [rows, m]), &device)
    };
    let wh = to_tensor(wh, h);
    let ww = to_tensor(ww, w);
    // rows: [h, M] @ [M, M*D] -> [h, M, D]
    let rows = wh.matmul(grid.reshape([m, m * d])).reshape([h, m, d]);
    // columns, batched over the h rows: [1, w, M] @ [h, M, D] -> [h, w, D]
    ww.unsqueeze::<3>().matmul(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_resampling_keeps_the_grid() {
        for antialias in [false, true] {
            let w = resample_weights(5, 5, None, antialias);
            for i in 0..5 {
                for j in 0..5 {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (w[i * 5 + j] - want).abs() < 1e-12,
                        "aa={antialias} ({i},{j}) = {}",
                        w[i * 5 + j]
                    );
                }
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (input, output) in [(37, 16), (4, 9), (16, 16), (37, 52)] {
            for (sf, aa) in [(None, false), (None, true), (Some((output as f64 + 0.1) / input as f64), false)]
            {
                let w = resample_weights(input, output, sf, aa);
                for i in 0..output {
                    let s: f64 = w[i * input..(i + 1) * input].iter().sum();
                    assert!((s - 1.0).abs() < 1e-9, "{input}->{output} {sf:?} {aa}: row {i} sums to {s}");
                }
            }
        }
    }
}
