//! `FluxConfig`: the architecture hyper-parameters, the BFL presets and inference from a
//! checkpoint's tensor shapes.

use crate::error::{FluxError, Result};

/// Architecture of a Flux.1 transformer (BFL `FluxParams`).
#[derive(Debug, Clone, PartialEq)]
pub struct FluxConfig {
    /// Packed latent token width (64 for text-to-image; 128 / 384 for Canny/Depth/Fill).
    pub in_channels: usize,
    /// Output token width (64).
    pub out_channels: usize,
    /// Pooled text vector width (CLIP-L: 768).
    pub vec_in_dim: usize,
    /// Text token width (T5-XXL: 4096).
    pub context_in_dim: usize,
    /// Model width (3072).
    pub hidden_size: usize,
    /// MLP width, `hidden_size · mlp_ratio` (12288).
    pub mlp_hidden_dim: usize,
    /// Attention heads (24, head dim 128).
    pub num_heads: usize,
    /// Double-stream blocks (19).
    pub depth: usize,
    /// Single-stream blocks (38).
    pub depth_single_blocks: usize,
    /// RoPE split of the head dimension over the id axes (`[16, 56, 56]`).
    pub axes_dim: Vec<usize>,
    /// RoPE base (10000).
    pub theta: f64,
    /// Whether the double blocks' `qkv` linears have a bias.
    pub qkv_bias: bool,
    /// Whether the model takes a guidance value (dev: yes; schnell: no).
    pub guidance_embed: bool,
}

impl FluxConfig {
    /// FLUX.1-dev (and Krea): guidance-distilled.
    pub fn dev() -> Self {
        Self {
            in_channels: 64,
            out_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_hidden_dim: 12288,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// FLUX.1-schnell: as dev without the guidance embedder.
    pub fn schnell() -> Self {
        Self {
            guidance_embed: false,
            ..Self::dev()
        }
    }

    /// Head dimension `hidden_size / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// `mlp_hidden_dim / hidden_size` (4.0 for Flux.1).
    pub fn mlp_ratio(&self) -> f64 {
        self.mlp_hidden_dim as f64 / self.hidden_size as f64
    }

    /// Checks the internal consistency the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FluxError::Config(m));
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        let sum: usize = self.axes_dim.iter().sum();
        if sum != self.head_dim() {
            return bad(format!(
                "axes_dim {:?} sums to {sum}, but the head dimension is {}; give an axes_dim that \
                 sums to it",
                self.axes_dim,
                self.head_dim()
            ));
        }
        if self.axes_dim.iter().any(|d| d % 2 != 0)
            || self.axes_dim.is_empty()
            || self.axes_dim.len() > 3
        {
            return bad(format!(
                "axes_dim {:?} must be 1 to 3 even numbers (one per id axis)",
                self.axes_dim
            ));
        }
        if self.depth + self.depth_single_blocks == 0 {
            return bad("the model has no blocks".into());
        }
        Ok(())
    }

    /// Infers the whole configuration from tensor shapes given in BFL key names (PyTorch layout,
    /// `[out, in]`). `axes_dim` is the one field no weight determines; without it `[16, 56, 56]`
    /// is used for head dimension 128 and other head dimensions are an error.
    pub fn infer(
        shape_of: impl Fn(&str) -> Option<Vec<usize>>,
        axes_dim: Option<Vec<usize>>,
    ) -> Result<Self> {
        let need = |key: &str, rank: usize| -> Result<Vec<usize>> {
            match shape_of(key) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(FluxError::Config(format!(
                    "`{key}` has shape {s:?}, expected a rank-{rank} tensor"
                ))),
                None => Err(FluxError::Config(format!(
                    "cannot infer the configuration: `{key}` is missing"
                ))),
            }
        };
        let img_in = need("img_in.weight", 2)?;
        let (hidden_size, in_channels) = (img_in[0], img_in[1]);
        let context_in_dim = need("txt_in.weight", 2)?[1];
        let vec_in_dim = need("vector_in.in_layer.weight", 2)?[1];
        let out_channels = need("final_layer.linear.weight", 2)?[0];
        let count =
            |f: &dyn Fn(usize) -> String| (0..).take_while(|&i| shape_of(&f(i)).is_some()).count();
        let depth = count(&|i| format!("double_blocks.{i}.img_attn.qkv.weight"));
        let depth_single_blocks = count(&|i| format!("single_blocks.{i}.linear1.weight"));
        let (head_dim, mlp_hidden_dim, qkv_bias) = if depth > 0 {
            (
                need("double_blocks.0.img_attn.norm.query_norm.scale", 1)?[0],
                need("double_blocks.0.img_mlp.0.weight", 2)?[0],
                shape_of("double_blocks.0.img_attn.qkv.bias").is_some(),
            )
        } else if depth_single_blocks > 0 {
            let l1 = need("single_blocks.0.linear1.weight", 2)?[0];
            (
                need("single_blocks.0.norm.query_norm.scale", 1)?[0],
                l1.saturating_sub(3 * hidden_size),
                true,
            )
        } else {
            return Err(FluxError::Config(
                "no `double_blocks.N` or `single_blocks.N` tensors: not a Flux transformer".into(),
            ));
        };
        if head_dim == 0 || hidden_size % head_dim != 0 {
            return Err(FluxError::Config(format!(
                "QK-norm scale width {head_dim} does not divide hidden size {hidden_size}"
            )));
        }
        let axes_dim = match axes_dim {
            Some(a) => a,
            None if head_dim == 128 => vec![16, 56, 56],
            None => {
                return Err(FluxError::Config(format!(
                    "head dimension {head_dim} is not Flux.1's 128, so the RoPE split axes_dim \
                     cannot be assumed; pass axes_dim explicitly (three even numbers summing to \
                     {head_dim})"
                )))
            }
        };
        let cfg = Self {
            in_channels,
            out_channels,
            vec_in_dim,
            context_in_dim,
            hidden_size,
            mlp_hidden_dim,
            num_heads: hidden_size / head_dim,
            depth,
            depth_single_blocks,
            axes_dim,
            theta: 10_000.0,
            qkv_bias,
            guidance_embed: shape_of("guidance_in.in_layer.weight").is_some(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// BFL key shapes of a model, written out independently of the loader.
    fn shapes(c: &FluxConfig) -> HashMap<String, Vec<usize>> {
        let h = c.hidden_size;
        let mut m = HashMap::new();
        let mut lin = |k: &str, o: usize, i: usize| {
            m.insert(format!("{k}.weight"), vec![o, i]);
            m.insert(format!("{k}.bias"), vec![o]);
        };
        lin("img_in", h, c.in_channels);
        lin("txt_in", h, c.context_in_dim);
        lin("vector_in.in_layer", h, c.vec_in_dim);
        lin("final_layer.linear", c.out_channels, h);
        if c.guidance_embed {
            lin("guidance_in.in_layer", h, 256);
        }
        for i in 0..c.depth {
            lin(&format!("double_blocks.{i}.img_attn.qkv"), 3 * h, h);
            lin(&format!("double_blocks.{i}.img_mlp.0"), c.mlp_hidden_dim, h);
        }
        for i in 0..c.depth_single_blocks {
            lin(
                &format!("single_blocks.{i}.linear1"),
                3 * h + c.mlp_hidden_dim,
                h,
            );
        }
        for i in 0..c.depth {
            m.insert(
                format!("double_blocks.{i}.img_attn.norm.query_norm.scale"),
                vec![c.head_dim()],
            );
        }
        for i in 0..c.depth_single_blocks {
            m.insert(
                format!("single_blocks.{i}.norm.query_norm.scale"),
                vec![c.head_dim()],
            );
        }
        m
    }

    #[test]
    fn presets_round_trip_through_inference() {
        for c in [FluxConfig::dev(), FluxConfig::schnell()] {
            let s = shapes(&c);
            let got = FluxConfig::infer(|k| s.get(k).cloned(), None).unwrap();
            assert_eq!(got, c);
        }
    }

    #[test]
    fn small_heads_need_axes_dim() {
        let c = FluxConfig {
            hidden_size: 64,
            mlp_hidden_dim: 256,
            num_heads: 2,
            depth: 1,
            depth_single_blocks: 2,
            axes_dim: vec![8, 12, 12],
            ..FluxConfig::schnell()
        };
        let s = shapes(&c);
        assert!(matches!(
            FluxConfig::infer(|k| s.get(k).cloned(), None),
            Err(FluxError::Config(_))
        ));
        assert_eq!(
            FluxConfig::infer(|k| s.get(k).cloned(), Some(vec![8, 12, 12])).unwrap(),
            c
        );
        let bad = FluxConfig::infer(|k| s.get(k).cloned(), Some(vec![8, 8, 8])).unwrap_err();
        assert!(bad.to_string().contains("sums to 24"), "{bad}");
    }

    #[test]
    fn dev_constants() {
        let c = FluxConfig::dev();
        assert_eq!(c.head_dim(), 128);
        assert_eq!(c.mlp_ratio(), 4.0);
        assert!(c.validate().is_ok());
    }
}
