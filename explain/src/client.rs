//! One schema-constrained chat-completions call to an OpenAI-compatible endpoint, with timeouts and retries.
#![expect(
    clippy::disallowed_methods,
    reason = "model calls are timed in wall time"
)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::ModelConfig;

/// A finished call.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub content: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// How a call went, whatever the result: what the call log stores.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub result: Result<Completion, String>,
    pub attempts: u32,
    pub latency: Duration,
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Msg {
    pub role: &'static str,
    pub content: String,
}

/// The request body; also what the tests inspect for leaks.
pub fn body(cfg: &ModelConfig, messages: &[Msg], schema_name: &str, schema: &Value) -> Value {
    json!({
        "model": cfg.model,
        "messages": messages,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "max_tokens": cfg.max_output_tokens,
        "stream": false,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "strict": true, "schema": schema}
        }
    })
}

/// Keys that go first, in this order, wherever they appear. A grammar-constrained decoder
/// writes properties in the order the schema lists them (JSON objects here are otherwise
/// sorted): the summary comes straight after the facts, and a hypothesis commits to its
/// cause and evidence before its prose.
const KEY_ORDER: &[&str] = &[
    "summary",
    "inconclusive",
    "hypotheses",
    "impact",
    "cause",
    "evidence_ids",
    "confidence_percent",
    "text",
    "went_well",
    "next_checks",
    "actions",
    "runbook_refs",
];

/// `v` as JSON text with object keys in [`KEY_ORDER`] first, the rest after, sorted.
pub fn ordered_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                let rank = |k: &str| KEY_ORDER.iter().position(|o| *o == k).unwrap_or(usize::MAX);
                keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).expect("strings serialise"));
                    out.push(':');
                    write(&m[k.as_str()], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// Backoff before attempt `n` (1-based), unless the server said how long.
fn backoff(n: u32, retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or_else(|| Duration::from_millis(250u64 << n.min(6)))
        .min(Duration::from_secs(20))
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Sends the call, retrying 429, 5xx and broken connections up to `cfg.max_attempts`
/// times. A timeout ends it: a model that needed longer than `timeout_ms` once will
/// again, and each try costs as much. Another 4xx, a body that is not a chat completion,
/// or an empty answer ends it at once too.
pub async fn complete(client: &reqwest::Client, cfg: &ModelConfig, body: &Value) -> CallReport {
    let body = ordered_json(body);
    let started = Instant::now();
    let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
    let key = std::env::var(&cfg.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    let mut last = String::new();
    let mut attempts = 0;
    while attempts < cfg.max_attempts.max(1) {
        attempts += 1;
        let mut req = client
            .post(&url)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(k) = &key {
            req = req.bearer_auth(k);
        }
        let wait = match req.send().await {
            Err(e) if e.is_timeout() => {
                last = "timeout".into();
                break;
            }
            Err(e) => {
                last = format!("transport: {e}");
                None
            }
            Ok(resp) => {
                let status = resp.status();
                let after = retry_after(resp.headers());
                let text = match resp.text().await {
                    Ok(t) => t,
                    Err(e) if e.is_timeout() => {
                        last = "timeout".into();
                        break;
                    }
                    Err(e) => format!("(body unreadable: {e})"),
                };
                if status.is_success() {
                    return CallReport {
                        result: parse_completion(&text),
                        attempts,
                        latency: started.elapsed(),
                    };
                }
                let snippet: String = text.chars().take(200).collect();
                last = format!("http {}: {snippet}", status.as_u16());
                if status.as_u16() != 429 && !status.is_server_error() {
                    break;
                }
                after
            }
        };
        if attempts < cfg.max_attempts {
            tokio::time::sleep(backoff(attempts, wait)).await;
        }
    }
    CallReport {
        result: Err(last),
        attempts,
        latency: started.elapsed(),
    }
}

/// The answer text and token counts of a chat-completions response.
pub fn parse_completion(text: &str) -> Result<Completion, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("malformed response: not JSON: {e}"))?;
    let content = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or("malformed response: no choices[0].message.content")?;
    if content.trim().is_empty() {
        return Err("malformed response: empty answer".into());
    }
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok(Completion {
        content: content.to_string(),
        input_tokens: n("/usage/prompt_tokens"),
        output_tokens: n("/usage/completion_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_list_the_summary_first_and_a_hypothesis_cause_before_its_text() {
        let v = json!({"required": ["a"], "properties": {"text": 1, "summary": {"z": 1, "a": [2, {"cause": 3, "b": 4}]}, "evidence_ids": 5, "cause": 6}});
        let s = ordered_json(&v);
        assert_eq!(
            s,
            r#"{"properties":{"summary":{"a":[2,{"cause":3,"b":4}],"z":1},"cause":6,"evidence_ids":5,"text":1},"required":["a"]}"#
        );
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
    }
}
