//! Image → tagger input, as the WD v3 timm reference inference (`wdv3_timm.py`) does it:
//!
//! 1. RGB with transparency composited on white ([`crate::image_io::load_rgb`]);
//! 2. padded to a square on white, the image centred (offsets `(side − w) / 2`,
//!    `(side − h) / 2` rounded down, as PIL's `paste`);
//! 3. resized to the model's input size with a bicubic filter (Catmull-Rom, antialiased when
//!    shrinking — PIL's `BICUBIC`; skipped when already that size);
//! 4. scaled to [0, 1] and normalised per channel, `(v − mean) / std` (timm's transform; the WD
//!    taggers use mean = std = 0.5, so inputs lie in [-1, 1]);
//! 5. reordered RGB → BGR (the WD taggers were trained on BGR), laid out `[3, S, S]`.
//!
//! (The ONNX exports of the same models take NHWC BGR in 0–255 and normalise inside the graph;
//! these safetensors weights are the timm model, which expects the normalised NCHW input above.)

use image::imageops::{overlay, resize, FilterType};
use image::{Rgb, RgbImage};

/// The preprocessing settings of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Square input side in pixels.
    pub size: u32,
    /// Per-channel mean and std, in RGB order, for values in [0, 1].
    pub mean: [f32; 3],
    /// Per-channel divisor, RGB order: a value becomes `(v − mean) / std`.
    pub std: [f32; 3],
    /// Emit channels as B, G, R (true for the WD taggers).
    pub bgr: bool,
}

/// Pads to a square on white, the image centred.
pub fn pad_square_white(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let side = w.max(h);
    if w == h {
        return image.clone();
    }
    let mut canvas = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    overlay(
        &mut canvas,
        image,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    canvas
}

/// Longest side padded as is; a larger image is first shrunk to this (aspect kept), so a
/// 20000×20 strip does not become a 20000² canvas. Far above any tagger input, so the result
/// differs from pad-then-resize only by resampling noise.
pub const MAX_PAD_SIDE: u32 = 4096;

/// Preprocessed pixels `[3, size, size]`, row-major, channel order per `p.bgr`.
pub fn preprocess_rgb(image: &RgbImage, p: &Preprocess) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let longest = w.max(h);
    let shrunk;
    let image = if longest > MAX_PAD_SIDE.max(p.size) {
        let scale = f64::from(MAX_PAD_SIDE.max(p.size)) / f64::from(longest);
        let fit = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
        shrunk = resize(image, fit(w), fit(h), FilterType::Triangle);
        &shrunk
    } else {
        image
    };
    let square = pad_square_white(image);
    let sized = if square.width() == p.size {
        square
    } else {
        resize(&square, p.size, p.size, FilterType::CatmullRom)
    };
    let plane = (p.size as usize) * (p.size as usize);
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in sized.pixels().enumerate() {
        for rgb in 0..3 {
            let v = (f32::from(px.0[rgb]) / 255.0 - p.mean[rgb]) / p.std[rgb];
            let channel = if p.bgr { 2 - rgb } else { rgb };
            out[channel * plane + i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wd(size: u32) -> Preprocess {
        Preprocess {
            size,
            mean: [0.5; 3],
            std: [0.5; 3],
            bgr: true,
        }
    }

    #[test]
    fn pads_centred_on_white() {
        let img = RgbImage::from_pixel(1, 3, Rgb([0, 0, 0]));
        let sq = pad_square_white(&img);
        assert_eq!(sq.dimensions(), (3, 3));
        for y in 0..3 {
            assert_eq!(sq.get_pixel(0, y).0, [255; 3]);
            assert_eq!(sq.get_pixel(1, y).0, [0; 3]);
            assert_eq!(sq.get_pixel(2, y).0, [255; 3]);
        }
        // Odd padding goes right/bottom: 2 wide in 5 → offset 1 (floor of 3/2).
        let sq = pad_square_white(&RgbImage::from_pixel(5, 2, Rgb([0, 0, 0])));
        assert_eq!(sq.get_pixel(0, 0).0, [255; 3]);
        assert_eq!(sq.get_pixel(0, 1).0, [0; 3]);
        assert_eq!(sq.get_pixel(0, 2).0, [0; 3]);
        assert_eq!(sq.get_pixel(0, 3).0, [255; 3]);
    }

    #[test]
    fn normalises_and_swaps_to_bgr() {
        // 2×2 at the model size: no resize, so values are exact.
        let img = RgbImage::from_fn(2, 2, |x, y| Rgb([255, (x * 255) as u8, (y * 255) as u8]));
        let v = preprocess_rgb(&img, &wd(2));
        // Channel 0 is blue (= y), 1 green (= x), 2 red (= 1 everywhere); values in [-1, 1].
        assert_eq!(&v[0..4], &[-1.0, -1.0, 1.0, 1.0]);
        assert_eq!(&v[4..8], &[-1.0, 1.0, -1.0, 1.0]);
        assert_eq!(&v[8..12], &[1.0; 4]);
        let rgb = preprocess_rgb(
            &img,
            &Preprocess {
                bgr: false,
                ..wd(2)
            },
        );
        assert_eq!(&rgb[0..4], &[1.0; 4]);
    }

    #[test]
    fn extreme_aspect_ratios_stay_small() {
        // 20000×20 would pad to a 1.2 GB canvas; it is shrunk first.
        let v = preprocess_rgb(&RgbImage::from_pixel(20000, 20, Rgb([0, 0, 0])), &wd(16));
        assert_eq!(v.len(), 3 * 256);
        assert!((v[0] - 1.0).abs() < 1e-3, "top-left is white padding");
        let one = preprocess_rgb(&RgbImage::from_pixel(1, 1, Rgb([0, 0, 0])), &wd(16));
        assert_eq!(one.len(), 3 * 256);
    }

    #[test]
    fn resizes_to_the_model_size() {
        // A wide strip: the top rows of the square are white padding far from the strip.
        let v = preprocess_rgb(&RgbImage::from_pixel(80, 16, Rgb([128, 128, 128])), &wd(8));
        assert_eq!(v.len(), 3 * 64);
        assert!((v[0] - 1.0).abs() < 1e-3, "{}", v[0]);
        // A nearly square grey image stays grey in the middle.
        let v = preprocess_rgb(&RgbImage::from_pixel(40, 38, Rgb([128, 128, 128])), &wd(8));
        let mid = 4 * 8 + 4;
        assert!(
            (v[mid] - (128.0 / 255.0 - 0.5) / 0.5).abs() < 0.02,
            "{}",
            v[mid]
        );
    }
}
