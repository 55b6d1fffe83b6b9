//! Patch matching between two images: mutual nearest neighbours of L2-normalised patch
//! features by cosine similarity, strongest first.

use image::{Rgb, RgbImage, imageops};

use crate::eval::draw;

/// A match: patch index in A, patch index in B, cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchMatch {
    pub a: usize,
    pub b: usize,
    pub similarity: f32,
}

fn normalised(x: &[f32], d: usize) -> Vec<f32> {
    x.chunks_exact(d)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(move |v| v / norm)
        })
        .collect()
}

/// Mutual nearest neighbours between `a` `[na, d]` and `b` `[nb, d]`, sorted by similarity
/// (ties by index), at most `top_k`.
pub fn mutual_nearest_neighbours(a: &[f32], b: &[f32], d: usize, top_k: usize) -> Vec<PatchMatch> {
    let (a, b) = (normalised(a, d), normalised(b, d));
    let (na, nb) = (a.len() / d, b.len() / d);
    let mut best_for_a = vec![(f32::NEG_INFINITY, 0usize); na];
    let mut best_for_b = vec![(f32::NEG_INFINITY, 0usize); nb];
    for i in 0..na {
        let ra = &a[i * d..(i + 1) * d];
        for j in 0..nb {
            let s: f32 = ra.iter().zip(&b[j * d..(j + 1) * d]).map(|(x, y)| x * y).sum();
            if s > best_for_a[i].0 {
                best_for_a[i] = (s, j);
            }
            if s > best_for_b[j].0 {
                best_for_b[j] = (s, i);
            }
        }
    }
    let mut matches: Vec<PatchMatch> = (0..na)
        .filter_map(|i| {
            let (s, j) = best_for_a[i];
            (best_for_b[j].1 == i).then_some(PatchMatch { a: i, b: j, similarity: s })
        })
        .collect();
    matches.sort_by(|x, y| y.similarity.total_cmp(&x.similarity).then(x.a.cmp(&y.a)));
    matches.truncate(top_k);
    matches
}

/// The two images side by side with a line per match between patch centres.
pub fn draw_matches(
    a: &RgbImage,
    b: &RgbImage,
    matches: &[PatchMatch],
    patch: usize,
    grid_w_a: usize,
    grid_w_b: usize,
) -> RgbImage {
    let gap = 16u32;
    let width = a.width() + gap + b.width();
    let height = a.height().max(b.height());
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    imageops::replace(&mut canvas, a, 0, 0);
    imageops::replace(&mut canvas, b, (a.width() + gap) as i64, 0);
    let centre = |idx: usize, grid_w: usize, x0: i64| {
        let (y, x) = (idx / grid_w, idx % grid_w);
        (x0 + (x * patch + patch / 2) as i64, (y * patch + patch / 2) as i64)
    };
    let thickness = (a.width().max(b.width()) as i64 / 224).max(1);
    for (rank, m) in matches.iter().enumerate() {
        let color = draw::hue(rank, matches.len());
        let from = centre(m.a, grid_w_a, 0);
        let to = centre(m.b, grid_w_b, (a.width() + gap) as i64);
        draw::line(&mut canvas, from, to, color, thickness);
        draw::dot(&mut canvas, from, color, thickness + 1);
        draw::dot(&mut canvas, to, color, thickness + 1);
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_permuted_copies() {
        // b is a permutation of a (plus a distractor row); every row must match its copy
        let d = 8;
        let a: Vec<f32> = (0..5 * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) + if i % d == i / d { 9.0 } else { 0.0 })
            .collect();
        let perm = [3usize, 0, 4, 1, 2];
        let mut b = Vec::new();
        for &p in &perm {
            b.extend_from_slice(&a[p * d..(p + 1) * d]);
        }
        let matches = mutual_nearest_neighbours(&a, &b, d, 100);
        assert_eq!(matches.len(), 5);
        for m in &matches {
            assert_eq!(perm[m.b], m.a);
            assert!((m.similarity - 1.0).abs() < 1e-5);
        }
        assert_eq!(mutual_nearest_neighbours(&a, &b, d, 2).len(), 2);
    }
}
