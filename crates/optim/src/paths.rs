//! Stable parameter paths and the module walks the optimizer needs.
//!
//! Burn 0.21's `ModuleVisitor`/`ModuleMapper` call `enter_module(name, container)` /
//! `exit_module` around every struct field, enum variant and `Vec`/array/tuple element (derived
//! modules do this; `Option` is transparent), so a stack of names yields each parameter's path,
//! e.g. `blocks.3.attn.qkv.lora_b` — the same path burn-store uses for safetensors keys. Paths
//! are a property of the module's structure, identical in every process, unlike the random
//! `ParamId::new()`; optimizer state is keyed by them.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::GradAdaptor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// A trainable parameter found with its gradient, flattened.
#[derive(Debug)]
pub(crate) struct FoundParam<B: Backend> {
    pub id: ParamId,
    pub path: String,
    pub shape: Vec<usize>,
    pub param: Tensor<B, 1>,
    pub grad: Tensor<B, 1>,
}

/// Collects every float parameter that has a gradient, in module order.
pub(crate) struct GradCollector<'a, B: AutodiffBackend> {
    grads: &'a mut GradAdaptor,
    stack: Vec<String>,
    pub found: Vec<FoundParam<B::InnerBackend>>,
}

impl<'a, B: AutodiffBackend> GradCollector<'a, B> {
    pub fn new(grads: &'a mut GradAdaptor) -> Self {
        Self {
            grads,
            stack: Vec::new(),
            found: Vec::new(),
        }
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((grad, _device)) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let value = param.val().inner();
        let device = value.device();
        let shape: Vec<usize> = value.dims().to_vec();
        let n: usize = shape.iter().product();
        let grad = if grad.device() != device {
            grad.to_device(&device)
        } else {
            grad
        };
        self.found.push(FoundParam {
            id: param.id,
            path: self.stack.join("."),
            shape,
            param: value.reshape([n]),
            grad: grad.reshape([n]),
        });
    }
}

/// Lists every float parameter's path, id and shape (without touching lazy values).
pub(crate) struct ParamLister<B: Backend> {
    stack: Vec<String>,
    pub params: Vec<(String, ParamId, Vec<usize>, burn::tensor::Device<B>)>,
}

impl<B: Backend> ParamLister<B> {
    pub fn new() -> Self {
        Self {
            stack: Vec::new(),
            params: Vec::new(),
        }
    }
}

impl<B: Backend> ModuleVisitor<B> for ParamLister<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.lazy_shape().to_vec();
        let device = param.lazy_device();
        self.params
            .push((self.stack.join("."), param.id, shape, device));
    }
}

/// Writes updated values back into the parameters they came from, keeping ids, mappers and
/// `require_grad`; parameters without an update are passed through untouched (lazy ones stay lazy).
pub(crate) struct ParamWriter<B: AutodiffBackend> {
    pub updates: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for ParamWriter<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(update) = self.updates.remove(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let mut value = Tensor::<B, D>::from_inner(update.reshape(tensor.shape()));
        if require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Paths of every float parameter of `module`, in visiting order (handy for building groups).
pub fn param_paths<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<(String, ParamId)> {
    let mut lister = ParamLister::<B>::new();
    module.visit(&mut lister);
    lister
        .params
        .into_iter()
        .map(|(p, id, _, _)| (p, id))
        .collect()
}
