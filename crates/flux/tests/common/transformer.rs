//! Runners for the transformer components: `transformer`, `sampler`, `schedule`.

use burn::tensor::{Tensor, TensorData};
use fluxlora_flux::sampler::{denoise, Conditioning};
use fluxlora_flux::schedule::{get_schedule, BASE_SHIFT, MAX_SHIFT};
use fluxlora_flux::transformer::load::FluxKeyFormat;
use fluxlora_flux::{Flux, FluxBackend, FluxCheckpoint, FluxInputs, ImageCondSeq, LoadOptions};

use super::{compare, to_tensor, Case, Io, Outcome};

fn load_model<B: FluxBackend>(case: &Case, dev: &B::Device) -> Result<Flux<B>, String> {
    let ckpt = FluxCheckpoint::open(case.model_path()).map_err(|e| e.to_string())?;
    let want = match case.format.as_str() {
        "bfl" => FluxKeyFormat::Bfl,
        "diffusers" => FluxKeyFormat::Diffusers,
        other => {
            return Err(format!(
                "case.json: format `{other}` needs model weights (bfl or diffusers)"
            ))
        }
    };
    if ckpt.layout().format != want {
        return Err(format!(
            "detected layout {:?}, case.json says {}",
            ckpt.layout(),
            case.format
        ));
    }
    let config = ckpt
        .infer_config(case.axes_dim.clone())
        .map_err(|e| e.to_string())?;
    let options = LoadOptions {
        axes_dim: case.axes_dim.clone(),
        ..Default::default()
    };
    Flux::from_checkpoint(&ckpt, &config, &options, dev).map_err(|e| e.to_string())
}

/// Kontext's optional `img_cond_seq` / `img_cond_seq_ids` inputs (both or neither).
fn cond_seq<B: FluxBackend>(io: &Io, dev: &B::Device) -> Result<Option<ImageCondSeq<B>>, String> {
    match (io.opt("img_cond_seq")?, io.opt("img_cond_seq_ids")?) {
        (None, None) => Ok(None),
        (Some(img), Some(ids)) => Ok(Some(ImageCondSeq {
            img: to_tensor(img, "img_cond_seq", dev)?,
            ids: to_tensor(ids, "img_cond_seq_ids", dev)?,
        })),
        _ => Err("io.safetensors: give both img_cond_seq and img_cond_seq_ids, or neither".into()),
    }
}

/// Runs a `transformer`, `sampler` or `schedule` case.
pub fn run<B: FluxBackend>(case: &Case, dev: &B::Device) -> Result<Outcome, String> {
    let io = Io::open(case)?;
    let expected = io.get("out")?;
    match case.component.as_str() {
        "transformer" => {
            let model = load_model::<B>(case, dev)?;
            let inputs = FluxInputs {
                txt_mask: None,
                img_cond_seq: cond_seq::<B>(&io, dev)?,
                img: io.tensor("img", dev)?,
                img_ids: io.tensor("img_ids", dev)?,
                txt: io.tensor("txt", dev)?,
                txt_ids: io.tensor("txt_ids", dev)?,
                timesteps: io.tensor("timesteps", dev)?,
                y: io.tensor("y", dev)?,
                guidance: io
                    .opt("guidance")?
                    .map(|g| to_tensor(g, "guidance", dev))
                    .transpose()?,
            };
            let out = model.forward(&inputs).map_err(|e| e.to_string())?;
            compare(out, &expected, case.tolerance)
        }
        "sampler" => {
            let model = load_model::<B>(case, dev)?;
            let cond = Conditioning {
                txt_mask: None,
                img_cond_seq: cond_seq::<B>(&io, dev)?,
                txt: io.tensor("txt", dev)?,
                txt_ids: io.tensor("txt_ids", dev)?,
                img_ids: io.tensor("img_ids", dev)?,
                y: io.tensor("y", dev)?,
                guidance: io.opt("guidance")?.map(|g| g.data[0]),
            };
            let ts: Vec<f64> = io
                .get("timesteps")?
                .data
                .iter()
                .map(|&t| t as f64)
                .collect();
            let out =
                denoise(&model, io.tensor("noise", dev)?, &cond, &ts).map_err(|e| e.to_string())?;
            compare(out, &expected, case.tolerance)
        }
        "schedule" => {
            let scalar = |n: &str| -> Result<f64, String> { Ok(io.get(n)?.data[0] as f64) };
            let s = get_schedule(
                scalar("num_steps")? as usize,
                scalar("image_seq_len")? as usize,
                BASE_SHIFT,
                MAX_SHIFT,
                scalar("shift")? != 0.0,
            );
            let ours: Vec<f32> = s.iter().map(|&v| v as f32).collect();
            let n = ours.len();
            compare(
                Tensor::<B, 1>::from_data(TensorData::new(ours, [n]), dev),
                &expected,
                case.tolerance,
            )
        }
        other => Err(format!("unknown component `{other}`")),
    }
}
