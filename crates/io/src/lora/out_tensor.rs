//! The tensors a LoRA writer emits: [`OutTensor`], and [`module_tensors`] for the formats that
//! store alpha (kohya, ComfyUI). The format modules build them; [`super::write`] writes them.

use super::LoraModule;
use crate::tensor::HostTensor;

/// One tensor to be written.
pub(crate) struct OutTensor {
    /// The tensor's key in the file.
    pub name: String,
    /// The values.
    pub tensor: HostTensor,
    /// Scalars such as `.alpha` are always written as F32 (a BF16 alpha of 0.3 would change
    /// the scale).
    pub keep_f32: bool,
}

impl OutTensor {
    /// A weight, stored in the dtype the caller asks for.
    pub fn weight(name: String, tensor: HostTensor) -> Self {
        OutTensor {
            name,
            tensor,
            keep_f32: false,
        }
    }
}

/// Key suffixes of a format that stores alpha (kohya, ComfyUI).
pub(crate) struct Roles {
    /// Suffix of `A` (`.lora_down.weight`).
    pub down: &'static str,
    /// Suffix of `B` (`.lora_up.weight`).
    pub up: &'static str,
    /// Suffix of the alpha scalar, when the format stores one.
    pub alpha: Option<&'static str>,
    /// Bias delta, written as `scale·up_bias`.
    pub bias: &'static str,
}

/// The tensors of one module for a format that stores alpha.
pub(crate) fn module_tensors(stem: &str, m: &LoraModule, roles: &Roles) -> Vec<OutTensor> {
    let mut out = vec![
        OutTensor::weight(format!("{stem}{}", roles.down), m.down.clone()),
        OutTensor::weight(format!("{stem}{}", roles.up), m.up.clone()),
    ];
    if let Some(a) = roles.alpha {
        out.push(OutTensor {
            name: format!("{stem}{a}"),
            tensor: HostTensor::scalar(m.alpha),
            keep_f32: true,
        });
    }
    if let Some(b) = m.delta_bias() {
        out.push(OutTensor::weight(format!("{stem}{}", roles.bias), b));
    }
    out
}
