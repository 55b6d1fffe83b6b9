//! Principal components of patch features, as in the DINOv2 paper's figure 1: the first
//! component separates foreground from background; the first three components of the
//! (foreground) patches, each min-max scaled, become red, green and blue.

use image::{Rgb, RgbImage, imageops};

/// The top `k` principal directions of `n` rows of width `d` (row-major), by power iteration
/// with deflation on the covariance matrix, in f64. Returns the mean and the unit directions,
/// largest variance first; each direction's sign makes its largest-magnitude entry positive.
pub fn principal_components(x: &[f32], n: usize, d: usize, k: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(x.len(), n * d, "rows x width");
    if n == 0 {
        return (vec![0.0; d], Vec::new());
    }
    let mut mean = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut cov = vec![0.0f64; d * d];
    let mut centred = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        for (c, (&v, m)) in centred.iter_mut().zip(row.iter().zip(&mean)) {
            *c = v as f64 - m;
        }
        for i in 0..d {
            let ci = centred[i];
            if ci == 0.0 {
                continue;
            }
            let line = &mut cov[i * d..(i + 1) * d];
            for (c, &cj) in line.iter_mut().zip(&centred) {
                *c += ci * cj;
            }
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::with_capacity(k);
    for _ in 0..k.min(d) {
        // deterministic start, not orthogonal to any particular direction
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * 7919) % 13) as f64 / 13.0).collect();
        let mut previous = f64::NAN;
        for _ in 0..1000 {
            for c in &components {
                let dot: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            v.iter_mut().for_each(|a| *a /= norm);
            let mut next = vec![0.0f64; d];
            for (i, out) in next.iter_mut().enumerate() {
                *out = cov[i * d..(i + 1) * d].iter().zip(&v).map(|(a, b)| a * b).sum();
            }
            let eigen: f64 = next.iter().zip(&v).map(|(a, b)| a * b).sum();
            v = next;
            if (eigen - previous).abs() <= 1e-12 * eigen.abs() {
                break;
            }
            previous = eigen;
        }
        for c in &components {
            let dot: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        v.iter_mut().for_each(|a| *a /= norm);
        let largest = v.iter().copied().fold(0.0f64, |m, a| if a.abs() > m.abs() { a } else { m });
        if largest < 0.0 {
            v.iter_mut().for_each(|a| *a = -*a);
        }
        components.push(v);
    }
    (mean, components)
}

/// Project rows onto components: `[n, k]`.
pub fn project(x: &[f32], d: usize, mean: &[f64], components: &[Vec<f64>]) -> Vec<Vec<f64>> {
    x.chunks_exact(d)
        .map(|row| {
            components
                .iter()
                .map(|c| row.iter().zip(mean).zip(c).map(|((&v, m), c)| (v as f64 - m) * c).sum())
                .collect()
        })
        .collect()
}

/// The PCA picture of several images' patch grids, fitted jointly so that the same parts
/// get the same colours across images.
pub struct PcaMaps {
    /// One `w x h` RGB map per image (one pixel per patch).
    pub maps: Vec<RgbImage>,
    /// Per image, which patches are foreground (all true without the mask).
    pub foreground: Vec<Vec<bool>>,
}

/// `patches[i]` is image i's `[h*w, d]` features. With `mask`, the first component splits
/// foreground from background (the side touching the image border less is foreground), the
/// RGB components are fitted on foreground patches only, and background is black.
pub fn pca_maps(patches: &[&[f32]], h: usize, w: usize, d: usize, mask: bool) -> PcaMaps {
    let all: Vec<f32> = patches.iter().flat_map(|p| p.iter().copied()).collect();
    let n = all.len() / d;
    let foreground: Vec<bool> = if mask {
        let (mean, first) = principal_components(&all, n, d, 1);
        let score: Vec<f64> = project(&all, d, &mean, &first).into_iter().map(|p| p[0]).collect();
        let border = |idx: usize| {
            let cell = idx % (h * w);
            let (y, x) = (cell / w, cell % w);
            y == 0 || x == 0 || y == h - 1 || x == w - 1
        };
        let positive_on_border = (0..n).filter(|&i| border(i) && score[i] > 0.0).count();
        let border_count = (0..n).filter(|&i| border(i)).count();
        let foreground_positive = positive_on_border * 2 <= border_count;
        score.iter().map(|&s| (s > 0.0) == foreground_positive).collect()
    } else {
        vec![true; n]
    };
    // A mask that keeps nothing (one patch, or a constant first component) keeps everything.
    let foreground = if foreground.iter().any(|&f| f) { foreground } else { vec![true; n] };
    let fg_rows: Vec<f32> = all
        .chunks_exact(d)
        .zip(&foreground)
        .filter(|(_, f)| **f)
        .flat_map(|(r, _)| r.iter().copied())
        .collect();
    let fg_n = fg_rows.len() / d;
    let (mean, comps) = principal_components(&fg_rows, fg_n, d, 3);
    let proj = project(&all, d, &mean, &comps);
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for (p, _) in proj.iter().zip(&foreground).filter(|(_, f)| **f) {
        for c in 0..p.len() {
            lo[c] = lo[c].min(p[c]);
            hi[c] = hi[c].max(p[c]);
        }
    }
    let mut maps = Vec::with_capacity(patches.len());
    let mut masks = Vec::with_capacity(patches.len());
    for (i, _) in patches.iter().enumerate() {
        let mut map = RgbImage::new(w as u32, h as u32);
        let mut fg = Vec::with_capacity(h * w);
        for cell in 0..h * w {
            let idx = i * h * w + cell;
            let mut px = [0u8; 3];
            if foreground[idx] {
                for c in 0..proj[idx].len() {
                    let range = (hi[c] - lo[c]).max(1e-12);
                    px[c] = (((proj[idx][c] - lo[c]) / range).clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
            map.put_pixel((cell % w) as u32, (cell / w) as u32, Rgb(px));
            fg.push(foreground[idx]);
        }
        maps.push(map);
        masks.push(fg);
    }
    PcaMaps { maps, foreground: masks }
}

/// Rows of `[image | PCA map]`, the map upsampled (nearest: one block per patch) to the image.
pub fn side_by_side(images: &[RgbImage], maps: &[RgbImage]) -> RgbImage {
    let gap = 4u32;
    let width = images.iter().map(|i| 2 * i.width() + gap).max().unwrap_or(1);
    let height = images.iter().map(|i| i.height() + gap).sum::<u32>().max(1);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = 0;
    for (img, map) in images.iter().zip(maps) {
        let up = imageops::resize(map, img.width(), img.height(), imageops::FilterType::Nearest);
        imageops::replace(&mut canvas, img, 0, y as i64);
        imageops::replace(&mut canvas, &up, (img.width() + gap) as i64, y as i64);
        y += img.height() + gap;
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data built from known orthogonal directions with known variances: PCA must find them
    /// in order of variance. The per-row coefficients are sinusoids of different frequencies,
    /// exactly orthogonal and zero-mean over the rows, so the sample covariance is exactly
    /// `sum_k (s_k^2 / 2) d_k d_kᵀ`.
    #[test]
    fn recovers_planted_directions() {
        let (d, n) = (16, 400);
        let mut dirs = vec![vec![0.0f64; d]; 3];
        for (k, dir) in dirs.iter_mut().enumerate() {
            for (i, v) in dir.iter_mut().enumerate() {
                *v = if i / 4 == k { if i % 2 == 0 { 0.5 } else { -0.5 } } else { 0.0 };
            }
        }
        let stds = [5.0, 3.0, 1.5];
        let mut x = Vec::with_capacity(n * d);
        for t in 0..n {
            let phase = 2.0 * std::f64::consts::PI * t as f64 / n as f64;
            let coeffs =
                [stds[0] * (phase).cos(), stds[1] * (2.0 * phase).cos(), stds[2] * (3.0 * phase).sin()];
            for i in 0..d {
                let v: f64 = (0..3).map(|k| coeffs[k] * dirs[k][i]).sum::<f64>() + 2.0;
                x.push(v as f32);
            }
        }
        let (mean, comps) = principal_components(&x, n, d, 3);
        assert!(mean.iter().all(|m| (m - 2.0).abs() < 1e-5));
        for k in 0..3 {
            let cos: f64 = comps[k].iter().zip(&dirs[k]).map(|(a, b)| a * b).sum();
            assert!(cos.abs() > 0.99999, "component {k}: |cos| = {}", cos.abs());
        }
    }

    /// Foreground-mask split: a centre block of patches with one kind of feature on a border of
    /// another. The first component separates them; the side touching the border is background.
    #[test]
    fn foreground_mask_keeps_the_centre() {
        let (h, w, d) = (6, 8, 5);
        let mut feats = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let centre = (2..4).contains(&y) && (2..6).contains(&x);
                let jitter = ((y * w + x) % 3) as f32 * 0.01;
                let row = if centre { [3.0, 0.0, 1.0, jitter, 0.0] } else { [0.0, 2.0, 1.0, 0.0, jitter] };
                feats.extend_from_slice(&row[..d]);
            }
        }
        let maps = pca_maps(&[&feats], h, w, d, true);
        for y in 0..h {
            for x in 0..w {
                let centre = (2..4).contains(&y) && (2..6).contains(&x);
                assert_eq!(maps.foreground[0][y * w + x], centre, "patch ({y}, {x})");
                if !centre {
                    assert_eq!(
                        maps.maps[0].get_pixel(x as u32, y as u32).0,
                        [0, 0, 0],
                        "background ({y}, {x})"
                    );
                }
            }
        }
        // one patch: nothing to split, no panic, everything kept
        let one = pca_maps(&[&feats[..d]], 1, 1, d, true);
        assert_eq!(one.foreground, vec![vec![true]]);
    }
}
