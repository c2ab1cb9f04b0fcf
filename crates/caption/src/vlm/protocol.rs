//! The OpenAI chat-completions wire format, as far as captioning needs it: the request body with
//! one user message holding the prompt and the image, and the caption out of the answer.

use serde_json::{json, Value};

use crate::error::{CaptionError, Result};

/// The request body: `model`, `messages` (optional system message, then a user message with a
/// text part and an `image_url` part), `max_tokens`, `temperature`, `stream: false`.
pub fn request_body(
    model: &str,
    system_prompt: Option<&str>,
    prompt: &str,
    image_data_url: &str,
    max_tokens: u32,
    temperature: f32,
) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = system_prompt {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({
        "role": "user",
        "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_data_url}},
        ],
    }));
    json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": false,
    })
}

/// The caption in a chat-completion answer (`choices[0].message.content`, a string or a list of
/// text parts), as one line: whitespace (line breaks included — a multi-line caption file means
/// alternatives) collapsed to single spaces, surrounding quotes removed.
pub fn caption_from_response(body: &str) -> Result<String> {
    let v: Value = serde_json::from_str(body).map_err(|source| CaptionError::ResponseNotJson {
        source,
        excerpt: excerpt(body),
    })?;
    if let Some(err) = v.get("error") {
        return Err(CaptionError::ResponseServerError {
            error: excerpt(&err.to_string()),
        });
    }
    let content =
        v.pointer("/choices/0/message/content")
            .ok_or_else(|| CaptionError::ResponseNoContent {
                excerpt: excerpt(body),
            })?;
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => {
            return Err(CaptionError::ResponseContentNotText {
                content: other.to_string(),
            })
        }
    };
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let trimmed = one_line
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(str::trim)
        .unwrap_or(&one_line);
    Ok(trimmed.to_string())
}

/// The first 200 characters of a text, for error messages.
pub fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_openai_shape() {
        let b = request_body(
            "m",
            Some("sys"),
            "describe",
            "data:image/jpeg;base64,AAAA",
            77,
            0.2,
        );
        assert_eq!(b["model"], "m");
        assert_eq!(b["max_tokens"], 77);
        assert_eq!(b["stream"], false);
        assert_eq!(b["messages"][0]["role"], "system");
        let user = &b["messages"][1];
        assert_eq!(user["role"], "user");
        assert_eq!(user["content"][0]["text"], "describe");
        assert_eq!(
            user["content"][1]["image_url"]["url"],
            "data:image/jpeg;base64,AAAA"
        );
        assert!((b["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
        assert_eq!(
            request_body("m", None, "p", "u", 1, 0.0)["messages"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn parses_string_and_part_contents() {
        let s = concat!(
            r#"{"choices":[{"message":{"role":"assistant","#,
            r#""content":"  \"A red car\nparked outside.\"  "}}]}"#
        );
        assert_eq!(
            caption_from_response(s).unwrap(),
            "A red car parked outside."
        );
        let parts = concat!(
            r#"{"choices":[{"message":{"content":["#,
            r#"{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#
        );
        assert_eq!(caption_from_response(parts).unwrap(), "a b");
    }

    #[test]
    fn malformed_answers_are_explained() {
        let err = |body: &str| caption_from_response(body).unwrap_err().to_string();
        assert!(err("<html>").contains("not JSON"));
        assert!(err(r#"{"choices":[]}"#).contains("choices[0]"));
        assert!(err(r#"{"error":{"message":"no such model"}}"#).contains("no such model"));
        assert!(err(r#"{"choices":[{"message":{"content":5}}]}"#).contains("not text"));
        assert_eq!(excerpt(&"x".repeat(300)).chars().count(), 201);
    }
}
