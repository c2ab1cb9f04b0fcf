//! Which linears get LoRA adapters, and how.
//!
//! Selection works on BFL module paths (`double_blocks.3.img_attn.qkv`, `single_blocks.0.linear1`,
//! `final_layer.linear`, ...). A [`Preset`] decides the base set and its *granularity*:
//!
//! | preset | modules (Flux.1-dev) | adapters |
//! |---|---|---|
//! | `kohya` | 304 | 304 |
//! | `aitoolkit` | 304 | 494 |
//! | `attention` | 95 | 190 |
//!
//! - `kohya`: one adapter per BFL linear of the 19 double + 38 single blocks (sd-scripts
//!   `networks.lora_flux`).
//! - `aitoolkit`: diffusers granularity: fused `qkv` gets 3 row-range adapters (to_q/k/v),
//!   `linear1` gets 4 (to_q/k/v, proj_mlp).
//! - `attention`: diffusers `to_q/to_k/to_v/to_out.0`: image-stream `qkv` (3) and `proj` in double
//!   blocks, the q/k/v rows of single-block `linear1`.
//!
//! On top of the preset: block lists (`"0,1,8-12"`), per-type ranks (kohya's `type_dims`; rank 0
//! drops that type), embedder / final-layer opt-ins, and regex rules over the path that override
//! rank, alpha or learning-rate scale (rank 0 drops the module). The last matching rule wins.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use regex::Regex;

use crate::adapter::AdapterSpec;
use crate::error::LoraError;
use crate::network::Network;

/// The base selection and its granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// One adapter per block linear (kohya / ComfyUI / Forge layout).
    #[default]
    Kohya,
    /// Same modules, diffusers granularity (separate q/k/v/proj_mlp adapters).
    AiToolkit,
    /// Attention projections only (diffusers `to_q/to_k/to_v/to_out.0`).
    Attention,
}

impl FromStr for Preset {
    type Err = LoraError;
    fn from_str(s: &str) -> Result<Self, LoraError> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "kohya" | "full" | "all" => Ok(Self::Kohya),
            "aitoolkit" | "diffusers" => Ok(Self::AiToolkit),
            "attention" | "attn" | "attentiononly" => Ok(Self::Attention),
            _ => Err(LoraError::UnknownName {
                what: "LoRA target preset",
                name: s.to_string(),
                expected: "kohya, aitoolkit, attention".into(),
            }),
        }
    }
}

/// Module types, for per-type ranks (kohya's `type_dims`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ModuleKind {
    /// Double block, image stream: `img_attn.qkv`, `img_attn.proj`.
    ImgAttn,
    /// Double block, image stream: `img_mlp.0`, `img_mlp.2`.
    ImgMlp,
    /// Double block, image stream: `img_mod.lin`.
    ImgMod,
    /// Double block, text stream: `txt_attn.qkv`, `txt_attn.proj`.
    TxtAttn,
    /// Double block, text stream: `txt_mlp.0`, `txt_mlp.2`.
    TxtMlp,
    /// Double block, text stream: `txt_mod.lin`.
    TxtMod,
    /// Single block: `linear1`, `linear2`.
    Single,
    /// Single block: `modulation.lin`.
    SingleMod,
    /// `img_in`, `txt_in`, `time_in.*`, `vector_in.*`, `guidance_in.*`.
    Embedder,
    /// `final_layer.linear`, `final_layer.adaLN_modulation.1`.
    Final,
}

impl ModuleKind {
    const NAMES: [(&'static str, ModuleKind); 10] = [
        ("img_attn", Self::ImgAttn),
        ("img_mlp", Self::ImgMlp),
        ("img_mod", Self::ImgMod),
        ("txt_attn", Self::TxtAttn),
        ("txt_mlp", Self::TxtMlp),
        ("txt_mod", Self::TxtMod),
        ("single", Self::Single),
        ("single_mod", Self::SingleMod),
        ("embedder", Self::Embedder),
        ("final", Self::Final),
    ];
}

impl FromStr for ModuleKind {
    type Err = LoraError;
    fn from_str(s: &str) -> Result<Self, LoraError> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, k)| *k)
            .ok_or_else(|| LoraError::UnknownName {
                what: "module type",
                name: s.to_string(),
                expected: Self::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Where a path sits in the model, parsed from its BFL name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    kind: ModuleKind,
    block: Option<(bool, usize)>, // (is_double, index)
    leaf: String,                 // e.g. "img_attn.qkv", "linear1", "img_in"
}

fn parse_site(path: &str) -> Option<Site> {
    let mut parts = path.splitn(3, '.');
    let first = parts.next()?;
    if first == "double_blocks" || first == "single_blocks" {
        let idx: usize = parts.next()?.parse().ok()?;
        let leaf = parts.next()?.to_string();
        let kind = if first == "double_blocks" {
            match leaf.as_str() {
                "img_attn.qkv" | "img_attn.proj" => ModuleKind::ImgAttn,
                "img_mlp.0" | "img_mlp.2" => ModuleKind::ImgMlp,
                "img_mod.lin" => ModuleKind::ImgMod,
                "txt_attn.qkv" | "txt_attn.proj" => ModuleKind::TxtAttn,
                "txt_mlp.0" | "txt_mlp.2" => ModuleKind::TxtMlp,
                "txt_mod.lin" => ModuleKind::TxtMod,
                _ => return None,
            }
        } else {
            match leaf.as_str() {
                "linear1" | "linear2" => ModuleKind::Single,
                "modulation.lin" => ModuleKind::SingleMod,
                _ => return None,
            }
        };
        return Some(Site {
            kind,
            block: Some((first == "double_blocks", idx)),
            leaf,
        });
    }
    let kind = match path {
        "img_in" | "txt_in" => ModuleKind::Embedder,
        p if ["time_in.", "vector_in.", "guidance_in."]
            .iter()
            .any(|s| p.starts_with(s))
            && (p.ends_with(".in_layer") || p.ends_with(".out_layer")) =>
        {
            ModuleKind::Embedder
        }
        "final_layer.linear" | "final_layer.adaLN_modulation.1" => ModuleKind::Final,
        _ => return None,
    };
    Some(Site {
        kind,
        block: None,
        leaf: path.to_string(),
    })
}

/// A set of block indices, parsed from `"0,1,8-12"`; `"all"` or empty means every block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BlockList {
    /// Every block.
    #[default]
    All,
    /// Only these indices.
    Only(BTreeSet<usize>),
}

impl BlockList {
    /// Whether block `i` is included.
    pub fn contains(&self, i: usize) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(&i),
        }
    }
}

impl FromStr for BlockList {
    type Err = LoraError;
    fn from_str(spec: &str) -> Result<Self, LoraError> {
        let t = spec.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        if t.eq_ignore_ascii_case("none") {
            return Ok(Self::Only(BTreeSet::new()));
        }
        let err = |reason: String| LoraError::BlockList {
            spec: spec.to_string(),
            reason,
        };
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| err(format!("{:?} is not a block index", s.trim())))
        };
        let mut set = BTreeSet::new();
        for item in t.split(',') {
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(err(format!("range {a}-{b} runs backwards")));
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(num(item)?);
                }
            }
        }
        Ok(Self::Only(set))
    }
}

/// What a regex rule changes for the modules it matches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleOverride {
    /// New rank (0 removes the module).
    pub rank: Option<usize>,
    /// New alpha.
    pub alpha: Option<f32>,
    /// New learning-rate scale.
    pub lr_scale: Option<f32>,
}

/// The adapters chosen for one linear.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// The module's type.
    pub kind: ModuleKind,
    /// Learning-rate multiplier for this module's parameters.
    pub lr_scale: f32,
    /// One or more adapters (several for row-split granularity).
    pub adapters: Vec<AdapterSpec>,
}

/// Chooses LoRA targets over BFL module paths.
#[derive(Debug, Clone)]
pub struct TargetSelector {
    /// Base set and granularity.
    pub preset: Preset,
    /// Default rank (`network_dim`).
    pub rank: usize,
    /// Default alpha (`network_alpha`).
    pub alpha: f32,
    /// Input dropout for every adapter.
    pub dropout: f64,
    /// Rank dropout for every adapter.
    pub rank_dropout: f64,
    /// Module dropout for every adapter.
    pub module_dropout: f64,
    /// Double blocks to train.
    pub double_blocks: BlockList,
    /// Single blocks to train.
    pub single_blocks: BlockList,
    /// Per-type rank overrides (0 drops the type).
    pub type_ranks: BTreeMap<ModuleKind, usize>,
    /// Also train `img_in`, `txt_in` and the time / vector / guidance embedders.
    pub train_embedders: bool,
    /// Also train `final_layer.linear` and `final_layer.adaLN_modulation.1`.
    pub train_final_layer: bool,
    /// The adapter algorithm of every target (`network_type`). LoKr, LoHa and DoRA get one
    /// adapter per BFL module, never the row split of the diffusers-granular presets.
    pub network: Network,
    rules: Vec<(Regex, RuleOverride)>,
}

impl TargetSelector {
    /// A selector for `preset` with every block, rank and alpha as given.
    pub fn new(preset: Preset, rank: usize, alpha: f32) -> Self {
        Self {
            preset,
            rank,
            alpha,
            dropout: 0.0,
            rank_dropout: 0.0,
            module_dropout: 0.0,
            double_blocks: BlockList::All,
            single_blocks: BlockList::All,
            type_ranks: BTreeMap::new(),
            train_embedders: false,
            train_final_layer: false,
            network: Network::Lora,
            rules: Vec::new(),
        }
    }

    /// Adds a regex rule over module paths; later rules win.
    pub fn with_rule(mut self, pattern: &str, over: RuleOverride) -> Result<Self, LoraError> {
        let re = Regex::new(pattern).map_err(|source| LoraError::Regex {
            pattern: pattern.to_string(),
            source,
        })?;
        self.rules.push((re, over));
        Ok(self)
    }

    /// The adapters for the linear at `path` (`d_in → d_out`), or `None` if it is not a target.
    pub fn select(&self, path: &str, d_in: usize, d_out: usize) -> Option<TargetSpec> {
        let site = parse_site(path)?;
        if !self.in_preset(&site) {
            return None;
        }
        if let Some((double, i)) = site.block {
            let list = if double {
                &self.double_blocks
            } else {
                &self.single_blocks
            };
            if !list.contains(i) {
                return None;
            }
        }
        let mut rank = self
            .type_ranks
            .get(&site.kind)
            .copied()
            .unwrap_or(self.rank);
        let (mut alpha, mut lr_scale) = (self.alpha, 1.0f32);
        for (re, over) in &self.rules {
            if re.is_match(path) {
                rank = over.rank.unwrap_or(rank);
                alpha = over.alpha.unwrap_or(alpha);
                lr_scale = over.lr_scale.unwrap_or(lr_scale);
            }
        }
        if rank == 0 {
            return None;
        }
        let base = AdapterSpec {
            rank,
            alpha,
            multiplier: 1.0,
            dropout: self.dropout,
            rank_dropout: self.rank_dropout,
            module_dropout: self.module_dropout,
            rows: None,
            network: self.network,
        };
        // LyCORIS kinds sit on whole BFL modules (as LyCORIS applies them to kohya names):
        // their ΔW has no row-split form the file formats could fuse.
        let split = match self.network {
            Network::Lora => self.row_split(&site, d_in, d_out),
            _ => None,
        };
        let adapters = match split {
            Some(ranges) => ranges
                .into_iter()
                .map(|(s, e)| base.clone().with_rows(s, e))
                .collect(),
            None => vec![base],
        };
        Some(TargetSpec {
            kind: site.kind,
            lr_scale,
            adapters,
        })
    }

    fn in_preset(&self, site: &Site) -> bool {
        match site.kind {
            ModuleKind::Embedder => return self.train_embedders,
            ModuleKind::Final => return self.train_final_layer,
            _ => {}
        }
        match self.preset {
            Preset::Kohya | Preset::AiToolkit => true,
            Preset::Attention => matches!(
                site.leaf.as_str(),
                "img_attn.qkv" | "img_attn.proj" | "linear1"
            ),
        }
    }

    /// Row ranges for diffusers-granular presets: q/k/v thirds of `qkv`, and q/k/v(/mlp) of
    /// `linear1` (whose first `3·d_in` rows are q, k, v since `d_in` is the hidden size).
    fn row_split(&self, site: &Site, d_in: usize, d_out: usize) -> Option<Vec<(usize, usize)>> {
        let fused_qkv = site.leaf.ends_with("attn.qkv");
        let linear1 = site.leaf == "linear1";
        match self.preset {
            Preset::Kohya => None,
            _ if fused_qkv => {
                let h = d_out / 3;
                Some(vec![(0, h), (h, 2 * h), (2 * h, d_out)])
            }
            _ if linear1 => {
                let h = d_in;
                let mut v = vec![(0, h), (h, 2 * h), (2 * h, 3 * h)];
                if self.preset == Preset::AiToolkit && d_out > 3 * h {
                    v.push((3 * h, d_out));
                }
                Some(v)
            }
            _ => None,
        }
    }
}
