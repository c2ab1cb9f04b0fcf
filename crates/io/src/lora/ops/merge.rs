//! Baking LoRAs into a base transformer checkpoint:
//! `W ← W + Σᵢ wᵢ·ΔWᵢ` (and `b ← b + Σᵢ wᵢ·Δbᵢ`), written as a new single safetensors file in
//! the base's own key layout and dtypes (F32/F16/BF16 tensors are rounded to nearest-even on
//! write); every other tensor is copied byte for byte. Tensors are produced one at a time
//! ([`super::stream_write`]).
//!
//! ΔW is `scale·up·down` for a LoRA module and the dense change of a LoKr / LoHa module
//! ([`LycorisModule::delta`](crate::lora::LycorisModule::delta)). A LoRA module with a DoRA
//! magnitude replaces the weight by [`DoraScale::apply`](crate::lora::DoraScale::apply) of it
//! (`W + w·(m ⊙ (W + ΔW)/‖W + ΔW‖ − W)`, the trainers' definition, `w` the LoRA's weight), so
//! it depends on the weight it is applied to: the LoRAs are applied in the order given, each to
//! the result of the ones before.
//!
//! Canonical LoRA modules are BFL modules, so on a BFL base a fused `qkv`/`linear1` delta lands
//! on the fused weight directly; on a diffusers base its rows are split over
//! `to_q/to_k/to_v(/proj_mlp)`, and `final_layer.adaLN_modulation.1`'s halves are swapped onto
//! `norm_out.linear` ([`crate::flux_keys::Recipe`]); DoRA magnitudes per output channel follow
//! the rows (`merge_apply`). A per-input DoRA magnitude normalises over all the rows of
//! the module, so it cannot be merged into a base that splits the module over several tensors
//! (an error before anything is written). Text-encoder modules are skipped (the base is a
//! transformer checkpoint) and counted in the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::layout::{layout_of, present_recipe};
use super::merge_apply::{Change, Contribution, RowMap};
use super::op_error;
use super::stream_write::{write_streamed, StreamEntry};
use crate::error::Result;
use crate::flux_keys::Recipe;
use crate::lora::keys_te::{split_component, Component};
use crate::lora::{DoraAxis, LoraWeights};
use crate::safetensors::dtype::encode_from_f32;
use crate::safetensors::Dtype;
use crate::sharded::Checkpoint;

const OP: &str = "merge LoRAs into the base";

/// One LoRA to merge, with its multiplier.
#[derive(Debug, Clone)]
pub struct WeightedLora {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// The LoRA's modules, keyed canonically.
    pub lora: LoraWeights,
    /// Multiplier of its ΔW (1 = as trained).
    pub weight: f32,
}

impl WeightedLora {
    /// Reads the LoRA at `path` (any supported format).
    pub fn open(path: impl AsRef<Path>, weight: f32) -> Result<Self> {
        let path = path.as_ref();
        Ok(WeightedLora {
            path: path.into(),
            lora: crate::lora::read_lora(path)?.0,
            weight,
        })
    }
}

/// What [`merge_loras`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    /// Modules merged (LoRA, LoKr and LoHa), summed over the LoRAs.
    pub merged_modules: usize,
    /// Of those, LoKr / LoHa modules.
    pub lycoris_modules: usize,
    /// Of those, LoRA modules with a DoRA magnitude.
    pub dora_modules: usize,
    /// Base tensors that changed, in name order.
    pub modified_tensors: Vec<String>,
    /// Base tensors copied unchanged.
    pub copied_tensors: usize,
    /// Text-encoder modules skipped, summed over the LoRAs.
    pub skipped_text_encoder: usize,
}

/// Checkpoint tensors of BFL tensor `key` with their row maps; errors when absent.
fn placements(
    base: &Checkpoint,
    layout: &crate::flux_keys::FluxKeyLayout,
    key: &str,
    what: impl Fn() -> String,
) -> Result<Vec<(String, RowMap)>> {
    let Some(r) = present_recipe(base, layout, key) else {
        return Err(op_error(
            base.source(),
            OP,
            format!(
                "{} needs base tensor `{key}`{}, which the base lacks; the LoRA is for another \
                 model, or the base is not a complete Flux transformer checkpoint",
                what(),
                match recipe_names(layout, key) {
                    Some(n) if n != key => format!(" (stored as `{n}`)"),
                    _ => String::new(),
                }
            ),
        ));
    };
    Ok(match r {
        Recipe::Same(s) => vec![(s, RowMap::Offset(0))],
        Recipe::SwapHalves(s) => {
            let rows = base.info(&s)?.1.first().copied().unwrap_or(0);
            vec![(s, RowMap::Swap(rows / 2))]
        }
        Recipe::ConcatRows(v) => {
            let mut at = 0;
            let mut out = Vec::with_capacity(v.len());
            for s in v {
                let rows = base.info(&s)?.1.first().copied().unwrap_or(0);
                out.push((s, RowMap::Offset(at)));
                at += rows;
            }
            out
        }
    })
}

fn recipe_names(layout: &crate::flux_keys::FluxKeyLayout, key: &str) -> Option<String> {
    crate::flux_keys::recipe(layout, key).map(|r| r.sources().join("`, `"))
}

/// The base's shape of BFL tensor `key` (`None` when absent; [`placements`] reports that).
fn base_shape(
    base: &Checkpoint,
    layout: &crate::flux_keys::FluxKeyLayout,
    key: &str,
) -> Option<Vec<usize>> {
    present_recipe(base, layout, key)
        .and_then(|r| r.shape(|s| base.info(s).ok().map(|(_, sh)| sh.to_vec())))
}

/// Errors unless the base's `key` weight is `[out, inp]`.
fn check_shape(
    base: &Checkpoint,
    layout: &crate::flux_keys::FluxKeyLayout,
    wkey: &str,
    (out, inp): (usize, usize),
    what: &dyn Fn() -> String,
) -> Result<()> {
    match base_shape(base, layout, wkey) {
        Some(shape) if shape[..] != [out, inp] => Err(op_error(
            base.source(),
            OP,
            format!(
                "{} has ΔW shape [{out}, {inp}] but the base's `{wkey}` is {shape:?}; the LoRA \
                 was trained for a different model",
                what()
            ),
        )),
        _ => Ok(()),
    }
}

/// Merges `loras` into `base`, in order, and writes the result to `output` (atomically).
pub fn merge_loras(
    base: &Checkpoint,
    loras: &[WeightedLora],
    output: impl AsRef<Path>,
) -> Result<MergeReport> {
    let output = output.as_ref();
    let layout = layout_of(base, OP)?;
    let mut report = MergeReport::default();
    let mut targets: BTreeMap<String, Vec<Contribution>> = BTreeMap::new();
    for wl in loras {
        let damaged = |key: &str, p: String| {
            op_error(
                &wl.path,
                OP,
                format!("module `{key}`: {p}; the LoRA file is damaged"),
            )
        };
        if let Some(key) = wl
            .lora
            .dora
            .keys()
            .find(|k| !wl.lora.modules.contains_key(*k))
        {
            return Err(damaged(
                key,
                "has a DoRA magnitude but no LoRA module to apply it to".into(),
            ));
        }
        for (key, m) in &wl.lora.modules {
            if split_component(key).0 != Component::Transformer {
                report.skipped_text_encoder += 1;
                continue;
            }
            m.check().map_err(|p| damaged(key, p.to_string()))?;
            let what = || format!("LoRA {} module `{key}`", wl.path.display());
            let wkey = format!("{key}.weight");
            let dims = (m.out_features(), m.in_features());
            check_shape(base, &layout, &wkey, dims, &what)?;
            let dora = wl.lora.dora.get(key);
            let places = placements(base, &layout, &wkey, what)?;
            if let Some(d) = dora {
                let want = match d.axis {
                    DoraAxis::Output => dims.0,
                    DoraAxis::Input => dims.1,
                };
                if d.values.numel() != want {
                    return Err(damaged(
                        key,
                        format!(
                            "has {} DoRA magnitudes for a [{}, {}] module, which needs {want}",
                            d.values.numel(),
                            dims.0,
                            dims.1
                        ),
                    ));
                }
                if d.axis == DoraAxis::Input && places.len() > 1 {
                    return Err(op_error(
                        &wl.path,
                        OP,
                        format!(
                            "module `{key}` has a per-input DoRA magnitude (LyCORIS \
                             wd_on_out=False), which normalises each column over all {} rows of \
                             the fused module, but the base {} stores it split over `{}`; merge \
                             into a BFL-layout base (e.g. flux1-dev.safetensors), or re-train \
                             with DoRA per output channel",
                            dims.0,
                            base.source().display(),
                            places
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join("`, `")
                        ),
                    ));
                }
                report.dora_modules += 1;
            }
            for (name, rows) in places {
                let change = match dora {
                    Some(dora) => Change::Dora {
                        module: m,
                        dora,
                        weight: wl.weight,
                    },
                    None => Change::LowRank {
                        module: m,
                        factor: wl.weight * m.scale(),
                        bias: false,
                    },
                };
                targets
                    .entry(name)
                    .or_default()
                    .push(Contribution { change, rows });
            }
            if m.up_bias.is_some() {
                let bkey = format!("{key}.bias");
                let bshape = base_shape(base, &layout, &bkey);
                if bshape.as_ref().is_some_and(|s| s[..] != [m.out_features()]) {
                    return Err(op_error(
                        base.source(),
                        OP,
                        format!(
                            "{} has a bias delta of {} values but the base's `{bkey}` is {:?}; the \
                             LoRA was trained for a different model",
                            what(),
                            m.out_features(),
                            bshape.unwrap_or_default()
                        ),
                    ));
                }
                for (name, rows) in placements(base, &layout, &bkey, what)? {
                    let change = Change::LowRank {
                        module: m,
                        factor: wl.weight * m.scale(),
                        bias: true,
                    };
                    targets
                        .entry(name)
                        .or_default()
                        .push(Contribution { change, rows });
                }
            }
            report.merged_modules += 1;
        }
        for (key, m) in &wl.lora.lycoris {
            if split_component(key).0 != Component::Transformer {
                report.skipped_text_encoder += 1;
                continue;
            }
            m.check().map_err(|p| damaged(key, p.to_string()))?;
            let what = || format!("LoRA {} {} module `{key}`", wl.path.display(), m.kind());
            let wkey = format!("{key}.weight");
            check_shape(base, &layout, &wkey, m.dims(), &what)?;
            for (name, rows) in placements(base, &layout, &wkey, what)? {
                let change = Change::Dense {
                    module: m,
                    weight: wl.weight,
                };
                targets
                    .entry(name)
                    .or_default()
                    .push(Contribution { change, rows });
            }
            report.merged_modules += 1;
            report.lycoris_modules += 1;
        }
    }
    let mut entries = Vec::with_capacity(base.len());
    for name in base.names() {
        let (dtype, shape) = base.info(name)?;
        if targets.contains_key(name) && !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(op_error(
                base.source(),
                OP,
                format!(
                    "base tensor `{name}` is {dtype}; merging into it would need re-quantisation \
                     — merge into an F32/F16/BF16 base"
                ),
            ));
        }
        entries.push(StreamEntry {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
        });
    }
    report.modified_tensors = targets.keys().cloned().collect();
    report.copied_tensors = entries.len() - targets.len();
    write_streamed(output, &entries, base.metadata(), |i, w| {
        let e = &entries[i];
        match targets.get(&e.name) {
            None => w.write_all(base.raw(&e.name).map_err(std::io::Error::other)?),
            Some(contribs) => {
                let mut t = base.read_f32(&e.name).map_err(std::io::Error::other)?;
                let cols = if e.shape.len() >= 2 {
                    e.shape[1..].iter().product()
                } else {
                    1
                };
                for c in contribs {
                    c.apply(&mut t, cols).map_err(std::io::Error::other)?;
                }
                let mut buf = Vec::with_capacity(t.data.len() * e.dtype.size());
                encode_from_f32(e.dtype, &t.data, &mut buf)
                    .ok_or_else(|| std::io::Error::other(format!("cannot encode {}", e.dtype)))?;
                w.write_all(&buf)
            }
        }
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::linalg::GaussianRng;
    use super::*;
    use crate::lora::LoraModule;
    use crate::safetensors::{write_safetensors, SafeTensorsFile, TensorRef};
    use crate::tensor::HostTensor;

    fn random(shape: Vec<usize>, seed: u64) -> HostTensor {
        let n = shape.iter().product();
        let mut g = GaussianRng::new(seed);
        HostTensor::new(shape, (0..n).map(|_| g.normal() as f32).collect()).unwrap()
    }

    fn module(out: usize, inp: usize, r: usize, alpha: f32, seed: u64) -> LoraModule {
        LoraModule::new(
            random(vec![r, inp], seed),
            random(vec![out, r], seed + 100),
            alpha,
        )
        .unwrap()
    }

    fn lora(path: &str, modules: Vec<(&str, LoraModule)>, weight: f32) -> WeightedLora {
        WeightedLora {
            path: path.into(),
            lora: LoraWeights {
                modules: modules
                    .into_iter()
                    .map(|(k, m)| (k.to_string(), m))
                    .collect(),
                metadata: BTreeMap::new(),
                ..Default::default()
            },
            weight,
        }
    }

    #[test]
    fn adds_weighted_deltas_and_copies_the_rest_on_a_bfl_base() {
        let dir = tempfile::tempdir().unwrap();
        let qkv = random(vec![6, 4], 1);
        let qkv_b = random(vec![6], 2);
        let lin2 = random(vec![3, 5], 3);
        let img_in = random(vec![4, 2], 4);
        let counter: Vec<u8> = (0..16).collect();
        let base_p = dir.path().join("base.safetensors");
        let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        write_safetensors(
            &base_p,
            &[
                ("img_in.weight", TensorRef::cast(&img_in, Dtype::BF16)),
                ("double_blocks.0.img_attn.qkv.weight", TensorRef::f32(&qkv)),
                ("double_blocks.0.img_attn.qkv.bias", TensorRef::f32(&qkv_b)),
                (
                    "single_blocks.0.linear2.weight",
                    TensorRef::cast(&lin2, Dtype::BF16),
                ),
                ("step", TensorRef::raw(Dtype::I64, &[2], &counter)),
            ],
            &meta,
        )
        .unwrap();
        let base = Checkpoint::open(&base_p).unwrap();
        let lin2_base = base.read_f32("single_blocks.0.linear2.weight").unwrap();
        let mut m1 = module(6, 4, 2, 1.0, 10);
        m1.up_bias = Some(random(vec![6], 11));
        let m2 = module(6, 4, 3, 6.0, 12);
        let m3 = module(3, 5, 2, 2.0, 13);
        let loras = [
            lora(
                "a.safetensors",
                vec![
                    ("double_blocks.0.img_attn.qkv", m1.clone()),
                    (
                        "te1:text_model.encoder.layers.0.mlp.fc1",
                        module(2, 2, 1, 1.0, 5),
                    ),
                ],
                0.7,
            ),
            lora(
                "b.safetensors",
                vec![
                    ("double_blocks.0.img_attn.qkv", m2.clone()),
                    ("single_blocks.0.linear2", m3.clone()),
                ],
                -1.5,
            ),
        ];
        let out_p = dir.path().join("merged.safetensors");
        let rep = merge_loras(&base, &loras, &out_p).unwrap();
        assert_eq!(rep.merged_modules, 3);
        assert_eq!(rep.skipped_text_encoder, 1);
        assert_eq!(rep.copied_tensors, 2);
        assert_eq!(rep.modified_tensors.len(), 3);
        let out = SafeTensorsFile::open(&out_p).unwrap();
        assert_eq!(out.metadata(), &meta);
        // merged − base == Σ wᵢ·ΔWᵢ, ΔW from LoraModule::delta (a separate matmul path).
        let got = out.read_f32("double_blocks.0.img_attn.qkv.weight").unwrap();
        let (d1, d2) = (m1.delta().unwrap(), m2.delta().unwrap());
        for i in 0..24 {
            let want = qkv.data[i] + 0.7 * d1.data[i] - 1.5 * d2.data[i];
            assert!(
                (got.data[i] - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                got.data[i]
            );
        }
        let gb = out.read_f32("double_blocks.0.img_attn.qkv.bias").unwrap();
        let db = m1.delta_bias().unwrap();
        for i in 0..6 {
            assert!((gb.data[i] - (qkv_b.data[i] + 0.7 * db.data[i])).abs() < 1e-5);
        }
        // BF16 stays BF16, rounded from the f32 sum (within half a BF16 ulp plus f32 noise).
        assert_eq!(
            out.info("single_blocks.0.linear2.weight").unwrap().0,
            Dtype::BF16
        );
        let g2 = out.read_f32("single_blocks.0.linear2.weight").unwrap();
        let d3 = m3.delta().unwrap();
        for i in 0..15 {
            let want = lin2_base.data[i] - 1.5 * d3.data[i];
            assert!(
                (g2.data[i] - want).abs() <= want.abs() * 2f32.powi(-8) + 1e-6,
                "{i}"
            );
        }
        // Untouched tensors: byte for byte.
        for name in ["img_in.weight", "step"] {
            assert_eq!(out.raw(name).unwrap(), base.raw(name).unwrap(), "{name}");
            assert_eq!(out.info(name).unwrap(), base.info(name).unwrap());
        }
    }

    #[test]
    fn splits_fused_and_swapped_modules_on_a_diffusers_base() {
        let dir = tempfile::tempdir().unwrap();
        let b = "transformer_blocks.0.attn";
        let names = [
            "x_embedder.weight".to_string(),
            format!("{b}.to_q.weight"),
            format!("{b}.to_k.weight"),
            format!("{b}.to_v.weight"),
            "norm_out.linear.weight".to_string(),
        ];
        let shapes = [vec![4, 2], vec![2, 4], vec![2, 4], vec![2, 4], vec![4, 4]];
        let tensors: Vec<HostTensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| random(s.clone(), i as u64))
            .collect();
        let refs: Vec<(&str, TensorRef)> = names
            .iter()
            .zip(&tensors)
            .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
            .collect();
        let base_p = dir.path().join("transformer.safetensors");
        write_safetensors(&base_p, &refs, &BTreeMap::new()).unwrap();
        let base = Checkpoint::open(&base_p).unwrap();
        let qkv = module(6, 4, 2, 2.0, 20);
        let ada = module(4, 4, 2, 2.0, 21);
        let loras = [lora(
            "l.safetensors",
            vec![
                ("double_blocks.0.img_attn.qkv", qkv.clone()),
                ("final_layer.adaLN_modulation.1", ada.clone()),
            ],
            1.0,
        )];
        let out_p = dir.path().join("out.safetensors");
        merge_loras(&base, &loras, &out_p).unwrap();
        let out = SafeTensorsFile::open(&out_p).unwrap();
        let check = |name: &str, base_t: &HostTensor, want_delta: &HostTensor| {
            let got = out.read_f32(name).unwrap();
            for ((g, b), d) in got.data.iter().zip(&base_t.data).zip(&want_delta.data) {
                assert!((g - b - d).abs() < 1e-5, "{name}");
            }
        };
        let dq = qkv.delta().unwrap();
        check(&names[1], &tensors[1], &dq.rows(0, 2).unwrap());
        check(&names[2], &tensors[2], &dq.rows(2, 4).unwrap());
        check(&names[3], &tensors[3], &dq.rows(4, 6).unwrap());
        // BFL (shift, scale) vs diffusers (scale, shift).
        let da = ada.delta().unwrap();
        let swapped =
            HostTensor::concat_rows(&[&da.rows(2, 4).unwrap(), &da.rows(0, 2).unwrap()]).unwrap();
        check(&names[4], &tensors[4], &swapped);
        assert_eq!(out.raw(&names[0]).unwrap(), base.raw(&names[0]).unwrap());
    }

    #[test]
    fn wrong_model_is_an_error_naming_module_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let base_p = dir.path().join("base.safetensors");
        let w = random(vec![6, 4], 1);
        let img = random(vec![4, 2], 2);
        write_safetensors(
            &base_p,
            &[
                ("img_in.weight", TensorRef::f32(&img)),
                ("double_blocks.0.img_attn.qkv.weight", TensorRef::f32(&w)),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let base = Checkpoint::open(&base_p).unwrap();
        let out_p = dir.path().join("o.safetensors");
        let wrong_shape = [lora(
            "l.safetensors",
            vec![("double_blocks.0.img_attn.qkv", module(6, 5, 2, 2.0, 3))],
            1.0,
        )];
        let e = merge_loras(&base, &wrong_shape, &out_p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("double_blocks.0.img_attn.qkv") && e.contains("different model"),
            "{e}"
        );
        let missing = [lora(
            "l.safetensors",
            vec![("double_blocks.3.img_mlp.0", module(6, 4, 2, 2.0, 3))],
            1.0,
        )];
        let e = merge_loras(&base, &missing, &out_p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("double_blocks.3.img_mlp.0.weight") && e.contains("lacks"),
            "{e}"
        );
        assert!(!out_p.exists());
    }
}
