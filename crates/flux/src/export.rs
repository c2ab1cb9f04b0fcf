//! A model's weights as BFL-named host tensors in PyTorch layout, the inverse of loading: what a
//! model trained from scratch (`pretrain_tiny`) writes so that the ordinary loaders read it back.
//!
//! Module paths mirror BFL names except where Rust field names cannot (`img_mlp.layer0` is BFL
//! `img_mlp.0`, `mid_block_1` is `mid.block_1`, a GroupNorm's `gamma`/`beta` are
//! `weight`/`bias`); linear weights are stored `[d_in, d_out]` here and `[d_out, d_in]` in files,
//! and the autoencoder's attention projections are BFL 1×1 convolutions `[c, c, 1, 1]`.
//! LoRA adapters are not part of a base checkpoint: exporting a transformer that carries any is an
//! error (merge them, or write them as a LoRA file).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_io::HostTensor;

use crate::autoencoder::Autoencoder;
use crate::error::{FluxError, Result};
use crate::transformer::model::Flux;

/// Every float parameter of a module with its dotted module path, in module order.
struct PathCollector {
    stack: Vec<String>,
    found: Vec<(String, Vec<usize>, Vec<f32>)>,
    error: Option<String>,
}

impl<B: Backend> ModuleVisitor<B> for PathCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        match value.into_data().convert::<f32>().into_vec::<f32>() {
            Ok(data) => self.found.push((self.stack.join("."), shape, data)),
            Err(e) => self.error = Some(format!("{}: {e:?}", self.stack.join("."))),
        }
    }
}

/// A named tensor: path, shape, values.
type NamedValues = (String, Vec<usize>, Vec<f32>);

fn collect<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<NamedValues>> {
    let mut c = PathCollector {
        stack: Vec::new(),
        found: Vec::new(),
        error: None,
    };
    module.visit(&mut c);
    match c.error {
        Some(e) => Err(FluxError::Config(format!("reading parameter {e}"))),
        None => Ok(c.found),
    }
}

fn host(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor> {
    HostTensor::new(shape, data).map_err(|e| FluxError::Config(e.to_string()))
}

/// A `[d_in, d_out]` linear weight as PyTorch's `[d_out, d_in]`.
fn linear_weight(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor> {
    host(shape, data)?
        .transpose()
        .map_err(|e| FluxError::Config(e.to_string()))
}

/// The autoencoder's tensors under BFL `ae.safetensors` keys
/// (`encoder.down.0.block.0.conv1.weight`…).
pub fn autoencoder_tensors<B: Backend>(ae: &Autoencoder<B>) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for (path, shape, data) in collect(ae)? {
        let key = path
            .replace(".mid_block_1.", ".mid.block_1.")
            .replace(".mid_block_2.", ".mid.block_2.")
            .replace(".mid_attn_1.", ".mid.attn_1.");
        let key = match key.rsplit_once('.') {
            Some((stem, "gamma")) => format!("{stem}.weight"),
            Some((stem, "beta")) => format!("{stem}.bias"),
            _ => key,
        };
        let tensor = if shape.len() == 2 {
            // An attention projection: BFL stores it as a 1×1 convolution.
            let t = linear_weight(shape, data)?;
            let (o, i) = (t.shape[0], t.shape[1]);
            host(vec![o, i, 1, 1], t.data)?
        } else {
            host(shape, data)?
        };
        out.push((key, tensor));
    }
    Ok(out)
}

/// The transformer's tensors under BFL `flux1-*.safetensors` keys
/// (`double_blocks.0.img_attn.qkv.weight`…).
pub fn transformer_tensors<B: Backend>(flux: &Flux<B>) -> Result<Vec<(String, HostTensor)>> {
    let mut out = Vec::new();
    for (path, shape, data) in collect(flux)? {
        if path.contains(".adapters.") {
            return Err(FluxError::Config(format!(
                "`{path}` is a LoRA adapter: a base checkpoint holds none; merge the adapters into \
                 the weights or save them as a LoRA file"
            )));
        }
        let key = path
            .replace("_mlp.layer0.", "_mlp.0.")
            .replace("_mlp.layer2.", "_mlp.2.")
            .replace(
                "final_layer.ada_ln_modulation.",
                "final_layer.adaLN_modulation.1.",
            );
        let tensor = if shape.len() == 2 {
            linear_weight(shape, data)?
        } else {
            host(shape, data)?
        };
        out.push((key, tensor));
    }
    Ok(out)
}
