//! What is in a LoRA file: [`inspect_lora`] → [`LoraInspection`] (printable with `{}`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::linalg::Mat;
use crate::error::{IoError, Result};
use crate::lora::keys_te::{split_component, Component};
use crate::lora::{detect, read_lora_from, LoraFormat, LoraModule, LoraWeights};
use crate::safetensors::{Dtype, SafeTensorsFile};

/// How many modules each component holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComponentCounts {
    /// Transformer `double_blocks.*`.
    pub double_blocks: usize,
    /// Transformer `single_blocks.*`.
    pub single_blocks: usize,
    /// Transformer linears outside the blocks (`img_in`, `final_layer.*`, …).
    pub transformer_other: usize,
    /// CLIP-L text encoder.
    pub clip_l: usize,
    /// T5-XXL text encoder.
    pub t5: usize,
}

/// A summary of one LoRA file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraInspection {
    /// The inspected file.
    pub path: PathBuf,
    /// The LoRA key format detected in the file.
    pub format: LoraFormat,
    /// File size in bytes.
    pub file_size: u64,
    /// Tensor count per stored dtype.
    pub tensor_dtypes: BTreeMap<Dtype, usize>,
    /// Number of canonical modules (fused q/k/v pieces count once).
    pub modules: usize,
    /// Number of canonical modules per component (transformer blocks, CLIP-L, T5).
    pub components: ComponentCounts,
    /// Rank → number of modules.
    pub ranks: BTreeMap<usize, usize>,
    /// Distinct alphas with their module counts, ascending.
    pub alphas: Vec<(f32, usize)>,
    /// Modules carrying an output-bias delta.
    pub with_bias: usize,
    /// Stored values of the canonical modules (down + up + bias).
    pub params: usize,
    /// The `ss_*` and `modelspec.*` metadata entries.
    pub metadata: BTreeMap<String, String>,
    /// Number of other metadata entries.
    pub other_metadata: usize,
    /// `‖ΔW‖_F` per module, when asked for.
    pub norms: Option<Vec<(String, f64)>>,
}

impl LoraInspection {
    /// Smallest rank (0 for an empty LoRA).
    pub fn min_rank(&self) -> usize {
        self.ranks.keys().next().copied().unwrap_or(0)
    }

    /// Largest rank (0 for an empty LoRA).
    pub fn max_rank(&self) -> usize {
        self.ranks.keys().next_back().copied().unwrap_or(0)
    }
}

/// `‖ΔW‖_F` of a module without forming ΔW:
/// `‖s·up·down‖²_F = s²·Σᵢⱼ (upᵀup)ᵢⱼ·(down·downᵀ)ᵢⱼ`.
pub fn delta_fro_norm(m: &LoraModule) -> f64 {
    let r = m.rank();
    let up = Mat::from_f32(m.out_features(), r, &m.up.data);
    let down = Mat::from_f32(r, m.in_features(), &m.down.data);
    let gu = up.t().matmul(&up);
    let gd = down.matmul(&down.t());
    let sq: f64 = gu.data.iter().zip(&gd.data).map(|(a, b)| a * b).sum();
    let s = f64::from(m.alpha) / r as f64;
    s.abs() * sq.max(0.0).sqrt()
}

/// The most common weight dtype among F32/F16/BF16 tensors of more than one element (F32
/// when there are none).
pub(crate) fn weights_dtype(file: &SafeTensorsFile) -> Dtype {
    let mut counts: BTreeMap<Dtype, usize> = BTreeMap::new();
    for name in file.names() {
        if let Ok((d, shape)) = file.info(name) {
            if matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
                && shape.iter().product::<usize>() > 1
            {
                *counts.entry(d).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(Dtype::F32, |(d, _)| d)
}

/// Reads and summarises the LoRA at `path`; `norms` adds each module's `‖ΔW‖_F`.
pub fn inspect_lora(path: impl AsRef<Path>, norms: bool) -> Result<LoraInspection> {
    let path = path.as_ref();
    let file = SafeTensorsFile::open(path)?;
    let format = detect(&file)?;
    let lora = read_lora_from(&file, format)?;
    let file_size = std::fs::metadata(path)
        .map_err(|e| IoError::io(path, "stat", e))?
        .len();
    let mut tensor_dtypes = BTreeMap::new();
    for name in file.names() {
        *tensor_dtypes.entry(file.info(name)?.0).or_default() += 1;
    }
    Ok(summarise(
        path,
        format,
        file_size,
        tensor_dtypes,
        &lora,
        norms,
    ))
}

fn summarise(
    path: &Path,
    format: LoraFormat,
    file_size: u64,
    tensor_dtypes: BTreeMap<Dtype, usize>,
    lora: &LoraWeights,
    norms: bool,
) -> LoraInspection {
    let mut components = ComponentCounts::default();
    let mut ranks = BTreeMap::new();
    let mut alphas: Vec<(f32, usize)> = Vec::new();
    for (key, m) in &lora.modules {
        match split_component(key) {
            (Component::ClipL, _) => components.clip_l += 1,
            (Component::T5, _) => components.t5 += 1,
            (Component::Transformer, p) if p.starts_with("double_blocks.") => {
                components.double_blocks += 1
            }
            (Component::Transformer, p) if p.starts_with("single_blocks.") => {
                components.single_blocks += 1
            }
            (Component::Transformer, _) => components.transformer_other += 1,
        }
        *ranks.entry(m.rank()).or_default() += 1;
        match alphas
            .iter_mut()
            .find(|(a, _)| a.to_bits() == m.alpha.to_bits())
        {
            Some((_, n)) => *n += 1,
            None => alphas.push((m.alpha, 1)),
        }
    }
    alphas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (metadata, other): (BTreeMap<_, _>, BTreeMap<_, _>) = lora
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.starts_with("ss_") || k.starts_with("modelspec."));
    LoraInspection {
        path: path.into(),
        format,
        file_size,
        tensor_dtypes,
        modules: lora.len(),
        components,
        ranks,
        alphas,
        with_bias: lora
            .modules
            .values()
            .filter(|m| m.up_bias.is_some())
            .count(),
        params: lora.num_params(),
        metadata,
        other_metadata: other.len(),
        norms: norms.then(|| {
            lora.modules
                .iter()
                .map(|(k, m)| (k.clone(), delta_fro_norm(m)))
                .collect()
        }),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn counts<K: fmt::Display>(items: impl IntoIterator<Item = (K, usize)>) -> String {
    items
        .into_iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for LoraInspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.components;
        writeln!(
            f,
            "file       {} ({})",
            self.path.display(),
            human_bytes(self.file_size)
        )?;
        writeln!(f, "format     {}", self.format)?;
        writeln!(
            f,
            "modules    {} (double blocks {}, single blocks {}, other transformer {}, CLIP-L {}, \
             T5 {})",
            self.modules, c.double_blocks, c.single_blocks, c.transformer_other, c.clip_l, c.t5
        )?;
        writeln!(
            f,
            "ranks      min {} max {} — {}",
            self.min_rank(),
            self.max_rank(),
            counts(self.ranks.iter().map(|(r, n)| (r, *n)))
        )?;
        writeln!(
            f,
            "alphas     {}",
            counts(self.alphas.iter().map(|(a, n)| (a, *n)))
        )?;
        if self.with_bias > 0 {
            writeln!(
                f,
                "bias       {} modules carry a bias delta",
                self.with_bias
            )?;
        }
        writeln!(f, "params     {}", self.params)?;
        writeln!(
            f,
            "dtypes     {}",
            counts(self.tensor_dtypes.iter().map(|(d, n)| (d, *n)))
        )?;
        if self.metadata.is_empty() {
            writeln!(
                f,
                "metadata   no ss_*/modelspec.* entries ({} other)",
                self.other_metadata
            )?;
        } else {
            writeln!(
                f,
                "metadata   ({} other entries not shown)",
                self.other_metadata
            )?;
            for (k, v) in &self.metadata {
                let v: String = if v.chars().count() > 96 {
                    format!(
                        "{}… ({} chars)",
                        v.chars().take(96).collect::<String>(),
                        v.chars().count()
                    )
                } else {
                    v.clone()
                };
                writeln!(f, "  {k} = {v}")?;
            }
        }
        if let Some(norms) = &self.norms {
            writeln!(f, "‖ΔW‖_F per module:")?;
            for (k, n) in norms {
                writeln!(f, "  {k:<48} {n:.6}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::write_lora_as;
    use crate::tensor::HostTensor;

    fn module(out: usize, inp: usize, r: usize, alpha: f32, seed: u64) -> LoraModule {
        let mut g = super::super::linalg::GaussianRng::new(seed);
        LoraModule::new(
            HostTensor::new(vec![r, inp], g.matrix(r, inp).to_f32()).unwrap(),
            HostTensor::new(vec![out, r], g.matrix(out, r).to_f32()).unwrap(),
            alpha,
        )
        .unwrap()
    }

    #[test]
    fn norm_matches_dense_delta() {
        for (i, (o, n, r)) in [(5, 7, 3), (1, 9, 4), (12, 2, 6)].into_iter().enumerate() {
            let m = module(o, n, r, 2.5, i as u64);
            let dense = m.delta().unwrap();
            let want = dense
                .data
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            let got = delta_fro_norm(&m);
            assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        }
    }

    #[test]
    fn counts_components_ranks_alphas() {
        let mut lora = LoraWeights::default();
        lora.modules.insert(
            "double_blocks.0.img_attn.qkv".into(),
            module(6, 2, 4, 4.0, 1),
        );
        lora.modules
            .insert("double_blocks.1.txt_mlp.0".into(), module(3, 2, 4, 4.0, 2));
        lora.modules
            .insert("single_blocks.0.linear2".into(), module(2, 3, 2, 1.0, 3));
        lora.modules
            .insert("img_in".into(), module(2, 2, 2, 1.0, 4));
        lora.modules.insert(
            "te1:text_model.encoder.layers.0.mlp.fc1".into(),
            module(4, 4, 8, 8.0, 5),
        );
        lora.metadata.insert("ss_network_dim".into(), "4".into());
        lora.metadata.insert("format".into(), "pt".into());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.safetensors");
        write_lora_as(&p, &lora, LoraFormat::Kohya, &BTreeMap::new(), Dtype::F16).unwrap();
        let i = inspect_lora(&p, true).unwrap();
        assert_eq!(i.format, LoraFormat::Kohya);
        assert_eq!(i.modules, 5);
        assert_eq!(
            i.components,
            ComponentCounts {
                double_blocks: 2,
                single_blocks: 1,
                transformer_other: 1,
                clip_l: 1,
                t5: 0
            }
        );
        assert_eq!(i.ranks, [(2, 2), (4, 2), (8, 1)].into());
        assert_eq!(i.alphas, vec![(1.0, 2), (4.0, 2), (8.0, 1)]);
        // Params: Σ r·(in + out) = 4·8 + 4·5 + 2·5 + 2·4 + 8·8.
        assert_eq!(i.params, 32 + 20 + 10 + 8 + 64);
        // 5 modules × (down, up in F16 + alpha in F32).
        assert_eq!(i.tensor_dtypes, [(Dtype::F16, 10), (Dtype::F32, 5)].into());
        assert_eq!(i.metadata.len(), 1);
        assert_eq!(i.other_metadata, 1);
        assert_eq!(i.file_size, std::fs::metadata(&p).unwrap().len());
        assert_eq!(i.norms.as_ref().unwrap().len(), 5);
        let text = i.to_string();
        assert!(text.contains("ranks      min 2 max 8"), "{text}");
        assert!(text.contains("ss_network_dim = 4"), "{text}");
        assert_eq!(
            weights_dtype(&SafeTensorsFile::open(&p).unwrap()),
            Dtype::F16
        );
    }
}
