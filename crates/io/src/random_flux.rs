//! A random Flux transformer checkpoint of any size in BFL layout, written tensor by tensor
//! (never the model in memory): F8_E4M3 weights (uniform in ±1/√d_in, PyTorch's linear init,
//! cast to fp8 as kohya's `--fp8_base` files are), BF16 biases and BF16 RMSNorm scales of 1.
//! It lets anyone reproduce the full-size bench without downloading Flux.1-dev.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use crate::error::Result;
use crate::lora::keys_flux::FluxDims;
use crate::lora::ops::stream_write::{write_streamed, StreamEntry};
use crate::quant::f32_to_f8_e4m3fn;
use crate::safetensors::Dtype;

/// Every tensor of a BFL checkpoint of `dims`: `(key, shape)`.
pub fn bfl_tensor_shapes(dims: &FluxDims, head_dim: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for path in crate::flux_module_paths(dims.depth, dims.depth_single, dims.guidance) {
        if let Some((i, o)) = dims.module_shape(&path) {
            out.push((format!("{path}.weight"), vec![o, i]));
            out.push((format!("{path}.bias"), vec![o]));
        }
    }
    let norms = |prefix: String, out: &mut Vec<(String, Vec<usize>)>| {
        for n in ["query_norm", "key_norm"] {
            out.push((format!("{prefix}.{n}.scale"), vec![head_dim]));
        }
    };
    for i in 0..dims.depth {
        norms(format!("double_blocks.{i}.img_attn.norm"), &mut out);
        norms(format!("double_blocks.{i}.txt_attn.norm"), &mut out);
    }
    for i in 0..dims.depth_single {
        norms(format!("single_blocks.{i}.norm"), &mut out);
    }
    out
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Fills `out` with draws `start..start + out.len()` of the SplitMix64 stream from `seed`, as
/// floats uniform in `(-bound, bound)`. Draw `k` depends on `seed` and `k` alone (SplitMix64 is
/// counter-based), so the draws are made in parallel and equal the sequential stream.
pub fn splitmix_uniform(seed: u64, start: u64, out: &mut [f32], bound: f32) {
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = start + (c * CHUNK) as u64;
            for (j, v) in chunk.iter_mut().enumerate() {
                let mut z = seed.wrapping_add((first + j as u64 + 1).wrapping_mul(GOLDEN));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                *v = ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound;
            }
        });
}

/// Writes a random checkpoint of `dims` (heads of `head_dim`) to `path`, atomically. Each
/// weight is drawn (in parallel, [`splitmix_uniform`]) and cast a block of rows at a time.
pub fn write_random_flux(path: &Path, dims: &FluxDims, head_dim: usize, seed: u64) -> Result<()> {
    let shapes = bfl_tensor_shapes(dims, head_dim);
    let entries: Vec<StreamEntry> = shapes
        .iter()
        .map(|(name, shape)| StreamEntry {
            name: name.clone(),
            dtype: if shape.len() == 2 {
                Dtype::F8_E4M3
            } else {
                Dtype::BF16
            },
            shape: shape.clone(),
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("fluxlora.random_seed".to_string(), seed.to_string());
    write_streamed(path, &entries, &meta, |i, w: &mut dyn Write| {
        let (name, shape) = &shapes[i];
        let s0 = seed ^ (i as u64).wrapping_mul(GOLDEN);
        if shape.len() == 2 {
            let (rows, cols) = (shape[0], shape[1]);
            let bound = 1.0 / (cols as f32).sqrt();
            let block = (1 << 20) / cols.max(1) + 1;
            let mut vals = vec![0f32; block.min(rows) * cols];
            let mut bytes = vec![0u8; vals.len()];
            for r0 in (0..rows).step_by(block) {
                let n = block.min(rows - r0) * cols;
                splitmix_uniform(s0, (r0 * cols) as u64, &mut vals[..n], bound);
                bytes[..n]
                    .par_iter_mut()
                    .zip(vals[..n].par_iter())
                    .for_each(|(b, &v)| *b = f32_to_f8_e4m3fn(v));
                w.write_all(&bytes[..n])?;
            }
        } else {
            let is_norm = name.ends_with(".scale");
            let mut vals = vec![1f32; shape[0]];
            if !is_norm {
                splitmix_uniform(s0, 0, &mut vals, 0.01);
            }
            for v in vals {
                w.write_all(&half::bf16::from_f32(v).to_bits().to_le_bytes())?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checkpoint;

    #[test]
    fn a_small_random_checkpoint_has_every_bfl_tensor_in_its_dtype() {
        let dims = FluxDims {
            hidden: 8,
            mlp: 16,
            in_channels: 4,
            out_channels: 4,
            context_in: 6,
            vec_in: 5,
            depth: 1,
            depth_single: 2,
            guidance: true,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        write_random_flux(&p, &dims, 4, 1).unwrap();
        let c = Checkpoint::open(&p).unwrap();
        let (dt, shape) = c.info("double_blocks.0.img_attn.qkv.weight").unwrap();
        assert_eq!((dt, shape), (Dtype::F8_E4M3, &[24usize, 8][..]));
        assert_eq!(
            c.info("single_blocks.1.norm.key_norm.scale").unwrap().0,
            Dtype::BF16
        );
        let w = c.read_f32("double_blocks.0.img_mlp.0.weight").unwrap();
        let bound = 1.0 / 8f32.sqrt();
        assert!(w.data.iter().all(|v| v.abs() <= bound * 1.07));
        assert!(w.data.iter().any(|v| *v != 0.0));
        // The weight is its tensor's sequential stream, cast to fp8.
        let i = bfl_tensor_shapes(&dims, 4)
            .iter()
            .position(|(k, _)| k == "double_blocks.0.img_mlp.0.weight")
            .unwrap();
        let s0 = 1 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let table = crate::quant::f8_e4m3fn_table();
        let want: Vec<f32> = sequential(s0, w.data.len(), bound)
            .into_iter()
            .map(|v| table[usize::from(f32_to_f8_e4m3fn(v))])
            .collect();
        assert_eq!(w.data, want);
        assert_eq!(
            c.read_f32("single_blocks.0.norm.query_norm.scale")
                .unwrap()
                .data,
            vec![1.0; 4]
        );
    }

    /// The sequential SplitMix64 stream, one draw after another, as the parallel draws must
    /// give it.
    fn sequential(seed: u64, n: usize, bound: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
            })
            .collect()
    }

    #[test]
    fn parallel_draws_equal_the_sequential_stream_at_any_offset() {
        // Several parallel chunks (2^14 draws each), and windows that start mid-chunk.
        let n = 3 * (1 << 14) + 77;
        let want = sequential(42, n, 0.5);
        let mut all = vec![0f32; n];
        splitmix_uniform(42, 0, &mut all, 0.5);
        assert_eq!(all, want);
        for start in [1usize, 1000, (1 << 14) - 3, 2 * (1 << 14) + 5] {
            let mut part = vec![0f32; n - start];
            splitmix_uniform(42, start as u64, &mut part, 0.5);
            assert_eq!(part, want[start..], "window from {start}");
        }
    }
}
