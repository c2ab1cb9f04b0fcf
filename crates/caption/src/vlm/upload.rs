//! Image upload for a vision-language server: decoded, oriented, flattened on white, shrunk so the
//! longer side is at most `max_side` (aspect kept, never enlarged), re-encoded as JPEG and
//! wrapped in a `data:image/jpeg;base64,…` URL.

use std::io::Cursor;
use std::path::Path;

use base64::Engine;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{resize, FilterType};
use image::RgbImage;

use crate::error::{CaptionError, Result};
use crate::image_io::load_rgb;

/// The size an image of `w × h` is sent at so that its longer side is at most `max_side`.
pub fn fitted_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let longest = w.max(h);
    if longest <= max_side || max_side == 0 {
        return (w, h);
    }
    let scale = f64::from(max_side) / f64::from(longest);
    let fit = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, max_side);
    (fit(w), fit(h))
}

/// JPEG bytes of `image` shrunk to fit `max_side`.
pub fn encode_jpeg(path: &Path, image: &RgbImage, max_side: u32, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = fitted_size(image.width(), image.height(), max_side);
    let resized;
    let image = if (w, h) == image.dimensions() {
        image
    } else {
        resized = resize(image, w, h, FilterType::Lanczos3);
        &resized
    };
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut bytes), quality.clamp(1, 100))
        .encode_image(image)
        .map_err(|e| CaptionError::Image {
            path: path.to_path_buf(),
            reason: format!("JPEG re-encoding failed: {e}"),
        })?;
    Ok(bytes)
}

/// The image file as a base64 JPEG data URL.
pub fn image_data_url(path: &Path, max_side: u32, quality: u8) -> Result<String> {
    let jpeg = encode_jpeg(path, &load_rgb(path)?, max_side, quality)?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_longer_side() {
        assert_eq!(fitted_size(4000, 3000, 1024), (1024, 768));
        assert_eq!(fitted_size(300, 3000, 1000), (100, 1000));
        assert_eq!(fitted_size(20000, 20, 1024), (1024, 1));
        assert_eq!(fitted_size(800, 600, 1024), (800, 600));
        assert_eq!(fitted_size(800, 600, 0), (800, 600));
    }

    #[test]
    fn data_url_decodes_to_a_fitted_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        RgbImage::from_fn(64, 32, |x, _| image::Rgb([x as u8 * 4, 100, 50]))
            .save(&path)
            .unwrap();
        let url = image_data_url(&path, 16, 90).unwrap();
        let b64 = url
            .strip_prefix("data:image/jpeg;base64,")
            .expect(&url[..40]);
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (16, 8));
    }

    #[test]
    fn corrupt_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.webp");
        std::fs::write(&path, b"RIFF\x00\x00\x00\x00WEBPjunk").unwrap();
        let err = image_data_url(&path, 512, 90).unwrap_err().to_string();
        assert!(err.contains("bad.webp"), "{err}");
    }
}
