//! Caption a dataset folder with the WD tagger or a vision-language server, and/or edit its
//! captions (trigger word, dedupe, sort), with a progress bar and a summary.
//!
//! ```text
//! cargo run --release --example caption -- DATASET --tagger wd-vit-tagger-v3/ --trigger sks
//! cargo run --release --example caption -- DATASET --vlm-url http://127.0.0.1:8080 --model joycaption --threads 4
//! cargo run --release --example caption -- DATASET --trigger sks --dry-run     # show the diff only
//! cargo run --release --example caption -- DATASET --stats
//! ```
//!
//! All logic lives in `fluxlora-caption`; this file only parses arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use burn::backend::NdArray;
use clap::Parser;
use fluxlora_caption::{
    caption_folder, CaptionJob, Captioner, FolderScan, TagEdits, TagStats, TaggerOptions, Trigger, VlmCaptioner, VlmConfig,
    WdTagger,
};

#[derive(Parser, Debug)]
#[command(about = "Caption a LoRA dataset folder (WD tagger or VLM server) and edit its captions")]
struct Args {
    /// Dataset folder (images with same-stem caption files).
    dir: PathBuf,
    /// Caption file extension.
    #[arg(long, default_value = "txt")]
    caption_extension: String,
    /// Also visit sub-folders (kohya `10_name` repeat folders).
    #[arg(long)]
    recursive: bool,

    /// Tagger folder: model.safetensors + selected_tags.csv (+ config.json).
    #[arg(long, conflicts_with = "vlm_url")]
    tagger: Option<PathBuf>,
    #[arg(long, default_value_t = 0.35)]
    general_threshold: f32,
    #[arg(long, default_value_t = 0.85)]
    character_threshold: f32,
    /// Keep booru underscores (`long_hair`) in tagger output.
    #[arg(long)]
    keep_underscores: bool,

    /// OpenAI-compatible server, e.g. http://127.0.0.1:8080 (llama.cpp, Ollama, vLLM).
    #[arg(long, requires = "model")]
    vlm_url: Option<String>,
    /// Model name sent to the server.
    #[arg(long)]
    model: Option<String>,
    /// API key (or set FLUXLORA_VLM_API_KEY).
    #[arg(long, env = "FLUXLORA_VLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long)]
    system_prompt: Option<String>,
    #[arg(long, default_value_t = 300)]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    /// Seconds per request.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Longer image side uploaded, in pixels.
    #[arg(long, default_value_t = 1024)]
    max_side: u32,
    /// Concurrent images (requests in flight for a VLM server).
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Trigger word: replaces `[trigger]` or is prepended when absent.
    #[arg(long)]
    trigger: Option<String>,
    /// Give images without a caption a trigger-only caption (when no captioner runs).
    #[arg(long)]
    create_missing: bool,
    /// Drop repeated tags.
    #[arg(long)]
    dedupe: bool,
    /// Sort tags alphabetically.
    #[arg(long)]
    sort: bool,
    /// Tags kept in place by --sort (after a leading trigger).
    #[arg(long, default_value_t = 0)]
    keep_tokens: usize,
    /// Replace `_` with spaces in existing captions too.
    #[arg(long)]
    underscores_to_spaces: bool,
    /// Let the captioner replace existing captions.
    #[arg(long)]
    overwrite: bool,
    /// Show what would change (a diff) without writing.
    #[arg(long)]
    dry_run: bool,
    /// Print tag frequencies of the folder.
    #[arg(long)]
    stats: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn run(args: Args) -> fluxlora_caption::Result<bool> {
    let scan = FolderScan { root: args.dir.clone(), caption_extension: args.caption_extension.clone(), recursive: args.recursive };
    let edits = TagEdits {
        trigger: args.trigger.as_deref().map(Trigger::new).transpose()?,
        dedupe: args.dedupe,
        sort: args.sort,
        keep_tokens: args.keep_tokens,
        underscores_to_spaces: args.underscores_to_spaces,
    };
    let captioner: Option<Box<dyn Captioner>> = if let Some(dir) = &args.tagger {
        let options = TaggerOptions {
            general_threshold: args.general_threshold,
            character_threshold: args.character_threshold,
            underscores_to_spaces: !args.keep_underscores,
            ..TaggerOptions::default()
        };
        Some(Box::new(WdTagger::<NdArray>::load(dir, options, &Default::default())?))
    } else if let Some(url) = &args.vlm_url {
        let defaults = VlmConfig::default();
        Some(Box::new(VlmCaptioner::new(VlmConfig {
            base_url: url.clone(),
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
    } else {
        None
    };

    if args.stats {
        print!("{}", TagStats::of_folder(&scan)?);
        if captioner.is_none() && edits.is_noop() && !args.create_missing {
            return Ok(true);
        }
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
    let summary = caption_folder(&job, captioner.as_deref())?;
    if args.dry_run {
        println!("{}", summary.diff());
    }
    print!("{summary}");
    Ok(summary.failed.is_empty())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
