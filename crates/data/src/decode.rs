//! Reading one image file: JPEG, PNG, WebP or BMP, with EXIF orientation applied.
//!
//! Any colour type the decoders produce (grayscale, 16-bit, CMYK JPEG — converted to RGB by the
//! JPEG decoder —, palette PNG — expanded by the PNG decoder —, with or without alpha) is kept at
//! its native depth here and converted to RGB floats only after cropping ([`crate::pixels`]).
//! Failures never panic: they come back as a [`DecodeFailure`] whose text says what is wrong
//! with the file and what to do.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use sha2::{Digest, Sha256};

/// A decoded image, oriented, at its native bit depth.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub image: DynamicImage,
    /// Lower-case hex SHA-256 of the file bytes.
    pub content_hash: String,
    pub format: &'static str,
    /// Colour type as decoded, e.g. `Rgb8`, `L16`, `Rgba8`.
    pub color: String,
    pub has_alpha: bool,
}

/// Why a file could not be used as an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    pub reason: String,
}

impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

fn fail(reason: impl Into<String>) -> DecodeFailure {
    DecodeFailure {
        reason: reason.into(),
    }
}

/// Largest decoded image accepted (bytes at native depth), to fail cleanly on decompression bombs.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads the file's bytes, refusing anything that is not a readable regular file
/// (directories, FIFOs and devices would block or fail; dangling symlinks have no target).
pub fn read_file_bytes(path: &Path) -> Result<Vec<u8>, DecodeFailure> {
    let meta = std::fs::metadata(path).map_err(|e| {
        let dangling = std::fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(false);
        if dangling {
            fail(format!("unreadable: a symbolic link whose target does not exist ({e}); fix or remove the link"))
        } else {
            fail(format!("unreadable: {e}; check that the file exists and its permissions"))
        }
    })?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (FIFO, socket or device)"
        };
        return Err(fail(format!(
            "unreadable: {what} named like an image; remove or rename it"
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| fail(format!("unreadable: {e}; check the file's permissions")))?;
    if bytes.is_empty() {
        return Err(fail("empty file (0 bytes); re-export or remove it"));
    }
    Ok(bytes)
}

/// Decodes a whole image file.
pub fn decode_file(path: &Path) -> Result<DecodedImage, DecodeFailure> {
    let bytes = read_file_bytes(path)?;
    decode_bytes(&bytes)
}

/// Decodes image bytes (format detected from the content, not the name).
pub fn decode_bytes(bytes: &[u8]) -> Result<DecodedImage, DecodeFailure> {
    let content_hash = sha256_hex(bytes);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(format!("unreadable: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp)) => {
            f
        }
        Some(other) => {
            return Err(fail(format!(
                "{other:?} images are not supported; convert it to PNG, JPEG or WebP"
            )))
        }
        None => {
            return Err(fail(
                "not an image (unrecognised content); the file is corrupt or mislabelled",
            ))
        }
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(fail(
            "corrupt JPEG: truncated (no end-of-image marker after the image data); re-export it",
        ));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| fail(format!("corrupt {}: {e}", format_name(format))))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| fail(format!("corrupt {}: {e}", format_name(format))))?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(fail("image has zero width or height"));
    }
    let color = format!("{:?}", image.color());
    let has_alpha = image.color().has_alpha();
    Ok(DecodedImage {
        image,
        content_hash,
        format: format_name(format),
        color,
        has_alpha,
    })
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

/// Whether a JPEG's entropy-coded data is followed by an end-of-image marker.
///
/// The tolerant JPEG decoder fills a truncated image with grey instead of failing, so this walks
/// the marker segments: header segments are skipped by their length, entropy-coded data is
/// scanned for the next marker (`FF 00` stuffing and restart markers are data), until `FF D9`.
/// EXIF thumbnails live inside APP segments and so cannot fake the end marker.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    let mut in_scan = false;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            if in_scan {
                i += 1;
                continue;
            }
            return false;
        }
        let m = b[i + 1];
        match m {
            0xD9 => return true,
            // Fill byte before a marker.
            0xFF => i += 1,
            // Stuffed zero or restart marker inside entropy-coded data.
            0x00 | 0xD0..=0xD7 if in_scan => i += 2,
            // Standalone markers (TEM, RSTn) carry no length.
            0x01 | 0xD0..=0xD7 => i += 2,
            0x00 => return false,
            _ => {
                if i + 3 >= b.len() {
                    return false;
                }
                let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                if len < 2 {
                    return false;
                }
                i += 2 + len;
                in_scan = m == 0xDA;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = ImageBuffer::from_fn(w, h, |x, y| {
            Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn complete_and_truncated_jpeg() {
        let j = jpeg(40, 30);
        assert!(jpeg_is_complete(&j));
        assert!(decode_bytes(&j).is_ok());
        for cut in [j.len() - 2, j.len() * 2 / 3, 20] {
            assert!(!jpeg_is_complete(&j[..cut]), "cut at {cut}");
            let e = decode_bytes(&j[..cut]).unwrap_err();
            assert!(e.reason.contains("JPEG"), "{e}");
        }
    }

    #[test]
    fn garbage_and_empty_are_reported() {
        assert!(decode_bytes(b"hello world, not an image")
            .unwrap_err()
            .reason
            .contains("not an image"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
