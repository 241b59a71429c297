//! Retries of transient failures with exponential backoff and jitter.
#![expect(
    clippy::disallowed_methods,
    reason = "backoff waits wall time and seeds its jitter from the clock"
)]

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{StageError, StageHealth};

/// How a stage retries an operation that failed transiently (a locked or unreachable
/// database, an unavailable broker). Outputs are written idempotently, so a retry can
/// never duplicate them; the stage holds its input until the write succeeds, so nothing
/// is dropped either.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay before the first retry; it doubles up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// After failing this long the stage gives up and stops the process (non-zero exit),
    /// so its supervisor (systemd, Kubernetes) restarts it.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(600),
        }
    }
}

/// A jitter factor in [0.5, 1.0), different per call, without an RNG to carry around.
fn jitter(seed: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let h =
        xxhash_rust::xxh3::xxh3_64(&[seed.to_le_bytes(), u64::from(nanos).to_le_bytes()].concat());
    0.5 + (h >> 11) as f64 / (1u64 << 53) as f64 / 2.0
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails permanently, or keeps failing past
    /// `give_up_after`; the stage shows as retrying in the meantime.
    pub async fn run<T, F, Fut>(
        &self,
        what: &str,
        health: &StageHealth,
        mut op: F,
    ) -> Result<T, StageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        let started = Instant::now();
        let mut delay = self.first_delay;
        let mut attempt = 0u64;
        loop {
            match op().await {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(
                            stage = health.name(),
                            what,
                            attempts = attempt + 1,
                            "recovered"
                        );
                        health.running();
                    }
                    return Ok(v);
                }
                Err(e) if e.retry && started.elapsed() < self.give_up_after => {
                    attempt += 1;
                    health.retrying(&format!("{what}: {e}"));
                    tracing::warn!(stage = health.name(), what, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "transient failure; retrying");
                    tokio::time::sleep(delay.mul_f64(jitter(attempt))).await;
                    delay = (delay * 2).min(self.max_delay);
                }
                Err(e) => {
                    let e = if e.retry {
                        e.context(format!("{what} kept failing for {:?}", started.elapsed()))
                    } else {
                        e.context(what)
                    };
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorDomain, Health};

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let health = Health::default();
        let h = health.stage("t");
        let policy = RetryPolicy::default();
        let mut calls = 0;
        let v = policy
            .run("op", &h, || {
                calls += 1;
                let fail = calls < 4;
                async move {
                    if fail {
                        Err(StageError::new(ErrorDomain::External, true, "db", "locked"))
                    } else {
                        Ok(7)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!((v, calls), (7, 4));
        assert_eq!(health.snapshot()["t"].retries, 3);
        let mut calls = 0;
        let e = policy
            .run("op", &h, || {
                calls += 1;
                async { Err::<(), _>(StageError::new(ErrorDomain::User, false, "x", "bad")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(e.domain, ErrorDomain::User);
        // A fault that outlasts the budget ends in an error, not an endless loop.
        let short = RetryPolicy {
            give_up_after: Duration::from_secs(2),
            ..policy
        };
        let e = short
            .run("op", &h, || async {
                Err::<(), _>(StageError::new(ErrorDomain::External, true, "db", "down"))
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("kept failing"), "{e}");
    }
}
