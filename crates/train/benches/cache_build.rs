//! Cache-build throughput with the real encoders of the tiny base model (`fixtures/tiny-base/`,
//! diffusers/transformers layout) on the NdArray CPU backend: for each image size, N images with
//! deterministic pixels and distinct captions go through `fluxlora_train::prepare_data` (the
//! autoencoder for the latent cache, CLIP-L + T5 for the text cache); a second preparation of
//! the same folder shows reuse (nothing built, no encoder loaded). Prints a table.
//!
//! ```text
//! cargo test --workspace --bench cache_build                        # dev/test profile
//! FLUXLORA_BENCH_QUICK=1 cargo test --workspace --bench cache_build # 2 images per size
//! cargo bench --workspace --bench cache_build                       # release (rebuilds Burn)
//! ```
//!
//! The built/s figures include loading each encoder (it is loaded lazily, on the first entry
//! to build); the `load` column times that load on its own, so (built / (s − load)) is the
//! steady-state rate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::NdArray;
use fluxlora_train::{prepare_data, BaseModel, FluxLatentEncoder, FluxTextEncoder, TrainConfig};
use image::{ImageBuffer, Rgb};

type B = NdArray;

fn tiny_base() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    while !dir.join("fixtures/tiny-base").is_dir() {
        assert!(
            dir.pop(),
            "fixtures/tiny-base not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    dir.join("fixtures/tiny-base")
}

/// `n` square `side`×`side` PNGs with smooth, image-specific patterns and distinct captions.
fn write_images(dir: &Path, n: u32, side: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = ImageBuffer::from_fn(side, side, |x, y| {
            Rgb([
                ((x * 255 / side + i * 37) % 256) as u8,
                ((y * 255 / side + i * 71) % 256) as u8,
                (((x ^ y) + i * 13) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img{i:03}.png"))).unwrap();
        std::fs::write(
            dir.join(format!("img{i:03}.txt")),
            format!("sks, a test pattern number {i}, {side} pixels"),
        )
        .unwrap();
    }
}

fn config(root: &Path, n: u32, side: u32) -> TrainConfig {
    TrainConfig {
        pretrained_model_name_or_path: Some(tiny_base()),
        train_data_dir: Some(root.join("images")),
        output_dir: root.join("out"),
        output_name: "bench".into(),
        resolution: side,
        t5xxl_max_token_length: Some(64),
        max_train_steps: Some(n as usize),
        base_bf16: false,
        ..TrainConfig::default()
    }
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn rate(built: usize, s: f64) -> String {
    if built == 0 || s <= 0.0 {
        "-".into()
    } else {
        format!("{:.2}", built as f64 / s)
    }
}

fn main() {
    let quick = std::env::var("FLUXLORA_BENCH_QUICK").is_ok_and(|v| v == "1");
    let n: u32 = if quick { 2 } else { 16 };
    let profile = if cfg!(debug_assertions) {
        "dev/test (deps -O3, workspace -O1)"
    } else {
        "release/bench"
    };
    println!(
        "cache_build: tiny-base encoders, NdArray CPU, {n} images per size, profile {profile}"
    );

    let dev = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for side in [256u32, 512] {
        let root = tmp.path().join(format!("s{side}"));
        write_images(&root.join("images"), n, side);
        let c = config(&root, n, side);
        let base = BaseModel::resolve(&c).unwrap();

        // Encoder load times on their own (prepare_data loads them again, lazily).
        let t = Instant::now();
        drop(FluxLatentEncoder::<B>::load(&base, &dev).unwrap());
        let ae_load = secs(t);
        let t = Instant::now();
        drop(
            FluxTextEncoder::<B>::load(
                &base,
                base.t5_max_length(&c).unwrap(),
                c.apply_t5_attn_mask,
                &dev,
            )
            .unwrap(),
        );
        let text_load = secs(t);

        for pass in ["first", "again"] {
            let t = Instant::now();
            let data = prepare_data::<B>(&c, &base, &dev, false).unwrap();
            let wall = secs(t);
            let (l, x) = (&data.latents, &data.texts);
            let (ls, xs) = (l.elapsed.as_secs_f64(), x.elapsed.as_secs_f64());
            if pass == "again" {
                assert_eq!(
                    (l.built, x.built),
                    (0, 0),
                    "the second preparation must reuse every entry"
                );
            } else {
                assert_eq!(l.built, n as usize, "one latent per image");
            }
            rows.push(format!(
                "| {side:>4}² | {pass:<5} | {:>5}/{:<5} | {ls:>7.2} | {:>7} | {:>6} | {:>5}/{:<5} \
                 | {xs:>7.2} | {:>7} | {:>6} | {wall:>6.2} |",
                l.built,
                l.reused,
                rate(l.built, ls),
                if l.built > 0 {
                    format!("{ae_load:.3}")
                } else {
                    "-".into()
                },
                x.built,
                x.reused,
                rate(x.built, xs),
                if x.built > 0 {
                    format!("{text_load:.3}")
                } else {
                    "-".into()
                },
            ));
        }
    }
    println!();
    println!(
        "| image | run   | latents b/r | lat s   | lat/s   | load s | texts b/r   | text s  | \
         text/s  | load s | wall s |"
    );
    println!(
        "|-------|-------|-------------|---------|---------|--------|-------------|---------|\
         ---------|--------|--------|"
    );
    for r in rows {
        println!("{r}");
    }
    println!();
    println!(
        "b/r = built/reused entries; rates are built ÷ build seconds, encoder load included (see \
         `load s`)."
    );
}
