//! The chat-completions client against a scripted HTTP server on 127.0.0.1: request shape,
//! retries (500 then success, 429), non-retryable errors, timeout, unreachable server, and a
//! concurrent folder run.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{closed_port_url, read, write_image, Reply, TestServer};
use fluxlora_caption::{
    caption_folder, CaptionError, CaptionJob, Captioner, FolderScan, Trigger, VlmCaptioner,
    VlmConfig,
};

fn config(base_url: &str) -> VlmConfig {
    VlmConfig {
        base_url: base_url.into(),
        api_key: Some("secret-key".into()),
        model: "joycaption".into(),
        prompt: "Describe the image.".into(),
        max_tokens: 123,
        temperature: 0.3,
        timeout: Duration::from_secs(10),
        retries: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_side: 32,
        jpeg_quality: 85,
        ..VlmConfig::default()
    }
}

fn image(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("photo.png");
    write_image(&path, 64, 40);
    path
}

#[test]
fn request_has_the_openai_shape_and_the_answer_becomes_the_caption() {
    let server = TestServer::start(|_, _| Reply::completion("A small gradient.\nSoft light."));
    let dir = tempfile::tempdir().unwrap();
    let client = VlmCaptioner::new(VlmConfig {
        base_url: format!("{}/", server.base_url),
        ..config("")
    })
    .unwrap();
    assert_eq!(
        client.endpoint(),
        format!("{}/v1/chat/completions", server.base_url)
    );
    let caption = client.caption(&image(dir.path())).unwrap();
    assert_eq!(caption, "A small gradient. Soft light.");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(r.header("authorization"), Some("Bearer secret-key"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = r.json();
    assert_eq!(body["model"], "joycaption");
    assert_eq!(body["max_tokens"], 123);
    assert_eq!(body["stream"], false);
    let content = &body["messages"][0]["content"];
    assert_eq!(body["messages"][0]["role"], "user");
    assert_eq!(content[0]["type"], "text");
    assert_eq!(content[0]["text"], "Describe the image.");
    assert_eq!(content[1]["type"], "image_url");
    let url = content[1]["image_url"]["url"].as_str().unwrap();
    let b64 = url
        .strip_prefix("data:image/jpeg;base64,")
        .expect("a JPEG data URL");
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let sent = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
    assert_eq!(
        (sent.width(), sent.height()),
        (32, 20),
        "longer side shrunk to max_side"
    );
}

#[test]
fn server_error_then_success_is_retried() {
    let server = TestServer::start(|i, _| {
        if i == 0 {
            Reply::status(500)
        } else {
            Reply::completion("ok")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let client = VlmCaptioner::new(config(&server.base_url)).unwrap();
    assert_eq!(client.caption(&image(dir.path())).unwrap(), "ok");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn rate_limit_is_retried_until_the_budget_runs_out() {
    let server = TestServer::start(|_, _| {
        let mut r = Reply::status(429);
        r.headers.push(("Retry-After", "0".into()));
        r
    });
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    let err = VlmCaptioner::new(config(&server.base_url))
        .unwrap()
        .caption(&path)
        .unwrap_err();
    match &err {
        CaptionError::HttpStatus {
            status: 429,
            attempts: 3,
            image,
            ..
        } => assert_eq!(image, &path),
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string().contains("photo.png") && err.to_string().contains("simulated 429"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 3, "1 attempt + 2 retries");
}

#[test]
fn client_errors_are_not_retried() {
    let server = TestServer::start(|_, _| Reply::status(404));
    let dir = tempfile::tempdir().unwrap();
    let err = VlmCaptioner::new(config(&server.base_url))
        .unwrap()
        .caption(&image(dir.path()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CaptionError::HttpStatus {
                status: 404,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn malformed_answer_is_a_bad_response() {
    let server = TestServer::start(|_, _| Reply {
        body: "{\"choices\": []}".into(),
        ..Reply::completion("")
    });
    let dir = tempfile::tempdir().unwrap();
    let err = VlmCaptioner::new(config(&server.base_url))
        .unwrap()
        .caption(&image(dir.path()))
        .unwrap_err();
    assert!(matches!(err, CaptionError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("photo.png"), "{err}");
}

#[test]
fn slow_server_times_out_without_retrying() {
    let server =
        TestServer::start(|_, _| Reply::completion("late").delayed(Duration::from_secs(3)));
    let dir = tempfile::tempdir().unwrap();
    let client = VlmCaptioner::new(VlmConfig {
        timeout: Duration::from_millis(300),
        ..config(&server.base_url)
    })
    .unwrap();
    let start = Instant::now();
    let err = client.caption(&image(dir.path())).unwrap_err();
    assert!(matches!(err, CaptionError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("photo.png"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn unreachable_server_is_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = VlmCaptioner::new(config(&closed_port_url()))
        .unwrap()
        .caption(&image(dir.path()))
        .unwrap_err();
    assert!(
        matches!(err, CaptionError::Unreachable { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("photo.png"), "{err}");
}

#[test]
fn corrupt_image_fails_before_any_request() {
    let server = TestServer::start(|_, _| Reply::completion("never"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, [0xff, 0xd8, 0xff, 0xe0, 0x00]).unwrap();
    let err = VlmCaptioner::new(config(&server.base_url))
        .unwrap()
        .caption(&bad)
        .unwrap_err();
    assert!(
        matches!(err, CaptionError::Image { .. }) && err.to_string().contains("bad.jpg"),
        "{err}"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn folder_run_uses_concurrent_requests() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, p) = (in_flight.clone(), peak.clone());
    let server = TestServer::start(move |i, _| {
        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(150));
        f.fetch_sub(1, Ordering::SeqCst);
        if i == 0 {
            Reply::status(503)
        } else {
            Reply::completion("a gradient")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6 {
        write_image(&dir.path().join(format!("img{i}.png")), 20, 20);
    }
    std::fs::write(dir.path().join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let client = VlmCaptioner::new(config(&server.base_url)).unwrap();
    let mut job = CaptionJob::new(FolderScan::new(dir.path()));
    job.threads = 3;
    job.edits.trigger = Some(Trigger::new("ohwx").unwrap());
    let summary = caption_folder(&job, Some(&client)).unwrap();
    assert_eq!(summary.images, 7);
    assert_eq!(summary.generated, 6, "{summary}");
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].to_string().contains("broken.png"));
    assert_eq!(read(&dir.path().join("img3.txt")), "ohwx, a gradient\n");
    assert!(
        peak.load(Ordering::SeqCst) >= 2,
        "requests never overlapped"
    );
    assert_eq!(server.requests().len(), 7, "6 images + 1 retry of the 503");
}
