//! The role of a LoRA tensor key (down / up / alpha / bias / diff_b), shared by detection and
//! reading.

/// What a key holds for its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `A` (`lora_down`, `lora_A`, `down`).
    Down,
    /// `B` (`lora_up`, `lora_B`, `up`).
    Up,
    /// The alpha scalar.
    Alpha,
    /// The output-bias delta direction (`lora_B.bias`).
    Bias,
    /// The output-bias delta (`diff_b`).
    DiffB,
}

const SUFFIXES: &[(&str, Role)] = &[
    (".lora_down.weight", Role::Down),
    (".lora_A.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_B.weight", Role::Up),
    (".lora_B.bias", Role::Bias),
    (".lora_up.bias", Role::Bias),
    (".down.weight", Role::Down),
    (".up.weight", Role::Up),
    (".alpha", Role::Alpha),
    (".diff_b", Role::DiffB),
];

/// Splits a tensor key into `(module stem, role)`.
pub(crate) fn split_role(key: &str) -> Option<(&str, Role)> {
    SUFFIXES.iter().find_map(|(s, r)| {
        key.strip_suffix(s)
            .filter(|stem| !stem.is_empty())
            .map(|stem| (stem, *r))
    })
}

impl Role {
    /// The role's short name (`down`, `up`, `alpha`, `bias`, `diff_b`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Down => "down",
            Role::Up => "up",
            Role::Alpha => "alpha",
            Role::Bias => "bias",
            Role::DiffB => "diff_b",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_split() {
        assert_eq!(
            split_role("lora_unet_x.lora_down.weight"),
            Some(("lora_unet_x", Role::Down))
        );
        assert_eq!(
            split_role("a.b.processor.qkv_lora1.up.weight"),
            Some(("a.b.processor.qkv_lora1", Role::Up))
        );
        assert_eq!(split_role("x.lora_B.bias"), Some(("x", Role::Bias)));
        assert_eq!(split_role("x.dora_scale"), None);
        assert_eq!(split_role(".alpha"), None);
    }
}
