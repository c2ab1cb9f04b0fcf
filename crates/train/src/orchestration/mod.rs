//! Orchestration: what a whole run needs around the loop.
//!
//! [`base`] resolves the base model's files (a diffusers folder or single files, from a plain
//! [`base::ModelPaths`]) → [`encoders`] wraps the autoencoder and the text encoders behind the
//! data caches → [`prepare`] builds the caches and the validation split → [`session`] runs the
//! whole thing ([`session::train_session`]: prepare, trainer, resume, monitor) while
//! [`monitor`] draws the sample grids and the loss curve along the way; [`report`] is the
//! dataset report `prep` prints.

pub mod base;
pub mod encoders;
pub mod monitor;
pub mod prepare;
pub mod report;
pub mod session;
