//! Sending one request until the receiver accepts it, refuses it for good, or the retry budget is spent.
#![expect(
    clippy::disallowed_methods,
    reason = "paging is wall-clock work: retries, group and repeat intervals, delivery stamps"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::receivers::Request;

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub delivered: bool,
    pub attempts: u32,
    /// The last answer (`202 Accepted: …`) or error.
    pub response: String,
}

/// When to try again after an answer: `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

/// Exponential backoff from 1 s, doubling to at most 60 s, with jitter (a random wait
/// between half the step and the step), so many pages to one failing receiver spread out.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let ms = rng.random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Sends `req` with `client`, retrying 429, 5xx and transport errors within `budget`
/// (honouring Retry-After); other answers end it.
pub async fn send(client: &reqwest::Client, req: &Request, budget: Duration) -> Outcome {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut b = client.post(&req.url).body(req.body.clone());
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        let (retry, wait, response) = match b.send().await {
            Ok(resp) => {
                let status = resp.status();
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, chrono::Utc::now()));
                let body = resp.text().await.unwrap_or_default();
                let response = format!("{status}: {}", body.chars().take(200).collect::<String>());
                if status.is_success() {
                    return Outcome {
                        delivered: true,
                        attempts,
                        response,
                    };
                }
                let again = status.as_u16() == 429 || status.is_server_error();
                (again, after, response)
            }
            Err(e) => (true, None, format!("no answer: {e}")),
        };
        if !retry {
            return Outcome {
                delivered: false,
                attempts,
                response,
            };
        }
        let wait = wait.unwrap_or_else(|| backoff(attempts));
        if started.elapsed() + wait > budget {
            return Outcome {
                delivered: false,
                attempts,
                response: format!("{response} (gave up after {attempts} attempts)"),
            };
        }
        tracing::warn!(url = %req.url, attempts, wait_ms = wait.as_millis() as u64, %response, "notification not accepted; retrying");
        tokio::time::sleep(wait).await;
    }
}

/// PagerDuty takes at most 120 events a minute per routing key: a token bucket per key
/// (2 a second, bursts of 120) keeps Seismo under it instead of learning it from 429s.
#[derive(Debug, Default)]
pub struct KeyLimiter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl KeyLimiter {
    const RATE_PER_SEC: f64 = 2.0;
    const BURST: f64 = 120.0;

    /// How long to wait before sending one more event with `key`; takes the token.
    pub fn take(&mut self, key: &str, now: Instant) -> Duration {
        let (tokens, at) = self
            .buckets
            .entry(key.to_string())
            .or_insert((Self::BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * Self::RATE_PER_SEC)
            .min(Self::BURST);
        *at = now;
        *tokens -= 1.0;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / Self::RATE_PER_SEC)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn the_key_limiter_allows_a_burst_then_two_a_second() {
        let mut l = KeyLimiter::default();
        let t0 = Instant::now();
        for _ in 0..120 {
            assert_eq!(l.take("k", t0), Duration::ZERO);
        }
        assert_eq!(l.take("k", t0), Duration::from_millis(500));
        assert_eq!(l.take("other", t0), Duration::ZERO, "keys are separate");
    }
}
