//! Sharpness as the variance of the Laplacian (Pech-Pacheco et al. 2000), the measure behind the
//! common "variance of Laplacian" blur check.
//!
//! The image is first shrunk to a fixed working size — longest side at most [`WORKING_SIDE`]
//! pixels, aspect kept, triangle filter — so that scores of large files do not depend on their
//! resolution (smaller images are measured as they are: enlarging would blur them), then
//! converted to luma in 0..255 (Rec. 709 weights). The 4-neighbour Laplacian
//! `4·p(x,y) − p(x−1,y) − p(x+1,y) − p(x,y−1) − p(x,y+1)` is taken at every interior
//! pixel and its population variance is the score. Below [`DEFAULT_BLUR_THRESHOLD`] (100, the value
//! usually quoted for 8-bit images with OpenCV's `Laplacian` using the same kernel) an image is
//! reported as blurry. Flat artwork (logos, plain backgrounds) also scores low: it is a warning,
//! not a blocking problem.

use image::imageops::FilterType;
use image::DynamicImage;

/// Longest side of the working image.
pub const WORKING_SIDE: u32 = 512;

/// Default threshold below which an image is reported as blurry.
pub const DEFAULT_BLUR_THRESHOLD: f64 = 100.0;

/// Variance of the Laplacian at the working size; `None` when the working image is under 3×3.
pub fn sharpness(image: &DynamicImage) -> Option<f64> {
    let (w, h) = (image.width() as f64, image.height() as f64);
    let s = (WORKING_SIDE as f64 / w.max(h)).min(1.0);
    let (ww, wh) = (
        ((w * s).round() as u32).max(1),
        ((h * s).round() as u32).max(1),
    );
    if ww < 3 || wh < 3 {
        return None;
    }
    let luma = if (ww, wh) == (image.width(), image.height()) {
        image.to_luma32f()
    } else {
        image
            .resize_exact(ww, wh, FilterType::Triangle)
            .to_luma32f()
    };
    let px: Vec<f64> = luma.pixels().map(|p| p.0[0] as f64 * 255.0).collect();
    laplacian_variance(&px, ww as usize, wh as usize)
}

/// Population variance of the 4-neighbour Laplacian over interior pixels of a row-major
/// `width`×`height` luma image.
pub fn laplacian_variance(px: &[f64], width: usize, height: usize) -> Option<f64> {
    if width < 3 || height < 3 {
        return None;
    }
    let n = ((width - 2) * (height - 2)) as f64;
    let (mut sum, mut sum2) = (0.0, 0.0);
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            let i = y * width + x;
            let l = 4.0 * px[i] - px[i - 1] - px[i + 1] - px[i - width] - px[i + width];
            sum += l;
            sum2 += l * l;
        }
    }
    let mean = sum / n;
    Some((sum2 / n - mean * mean).max(0.0))
}
