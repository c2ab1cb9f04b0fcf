//! Tiled encode/decode: the algorithm of diffusers' `AutoencoderKL` with `enable_tiling()`
//! (`_tiled_encode` / `tiled_decode`), so results match it.
//!
//! The input is cut into tiles of `tile` side starting every `⌊tile·(1 − overlap)⌋` (edge
//! tiles may be smaller); each tile is run through the network on its own; tiles are visited in
//! raster order and each output tile is blended linearly with the (already blended) tile above over
//! `⌊out_tile·overlap⌋` rows, then with the tile to its left over as many columns; the
//! top-left `out_tile − blend` rows and columns of every tile make the result. Only the current
//! tile's activations, the bottom strips of the previous tile row and the output exist at once, so
//! peak memory is set by the tile size, not the image size. Inputs that fit in one tile are not
//! tiled (as in diffusers). GroupNorm statistics and attention are per tile, so tiled results
//! differ slightly from untiled ones.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::autoencoder::Autoencoder;
use crate::error::{FluxError, Result};
use crate::frozen::{cast_to, to_f32};

/// Tile geometry (diffusers `tile_sample_min_size` and `tile_overlap_factor`).
#[derive(Debug, Clone, PartialEq)]
pub struct TileOptions {
    /// Tile side in pixels; latent tiles are `sample_size / 8`. diffusers uses the VAE's
    /// `sample_size` (1024 for Flux); smaller tiles use less memory.
    pub sample_size: usize,
    /// Fraction of a tile overlapping its neighbour (0.25).
    pub overlap_factor: f64,
}

impl Default for TileOptions {
    /// diffusers' Flux defaults: 1024-pixel tiles, 25 % overlap.
    fn default() -> Self {
        Self {
            sample_size: 1024,
            overlap_factor: 0.25,
        }
    }
}

impl TileOptions {
    fn validate(&self, downscale: usize) -> Result<()> {
        let latent = self.sample_size / downscale.max(1);
        let ok = self.sample_size.is_multiple_of(downscale.max(1))
            && latent > 0
            && (0.0..1.0).contains(&self.overlap_factor)
            && step(latent, self.overlap_factor) > 0;
        if !ok {
            return Err(FluxError::Config(format!(
                "tile options {self:?}: sample_size must be a positive multiple of the downscale \
                 factor {downscale} and overlap_factor in [0, 1) with a non-empty step"
            )));
        }
        Ok(())
    }
}

/// `int(tile · (1 − overlap))`, the tile stride.
fn step(tile: usize, overlap: f64) -> usize {
    (tile as f64 * (1.0 - overlap)) as usize
}

/// `int(tile · overlap)`, the blend width.
fn blend_width(tile: usize, overlap: f64) -> usize {
    (tile as f64 * overlap) as usize
}

impl<B: Backend> Autoencoder<B> {
    /// [`encode`](Self::encode) tile by tile (images larger than one tile only).
    pub fn encode_tiled(&self, x: Tensor<B, 4>, tiles: &TileOptions) -> Result<Tensor<B, 4>> {
        self.check_image(&x)?;
        let f = self.config.downscale();
        tiles.validate(f)?;
        let [_, _, h, w] = x.dims();
        let tile = tiles.sample_size;
        if h <= tile && w <= tile {
            return self.encode(x);
        }
        let out_tile = tile / f;
        let moments = tiled_map(
            x,
            tile,
            step(tile, tiles.overlap_factor),
            blend_width(out_tile, tiles.overlap_factor),
            out_tile,
            |t| to_f32(self.moments(t)),
        );
        Ok(self.scale_moments(moments))
    }

    /// [`decode`](Self::decode) tile by tile (latents larger than one latent tile only).
    pub fn decode_tiled(&self, z: Tensor<B, 4>, tiles: &TileOptions) -> Result<Tensor<B, 4>> {
        self.check_latent(&z)?;
        let f = self.config.downscale();
        tiles.validate(f)?;
        let [_, _, h, w] = z.dims();
        let tile = tiles.sample_size / f;
        if h <= tile && w <= tile {
            return self.decode(z);
        }
        let out_tile = tiles.sample_size;
        Ok(tiled_map(
            self.unscale(z),
            tile,
            step(tile, tiles.overlap_factor),
            blend_width(out_tile, tiles.overlap_factor),
            out_tile,
            |t| self.decode_unscaled(t),
        ))
    }
}

/// Runs `f` on `in_tile`-sided tiles every `stride`, blends `blend` rows/columns, keeps
/// `out_tile − blend` of each tile (diffusers' loop, with only the needed strips kept).
fn tiled_map<B: Backend>(
    input: Tensor<B, 4>,
    in_tile: usize,
    stride: usize,
    blend: usize,
    out_tile: usize,
    f: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [n, c, h, w] = input.dims();
    let row_limit = out_tile - blend;
    let mut above: Vec<Tensor<B, 4>> = Vec::new();
    let mut rows = Vec::new();
    for i in (0..h).step_by(stride) {
        let mut left: Option<Tensor<B, 4>> = None;
        let (mut crops, mut strips) = (Vec::new(), Vec::new());
        for (jdx, j) in (0..w).step_by(stride).enumerate() {
            let tile =
                input
                    .clone()
                    .slice([0..n, 0..c, i..(i + in_tile).min(h), j..(j + in_tile).min(w)]);
            let mut t = f(tile);
            if let Some(a) = above.get(jdx) {
                t = blend_rows(a.clone(), t, blend);
            }
            if let Some(a) = left.take() {
                t = blend_cols(a, t, blend);
            }
            let [tn, tc, th, tw] = t.dims();
            crops.push(
                t.clone()
                    .slice([0..tn, 0..tc, 0..th.min(row_limit), 0..tw.min(row_limit)]),
            );
            if blend > 0 {
                strips.push(
                    t.clone()
                        .slice([0..tn, 0..tc, th - th.min(blend)..th, 0..tw]),
                );
                left = Some(t.slice([0..tn, 0..tc, 0..th, tw - tw.min(blend)..tw]));
            }
        }
        rows.push(Tensor::cat(crops, 3));
        above = strips;
    }
    Tensor::cat(rows, 2)
}

/// `(1 − k/e, k/e)` for `k in 0..e`, as `[e]` tensors in `like`'s dtype.
fn ramps<B: Backend>(e: usize, like: &Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let take: Vec<f32> = (0..e).map(|k| (k as f64 / e as f64) as f32).collect();
    let keep: Vec<f32> = (0..e).map(|k| (1.0 - k as f64 / e as f64) as f32).collect();
    let dev = like.device();
    let mk = |v: Vec<f32>| {
        cast_to(
            Tensor::<B, 1>::from_data(TensorData::new(v, [e]), &dev),
            like.dtype(),
        )
    };
    (mk(keep), mk(take))
}

/// diffusers `blend_v`: the first `e` rows of `b` fade in from the last `e` rows of `a`
/// (`a` may be just the bottom strip of the tile above).
fn blend_rows<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>, blend: usize) -> Tensor<B, 4> {
    let [n, c, ah, w] = a.dims();
    let bh = b.dims()[2];
    let e = ah.min(bh).min(blend);
    if e == 0 {
        return b;
    }
    let (keep, take) = ramps(e, &b);
    let mixed = a.slice([0..n, 0..c, ah - e..ah, 0..w]) * keep.reshape([1, 1, e, 1])
        + b.clone().slice([0..n, 0..c, 0..e, 0..w]) * take.reshape([1, 1, e, 1]);
    b.slice_assign([0..n, 0..c, 0..e, 0..w], mixed)
}

/// diffusers `blend_h`: the first `e` columns of `b` fade in from the last `e` columns of `a`.
fn blend_cols<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>, blend: usize) -> Tensor<B, 4> {
    let [n, c, h, aw] = a.dims();
    let bw = b.dims()[3];
    let e = aw.min(bw).min(blend);
    if e == 0 {
        return b;
    }
    let (keep, take) = ramps(e, &b);
    let mixed = a.slice([0..n, 0..c, 0..h, aw - e..aw]) * keep.reshape([1, 1, 1, e])
        + b.clone().slice([0..n, 0..c, 0..h, 0..e]) * take.reshape([1, 1, 1, e]);
    b.slice_assign([0..n, 0..c, 0..h, 0..e], mixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type T4 = Tensor<NdArray, 4>;

    fn t(v: Vec<f32>, shape: [usize; 4]) -> T4 {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn blend_rows_is_diffusers_blend_v() {
        // a: 3 rows of 10s, 20s, 30s; b: 4 rows of 0s; e = 2 → b rows 0,1 = a rows 1,2 weighted
        // (1 − y/2) and b weighted y/2: row0 = 20·1 + 0 = 20, row1 = 30·0.5 + 0 = 15.
        let a = t(vec![10., 10., 20., 20., 30., 30.], [1, 1, 3, 2]);
        let b = t(vec![0.; 8], [1, 1, 4, 2]);
        let out = blend_rows(a, b, 2).into_data().to_vec::<f32>().unwrap();
        assert_eq!(out, vec![20., 20., 15., 15., 0., 0., 0., 0.]);
    }

    #[test]
    fn identity_network_with_constant_input_is_seamless() {
        // Blending tiles of a constant map leaves it constant, whatever the geometry.
        let x = t(vec![1.5; 2 * 23 * 17], [1, 2, 23, 17]);
        let y = tiled_map(x, 8, 6, 2, 8, |t| t);
        assert_eq!(y.dims(), [1, 2, 23, 17]);
        assert!(y
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|&v| (v - 1.5).abs() < 1e-6));
    }
}
