//! A LoRA from two full transformer checkpoints (kohya `flux_extract_lora.py`): for every
//! LoRA-targetable linear, `ΔW = W_tuned − W_base`, truncated to rank `r` by randomized
//! subspace iteration ([`randomized_svd`], seeded, so the result is reproducible), stored as
//! `up = U·√Σ`, `down = √Σ·Vᵀ`, `alpha = r` (scale 1). Bias changes become the module's
//! output-bias delta. Modules whose ΔW is (almost) zero are skipped and reported.
//!
//! Either checkpoint may use the BFL, ComfyUI-prefixed or diffusers key layout; fused BFL
//! modules (`qkv`, `linear1`) are assembled from diffusers' split q/k/v(/mlp) weights.

use std::collections::BTreeMap;
use std::path::Path;

use super::layout::{block_counts, layout_of, present_recipe, read_bfl};
use super::linalg::{randomized_svd, F32Matrix};
use super::op_error;
use crate::error::Result;
use crate::lora::keys_flux::flux_module_paths;
use crate::lora::{write_lora_as, LoraFormat, LoraModule, LoraWeights};
use crate::metadata::{FluxVariant, TrainingMetadata};
use crate::safetensors::Dtype;
use crate::sharded::Checkpoint;
use crate::tensor::HostTensor;

const OP: &str = "extract a LoRA";

/// Settings for [`extract_lora`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractOptions {
    /// Rank of every extracted module (capped by the module's smaller dimension).
    pub rank: usize,
    /// Also extract the linears outside the blocks (`img_in`, `txt_in`, `time_in`,
    /// `vector_in`, `guidance_in`, `final_layer`); kohya's default set is the blocks only.
    pub all_linears: bool,
    /// A module whose largest `|ΔW|` (and `|Δb|`) is at most this is skipped as unchanged.
    pub min_diff: f32,
    /// Extra sketch columns beyond `rank`.
    pub oversample: usize,
    /// Power iterations of the subspace iteration.
    pub power_iterations: usize,
    /// Seed of the Gaussian sketch.
    pub seed: u64,
}

impl ExtractOptions {
    /// Rank `rank`, block linears only, `min_diff` 1e-6, 8 extra columns, 2 power iterations,
    /// seed 0.
    pub fn new(rank: usize) -> Self {
        ExtractOptions {
            rank,
            all_linears: false,
            min_diff: 1e-6,
            oversample: 8,
            power_iterations: 2,
            seed: 0,
        }
    }
}

/// One extracted module.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedModule {
    /// BFL module path.
    pub key: String,
    /// Rank of the extracted module (the requested rank, capped by the module's smaller
    /// dimension); its alpha equals it.
    pub rank: usize,
    /// `‖ΔW_lora‖_F / ‖ΔW‖_F`: how much of the difference the LoRA captures.
    pub fro_retained: f64,
    /// Largest `|ΔW|` element.
    pub max_abs_diff: f32,
    /// Whether a bias delta was stored.
    pub bias: bool,
}

/// What [`extract_lora`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtractReport {
    /// The modules that were extracted, in model order (double blocks, single blocks, then
    /// the other linears).
    pub modules: Vec<ExtractedModule>,
    /// Modules present in both checkpoints whose difference is within `min_diff`.
    pub unchanged: Vec<String>,
    /// Candidate modules the base checkpoint does not have (e.g. `guidance_in` on schnell).
    pub absent: Vec<String>,
}

/// Extracts a LoRA of `opts.rank` from `tuned − base`.
pub fn extract_lora(
    base: &Checkpoint,
    tuned: &Checkpoint,
    opts: &ExtractOptions,
) -> Result<(LoraWeights, ExtractReport)> {
    if opts.rank == 0 {
        return Err(op_error(
            tuned.source(),
            OP,
            "rank 0 is not a LoRA; ask for rank 1 or more".into(),
        ));
    }
    let base_layout = layout_of(base, OP)?;
    let tuned_layout = layout_of(tuned, OP)?;
    let (depth, single) = block_counts(base, &base_layout);
    if depth + single == 0 {
        return Err(op_error(
            base.source(),
            OP,
            "no double or single blocks found; the checkpoint holds no Flux transformer blocks"
                .into(),
        ));
    }
    let guidance = present_recipe(base, &base_layout, "guidance_in.in_layer.weight").is_some();
    let block_modules = 10 * depth + 3 * single;
    let mut lora = LoraWeights::default();
    let mut report = ExtractReport::default();
    for (idx, key) in flux_module_paths(depth, single, true)
        .into_iter()
        .enumerate()
    {
        if idx >= block_modules && !opts.all_linears {
            break;
        }
        let wkey = format!("{key}.weight");
        let Some(w_base) = read_bfl(base, &base_layout, &wkey, OP)? else {
            report.absent.push(key);
            continue;
        };
        let Some(mut delta) = read_bfl(tuned, &tuned_layout, &wkey, OP)? else {
            return Err(op_error(
                tuned.source(),
                OP,
                format!(
                    "has no `{key}` weight but the base {} does; the two checkpoints are different \
                     models",
                    base.source().display()
                ),
            ));
        };
        let Some((out, inp)) = w_base.dims2() else {
            return Err(op_error(
                base.source(),
                OP,
                format!(
                    "`{wkey}` has shape {:?}, not a 2-D linear weight",
                    w_base.shape
                ),
            ));
        };
        if delta.shape != w_base.shape {
            return Err(op_error(
                tuned.source(),
                OP,
                format!(
                    "`{wkey}` has shape {:?} but the base's is {:?}; the checkpoints are different \
                     models",
                    delta.shape, w_base.shape
                ),
            ));
        }
        delta
            .data
            .iter_mut()
            .zip(&w_base.data)
            .for_each(|(t, b)| *t -= b);
        drop(w_base);
        let bias_delta = bias_difference(base, tuned, &base_layout, &tuned_layout, &key, out)?;
        let max_abs_diff = delta.max_abs();
        let bias_changed = bias_delta
            .as_ref()
            .is_some_and(|b| b.max_abs() > opts.min_diff);
        if !(max_abs_diff > opts.min_diff) && !bias_changed {
            report.unchanged.push(key);
            continue;
        }
        let op = F32Matrix {
            rows: out,
            cols: inp,
            data: &delta.data,
        };
        let d = randomized_svd(
            op,
            opts.rank,
            opts.oversample,
            opts.power_iterations,
            opts.seed,
        );
        let k = d.s.len();
        let sqrt_s: Vec<f64> = d.s.iter().map(|v| v.sqrt()).collect();
        let total: f64 = delta.data.iter().map(|v| f64::from(*v).powi(2)).sum();
        let kept: f64 = d.s.iter().map(|v| v * v).sum();
        let module = LoraModule {
            down: HostTensor {
                shape: vec![k, inp],
                data: d.v.scale_cols(&sqrt_s).t().to_f32(),
            },
            up: HostTensor {
                shape: vec![out, k],
                data: d.u.scale_cols(&sqrt_s).to_f32(),
            },
            alpha: k as f32,
            up_bias: bias_delta.filter(|_| bias_changed),
        };
        report.modules.push(ExtractedModule {
            key: key.clone(),
            rank: k,
            fro_retained: if total > 0.0 {
                (kept / total).sqrt().min(1.0)
            } else {
                1.0
            },
            max_abs_diff,
            bias: module.up_bias.is_some(),
        });
        lora.modules.insert(key, module);
    }
    let variant = if guidance {
        FluxVariant::Dev
    } else {
        FluxVariant::Schnell
    };
    let rank = opts.rank as u32;
    let mut meta = TrainingMetadata::flux_lora(variant, rank, rank as f32);
    meta.extra.insert(
        "ss_training_comment".into(),
        format!(
            "extracted from {} (base) and {} (tuned) at rank {rank}",
            name_of(base.source()),
            name_of(tuned.source())
        ),
    );
    lora.metadata = meta.to_map();
    Ok((lora, report))
}

fn name_of(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `b_tuned − b_base` for module `key`, when both checkpoints have a bias of `out` values.
fn bias_difference(
    base: &Checkpoint,
    tuned: &Checkpoint,
    base_layout: &crate::flux_keys::FluxKeyLayout,
    tuned_layout: &crate::flux_keys::FluxKeyLayout,
    key: &str,
    out: usize,
) -> Result<Option<HostTensor>> {
    let bkey = format!("{key}.bias");
    let (Some(b), Some(mut t)) = (
        read_bfl(base, base_layout, &bkey, OP)?,
        read_bfl(tuned, tuned_layout, &bkey, OP)?,
    ) else {
        return Ok(None);
    };
    if b.shape != [out] || t.shape != [out] {
        return Err(op_error(
            tuned.source(),
            OP,
            format!(
                "`{bkey}` has shape {:?} (base {:?}), expected [{out}]; the checkpoints are \
                 different models",
                t.shape, b.shape
            ),
        ));
    }
    t.data.iter_mut().zip(&b.data).for_each(|(x, y)| *x -= y);
    Ok(Some(t))
}

/// Opens `base` and `tuned`, extracts, and writes the LoRA to `output` as `format` with
/// weights stored as `dtype`.
pub fn extract_lora_file(
    base: impl AsRef<Path>,
    tuned: impl AsRef<Path>,
    output: impl AsRef<Path>,
    opts: &ExtractOptions,
    format: LoraFormat,
    dtype: Dtype,
) -> Result<ExtractReport> {
    let base = Checkpoint::open(base)?;
    let tuned = Checkpoint::open(tuned)?;
    let (lora, report) = extract_lora(&base, &tuned, opts)?;
    if lora.is_empty() {
        return Err(op_error(
            tuned.source(),
            OP,
            format!(
                "no module differs from the base by more than {} ({} unchanged); nothing to write \
                 — is the tuned checkpoint really fine-tuned?",
                opts.min_diff,
                report.unchanged.len()
            ),
        ));
    }
    write_lora_as(output, &lora, format, &BTreeMap::new(), dtype)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::linalg::{qr_thin, GaussianRng, Mat};
    use super::*;
    use crate::safetensors::{write_safetensors, TensorRef};

    fn random(rows: usize, cols: usize, seed: u64) -> HostTensor {
        HostTensor::new(
            vec![rows, cols],
            GaussianRng::new(seed).matrix(rows, cols).to_f32(),
        )
        .unwrap()
    }

    fn save(path: &Path, tensors: &[(String, HostTensor)]) {
        let refs: Vec<(&str, TensorRef)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
            .collect();
        write_safetensors(path, &refs, &BTreeMap::new()).unwrap();
    }

    /// A planted rank-3 delta on `double_blocks.0.img_attn.qkv` (stored diffusers-split in the
    /// tuned checkpoint), nothing elsewhere.
    #[test]
    fn recovers_planted_low_rank_delta_across_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let (h, inp) = (8, 24);
        let w_qkv = random(3 * h, inp, 1);
        let w_proj = random(h, h, 2);
        let img_in = random(h, 4, 3);
        let (u, _) = qr_thin(&GaussianRng::new(4).matrix(3 * h, 3));
        let (v, _) = qr_thin(&GaussianRng::new(5).matrix(inp, 3));
        let planted = u.scale_cols(&[0.5, 0.2, 0.05]).matmul(&v.t());
        let mut tuned_qkv = w_qkv.clone();
        tuned_qkv
            .data
            .iter_mut()
            .zip(&planted.data)
            .for_each(|(t, p)| *t += *p as f32);
        let base_p = dir.path().join("base.safetensors");
        save(
            &base_p,
            &[
                ("img_in.weight".into(), img_in.clone()),
                ("double_blocks.0.img_attn.qkv.weight".into(), w_qkv.clone()),
                (
                    "double_blocks.0.img_attn.proj.weight".into(),
                    w_proj.clone(),
                ),
            ],
        );
        let tuned_p = dir.path().join("tuned.safetensors");
        let b = "transformer_blocks.0.attn";
        save(
            &tuned_p,
            &[
                ("x_embedder.weight".into(), img_in),
                (format!("{b}.to_q.weight"), tuned_qkv.rows(0, h).unwrap()),
                (
                    format!("{b}.to_k.weight"),
                    tuned_qkv.rows(h, 2 * h).unwrap(),
                ),
                (
                    format!("{b}.to_v.weight"),
                    tuned_qkv.rows(2 * h, 3 * h).unwrap(),
                ),
                (format!("{b}.to_out.0.weight"), w_proj),
            ],
        );
        let out = dir.path().join("lora.safetensors");
        let report = extract_lora_file(
            &base_p,
            &tuned_p,
            &out,
            &ExtractOptions::new(4),
            LoraFormat::Kohya,
            Dtype::F32,
        )
        .unwrap();
        assert_eq!(
            report.unchanged,
            vec!["double_blocks.0.img_attn.proj".to_string()]
        );
        assert_eq!(report.modules.len(), 1);
        assert!((report.modules[0].fro_retained - 1.0).abs() < 1e-6);
        let (lora, _) = crate::read_lora(&out).unwrap();
        let m = &lora.modules["double_blocks.0.img_attn.qkv"];
        assert_eq!(m.rank(), 4);
        let got = m.delta().unwrap();
        let want = Mat::from_f32(3 * h, inp, &planted.to_f32());
        let err = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "max error {err}");
        assert_eq!(lora.metadata["ss_network_dim"], "4");
        // No guidance_in in the base ⇒ schnell metadata.
        assert_eq!(
            lora.metadata["modelspec.architecture"],
            "flux-1-schnell/lora"
        );
    }

    #[test]
    fn identical_checkpoints_and_mismatches_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let w = random(6, 6, 1);
        save(
            &a,
            &[
                ("img_in.weight".into(), random(6, 2, 2)),
                ("single_blocks.0.linear2.weight".into(), w),
            ],
        );
        let e = extract_lora_file(
            &a,
            &a,
            dir.path().join("o.safetensors"),
            &ExtractOptions::new(2),
            LoraFormat::Kohya,
            Dtype::F32,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nothing to write"), "{e}");
        let b = dir.path().join("b.safetensors");
        save(
            &b,
            &[
                ("img_in.weight".into(), random(6, 2, 2)),
                ("single_blocks.0.linear2.weight".into(), random(6, 5, 3)),
            ],
        );
        let e = extract_lora(
            &Checkpoint::open(&a).unwrap(),
            &Checkpoint::open(&b).unwrap(),
            &ExtractOptions::new(2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("different models"), "{e}");
        let c = dir.path().join("c.safetensors");
        save(&c, &[("foo.weight".into(), random(2, 2, 1))]);
        let e = extract_lora(
            &Checkpoint::open(&c).unwrap(),
            &Checkpoint::open(&a).unwrap(),
            &ExtractOptions::new(2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a Flux transformer"), "{e}");
    }
}
