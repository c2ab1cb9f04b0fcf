//! Which runner handles which `component` of a parity case. A new component needs one arm here
//! (and a runner module beside this file); cases themselves need no code.

use burn::tensor::backend::Backend;

use super::{transformer, Case, Outcome};

/// Runs `case` on backend `B`; an unknown component is an error, never a silent skip.
pub fn run<B: Backend>(case: &Case, dev: &B::Device) -> Result<Outcome, String> {
    match case.component.as_str() {
        "transformer" | "sampler" | "schedule" => transformer::run::<B>(case, dev),
        other => Err(format!(
            "unknown component `{other}`: add a runner arm in crates/flux/tests/common/components.rs"
        )),
    }
}
