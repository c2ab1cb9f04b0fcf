//! Parsing the kohya-style dataset TOML: key schema, ascending lookups, "did you mean".

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{
    validate_buckets, validate_image_limits, validate_subset, BucketSettings, Ctx, DatasetConfig,
    DatasetSettings, SubsetSettings,
};
use crate::caption::CaptionSettings;
use crate::decode::ImageLimits;
use crate::error::{DataError, Result};

/// Where a key may be written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Subset keys that ascend to the dataset and `[general]`.
    Subset,
    /// Only on a subset.
    SubsetOnly,
    /// Dataset keys that ascend to `[general]`.
    Dataset,
    /// Only in `[general]`.
    General,
}

const KEYS: &[(&str, Level)] = &[
    ("num_repeats", Level::Subset),
    ("shuffle_caption", Level::Subset),
    ("keep_tokens", Level::Subset),
    ("keep_tokens_separator", Level::Subset),
    ("secondary_separator", Level::Subset),
    ("caption_separator", Level::Subset),
    ("caption_prefix", Level::Subset),
    ("caption_suffix", Level::Subset),
    ("caption_dropout_rate", Level::Subset),
    ("caption_dropout_every_n_epochs", Level::Subset),
    ("caption_tag_dropout_rate", Level::Subset),
    ("caption_extension", Level::Subset),
    ("class_tokens", Level::Subset),
    ("flip_aug", Level::Subset),
    ("random_crop", Level::Subset),
    ("alpha_mask", Level::Subset),
    ("trigger_word", Level::Subset),
    ("image_dir", Level::SubsetOnly),
    ("control_directory", Level::SubsetOnly),
    ("control_path", Level::SubsetOnly),
    ("is_reg", Level::SubsetOnly),
    ("resolution", Level::Dataset),
    ("resolutions", Level::Dataset),
    ("batch_size", Level::Dataset),
    ("enable_bucket", Level::Dataset),
    ("min_bucket_reso", Level::Dataset),
    ("max_bucket_reso", Level::Dataset),
    ("bucket_reso_steps", Level::Dataset),
    ("bucket_no_upscale", Level::Dataset),
    ("skip_bad_images", Level::General),
    ("max_image_pixels", Level::General),
    ("max_image_side", Level::General),
    ("max_image_bytes", Level::General),
];

/// kohya keys that exist there but that fluxlora does not implement.
const UNSUPPORTED_KOHYA: &[&str] = &[
    "color_aug",
    "face_crop_aug_range",
    "enable_wildcard",
    "token_warmup_min",
    "token_warmup_step",
    "cache_info",
    "network_multiplier",
    "metadata_file",
    "conditioning_data_dir",
];

/// Rejects keys not allowed in `table` (a level), with a "did you mean".
fn check_keys(
    ctx: &Ctx,
    table_name: &str,
    table: &Table,
    allowed: &[Level],
    extra: &[&str],
) -> Result<()> {
    for key in table.keys() {
        if extra.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, level)) = KEYS.iter().find(|(k, _)| k == key) {
            if allowed.contains(level) {
                continue;
            }
            let place = match level {
                Level::Subset | Level::SubsetOnly => "[[datasets.subsets]]",
                Level::Dataset => "[[datasets]] or [general]",
                Level::General => "[general]",
            };
            return Err(ctx.bad(
                table_name,
                key,
                format!("this key belongs in {place}; move it there"),
            ));
        }
        if UNSUPPORTED_KOHYA.contains(&key.as_str()) {
            return Err(ctx.bad(
                table_name,
                key,
                "this kohya option is not supported by fluxlora; remove it",
            ));
        }
        let candidates = KEYS
            .iter()
            .filter(|(_, l)| allowed.contains(l))
            .map(|(k, _)| *k)
            .chain(extra.iter().copied());
        return Err(DataError::UnknownKey {
            file: ctx.file.to_path_buf(),
            table: table_name.into(),
            key: key.clone(),
            hint: did_you_mean(key, candidates),
        });
    }
    Ok(())
}

/// ` (did you mean `x`?)` for the closest candidate, or an empty string.
pub(crate) fn did_you_mean<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .map(|c| (strsim::jaro_winkler(key, c), c))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, c)) if score >= 0.8 => format!(" (did you mean `{c}`?)"),
        _ => String::new(),
    }
}

/// Looks a key up in the nearest table that has it.
struct Scope<'a> {
    tables: Vec<(&'a str, &'a Table)>,
}

impl<'a> Scope<'a> {
    fn find(&self, key: &str) -> Option<(&'a str, &'a Value)> {
        self.tables
            .iter()
            .find_map(|(name, t)| t.get(key).map(|v| (*name, v)))
    }

    fn bool(&self, ctx: &Ctx, key: &str, default: bool) -> Result<bool> {
        match self.find(key) {
            None => Ok(default),
            Some((t, v)) => v.as_bool().ok_or_else(|| {
                ctx.bad(
                    t,
                    key,
                    format!("expected true or false, found {}", v.type_str()),
                )
            }),
        }
    }

    fn uint(&self, ctx: &Ctx, key: &str, default: u64) -> Result<u64> {
        match self.find(key) {
            None => Ok(default),
            Some((t, v)) => as_uint(ctx, t, key, v),
        }
    }

    fn rate(&self, ctx: &Ctx, key: &str) -> Result<f64> {
        match self.find(key) {
            None => Ok(0.0),
            Some((t, v)) => {
                let x = v
                    .as_float()
                    .or_else(|| v.as_integer().map(|i| i as f64))
                    .ok_or_else(|| {
                        ctx.bad(
                            t,
                            key,
                            format!("expected a number in [0, 1], found {}", v.type_str()),
                        )
                    })?;
                if !(0.0..=1.0).contains(&x) {
                    return Err(ctx.bad(t, key, format!("{x} is outside [0, 1]")));
                }
                Ok(x)
            }
        }
    }

    fn string(&self, ctx: &Ctx, key: &str) -> Result<Option<String>> {
        match self.find(key) {
            None => Ok(None),
            Some((t, v)) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                ctx.bad(t, key, format!("expected a string, found {}", v.type_str()))
            }),
        }
    }
}

fn as_uint(ctx: &Ctx, table: &str, key: &str, v: &Value) -> Result<u64> {
    match v.as_integer() {
        Some(i) if i >= 0 => Ok(i as u64),
        Some(i) => Err(ctx.bad(table, key, format!("{i} is negative"))),
        None => Err(ctx.bad(
            table,
            key,
            format!("expected a whole number, found {}", v.type_str()),
        )),
    }
}

impl DatasetConfig {
    /// Reads and validates a kohya-style dataset TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DataError::io(path, "reading the dataset config", e))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses dataset TOML text; `file` names it in errors and anchors relative `image_dir`s.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Self> {
        let ctx = Ctx { file };
        let root: Table = toml::from_str(text).map_err(|e| DataError::TomlSyntax {
            file: file.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })?;
        for key in root.keys() {
            if key != "general" && key != "datasets" {
                return Err(DataError::UnknownKey {
                    file: file.to_path_buf(),
                    table: "top level".into(),
                    key: key.clone(),
                    hint: did_you_mean(key, ["general", "datasets"].into_iter()),
                });
            }
        }
        let empty = Table::new();
        let general = match root.get("general") {
            None => &empty,
            Some(v) => v.as_table().ok_or_else(|| {
                ctx.bad("top level", "general", "expected a table: write [general]")
            })?,
        };
        check_keys(
            &ctx,
            "general",
            general,
            &[Level::Subset, Level::Dataset, Level::General],
            &[],
        )?;
        let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let datasets_v = root.get("datasets").ok_or_else(|| {
            ctx.bad(
                "top level",
                "datasets",
                "no [[datasets]] table; add at least one with a [[datasets.subsets]] image_dir",
            )
        })?;
        let datasets_arr = datasets_v.as_array().ok_or_else(|| {
            ctx.bad(
                "top level",
                "datasets",
                "expected an array of tables: write [[datasets]]",
            )
        })?;

        let mut datasets = Vec::new();
        for (di, dv) in datasets_arr.iter().enumerate() {
            let dname = format!("datasets.{di}");
            let dt = dv
                .as_table()
                .ok_or_else(|| ctx.bad(&dname, "datasets", "expected a table"))?;
            check_keys(
                &ctx,
                &dname,
                dt,
                &[Level::Subset, Level::Dataset],
                &["subsets"],
            )?;
            let dscope = Scope {
                tables: vec![(dname.as_str(), dt), ("general", general)],
            };
            let resolutions = resolutions(&ctx, &dscope)?;
            let mut subsets = Vec::new();
            let subs = match dt.get("subsets") {
                None => {
                    return Err(ctx.bad(
                        &dname,
                        "subsets",
                        "no [[datasets.subsets]]; add one with an image_dir",
                    ))
                }
                Some(v) => v.as_array().ok_or_else(|| {
                    ctx.bad(&dname, "subsets", "expected [[datasets.subsets]] tables")
                })?,
            };
            for (si, sv) in subs.iter().enumerate() {
                let sname = format!("datasets.{di}.subsets.{si}");
                let st = sv
                    .as_table()
                    .ok_or_else(|| ctx.bad(&sname, "subsets", "expected a table"))?;
                check_keys(&ctx, &sname, st, &[Level::Subset, Level::SubsetOnly], &[])?;
                let scope = Scope {
                    tables: vec![
                        (sname.as_str(), st),
                        (dname.as_str(), dt),
                        ("general", general),
                    ],
                };
                subsets.push(subset(&ctx, &sname, st, &scope, &base)?);
            }
            for resolution in resolutions {
                let buckets = BucketSettings {
                    resolution,
                    enable_bucket: dscope.bool(&ctx, "enable_bucket", true)?,
                    min_bucket_reso: dscope.uint(&ctx, "min_bucket_reso", 256)? as u32,
                    max_bucket_reso: dscope.uint(&ctx, "max_bucket_reso", 2048)? as u32,
                    bucket_reso_steps: dscope.uint(&ctx, "bucket_reso_steps", 64)? as u32,
                    bucket_no_upscale: dscope.bool(&ctx, "bucket_no_upscale", false)?,
                };
                validate_buckets(&buckets).map_err(|(key, msg)| ctx.bad(&dname, key, msg))?;
                let batch_size = dscope.uint(&ctx, "batch_size", 1)? as usize;
                if batch_size == 0 {
                    return Err(ctx.bad(&dname, "batch_size", "must be at least 1"));
                }
                datasets.push(DatasetSettings {
                    batch_size,
                    buckets,
                    subsets: subsets.clone(),
                });
            }
        }
        if datasets.is_empty() {
            return Err(ctx.bad("top level", "datasets", "no [[datasets]] table; add one"));
        }
        let gscope = Scope {
            tables: vec![("general", general)],
        };
        Ok(DatasetConfig {
            source: file.to_path_buf(),
            skip_bad_images: gscope.bool(&ctx, "skip_bad_images", false)?,
            image_limits: image_limits(&ctx, &gscope)?,
            datasets,
        })
    }
}

/// `max_image_pixels`, `max_image_side`, `max_image_bytes` of `[general]`, defaults otherwise.
fn image_limits(ctx: &Ctx, g: &Scope) -> Result<ImageLimits> {
    let d = ImageLimits::default();
    let side = g.uint(ctx, "max_image_side", d.max_side.into())?;
    let limits = ImageLimits {
        max_pixels: g.uint(ctx, "max_image_pixels", d.max_pixels)?,
        max_side: u32::try_from(side).map_err(|_| {
            ctx.bad(
                "general",
                "max_image_side",
                format!("{side} is over {}", u32::MAX),
            )
        })?,
        max_decoded_bytes: g.uint(ctx, "max_image_bytes", d.max_decoded_bytes)?,
    };
    validate_image_limits(&limits).map_err(|(key, msg)| ctx.bad("general", key, msg))?;
    Ok(limits)
}

fn resolutions(ctx: &Ctx, scope: &Scope) -> Result<Vec<(u32, u32)>> {
    let single = scope.find("resolution");
    let multi = scope.find("resolutions");
    if let (Some((t, _)), Some(_)) = (single, multi) {
        return Err(ctx.bad(
            t,
            "resolution",
            "both `resolution` and `resolutions` are set; keep one",
        ));
    }
    if let Some((t, v)) = multi {
        let arr = v
            .as_array()
            .ok_or_else(|| ctx.bad(t, "resolutions", "expected a list such as [512, 1024]"))?;
        if arr.is_empty() {
            return Err(ctx.bad(t, "resolutions", "empty list; give at least one resolution"));
        }
        return arr
            .iter()
            .map(|x| as_uint(ctx, t, "resolutions", x).map(|r| (r as u32, r as u32)))
            .collect();
    }
    match single {
        None => Ok(vec![(1024, 1024)]),
        Some((t, v)) => {
            if let Some(arr) = v.as_array() {
                if arr.len() != 2 {
                    return Err(ctx.bad(t, "resolution", "expected a number or [width, height]"));
                }
                let w = as_uint(ctx, t, "resolution", &arr[0])? as u32;
                let h = as_uint(ctx, t, "resolution", &arr[1])? as u32;
                Ok(vec![(w, h)])
            } else {
                let r = as_uint(ctx, t, "resolution", v)? as u32;
                Ok(vec![(r, r)])
            }
        }
    }
}

/// A path-valued subset key; relative paths are anchored at the config file's folder.
fn subset_path(
    ctx: &Ctx,
    name: &str,
    st: &Table,
    key: &str,
    base: &Path,
) -> Result<Option<PathBuf>> {
    let Some(v) = st.get(key) else {
        return Ok(None);
    };
    let dir = PathBuf::from(
        v.as_str()
            .ok_or_else(|| ctx.bad(name, key, "expected a string path"))?,
    );
    Ok(Some(if dir.is_absolute() {
        dir
    } else {
        base.join(dir)
    }))
}

fn subset(ctx: &Ctx, name: &str, st: &Table, scope: &Scope, base: &Path) -> Result<SubsetSettings> {
    let image_dir = subset_path(ctx, name, st, "image_dir", base)?.ok_or_else(|| {
        ctx.bad(
            name,
            "image_dir",
            "missing; every subset needs the folder of its images",
        )
    })?;
    // musubi-tuner's name, and ai-toolkit's.
    let control_dir = match (
        subset_path(ctx, name, st, "control_directory", base)?,
        subset_path(ctx, name, st, "control_path", base)?,
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(ctx.bad(
                name,
                "control_path",
                "differs from control_directory (the same setting); keep one of them",
            ))
        }
        (a, b) => a.or(b),
    };
    let is_reg = match st.get("is_reg") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ctx.bad(name, "is_reg", "expected true or false"))?,
    };
    let caption = CaptionSettings {
        trigger_word: scope
            .string(ctx, "trigger_word")?
            .filter(|t| !t.trim().is_empty()),
        shuffle_caption: scope.bool(ctx, "shuffle_caption", false)?,
        keep_tokens: scope.uint(ctx, "keep_tokens", 0)? as usize,
        keep_tokens_separator: scope
            .string(ctx, "keep_tokens_separator")?
            .filter(|s| !s.is_empty()),
        secondary_separator: scope
            .string(ctx, "secondary_separator")?
            .filter(|s| !s.is_empty()),
        caption_separator: scope
            .string(ctx, "caption_separator")?
            .unwrap_or_else(|| ",".into()),
        caption_prefix: scope
            .string(ctx, "caption_prefix")?
            .filter(|s| !s.is_empty()),
        caption_suffix: scope
            .string(ctx, "caption_suffix")?
            .filter(|s| !s.is_empty()),
        caption_dropout_rate: scope.rate(ctx, "caption_dropout_rate")?,
        caption_dropout_every_n_epochs: scope.uint(ctx, "caption_dropout_every_n_epochs", 0)?
            as u32,
        caption_tag_dropout_rate: scope.rate(ctx, "caption_tag_dropout_rate")?,
    };
    let s = SubsetSettings {
        image_dir,
        num_repeats: scope.uint(ctx, "num_repeats", 1)? as u32,
        is_reg,
        caption_extension: scope
            .string(ctx, "caption_extension")?
            .unwrap_or_else(|| ".txt".into()),
        class_tokens: scope
            .string(ctx, "class_tokens")?
            .filter(|s| !s.trim().is_empty()),
        flip_aug: scope.bool(ctx, "flip_aug", false)?,
        random_crop: scope.bool(ctx, "random_crop", false)?,
        alpha_mask: scope.bool(ctx, "alpha_mask", false)?,
        control_dir,
        caption,
    };
    validate_subset(ctx, name, &s)?;
    Ok(s)
}

#[cfg(test)]
mod tests;
