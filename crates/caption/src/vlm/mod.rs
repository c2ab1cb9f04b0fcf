//! A captioner client for any OpenAI-compatible `/v1/chat/completions` server with image input
//! (llama.cpp server, Ollama, vLLM, LM Studio — how JoyCaption, Florence-2 or Qwen-VL are
//! usually served).
//!
//! Per image: [`upload::image_data_url`] (shrunk to `max_side`, JPEG, base64) →
//! [`protocol::request_body`] → POST with the optional bearer key → retry with exponential
//! backoff on connection failures, HTTP 429 and 5xx (a `Retry-After` in seconds is honoured up to
//! `max_backoff`); a timeout is not retried (the server is busy: retrying would only stack
//! requests) → [`protocol::caption_from_response`]. Every error names the image.
//!
//! Concurrency is the folder runner's `threads` ([`crate::run::CaptionJob`]): the client is
//! shared by the workers.

pub mod protocol;
pub mod upload;

use std::path::Path;
use std::time::Duration;

use crate::error::{CaptionError, Result};
use crate::run::Captioner;
use protocol::{caption_from_response, excerpt, request_body};
use upload::image_data_url;

/// The default captioning prompt: one natural-language paragraph, as Flux LoRAs are usually
/// trained on.
pub const DEFAULT_PROMPT: &str = "Write one descriptive caption for this image, as a single \
                                  paragraph of plain text: the main subject, its appearance, \
                                  clothing, pose and expression, the setting, lighting, colours, \
                                  camera angle and style. Do not start with \"This image\" and do \
                                  not add commentary.";

/// Client settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VlmConfig {
    /// Server address, e.g. `http://127.0.0.1:8080` (a trailing `/v1` or the full
    /// `/v1/chat/completions` path is accepted too).
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// The `model` field (llama.cpp ignores it; Ollama and vLLM need it).
    pub model: String,
    /// The user message's text, sent with the image (default [`DEFAULT_PROMPT`]).
    pub prompt: String,
    /// A system message sent before the user message, when set.
    pub system_prompt: Option<String>,
    /// The answer's length limit in tokens (`max_tokens`); at least 1.
    pub max_tokens: u32,
    /// Sampling temperature, in [0, 2]; low values give steadier captions.
    pub temperature: f32,
    /// Whole-request timeout (connect, upload, generation, answer).
    pub timeout: Duration,
    /// Extra attempts after the first, for retryable failures.
    pub retries: u32,
    /// Wait before the first retry; doubles each retry, capped at `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest wait between attempts, also capping a server's `Retry-After`.
    pub max_backoff: Duration,
    /// Longer image side sent to the server, in pixels.
    pub max_side: u32,
    /// JPEG quality of the upload (1–100).
    pub jpeg_quality: u8,
}

impl Default for VlmConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".into(),
            api_key: None,
            model: "default".into(),
            prompt: DEFAULT_PROMPT.into(),
            system_prompt: None,
            max_tokens: 300,
            temperature: 0.2,
            timeout: Duration::from_secs(120),
            retries: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_side: 1024,
            jpeg_quality: 90,
        }
    }
}

/// The chat-completions URL for a base URL.
pub fn endpoint(base_url: &str) -> String {
    let base = base_url.trim().trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_string()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// The wait before retry number `retry` (1-based).
pub fn backoff_delay(config: &VlmConfig, retry: u32, retry_after: Option<Duration>) -> Duration {
    let exp = config
        .initial_backoff
        .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20));
    exp.max(retry_after.unwrap_or_default())
        .min(config.max_backoff)
}

/// A connected-on-demand client.
#[derive(Debug)]
pub struct VlmCaptioner {
    config: VlmConfig,
    endpoint: String,
    agent: ureq::Agent,
}

fn is_timeout(t: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// A failure worth another attempt, with the server's `Retry-After`.
struct Retryable {
    error: CaptionError,
    retry_after: Option<Duration>,
}

impl VlmCaptioner {
    /// Checks the settings and builds the HTTP agent.
    pub fn new(config: VlmConfig) -> Result<Self> {
        let bad = |name: &'static str, message: String| {
            Err(CaptionError::InvalidOption { name, message })
        };
        let url = config.base_url.trim();
        if url.starts_with("https://") && !cfg!(feature = "https") {
            return bad(
                "vlm_url",
                format!(
                    "{url}: https needs fluxlora-caption's `https` feature; rebuild with it or use \
                     the server's http address"
                ),
            );
        }
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return bad(
                "vlm_url",
                format!("{url:?} is not an http:// URL; e.g. http://127.0.0.1:8080"),
            );
        }
        if config.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&config.temperature) {
            return bad(
                "temperature",
                format!("{} is outside [0, 2]", config.temperature),
            );
        }
        if config.timeout.is_zero() {
            return bad("timeout", "must be positive".into());
        }
        if config.max_side < 16 {
            return bad(
                "max_side",
                format!(
                    "{} px is too small for a vision model; 768–1024 is typical",
                    config.max_side
                ),
            );
        }
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        Ok(Self {
            endpoint: endpoint(url),
            config,
            agent,
        })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Captions an image already encoded as a data URL (`image` names it in errors).
    pub fn caption_data_url(&self, image: &Path, data_url: &str) -> Result<String> {
        let c = &self.config;
        let body = request_body(
            &c.model,
            c.system_prompt.as_deref(),
            &c.prompt,
            data_url,
            c.max_tokens,
            c.temperature,
        )
        .to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(image, &body, attempt) {
                Ok(caption) => return Ok(caption),
                Err(Ok(retryable)) => retryable,
                Err(Err(fatal)) => return Err(fatal),
            };
            if attempt > c.retries {
                return Err(failure.error);
            }
            std::thread::sleep(backoff_delay(c, attempt, failure.retry_after));
        }
    }

    /// One request: the caption, a retryable failure, or a final error.
    fn attempt(&self, image: &Path, body: &str, attempt: u32) -> Result<String, Result<Retryable>> {
        let url = self.endpoint.clone();
        let timeout = || CaptionError::Timeout {
            image: image.into(),
            url: url.clone(),
            seconds: self.config.timeout.as_secs().max(1),
        };
        let mut request = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        match request.send_string(body) {
            Ok(response) => {
                let text = response.into_string().map_err(|e| {
                    Err(
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                        ) {
                            timeout()
                        } else {
                            let source = Box::new(CaptionError::ResponseUnreadable { source: e });
                            CaptionError::BadResponse {
                                image: image.into(),
                                url: url.clone(),
                                source,
                            }
                        },
                    )
                })?;
                caption_from_response(&text).map_err(|e| {
                    let source = Box::new(e);
                    Err(CaptionError::BadResponse {
                        image: image.into(),
                        url: url.clone(),
                        source,
                    })
                })
            }
            Err(ureq::Error::Status(status, response)) => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = response.into_string().unwrap_or_default();
                let error = CaptionError::HttpStatus {
                    image: image.into(),
                    url: url.clone(),
                    status,
                    attempts: attempt,
                    body: excerpt(&text),
                };
                if status == 429 || status >= 500 {
                    Err(Ok(Retryable { error, retry_after }))
                } else {
                    Err(Err(error))
                }
            }
            Err(ureq::Error::Transport(t)) if is_timeout(&t) => Err(Err(timeout())),
            Err(ureq::Error::Transport(t)) => {
                let error = CaptionError::Unreachable {
                    image: image.into(),
                    url: url.clone(),
                    attempts: attempt,
                    reason: t.to_string(),
                };
                match t.kind() {
                    ureq::ErrorKind::InvalidUrl
                    | ureq::ErrorKind::UnknownScheme
                    | ureq::ErrorKind::InsecureRequestHttpsOnly => Err(Err(error)),
                    _ => Err(Ok(Retryable {
                        error,
                        retry_after: None,
                    })),
                }
            }
        }
    }
}

impl Captioner for VlmCaptioner {
    fn describe(&self) -> String {
        format!("VLM `{}` at {}", self.config.model, self.endpoint)
    }

    fn caption(&self, image: &Path) -> Result<String> {
        let url = image_data_url(image, self.config.max_side, self.config.jpeg_quality)?;
        self.caption_data_url(image, &url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_common_spellings() {
        for base in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
            "http://h:1/v1/chat/completions",
        ] {
            assert_eq!(endpoint(base), "http://h:1/v1/chat/completions", "{base}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = VlmConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..VlmConfig::default()
        };
        let d: Vec<u128> = (1..=4)
            .map(|r| backoff_delay(&c, r, None).as_millis())
            .collect();
        assert_eq!(d, [100, 200, 350, 350]);
        assert_eq!(
            backoff_delay(&c, 1, Some(Duration::from_millis(300))).as_millis(),
            300
        );
        assert_eq!(
            backoff_delay(&c, 1, Some(Duration::from_secs(60))).as_millis(),
            350
        );
        assert!(backoff_delay(&c, 1000, None) <= c.max_backoff);
    }

    #[test]
    fn bad_settings_are_rejected() {
        for c in [
            VlmConfig {
                base_url: "127.0.0.1:8080".into(),
                ..VlmConfig::default()
            },
            VlmConfig {
                max_tokens: 0,
                ..VlmConfig::default()
            },
            VlmConfig {
                temperature: -1.0,
                ..VlmConfig::default()
            },
            VlmConfig {
                timeout: Duration::ZERO,
                ..VlmConfig::default()
            },
            VlmConfig {
                max_side: 4,
                ..VlmConfig::default()
            },
        ] {
            assert!(matches!(
                VlmCaptioner::new(c),
                Err(CaptionError::InvalidOption { .. })
            ));
        }
        assert!(VlmCaptioner::new(VlmConfig::default()).is_ok());
    }
}
