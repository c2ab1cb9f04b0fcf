//! Random bytes and random damage to small valid PNG, JPEG, WebP and BMP files — byte flips,
//! truncation, header dimensions overwritten with large values — must never panic the decoder,
//! and any image it accepts must be within the limits it was given.

use crate::common;

use std::sync::OnceLock;

use common::forge::*;
use common::textured;
use fluxlora_data::decode::decode_bytes_with;
use fluxlora_data::ImageLimits;
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgba};
use proptest::prelude::*;

/// Small limits, so that a header edit can easily cross them.
const LIMITS: ImageLimits = ImageLimits {
    max_pixels: 4096,
    max_side: 128,
    max_decoded_bytes: 64 * 1024,
};

/// The valid base files (all within [`LIMITS`]), encoded once.
fn bases() -> &'static [(ImageFormat, Vec<u8>)] {
    static BASES: OnceLock<Vec<(ImageFormat, Vec<u8>)>> = OnceLock::new();
    BASES.get_or_init(|| {
        let rgb = textured(24, 16, 3);
        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(12, 20, |x, y| {
            Rgba([(x * 20) as u8, (y * 12) as u8, 90, (x * y) as u8])
        }));
        let mut out = vec![];
        for img in [&rgb, &rgba] {
            for f in [ImageFormat::Png, ImageFormat::WebP, ImageFormat::Bmp] {
                out.push((f, encode(img, f)));
            }
        }
        out.push((ImageFormat::Jpeg, encode(&rgb, ImageFormat::Jpeg)));
        out.push((ImageFormat::Png, apng(&[rgb.clone(), textured(24, 16, 4)])));
        out.push((
            ImageFormat::WebP,
            animated_webp(24, 16, &[rgb.clone(), rgb.clone()]),
        ));
        out
    })
}

/// One damage to a file.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR bytes at positions.
    Flip(Vec<(prop::sample::Index, u8)>),
    /// Keep a prefix.
    Truncate(prop::sample::Index),
    /// Overwrite the header's width and height (fixing the PNG header CRC).
    Dims(u32, u32),
    /// Header dimensions, then byte flips.
    DimsAndFlip(u32, u32, Vec<(prop::sample::Index, u8)>),
}

fn dim() -> impl Strategy<Value = u32> {
    prop_oneof![
        1..=200u32,
        Just(0u32),
        Just(16383u32),
        Just(16384u32),
        Just(65535u32),
        Just(100_000u32),
        Just(i32::MAX as u32),
        any::<u32>(),
    ]
}

fn flips() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..6)
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        flips().prop_map(Damage::Flip),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (dim(), dim()).prop_map(|(w, h)| Damage::Dims(w, h)),
        (dim(), dim(), flips()).prop_map(|(w, h, f)| Damage::DimsAndFlip(w, h, f)),
    ]
}

fn set_dims(format: ImageFormat, bytes: &mut [u8], w: u32, h: u32) {
    match format {
        ImageFormat::Png => set_png_dims(bytes, w, h),
        ImageFormat::Jpeg => {
            set_jpeg_dims(bytes, w as u16, h as u16);
        }
        ImageFormat::Bmp => set_bmp_dims(bytes, w as i32, h as i32),
        // Simple lossless files only; animated ones get their canvas (VP8X) overwritten.
        _ if &bytes[12..16] == b"VP8L" => set_vp8l_dims(bytes, w.max(1), h.max(1)),
        _ => {
            let (w, h) = (
                w.wrapping_sub(1).to_le_bytes(),
                h.wrapping_sub(1).to_le_bytes(),
            );
            bytes[24..27].copy_from_slice(&w[..3]);
            bytes[27..30].copy_from_slice(&h[..3]);
        }
    }
}

fn flip(bytes: &mut [u8], edits: &[(prop::sample::Index, u8)]) {
    for (i, x) in edits {
        let i = i.index(bytes.len());
        bytes[i] ^= x;
    }
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(d) = decode_bytes_with(bytes, &LIMITS) {
        let (w, h) = (d.image.width(), d.image.height());
        prop_assert!(w > 0 && h > 0);
        prop_assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels, "{w}×{h}");
        prop_assert!(w.max(h) <= LIMITS.max_side, "{w}×{h}");
        prop_assert!(d.image.as_bytes().len() as u64 <= LIMITS.max_decoded_bytes);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Damaged valid files: Ok within the limits, or Err; never a panic or an abort.
    #[test]
    fn damaged_images_never_panic(base in any::<prop::sample::Index>(), damage in damage()) {
        let (format, valid) = &bases()[base.index(bases().len())];
        prop_assert!(decode_bytes_with(valid, &LIMITS).is_ok(), "{format:?} base");
        let mut bytes = valid.clone();
        match &damage {
            Damage::Flip(edits) => flip(&mut bytes, edits),
            Damage::Truncate(at) => bytes.truncate(at.index(bytes.len())),
            Damage::Dims(w, h) => set_dims(*format, &mut bytes, *w, *h),
            Damage::DimsAndFlip(w, h, edits) => {
                set_dims(*format, &mut bytes, *w, *h);
                flip(&mut bytes, edits);
            }
        }
        check(&bytes)?;
    }

    /// Random bytes, bare or behind a real signature so that they reach a decoder.
    #[test]
    fn random_bytes_never_panic(
        magic in prop::sample::select(vec![
            &b""[..], &PNG_SIGNATURE[..], &[0xFF, 0xD8, 0xFF][..], b"RIFF\x40\0\0\0WEBPVP8L",
            b"RIFF\x40\0\0\0WEBPVP8X", b"BM", b"GIF89a",
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend(tail);
        check(&bytes)?;
    }
}

#[test]
fn every_base_header_edit_crosses_the_limits_cleanly() {
    for (format, valid) in bases() {
        for (w, h) in [(100_000, 100_000), (129, 1), (1, 16383), (65535, 65535)] {
            let mut bytes = valid.clone();
            set_dims(*format, &mut bytes, w, h);
            assert!(
                decode_bytes_with(&bytes, &LIMITS).is_err(),
                "{format:?} {w}×{h}"
            );
        }
    }
}
