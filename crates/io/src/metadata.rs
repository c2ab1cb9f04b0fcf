//! kohya-style training metadata (`ss_*` and `modelspec.*` keys) as a typed struct.
//!
//! [`TrainingMetadata::to_map`] renders the keys kohya's `train_network.py` and
//! `sai_model_spec.py` write (numbers as Python's `str()` would print them where it matters:
//! floats keep a `.0`, `ss_resolution` is `(W, H)`, `ss_network_args` is JSON).
//! [`TrainingMetadata::from_map`] parses them back leniently: a value that does not parse
//! (kohya writes `"None"` for unset options) and every unknown key is kept verbatim in
//! [`TrainingMetadata::extra`], so `from_map(m).to_map() == m` for any map.

use std::collections::BTreeMap;

/// Which Flux.1 model the LoRA was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxVariant {
    /// FLUX.1 [dev], the guidance-distilled model (`flux-1-dev`).
    Dev,
    /// FLUX.1 [schnell], the few-step timestep-distilled model (`flux-1-schnell`).
    Schnell,
    /// FLUX.1 Kontext [dev], dev's transformer trained on edit pairs (`flux-1-kontext-dev`). There
    /// is no agreed name: musubi-tuner writes dev's (`Flux.1-dev`) for Kontext too. Ours says
    /// which model the LoRA fits; loaders read the tensors, not this key.
    KontextDev,
}

impl FluxVariant {
    /// `modelspec.architecture` value.
    pub fn architecture(self) -> &'static str {
        match self {
            FluxVariant::Dev => "flux-1-dev/lora",
            FluxVariant::Schnell => "flux-1-schnell/lora",
            FluxVariant::KontextDev => "flux-1-kontext-dev/lora",
        }
    }
}

/// Typed kohya training metadata. `None` fields are not written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingMetadata {
    /// `ss_network_module`: the kohya network module, e.g. `networks.lora_flux`.
    pub network_module: Option<String>,
    /// `ss_network_dim`: the LoRA rank.
    pub network_dim: Option<u32>,
    /// `ss_network_alpha`: the LoRA alpha (updates are scaled by `alpha / dim`).
    pub network_alpha: Option<f32>,
    /// `ss_network_args` in file order (kohya: `k=v` pairs from `--network_args`).
    pub network_args: Option<Vec<(String, String)>>,
    /// `ss_base_model_version`: the base model family, e.g. `flux1`.
    pub base_model_version: Option<String>,
    /// `ss_output_name`: the training run's output name.
    pub output_name: Option<String>,
    /// `ss_learning_rate`: the base learning rate.
    pub learning_rate: Option<f64>,
    /// `ss_max_train_steps`: the total number of steps the run was set to train.
    pub max_train_steps: Option<u64>,
    /// `ss_optimizer`: the optimizer's name (kohya: its class path, with arguments).
    pub optimizer: Option<String>,
    /// `ss_seed`: the random seed of the run.
    pub seed: Option<u64>,
    /// `(width, height)`.
    pub resolution: Option<(u32, u32)>,
    /// Unix seconds.
    pub training_started_at: Option<f64>,
    /// Unix seconds.
    pub training_finished_at: Option<f64>,
    /// `ss_steps`: the optimizer steps trained when the file was saved.
    pub steps: Option<u64>,
    /// `ss_epoch`: the epoch the file was saved at.
    pub epoch: Option<u64>,
    /// `ss_guidance_scale`: the guidance value given to a guidance-distilled model in training.
    pub guidance_scale: Option<f32>,
    /// `ss_timestep_sampling`: how training noise levels were drawn, e.g. `shift`, `sigmoid`
    /// or `flux_shift`.
    pub timestep_sampling: Option<String>,
    /// `ss_discrete_flow_shift`: the shift applied to the flow-matching timestep schedule.
    pub discrete_flow_shift: Option<f32>,
    /// `ss_model_prediction_type`: how the transformer's output is turned into what the loss
    /// compares: `raw`, `additive` or `sigma_scaled`.
    pub model_prediction_type: Option<String>,
    /// `modelspec.sai_model_spec`: the SAI model-spec version, e.g. `1.0.0`.
    pub modelspec_sai_model_spec: Option<String>,
    /// `modelspec.architecture`: e.g. `flux-1-dev/lora` (see [`FluxVariant::architecture`]).
    pub modelspec_architecture: Option<String>,
    /// `modelspec.implementation`: the reference implementation, e.g. the BFL repository URL.
    pub modelspec_implementation: Option<String>,
    /// `modelspec.title`: a human-readable title for the model.
    pub modelspec_title: Option<String>,
    /// ISO-8601, e.g. from [`iso8601_utc`].
    pub modelspec_date: Option<String>,
    /// `(width, height)`, written `WxH`.
    pub modelspec_resolution: Option<(u32, u32)>,
    /// `modelspec.description`: free-text description.
    pub modelspec_description: Option<String>,
    /// `modelspec.author`: who made the model.
    pub modelspec_author: Option<String>,
    /// `modelspec.license`: the model's license.
    pub modelspec_license: Option<String>,
    /// Every other key (and any known key whose value did not parse), verbatim.
    pub extra: BTreeMap<String, String>,
}

impl TrainingMetadata {
    /// The keys kohya writes for a Flux LoRA: `ss_network_module = networks.lora_flux`,
    /// `ss_base_model_version = flux1`, `ss_network_dim/alpha`, and `modelspec.sai_model_spec
    /// 1.0.0`, `architecture`, `implementation` (the BFL repository).
    pub fn flux_lora(variant: FluxVariant, network_dim: u32, network_alpha: f32) -> Self {
        TrainingMetadata {
            network_module: Some("networks.lora_flux".into()),
            network_dim: Some(network_dim),
            network_alpha: Some(network_alpha),
            base_model_version: Some("flux1".into()),
            modelspec_sai_model_spec: Some("1.0.0".into()),
            modelspec_architecture: Some(variant.architecture().into()),
            modelspec_implementation: Some("https://github.com/black-forest-labs/flux".into()),
            ..Default::default()
        }
    }

    /// Renders every set field (and `extra`) as metadata strings.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = self.extra.clone();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("ss_network_module", self.network_module.clone());
        put("ss_network_dim", self.network_dim.map(|v| v.to_string()));
        put("ss_network_alpha", self.network_alpha.map(py_f32));
        put(
            "ss_network_args",
            self.network_args.as_deref().map(py_json_dumps),
        );
        put("ss_base_model_version", self.base_model_version.clone());
        put("ss_output_name", self.output_name.clone());
        put("ss_learning_rate", self.learning_rate.map(py_float));
        put(
            "ss_max_train_steps",
            self.max_train_steps.map(|v| v.to_string()),
        );
        put("ss_optimizer", self.optimizer.clone());
        put("ss_seed", self.seed.map(|v| v.to_string()));
        put(
            "ss_resolution",
            self.resolution.map(|(w, h)| format!("({w}, {h})")),
        );
        put(
            "ss_training_started_at",
            self.training_started_at.map(py_float),
        );
        put(
            "ss_training_finished_at",
            self.training_finished_at.map(py_float),
        );
        put("ss_steps", self.steps.map(|v| v.to_string()));
        put("ss_epoch", self.epoch.map(|v| v.to_string()));
        put("ss_guidance_scale", self.guidance_scale.map(py_f32));
        put("ss_timestep_sampling", self.timestep_sampling.clone());
        put(
            "ss_discrete_flow_shift",
            self.discrete_flow_shift.map(py_f32),
        );
        put(
            "ss_model_prediction_type",
            self.model_prediction_type.clone(),
        );
        put(
            "modelspec.sai_model_spec",
            self.modelspec_sai_model_spec.clone(),
        );
        put(
            "modelspec.architecture",
            self.modelspec_architecture.clone(),
        );
        put(
            "modelspec.implementation",
            self.modelspec_implementation.clone(),
        );
        put("modelspec.title", self.modelspec_title.clone());
        put("modelspec.date", self.modelspec_date.clone());
        put(
            "modelspec.resolution",
            self.modelspec_resolution.map(|(w, h)| format!("{w}x{h}")),
        );
        put("modelspec.description", self.modelspec_description.clone());
        put("modelspec.author", self.modelspec_author.clone());
        put("modelspec.license", self.modelspec_license.clone());
        m
    }

    /// Parses metadata leniently (see the module docs); never fails.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let mut t = TrainingMetadata::default();
        for (k, v) in map {
            let ok = match k.as_str() {
                "ss_network_module" => set_str(&mut t.network_module, v),
                "ss_network_dim" => set(&mut t.network_dim, v.parse().ok()),
                "ss_network_alpha" => set(&mut t.network_alpha, v.parse().ok()),
                "ss_network_args" => set(&mut t.network_args, parse_args(v)),
                "ss_base_model_version" => set_str(&mut t.base_model_version, v),
                "ss_output_name" => set_str(&mut t.output_name, v),
                "ss_learning_rate" => set(&mut t.learning_rate, v.parse().ok()),
                "ss_max_train_steps" => set(&mut t.max_train_steps, v.parse().ok()),
                "ss_optimizer" => set_str(&mut t.optimizer, v),
                "ss_seed" => set(&mut t.seed, v.parse().ok()),
                "ss_resolution" => set(&mut t.resolution, parse_pair(v)),
                "ss_training_started_at" => set(&mut t.training_started_at, v.parse().ok()),
                "ss_training_finished_at" => set(&mut t.training_finished_at, v.parse().ok()),
                "ss_steps" => set(&mut t.steps, v.parse().ok()),
                "ss_epoch" => set(&mut t.epoch, v.parse().ok()),
                "ss_guidance_scale" => set(&mut t.guidance_scale, v.parse().ok()),
                "ss_timestep_sampling" => set_str(&mut t.timestep_sampling, v),
                "ss_discrete_flow_shift" => set(&mut t.discrete_flow_shift, v.parse().ok()),
                "ss_model_prediction_type" => set_str(&mut t.model_prediction_type, v),
                "modelspec.sai_model_spec" => set_str(&mut t.modelspec_sai_model_spec, v),
                "modelspec.architecture" => set_str(&mut t.modelspec_architecture, v),
                "modelspec.implementation" => set_str(&mut t.modelspec_implementation, v),
                "modelspec.title" => set_str(&mut t.modelspec_title, v),
                "modelspec.date" => set_str(&mut t.modelspec_date, v),
                "modelspec.resolution" => set(&mut t.modelspec_resolution, parse_pair(v)),
                "modelspec.description" => set_str(&mut t.modelspec_description, v),
                "modelspec.author" => set_str(&mut t.modelspec_author, v),
                "modelspec.license" => set_str(&mut t.modelspec_license, v),
                _ => false,
            };
            if !ok {
                t.extra.insert(k.clone(), v.clone());
            }
        }
        t
    }
}

fn set<T>(slot: &mut Option<T>, v: Option<T>) -> bool {
    let ok = v.is_some();
    *slot = v;
    ok
}

fn set_str(slot: &mut Option<String>, v: &str) -> bool {
    *slot = Some(v.to_string());
    true
}

/// Formats a float like Python's `str()` does for the values kohya writes: integral values
/// keep `.0`; others print the shortest representation that reads back exactly.
fn py_float(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// [`py_float`] for `f32` (shortest text that reads back as the same `f32`).
fn py_f32(x: f32) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e7 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// `(1024, 768)`, `1024x768`, `[1024, 768]` or a single `1024` (square).
fn parse_pair(v: &str) -> Option<(u32, u32)> {
    let s = v
        .trim()
        .trim_start_matches(['(', '['])
        .trim_end_matches([')', ']']);
    let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
    match parts.as_slice() {
        [w, h] => Some((w.parse().ok()?, h.parse().ok()?)),
        [s] => s.parse().ok().map(|s| (s, s)),
        _ => None,
    }
}

fn parse_args(v: &str) -> Option<Vec<(String, String)>> {
    let mut de = serde_json::Deserializer::from_str(v);
    let pairs = serde::Deserializer::deserialize_map(&mut de, OrderedPairs).ok()?;
    de.end().ok()?;
    // Only typed if it re-renders identically; otherwise the raw string is kept in `extra`.
    (py_json_dumps(&pairs) == v).then_some(pairs)
}

/// Collects a JSON object's entries in order, values as strings (non-strings as JSON text).
struct OrderedPairs;

impl<'de> serde::de::Visitor<'de> for OrderedPairs {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            out.push((k, s));
        }
        Ok(out)
    }
}

/// Python's `json.dumps` layout for string pairs (`{"a": "b", "c": "d"}`), as kohya writes
/// `ss_network_args`.
fn py_json_dumps(pairs: &[(String, String)]) -> String {
    let q = |s: &String| serde_json::to_string(s).expect("string serialises");
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {}", q(k), q(v)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (proleptic Gregorian, UTC).
pub fn iso8601_utc(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_round_trip_and_unknown_keys_survive() {
        let mut t = TrainingMetadata::flux_lora(FluxVariant::Dev, 16, 8.0);
        t.learning_rate = Some(1e-4);
        t.resolution = Some((1024, 768));
        t.network_args = Some(vec![("split_qkv".to_string(), "True".to_string())]);
        t.seed = Some(42);
        t.extra
            .insert("ss_tag_frequency".into(), "{\"a\": 1}".into());
        let m = t.to_map();
        assert_eq!(m["ss_network_alpha"], "8.0");
        assert_eq!(m["ss_network_dim"], "16");
        assert_eq!(m["ss_resolution"], "(1024, 768)");
        assert_eq!(m["ss_network_module"], "networks.lora_flux");
        assert_eq!(m["modelspec.architecture"], "flux-1-dev/lora");
        assert_eq!(m["ss_network_args"], "{\"split_qkv\": \"True\"}");
        assert_eq!(TrainingMetadata::from_map(&m), t);
    }

    #[test]
    fn kohya_written_values_parse() {
        let m: BTreeMap<String, String> = [
            ("ss_learning_rate", "0.0001"),
            ("ss_seed", "None"),
            (
                "ss_network_args",
                "{\"train_blocks\": \"single\", \"a\": \"1\"}",
            ),
            ("ss_resolution", "(512, 512)"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let t = TrainingMetadata::from_map(&m);
        assert_eq!(t.learning_rate, Some(1e-4));
        assert_eq!(t.seed, None);
        assert_eq!(t.resolution, Some((512, 512)));
        assert_eq!(
            t.network_args.as_deref(),
            Some(
                &[
                    ("train_blocks".to_string(), "single".to_string()),
                    ("a".to_string(), "1".to_string())
                ][..]
            )
        );
        // Not Python's layout: kept verbatim.
        let odd = TrainingMetadata::from_map(
            &[("ss_network_args".to_string(), "{\"a\":1}".to_string())].into(),
        );
        assert_eq!(odd.network_args, None);
        assert_eq!(odd.extra["ss_network_args"], "{\"a\":1}");
        assert_eq!(t.to_map(), m);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z (leap day), computed independently: 19782 days · 86400 + 45296.
        assert_eq!(iso8601_utc(1_709_210_096), "2024-02-29T12:34:56Z");
    }
}
