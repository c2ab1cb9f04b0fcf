//! [`LoraOptimizer`]: Burn's `Optimizer<M, B>` for any [`OptimizerRule`], with parameter groups,
//! global-norm clipping, path-keyed state and safetensors save/load.
//!
//! One step: walk the module and take every parameter that has a gradient (frozen parameters
//! have none and are never touched, lazy ones stay lazy) → clip all gradients by their global
//! norm → resolve each parameter's group by its path → hand all slots to the rule → write the
//! new values back, keeping ids and `require_grad`.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::GradAdaptor;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Device, Tensor};

use crate::clip::clip_global_norm;
use crate::groups::ParamGroups;
use crate::paths::{GradCollector, ParamLister, ParamWriter};
use crate::rule::{HostEntries, OptimizerRule, ParamSlot, ParamState};
use crate::state_file::{decode, encode, ParamImage, StateImage};
use crate::OptimError;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// State of one parameter, with the shape it belongs to.
#[derive(Clone, Debug)]
struct Entry<S> {
    shape: Vec<usize>,
    state: S,
}

/// Memory held by optimizer state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateMemory {
    /// Parameters (elements) that have state.
    pub params: usize,
    /// Bytes of device memory of all state tensors.
    pub bytes: usize,
}

impl StateMemory {
    /// Bytes per trainable parameter (0 when there is no state yet).
    pub fn bytes_per_param(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 / self.params as f64
        }
    }
}

/// An optimizer for any Burn module: rule + groups + global clipping + path-keyed state.
pub struct LoraOptimizer<R, M, B>
where
    B: AutodiffBackend,
    R: OptimizerRule<Inner<B>>,
    M: AutodiffModule<B>,
{
    rule: R,
    groups: ParamGroups,
    max_grad_norm: Option<f64>,
    states: BTreeMap<String, Entry<R::State>>,
    pending: BTreeMap<String, ParamImage>,
    steps: u64,
    last_grad_norm: Option<Tensor<Inner<B>, 1>>,
    _module: PhantomData<fn() -> M>,
}

impl<R, M, B> Clone for LoraOptimizer<R, M, B>
where
    B: AutodiffBackend,
    R: OptimizerRule<Inner<B>>,
    M: AutodiffModule<B>,
{
    fn clone(&self) -> Self {
        Self {
            rule: self.rule.clone(),
            groups: self.groups.clone(),
            max_grad_norm: self.max_grad_norm,
            states: self.states.clone(),
            pending: self.pending.clone(),
            steps: self.steps,
            last_grad_norm: self.last_grad_norm.clone(),
            _module: PhantomData,
        }
    }
}

impl<R, M, B> LoraOptimizer<R, M, B>
where
    B: AutodiffBackend,
    R: OptimizerRule<Inner<B>>,
    M: AutodiffModule<B>,
{
    /// Wraps a rule (e.g. `AdamWConfig::default().init()?`); no groups, no clipping.
    pub fn new(rule: R) -> Self {
        Self {
            rule,
            groups: ParamGroups::new(),
            max_grad_norm: None,
            states: BTreeMap::new(),
            pending: BTreeMap::new(),
            steps: 0,
            last_grad_norm: None,
            _module: PhantomData,
        }
    }

    /// Sets the parameter groups (LoRA+ ratio, regex rules).
    pub fn with_groups(mut self, groups: ParamGroups) -> Self {
        self.groups = groups;
        self
    }

    /// Clips gradients to a global L2 norm of `max_norm` before every step.
    pub fn with_max_grad_norm(mut self, max_norm: f64) -> Result<Self, OptimError> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(OptimError::config(
                "max_grad_norm",
                max_norm,
                "must be finite and > 0",
            ));
        }
        self.max_grad_norm = Some(max_norm);
        Ok(self)
    }

    /// The algorithm (e.g. to read Prodigy's `d`).
    pub fn rule(&self) -> &R {
        &self.rule
    }

    /// The parameter groups.
    pub fn groups(&self) -> &ParamGroups {
        &self.groups
    }

    /// Number of `step` calls so far (restored by loading state); feed it to an `LrSchedule`.
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// Global gradient norm of the last step, before clipping (syncs the device; `None` when
    /// clipping is off or no step ran).
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
            .as_ref()
            .and_then(|t| t.to_data().iter::<f64>().next())
    }

    /// Memory held by the state on device.
    pub fn state_memory(&self) -> StateMemory {
        let mut m = StateMemory {
            params: 0,
            bytes: 0,
        };
        for e in self.states.values() {
            m.params += e.shape.iter().product::<usize>();
            m.bytes += e.state.bytes();
        }
        m
    }

    /// Paths that currently have state, in order.
    pub fn state_paths(&self) -> Vec<String> {
        self.states
            .keys()
            .chain(self.pending.keys())
            .cloned()
            .collect()
    }

    fn step_common(&mut self, lr: f64, module: M, mut grads: GradAdaptor) -> M {
        let mut collector = GradCollector::<B>::new(&mut grads);
        module.visit(&mut collector);
        let found = collector.found;
        self.steps += 1;
        if found.is_empty() {
            return module;
        }

        let mut grads: Vec<Tensor<Inner<B>, 1>> = found.iter().map(|f| f.grad.clone()).collect();
        self.last_grad_norm = match self.max_grad_norm {
            Some(max_norm) => clip_global_norm(&mut grads, max_norm),
            None => None,
        };

        let mut ids = Vec::with_capacity(found.len());
        let mut slots = Vec::with_capacity(found.len());
        for (f, grad) in found.into_iter().zip(grads) {
            let settings = self.groups.resolve(&f.path);
            let state = self.take_state(&f.path, &f.shape, &f.param.device());
            ids.push(f.id);
            slots.push(ParamSlot {
                path: f.path,
                shape: f.shape,
                param: f.param,
                grad,
                lr_scale: settings.lr_scale,
                weight_decay: settings.weight_decay,
                state,
            });
        }

        self.rule.step(lr, &mut slots);

        let mut updates = HashMap::with_capacity(slots.len());
        for (id, slot) in ids.into_iter().zip(slots) {
            if let Some(state) = slot.state {
                self.states.insert(
                    slot.path,
                    Entry {
                        shape: slot.shape,
                        state,
                    },
                );
            }
            updates.insert(id, slot.param);
        }
        module.map(&mut ParamWriter::<B> { updates })
    }

    /// The state for `path`: in memory, or materialized from a loaded (pending) image.
    fn take_state(
        &mut self,
        path: &str,
        shape: &[usize],
        device: &Device<Inner<B>>,
    ) -> Option<R::State> {
        if let Some(e) = self.states.remove(path) {
            return Some(e.state);
        }
        let image = self.pending.remove(path)?;
        match self.materialize("<loaded state>", path, &image, shape, device) {
            Ok(state) => Some(state),
            // `Optimizer::load_record` cannot report errors; `load_state_*` validates eagerly.
            Err(e) => panic!("{e}"),
        }
    }

    /// Rebuilds the state of parameter `path` from `image` (saved in `origin`) and validates it.
    fn materialize(
        &self,
        origin: &str,
        path: &str,
        image: &ParamImage,
        shape: &[usize],
        device: &Device<Inner<B>>,
    ) -> Result<R::State, OptimError> {
        let mismatch = |problem: String| OptimError::StateMismatch {
            path: origin.to_string(),
            key: path.to_string(),
            problem,
        };
        if image.shape != shape {
            return Err(mismatch(format!(
                "saved for shape {:?}, parameter has shape {shape:?}",
                image.shape
            )));
        }
        let mut entries = HostEntries::new(image.tensors.clone());
        let state = R::State::from_host(&mut entries, shape, device)
            .map_err(|e| e.in_state(origin, path))?;
        let left = entries.remaining();
        if !left.is_empty() {
            return Err(mismatch(format!("unexpected state tensors {left:?}")));
        }
        self.rule
            .validate_state(shape, &state)
            .map_err(|e| e.in_state(origin, path))?;
        Ok(state)
    }

    /// The full state as a host image (pending, not yet materialized entries included).
    fn image(&self) -> StateImage {
        let mut params = BTreeMap::new();
        for (path, e) in &self.states {
            let tensors = e
                .state
                .to_host()
                .into_iter()
                .map(|(n, d)| (n.to_string(), d))
                .collect();
            params.insert(
                path.clone(),
                ParamImage {
                    shape: e.shape.clone(),
                    tensors,
                },
            );
        }
        for (path, p) in &self.pending {
            params.insert(path.clone(), p.clone());
        }
        StateImage {
            optimizer: self.rule.name().to_string(),
            config: self.rule.describe(),
            steps: self.steps,
            globals: self
                .rule
                .globals()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            params,
        }
    }

    /// The state as safetensors bytes.
    pub fn state_to_bytes(&self) -> Result<Vec<u8>, OptimError> {
        encode(&self.image())
    }

    /// Writes the state to `path` atomically (`fluxlora_io::atomic_write`: temporary file,
    /// fsync, rename, directory fsync).
    pub fn save_state_file(&self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let bytes = self.state_to_bytes()?;
        fluxlora_io::atomic_write(path, |w| w.write_all(&bytes))?;
        Ok(())
    }

    /// Loads state written by [`save_state_file`](Self::save_state_file), validating every entry
    /// against `module` (paths exist, shapes and state layout match) and placing it on each
    /// parameter's device. On error nothing changes.
    pub fn load_state_file(
        &mut self,
        path: impl AsRef<Path>,
        module: &M,
    ) -> Result<(), OptimError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| OptimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.load_state_bytes(&bytes, &path.display().to_string(), module)
    }

    /// [`load_state_file`](Self::load_state_file) from bytes; `origin` names them in errors.
    pub fn load_state_bytes(
        &mut self,
        bytes: &[u8],
        origin: &str,
        module: &M,
    ) -> Result<(), OptimError> {
        let image = self.checked_image(bytes, origin)?;
        let mut lister = ParamLister::<B>::new();
        module.visit(&mut lister);
        let by_path: HashMap<&str, (&Vec<usize>, &Device<B>)> = lister
            .params
            .iter()
            .map(|(p, _, s, d)| (p.as_str(), (s, d)))
            .collect();
        let mut states = BTreeMap::new();
        for (path, p) in &image.params {
            let (shape, device) =
                by_path
                    .get(path.as_str())
                    .ok_or_else(|| OptimError::StateMismatch {
                        path: origin.to_string(),
                        key: path.clone(),
                        problem: "the module has no parameter with this path".into(),
                    })?;
            let state = self.materialize(origin, path, p, shape, device)?;
            states.insert(
                path.clone(),
                Entry {
                    shape: p.shape.clone(),
                    state,
                },
            );
        }
        let mut rule = self.rule.clone();
        rule.set_globals(&|k| image.globals.get(k).copied())
            .map_err(|e| e.in_state(origin, "__optimizer__"))?;
        self.rule = rule;
        self.states = states;
        self.pending.clear();
        self.steps = image.steps;
        Ok(())
    }

    fn checked_image(&self, bytes: &[u8], origin: &str) -> Result<StateImage, OptimError> {
        let image = decode(bytes, origin)?;
        if image.optimizer != self.rule.name() {
            return Err(OptimError::WrongOptimizer {
                path: origin.to_string(),
                expected: self.rule.name().to_string(),
                found: image.optimizer,
            });
        }
        Ok(image)
    }

    /// Loads state without a module: entries are validated when their parameter is first seen in
    /// `step` (which panics on a mismatch). Prefer [`load_state_bytes`](Self::load_state_bytes).
    pub fn load_state_unchecked(&mut self, bytes: &[u8], origin: &str) -> Result<(), OptimError> {
        let image = self.checked_image(bytes, origin)?;
        let mut rule = self.rule.clone();
        rule.set_globals(&|k| image.globals.get(k).copied())
            .map_err(|e| e.in_state(origin, "__optimizer__"))?;
        self.rule = rule;
        self.states.clear();
        self.pending = image.params;
        self.steps = image.steps;
        Ok(())
    }
}

impl<R, M, B> Optimizer<M, B> for LoraOptimizer<R, M, B>
where
    B: AutodiffBackend,
    R: OptimizerRule<Inner<B>>,
    M: AutodiffModule<B>,
{
    /// The state as safetensors bytes (see [`crate::state_file`]).
    type Record = Vec<u8>;

    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.step_common(lr, module, grads.into())
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: MultiGradientsParams) -> M {
        self.step_common(lr, module, grads.into())
    }

    /// Panics only if encoding fails, which valid state cannot.
    fn to_record(&self) -> Self::Record {
        match self.state_to_bytes() {
            Ok(bytes) => bytes,
            Err(e) => panic!("encoding optimizer state failed: {e}"),
        }
    }

    /// Burn's trait cannot return errors: panics on a malformed record. Use
    /// [`LoraOptimizer::load_state_bytes`] to get a `Result`.
    fn load_record(mut self, record: Self::Record) -> Self {
        if let Err(e) = self.load_state_unchecked(&record, "<record>") {
            panic!("{e}; use LoraOptimizer::load_state_bytes for a Result");
        }
        self
    }
}
