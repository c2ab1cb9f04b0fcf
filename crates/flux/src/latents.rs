//! Latent packing and position ids (BFL `prepare` / `unpack`).
//!
//! The autoencoder gives latents `[B, 16, H/8, W/8]`. Flux sees them as a sequence of 2×2
//! patches: `b c (h 2) (w 2) -> b (h w) (c 2 2)`, i.e. 64-dim tokens on an `h × w` grid, with
//! `img_ids[.., (r·w + c)] = (0, r, c)` and all-zero `txt_ids`.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::error::{FluxError, Result};

/// Packs latents `[B, C, 2h, 2w]` into tokens `[B, h·w, 4C]` (`b c (h ph) (w pw) -> b (h w) (c ph
/// pw)`).
///
/// Errors when the spatial size is odd.
pub fn pack<B: Backend>(latents: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
    let [b, c, hh, ww] = latents.dims();
    if hh % 2 != 0 || ww % 2 != 0 || hh == 0 || ww == 0 {
        return Err(FluxError::Input {
            name: "latents".into(),
            message: format!(
                "spatial size {hh}×{ww} must be even and non-zero to pack into 2×2 patches; crop \
                 or pad the image to a multiple of 16 pixels"
            ),
        });
    }
    let (h, w) = (hh / 2, ww / 2);
    Ok(latents
        .reshape([b, c, h, 2, w, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, h * w, c * 4]))
}

/// Unpacks tokens `[B, h·w, 4C]` on an `h × w` grid back to latents `[B, C, 2h, 2w]`.
pub fn unpack<B: Backend>(tokens: Tensor<B, 3>, h: usize, w: usize) -> Result<Tensor<B, 4>> {
    let [b, l, d] = tokens.dims();
    if l != h * w || d % 4 != 0 {
        return Err(FluxError::Input {
            name: "tokens".into(),
            message: format!(
                "shape [{b}, {l}, {d}] does not fit a {h}×{w} grid of 2×2 patches (need [B, {}, \
                 4·C])",
                h * w
            ),
        });
    }
    let c = d / 4;
    Ok(tokens
        .reshape([b, h, w, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c, h * 2, w * 2]))
}

/// `img_ids` for an `h × w` token grid: `[B, h·w, 3]` with rows `(0, row, col)` in row-major
/// order.
pub fn img_ids<B: Backend>(batch: usize, h: usize, w: usize, device: &B::Device) -> Tensor<B, 3> {
    image_ids(batch, h, w, 0, device)
}

/// Kontext's `img_cond_seq_ids` for a control image's `h × w` token grid: rows
/// `(1, row, col)` (BFL `prepare_kontext`: the target's ids with the first axis set to 1).
pub fn control_ids<B: Backend>(
    batch: usize,
    h: usize,
    w: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    image_ids(batch, h, w, 1, device)
}

/// Rows `(index, row, col)` for an `h × w` grid.
fn image_ids<B: Backend>(
    batch: usize,
    h: usize,
    w: usize,
    index: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut ids = Vec::with_capacity(h * w * 3);
    for r in 0..h {
        for c in 0..w {
            ids.extend_from_slice(&[index as f32, r as f32, c as f32]);
        }
    }
    let one: Tensor<B, 3> = Tensor::from_data(TensorData::new(ids, [1, h * w, 3]), device);
    one.repeat_dim(0, batch)
}

/// `txt_ids`: zeros `[B, len, 3]`.
pub fn txt_ids<B: Backend>(batch: usize, len: usize, device: &B::Device) -> Tensor<B, 3> {
    Tensor::zeros([batch, len, 3], device)
}

/// Token grid `(h, w)` for an image of `height × width` pixels (BFL: `ceil(px / 16)`).
pub fn token_grid(height: usize, width: usize) -> (usize, usize) {
    (height.div_ceil(16), width.div_ceil(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    #[test]
    fn pack_places_each_patch_channel_major() {
        // Independent index formula: token (i, j) feature c*4 + ph*2 + pw = x[c, 2i+ph, 2j+pw].
        let dev = Default::default();
        let (bn, c, hh, ww) = (2, 3, 4, 6);
        let data: Vec<f32> = (0..bn * c * hh * ww).map(|v| v as f32).collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(data.clone(), [bn, c, hh, ww]), &dev);
        let packed = pack(x.clone()).unwrap();
        assert_eq!(packed.dims(), [bn, 6, 12]);
        let p = packed.clone().into_data().into_vec::<f32>().unwrap();
        for b in 0..bn {
            for i in 0..hh / 2 {
                for j in 0..ww / 2 {
                    for ch in 0..c {
                        for ph in 0..2 {
                            for pw in 0..2 {
                                let tok = i * (ww / 2) + j;
                                let got = p[(b * 6 + tok) * 12 + ch * 4 + ph * 2 + pw];
                                let want = data[((b * c + ch) * hh + 2 * i + ph) * ww + 2 * j + pw];
                                assert_eq!(got, want);
                            }
                        }
                    }
                }
            }
        }
        let back = unpack(packed, 2, 3)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn odd_latents_are_rejected() {
        let dev = Default::default();
        let x = Tensor::<B, 4>::zeros([1, 16, 5, 4], &dev);
        assert!(matches!(pack(x), Err(FluxError::Input { .. })));
    }

    #[test]
    fn ids_are_row_col() {
        let dev = Default::default();
        let ids = img_ids::<B>(2, 2, 3, &dev)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let one = [
            0., 0., 0., 0., 0., 1., 0., 0., 2., 0., 1., 0., 0., 1., 1., 0., 1., 2.,
        ];
        assert_eq!(&ids[..18], &one);
        assert_eq!(&ids[18..], &one);
        assert_eq!(token_grid(1360, 768), (85, 48));
        let t = txt_ids::<B>(1, 4, &dev);
        assert_eq!(t.dims(), [1, 4, 3]);
    }
}
