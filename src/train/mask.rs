//! iBOT block masking, ported from the official code: `dinov2/data/masking.py`
//! (`MaskingGenerator`, BEiT's block-wise masking) and the mask part of `dinov2/data/collate.py`
//! (`collate_data_and_cast`).
//!
//! A mask of K patches grows block by block. Each block draws a target area
//! `A ~ U(min_num_patches, m)` with `m = min(K - masked, max_num_patches)` and an aspect ratio
//! `r = exp(U(ln 0.3, ln 1/0.3))`, is `round(sqrt(A r))` rows by `round(sqrt(A / r))` columns
//! (Python's `round`: half to even), strictly narrower and shorter than the grid, at a uniform
//! position, and is kept when it adds between 1 and `m` new patches; 10 draws per block, and the
//! mask stops growing when all 10 fail. Hence:
//! - a mask never has more than K patches, and can have fewer (the last few patches often fit
//!   no block within 10 draws);
//! - a block need not reach `min_num_patches`: `A = 4, r = 2.25` rounds to 3 x 1; and when
//!   fewer than 4 patches are still wanted, `A` is drawn between that and 4.
//!
//! Per batch, `int(B * mask_probability)` of the B global crops are masked, with ratios
//! stratified over `linspace(ratio_min, ratio_max, n_masked + 1)`: image i targets
//! `int(N * U(probs[i], probs[i + 1]))` of its N patches. The masks are then shuffled.
//!
//! # Shapes
//! - a mask: `height * width` bools, row-major (patch `(i, j)` at `i * width + j`), one image's
//!   row of the official `collated_masks.flatten(1)`.
//! - weights: one f32 per masked patch, in the order of the masks flattened one after another.

use rand::Rng;
use rand::seq::SliceRandom;

/// Draws per block before the official generator gives up growing a mask.
const BLOCK_ATTEMPTS: usize = 10;

/// The official `MaskingGenerator` for a `height x width` grid of patches.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskGenerator {
    /// Patch rows.
    pub height: usize,
    /// Patch columns.
    pub width: usize,
    /// Lower end of a block's target area (official 4).
    pub min_num_patches: usize,
    /// Upper end of a block's target area (official: half the grid, see [`MaskGenerator::new`]).
    pub max_num_patches: usize,
    /// Range of `ln(rows / columns)` of a block (official `(ln 0.3, ln 1/0.3)`).
    pub log_aspect_ratio: (f64, f64),
}

impl MaskGenerator {
    /// The official generator for an `height x width` patch grid: `min_num_patches = 4`,
    /// aspect ratios 0.3 to 1/0.3, and `max_num_patches = (height / 2) * width` (integer
    /// division). train.py writes `0.5 * img_size // patch_size * img_size // patch_size`,
    /// which Python evaluates left to right: `floor(h / 2) * h` for an `h x h` grid, the half
    /// `h * h / 2` exactly when h is even (16 x 16 at 224 / 14 gives 128), one row's half less
    /// when h is odd.
    pub fn new(height: usize, width: usize) -> Self {
        let min_aspect: f64 = 0.3;
        MaskGenerator {
            height,
            width,
            min_num_patches: 4,
            max_num_patches: height / 2 * width,
            log_aspect_ratio: (min_aspect.ln(), (1.0 / min_aspect).ln()),
        }
    }

    /// Patches in the grid.
    pub fn num_patches(&self) -> usize {
        self.height * self.width
    }

    /// One mask of at most `num_masking_patches` patches (official `__call__`): blocks are
    /// added until that many are masked or a block cannot be placed in 10 draws.
    pub fn generate(&self, num_masking_patches: usize, rng: &mut impl Rng) -> Vec<bool> {
        let mut mask = vec![false; self.num_patches()];
        let mut mask_count = 0;
        while mask_count < num_masking_patches {
            let max_mask_patches = (num_masking_patches - mask_count).min(self.max_num_patches);
            let added = self.add_block(&mut mask, max_mask_patches, rng);
            if added == 0 {
                break;
            }
            mask_count += added;
        }
        mask
    }

    /// Official `_mask`: masks one block adding 1 to `max_mask_patches` new patches and returns
    /// how many it added, or 0 when none of the 10 draws fits.
    fn add_block(&self, mask: &mut [bool], max_mask_patches: usize, rng: &mut impl Rng) -> usize {
        for _ in 0..BLOCK_ATTEMPTS {
            let target_area = uniform(rng, self.min_num_patches as f64, max_mask_patches as f64);
            let aspect_ratio = uniform(rng, self.log_aspect_ratio.0, self.log_aspect_ratio.1).exp();
            let (rows, cols) = block_shape(target_area, aspect_ratio);
            // strict: the official block never spans the whole grid in either direction
            if cols < self.width && rows < self.height {
                let top = rng.random_range(0..=self.height - rows);
                let left = rng.random_range(0..=self.width - cols);
                let already_masked: usize = (top..top + rows)
                    .map(|i| {
                        mask[i * self.width + left..i * self.width + left + cols]
                            .iter()
                            .filter(|&&m| m)
                            .count()
                    })
                    .sum();
                let new_patches = rows * cols - already_masked;
                if 0 < new_patches && new_patches <= max_mask_patches {
                    for i in top..top + rows {
                        mask[i * self.width + left..i * self.width + left + cols].fill(true);
                    }
                    return new_patches;
                }
            }
        }
        0
    }
}

/// Rows and columns of a block of `target_area` patches and aspect ratio rows / columns, with
/// the official `int(round(...))` (Python rounds half to even).
fn block_shape(target_area: f64, aspect_ratio: f64) -> (usize, usize) {
    let rows = (target_area * aspect_ratio).sqrt().round_ties_even();
    let cols = (target_area / aspect_ratio).sqrt().round_ties_even();
    (rows as usize, cols as usize)
}

/// Python's `random.uniform(a, b)`: `a + (b - a) * U[0, 1)`, also for `b < a`.
fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// `torch.linspace(start, end, steps)` in f32 as the CPU kernel computes it: the first half
/// counts up from `start`, the second half down from `end`, so both ends are exact.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
        .collect()
}

/// Masks for `n_images` global crops as `collate_data_and_cast` makes them:
/// `int(n_images * mask_probability)` images masked with ratios stratified over
/// `linspace(mask_ratio.0, mask_ratio.1, n_masked + 1)` (image i targets
/// `int(N * U(probs[i], probs[i + 1]))` of the grid's N patches), the rest unmasked, then the
/// list shuffled. The ratios are f32 as in the official code (`probs` is a float32 tensor).
///
/// # Panics
/// If `mask_probability` is outside [0, 1].
pub fn collate_masks(
    n_images: usize,
    generator: &MaskGenerator,
    mask_ratio: (f64, f64),
    mask_probability: f64,
    rng: &mut impl Rng,
) -> Vec<Vec<bool>> {
    assert!((0.0..=1.0).contains(&mask_probability), "mask probability {mask_probability} is not in [0, 1]");
    let n_tokens = generator.num_patches();
    // Python's int() truncates
    let n_masked = (n_images as f64 * mask_probability) as usize;
    let probs = linspace_f32(mask_ratio.0 as f32, mask_ratio.1 as f32, n_masked + 1);
    let mut masks = Vec::with_capacity(n_images);
    for i in 0..n_masked {
        let (prob_min, prob_max) = (probs[i], probs[i + 1]);
        let ratio = prob_min + (prob_max - prob_min) * rng.random::<f64>() as f32;
        masks.push(generator.generate((n_tokens as f32 * ratio) as usize, rng));
    }
    for _ in n_masked..n_images {
        masks.push(generator.generate(0, rng));
    }
    masks.shuffle(rng);
    masks
}

/// Per masked patch, `1 / (masked patches of its image)`, in the order of the flattened masks
/// (official `masks_weight`), so every masked image weighs 1 in the iBOT loss.
pub fn mask_weights(masks: &[Vec<bool>]) -> Vec<f32> {
    let mut weights = Vec::with_capacity(masks.iter().flatten().filter(|&&m| m).count());
    for mask in masks {
        let masked = mask.iter().filter(|&&m| m).count();
        weights.extend(std::iter::repeat_n(1.0 / masked.max(1) as f32, masked));
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn count(mask: &[bool]) -> usize {
        mask.iter().filter(|&&m| m).count()
    }

    /// Bounding box of the masked cells: (top, left, rows, cols).
    fn bounding_box(mask: &[bool], width: usize) -> (usize, usize, usize, usize) {
        let cells: Vec<(usize, usize)> =
            mask.iter().enumerate().filter(|(_, m)| **m).map(|(k, _)| (k / width, k % width)).collect();
        let top = cells.iter().map(|c| c.0).min().unwrap();
        let bottom = cells.iter().map(|c| c.0).max().unwrap();
        let left = cells.iter().map(|c| c.1).min().unwrap();
        let right = cells.iter().map(|c| c.1).max().unwrap();
        (top, left, bottom - top + 1, right - left + 1)
    }

    #[test]
    fn python_rounding_half_to_even() {
        // sqrt(6.25) = 2.5 rounds to 2, sqrt(12.25) = 3.5 to 4, as Python's round does
        assert_eq!(block_shape(6.25, 1.0), (2, 2));
        assert_eq!(block_shape(12.25, 1.0), (4, 4));
        assert_eq!(block_shape(4.0, 4.0), (4, 1));
    }

    #[test]
    fn blocks_can_fall_below_min_num_patches() {
        // over the official ranges a block has at least 3 patches, and 3 does occur: the
        // promise of min_num_patches = 4 holds for the target area, not for the rounded block
        let generator = MaskGenerator::new(16, 16);
        let (lo, hi) = generator.log_aspect_ratio;
        let mut smallest = usize::MAX;
        for a in 0..=400 {
            let area = 4.0 + 124.0 * a as f64 / 400.0;
            for r in 0..=400 {
                let (rows, cols) = block_shape(area, (lo + (hi - lo) * r as f64 / 400.0).exp());
                smallest = smallest.min(rows * cols);
            }
        }
        assert_eq!(smallest, 3);
    }

    #[test]
    fn one_block_is_a_solid_rectangle_of_a_drawable_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (height, width) in [(16, 16), (7, 7), (5, 9), (37, 37)] {
            let generator = MaskGenerator::new(height, width);
            let (min_aspect, max_aspect) =
                (generator.log_aspect_ratio.0.exp(), generator.log_aspect_ratio.1.exp());
            for max_mask_patches in [1, 2, 3, 4, 5, 10, 30, generator.max_num_patches] {
                for _ in 0..200 {
                    let mut mask = vec![false; height * width];
                    let added = generator.add_block(&mut mask, max_mask_patches, &mut rng);
                    assert_eq!(added, count(&mask));
                    if added == 0 {
                        continue;
                    }
                    assert!(added <= max_mask_patches, "{added} > {max_mask_patches}");
                    let (_, _, rows, cols) = bounding_box(&mask, width);
                    assert_eq!(rows * cols, added, "masked cells are not one filled rectangle");
                    assert!(rows < height && cols < width, "{rows}x{cols} spans the {height}x{width} grid");
                    // rows = round(sqrt(A r)), cols = round(sqrt(A / r)) for some A in the area
                    // range and r in the aspect range: A r in [(rows - .5)^2, (rows + .5)^2] ...
                    let (rf, cf) = (rows as f64, cols as f64);
                    let aspect = ((rf - 0.5) / (cf + 0.5), (rf + 0.5) / (cf - 0.5));
                    assert!(aspect.0 <= max_aspect && aspect.1 >= min_aspect, "{rows}x{cols}");
                    let area = ((rf - 0.5) * (cf - 0.5), (rf + 0.5) * (cf + 0.5));
                    let drawn = (
                        generator.min_num_patches.min(max_mask_patches) as f64,
                        generator.min_num_patches.max(max_mask_patches) as f64,
                    );
                    assert!(area.0 <= drawn.1 && area.1 >= drawn.0, "{rows}x{cols} for {drawn:?}");
                    if max_mask_patches >= generator.min_num_patches {
                        assert!(added >= 3, "{rows}x{cols}");
                    }
                }
            }
        }
    }

    #[test]
    fn never_more_than_asked_and_close_to_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let generator = MaskGenerator::new(16, 16);
        let (mut asked, mut got) = (0, 0);
        for num in 0..=generator.max_num_patches {
            for _ in 0..20 {
                let masked = count(&generator.generate(num, &mut rng));
                assert!(masked <= num, "{masked} masked for {num} asked");
                if num >= 25 {
                    // at least the first block lands (ratio 0.1 of 256 patches and up)
                    assert!(masked >= 3, "{masked} masked for {num} asked");
                }
                asked += num;
                got += masked;
            }
        }
        // the undershoot is the last few patches that fit no block in 10 draws (over 25 800
        // masks at most 4 patches, 99.9 % of what was asked in all)
        let fill = got as f64 / asked as f64;
        assert!(fill > 0.99, "masked {fill} of what was asked");
    }

    #[test]
    fn a_degenerate_grid_masks_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // a block must be strictly narrower than the grid: nothing fits in one column
        let generator = MaskGenerator::new(8, 1);
        assert_eq!(count(&generator.generate(4, &mut rng)), 0);
        // 1x1 grid: max_num_patches = 0 as train.py computes it
        assert_eq!(MaskGenerator::new(1, 1).max_num_patches, 0);
        assert_eq!(count(&MaskGenerator::new(1, 1).generate(1, &mut rng)), 0);
    }

    #[test]
    fn max_num_patches_as_train_py_computes_it() {
        // 0.5 * img_size // patch_size * img_size // patch_size, left to right, for a few sizes
        for (img_size, patch_size) in [(224usize, 14usize), (518, 14), (28, 4), (28, 14), (98, 14)] {
            let python = ((0.5 * img_size as f64 / patch_size as f64).floor() * img_size as f64
                / patch_size as f64)
                .floor() as usize;
            let side = img_size / patch_size;
            assert_eq!(MaskGenerator::new(side, side).max_num_patches, python, "{img_size}/{patch_size}");
        }
    }

    #[test]
    fn linspace_matches_torch_ends() {
        let probs = linspace_f32(0.1, 0.5, 33);
        assert_eq!(probs.len(), 33);
        assert_eq!(probs[0], 0.1);
        assert_eq!(probs[32], 0.5);
        assert!(probs.windows(2).all(|w| w[0] < w[1]));
        assert!((probs[16] - 0.3).abs() < 1e-6);
        assert_eq!(linspace_f32(0.1, 0.5, 1), vec![0.1]);
    }

    #[test]
    fn collate_masks_the_stratified_share() {
        let generator = MaskGenerator::new(16, 16);
        let n_tokens = generator.num_patches();
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n_images = 64;
            let masks = collate_masks(n_images, &generator, (0.1, 0.5), 0.5, &mut rng);
            assert_eq!(masks.len(), n_images);
            assert!(masks.iter().all(|m| m.len() == n_tokens));
            let mut counts: Vec<usize> = masks.iter().map(|m| count(m)).filter(|&c| c > 0).collect();
            assert_eq!(counts.len(), 32, "seed {seed}");
            counts.sort_unstable();
            let probs = linspace_f32(0.1, 0.5, 33);
            for (i, &c) in counts.iter().enumerate() {
                // the i-th smallest target lies in the i-th stratum; the generator never
                // overshoots and undershoots by a few patches (at most 3 over 2000 batches)
                let low = (n_tokens as f32 * probs[i]) as usize;
                let high = (n_tokens as f32 * probs[i + 1]) as usize;
                assert!(c <= high, "seed {seed}: image {i} has {c} > {high}");
                assert!(c + 4 >= low, "seed {seed}: image {i} has {c}, stratum from {low}");
            }
        }
    }

    #[test]
    fn collate_shuffles_and_is_deterministic() {
        let generator = MaskGenerator::new(16, 16);
        let run = |seed| collate_masks(8, &generator, (0.1, 0.5), 0.5, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // the masked images are not always the first ones
        let masked_late = (0..20).filter(|&seed| run(seed)[4..].iter().any(|m| m.contains(&true))).count();
        assert!(masked_late > 0);
        // int(3 * 0.5) = 1 image masked; probability 0 masks nothing
        let one = collate_masks(3, &generator, (0.1, 0.5), 0.5, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(one.iter().filter(|m| m.contains(&true)).count(), 1);
        let none = collate_masks(3, &generator, (0.1, 0.5), 0.0, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(none.iter().all(|m| !m.contains(&true)));
    }

    #[test]
    fn weights_follow_the_flattened_masks() {
        let masks = vec![vec![true, false, true, false], vec![false; 4], vec![false, false, true, false]];
        assert_eq!(mask_weights(&masks), vec![0.5, 0.5, 1.0]);

        let generator = MaskGenerator::new(16, 16);
        let masks = collate_masks(64, &generator, (0.1, 0.5), 0.5, &mut ChaCha8Rng::seed_from_u64(4));
        let weights = mask_weights(&masks);
        assert_eq!(weights.len(), masks.iter().map(|m| count(m)).sum::<usize>());
        let masked_images = masks.iter().filter(|m| m.contains(&true)).count();
        let total: f32 = weights.iter().sum();
        assert!((total - masked_images as f32).abs() < 1e-3, "{total} vs {masked_images}");
    }
}
