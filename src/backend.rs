//! Picking a compute backend at run time.
//!
//! Backends are compiled in by the root package's features (`cuda`, `wgpu`, `ndarray`). At run
//! time [`select`] takes an explicit choice (a `--backend` flag, else the `FLUXLORA_BACKEND`
//! environment variable) or picks automatically: CUDA when compiled and an NVIDIA driver is
//! present, else wgpu when a real (non-software) GPU adapter exists, else ndarray on the CPU.
//! Inside this crate, `with_backend!` then runs generic code on the chosen type: the jobs
//! ([`crate::jobs`]) are its only users, so each backend's instantiation of the generic stack
//! is compiled once, in this crate, and never in an example or a caller.

use std::fmt;
use std::str::FromStr;

/// The environment variable that overrides automatic selection.
pub const BACKEND_ENV: &str = "FLUXLORA_BACKEND";

/// A compute backend fluxlora can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// NVIDIA GPUs through burn-cuda (the training core).
    Cuda,
    /// Any GPU through wgpu (Vulkan/Metal/DX12); Mesa's software Vulkan in CI.
    Wgpu,
    /// The CPU through burn-ndarray (multi-threaded).
    NdArray,
}

impl BackendKind {
    /// Every backend, in automatic-selection order.
    pub const ALL: [BackendKind; 3] = [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::NdArray];

    /// Whether this binary was built with the backend's feature.
    pub fn compiled(self) -> bool {
        match self {
            Self::Cuda => cfg!(feature = "cuda"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::NdArray => cfg!(feature = "ndarray"),
        }
    }

    /// The feature name, as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
            Self::NdArray => "ndarray",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend request that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The name is not a backend.
    #[error("unknown backend {0:?}; use one of cuda, wgpu, ndarray or auto")]
    Unknown(String),
    /// The backend exists but this binary was built without it.
    #[error("backend {0} is not compiled into this binary; rebuild with `--features {0}`")]
    NotCompiled(BackendKind),
    /// No backend feature was enabled at all.
    #[error("no backend is compiled in; build with `--features ndarray` (CPU), `wgpu` or `cuda`")]
    NoneCompiled,
}

impl FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cuda" => Ok(Self::Cuda),
            "wgpu" | "vulkan" | "gpu" => Ok(Self::Wgpu),
            "ndarray" | "cpu" => Ok(Self::NdArray),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }
}

/// Chooses the backend: `requested` (a flag) wins, then `$FLUXLORA_BACKEND`, then [`auto`].
/// `"auto"` or an empty string means automatic selection.
pub fn select(requested: Option<&str>) -> Result<BackendKind, BackendError> {
    let env = std::env::var(BACKEND_ENV).ok();
    match requested.or(env.as_deref()).map(str::trim) {
        None | Some("") | Some("auto") => auto(),
        Some(name) => {
            let kind: BackendKind = name.parse()?;
            if kind.compiled() {
                Ok(kind)
            } else {
                Err(BackendError::NotCompiled(kind))
            }
        }
    }
}

/// Automatic choice: CUDA with a driver present, else wgpu on a real GPU, else ndarray.
pub fn auto() -> Result<BackendKind, BackendError> {
    if BackendKind::Cuda.compiled() && nvidia_driver_present() {
        return Ok(BackendKind::Cuda);
    }
    if BackendKind::Wgpu.compiled() && hardware_gpu_adapter() {
        return Ok(BackendKind::Wgpu);
    }
    if BackendKind::NdArray.compiled() {
        return Ok(BackendKind::NdArray);
    }
    // Only software wgpu or CUDA without a driver remain: wgpu still runs (slowly) on Mesa.
    BackendKind::ALL
        .into_iter()
        .find(|k| *k == BackendKind::Wgpu && k.compiled())
        .ok_or(BackendError::NoneCompiled)
}

/// Whether the NVIDIA kernel driver is loaded (burn-cuda needs it at run time; probing it
/// through CUDA itself would panic when it is absent).
pub fn nvidia_driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
        || std::path::Path::new("/dev/nvidiactl").exists()
}

/// Whether wgpu sees a GPU adapter that is not a software rasteriser.
#[cfg(feature = "wgpu")]
pub fn hardware_gpu_adapter() -> bool {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().any(|a| {
        let t = a.get_info().device_type;
        t != wgpu::DeviceType::Cpu && t != wgpu::DeviceType::Other
    })
}

/// Without the wgpu feature there is no adapter to find.
#[cfg(not(feature = "wgpu"))]
pub fn hardware_gpu_adapter() -> bool {
    false
}

/// Runs `$body` with `$B` bound to the selected backend type (with autodiff: `Autodiff<...>`
/// is left to the body) and `$dev` to its default device.
///
/// ```ignore
/// let kind = backend::select(args.backend.as_deref())?;
/// backend::with_backend!(kind, |B, dev| train::<B>(&config, &dev))?;
/// ```
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $dev:ident| $body:expr) => {{
        match $kind {
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                type $B = burn::backend::Cuda;
                let $dev: burn::tensor::Device<$B> = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendKind::Wgpu => {
                type $B = burn::backend::Wgpu;
                let $dev: burn::tensor::Device<$B> = Default::default();
                $body
            }
            #[cfg(feature = "ndarray")]
            $crate::backend::BackendKind::NdArray => {
                type $B = burn::backend::NdArray;
                let $dev: burn::tensor::Device<$B> = Default::default();
                fluxlora_flux::fused::retain_freed_host_memory();
                $body
            }
            #[allow(unreachable_patterns)]
            other => panic!(
                "backend {other} was selected but is not compiled in; use backend::select, which \
                 checks"
            ),
        }
    }};
}
pub(crate) use with_backend;
