//! All integration tests of fluxlora-optim, compiled as one test binary (one link instead of one per file).

mod common;
mod behaviour;
mod quant8;
mod resume;
mod schedules;
mod trajectories;
