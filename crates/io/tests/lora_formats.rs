//! Hand-built LoRA files of every format (written with the reference `safetensors` crate) load
//! into the right canonical modules with the right ΔW, computed here from the file's own
//! tensors with the format's documented semantics.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{assert_close, f32_raw, ref_delta, values, write_reference, Raw};
use fluxlora_io::lora::detect_names;
use fluxlora_io::{read_lora, write_lora, IoError, LoraFormat, LoraWeights};

const TOL: f64 = 1e-5;

struct Builder {
    tensors: Vec<(String, Raw)>,
    seed: u64,
}

impl Builder {
    fn new() -> Self {
        Builder {
            tensors: vec![],
            seed: 100,
        }
    }
    /// Adds a random 2-D tensor and returns its values.
    fn mat(&mut self, name: &str, rows: usize, cols: usize) -> Vec<f32> {
        self.seed += 1;
        let v = values(self.seed, rows * cols);
        self.tensors
            .push((name.to_string(), f32_raw(&[rows, cols], &v)));
        v
    }
    fn scalar(&mut self, name: &str, v: f32) {
        self.tensors.push((name.to_string(), f32_raw(&[], &[v])));
    }
    fn vec(&mut self, name: &str, n: usize) -> Vec<f32> {
        self.seed += 1;
        let v = values(self.seed, n);
        self.tensors.push((name.to_string(), f32_raw(&[n], &v)));
        v
    }
    fn write(&self, dir: &Path, name: &str, meta: Option<HashMap<String, String>>) -> PathBuf {
        let p = dir.join(name);
        write_reference(&p, &self.tensors, meta);
        p
    }
}

/// `(first row, up, down, rows, rank, scale)` of one row block of an expected ΔW.
type Block<'a> = (usize, &'a [f32], &'a [f32], usize, usize, f64);

/// Checks module `key` of `lora` against row blocks `(first row, up, down, rows, rank, scale)`
/// of its expected ΔW (rows not covered are zero).
fn check_blocks(lora: &LoraWeights, key: &str, out: usize, inp: usize, blocks: &[Block]) {
    let m = lora
        .modules
        .get(key)
        .unwrap_or_else(|| panic!("missing {key}; have {:?}", lora.modules.keys()));
    assert_eq!(
        (m.out_features(), m.in_features()),
        (out, inp),
        "{key} shape"
    );
    let mut want = vec![0.0; out * inp];
    let mut mag = vec![0.0; out * inp];
    for (row0, up, down, rows, r, s) in blocks {
        let (d, g) = ref_delta(up, down, *rows, *r, inp, *s);
        want[row0 * inp..(row0 + rows) * inp].copy_from_slice(&d);
        mag[row0 * inp..(row0 + rows) * inp].copy_from_slice(&g);
    }
    assert_close(key, &m.delta().unwrap().data, &want, &mag, TOL);
}

#[test]
fn bfl_with_lora_b_bias() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = (8, 2);
    let mut b = Builder::new();
    let a = b.mat("double_blocks.0.img_attn.qkv.lora_A.weight", r, h);
    let u = b.mat("double_blocks.0.img_attn.qkv.lora_B.weight", 3 * h, r);
    let bias = b.vec("double_blocks.0.img_attn.qkv.lora_B.bias", 3 * h);
    let a2 = b.mat("single_blocks.1.linear1.lora_A.weight", r, h);
    let u2 = b.mat("single_blocks.1.linear1.lora_B.weight", 3 * h + 4 * h, r);
    let a3 = b.mat("img_in.lora_A.weight", r, 6);
    let u3 = b.mat("img_in.lora_B.weight", h, r);
    let p = b.write(dir.path(), "bfl.safetensors", None);
    let (lora, fmt) = read_lora(&p).unwrap();
    assert_eq!(fmt, LoraFormat::Bfl);
    assert_eq!(lora.len(), 3);
    check_blocks(
        &lora,
        "double_blocks.0.img_attn.qkv",
        3 * h,
        h,
        &[(0, &u, &a, 3 * h, r, 1.0)],
    );
    check_blocks(
        &lora,
        "single_blocks.1.linear1",
        7 * h,
        h,
        &[(0, &u2, &a2, 7 * h, r, 1.0)],
    );
    check_blocks(&lora, "img_in", h, 6, &[(0, &u3, &a3, h, r, 1.0)]);
    // Δb = scale · bias with scale 1.
    assert_eq!(
        lora.modules["double_blocks.0.img_attn.qkv"]
            .delta_bias()
            .unwrap()
            .data,
        bias
    );
}

#[test]
fn xlabs_processor_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r, mlp) = (8, 3, 24);
    let mut b = Builder::new();
    let d1 = b.mat("double_blocks.0.processor.qkv_lora1.down.weight", r, h);
    let u1 = b.mat("double_blocks.0.processor.qkv_lora1.up.weight", 3 * h, r);
    let d2 = b.mat("double_blocks.0.processor.qkv_lora2.down.weight", r, h);
    let u2 = b.mat("double_blocks.0.processor.qkv_lora2.up.weight", 3 * h, r);
    let d3 = b.mat("double_blocks.0.processor.proj_lora1.down.weight", r, h);
    let u3 = b.mat("double_blocks.0.processor.proj_lora1.up.weight", h, r);
    let d4 = b.mat("double_blocks.0.processor.proj_lora2.down.weight", r, h);
    let u4 = b.mat("double_blocks.0.processor.proj_lora2.up.weight", h, r);
    let d5 = b.mat("single_blocks.2.processor.qkv_lora.down.weight", r, h);
    let u5 = b.mat("single_blocks.2.processor.qkv_lora.up.weight", 3 * h, r);
    let d6 = b.mat(
        "single_blocks.2.processor.proj_lora.down.weight",
        r,
        h + mlp,
    );
    let u6 = b.mat("single_blocks.2.processor.proj_lora.up.weight", h, r);
    let p = b.write(dir.path(), "xlabs.safetensors", None);
    let (lora, fmt) = read_lora(&p).unwrap();
    assert_eq!(fmt, LoraFormat::XLabs);
    check_blocks(
        &lora,
        "double_blocks.0.img_attn.qkv",
        3 * h,
        h,
        &[(0, &u1, &d1, 3 * h, r, 1.0)],
    );
    check_blocks(
        &lora,
        "double_blocks.0.txt_attn.qkv",
        3 * h,
        h,
        &[(0, &u2, &d2, 3 * h, r, 1.0)],
    );
    check_blocks(
        &lora,
        "double_blocks.0.img_attn.proj",
        h,
        h,
        &[(0, &u3, &d3, h, r, 1.0)],
    );
    check_blocks(
        &lora,
        "double_blocks.0.txt_attn.proj",
        h,
        h,
        &[(0, &u4, &d4, h, r, 1.0)],
    );
    // Single-block qkv covers the q/k/v rows of linear1; the MLP rows (width from linear2's
    // input, h + mlp) stay zero.
    check_blocks(
        &lora,
        "single_blocks.2.linear1",
        3 * h + mlp,
        h,
        &[(0, &u5, &d5, 3 * h, r, 1.0)],
    );
    check_blocks(
        &lora,
        "single_blocks.2.linear2",
        h,
        h + mlp,
        &[(0, &u6, &d6, h, r, 1.0)],
    );
    assert_eq!(lora.modules["single_blocks.2.linear1"].rank(), r);

    // Without anything that shows the MLP width, Flux's mlp_ratio 4 is assumed.
    let mut b = Builder::new();
    let d = b.mat("single_blocks.0.processor.qkv_lora.down.weight", r, h);
    let u = b.mat("single_blocks.0.processor.qkv_lora.up.weight", 3 * h, r);
    let p = b.write(dir.path(), "xlabs_single.safetensors", None);
    let (lora, _) = read_lora(&p).unwrap();
    check_blocks(
        &lora,
        "single_blocks.0.linear1",
        7 * h,
        h,
        &[(0, &u, &d, 3 * h, r, 1.0)],
    );
}

#[test]
fn onetrainer_mixture_with_per_piece_alphas() {
    let dir = tempfile::tempdir().unwrap();
    let (h, mlp) = (8, 16);
    let mut b = Builder::new();
    let pre = "lora_transformer_single_transformer_blocks_0_";
    // Different ranks and alphas per piece: the fused ΔW must still be exact.
    let pieces = [
        ("attn_to_q", h, 2, 1.0f32),
        ("attn_to_k", h, 3, 6.0),
        ("attn_to_v", h, 2, 2.0),
        ("proj_mlp", mlp, 4, 1.0),
    ];
    let mut blocks = Vec::new();
    let mut row = 0;
    let mut store = Vec::new();
    for (name, rows, r, alpha) in pieces {
        let d = b.mat(&format!("{pre}{name}.lora_down.weight"), r, h);
        let u = b.mat(&format!("{pre}{name}.lora_up.weight"), rows, r);
        b.scalar(&format!("{pre}{name}.alpha"), alpha);
        store.push((row, u, d, rows, r, alpha as f64 / r as f64));
        row += rows;
    }
    for (row0, u, d, rows, r, s) in &store {
        blocks.push((*row0, u.as_slice(), d.as_slice(), *rows, *r, *s));
    }
    let d = b.mat("lora_transformer_norm_out_linear.lora_down.weight", 2, h);
    let u = b.mat("lora_transformer_norm_out_linear.lora_up.weight", 2 * h, 2);
    b.scalar("lora_transformer_norm_out_linear.alpha", 1.0);
    let dt = b.mat(
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        2,
        h,
    );
    let ut = b.mat(
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
        h,
        2,
    );
    b.scalar(
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha",
        4.0,
    );
    let p = b.write(dir.path(), "onetrainer.safetensors", None);

    let (lora, fmt) = read_lora(&p).unwrap();
    assert_eq!(fmt, LoraFormat::OneTrainer);
    assert_eq!(lora.len(), 3);
    check_blocks(&lora, "single_blocks.0.linear1", 3 * h + mlp, h, &blocks);
    // norm_out.linear is (scale, shift); BFL's adaLN_modulation.1 is (shift, scale).
    let swapped: Vec<f32> = u[h * 2..].iter().chain(&u[..h * 2]).copied().collect();
    check_blocks(
        &lora,
        "final_layer.adaLN_modulation.1",
        2 * h,
        h,
        &[(0, &swapped, &d, 2 * h, 2, 0.5)],
    );
    check_blocks(
        &lora,
        "te1:text_model.encoder.layers.0.self_attn.q_proj",
        h,
        h,
        &[(0, &ut, &dt, h, 2, 2.0)],
    );
}

#[test]
fn kohya_comfy_and_peft_hand_built() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = (8, 4);
    // kohya with alpha, and a module without alpha (scale 1).
    let mut b = Builder::new();
    let d = b.mat(
        "lora_unet_double_blocks_1_txt_attn_qkv.lora_down.weight",
        r,
        h,
    );
    let u = b.mat(
        "lora_unet_double_blocks_1_txt_attn_qkv.lora_up.weight",
        3 * h,
        r,
    );
    b.scalar("lora_unet_double_blocks_1_txt_attn_qkv.alpha", 1.0);
    let d2 = b.mat("lora_unet_final_layer_linear.lora_down.weight", r, h);
    let u2 = b.mat("lora_unet_final_layer_linear.lora_up.weight", 5, r);
    let d3 = b.mat(
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0.lora_down.weight",
        r,
        h,
    );
    let u3 = b.mat(
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0.lora_up.weight",
        2 * h,
        r,
    );
    b.scalar(
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0.alpha",
        8.0,
    );
    let p = b.write(dir.path(), "kohya.safetensors", None);
    let (lora, fmt) = read_lora(&p).unwrap();
    assert_eq!(fmt, LoraFormat::Kohya);
    check_blocks(
        &lora,
        "double_blocks.1.txt_attn.qkv",
        3 * h,
        h,
        &[(0, &u, &d, 3 * h, r, 0.25)],
    );
    check_blocks(
        &lora,
        "final_layer.linear",
        5,
        h,
        &[(0, &u2, &d2, 5, r, 1.0)],
    );
    check_blocks(
        &lora,
        "te3:encoder.block.0.layer.1.DenseReluDense.wi_0",
        2 * h,
        h,
        &[(0, &u3, &d3, 2 * h, r, 2.0)],
    );

    // ComfyUI with lora_A/lora_B and alpha; a missing alpha means scale 1.
    let mut b = Builder::new();
    let d = b.mat(
        "diffusion_model.single_blocks.3.modulation.lin.lora_A.weight",
        r,
        h,
    );
    let u = b.mat(
        "diffusion_model.single_blocks.3.modulation.lin.lora_B.weight",
        3 * h,
        r,
    );
    b.scalar("diffusion_model.single_blocks.3.modulation.lin.alpha", 2.0);
    let d2 = b.mat(
        "text_encoders.clip_l.transformer.text_model.encoder.layers.3.mlp.fc1.lora_A.weight",
        r,
        h,
    );
    let u2 = b.mat(
        "text_encoders.clip_l.transformer.text_model.encoder.layers.3.mlp.fc1.lora_B.weight",
        4 * h,
        r,
    );
    let p = b.write(dir.path(), "comfy.safetensors", None);
    let (lora, fmt) = read_lora(&p).unwrap();
    assert_eq!(fmt, LoraFormat::ComfyUi);
    check_blocks(
        &lora,
        "single_blocks.3.modulation.lin",
        3 * h,
        h,
        &[(0, &u, &d, 3 * h, r, 0.5)],
    );
    check_blocks(
        &lora,
        "te1:text_model.encoder.layers.3.mlp.fc1",
        4 * h,
        h,
        &[(0, &u2, &d2, 4 * h, r, 1.0)],
    );

    // PEFT with only to_q and to_k (to_v rows stay zero) and alpha from the diffusers header.
    let mut b = Builder::new();
    let dq = b.mat(
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
        r,
        h,
    );
    let uq = b.mat(
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight",
        h,
        r,
    );
    let dk = b.mat(
        "transformer.transformer_blocks.0.attn.to_k.lora_A.weight",
        r,
        h,
    );
    let uk = b.mat(
        "transformer.transformer_blocks.0.attn.to_k.lora_B.weight",
        h,
        r,
    );
    let dx = b.mat("transformer.x_embedder.lora_A.weight", r, 6);
    let ux = b.mat("transformer.x_embedder.lora_B.weight", h, r);
    let meta: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        (
            "lora_adapter_metadata".to_string(),
            concat!(
                r#"{"transformer.r": 4, "transformer.lora_alpha": 2, "#,
                r#""transformer.alpha_pattern": {"x_embedder": 8}}"#
            )
            .to_string(),
        ),
    ]
    .into();
    let p = b.write(dir.path(), "peft.safetensors", Some(meta));
    let (lora, fmt) = read_lora(&p).unwrap();
    assert_eq!(fmt, LoraFormat::Peft);
    check_blocks(
        &lora,
        "double_blocks.0.img_attn.qkv",
        3 * h,
        h,
        &[(0, &uq, &dq, h, r, 0.5), (h, &uk, &dk, h, r, 0.5)],
    );
    check_blocks(&lora, "img_in", h, 6, &[(0, &ux, &dx, h, r, 2.0)]);

    // PEFT without any alpha: alpha = rank.
    let mut b = Builder::new();
    let d = b.mat(
        "transformer.single_transformer_blocks.0.proj_out.lora_A.weight",
        r,
        3 * h,
    );
    let u = b.mat(
        "transformer.single_transformer_blocks.0.proj_out.lora_B.weight",
        h,
        r,
    );
    let p = b.write(dir.path(), "peft_plain.safetensors", None);
    let (lora, _) = read_lora(&p).unwrap();
    check_blocks(
        &lora,
        "single_blocks.0.linear2",
        h,
        3 * h,
        &[(0, &u, &d, h, r, 1.0)],
    );
}

#[test]
fn bad_keys_and_read_only_formats_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // DoRA over a plain LoRA reads (see lycoris_formats.rs); over a LoKr it is refused.
    let mut b = Builder::new();
    b.mat("lora_unet_img_in.lokr_w1", 2, 2);
    b.mat("lora_unet_img_in.lokr_w2", 2, 2);
    b.vec("lora_unet_img_in.dora_scale", 4);
    let p = b.write(dir.path(), "dora.safetensors", None);
    let e = read_lora(&p).unwrap_err();
    assert!(
        matches!(&e, IoError::LoraKey { key, .. } if key == "lora_unet_img_in.dora_scale"),
        "{e}"
    );
    assert!(
        e.to_string().contains("DoRA") && e.to_string().contains("dora.safetensors"),
        "{e}"
    );

    let mut b = Builder::new();
    b.mat(
        "lora_unet_double_blocks_0_img_attn_nonsense.lora_down.weight",
        2,
        4,
    );
    b.mat(
        "lora_unet_double_blocks_0_img_attn_nonsense.lora_up.weight",
        4,
        2,
    );
    let p = b.write(dir.path(), "unknown.safetensors", None);
    let e = read_lora(&p).unwrap_err();
    assert!(e.to_string().contains("img_attn_nonsense"), "{e}");

    let mut b = Builder::new();
    b.mat("lora_unet_img_in.lora_down.weight", 2, 4);
    b.mat("lora_unet_img_in.lora_up.weight", 4, 3);
    let p = b.write(dir.path(), "rank_mismatch.safetensors", None);
    let e = read_lora(&p).unwrap_err();
    assert!(e.to_string().contains("rank"), "{e}");

    let mut b = Builder::new();
    b.mat("lora_unet_img_in.lora_down.weight", 2, 4);
    b.mat("diffusion_model.img_in.lora_A.weight", 2, 4);
    b.mat("lora_unet_img_in.lora_up.weight", 4, 2);
    b.mat("diffusion_model.img_in.lora_B.weight", 4, 2);
    let p = b.write(dir.path(), "twice.safetensors", None);
    let e = read_lora(&p).unwrap_err();
    assert!(
        matches!(e, IoError::LoraModule { .. }) && e.to_string().contains("twice"),
        "{e}"
    );

    let mut b = Builder::new();
    b.mat("model.layers.0.weight", 2, 2);
    let p = b.write(dir.path(), "notlora.safetensors", None);
    assert!(matches!(
        read_lora(&p).unwrap_err(),
        IoError::UnknownLoraFormat { .. }
    ));

    let e = write_lora(
        dir.path().join("x.safetensors"),
        &LoraWeights::default(),
        LoraFormat::XLabs,
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[test]
fn detection_follows_diffusers_order() {
    // A kohya-named file that also has PEFT keys is PEFT (diffusers keeps the `transformer.`
    // keys); lora_down with lora_transformer_ is OneTrainer; with diffusion_model. is ComfyUI.
    assert_eq!(
        detect_names([
            "lora_unet_img_in.lora_down.weight",
            "transformer.x_embedder.lora_down.weight"
        ]),
        Some(LoraFormat::Peft)
    );
    assert_eq!(
        detect_names([
            "lora_te1_a.lora_down.weight",
            "lora_transformer_proj_out.lora_down.weight"
        ]),
        Some(LoraFormat::OneTrainer)
    );
    assert_eq!(
        detect_names(["diffusion_model.img_in.lora_down.weight"]),
        Some(LoraFormat::ComfyUi)
    );
    assert_eq!(
        detect_names(["lora_unet_img_in.lora_down.weight"]),
        Some(LoraFormat::Kohya)
    );
    assert_eq!(
        detect_names(["double_blocks.0.processor.proj_lora1.up.weight"]),
        Some(LoraFormat::XLabs)
    );
    // Control LoRA (norm scales) and fal Kontext (base_model.model.) are BFL.
    assert_eq!(
        detect_names([
            "img_in.lora_A.weight",
            "single_blocks.0.norm.key_norm.scale",
            "single_blocks.0.norm.query_norm.scale"
        ]),
        Some(LoraFormat::Bfl)
    );
    assert_eq!(
        detect_names(["base_model.model.img_in.lora_A.weight"]),
        Some(LoraFormat::Bfl)
    );
    assert_eq!(
        detect_names(["double_blocks.0.img_attn.qkv.lora_A.weight"]),
        Some(LoraFormat::Bfl)
    );
    assert_eq!(
        detect_names(["transformer_blocks.0.attn.to_q.lora_A.weight"]),
        Some(LoraFormat::Peft)
    );
    assert_eq!(
        detect_names(["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"]),
        Some(LoraFormat::Peft)
    );
    assert_eq!(
        detect_names([
            "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
        ]),
        Some(LoraFormat::ComfyUi)
    );
}
