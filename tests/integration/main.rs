//! The root package's one integration-test binary: backend selection, the jobs' shared
//! command-line pieces, the jobs themselves on tiny inputs, and (with the `wgpu` feature) every
//! crate's wgpu check.

mod backend;
mod cli;
mod jobs;
mod layout;
mod wgpu_backend;
