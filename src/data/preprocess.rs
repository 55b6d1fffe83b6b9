//! The evaluation transform of the official code (`make_classification_eval_transform`):
//! resize the shorter side to 256 (bicubic), centre-crop 224, pixels / 255, ImageNet mean/std.
//! `--size N` resizes the shorter side to N and centre-crops to multiples of the patch size;
//! `--size native` keeps the pixels and crops only what does not fill a whole patch.
//!
//! Resizing is `image`'s Catmull-Rom filter (bicubic, a = -0.5, widened when downsampling),
//! the filter PIL's BICUBIC uses; results may differ from PIL's by a grey level on some pixels.

use std::path::Path;

use image::{RgbImage, imageops};

use crate::error::{Error, Result};

/// ImageNet channel means, as the official code normalises.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Largest `--size`.
pub const MAX_SIDE: usize = 8192;
/// Largest image handed to the model, in pixels (a 8192 x 8192 square).
pub const MAX_PIXELS: u64 = 1 << 26;

/// How images are sized before the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The official evaluation transform: shorter side 256, centre crop 224.
    Eval,
    /// Shorter side to N, centre-crop both sides down to multiples of the patch size.
    Shorter(usize),
    /// Keep the pixels; centre-crop to multiples of the patch size if needed.
    Native,
    /// Shorter side to N, centre crop N x N (k-NN evaluation at a model's training size).
    Square(usize),
}

impl Resize {
    /// Parse `--size`: `native`, `eval` or a number of pixels.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "native" => Ok(Resize::Native),
            "eval" => Ok(Resize::Eval),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 && n <= MAX_SIDE => Ok(Resize::Shorter(n)),
                _ => Err(Error::Usage(format!(
                    "--size `{text}`: expected native, eval or a number of pixels from 1 to {MAX_SIDE}"
                ))),
            },
        }
    }
}

/// One image ready for the model.
pub struct Prepared {
    /// What the model sees, before normalisation.
    pub rgb: RgbImage,
    /// Normalised CHW pixels, `[3, height, width]` row-major.
    pub pixels: Vec<f32>,
    /// Set when `Native` had to crop: the size before cropping.
    pub cropped_from: Option<(u32, u32)>,
}

impl Prepared {
    pub fn height(&self) -> usize {
        self.rgb.height() as usize
    }
    pub fn width(&self) -> usize {
        self.rgb.width() as usize
    }
}

/// Decode an image file as RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(Error::image(path, "not a supported image format (PNG or JPEG)"));
    }
    let img = reader.decode().map_err(|e| Error::image(path, format!("cannot decode image: {e}")))?;
    Ok(img.to_rgb8())
}

/// Python's `round` (half to even), as torchvision's centre crop uses.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { (r - x.signum()) as i64 } else { r as i64 }
}

/// torchvision `CenterCrop`: offsets `round((size - crop) / 2)`.
fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let left = round_half_even((img.width() - width) as f64 / 2.0) as u32;
    let top = round_half_even((img.height() - height) as f64 / 2.0) as u32;
    imageops::crop_imm(img, left, top, width, height).to_image()
}

/// torchvision `Resize(n)`: shorter side to n, the longer `int(n * long / short)`.
fn resize_shorter(path: &Path, img: &RgbImage, n: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let (short, long) = (w.min(h) as u64, w.max(h) as u64);
    let new_long = n as u64 * long / short;
    if n as u64 * new_long > MAX_PIXELS {
        return Err(Error::image(
            path,
            format!("{w}x{h} resized to shorter side {n} would exceed {MAX_PIXELS} pixels"),
        ));
    }
    let (nw, nh) = if w <= h { (n, new_long as u32) } else { (new_long as u32, n) };
    if (nw, nh) == (w, h) {
        return Ok(img.clone());
    }
    Ok(imageops::resize(img, nw, nh, imageops::FilterType::CatmullRom))
}

/// Size and normalise one decoded image for a model with `patch`-pixel patches.
pub fn prepare(path: &Path, img: RgbImage, resize: Resize, patch: usize) -> Result<Prepared> {
    let p = patch as u32;
    let (w0, h0) = img.dimensions();
    if w0 < p || h0 < p {
        return Err(Error::image(path, format!("image is {w0}x{h0}, smaller than one {p}x{p} patch")));
    }
    let mut cropped_from = None;
    let rgb = match resize {
        Resize::Eval => center_crop(&resize_shorter(path, &img, 256)?, 224, 224),
        Resize::Shorter(n) => {
            if (n as u32) < p {
                return Err(Error::Usage(format!("--size {n} is smaller than one {p}-pixel patch")));
            }
            let resized = resize_shorter(path, &img, n as u32)?;
            let (w, h) = resized.dimensions();
            center_crop(&resized, w / p * p, h / p * p)
        }
        Resize::Square(n) => {
            if n < patch || n % patch != 0 {
                return Err(Error::Usage(format!(
                    "size {n} is not a positive multiple of the {p}-pixel patch"
                )));
            }
            if (w0, h0) == (n as u32, n as u32) {
                img
            } else {
                center_crop(&resize_shorter(path, &img, n as u32)?, n as u32, n as u32)
            }
        }
        Resize::Native => {
            let (w, h) = (w0 / p * p, h0 / p * p);
            if (w, h) != (w0, h0) {
                cropped_from = Some((w0, h0));
            }
            center_crop(&img, w, h)
        }
    };
    let pixels = normalise(&rgb);
    Ok(Prepared { rgb, pixels, cropped_from })
}

/// Pixels / 255, then ImageNet mean/std, as CHW f32 (the same f32 operations as torchvision's
/// `ToTensor` + `Normalize`).
pub fn normalise(rgb: &RgbImage) -> Vec<f32> {
    let (w, h) = rgb.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(16.5), 16);
        assert_eq!(round_half_even(17.5), 18);
        assert_eq!(round_half_even(2.4), 2);
        assert_eq!(round_half_even(0.5), 0);
    }

    #[test]
    fn sizes_follow_torchvision() {
        let img = RgbImage::new(300, 400);
        let p = Path::new("x.png");
        let eval = prepare(p, img.clone(), Resize::Eval, 14).unwrap();
        assert_eq!(eval.rgb.dimensions(), (224, 224));
        // shorter side 300 -> 100, longer int(100 * 400 / 300) = 133 -> crop to 98 x 126
        let short = prepare(p, img.clone(), Resize::Shorter(100), 14).unwrap();
        assert_eq!(short.rgb.dimensions(), (98, 126));
        let native = prepare(p, img, Resize::Native, 14).unwrap();
        assert_eq!(native.rgb.dimensions(), (294, 392));
        assert_eq!(native.cropped_from, Some((300, 400)));
        assert!(prepare(p, RgbImage::new(10, 40), Resize::Native, 14).is_err());
    }
}
