//! Parameter groups: per-parameter learning-rate multipliers and weight-decay overrides chosen
//! by regular expressions over stable parameter paths (e.g. `blocks.3.attn.qkv.lora_b`).
//!
//! The first matching rule wins; parameters that match no rule use multiplier 1 and the
//! optimizer's own weight decay. LoRA+ is the special case "B matrices get `lr × ratio`".

use regex::Regex;

use crate::OptimError;

/// Pattern that matches LoRA "B"/"up" factors in the paths this workspace (and kohya/diffusers
/// files) use: a path component named `lora_b`, `lora_B` or `lora_up`.
pub const LORA_B_PATTERN: &str = r"(^|\.)(lora_b|lora_B|lora_up)(\.|$)";

/// What a group changes for its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupSettings {
    /// Multiplies the learning rate passed to `step` (0 freezes the group).
    pub lr_scale: f64,
    /// Replaces the optimizer's weight decay when set.
    pub weight_decay: Option<f64>,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            lr_scale: 1.0,
            weight_decay: None,
        }
    }
}

#[derive(Debug, Clone)]
struct GroupRule {
    name: String,
    pattern: Regex,
    settings: GroupSettings,
}

/// An ordered list of regex rules mapping parameter paths to [`GroupSettings`].
#[derive(Debug, Clone, Default)]
pub struct ParamGroups {
    rules: Vec<GroupRule>,
}

impl ParamGroups {
    /// No rules: every parameter uses the base learning rate.
    pub fn new() -> Self {
        Self::default()
    }

    /// LoRA+: parameters whose path matches [`LORA_B_PATTERN`] get `lr × ratio`.
    pub fn lora_plus(ratio: f64) -> Result<Self, OptimError> {
        Self::new().with_rule("lora_plus_b", LORA_B_PATTERN, ratio, None)
    }

    /// Appends a rule (rules are tried in insertion order; the first match wins).
    pub fn with_rule(
        mut self,
        name: &str,
        pattern: &str,
        lr_scale: f64,
        weight_decay: Option<f64>,
    ) -> Result<Self, OptimError> {
        if !(lr_scale.is_finite() && lr_scale >= 0.0) {
            return Err(OptimError::config(
                "lr_scale",
                lr_scale,
                "must be finite and >= 0",
            ));
        }
        if let Some(wd) = weight_decay {
            if !(wd.is_finite() && wd >= 0.0) {
                return Err(OptimError::config(
                    "weight_decay",
                    wd,
                    "must be finite and >= 0",
                ));
            }
        }
        let regex = Regex::new(pattern).map_err(|source| OptimError::BadGroupPattern {
            group: name.to_string(),
            pattern: pattern.to_string(),
            source,
        })?;
        self.rules.push(GroupRule {
            name: name.to_string(),
            pattern: regex,
            settings: GroupSettings {
                lr_scale,
                weight_decay,
            },
        });
        Ok(self)
    }

    /// Settings for the parameter at `path`.
    pub fn resolve(&self, path: &str) -> GroupSettings {
        self.rules
            .iter()
            .find(|r| r.pattern.is_match(path))
            .map(|r| r.settings)
            .unwrap_or_default()
    }

    /// Name of the rule that matches `path`, if any (for logging).
    pub fn group_name(&self, path: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.pattern.is_match(path))
            .map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_plus_matches_only_b_factors() {
        let g = ParamGroups::lora_plus(16.0).unwrap();
        assert_eq!(g.resolve("blocks.0.qkv.lora_b").lr_scale, 16.0);
        assert_eq!(g.resolve("lora_unet_x.lora_up.weight").lr_scale, 16.0);
        assert_eq!(g.resolve("blocks.0.qkv.lora_a").lr_scale, 1.0);
        assert_eq!(g.resolve("blocks.0.lora_bias").lr_scale, 1.0);
    }

    #[test]
    fn first_rule_wins_and_bad_patterns_error() {
        let g = ParamGroups::new()
            .with_rule("norms", r"norm", 0.5, Some(0.0))
            .unwrap()
            .with_rule("all", r".*", 2.0, None)
            .unwrap();
        assert_eq!(
            g.resolve("x.norm.scale"),
            GroupSettings {
                lr_scale: 0.5,
                weight_decay: Some(0.0)
            }
        );
        assert_eq!(g.resolve("x.proj").lr_scale, 2.0);
        assert_eq!(g.group_name("x.proj"), Some("all"));
        assert!(ParamGroups::new().with_rule("bad", "(", 1.0, None).is_err());
        assert!(ParamGroups::new()
            .with_rule("neg", "x", -1.0, None)
            .is_err());
    }
}
