//! Which runner handles which `component` of a parity case. A new component needs one arm here
//! (and a runner module beside this file); cases themselves need no code.

use fluxlora_flux::FluxBackend;

use super::{transformer, Case, Outcome};

/// Components whose cases other suites run: the encoders in `parity_encoders.rs`
/// (`common/encoders.rs`) and the tagger in `fluxlora-caption`'s `tests/parity.rs`.
pub const OTHER_SUITES: &[&str] = &[
    "ae_encode",
    "ae_decode",
    "clip",
    "t5",
    "t5_buckets",
    "tokenize_clip",
    "tokenize_t5",
    "tagger",
];

/// Runs `case` on backend `B`; an unknown component is an error, never a silent skip.
pub fn run<B: FluxBackend>(case: &Case, dev: &B::Device) -> Result<Outcome, String> {
    match case.component.as_str() {
        "transformer" | "sampler" | "schedule" => transformer::run::<B>(case, dev),
        other => Err(format!(
            "unknown component `{other}`: add a runner arm in \
             crates/flux/tests/common/components.rs"
        )),
    }
}
