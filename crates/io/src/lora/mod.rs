//! LoRA files: one canonical in-memory form, six on-disk key formats.
//!
//! [`LoraWeights`] maps canonical module keys to [`LoraModule`]s. Transformer keys are BFL module
//! paths (`double_blocks.0.img_attn.qkv`, `single_blocks.5.linear1`, `img_in`,
//! `final_layer.adaLN_modulation.1`), so fused modules stay fused; text-encoder keys are
//! `te1:` + CLIP-L path and `te3:` + T5 path (see [`keys_te`]). A module is
//! `ΔW = (alpha/rank)·up·down` (`down: [rank, in]`, `up: [out, rank]`) and, when the file has an
//! output bias (BFL `lora_B.bias`), `Δb = (alpha/rank)·up_bias`.
//!
//! Reading ([`read_lora`]) detects the format ([`detect`]), maps every key to its canonical
//! module ([`kohya`], [`peft`], [`comfy`], [`bfl`], [`xlabs`], [`onetrainer`]) and fuses split
//! pieces exactly ([`fuse`]). Writing ([`write_lora`]) supports kohya, PEFT/diffusers and
//! ComfyUI. Alpha semantics per format:
//! - kohya, ComfyUI, OneTrainer: `.alpha` tensor per module, scale = alpha/rank; no `.alpha`
//!   means scale 1 (alpha = rank). Written with `.alpha` (always F32).
//! - PEFT/diffusers: `.alpha` tensors if present, else `lora_alpha`/`alpha_pattern`
//!   (+`use_rslora`) from the `lora_adapter_metadata` header JSON, else alpha = rank.
//!   Written with the scale folded into the weights (no alpha anywhere), because ComfyUI
//!   ignores header alphas and diffusers matches `.alpha` keys by suffix: the power of two
//!   nearest √scale multiplies `lora_B`, the rest multiplies `lora_A` (power-of-two factors are
//!   exact in F32/F16/BF16 away from overflow).
//! - BFL and XLabs: no alpha (scale 1) unless `.alpha` tensors are present.
//! - `lora_B.bias` (BFL, PEFT) and `.diff_b` (kohya/ComfyUI) carry the output-bias delta.
//!
//! LyCORIS adapters ([`lycoris`]) sit beside the LoRA modules: LoKr and LoHa modules in
//! [`LoraWeights::lycoris`] (kohya and ComfyUI names, ComfyUI's `lokr_*` / `hada_*` roles),
//! DoRA magnitudes in [`LoraWeights::dora`] next to their LoRA module (`dora_scale` in kohya
//! and ComfyUI files, `lora_magnitude_vector` in PEFT files).

pub mod bfl;
pub mod comfy;
pub mod detect;
pub mod fuse;
pub mod keys_flux;
pub mod keys_te;
pub mod kohya;
pub mod lycoris;
pub mod onetrainer;
pub mod ops;
mod out_tensor;
pub mod peft;
pub mod read;
mod role;
pub mod write;
pub mod xlabs;

use std::collections::BTreeMap;

use crate::error::{IoError, Result};
use crate::tensor::HostTensor;

pub use detect::{detect, detect_names};
pub use lycoris::{DoraAxis, DoraScale, KronFactor, LycorisModule};
pub use read::{read_lora, read_lora_from};
pub use write::{write_lora, write_lora_as};

/// One low-rank module: `ΔW = (alpha/rank)·up·down`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// `A`, shape `[rank, in]`.
    pub down: HostTensor,
    /// `B`, shape `[out, rank]`.
    pub up: HostTensor,
    /// Scale numerator: scale = alpha / rank.
    pub alpha: f32,
    /// Optional output-bias delta direction, shape `[out]`; `Δb = scale·up_bias`.
    pub up_bias: Option<HostTensor>,
}

impl LoraModule {
    /// A module without bias; checks the shapes (see [`check`](Self::check)).
    pub fn new(down: HostTensor, up: HostTensor, alpha: f32) -> Result<Self> {
        let m = LoraModule {
            down,
            up,
            alpha,
            up_bias: None,
        };
        m.check()?;
        Ok(m)
    }

    /// Checks shapes: 2-D `down [r, in]`, `up [out, r]` with the same `r ≥ 1`, bias `[out]`,
    /// finite alpha. The error names no file or module; callers add that context.
    pub fn check(&self) -> Result<()> {
        for (tensor, t) in [("down", &self.down), ("up", &self.up)] {
            if !t.is_consistent() {
                return Err(IoError::LoraTensorData {
                    tensor,
                    shape: t.shape.clone(),
                    len: t.data.len(),
                });
            }
        }
        let shapes = || (self.down.shape.clone(), self.up.shape.clone());
        let (Some((r, _)), Some((out, r2))) = (self.down.dims2(), self.up.dims2()) else {
            let (down, up) = shapes();
            return Err(IoError::LoraNot2d { down, up });
        };
        if r != r2 {
            let (down, up) = shapes();
            return Err(IoError::LoraRankMismatch {
                down,
                up,
                down_rank: r,
                up_rank: r2,
            });
        }
        if r == 0 {
            let (down, up) = shapes();
            return Err(IoError::LoraZeroRank { down, up });
        }
        if let Some(b) = &self.up_bias {
            if b.shape != [out] || b.numel() != out {
                return Err(IoError::LoraBiasShape {
                    bias: b.shape.clone(),
                    len: b.numel(),
                    out,
                });
            }
        }
        if !self.alpha.is_finite() {
            return Err(IoError::LoraAlpha { alpha: self.alpha });
        }
        Ok(())
    }

    /// The rank (rows of `down`).
    pub fn rank(&self) -> usize {
        self.down.shape.first().copied().unwrap_or(0)
    }

    /// Input features (columns of `down`).
    pub fn in_features(&self) -> usize {
        self.down.shape.get(1).copied().unwrap_or(0)
    }

    /// Output features (rows of `up`).
    pub fn out_features(&self) -> usize {
        self.up.shape.first().copied().unwrap_or(0)
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank() as f32
    }

    /// `ΔW = scale·up·down`, shape `[out, in]`.
    pub fn delta(&self) -> Result<HostTensor> {
        Ok(self.up.matmul(&self.down)?.scaled(self.scale()))
    }

    /// `Δb = scale·up_bias`, when there is a bias.
    pub fn delta_bias(&self) -> Option<HostTensor> {
        self.up_bias.as_ref().map(|b| b.scaled(self.scale()))
    }

    /// Number of stored values (down + up + bias).
    pub fn num_params(&self) -> usize {
        self.down.numel() + self.up.numel() + self.up_bias.as_ref().map_or(0, HostTensor::numel)
    }
}

/// A whole LoRA: canonical modules plus the file's string metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraWeights {
    /// Canonical key → module (see the module docs for the key scheme).
    pub modules: BTreeMap<String, LoraModule>,
    /// Canonical key → LoKr / LoHa module (whole BFL modules; never also in `modules`).
    pub lycoris: BTreeMap<String, LycorisModule>,
    /// Canonical key → DoRA magnitude of the LoRA module under the same key in `modules`.
    pub dora: BTreeMap<String, DoraScale>,
    /// `__metadata__` of the file it came from / will be written with.
    pub metadata: BTreeMap<String, String>,
}

impl LoraWeights {
    /// Number of modules (LoRA and LyCORIS).
    pub fn len(&self) -> usize {
        self.modules.len() + self.lycoris.len()
    }

    /// Whether there are no modules.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty() && self.lycoris.is_empty()
    }

    /// Total stored values.
    pub fn num_params(&self) -> usize {
        self.modules
            .values()
            .map(LoraModule::num_params)
            .sum::<usize>()
            + self
                .lycoris
                .values()
                .map(LycorisModule::num_params)
                .sum::<usize>()
            + self.dora.values().map(|d| d.values.numel()).sum::<usize>()
    }

    /// Whether any module is LoKr / LoHa or carries a DoRA magnitude.
    pub fn has_lycoris(&self) -> bool {
        !self.lycoris.is_empty() || !self.dora.is_empty()
    }
}

/// On-disk LoRA key formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraFormat {
    /// kohya sd-scripts: `lora_unet_<bfl_underscored>.lora_down.weight`, `.lora_up.weight`,
    /// `.alpha`; text encoders `lora_te1_` (CLIP-L) / `lora_te3_` (T5).
    Kohya,
    /// PEFT / diffusers: `transformer.<diffusers>.lora_A.weight` / `.lora_B.weight`; text encoders
    /// `text_encoder.` (CLIP-L) / `text_encoder_2.` (T5).
    Peft,
    /// ComfyUI: `diffusion_model.<bfl>.lora_A.weight` / `.lora_B.weight` / `.alpha`; text
    /// encoders `text_encoders.clip_l.transformer.` / `text_encoders.t5xxl.transformer.`.
    ComfyUi,
    /// BFL reference (`FluxLoraWrapper`): bare `<bfl>.lora_A.weight` / `.lora_B.weight` /
    /// `.lora_B.bias`. Read only.
    Bfl,
    /// XLabs x-flux: `double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`,
    /// `single_blocks.N.processor.{qkv,proj}_lora.*`. Read only.
    XLabs,
    /// OneTrainer legacy: `lora_transformer_<diffusers_underscored>.lora_down.weight` + `.alpha`.
    /// Read only.
    OneTrainer,
}

impl LoraFormat {
    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Peft => "PEFT/diffusers",
            LoraFormat::ComfyUi => "ComfyUI",
            LoraFormat::Bfl => "BFL",
            LoraFormat::XLabs => "XLabs",
            LoraFormat::OneTrainer => "OneTrainer",
        }
    }

    /// Whether [`write_lora`] can produce this format.
    pub fn is_writable(self) -> bool {
        matches!(
            self,
            LoraFormat::Kohya | LoraFormat::Peft | LoraFormat::ComfyUi
        )
    }
}

impl std::fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_is_scaled_product() {
        let down = HostTensor::new(vec![1, 2], vec![1.0, 2.0]).unwrap();
        let up = HostTensor::new(vec![2, 1], vec![3.0, 4.0]).unwrap();
        let m = LoraModule::new(down, up, 0.5).unwrap();
        assert_eq!(m.scale(), 0.5);
        // 0.5·[3;4]·[1 2] = [1.5 3; 2 4]
        assert_eq!(m.delta().unwrap().data, vec![1.5, 3.0, 2.0, 4.0]);
        assert!(LoraModule::new(
            HostTensor::zeros(vec![2, 3]),
            HostTensor::zeros(vec![4, 3]),
            1.0
        )
        .is_err());
    }

    #[test]
    fn check_errors_name_the_shapes() {
        let m = |down: Vec<usize>, up: Vec<usize>| LoraModule {
            down: HostTensor::zeros(down),
            up: HostTensor::zeros(up),
            alpha: 1.0,
            up_bias: None,
        };
        let e = m(vec![2, 3], vec![4, 1]).check().unwrap_err();
        assert!(matches!(
            e,
            IoError::LoraRankMismatch {
                down_rank: 2,
                up_rank: 1,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "down [2, 3] has rank 2 but up [4, 1] has rank 1"
        );
        let mut bad = m(vec![1, 2], vec![2, 1]);
        bad.down.data.pop();
        let e = bad.check().unwrap_err().to_string();
        assert!(
            e.contains("down has shape [1, 2] but holds 1 values"),
            "{e}"
        );
    }
}
