//! Minimal drawing for the demo pictures: lines and dots.

use image::{Rgb, RgbImage};

/// A line `thickness` pixels wide (Bresenham, stamped with a square brush).
pub fn line(img: &mut RgbImage, from: (i64, i64), to: (i64, i64), color: Rgb<u8>, thickness: i64) {
    let (mut x, mut y) = from;
    let dx = (to.0 - x).abs();
    let dy = -(to.1 - y).abs();
    let sx = if x < to.0 { 1 } else { -1 };
    let sy = if y < to.1 { 1 } else { -1 };
    let mut err = dx + dy;
    loop {
        dot(img, (x, y), color, thickness / 2);
        if (x, y) == to {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A filled square of half-width `radius` centred on `at`, clipped to the image.
pub fn dot(img: &mut RgbImage, at: (i64, i64), color: Rgb<u8>, radius: i64) {
    for yy in at.1 - radius..=at.1 + radius {
        for xx in at.0 - radius..=at.0 + radius {
            if xx >= 0 && yy >= 0 && (xx as u32) < img.width() && (yy as u32) < img.height() {
                img.put_pixel(xx as u32, yy as u32, color);
            }
        }
    }
}

/// A bright colour for item `i` of `n` (hue wheel).
pub fn hue(i: usize, n: usize) -> Rgb<u8> {
    let h = 6.0 * i as f64 / n.max(1) as f64;
    let x = 1.0 - (h % 2.0 - 1.0).abs();
    let (r, g, b) = match h as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    Rgb([(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8])
}
