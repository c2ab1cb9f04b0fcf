//! Writing [`LoraWeights`] as kohya, PEFT/diffusers or ComfyUI safetensors (atomically).
//!
//! Each format module turns the weights into `OutTensor`s; this
//! module checks them, merges the metadata and writes the file.

use std::collections::BTreeMap;
use std::path::Path;

use super::{comfy, kohya, peft, LoraFormat, LoraWeights};
use crate::error::{IoError, Result};
use crate::safetensors::{write_safetensors, Dtype, TensorRef};

/// Writes `lora` to `path` in `format` with F32 weights. See [`write_lora_as`].
pub fn write_lora(
    path: impl AsRef<Path>,
    lora: &LoraWeights,
    format: LoraFormat,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    write_lora_as(path, lora, format, metadata, Dtype::F32)
}

/// Writes `lora` to `path` in `format` (kohya, PEFT or ComfyUI) with weights stored as `dtype`
/// (F32, F16 or BF16). The file's metadata is `lora.metadata` overlaid with `metadata`, minus
/// any diffusers `lora_adapter_metadata` (its alphas would no longer describe the weights).
pub fn write_lora_as(
    path: impl AsRef<Path>,
    lora: &LoraWeights,
    format: LoraFormat,
    metadata: &BTreeMap<String, String>,
    dtype: Dtype,
) -> Result<()> {
    let path = path.as_ref();
    let fail = |problem: String| IoError::LoraWrite {
        path: path.into(),
        format: format.name(),
        problem,
    };
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(fail(format!(
            "weights can be stored as F32, F16 or BF16, not {dtype}"
        )));
    }
    let module_fail = |module: &str, source: IoError| IoError::LoraWriteModule {
        path: path.into(),
        format: format.name(),
        module: module.to_string(),
        source: Box::new(source),
    };
    for (key, m) in &lora.modules {
        m.check().map_err(|e| module_fail(key, e))?;
    }
    let tensors = match format {
        LoraFormat::Kohya => kohya::tensors(lora),
        LoraFormat::Peft => peft::tensors(lora),
        LoraFormat::ComfyUi => comfy::tensors(lora),
        other => {
            return Err(fail(format!(
                "{other} is a read-only format; write kohya, PEFT or ComfyUI"
            )))
        }
    }
    .map_err(|(key, e)| module_fail(&key, e))?;

    let mut meta: BTreeMap<String, String> = lora
        .metadata
        .iter()
        .chain(metadata.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.retain(|k, _| k != peft::ADAPTER_METADATA_KEY && !k.ends_with("_lora_adapter_metadata"));

    let refs: Vec<(&str, TensorRef)> = tensors
        .iter()
        .map(|t| {
            let d = if t.keep_f32 { Dtype::F32 } else { dtype };
            (t.name.as_str(), TensorRef::cast(&t.tensor, d))
        })
        .collect();
    write_safetensors(path, &refs, &meta)
}
