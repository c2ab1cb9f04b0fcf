//! LoRA tool operations, as kohya's `networks/*.py` scripts, ai-toolkit and ComfyUI nodes
//! offer them, on the host:
//!
//! - [`inspect`] — [`inspect_lora`]: format, module kinds (LoRA, LoKr, LoHa, DoRA), ranks,
//!   alphas, components, parameters, metadata and optionally each module's ‖ΔW‖_F
//!   ([`LoraInspection`], printable).
//! - [`convert_lora_file`] (here) — any readable format to kohya / PEFT / ComfyUI; LoKr, LoHa
//!   and DoRA modules go along (LoKr / LoHa have no PEFT layout: an error naming the file).
//! - [`resize`] — [`resize_lora`]: lower the rank by SVD without forming ΔW (fixed rank or a
//!   Frobenius-energy criterion), and turn LoKr / LoHa modules into LoRA modules by a truncated
//!   SVD of their dense ΔW ([`to_lora`]); DoRA is refused.
//! - [`extract`] — [`extract_lora`]: a LoRA from the difference of two full transformer
//!   checkpoints by randomized truncated SVD.
//! - [`merge`] — [`merge_loras`]: bake weighted LoRAs (LoRA, LoKr, LoHa, DoRA) into a base
//!   checkpoint, in order, streaming one tensor at a time, keeping every dtype.
//! - [`linalg`] — the `f64` QR / Jacobi SVD / randomized SVD they share.

pub mod extract;
pub mod inspect;
mod layout;
pub mod linalg;
pub mod merge;
mod merge_apply;
pub mod resize;
pub(crate) mod stream_write;
pub mod to_lora;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{IoError, Result};
use crate::lora::{read_lora, write_lora_as, LoraFormat};
use crate::safetensors::Dtype;

pub use extract::{
    extract_lora, extract_lora_file, ExtractOptions, ExtractReport, ExtractedModule,
};
pub use inspect::{
    delta_fro_norm, inspect_lora, ComponentCounts, KindCounts, LoraInspection, LycorisSummary,
};
pub use merge::{merge_loras, MergeReport, WeightedLora};
pub use resize::{resize_lora, resize_lora_file, ModuleResize, ResizeReport, ResizeTarget};

/// An [`IoError::LoraOp`].
pub(crate) fn op_error(path: &Path, op: &'static str, problem: String) -> IoError {
    IoError::LoraOp {
        path: path.into(),
        op,
        problem,
    }
}

/// The requested output format, else the input's when writable, else kohya.
pub(crate) fn output_format(requested: Option<LoraFormat>, input: LoraFormat) -> LoraFormat {
    requested.unwrap_or(if input.is_writable() {
        input
    } else {
        LoraFormat::Kohya
    })
}

/// What [`convert_lora_file`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// The file that was read.
    pub input: PathBuf,
    /// The format detected in the input.
    pub from: LoraFormat,
    /// The format written.
    pub to: LoraFormat,
    /// The dtype the weights were stored as.
    pub dtype: Dtype,
    /// Number of canonical modules converted (LoRA, LoKr and LoHa).
    pub modules: usize,
    /// Of those, LoKr / LoHa modules.
    pub lycoris_modules: usize,
    /// LoRA modules carrying a DoRA magnitude.
    pub dora_modules: usize,
}

/// Reads `input` (any supported format) and writes it to `output` as `to` (kohya, PEFT or
/// ComfyUI), weights stored as `dtype` — by default the input's weight dtype when it is F32,
/// F16 or BF16, else F32. LoKr / LoHa modules and DoRA magnitudes are written along; PEFT has
/// no LoKr / LoHa layout, so converting such a file to PEFT is an error naming it.
pub fn convert_lora_file(
    input: impl AsRef<Path>,
    output: impl AsRef<Path>,
    to: LoraFormat,
    dtype: Option<Dtype>,
) -> Result<ConvertReport> {
    let input = input.as_ref();
    let (lora, from) = read_lora(input)?;
    if to == LoraFormat::Peft {
        if let Some((key, m)) = lora.lycoris.iter().next() {
            return Err(op_error(
                input,
                "convert the LoRA to PEFT/diffusers",
                format!(
                    "module `{key}` is {} ({} LoKr/LoHa modules in all) and PEFT/diffusers has \
                     no LoKr/LoHa safetensors layout; write kohya or ComfyUI instead (--to kohya \
                     or --to comfyui), or turn it into a plain LoRA first (`lora resize --rank \
                     N`)",
                    m.kind(),
                    lora.lycoris.len()
                ),
            ));
        }
    }
    let dtype = match dtype {
        Some(d) => d,
        None => inspect::weights_dtype(&crate::SafeTensorsFile::open(input)?),
    };
    write_lora_as(output, &lora, to, &BTreeMap::new(), dtype)?;
    Ok(ConvertReport {
        input: input.into(),
        from,
        to,
        dtype,
        modules: lora.len(),
        lycoris_modules: lora.lycoris.len(),
        dora_modules: lora.dora.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::{LoraModule, LoraWeights};
    use crate::tensor::HostTensor;

    #[test]
    fn convert_keeps_weights_and_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let m = LoraModule::new(
            HostTensor::new(vec![1, 2], vec![1.0, 2.0]).unwrap(),
            HostTensor::new(vec![3, 1], vec![0.5, 0.25, 4.0]).unwrap(),
            2.0,
        )
        .unwrap();
        let lora = LoraWeights {
            modules: [("single_blocks.1.linear2".to_string(), m)].into(),
            metadata: BTreeMap::new(),
            ..Default::default()
        };
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        write_lora_as(&a, &lora, LoraFormat::Kohya, &BTreeMap::new(), Dtype::BF16).unwrap();
        let rep = convert_lora_file(&a, &b, LoraFormat::ComfyUi, None).unwrap();
        assert_eq!(
            (rep.from, rep.to, rep.dtype),
            (LoraFormat::Kohya, LoraFormat::ComfyUi, Dtype::BF16)
        );
        let (back, fmt) = read_lora(&b).unwrap();
        assert_eq!(fmt, LoraFormat::ComfyUi);
        // All values are exact in BF16, so the round trip is exact.
        assert_eq!(back.modules, lora.modules);
        let file = crate::SafeTensorsFile::open(&b).unwrap();
        assert_eq!(
            file.info("diffusion_model.single_blocks.1.linear2.lora_A.weight")
                .unwrap()
                .0,
            Dtype::BF16
        );
        assert_eq!(output_format(None, LoraFormat::XLabs), LoraFormat::Kohya);
        assert_eq!(output_format(None, LoraFormat::Peft), LoraFormat::Peft);
    }
}
