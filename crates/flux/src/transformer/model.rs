//! The Flux transformer (BFL `Flux`): embeddings → double blocks → single blocks → final
//! layer.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_lora::LoraLinear;

use crate::error::{FluxError, Result};
use crate::fused::FluxBackend;
use crate::transformer::config::FluxConfig;
use crate::transformer::double_block::DoubleStreamBlock;
use crate::transformer::embed::{timestep_embedding, MlpEmbedder, TIMESTEP_DIM};
use crate::transformer::layers::{linear, LastLayer};
use crate::transformer::load::{RandomInit, WeightSource};
use crate::transformer::rope::Rope;
use crate::transformer::single_block::SingleStreamBlock;

/// Inputs of one forward pass, named after BFL `Flux.forward`'s arguments.
#[derive(Debug, Clone)]
pub struct FluxInputs<B: Backend> {
    /// Packed latent tokens `[B, L_img, in_channels]`.
    pub img: Tensor<B, 3>,
    /// `[B, L_img, 3]` (see [`crate::latents::img_ids`]).
    pub img_ids: Tensor<B, 3>,
    /// Text tokens (T5) `[B, L_txt, context_in_dim]`.
    pub txt: Tensor<B, 3>,
    /// `[B, L_txt, 3]` (zeros).
    pub txt_ids: Tensor<B, 3>,
    /// Noise level t ∈ [0, 1] per sample, `[B]`.
    pub timesteps: Tensor<B, 1>,
    /// Pooled text vector (CLIP) `[B, vec_in_dim]`.
    pub y: Tensor<B, 2>,
    /// Guidance strength per sample `[B]`; required by guidance-distilled (dev) models, ignored
    /// otherwise.
    pub guidance: Option<Tensor<B, 1>>,
    /// T5 padding mask `[B, L_txt]` (1 = token, 0 = padding): with it, no token attends to the
    /// padding (`apply_t5_attn_mask`); `None` attends to every text token, as BFL does.
    pub txt_mask: Option<Tensor<B, 2>>,
    /// Kontext's sequence conditioning (BFL `img_cond_seq` / `img_cond_seq_ids`): the control
    /// image's clean tokens, appended after `img`; the output covers `img`'s tokens only.
    pub img_cond_seq: Option<ImageCondSeq<B>>,
}

/// A control image's latent tokens and position ids (see [`crate::kontext`]).
#[derive(Debug, Clone)]
pub struct ImageCondSeq<B: Backend> {
    /// Packed clean latent tokens `[B, L_cond, in_channels]`.
    pub img: Tensor<B, 3>,
    /// `[B, L_cond, 3]` (see [`crate::latents::control_ids`]).
    pub ids: Tensor<B, 3>,
}

impl<B: Backend> FluxInputs<B> {
    /// The inputs the blocks see: with Kontext conditioning, `img ‖ img_cond_seq` and
    /// `img_ids ‖ img_cond_seq_ids` (BFL `denoise`'s `img_input`), without it a copy. Its
    /// `img_cond_seq` is `None`.
    pub fn joined(&self) -> FluxInputs<B> {
        let mut x = self.clone();
        if let Some(c) = x.img_cond_seq.take() {
            x.img = Tensor::cat(vec![x.img, c.img], 1);
            x.img_ids = Tensor::cat(vec![x.img_ids, c.ids], 1);
        }
        x
    }
}

/// The embedded inputs the blocks work on (the state passed between blocks).
#[derive(Debug, Clone)]
pub struct Embedded<B: Backend> {
    /// `[B, L_img, hidden]`.
    pub img: Tensor<B, 3>,
    /// `[B, L_txt, hidden]`.
    pub txt: Tensor<B, 3>,
    /// Conditioning vector `[B, hidden]`.
    pub vec: Tensor<B, 2>,
}

/// The Flux.1 transformer. Field names follow the BFL checkpoint keys (`img_mlp.0` is
/// `img_mlp.layer0`, `final_layer.adaLN_modulation.1` is `final_layer.ada_ln_modulation`).
#[derive(Module, Debug)]
pub struct Flux<B: Backend> {
    /// `img_in`: packed latent tokens `in_channels → hidden`.
    pub img_in: LoraLinear<B>,
    /// `time_in`: the 256-wide sinusoidal timestep embedding `→ hidden`, summed into `vec`.
    pub time_in: MlpEmbedder<B>,
    /// `vector_in`: the pooled CLIP vector `vec_in_dim → hidden`, summed into `vec`.
    pub vector_in: MlpEmbedder<B>,
    /// `guidance_in`: the 256-wide sinusoidal guidance embedding `→ hidden`, summed into
    /// `vec`; present only in guidance-distilled (dev) models.
    pub guidance_in: Option<MlpEmbedder<B>>,
    /// `txt_in`: T5 text tokens `context_in_dim → hidden`.
    pub txt_in: LoraLinear<B>,
    /// `double_blocks`: the `depth` double-stream blocks (separate image / text weights).
    pub double_blocks: Vec<DoubleStreamBlock<B>>,
    /// `single_blocks`: the `depth_single_blocks` single-stream blocks over `txt ‖ img`.
    pub single_blocks: Vec<SingleStreamBlock<B>>,
    /// `final_layer`: adaLN-modulated LayerNorm, then the projection to `out_channels`.
    pub final_layer: LastLayer<B>,
    /// The architecture (not a parameter).
    #[module(skip)]
    pub config: FluxConfig,
}

impl<B: FluxBackend> Flux<B> {
    /// A randomly initialised model (PyTorch-style linear init, unit norm scales): for tests and
    /// benches; real models come from [`Flux::load`](crate::transformer::load).
    pub fn init(config: &FluxConfig, device: &B::Device) -> Result<Self> {
        Self::build(config, &mut RandomInit::new(device))
    }

    /// Builds every submodule, taking each parameter from `w` under its BFL key.
    pub(crate) fn build(config: &FluxConfig, w: &mut impl WeightSource<B>) -> Result<Self> {
        config.validate()?;
        let c = config;
        let h = c.hidden_size;
        Ok(Self {
            img_in: w.linear("img_in", c.in_channels, h, true)?,
            time_in: MlpEmbedder::new("time_in", TIMESTEP_DIM, h, w)?,
            vector_in: MlpEmbedder::new("vector_in", c.vec_in_dim, h, w)?,
            guidance_in: if c.guidance_embed {
                Some(MlpEmbedder::new("guidance_in", TIMESTEP_DIM, h, w)?)
            } else {
                None
            },
            txt_in: w.linear("txt_in", c.context_in_dim, h, true)?,
            double_blocks: (0..c.depth)
                .map(|i| DoubleStreamBlock::new(i, h, c.num_heads, c.mlp_hidden_dim, c.qkv_bias, w))
                .collect::<Result<_>>()?,
            single_blocks: (0..c.depth_single_blocks)
                .map(|i| SingleStreamBlock::new(i, h, c.num_heads, c.mlp_hidden_dim, w))
                .collect::<Result<_>>()?,
            final_layer: LastLayer::new(h, c.out_channels, w)?,
            config: config.clone(),
        })
    }

    /// Checks the input shapes against the configuration and each other.
    pub fn check_inputs(&self, x: &FluxInputs<B>) -> Result<()> {
        let c = &self.config;
        let [b, l_img, ci] = x.img.dims();
        let [bt, l_txt, ct] = x.txt.dims();
        let bad = |name: &str, message: String| {
            Err(FluxError::Input {
                name: name.into(),
                message,
            })
        };
        if ci != c.in_channels {
            return bad(
                "img",
                format!("token width {ci}, the model takes {}", c.in_channels),
            );
        }
        if ct != c.context_in_dim {
            return bad(
                "txt",
                format!("token width {ct}, the model takes {}", c.context_in_dim),
            );
        }
        if bt != b {
            return bad("txt", format!("batch {bt} differs from img's {b}"));
        }
        let n_axes = c.axes_dim.len();
        if x.img_ids.dims()[0] != b || x.img_ids.dims()[1] != l_img || x.img_ids.dims()[2] < n_axes
        {
            return bad(
                "img_ids",
                format!("shape {:?}, expected [{b}, {l_img}, 3]", x.img_ids.dims()),
            );
        }
        if x.txt_ids.dims()[0] != b || x.txt_ids.dims()[1] != l_txt || x.txt_ids.dims()[2] < n_axes
        {
            return bad(
                "txt_ids",
                format!("shape {:?}, expected [{b}, {l_txt}, 3]", x.txt_ids.dims()),
            );
        }
        if x.timesteps.dims() != [b] {
            return bad(
                "timesteps",
                format!("shape {:?}, expected [{b}]", x.timesteps.dims()),
            );
        }
        if x.y.dims() != [b, c.vec_in_dim] {
            return bad(
                "y",
                format!("shape {:?}, expected [{b}, {}]", x.y.dims(), c.vec_in_dim),
            );
        }
        if let Some(cond) = &x.img_cond_seq {
            let [cb, l_cond, cc] = cond.img.dims();
            if cb != b || cc != c.in_channels {
                return bad(
                    "img_cond_seq",
                    format!(
                        "shape {:?}, expected [{b}, L_cond, {}]",
                        cond.img.dims(),
                        c.in_channels
                    ),
                );
            }
            let [ib, il, ia] = cond.ids.dims();
            if ib != b || il != l_cond || ia < n_axes {
                return bad(
                    "img_cond_seq_ids",
                    format!("shape {:?}, expected [{b}, {l_cond}, 3]", cond.ids.dims()),
                );
            }
        }
        if let Some(m) = &x.txt_mask {
            let l_txt = x.txt.dims()[1];
            if m.dims() != [b, l_txt] {
                return bad(
                    "txt_mask",
                    format!("shape {:?}, expected [{b}, {l_txt}]", m.dims()),
                );
            }
        }
        match (&x.guidance, c.guidance_embed) {
            (None, true) => bad(
                "guidance",
                "missing: this model is guidance-distilled (dev); pass a guidance strength per \
                 sample"
                    .into(),
            ),
            (Some(g), true) if g.dims() != [b] => {
                bad("guidance", format!("shape {:?}, expected [{b}]", g.dims()))
            }
            _ => Ok(()),
        }
    }

    /// Embeds the inputs and builds the RoPE tables (everything before the first block).
    pub fn embed(&self, x: &FluxInputs<B>) -> (Embedded<B>, Rope<B>) {
        let img = linear(&self.img_in, x.img.clone());
        let mut vec = self
            .time_in
            .forward(timestep_embedding(x.timesteps.clone(), TIMESTEP_DIM));
        if let (Some(g_in), Some(g)) = (&self.guidance_in, &x.guidance) {
            vec = vec + g_in.forward(timestep_embedding(g.clone(), TIMESTEP_DIM));
        }
        vec = vec + self.vector_in.forward(x.y.clone());
        let txt = linear(&self.txt_in, x.txt.clone());
        (Embedded { img, txt, vec }, self.rope(x))
    }

    /// The RoPE tables of `txt_ids ‖ img_ids`, with the key mask of `x.txt_mask` (image keys
    /// are never hidden).
    pub fn rope(&self, x: &FluxInputs<B>) -> Rope<B> {
        let n_axes = self.config.axes_dim.len();
        let ids = Tensor::cat(
            vec![
                x.txt_ids.clone().narrow(2, 0, n_axes),
                x.img_ids.clone().narrow(2, 0, n_axes),
            ],
            1,
        );
        let rope = Rope::new(ids, &self.config.axes_dim, self.config.theta);
        match &x.txt_mask {
            Some(m) => {
                let [b, l_img, _] = x.img.dims();
                let img_keys = Tensor::ones([b, l_img], &m.device());
                rope.with_key_mask(Tensor::cat(vec![m.clone(), img_keys], 1))
            }
            None => rope,
        }
    }

    /// Runs the double blocks, then the single blocks over `txt ‖ img`; returns the image part.
    pub fn blocks(&self, e: Embedded<B>, rope: &Rope<B>) -> Tensor<B, 3> {
        let Embedded {
            mut img,
            mut txt,
            vec,
        } = e;
        for block in &self.double_blocks {
            (img, txt) = block.forward(img, txt, vec.clone(), rope);
        }
        let l_txt = txt.dims()[1];
        let l_img = img.dims()[1];
        let mut x = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_blocks {
            x = block.forward(x, vec.clone(), rope);
        }
        x.narrow(1, l_txt, l_img)
    }

    /// The full forward pass: predicted velocity `[B, L_img, out_channels]` (the target tokens
    /// only, when Kontext conditioning is appended).
    pub fn forward(&self, x: &FluxInputs<B>) -> Result<Tensor<B, 3>> {
        self.check_inputs(x)?;
        let l_img = x.img.dims()[1];
        let joined = x.joined();
        let (e, rope) = self.embed(&joined);
        let vec = e.vec.clone();
        let img = self.blocks(e, &rope).narrow(1, 0, l_img);
        Ok(self.final_layer.forward(img, vec))
    }
}
