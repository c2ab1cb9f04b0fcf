//! [`FrozenLinearBackend`] for Burn's backends that use the composed defaults (NdArray has its
//! own kernel, in `ndarray.rs`; Autodiff its own node, in `autodiff.rs`).

#[cfg(any(feature = "cubecl", feature = "fusion", feature = "flex"))]
use crate::frozen::FrozenLinearBackend;

/// CUDA, wgpu and the other CubeCL runtimes.
#[cfg(feature = "cubecl")]
impl<R, F, I, BT> FrozenLinearBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
}

/// Burn's operation fusion over a fusable backend.
#[cfg(feature = "fusion")]
impl<B: burn_fusion::FusionBackend> FrozenLinearBackend for burn_fusion::Fusion<B> {}

/// Burn's pure-Rust CPU backend.
#[cfg(feature = "flex")]
impl FrozenLinearBackend for burn_flex::Flex {}
