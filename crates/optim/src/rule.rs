//! The contract between [`LoraOptimizer`](crate::LoraOptimizer) and an optimizer algorithm.
//!
//! The wrapper flattens every parameter that has a gradient into a [`ParamSlot`] (1-D parameter,
//! 1-D gradient, original shape, stable path, group settings, previous state) and hands *all*
//! slots of a step to [`OptimizerRule::step`] at once. Per-tensor algorithms (AdamW, AdamW8bit,
//! Adafactor) loop over the slots; Prodigy first reduces over every slot to update its global
//! step-size estimate `d`, then updates the parameters.
//!
//! States convert to host [`TensorData`] for saving, named by short state names (`exp_avg`, ...);
//! the state file prefixes them with the parameter path.

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::OptimError;

/// One trainable parameter, flattened, as an optimizer rule sees it during a step.
#[derive(Debug)]
pub struct ParamSlot<B: Backend, S> {
    /// Stable module path, e.g. `blocks.0.attn.qkv.lora_b`.
    pub path: String,
    /// The parameter's original shape (the rule may need it, e.g. Adafactor's factoring).
    pub shape: Vec<usize>,
    /// The parameter values, flattened; the rule replaces it with the updated values.
    pub param: Tensor<B, 1>,
    /// The (clipped, averaged) gradient, flattened.
    pub grad: Tensor<B, 1>,
    /// Group learning-rate multiplier.
    pub lr_scale: f64,
    /// Group weight-decay override.
    pub weight_decay: Option<f64>,
    /// State from the previous step (`None` on the first step); the rule stores the new state.
    pub state: Option<S>,
}

/// An optimizer algorithm usable by [`LoraOptimizer`](crate::LoraOptimizer).
pub trait OptimizerRule<B: Backend>: Clone + Send + Sync + 'static {
    /// Per-parameter state.
    type State: ParamState<B>;

    /// Short name stored in state files (`adamw`, `adamw8bit`, `prodigy`, `adafactor`).
    fn name(&self) -> &'static str;

    /// Human-readable configuration, stored in state-file metadata.
    fn describe(&self) -> String;

    /// Updates every slot: writes `slot.param` and `slot.state`.
    fn step(&mut self, lr: f64, slots: &mut [ParamSlot<B, Self::State>]);

    /// Checks that a loaded state fits this configuration (e.g. quantized vs f32 moments).
    fn validate_state(&self, shape: &[usize], state: &Self::State) -> Result<(), OptimError> {
        let _ = (shape, state);
        Ok(())
    }

    /// Optimizer-wide scalars that must survive a resume (Prodigy's `d`, ...).
    fn globals(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// Restores [`globals`](Self::globals); `get` returns `None` for a missing name.
    fn set_globals(&mut self, get: &dyn Fn(&str) -> Option<f64>) -> Result<(), OptimError> {
        let _ = get;
        Ok(())
    }
}

/// Per-parameter optimizer state: device tensors that convert to and from host data.
pub trait ParamState<B: Backend>: Clone + Send + Sync + Sized + 'static {
    /// Named host copies of every state tensor (bit-exact).
    fn to_host(&self) -> Vec<(&'static str, TensorData)>;

    /// Rebuilds the state for a parameter of `shape` on `device`.
    fn from_host(
        entries: &mut HostEntries,
        shape: &[usize],
        device: &B::Device,
    ) -> Result<Self, OptimError>;

    /// Bytes of device memory held by the state.
    fn bytes(&self) -> usize;

    /// Moves the state to `device`.
    fn to_device(self, device: &B::Device) -> Self;
}

/// Host tensors of one parameter's state, by state name, consumed by [`ParamState::from_host`].
#[derive(Debug, Default, Clone)]
pub struct HostEntries {
    entries: BTreeMap<String, TensorData>,
}

impl HostEntries {
    /// Wraps named tensors.
    pub fn new(entries: BTreeMap<String, TensorData>) -> Self {
        Self { entries }
    }

    /// Whether a state tensor named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names left after `from_host` took what it needs.
    pub fn remaining(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Takes a required f32 tensor of `len` elements (any rank; returned flat).
    pub fn take_f32<B: Backend>(
        &mut self,
        name: &str,
        len: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, OptimError> {
        let data = self.take(name)?;
        check(name, &data, DType::F32, len)?;
        let data = TensorData::from_bytes_vec(data.as_bytes().to_vec(), [len], DType::F32);
        Ok(Tensor::from_data(data, (device, DType::F32)))
    }

    /// Takes an optional f32 tensor.
    pub fn take_f32_opt<B: Backend>(
        &mut self,
        name: &str,
        len: usize,
        device: &B::Device,
    ) -> Result<Option<Tensor<B, 1>>, OptimError> {
        if self.contains(name) {
            self.take_f32(name, len, device).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Takes a required f32 matrix of shape `[rows, cols]`.
    pub fn take_f32_2d<B: Backend>(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, OptimError> {
        Ok(self
            .take_f32::<B>(name, rows * cols, device)?
            .reshape([rows, cols]))
    }

    /// Takes a required u8 tensor of `len` elements, stored on device as `storage` dtype.
    pub fn take_u8<B: Backend>(
        &mut self,
        name: &str,
        len: usize,
        storage: DType,
        device: &B::Device,
    ) -> Result<Tensor<B, 1, Int>, OptimError> {
        let data = self.take(name)?;
        check(name, &data, DType::U8, len)?;
        let data = TensorData::from_bytes_vec(data.as_bytes().to_vec(), [len], DType::U8);
        let codes: Tensor<B, 1, Int> = Tensor::from_data(data, (device, DType::U8));
        Ok(if storage == DType::U8 {
            codes
        } else {
            codes.cast(storage)
        })
    }

    /// Takes the step counter (an I64 tensor with one element).
    pub fn take_step(&mut self, name: &str) -> Result<usize, OptimError> {
        let data = self.take(name)?;
        check(name, &data, DType::I64, 1)?;
        let value: i64 = data.iter::<i64>().next().unwrap_or(-1);
        usize::try_from(value).map_err(|_| OptimError::BadStepCount {
            name: name.to_string(),
            value,
        })
    }

    fn take(&mut self, name: &str) -> Result<TensorData, OptimError> {
        self.entries
            .remove(name)
            .ok_or_else(|| OptimError::MissingStateTensor {
                name: name.to_string(),
            })
    }
}

fn check(name: &str, data: &TensorData, dtype: DType, len: usize) -> Result<(), OptimError> {
    if data.dtype != dtype {
        return Err(OptimError::StateDtype {
            name: name.to_string(),
            found: data.dtype,
            expected: dtype,
        });
    }
    let found: usize = data.shape.num_elements();
    if found != len {
        return Err(OptimError::StateLength {
            name: name.to_string(),
            found,
            expected: len,
        });
    }
    Ok(())
}

/// Host copy of a float tensor, as f32 (bit-exact for f32 backends).
pub fn host_f32<B: Backend, const D: usize>(t: &Tensor<B, D>) -> TensorData {
    let data = t.to_data();
    if data.dtype == DType::F32 {
        data
    } else {
        data.convert::<f32>()
    }
}

/// The named host copy (as [`host_f32`]) of an optional state tensor: `None` when absent.
pub fn named_f32<B: Backend, const D: usize>(
    name: &'static str,
    t: &Option<Tensor<B, D>>,
) -> Option<(&'static str, TensorData)> {
    t.as_ref().map(|t| (name, host_f32(t)))
}

/// The named host copy (as [`host_u8`]) of optional 8-bit codes: `None` when absent.
pub fn named_u8<B: Backend>(
    name: &'static str,
    t: &Option<Tensor<B, 1, Int>>,
) -> Option<(&'static str, TensorData)> {
    t.as_ref().map(|t| (name, host_u8(t)))
}

/// Host copy of 8-bit codes, as u8.
pub fn host_u8<B: Backend>(t: &Tensor<B, 1, Int>) -> TensorData {
    let data = t.to_data();
    if data.dtype == DType::U8 {
        data
    } else {
        data.convert::<u8>()
    }
}

/// Host copy of a step counter.
pub fn host_step(step: usize) -> TensorData {
    TensorData::new(vec![step as i64], [1])
}

/// Device bytes of a float tensor.
pub fn float_bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// Device bytes of an int tensor.
pub fn int_bytes<B: Backend, const D: usize>(t: &Tensor<B, D, Int>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

impl HostEntries {
    /// Number of elements of the entry `name`, if present.
    pub fn len_of(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|d| d.shape.num_elements())
    }
}
