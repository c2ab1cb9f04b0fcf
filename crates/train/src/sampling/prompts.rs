//! Sample-prompt files in kohya sd-scripts' text format (`train_util.load_prompts` /
//! `line_to_prompt_dict`), plus A1111 `<lora:name:weight>` tags.
//!
//! One prompt per line; blank lines and lines starting with `#` are skipped. A line is split on
//! `" --"`: the first piece is the prompt, every other piece is a flag `NAME VALUE` (flag names
//! are case-insensitive, as kohya's `re.IGNORECASE`):
//!
//! | flag | meaning | kohya key |
//! |---|---|---|
//! | `--w N` | width in pixels, rounded down to a multiple of 16, at least 64 | `width` |
//! | `--h N` | height in pixels, rounded down to a multiple of 16, at least 64 | `height` |
//! | `--s N` | sampling steps, clamped to 1..=1000 | `sample_steps` |
//! | `--d N` | seed | `seed` |
//! | `--g X` | embedded (distilled) guidance of Flux dev | `guidance_scale` |
//! | `--l X` | true CFG scale (needs a negative prompt) | `scale` |
//! | `--n TEXT` | negative prompt | `negative_prompt` |
//! | `--ss NAME` | sampler name | `sample_sampler` |
//! | `--ci PATH` | Kontext control image (relative to the prompt file's folder) | ai-toolkit / musubi-tuner `--ci` |
//!
//! Where kohya differs, this parser is stricter: kohya logs and skips a value that does not
//! parse, here that is an error naming the file and line; kohya silently ignores unknown flags
//! (`--f`, `--cn`, a typo such as `--width`), here they are ignored with a warning. Warnings are
//! returned with each prompt ([`SamplePrompt::warnings`]) rather than printed.
//!
//! `<lora:name>` / `<lora:name:weight>` tags anywhere in the prompt are removed from the text
//! and returned in [`SamplePrompt::loras`] (weight 1.0 when omitted).

use std::path::{Component, Path, PathBuf};

use crate::error::TrainError;

/// Values a prompt line does not set itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleDefaults {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Embedded guidance (Flux dev; ignored by schnell).
    pub guidance: f32,
    /// True CFG scale (1.0 = off).
    pub cfg_scale: f32,
}

impl Default for SampleDefaults {
    /// 1024×1024, 20 steps, seed 42, guidance 3.5 (kohya's Flux default), no CFG.
    fn default() -> Self {
        Self {
            width: 1024,
            height: 1024,
            steps: 20,
            seed: 42,
            guidance: 3.5,
            cfg_scale: 1.0,
        }
    }
}

/// One sample to draw during training.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePrompt {
    /// The prompt text, flags and LoRA tags removed.
    pub prompt: String,
    /// Negative prompt (`--n`); empty when none.
    pub negative: String,
    /// Width in pixels (a multiple of 16).
    pub width: u32,
    /// Height in pixels (a multiple of 16).
    pub height: u32,
    /// Sampling steps (1..=1000).
    pub steps: u32,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Embedded guidance.
    pub guidance: f32,
    /// True CFG scale (`--l`).
    pub cfg_scale: f32,
    /// Sampler name (`--ss`), when given.
    pub sampler: Option<String>,
    /// `<lora:name:weight>` tags, in order.
    pub loras: Vec<(String, f32)>,
    /// Kontext control image (`--ci`): resolved against the prompt file's folder when read from
    /// a file.
    pub control: Option<PathBuf>,
    /// 1-based line in the prompt file (1 for a single parsed line).
    pub line: usize,
    /// What was adjusted or ignored, each message naming the line.
    pub warnings: Vec<String>,
}

/// Reads a prompt file (see the module docs). Errors name the file and the line.
pub fn parse_prompt_file(
    path: impl AsRef<Path>,
    defaults: &SampleDefaults,
) -> Result<Vec<SamplePrompt>, TrainError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut prompts = parse_prompt_text(&text, &path.display().to_string(), defaults)?;
    let folder = path.parent().unwrap_or(Path::new("."));
    for p in &mut prompts {
        if let Some(c) = &p.control {
            p.control = Some(resolve_control(c, folder, path, p.line)?);
        }
    }
    Ok(prompts)
}

/// A `--ci` path of a prompt file: absolute as written, relative ones joined to the file's
/// folder and kept inside it (no `..`).
fn resolve_control(
    control: &Path,
    folder: &Path,
    file: &Path,
    line: usize,
) -> Result<PathBuf, TrainError> {
    if control.is_absolute() {
        return Ok(control.to_path_buf());
    }
    if control
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Err(TrainError::Config {
            origin: format!("{} line {line}", file.display()),
            message: format!(
                "`--ci {}` leaves the prompt file's folder; give the control image as an \
                 absolute path or move it next to the prompt file",
                control.display()
            ),
        });
    }
    Ok(folder.join(control))
}

/// Parses prompt-file text; `origin` (e.g. the file name) prefixes error and warning messages.
pub fn parse_prompt_text(
    text: &str,
    origin: &str,
    defaults: &SampleDefaults,
) -> Result<Vec<SamplePrompt>, TrainError> {
    let mut prompts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        prompts.push(parse_line_at(line, defaults, origin, i + 1)?);
    }
    Ok(prompts)
}

/// Parses one prompt line (see the module docs).
pub fn parse_prompt_line(
    line: &str,
    defaults: &SampleDefaults,
) -> Result<SamplePrompt, TrainError> {
    parse_line_at(line.trim(), defaults, "sample prompt", 1)
}

fn parse_line_at(
    line: &str,
    d: &SampleDefaults,
    origin: &str,
    n: usize,
) -> Result<SamplePrompt, TrainError> {
    let at = format!("{origin} line {n}");
    let err = |message: String| TrainError::Config {
        origin: at.clone(),
        message,
    };
    let mut pieces = line.split(" --");
    let head = pieces.next().unwrap_or_default();
    let mut warnings = Vec::new();
    let (prompt, loras) = extract_loras(head, &at, &mut warnings)?;
    let mut p = SamplePrompt {
        prompt,
        negative: String::new(),
        width: d.width,
        height: d.height,
        steps: d.steps,
        seed: d.seed,
        guidance: d.guidance,
        cfg_scale: d.cfg_scale,
        sampler: None,
        loras,
        control: None,
        line: n,
        warnings: Vec::new(),
    };
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.split_once(char::is_whitespace) {
            Some((name, value)) => (name, value.trim()),
            None => (piece, ""),
        };
        let flag = name.to_ascii_lowercase();
        let known = matches!(
            flag.as_str(),
            "w" | "h" | "s" | "d" | "g" | "l" | "n" | "ss" | "ci"
        );
        if !known {
            warnings.push(format!(
                "{at}: unknown flag `--{name}` ignored (known: --w --h --s --d --g --l --n --ss --ci)"
            ));
            continue;
        }
        if value.is_empty() {
            return Err(err(format!(
                "`--{name}` has no value; write e.g. `--{name} {}`",
                example(&flag)
            )));
        }
        let whole = |what: &str| -> Result<u64, TrainError> {
            value.parse::<u64>().map_err(|_| {
                err(format!(
                    "`--{name} {value}`: the {what} must be a whole number ≥ 0; write e.g. \
                     `--{name} {}`",
                    example(&flag)
                ))
            })
        };
        let real = |what: &str| -> Result<f32, TrainError> {
            match value.parse::<f32>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(err(format!(
                    "`--{name} {value}`: the {what} must be a number ≥ 0; write e.g. `--{name} \
                     {}`",
                    example(&flag)
                ))),
            }
        };
        match flag.as_str() {
            "w" => p.width = clamp_u32(whole("width")?),
            "h" => p.height = clamp_u32(whole("height")?),
            "s" => {
                let s = whole("step count")?;
                let clamped = s.clamp(1, 1000);
                if clamped != s {
                    warnings.push(format!(
                        "{at}: --s {s} clamped to {clamped} (allowed 1..=1000)"
                    ));
                }
                p.steps = clamped as u32;
            }
            "d" => p.seed = whole("seed")?,
            "g" => p.guidance = real("guidance")?,
            "l" => p.cfg_scale = real("CFG scale")?,
            "n" => p.negative = value.to_string(),
            "ci" => p.control = Some(PathBuf::from(value)),
            _ => p.sampler = Some(value.to_string()),
        }
    }
    p.width = round_to_16(p.width, "width", &at, &mut warnings);
    p.height = round_to_16(p.height, "height", &at, &mut warnings);
    if p.prompt.is_empty() {
        warnings.push(format!(
            "{at}: the prompt is empty; the sample is unconditional"
        ));
    }
    p.warnings = warnings;
    Ok(p)
}

fn example(flag: &str) -> &'static str {
    match flag {
        "w" | "h" => "1024",
        "s" => "20",
        "d" => "42",
        "g" => "3.5",
        "l" => "1.0",
        "n" => "blurry, low quality",
        "ci" => "control/0001.png",
        _ => "euler",
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// kohya: `max(64, v - v % 16)`. Warns when the value changes.
fn round_to_16(v: u32, what: &str, at: &str, warnings: &mut Vec<String>) -> u32 {
    let r = (v - v % 16).max(64);
    if r != v {
        warnings.push(format!(
            "{at}: {what} {v} changed to {r} (Flux needs a multiple of 16, at least 64)"
        ));
    }
    r
}

/// Removes `<lora:name[:weight[:...]]>` tags from `text`, returning the cleaned text (single
/// spaces, trimmed) and the tags.
fn extract_loras(
    text: &str,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<(String, Vec<(String, f32)>), TrainError> {
    let mut out = String::with_capacity(text.len());
    let mut loras = Vec::new();
    let mut rest = text;
    while let Some(start) = find_ascii_ci(rest, "<lora:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "<lora:".len()..];
        let Some(end) = after.find('>') else {
            return Err(TrainError::Config {
                origin: at.to_string(),
                message: format!(
                    "`{}` has no closing `>`; write LoRA tags as `<lora:name:0.8>`",
                    &rest[start..]
                ),
            });
        };
        let body = &after[..end];
        let mut fields = body.split(':');
        let name = fields.next().unwrap_or_default().trim();
        if name.is_empty() {
            return Err(TrainError::Config {
                origin: at.to_string(),
                message: format!(
                    "`<lora:{body}>` has no name; write LoRA tags as `<lora:name:0.8>`"
                ),
            });
        }
        let weight = match fields.next().map(str::trim) {
            None | Some("") => 1.0,
            Some(w) => match w.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => {
                    return Err(TrainError::Config {
                        origin: at.to_string(),
                        message: format!(
                            "`<lora:{body}>`: weight `{w}` is not a number; write e.g. \
                             `<lora:{name}:0.8>`"
                        ),
                    })
                }
            },
        };
        if fields.next().is_some() {
            warnings.push(format!(
                "{at}: `<lora:{body}>`: fields after the weight are ignored"
            ));
        }
        loras.push((name.to_string(), weight));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out.split_whitespace().collect::<Vec<_>>().join(" "), loras))
}

/// Byte index of `needle` (ASCII) in `hay`, ignoring ASCII case.
fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> SampleDefaults {
        SampleDefaults {
            width: 512,
            height: 768,
            steps: 20,
            seed: 7,
            guidance: 3.5,
            cfg_scale: 1.0,
        }
    }

    #[test]
    fn a_plain_line_takes_every_default() {
        let p = parse_prompt_line("  a photo of a cat  ", &d()).unwrap();
        assert_eq!(p.prompt, "a photo of a cat");
        assert_eq!((p.width, p.height, p.steps, p.seed), (512, 768, 20, 7));
        assert_eq!((p.guidance, p.cfg_scale), (3.5, 1.0));
        assert_eq!((p.negative.as_str(), p.sampler.as_deref()), ("", None));
        assert!(p.loras.is_empty() && p.warnings.is_empty());
    }

    #[test]
    fn every_flag_is_read() {
        let p = parse_prompt_line(
            "a cat on a mat --w 1024 --h 640 --s 28 --d 123456789012 --g 4.5 --l 2.0 --n blurry, \
             ugly --ss euler_a",
            &d(),
        )
        .unwrap();
        assert_eq!(p.prompt, "a cat on a mat");
        assert_eq!(
            (p.width, p.height, p.steps, p.seed),
            (1024, 640, 28, 123_456_789_012)
        );
        assert_eq!((p.guidance, p.cfg_scale), (4.5, 2.0));
        assert_eq!(p.negative, "blurry, ugly");
        assert_eq!(p.sampler.as_deref(), Some("euler_a"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn control_images_resolve_against_the_prompt_file_and_stay_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prompts.txt");
        std::fs::write(
            &file,
            "make it navy --ci control/a.png --w 64\nno control\nabs --ci /data/b.png\n",
        )
        .unwrap();
        let p = parse_prompt_file(&file, &d()).unwrap();
        assert_eq!(p[0].control, Some(dir.path().join("control/a.png")));
        assert_eq!((p[0].prompt.as_str(), p[0].width), ("make it navy", 64));
        assert_eq!(p[1].control, None);
        assert_eq!(p[2].control, Some(PathBuf::from("/data/b.png")));
        std::fs::write(&file, "ok\nescape --ci ../secret.png\n").unwrap();
        let e = parse_prompt_file(&file, &d()).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("../secret.png") && e.contains("absolute path"),
            "{e}"
        );
    }

    #[test]
    fn flag_names_ignore_case_and_order() {
        let p = parse_prompt_line("x --D 5 --W 256 --H 128", &d()).unwrap();
        assert_eq!((p.seed, p.width, p.height), (5, 256, 128));
    }

    #[test]
    fn sizes_round_down_to_16_with_a_warning_and_steps_clamp() {
        let p = parse_prompt_line("x --w 1000 --h 30 --s 0", &d()).unwrap();
        // 1000 - 1000 % 16 = 992; max(64, 30 - 14) = 64; steps max(1, 0) = 1.
        assert_eq!((p.width, p.height, p.steps), (992, 64, 1));
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("1000") && w.contains("992")));
        let p = parse_prompt_line("x --s 5000", &d()).unwrap();
        assert_eq!(p.steps, 1000);
    }

    #[test]
    fn unknown_flags_warn_and_are_ignored() {
        let p = parse_prompt_line("x --f 16 --width 300 --w 320", &d()).unwrap();
        assert_eq!(p.width, 320);
        assert_eq!(p.warnings.len(), 2);
        assert!(p.warnings[0].contains("--f") && p.warnings[1].contains("--width"));
    }

    #[test]
    fn comments_blank_lines_and_line_numbers() {
        let text = "# header\n\na dog --d 1\n   # indented comment\nsecond prompt\n";
        let ps = parse_prompt_text(text, "p.txt", &d()).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            (ps[0].prompt.as_str(), ps[0].line, ps[0].seed),
            ("a dog", 3, 1)
        );
        assert_eq!(
            (ps[1].prompt.as_str(), ps[1].line, ps[1].seed),
            ("second prompt", 5, 7)
        );
    }

    #[test]
    fn bad_numbers_name_the_file_and_line() {
        for (bad, what) in [
            ("x --w wide", "--w wide"),
            ("x --d -3", "--d -3"),
            ("x --g 3.5.5", "--g 3.5.5"),
            ("x --l nan", "--l nan"),
            ("x --s", "--s"),
        ] {
            let text = format!("# c\nfine\n{bad}\n");
            let e = parse_prompt_text(&text, "samples.txt", &d())
                .unwrap_err()
                .to_string();
            assert!(e.contains("samples.txt line 3"), "{e}");
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.txt");
        std::fs::write(&path, "ok --w 512\nbad --h x\n").unwrap();
        let e = parse_prompt_file(&path, &d()).unwrap_err().to_string();
        assert!(e.contains("prompts.txt line 2"), "{e}");
        std::fs::write(&path, "ok --w 512\n").unwrap();
        assert_eq!(parse_prompt_file(&path, &d()).unwrap()[0].width, 512);
        let missing = parse_prompt_file(dir.path().join("nope.txt"), &d())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.txt"), "{missing}");
    }

    #[test]
    fn lora_tags_are_extracted() {
        let p = parse_prompt_line(
            "<lora:style_a:0.8> a castle, <LORA:detail> at dusk <lora:x:-0.5:1.0> --w 512",
            &d(),
        )
        .unwrap();
        assert_eq!(p.prompt, "a castle, at dusk");
        assert_eq!(
            p.loras,
            vec![
                ("style_a".to_string(), 0.8),
                ("detail".to_string(), 1.0),
                ("x".to_string(), -0.5)
            ]
        );
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        for bad in ["a <lora:name:heavy> b", "a <lora::0.5> b", "a <lora:open"] {
            let e = parse_prompt_line(bad, &d()).unwrap_err().to_string();
            assert!(
                e.contains("sample prompt line 1") && e.contains("<lora:"),
                "{e}"
            );
        }
    }
}
