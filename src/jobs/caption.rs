//! The `caption` job: caption a dataset folder with the WD tagger or an OpenAI-compatible
//! vision-language server, and/or edit its captions (trigger word, dedupe, sort).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fluxlora_caption::{
    caption_folder, CaptionJob, Captioner, FolderScan, RunSummary, TagEdits, TagStats, Trigger,
    VlmCaptioner, VlmConfig,
};

use crate::error::Error;

/// Arguments of the `caption` job (the `caption` example's command line).
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "Caption a LoRA dataset folder (WD tagger or VLM server) and edit its captions")]
pub struct CaptionArgs {
    /// Dataset folder (images with same-stem caption files).
    pub dir: PathBuf,
    /// Caption file extension.
    #[arg(long, default_value = "txt")]
    pub caption_extension: String,
    /// Also visit sub-folders (kohya `10_name` repeat folders).
    #[arg(long)]
    pub recursive: bool,
    /// Tagger folder: model.safetensors + selected_tags.csv (+ config.json).
    #[arg(long, conflicts_with = "vlm_url")]
    pub tagger: Option<PathBuf>,
    /// Tagger threshold for general tags.
    #[arg(long, default_value_t = 0.35)]
    pub general_threshold: f32,
    /// Tagger threshold for character tags.
    #[arg(long, default_value_t = 0.85)]
    pub character_threshold: f32,
    /// Keep booru underscores (`long_hair`) in tagger output.
    #[arg(long)]
    pub keep_underscores: bool,
    /// OpenAI-compatible server, e.g. http://127.0.0.1:8080 (llama.cpp, Ollama, vLLM).
    #[arg(long, requires = "model")]
    pub vlm_url: Option<String>,
    /// Model name sent to the server.
    #[arg(long)]
    pub model: Option<String>,
    /// API key (or set FLUXLORA_VLM_API_KEY).
    #[arg(long, env = "FLUXLORA_VLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The user prompt sent with each image.
    #[arg(long)]
    pub prompt: Option<String>,
    /// The system prompt.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Tokens per caption.
    #[arg(long, default_value_t = 300)]
    pub max_tokens: u32,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f32,
    /// Seconds per request.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Attempts after a failed request.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Longer image side uploaded, in pixels.
    #[arg(long, default_value_t = 1024)]
    pub max_side: u32,
    /// Concurrent images (requests in flight for a VLM server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Trigger word: replaces `[trigger]` or is prepended when absent.
    #[arg(long)]
    pub trigger: Option<String>,
    /// Give images without a caption a trigger-only caption (when no captioner runs).
    #[arg(long)]
    pub create_missing: bool,
    /// Drop repeated tags.
    #[arg(long)]
    pub dedupe: bool,
    /// Sort tags alphabetically.
    #[arg(long)]
    pub sort: bool,
    /// Tags kept in place by --sort (after a leading trigger).
    #[arg(long, default_value_t = 0)]
    pub keep_tokens: usize,
    /// Replace `_` with spaces in existing captions too.
    #[arg(long)]
    pub underscores_to_spaces: bool,
    /// Let the captioner replace existing captions.
    #[arg(long)]
    pub overwrite: bool,
    /// Show what would change (a diff) without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print tag frequencies of the folder.
    #[arg(long)]
    pub stats: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What a `caption` job did.
#[derive(Debug)]
pub struct CaptionOutcome {
    /// Tag frequencies (with `--stats`).
    pub stats: Option<String>,
    /// The run's summary (none when only `--stats` was asked).
    pub summary: Option<RunSummary>,
    /// Whether to print the diff (`--dry-run`).
    pub dry_run: bool,
}

impl CaptionOutcome {
    /// Whether every image was captioned (the example exits with 1 otherwise).
    pub fn ok(&self) -> bool {
        self.summary.as_ref().is_none_or(|s| s.failed.is_empty())
    }
}

/// The WD tagger on the CPU backend.
#[cfg(feature = "ndarray")]
fn tagger(args: &CaptionArgs, dir: &std::path::Path) -> Result<Box<dyn Captioner>, Error> {
    let options = fluxlora_caption::TaggerOptions {
        general_threshold: args.general_threshold,
        character_threshold: args.character_threshold,
        underscores_to_spaces: !args.keep_underscores,
        ..Default::default()
    };
    let device = Default::default();
    Ok(Box::new(fluxlora_caption::WdTagger::<
        burn::backend::NdArray,
    >::load(dir, options, &device)?))
}

/// Without the CPU backend there is no tagger.
#[cfg(not(feature = "ndarray"))]
fn tagger(_: &CaptionArgs, _: &std::path::Path) -> Result<Box<dyn Captioner>, Error> {
    Err(Error::Usage(
        "the WD tagger runs on the CPU backend; build with `--features ndarray`".into(),
    ))
}

fn vlm(args: &CaptionArgs, url: &str) -> Result<Box<dyn Captioner>, Error> {
    let defaults = VlmConfig::default();
    Ok(Box::new(VlmCaptioner::new(VlmConfig {
        base_url: url.to_string(),
        api_key: args.api_key.clone(),
        model: args.model.clone().unwrap_or(defaults.model.clone()),
        prompt: args.prompt.clone().unwrap_or(defaults.prompt.clone()),
        system_prompt: args.system_prompt.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        timeout: Duration::from_secs(args.timeout),
        retries: args.retries,
        max_side: args.max_side,
        ..defaults
    })?))
}

/// Runs the `caption` job.
pub fn caption(args: &CaptionArgs) -> Result<CaptionOutcome, Error> {
    let scan = FolderScan {
        root: args.dir.clone(),
        caption_extension: args.caption_extension.clone(),
        recursive: args.recursive,
    };
    let edits = TagEdits {
        trigger: args.trigger.as_deref().map(Trigger::new).transpose()?,
        dedupe: args.dedupe,
        sort: args.sort,
        keep_tokens: args.keep_tokens,
        underscores_to_spaces: args.underscores_to_spaces,
    };
    let captioner = match (&args.tagger, &args.vlm_url) {
        (Some(dir), _) => Some(tagger(args, dir)?),
        (None, Some(url)) => Some(vlm(args, url)?),
        (None, None) => None,
    };
    let stats = if args.stats {
        Some(TagStats::of_folder(&scan)?.to_string())
    } else {
        None
    };
    let mut outcome = CaptionOutcome {
        stats,
        summary: None,
        dry_run: args.dry_run,
    };
    if outcome.stats.is_some() && captioner.is_none() && edits.is_noop() && !args.create_missing {
        return Ok(outcome);
    }
    let job = CaptionJob {
        scan,
        edits,
        overwrite: args.overwrite,
        dry_run: args.dry_run,
        create_missing: args.create_missing,
        threads: args.threads,
        progress: !args.quiet,
    };
    outcome.summary = Some(caption_folder(&job, captioner.as_deref())?);
    Ok(outcome)
}

impl fmt::Display for CaptionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(stats) = &self.stats {
            write!(f, "{stats}")?;
        }
        if let Some(summary) = &self.summary {
            if self.dry_run {
                writeln!(f, "{}", summary.diff())?;
            }
            write!(f, "{summary}")?;
        }
        Ok(())
    }
}
