//! All integration tests of fluxlora-optim, compiled as one test binary (one link instead of one
//! per file).

mod behaviour;
mod common;
mod quant8;
mod resume;
mod schedules;
mod trajectories;
