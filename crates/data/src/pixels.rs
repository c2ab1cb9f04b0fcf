//! From a decoded image to training pixels: crop (source pixels) → resize to the bucket
//! (Lanczos3, which widens its kernel when shrinking, so large reductions are area-averaged) →
//! optional horizontal flip → RGB `f32` CHW in [-1, 1], plus the alpha channel as a loss mask in
//! [0, 1] when the subset asks for it. Without `alpha_mask`, alpha is dropped and the colour
//! values underneath are kept (what kohya does).

use fluxlora_io::HostTensor;
use image::imageops::FilterType;
use image::DynamicImage;

use crate::bucket::{Bucket, CropRect};

/// Pixels of one training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPixels {
    /// `[3, height, width]`, values in [-1, 1].
    pub image: HostTensor,
    /// `[1, height, width]`, 1 = learned, 0 = ignored; present when the subset uses `alpha_mask`
    /// and the image has an alpha channel.
    pub mask: Option<HostTensor>,
    /// The Kontext control image, `[3, height, width]` in [-1, 1]: cropped at the target's crop,
    /// resized to the same bucket and flipped with it.
    pub control: Option<HostTensor>,
}

/// Crops, resizes, flips and converts one image.
pub fn training_pixels(
    image: &DynamicImage,
    crop: CropRect,
    bucket: Bucket,
    flip: bool,
    alpha_mask: bool,
) -> TrainingPixels {
    let cropped = image.crop_imm(crop.x, crop.y, crop.width, crop.height);
    let resized = if (crop.width, crop.height) == (bucket.width, bucket.height) {
        cropped
    } else {
        cropped.resize_exact(bucket.width, bucket.height, FilterType::Lanczos3)
    };
    let resized = if flip { resized.fliph() } else { resized };
    let (w, h) = (bucket.width as usize, bucket.height as usize);
    let plane = w * h;
    let want_mask = alpha_mask && image.color().has_alpha();
    let mut data = vec![0.0f32; 3 * plane];
    let mut mask = want_mask.then(|| vec![0.0f32; plane]);
    let rgba = resized.to_rgba32f();
    for (i, px) in rgba.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px.0[c].clamp(0.0, 1.0) * 2.0 - 1.0;
        }
        if let Some(m) = mask.as_mut() {
            m[i] = px.0[3].clamp(0.0, 1.0);
        }
    }
    TrainingPixels {
        image: HostTensor {
            shape: vec![3, h, w],
            data,
        },
        mask: mask.map(|m| HostTensor {
            shape: vec![1, h, w],
            data: m,
        }),
        control: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgba};

    #[test]
    fn layout_range_flip_and_mask() {
        // 4×2 RGBA: red ramps along x, alpha 0 on the left half.
        let img = ImageBuffer::from_fn(4, 2, |x, _| {
            Rgba([(x * 85) as u8, 255, 0, if x < 2 { 0 } else { 255 }])
        });
        let img = DynamicImage::ImageRgba8(img);
        let crop = CropRect {
            x: 0,
            y: 0,
            width: 4,
            height: 2,
        };
        let b = Bucket {
            width: 4,
            height: 2,
        };
        let p = training_pixels(&img, crop, b, false, true);
        assert_eq!(p.image.shape, vec![3, 2, 4]);
        let red: Vec<f32> = p.image.data[0..4].to_vec();
        let want: Vec<f32> = [0.0f32, 85.0, 170.0, 255.0]
            .iter()
            .map(|v| v / 255.0 * 2.0 - 1.0)
            .collect();
        for (a, b) in red.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(p.image.data[8..16].iter().all(|&g| (g - 1.0).abs() < 1e-6));
        assert!(p.image.data[16..24].iter().all(|&b| (b + 1.0).abs() < 1e-6));
        assert_eq!(
            p.mask.as_ref().unwrap().data,
            vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
        );
        let f = training_pixels(&img, crop, b, true, true);
        let fred: Vec<f32> = f.image.data[0..4].to_vec();
        assert_eq!(fred, red.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(f.mask.unwrap().data[0..4], [1.0, 1.0, 0.0, 0.0]);
        assert!(training_pixels(&img, crop, b, false, false).mask.is_none());
    }

    #[test]
    fn sixteen_bit_keeps_precision() {
        let img = ImageBuffer::from_fn(2, 1, |x, _| {
            image::Luma([if x == 0 { 1u16 } else { 65535 }])
        });
        let p = training_pixels(
            &DynamicImage::ImageLuma16(img),
            CropRect {
                x: 0,
                y: 0,
                width: 2,
                height: 1,
            },
            Bucket {
                width: 2,
                height: 1,
            },
            false,
            false,
        );
        let want = 1.0 / 65535.0 * 2.0 - 1.0;
        assert!((p.image.data[0] - want).abs() < 1e-7, "{}", p.image.data[0]);
        assert!(p.image.data[0] > -1.0);
    }

    #[test]
    fn resize_to_bucket_and_crop_window() {
        let img = ImageBuffer::from_fn(64, 32, |x, _| {
            image::Rgb([if x < 32 { 0u8 } else { 255 }, 0, 0])
        });
        let img = DynamicImage::ImageRgb8(img);
        // Right half only → all red = 255 → 1.0 after resize to 16×16.
        let p = training_pixels(
            &img,
            CropRect {
                x: 32,
                y: 0,
                width: 32,
                height: 32,
            },
            Bucket {
                width: 16,
                height: 16,
            },
            false,
            false,
        );
        assert_eq!(p.image.shape, vec![3, 16, 16]);
        assert!(p.image.data[..256].iter().all(|&r| (r - 1.0).abs() < 1e-6));
    }
}
