//! Reading an image for a captioner: decoded (JPEG, PNG, WebP, BMP), EXIF orientation applied,
//! any colour type converted to 8-bit RGB with transparency composited on white (as the WD
//! tagger reference code does). Failures come back as [`CaptionError::Image`] naming the file.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::error::{CaptionError, Result};

/// Largest decoder allocation accepted, so a decompression bomb fails cleanly.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

fn image_error(path: &Path, reason: impl Into<String>) -> CaptionError {
    CaptionError::Image { path: path.to_path_buf(), reason: reason.into() }
}

/// Decodes an image file to 8-bit RGB (oriented, alpha composited on white).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| image_error(path, format!("unreadable: {e}")))?;
    decode_rgb(path, &bytes)
}

/// Decodes image bytes (the path only names the image in errors).
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(image_error(path, "empty file (0 bytes)"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(path, e.to_string()))?;
    if reader.format().is_none() {
        return Err(image_error(path, "unknown format (not JPEG, PNG, WebP or BMP)"));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| image_error(path, e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| image_error(path, e.to_string()))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e.to_string()))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(image_error(path, format!("{}×{} pixels", image.width(), image.height())));
    }
    image.apply_orientation(orientation);
    Ok(flatten_on_white(&image))
}

/// RGB with any alpha channel composited on a white background.
pub fn flatten_on_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        let mix = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_is_composited_on_white() {
        let mut img = image::RgbaImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        let rgb = flatten_on_white(&DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }

    #[test]
    fn corrupt_and_empty_files_name_the_image() {
        let p = Path::new("broken.jpg");
        for bytes in [&b""[..], b"not an image at all", &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10][..]] {
            let err = decode_rgb(p, bytes).unwrap_err().to_string();
            assert!(err.contains("broken.jpg"), "{err}");
        }
    }

    #[test]
    fn png_round_trip() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 50, y as u8 * 100, 7]));
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_rgb(Path::new("a.png"), &bytes).unwrap(), img);
    }
}
