//! Helpers shared by the integration tests: small generated images and folders.
#![allow(dead_code)]

pub mod forge;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};

/// The repository's fixtures/data folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/data")
}

/// A textured RGB image (different per `seed`).
pub fn textured(w: u32, h: u32, seed: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        let v = x
            .wrapping_mul(31 + seed)
            .wrapping_add(y.wrapping_mul(17 + 3 * seed))
            ^ (x * y + seed * 101);
        Rgb([
            (v % 251) as u8,
            ((v / 3) % 241) as u8,
            ((x / 4 + y / 4 + seed) % 2 * 200) as u8,
        ])
    }))
}

/// Encodes an image in `format`.
pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, format).expect("encoding a test image");
    c.into_inner()
}

/// Writes `bytes` to `dir/name`, creating folders.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A dataset TOML pointing at `image_dir`, with extra `[general]` lines.
pub fn toml_for(image_dir: &Path, general: &str, dataset: &str) -> String {
    format!(
        "[general]\n{general}\n[[datasets]]\n{dataset}\n[[datasets.subsets]]\nimage_dir = {:?}\n",
        image_dir.display().to_string()
    )
}

/// 8×8 average pooling of each channel of a `[C, H, W]` image (the tests' stand-in for the
/// autoencoder).
pub fn pool8(image: &fluxlora_io::HostTensor) -> fluxlora_io::HostTensor {
    let (c, h, w) = (image.shape[0], image.shape[1], image.shape[2]);
    let (lh, lw) = (h / 8, w / 8);
    let mut out = vec![0.0f32; c * lh * lw];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[ch * lh * lw + (y / 8) * lw + x / 8] +=
                    image.data[ch * h * w + y * w + x] / 64.0;
            }
        }
    }
    fluxlora_io::HostTensor {
        shape: vec![c, lh, lw],
        data: out,
    }
}
