//! Near-duplicate detection with the difference hash (dHash, Krawetz 2013) plus a brightness
//! check.
//!
//! The image is reduced to a 9×8 grayscale thumbnail (triangle filter, luma 0..255); bit
//! `8·y + x` of the hash is set when pixel (x, y) is brighter than its right neighbour.
//! Re-encoded, resized or slightly edited copies of a picture differ in few bits; unrelated
//! pictures in about 32. dHash alone cannot tell flat or smoothly shaded images apart (they all
//! hash to nearly 0), so a pair is reported only when, in addition, the thumbnails' mean absolute
//! difference is at most [`DEFAULT_MAX_THUMB_DIFFERENCE`] of full scale.

use image::imageops::FilterType;
use image::DynamicImage;

/// Default largest Hamming distance (of 64 bits) that counts as a near-duplicate.
pub const DEFAULT_MAX_DISTANCE: u32 = 6;

/// Largest mean absolute thumbnail difference (fraction of full scale) for a near-duplicate.
pub const DEFAULT_MAX_THUMB_DIFFERENCE: f64 = 0.08;

/// The 9×8 luma thumbnail (row-major, 72 values), or `None` for images smaller than 9×8.
pub fn thumbnail(image: &DynamicImage) -> Option<Vec<u8>> {
    if image.width() < 9 || image.height() < 8 {
        return None;
    }
    Some(
        image
            .resize_exact(9, 8, FilterType::Triangle)
            .to_luma8()
            .into_raw(),
    )
}

/// The 64-bit difference hash of a 9×8 thumbnail.
pub fn dhash(thumb: &[u8]) -> u64 {
    let mut h = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            if thumb[y * 9 + x] > thumb[y * 9 + x + 1] {
                h |= 1 << (y * 8 + x);
            }
        }
    }
    h
}

/// Number of differing bits.
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Mean absolute difference of two thumbnails as a fraction of full scale.
pub fn thumb_difference(a: &[u8], b: &[u8]) -> f64 {
    let sum: u32 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u32).sum();
    sum as f64 / (255.0 * a.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_the_definition() {
        // Row 0 decreasing (every bit set), other rows increasing (no bit set).
        let mut px = vec![0u8; 72];
        for x in 0..9 {
            px[x] = (9 - x) as u8;
            for y in 1..8 {
                px[y * 9 + x] = x as u8;
            }
        }
        assert_eq!(dhash(&px), 0xFF);
        assert_eq!(distance(0xFF, 0x0F), 4);
        assert!((thumb_difference(&[0, 255], &[255, 255]) - 0.5).abs() < 1e-12);
    }
}
