//! DINOv2's multi-crop augmentation, after the official `dinov2/data/augmentations.py`
//! (`DataAugmentationDINO`) and `dinov2/data/transforms.py` (`GaussianBlur`), each transform with
//! torchvision's semantics and random draws in the official order:
//!
//! 1. `RandomResizedCrop(size, scale, ratio = (3/4, 4/3), bicubic)`, `RandomHorizontalFlip(0.5)`;
//! 2. `ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1)` with p 0.8, the four
//!    adjustments in a random order; `RandomGrayscale(0.2)`;
//! 3. first global crop: Gaussian blur; other global crops: Gaussian blur then
//!    `RandomSolarize(128, 0.2)`; local crops: Gaussian blur (the blur probabilities:
//!    [`BlurProbabilities`]); the blur is `kernel_size` 9, sigma ~ U(0.1, 2.0);
//! 4. `ToTensor` (pixels / 255) and the ImageNet mean/std.
//!
//! The crop is resized with `image`'s Catmull-Rom filter (bicubic, a = -0.5, widened when
//! downsampling), the filter PIL's BICUBIC uses, to 8-bit pixels as PIL does. From there on the
//! pixels are f32 RGB in [0, 1] and the colour transforms use the float formulas of torchvision's
//! `functional_tensor` (`_blend(a, b, f) = clamp(f a + (1 - f) b, 0, 1)`):
//! - brightness f: `_blend(x, 0, f)`;
//! - contrast f: `_blend(x, mean(gray(x)), f)`, the mean over the whole image;
//! - saturation f: `_blend(x, gray(x), f)`, per pixel;
//! - hue h: RGB -> HSV, `H = (H + h) mod 1`, HSV -> RGB (`_rgb2hsv`, `_hsv2rgb`);
//! - solarize: `x >= 128/255 ? 1 - x : x`.
//!
//! The official pipeline applies them to PIL images: 8-bit rounding after every step, PIL's
//! contrast blends with the mean rounded to a grey level, PIL's hue works on an 8-bit hue. The
//! float formulas differ from it by about a grey level per step. `gray` is ITU-R 601-2 luma
//! (0.299, 0.587, 0.114), PIL's `convert("L")` that the official pipeline uses (torchvision's
//! tensor path rounds the red weight to 0.2989).
//!
//! # Shapes
//! - a crop: `[3, size, size]` f32, row-major CHW, normalised.

use image::{RgbImage, imageops};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::data::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{Error, Result};

/// Aspect ratios (width / height) of `RandomResizedCrop`, torchvision's default.
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// `ColorJitter` strengths of the official code: brightness, contrast, saturation, hue.
const JITTER: [f64; 4] = [0.4, 0.4, 0.2, 0.1];
/// Range of the Gaussian blur's sigma (official `radius_min`, `radius_max`).
const BLUR_SIGMA: (f64, f64) = (0.1, 2.0);
/// `RandomSolarize(threshold = 128)` on 8-bit pixels, here on [0, 1].
const SOLARIZE_THRESHOLD: f32 = 128.0 / 255.0;
/// ITU-R 601-2 luma weights (PIL's `convert("L")`).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];
/// Horizontal flip probability (official `RandomHorizontalFlip(p=0.5)`).
const FLIP_PROB: f64 = 0.5;

fn default_flip_prob() -> f64 {
    FLIP_PROB
}

/// How often each crop is blurred: `[first global, other globals, locals]`.
///
/// The official code writes `GaussianBlur(p=1.0)`, `(p=0.1)`, `(p=0.5)` as in the paper, but its
/// `GaussianBlur` hands `1 - p` to torchvision's `RandomApply`, which applies with the
/// probability it is given; so the released models were trained with (0.0, 0.9, 0.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlurProbabilities {
    /// (1.0, 0.1, 0.5), as the paper and the code's argument names say.
    Paper,
    /// (0.0, 0.9, 0.5): what the official code does.
    Official,
}

impl BlurProbabilities {
    /// Blur probabilities of the first global crop, the other global crops and the local crops.
    pub fn values(self) -> [f64; 3] {
        match self {
            BlurProbabilities::Paper => [1.0, 0.1, 0.5],
            BlurProbabilities::Official => [0.0, 0.9, 0.5],
        }
    }
}

/// The multi-crop settings; [`Default`] gives the official ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CropConfig {
    /// Side of a global crop in pixels (official 224).
    pub global_size: usize,
    /// Side of a local crop in pixels (official 96).
    pub local_size: usize,
    /// Global crops per image (official 2). The first gets the first global transform, every
    /// other one the second (blur, then solarize).
    pub n_global: usize,
    /// Local crops per image (official 8).
    pub n_local: usize,
    /// Share of the image's area a global crop covers (official (0.32, 1.0)).
    pub global_scale: (f64, f64),
    /// Share of the image's area a local crop covers (official (0.05, 0.32)).
    pub local_scale: (f64, f64),
    /// Blur probabilities. Default [`BlurProbabilities::Official`]: it reproduces the training
    /// of the released models, the reference this engine is checked against.
    pub blur: BlurProbabilities,
    /// Gaussian blur kernel side (official 9, odd). On a crop smaller than the kernel it
    /// shrinks to `2 * side - 1`, the most reflect padding allows.
    pub blur_kernel: usize,
    /// Solarize probability of the second global crop (official 0.2).
    pub solarize_prob: f64,
    /// Probability of the colour jitter (official 0.8).
    pub jitter_prob: f64,
    /// Probability of turning a crop grey (official 0.2).
    pub grayscale_prob: f64,
    /// Probability of mirroring a crop left-right (official 0.5). Recipes written before this
    /// field existed load with the official value.
    #[serde(default = "default_flip_prob")]
    pub flip_prob: f64,
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig {
            global_size: 224,
            local_size: 96,
            n_global: 2,
            n_local: 8,
            global_scale: (0.32, 1.0),
            local_scale: (0.05, 0.32),
            blur: BlurProbabilities::Official,
            blur_kernel: 9,
            solarize_prob: 0.2,
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
            flip_prob: FLIP_PROB,
        }
    }
}

impl CropConfig {
    /// Checks what torchvision would reject: empty crops, an even blur kernel, scales outside
    /// (0, 1] or reversed, probabilities outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        if self.global_size == 0 || self.local_size == 0 {
            return fail(format!("crop sizes {} and {} must be positive", self.global_size, self.local_size));
        }
        if self.blur_kernel % 2 == 0 {
            return fail(format!("blur kernel {} must be odd", self.blur_kernel));
        }
        for (name, (low, high)) in [("global", self.global_scale), ("local", self.local_scale)] {
            if !(0.0 < low && low <= high && high <= 1.0) {
                return fail(format!("{name} crop scale ({low}, {high}) must satisfy 0 < min <= max <= 1"));
            }
        }
        for (name, p) in [
            ("solarize", self.solarize_prob),
            ("jitter", self.jitter_prob),
            ("grayscale", self.grayscale_prob),
            ("flip", self.flip_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return fail(format!("{name} probability {p} is not in [0, 1]"));
            }
        }
        Ok(())
    }
}

/// One image's crops, each normalised CHW f32 (`3 * size * size` values).
#[derive(Clone, Debug, PartialEq)]
pub struct Crops {
    /// `n_global` crops of `3 * global_size * global_size` values.
    pub globals: Vec<Vec<f32>>,
    /// `n_local` crops of `3 * local_size * local_size` values.
    pub locals: Vec<Vec<f32>>,
    /// Whether each global crop was mirrored (distillation's teacher cache pairs each crop
    /// with the teacher's output for the whole image the same way round).
    pub global_flips: Vec<bool>,
}

/// The official `DataAugmentationDINO.__call__`: `n_global` global crops, then `n_local` local
/// crops, drawing from `rng` in that order.
///
/// # Panics
/// If the image is empty or `config.validate()` fails.
pub fn multi_crop(image: &RgbImage, config: &CropConfig, rng: &mut impl Rng) -> Crops {
    assert!(image.width() > 0 && image.height() > 0, "cannot crop an empty {:?} image", image.dimensions());
    if let Err(e) = config.validate() {
        panic!("{e}");
    }
    let [blur_first, blur_other, blur_local] = config.blur.values();
    let (globals, global_flips) = (0..config.n_global)
        .map(|i| {
            let extra = if i == 0 {
                Extra { blur_prob: blur_first, solarize_prob: None }
            } else {
                Extra { blur_prob: blur_other, solarize_prob: Some(config.solarize_prob) }
            };
            augment_crop(image, config.global_size, config.global_scale, extra, config, rng)
        })
        .unzip();
    let local_extra = Extra { blur_prob: blur_local, solarize_prob: None };
    let locals = (0..config.n_local)
        .map(|_| augment_crop(image, config.local_size, config.local_scale, local_extra, config, rng).0)
        .collect();
    Crops { globals, locals, global_flips }
}

/// What a global crop of scale 1 takes (the whole image, or its central part clamped to the
/// crops' aspect ratio range, 3:4 to 4:3), resized to `size x size`, mirrored when `flip`,
/// normalised, with no other augmentation: the views distillation's teacher cache holds.
pub fn whole_view(image: &RgbImage, size: usize, flip: bool) -> Vec<f32> {
    let crop = central_box(image.width() as usize, image.height() as usize, CROP_RATIO);
    let mut pixels = crop_resize_flip(image, crop, size, flip);
    normalise(&mut pixels);
    pixels
}

/// The transforms that differ between crops (official `global_transfo*_extra`).
#[derive(Clone, Copy)]
struct Extra {
    blur_prob: f64,
    /// `None`: no solarize transform at all (and no random draw for it).
    solarize_prob: Option<f64>,
}

/// One crop through the official pipeline, and whether it was mirrored; the draws follow
/// torchvision's order.
fn augment_crop(
    image: &RgbImage,
    size: usize,
    scale: (f64, f64),
    extra: Extra,
    config: &CropConfig,
    rng: &mut impl Rng,
) -> (Vec<f32>, bool) {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let crop = random_resized_crop_box(width, height, scale, CROP_RATIO, rng);
    let flip = rng.random::<f64>() < config.flip_prob;
    let mut pixels = crop_resize_flip(image, crop, size, flip);
    if rng.random::<f64>() < config.jitter_prob {
        color_jitter(&mut pixels, rng);
    }
    if rng.random::<f64>() < config.grayscale_prob {
        grayscale(&mut pixels);
    }
    if rng.random::<f64>() < extra.blur_prob {
        let sigma = uniform(rng, BLUR_SIGMA.0, BLUR_SIGMA.1) as f32;
        gaussian_blur(&mut pixels, size, size, config.blur_kernel, sigma);
    }
    if let Some(p) = extra.solarize_prob
        && rng.random::<f64>() < p
    {
        solarize(&mut pixels);
    }
    normalise(&mut pixels);
    (pixels, flip)
}

/// torchvision `RandomResizedCrop.get_params`: `(left, top, width, height)` in pixels. Up to 10
/// draws of an area `U(scale) * W * H` and an aspect ratio `exp(U(ln ratio))` (width / height),
/// rounded half to even as Python does; the first that fits is placed uniformly. If none fits,
/// the central crop of the whole image clamped to the ratio range.
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect_ratio = uniform(rng, log_ratio.0, log_ratio.1).exp();
        let w = (target_area * aspect_ratio).sqrt().round_ties_even() as usize;
        let h = (target_area / aspect_ratio).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            // torchvision draws the row first
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (left, top, w, h);
        }
    }
    central_box(width, height, ratio)
}

/// torchvision `RandomResizedCrop`'s fallback: the central crop of the whole image, clamped to
/// the aspect ratio range.
fn central_box(width: usize, height: usize, ratio: (f64, f64)) -> (usize, usize, usize, usize) {
    let in_ratio = width as f64 / height as f64;
    let (min_ratio, max_ratio) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < min_ratio {
        (width, (width as f64 / min_ratio).round_ties_even() as usize)
    } else if in_ratio > max_ratio {
        ((height as f64 * max_ratio).round_ties_even() as usize, height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// Cuts `crop = (left, top, width, height)` out of the image, resizes it to `size x size`
/// (Catmull-Rom, 8-bit like PIL's bicubic) and returns CHW f32 in [0, 1], mirrored left-right
/// when `flip`.
fn crop_resize_flip(
    image: &RgbImage,
    crop: (usize, usize, usize, usize),
    size: usize,
    flip: bool,
) -> Vec<f32> {
    let (left, top, width, height) = crop;
    let view = imageops::crop_imm(image, left as u32, top as u32, width as u32, height as u32);
    let resized = imageops::resize(&*view, size as u32, size as u32, imageops::FilterType::CatmullRom);
    let plane = size * size;
    let mut pixels = vec![0.0f32; 3 * plane];
    for (x, y, px) in resized.enumerate_pixels() {
        let column = if flip { size - 1 - x as usize } else { x as usize };
        let at = y as usize * size + column;
        for c in 0..3 {
            pixels[c * plane + at] = px[c] as f32 / 255.0;
        }
    }
    pixels
}

/// The red, green and blue planes of CHW pixels.
fn planes_mut(pixels: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let plane = pixels.len() / 3;
    let (red, rest) = pixels.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    (red, green, blue)
}

/// Python's `random.uniform` / torch's `uniform_`: `a + (b - a) * U[0, 1)`.
fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// torchvision `ColorJitter.forward`: a random order (`randperm(4)`), then the four factors
/// drawn in a fixed order, then the adjustments in the drawn order.
fn color_jitter(pixels: &mut [f32], rng: &mut impl Rng) {
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    let [brightness, contrast, saturation, hue] = JITTER;
    let brightness = uniform(rng, (1.0 - brightness).max(0.0), 1.0 + brightness) as f32;
    let contrast = uniform(rng, (1.0 - contrast).max(0.0), 1.0 + contrast) as f32;
    let saturation = uniform(rng, (1.0 - saturation).max(0.0), 1.0 + saturation) as f32;
    let hue = uniform(rng, -hue, hue) as f32;
    for adjustment in order {
        match adjustment {
            0 => adjust_brightness(pixels, brightness),
            1 => adjust_contrast(pixels, contrast),
            2 => adjust_saturation(pixels, saturation),
            _ => adjust_hue(pixels, hue),
        }
    }
}

/// torchvision `_blend`: `clamp(factor * a + (1 - factor) * b, 0, 1)`.
fn blend(a: f32, b: f32, factor: f32) -> f32 {
    (factor * a + (1.0 - factor) * b).clamp(0.0, 1.0)
}

fn luma(red: f32, green: f32, blue: f32) -> f32 {
    LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue
}

/// `adjust_brightness`: blend with black.
fn adjust_brightness(pixels: &mut [f32], factor: f32) {
    for value in pixels.iter_mut() {
        *value = blend(*value, 0.0, factor);
    }
}

/// `adjust_contrast`: blend with the mean grey level of the whole image.
fn adjust_contrast(pixels: &mut [f32], factor: f32) {
    let (red, green, blue) = planes_mut(pixels);
    let sum: f64 = (0..red.len()).map(|i| luma(red[i], green[i], blue[i]) as f64).sum();
    let mean = (sum / red.len().max(1) as f64) as f32;
    for value in pixels.iter_mut() {
        *value = blend(*value, mean, factor);
    }
}

/// `adjust_saturation`: blend each pixel with its grey level.
fn adjust_saturation(pixels: &mut [f32], factor: f32) {
    let (red, green, blue) = planes_mut(pixels);
    for i in 0..red.len() {
        let grey = luma(red[i], green[i], blue[i]);
        red[i] = blend(red[i], grey, factor);
        green[i] = blend(green[i], grey, factor);
        blue[i] = blend(blue[i], grey, factor);
    }
}

/// `adjust_hue`: rotate the HSV hue by `hue_factor` turns.
fn adjust_hue(pixels: &mut [f32], hue_factor: f32) {
    let (red, green, blue) = planes_mut(pixels);
    for i in 0..red.len() {
        let (h, s, v) = rgb_to_hsv(red[i], green[i], blue[i]);
        // torch's `%` is Python's: the result takes the divisor's sign
        (red[i], green[i], blue[i]) = hsv_to_rgb((h + hue_factor).rem_euclid(1.0), s, v);
    }
}

/// torchvision `_rgb2hsv` for one pixel: hue in [0, 1).
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let grey = maxc == minc;
    let chroma = maxc - minc;
    let s = chroma / if grey { 1.0 } else { maxc };
    let divisor = if grey { 1.0 } else { chroma };
    let (rc, gc, bc) = ((maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // torch.fmod keeps the dividend's sign, as Rust's `%` does
    ((h / 6.0 + 1.0) % 1.0, s, maxc)
}

/// torchvision `_hsv2rgb` for one pixel.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let sector = (h * 6.0).floor();
    let f = h * 6.0 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// `rgb_to_grayscale(num_output_channels = 3)`: the luma in all three channels.
fn grayscale(pixels: &mut [f32]) {
    let (red, green, blue) = planes_mut(pixels);
    for i in 0..red.len() {
        let grey = luma(red[i], green[i], blue[i]);
        (red[i], green[i], blue[i]) = (grey, grey, grey);
    }
}

/// `solarize(128)`: values at or above the threshold are inverted.
fn solarize(pixels: &mut [f32]) {
    for value in pixels.iter_mut() {
        if *value >= SOLARIZE_THRESHOLD {
            *value = 1.0 - *value;
        }
    }
}

/// torchvision `_get_gaussian_kernel1d`: `exp(-x^2 / (2 sigma^2))` at `x = -(k-1)/2 ..= (k-1)/2`,
/// normalised to sum 1.
fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let half = (size - 1) as f32 * 0.5;
    let pdf: Vec<f32> = (0..size).map(|i| (-0.5 * ((i as f32 - half) / sigma).powi(2)).exp()).collect();
    let sum: f32 = pdf.iter().sum();
    pdf.into_iter().map(|p| p / sum).collect()
}

/// Index `i` of a line of `len` with reflect padding (no repeated edge), as `torch.nn.functional
/// .pad(mode="reflect")`: valid for `-(len - 1) <= i <= 2 (len - 1)`.
fn reflect(i: isize, len: usize) -> usize {
    let last = len as isize - 1;
    let reflected = if i < 0 {
        -i
    } else if i > last {
        2 * last - i
    } else {
        i
    };
    reflected as usize
}

/// torchvision `gaussian_blur(kernel_size = [k, k], sigma = [s, s])` on CHW pixels: reflect
/// padding by `k / 2`, then the 2-D kernel, the outer product of the 1-D one, applied as a
/// row pass and a column pass. Along a side shorter than the kernel's half + 1 the kernel
/// shrinks to `2 * side - 1` taps (reflect padding cannot reach further; torchvision refuses).
fn gaussian_blur(pixels: &mut [f32], width: usize, height: usize, kernel_size: usize, sigma: f32) {
    assert!(kernel_size % 2 == 1, "blur kernel {kernel_size} must be odd");
    let plane = width * height;
    assert_eq!(pixels.len(), 3 * plane, "{} values for 3 x {height} x {width}", pixels.len());
    let row_kernel = gaussian_kernel(kernel_size.min(2 * width - 1), sigma);
    let column_kernel = gaussian_kernel(kernel_size.min(2 * height - 1), sigma);
    let row_half = (row_kernel.len() / 2) as isize;
    let column_half = (column_kernel.len() / 2) as isize;

    let mut padded_row = vec![0.0f32; width + 2 * row_half as usize];
    let mut rows_blurred = vec![0.0f32; plane];
    for channel in pixels.chunks_exact_mut(plane) {
        for (y, row) in channel.chunks_exact(width).enumerate() {
            for (p, slot) in padded_row.iter_mut().enumerate() {
                *slot = row[reflect(p as isize - row_half, width)];
            }
            let out = &mut rows_blurred[y * width..(y + 1) * width];
            for (x, value) in out.iter_mut().enumerate() {
                *value = row_kernel.iter().zip(&padded_row[x..]).map(|(k, v)| k * v).sum();
            }
        }
        // the column pass adds whole rows, so the inner loop runs along memory
        for (y, out) in channel.chunks_exact_mut(width).enumerate() {
            out.fill(0.0);
            for (t, &k) in column_kernel.iter().enumerate() {
                let source = reflect(y as isize + t as isize - column_half, height);
                for (value, &s) in out.iter_mut().zip(&rows_blurred[source * width..(source + 1) * width]) {
                    *value += k * s;
                }
            }
        }
    }
}

/// `Normalize(IMAGENET_MEAN, IMAGENET_STD)` on CHW pixels in [0, 1].
fn normalise(pixels: &mut [f32]) {
    let plane = pixels.len() / 3;
    for (c, channel) in pixels.chunks_exact_mut(plane).enumerate() {
        for value in channel {
            *value = (*value - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn close(a: f32, b: f32, tolerance: f32) -> bool {
        (a - b).abs() <= tolerance
    }

    fn noise_image(width: u32, height: u32, seed: u64) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(width, height, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()]))
    }

    fn noise_pixels(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random::<f32>()).collect()
    }

    fn variance(values: &[f32]) -> f32 {
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32
    }

    #[test]
    fn crop_box_within_the_requested_ranges() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for (width, height) in [(200usize, 150usize), (28, 28), (64, 300)] {
            for scale in [(0.32, 1.0), (0.05, 0.32), (0.08, 1.0)] {
                for _ in 0..500 {
                    let (left, top, w, h) =
                        random_resized_crop_box(width, height, scale, CROP_RATIO, &mut rng);
                    assert!(w > 0 && h > 0 && left + w <= width && top + h <= height);
                    let fallback = random_resized_crop_box(width, height, (2.0, 2.0), CROP_RATIO, &mut rng);
                    if (left, top, w, h) == fallback {
                        continue;
                    }
                    // w = round(sqrt(A r)), h = round(sqrt(A / r)) for A in the scale range and
                    // r in the ratio range: check the intervals that rounding leaves
                    let (wf, hf) = (w as f64, h as f64);
                    let area = (width * height) as f64;
                    assert!((wf - 0.5) * (hf - 0.5) <= scale.1 * area, "{w}x{h} of {width}x{height}");
                    assert!((wf + 0.5) * (hf + 0.5) >= scale.0 * area, "{w}x{h} of {width}x{height}");
                    assert!((wf - 0.5) / (hf + 0.5) <= CROP_RATIO.1, "{w}x{h}");
                    assert!((wf + 0.5) / (hf - 0.5) >= CROP_RATIO.0, "{w}x{h}");
                }
            }
        }
    }

    #[test]
    fn crop_box_falls_back_to_the_centre() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // 100x2 fits no crop of ratio <= 4/3 and 90% of the area: h = 2, w = round(2 * 4/3) = 3
        assert_eq!(random_resized_crop_box(100, 2, (0.9, 1.0), CROP_RATIO, &mut rng), (48, 0, 3, 2));
        // 2x100: w = 2, h = round(2 / (3/4)) = 3
        assert_eq!(random_resized_crop_box(2, 100, (0.9, 1.0), CROP_RATIO, &mut rng), (0, 48, 2, 3));
        // an area above the image's: the whole image when its ratio is in range
        assert_eq!(random_resized_crop_box(30, 28, (2.0, 2.0), CROP_RATIO, &mut rng), (0, 0, 30, 28));
    }

    #[test]
    fn crop_counts_and_sizes() {
        let image = noise_image(28, 28, 2);
        let config = CropConfig { global_size: 28, local_size: 12, n_local: 6, ..CropConfig::default() };
        let crops = multi_crop(&image, &config, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(crops.globals.len(), 2);
        assert_eq!(crops.locals.len(), 6);
        assert!(crops.globals.iter().all(|c| c.len() == 3 * 28 * 28));
        assert!(crops.locals.iter().all(|c| c.len() == 3 * 12 * 12));
        assert!(crops.globals.iter().chain(&crops.locals).flatten().all(|v| v.is_finite()));
        // the official sizes on a larger, non-square image
        let crops =
            multi_crop(&noise_image(300, 200, 4), &CropConfig::default(), &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!((crops.globals.len(), crops.locals.len()), (2, 8));
        assert!(crops.globals.iter().all(|c| c.len() == 3 * 224 * 224));
        assert!(crops.locals.iter().all(|c| c.len() == 3 * 96 * 96));
    }

    #[test]
    fn constant_image_normalises_to_the_imagenet_formula() {
        let grey = [200u8, 100, 30];
        let image = RgbImage::from_pixel(40, 30, image::Rgb(grey));
        let config = CropConfig {
            global_size: 16,
            local_size: 8,
            solarize_prob: 0.0,
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            ..CropConfig::default()
        };
        // the blur (p 0.9 on the second global crop) leaves a constant image as it is
        let crops = multi_crop(&image, &config, &mut ChaCha8Rng::seed_from_u64(6));
        for crop in crops.globals.iter().chain(&crops.locals) {
            let plane = crop.len() / 3;
            for c in 0..3 {
                let expected = (grey[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                for &v in &crop[c * plane..(c + 1) * plane] {
                    assert!(close(v, expected, 1e-5), "channel {c}: {v} vs {expected}");
                }
            }
        }
    }

    #[test]
    fn grayscale_makes_channels_equal_to_the_luma() {
        let mut pixels = noise_pixels(3 * 50, 7);
        let original = pixels.clone();
        grayscale(&mut pixels);
        for i in 0..50 {
            let expected = 0.299 * original[i] + 0.587 * original[50 + i] + 0.114 * original[100 + i];
            for c in 0..3 {
                assert!(close(pixels[c * 50 + i], expected, 1e-6));
            }
        }
    }

    #[test]
    fn solarize_inverts_from_128_up() {
        let mut pixels: Vec<f32> = (0..3).flat_map(|_| (0..=255).map(|k| k as f32 / 255.0)).collect();
        solarize(&mut pixels);
        for (i, &v) in pixels.iter().enumerate() {
            let k = i % 256;
            let original = k as f32 / 255.0;
            let expected = if k >= 128 { 1.0 - original } else { original };
            assert_eq!(v, expected, "grey level {k}");
        }
    }

    #[test]
    fn flip_mirrors() {
        let image = noise_image(9, 5, 8);
        let crop = (0, 0, 9, 5);
        // 9x5 resized to 5x5 then flipped equals the same resize read right to left
        let plain = crop_resize_flip(&image, crop, 5, false);
        let flipped = crop_resize_flip(&image, crop, 5, true);
        for c in 0..3 {
            for y in 0..5 {
                for x in 0..5 {
                    assert_eq!(flipped[c * 25 + y * 5 + x], plain[c * 25 + y * 5 + 4 - x]);
                }
            }
        }
        // a crop of the image's own size is the pixels themselves
        let identity = crop_resize_flip(&noise_image(6, 6, 9), (0, 0, 6, 6), 6, false);
        let source = noise_image(6, 6, 9);
        assert_eq!(identity[2 * 36 + 3 * 6 + 4], source.get_pixel(4, 3)[2] as f32 / 255.0);
    }

    /// torchvision's blur written plainly: reflect-pad, then the 2-D kernel (outer product).
    fn gaussian_blur_reference(
        pixels: &[f32],
        width: usize,
        height: usize,
        kernel_size: usize,
        sigma: f32,
    ) -> Vec<f32> {
        let row_kernel = gaussian_kernel(kernel_size.min(2 * width - 1), sigma);
        let column_kernel = gaussian_kernel(kernel_size.min(2 * height - 1), sigma);
        let (rh, ch) = ((row_kernel.len() / 2) as isize, (column_kernel.len() / 2) as isize);
        let plane = width * height;
        let mut out = vec![0.0f32; pixels.len()];
        for c in 0..3 {
            for y in 0..height {
                for x in 0..width {
                    let mut sum = 0.0;
                    for (ty, ky) in column_kernel.iter().enumerate() {
                        for (tx, kx) in row_kernel.iter().enumerate() {
                            let sy = reflect(y as isize + ty as isize - ch, height);
                            let sx = reflect(x as isize + tx as isize - rh, width);
                            sum += ky * kx * pixels[c * plane + sy * width + sx];
                        }
                    }
                    out[c * plane + y * width + x] = sum;
                }
            }
        }
        out
    }

    #[test]
    fn blur_matches_the_two_dimensional_reference() {
        for (width, height, sigma) in [(12, 12, 1.3), (7, 5, 2.0), (3, 9, 0.6), (1, 4, 1.0), (20, 13, 0.1)] {
            let mut pixels = noise_pixels(3 * width * height, 10);
            let expected = gaussian_blur_reference(&pixels, width, height, 9, sigma);
            gaussian_blur(&mut pixels, width, height, 9, sigma);
            let max_error = pixels.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(max_error < 1e-5, "{width}x{height}: max abs error {max_error}");
        }
    }

    #[test]
    fn blur_keeps_constants_and_smooths_noise() {
        let kernel = gaussian_kernel(9, 1.5);
        assert!(close(kernel.iter().sum(), 1.0, 1e-6));
        assert!((0..9).all(|i| kernel[i] == kernel[8 - i]) && kernel[4] > kernel[3]);

        let mut constant = vec![0.37f32; 3 * 12 * 12];
        gaussian_blur(&mut constant, 12, 12, 9, 2.0);
        assert!(constant.iter().all(|&v| close(v, 0.37, 1e-6)));

        let mut noise = noise_pixels(3 * 32 * 32, 11);
        let before = variance(&noise);
        let mean_before = noise.iter().sum::<f32>() / noise.len() as f32;
        gaussian_blur(&mut noise, 32, 32, 9, 1.0);
        assert!(variance(&noise) < 0.25 * before, "{} vs {before}", variance(&noise));
        let mean_after = noise.iter().sum::<f32>() / noise.len() as f32;
        assert!(close(mean_after, mean_before, 0.01));
    }

    #[test]
    fn jitter_follows_the_torchvision_formulas() {
        // two pixels, CHW: (0.2, 0.4, 0.6) and (1.0, 0.0, 0.5)
        let pixels = [0.2f32, 1.0, 0.4, 0.0, 0.6, 0.5];
        // their luma: 0.299*0.2 + 0.587*0.4 + 0.114*0.6 = 0.363, 0.299 + 0.114*0.5 = 0.356
        let (grey_a, grey_b) = (0.363f32, 0.356f32);

        let mut bright = pixels;
        adjust_brightness(&mut bright, 1.25);
        let expected = [0.25, 1.0, 0.5, 0.0, 0.75, 0.625];
        assert!(bright.iter().zip(expected).all(|(a, b)| close(*a, b, 1e-6)), "{bright:?}");

        let mut contrast = pixels;
        adjust_contrast(&mut contrast, 0.5);
        let mean = (grey_a + grey_b) / 2.0;
        let expected = pixels.map(|x| 0.5 * x + 0.5 * mean);
        assert!(contrast.iter().zip(expected).all(|(a, b)| close(*a, b, 1e-6)), "{contrast:?}");

        let mut saturated = pixels;
        adjust_saturation(&mut saturated, 2.0);
        let greys = [grey_a, grey_b];
        let expected: Vec<f32> = (0..6).map(|i| (2.0 * pixels[i] - greys[i % 2]).clamp(0.0, 1.0)).collect();
        assert!(saturated.iter().zip(&expected).all(|(a, b)| close(*a, *b, 1e-6)), "{saturated:?}");
        let mut desaturated = pixels;
        adjust_saturation(&mut desaturated, 0.0);
        assert!((0..6).all(|i| close(desaturated[i], greys[i % 2], 1e-6)));
    }

    #[test]
    fn hue_turns_around_the_colour_wheel() {
        // pure red: a third of a turn is pure green; 0.1 turn is (1, 0.6, 0) (HSV sector 0, f 0.6)
        let mut red = [1.0f32, 0.0, 0.0];
        adjust_hue(&mut red, 1.0 / 3.0);
        assert!(red.iter().zip([0.0, 1.0, 0.0]).all(|(a, b)| close(*a, b, 1e-6)), "{red:?}");
        let mut red = [1.0f32, 0.0, 0.0];
        adjust_hue(&mut red, 0.1);
        assert!(red.iter().zip([1.0, 0.6, 0.0]).all(|(a, b)| close(*a, b, 1e-6)), "{red:?}");
        // a shift and its opposite give the colour back; greys have no hue to shift
        let mut pixels = noise_pixels(3 * 100, 12);
        let original = pixels.clone();
        adjust_hue(&mut pixels, 0.07);
        adjust_hue(&mut pixels, -0.07);
        assert!(pixels.iter().zip(&original).all(|(a, b)| close(*a, *b, 1e-5)));
        let mut greys = [0.3f32, 0.8, 0.3, 0.8, 0.3, 0.8];
        adjust_hue(&mut greys, 0.1);
        assert_eq!(greys, [0.3, 0.8, 0.3, 0.8, 0.3, 0.8]);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let image = noise_image(28, 28, 13);
        let config = CropConfig { global_size: 28, local_size: 12, ..CropConfig::default() };
        let run = |seed| multi_crop(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(run(14), run(14));
        assert_ne!(run(14), run(15));
    }

    #[test]
    fn flip_probability_zero_never_mirrors_and_one_always_does() {
        // whole-image crops (scale 1: every ratio draw that does not fit falls back to the whole
        // image, one that rounds to 28 x 28 is the whole image too) and no colour transforms, so
        // each crop is the image itself or its mirror
        let image = noise_image(28, 28, 21);
        let plain = crop_resize_flip(&image, (0, 0, 28, 28), 28, false);
        let mirrored = crop_resize_flip(&image, (0, 0, 28, 28), 28, true);
        let config = |flip_prob| CropConfig {
            global_size: 28,
            local_size: 28,
            n_local: 2,
            global_scale: (1.0, 1.0),
            local_scale: (1.0, 1.0),
            blur_kernel: 1,
            solarize_prob: 0.0,
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            flip_prob,
            ..CropConfig::default()
        };
        let normalised = |mut pixels: Vec<f32>| {
            normalise(&mut pixels);
            pixels
        };
        for (flip_prob, expected) in [(0.0, normalised(plain)), (1.0, normalised(mirrored))] {
            for seed in 0..20 {
                let crops = multi_crop(&image, &config(flip_prob), &mut ChaCha8Rng::seed_from_u64(seed));
                for crop in crops.globals.iter().chain(&crops.locals) {
                    assert_eq!(crop, &expected, "flip_prob {flip_prob}, seed {seed}");
                }
            }
        }
    }

    #[test]
    fn whole_view_is_a_scale_one_global_crop_as_flipped() {
        // square, inside the 3:4..4:3 ratio range, and outside it on either side: the teacher
        // cache's view is what a scale-1 global crop without colour transforms takes
        let config = CropConfig {
            global_size: 14,
            local_size: 7,
            n_local: 0,
            global_scale: (1.0, 1.0),
            blur_kernel: 1,
            solarize_prob: 0.0,
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            ..CropConfig::default()
        };
        for (w, h) in [(28, 28), (30, 26), (40, 20), (18, 36)] {
            let image = noise_image(w, h, 5);
            let mut flips = [false; 2];
            for seed in 0..12 {
                let crops = multi_crop(&image, &config, &mut ChaCha8Rng::seed_from_u64(seed));
                for (crop, &flip) in crops.globals.iter().zip(&crops.global_flips) {
                    assert_eq!(crop, &whole_view(&image, 14, flip), "{w}x{h}, seed {seed}, flip {flip}");
                    flips[usize::from(flip)] = true;
                }
            }
            assert_eq!(flips, [true, true]);
        }
    }

    #[test]
    fn config_checks_and_names() {
        assert!(CropConfig::default().validate().is_ok());
        assert!(CropConfig { blur_kernel: 8, ..CropConfig::default() }.validate().is_err());
        assert!(CropConfig { local_scale: (0.3, 0.1), ..CropConfig::default() }.validate().is_err());
        assert!(CropConfig { jitter_prob: 1.5, ..CropConfig::default() }.validate().is_err());
        assert!(CropConfig { flip_prob: -0.1, ..CropConfig::default() }.validate().is_err());
        let json = serde_json::to_string(&CropConfig::default()).unwrap();
        // a recipe written before `flip_prob` existed loads with the official 0.5
        let old: CropConfig = serde_json::from_str(&json.replace(",\"flip_prob\":0.5", "")).unwrap();
        assert!(!json.replace(",\"flip_prob\":0.5", "").contains("flip"));
        assert_eq!(old, CropConfig::default());
        assert!(json.contains("\"blur\":\"official\""), "{json}");
        let back: CropConfig = serde_json::from_str(&json.replace("official", "paper")).unwrap();
        assert_eq!(back.blur.values(), [1.0, 0.1, 0.5]);
    }
}
