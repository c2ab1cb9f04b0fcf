//! Reading an image for a captioner: decoded (JPEG, PNG, WebP, BMP), EXIF orientation applied,
//! any colour type converted to 8-bit RGB with transparency composited on white (as the WD
//! tagger reference code does). Failures come back as [`CaptionError::Image`] naming the file.
//!
//! Decoding is the data crate's ([`fluxlora_data::decode`]): the same formats, the same
//! refusal of decompression bombs before any pixel is allocated (default
//! [`fluxlora_data::ImageLimits`]), the same first-frame handling of animated files.

use std::path::Path;

use fluxlora_data::decode::{decode_bytes, read_file_bytes, DecodeFailure};
use image::{DynamicImage, RgbImage};

use crate::error::{CaptionError, Result};

/// Largest decoded image accepted (bytes at native depth), so a decompression bomb fails
/// cleanly: the data crate's default limit.
pub const MAX_DECODE_BYTES: u64 = fluxlora_data::decode::MAX_DECODED_BYTES;

fn image_error(path: &Path, failure: DecodeFailure) -> CaptionError {
    CaptionError::Image {
        path: path.to_path_buf(),
        reason: failure.reason,
    }
}

/// Decodes an image file to 8-bit RGB (oriented, alpha composited on white).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = read_file_bytes(path).map_err(|f| image_error(path, f))?;
    decode_rgb(path, &bytes)
}

/// Decodes image bytes (the path only names the image in errors).
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<RgbImage> {
    let decoded = decode_bytes(bytes).map_err(|f| image_error(path, f))?;
    Ok(flatten_on_white(&decoded.image))
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
    use std::io::Cursor;

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
        for bytes in [
            &b""[..],
            b"not an image at all",
            &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10][..],
        ] {
            let err = decode_rgb(p, bytes).unwrap_err().to_string();
            assert!(err.contains("broken.jpg"), "{err}");
        }
    }

    #[test]
    fn decompression_bombs_are_refused_by_the_shared_decoder() {
        // A real 1×1 PNG whose IHDR is edited to declare 100000×100000 (CRC fixed).
        let mut bytes = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(1, 1))
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_rgb(Path::new("bomb.png"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bomb.png") && err.contains("max_image_pixels"),
            "{err}"
        );
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
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
