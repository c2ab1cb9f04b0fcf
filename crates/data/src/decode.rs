//! Reading one image file: JPEG, PNG, WebP or BMP, with EXIF orientation applied.
//!
//! Any colour type the decoders produce (grayscale, 16-bit, CMYK JPEG — converted to RGB by the
//! JPEG decoder —, palette PNG — expanded by the PNG decoder —, with or without alpha) is
//! kept at its native depth here and converted to RGB floats only after cropping
//! ([`crate::pixels`]).
//!
//! Hostile files are refused before any pixel memory is taken: the header's dimensions are
//! checked against [`ImageLimits`] (pixel count, longest side, decoded bytes), and the same
//! limits are handed to the decoder (`image::Limits`). Animated PNG and WebP files decode to
//! their first frame with a warning ([`DecodedImage::warnings`]).
//! Failures never panic: they come back as a [`DecodeFailure`] whose text says what is wrong
//! with the file and what to do.

use std::io::Cursor;
use std::path::Path;

use image::codecs::{bmp::BmpDecoder, jpeg::JpegDecoder, png::PngDecoder, webp::WebPDecoder};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageResult, Limits};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A decoded image, oriented, at its native bit depth.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The pixels, EXIF orientation applied.
    pub image: DynamicImage,
    /// Lower-case hex SHA-256 of the file bytes.
    pub content_hash: String,
    /// `JPEG`, `PNG`, `WebP` or `BMP`.
    pub format: &'static str,
    /// Colour type as decoded, e.g. `Rgb8`, `L16`, `Rgba8`.
    pub color: String,
    /// Whether the decoded colour type has an alpha channel.
    pub has_alpha: bool,
    /// Things about the file worth a look that did not stop decoding, e.g.
    /// [`ANIMATED_WARNING`]. Empty for ordinary images.
    pub warnings: Vec<String>,
}

/// Why a file could not be used as an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    /// What is wrong and what to do, e.g. `corrupt PNG: …; re-export it`. Reasons of files over
    /// an [`ImageLimits`] limit start with [`TOO_LARGE`].
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

/// Default of [`ImageLimits::max_decoded_bytes`]: 1 GiB at native depth.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// How every [`DecodeFailure::reason`] of an over-limit image starts.
pub const TOO_LARGE: &str = "image too large: ";

/// The warning of an animated PNG (APNG) or WebP, of which only the first frame is decoded.
pub const ANIMATED_WARNING: &str = "animated image: only the first frame is used; \
     export the frame you want as a still image to silence this warning";

/// Limits checked against an image's header before any pixel is decoded, so that a small file
/// declaring a huge image (a decompression bomb) fails cleanly instead of exhausting memory.
///
/// In a dataset TOML they are the `[general]` keys `max_image_pixels`, `max_image_side` and
/// `max_image_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLimits {
    /// Most pixels (width × height). Default 64 Mi = 67,108,864 (8192 × 8192; about 67.1 MP).
    pub max_pixels: u64,
    /// Longest side accepted, in pixels. Default 32768 (long panoramas such as 20000 × 20 stay
    /// usable; the pixel limit is what bounds memory).
    pub max_side: u32,
    /// Most bytes of the decoded image at its native depth (e.g. 8 per pixel for RGBA 16-bit),
    /// also the decoder's allocation limit. Default [`MAX_DECODED_BYTES`] (1 GiB).
    pub max_decoded_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 64 * 1024 * 1024,
            max_side: 32_768,
            max_decoded_bytes: MAX_DECODED_BYTES,
        }
    }
}

impl ImageLimits {
    /// The same limits for the `image` crate's decoders.
    pub fn to_image_limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        limits.max_alloc = Some(self.max_decoded_bytes);
        limits
    }

    /// Checks a header's dimensions and decoded size; the error names the limit and the
    /// dataset-config key that raises it.
    pub fn check(&self, width: u32, height: u32, decoded_bytes: u64) -> Result<(), DecodeFailure> {
        let pixels = u64::from(width) * u64::from(height);
        let raise = |key: &str| match key {
            // The training config can set these two for a plain image folder too.
            "max_image_pixels" | "max_image_side" => format!(
                "shrink the image or raise {key} in the dataset config's [general] table (or \
                 in the training config)"
            ),
            _ => format!("shrink the image or raise {key} in the dataset config's [general] table"),
        };
        if pixels > self.max_pixels {
            return Err(fail(format!(
                "{TOO_LARGE}declares {width}×{height} pixels ({}), over the limit of {} \
                 (max_image_pixels); {}",
                megapixels(pixels),
                megapixels(self.max_pixels),
                raise("max_image_pixels")
            )));
        }
        if width.max(height) > self.max_side {
            return Err(fail(format!(
                "{TOO_LARGE}declares {width}×{height} pixels, a side over the limit of {} \
                 (max_image_side); {}",
                self.max_side,
                raise("max_image_side")
            )));
        }
        if decoded_bytes > self.max_decoded_bytes {
            return Err(fail(format!(
                "{TOO_LARGE}{width}×{height} pixels decode to {}, over the limit of {} \
                 (max_image_bytes); {}",
                mebibytes(decoded_bytes),
                mebibytes(self.max_decoded_bytes),
                raise("max_image_bytes")
            )));
        }
        Ok(())
    }
}

/// `67108864` → `67.1 MP`.
fn megapixels(pixels: u64) -> String {
    format!("{:.1} MP", pixels as f64 / 1e6)
}

/// `1073741824` → `1024.0 MiB`.
fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

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
        let dangling = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if dangling {
            fail(format!(
                "unreadable: a symbolic link whose target does not exist ({e}); \
                 fix or remove the link"
            ))
        } else {
            fail(format!(
                "unreadable: {e}; check that the file exists and its permissions"
            ))
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

/// Decodes a whole image file with the default [`ImageLimits`].
pub fn decode_file(path: &Path) -> Result<DecodedImage, DecodeFailure> {
    decode_file_with(path, &ImageLimits::default())
}

/// Decodes a whole image file, refusing images over `limits` before decoding their pixels.
pub fn decode_file_with(path: &Path, limits: &ImageLimits) -> Result<DecodedImage, DecodeFailure> {
    let bytes = read_file_bytes(path)?;
    decode_bytes_with(&bytes, limits)
}

/// Decodes image bytes (format detected from the content, not the name) with the default
/// [`ImageLimits`].
pub fn decode_bytes(bytes: &[u8]) -> Result<DecodedImage, DecodeFailure> {
    decode_bytes_with(bytes, &ImageLimits::default())
}

/// Decodes image bytes (format detected from the content, not the name).
///
/// The header is read first and an image over `limits` is refused before any pixel buffer is
/// allocated; the decoder is then given the same limits. An animated PNG or WebP decodes to
/// its first frame, with [`ANIMATED_WARNING`] in [`DecodedImage::warnings`].
pub fn decode_bytes_with(
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<DecodedImage, DecodeFailure> {
    if bytes.is_empty() {
        return Err(fail("empty file (0 bytes); re-export or remove it"));
    }
    let content_hash = sha256_hex(bytes);
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp)) => f,
        Ok(other) => {
            return Err(fail(format!(
                "{other:?} images are not supported; convert it to PNG, JPEG or WebP"
            )))
        }
        Err(_) => {
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
    let failed = |e| decode_error(format, e);
    let (mut decoder, animated) = open_decoder(format, bytes, limits).map_err(failed)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(fail("image has zero width or height"));
    }
    limits.check(width, height, decoder.total_bytes())?;
    decoder
        .set_limits(limits.to_image_limits())
        .map_err(failed)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(failed)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(fail("image has zero width or height"));
    }
    let color = format!("{:?}", image.color());
    let has_alpha = image.color().has_alpha();
    let warnings = if animated {
        vec![ANIMATED_WARNING.to_string()]
    } else {
        Vec::new()
    };
    Ok(DecodedImage {
        image,
        content_hash,
        format: format_name(format),
        color,
        has_alpha,
        warnings,
    })
}

/// The decoder of `format` with its header read, and whether the file is animated.
fn open_decoder<'a>(
    format: ImageFormat,
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> ImageResult<(Box<dyn ImageDecoder + 'a>, bool)> {
    let r = Cursor::new(bytes);
    Ok(match format {
        ImageFormat::Png => {
            // PNG takes its limits when made. The side limit waits for `set_limits`, after
            // `ImageLimits::check` has named the dimensions; allocations are capped already.
            let mut header = Limits::default();
            header.max_alloc = Some(limits.max_decoded_bytes);
            let d = PngDecoder::with_limits(r, header)?;
            let animated = d.is_apng()?;
            (Box::new(d), animated)
        }
        ImageFormat::WebP => {
            let d = WebPDecoder::new(r)?;
            let animated = d.has_animation();
            (Box::new(d), animated)
        }
        ImageFormat::Jpeg => (Box::new(JpegDecoder::new(r)?), false),
        ImageFormat::Bmp => (Box::new(BmpDecoder::new(r)?), false),
        other => {
            let hint = image::error::ImageFormatHint::Exact(other);
            return Err(image::ImageError::Unsupported(hint.into()));
        }
    })
}

/// A decoder error as a failure: over a decoder limit, or corrupt.
fn decode_error(format: ImageFormat, e: image::ImageError) -> DecodeFailure {
    match e {
        image::ImageError::Limits(l) => fail(format!(
            "{TOO_LARGE}decoding this {} needs more than the limits allow ({l}); shrink the \
             image or raise max_image_bytes in the dataset config's [general] table",
            format_name(format)
        )),
        e => fail(format!("corrupt {}: {e}", format_name(format))),
    }
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
        assert!(decode_bytes(b"").unwrap_err().reason.contains("empty file"));
    }

    #[test]
    fn limit_failures_name_the_limit_and_its_key() {
        let l = ImageLimits::default();
        let e = l
            .check(100_000, 100_000, 30_000_000_000)
            .unwrap_err()
            .reason;
        assert_eq!(
            e,
            "image too large: declares 100000×100000 pixels (10000.0 MP), over the limit of \
             67.1 MP (max_image_pixels); shrink the image or raise max_image_pixels in the \
             dataset config's [general] table (or in the training config)"
        );
        let e = l.check(40_000, 10, 1_200_000).unwrap_err().reason;
        assert!(
            e.starts_with(TOO_LARGE) && e.contains("32768 (max_image_side)"),
            "{e}"
        );
        let small = ImageLimits {
            max_decoded_bytes: 1 << 20,
            ..l
        };
        let e = small.check(1000, 1000, 3_000_000).unwrap_err().reason;
        assert!(
            e.contains("2.9 MiB, over the limit of 1.0 MiB (max_image_bytes)"),
            "{e}"
        );
        assert!(l.check(8192, 8192, 8192 * 8192 * 8).is_ok());
        let lim = l.to_image_limits();
        assert_eq!(lim.max_image_width, Some(32_768));
        assert_eq!(lim.max_alloc, Some(MAX_DECODED_BYTES));
    }
}
