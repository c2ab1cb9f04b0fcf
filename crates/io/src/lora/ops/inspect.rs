//! What is in a LoRA file: [`inspect_lora`] → [`LoraInspection`] (printable with `{}`):
//! LoRA modules, LoKr / LoHa modules ([`LycorisSummary`]) and DoRA magnitudes, with their
//! counts per kind ([`KindCounts`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::linalg::Mat;
use crate::error::{IoError, Result};
use crate::lora::keys_te::{split_component, Component};
use crate::lora::{
    detect, read_lora_from, DoraAxis, KronFactor, LoraFormat, LoraModule, LoraWeights,
    LycorisModule,
};
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

/// How many modules of each kind a LoRA holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Plain LoRA modules (`up·down`), with or without a DoRA magnitude.
    pub lora: usize,
    /// LoKr modules.
    pub lokr: usize,
    /// LoHa modules.
    pub loha: usize,
    /// LoRA modules carrying a DoRA magnitude (counted in `lora` too).
    pub dora: usize,
}

impl fmt::Display for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lora {}, lokr {}, loha {}, dora {}",
            self.lora, self.lokr, self.loha, self.dora
        )
    }
}

/// One LoKr / LoHa module of a LoRA file.
#[derive(Debug, Clone, PartialEq)]
pub struct LycorisSummary {
    /// Canonical module key.
    pub key: String,
    /// `lokr` or `loha`.
    pub kind: &'static str,
    /// `[out, in]` of its ΔW.
    pub shape: [usize; 2],
    /// The stored tensors by role (`lokr_w1`, `lokr_w2_a`, `hada_w1_a`, …) with their shapes.
    pub factors: Vec<(&'static str, Vec<usize>)>,
    /// The rank LyCORIS calls `lora_dim`; `None` for a LoKr whose factors are both full.
    pub rank: Option<usize>,
    /// `.alpha`, when the file has one.
    pub alpha: Option<f32>,
    /// The scale ΔW carries (see [`LycorisModule::scale`]).
    pub scale: f32,
    /// Stored values.
    pub params: usize,
}

impl LycorisSummary {
    fn of(key: &str, m: &LycorisModule) -> Self {
        let shape = |t: &crate::tensor::HostTensor| t.shape.clone();
        let factors = match m {
            LycorisModule::Lokr { w1, w2, .. } => {
                let mut v = Vec::new();
                for (f, full, a, b) in [
                    (w1, "lokr_w1", "lokr_w1_a", "lokr_w1_b"),
                    (w2, "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
                ] {
                    match f {
                        KronFactor::Full(w) => v.push((full, shape(w))),
                        KronFactor::LowRank { a: ta, b: tb } => {
                            v.push((a, shape(ta)));
                            v.push((b, shape(tb)));
                        }
                    }
                }
                v
            }
            LycorisModule::Loha {
                w1_a,
                w1_b,
                w2_a,
                w2_b,
                ..
            } => vec![
                ("hada_w1_a", shape(w1_a)),
                ("hada_w1_b", shape(w1_b)),
                ("hada_w2_a", shape(w2_a)),
                ("hada_w2_b", shape(w2_b)),
            ],
        };
        let (out, inp) = m.dims();
        LycorisSummary {
            key: key.to_string(),
            kind: m.kind(),
            shape: [out, inp],
            factors,
            rank: m.rank(),
            alpha: match m {
                LycorisModule::Lokr { alpha, .. } | LycorisModule::Loha { alpha, .. } => *alpha,
            },
            scale: m.scale(),
            params: m.num_params(),
        }
    }
}

impl fmt::Display for LycorisSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let factors = self
            .factors
            .iter()
            .map(|(r, s)| format!("{r} {s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rank = self.rank.map_or("full".to_string(), |r| r.to_string());
        let alpha = self.alpha.map_or("none".to_string(), |a| a.to_string());
        write!(
            f,
            "{:<40} {} {:?}  rank {rank}  alpha {alpha} (scale {})  params {}  ({factors})",
            self.key, self.kind, self.shape, self.scale, self.params
        )
    }
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
    /// Number of modules per kind (LoRA, LoKr, LoHa, DoRA).
    pub kinds: KindCounts,
    /// Rank → number of LoRA modules (LoKr / LoHa ranks are in `lycoris`).
    pub ranks: BTreeMap<usize, usize>,
    /// Distinct alphas of the LoRA modules with their module counts, ascending.
    pub alphas: Vec<(f32, usize)>,
    /// The LoKr / LoHa modules, in key order.
    pub lycoris: Vec<LycorisSummary>,
    /// The LoRA modules carrying a DoRA magnitude, with its axis, in key order.
    pub dora: Vec<(String, DoraAxis)>,
    /// Modules carrying an output-bias delta.
    pub with_bias: usize,
    /// Stored values of the canonical modules (down + up + bias, LoKr / LoHa factors, DoRA
    /// magnitudes).
    pub params: usize,
    /// The `ss_*` and `modelspec.*` metadata entries.
    pub metadata: BTreeMap<String, String>,
    /// Number of other metadata entries.
    pub other_metadata: usize,
    /// `‖ΔW‖_F` per module (LoRA modules, then LoKr / LoHa), when asked for. For a DoRA
    /// module it is the norm of its LoRA change, before the magnitude rescales the weight.
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
    summarise(path, format, file_size, tensor_dtypes, &lora, norms)
}

fn summarise(
    path: &Path,
    format: LoraFormat,
    file_size: u64,
    tensor_dtypes: BTreeMap<Dtype, usize>,
    lora: &LoraWeights,
    norms: bool,
) -> Result<LoraInspection> {
    let mut components = ComponentCounts::default();
    let mut ranks = BTreeMap::new();
    let mut alphas: Vec<(f32, usize)> = Vec::new();
    for key in lora.modules.keys().chain(lora.lycoris.keys()) {
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
    }
    for m in lora.modules.values() {
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
    let lycoris: Vec<LycorisSummary> = lora
        .lycoris
        .iter()
        .map(|(k, m)| LycorisSummary::of(k, m))
        .collect();
    let kinds = KindCounts {
        lora: lora.modules.len(),
        lokr: lycoris.iter().filter(|m| m.kind == "lokr").count(),
        loha: lycoris.iter().filter(|m| m.kind == "loha").count(),
        dora: lora.dora.len(),
    };
    let norms = if norms {
        let mut v: Vec<(String, f64)> = lora
            .modules
            .iter()
            .map(|(k, m)| (k.clone(), delta_fro_norm(m)))
            .collect();
        for (k, m) in &lora.lycoris {
            let d = m.delta().map_err(|e| IoError::LoraModule {
                path: path.into(),
                module: k.clone(),
                format: format.name(),
                source: Box::new(e),
            })?;
            let sq: f64 = d.data.iter().map(|x| f64::from(*x).powi(2)).sum();
            v.push((k.clone(), sq.sqrt()));
        }
        Some(v)
    } else {
        None
    };
    Ok(LoraInspection {
        path: path.into(),
        format,
        file_size,
        tensor_dtypes,
        modules: lora.len(),
        components,
        kinds,
        ranks,
        alphas,
        lycoris,
        dora: lora.dora.iter().map(|(k, d)| (k.clone(), d.axis)).collect(),
        with_bias: lora
            .modules
            .values()
            .filter(|m| m.up_bias.is_some())
            .count(),
        params: lora.num_params(),
        metadata,
        other_metadata: other.len(),
        norms,
    })
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
        writeln!(f, "kinds      {}", self.kinds)?;
        if self.kinds.lora > 0 || self.lycoris.is_empty() {
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
        }
        if !self.dora.is_empty() {
            let per_out = self
                .dora
                .iter()
                .filter(|(_, a)| *a == DoraAxis::Output)
                .count();
            writeln!(
                f,
                "dora       {} LoRA modules carry a DoRA magnitude (per output channel {}, per \
                 input column {})",
                self.dora.len(),
                per_out,
                self.dora.len() - per_out
            )?;
        }
        if !self.lycoris.is_empty() {
            writeln!(f, "LoKr/LoHa modules:")?;
            for m in &self.lycoris {
                writeln!(f, "  {m}")?;
            }
        }
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
                let mark = if let Some(m) = self.lycoris.iter().find(|m| &m.key == k) {
                    format!("  ({})", m.kind)
                } else if self.dora.iter().any(|(d, _)| d == k) {
                    "  (dora: the LoRA change, before the magnitude)".to_string()
                } else {
                    String::new()
                };
                writeln!(f, "  {k:<48} {n:.6}{mark}")?;
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
