//! Seismo's configuration: one TOML file with documented defaults, overridable by `SEISMO_*`.

use std::path::Path;

use anyhow::{Context, bail};
use seismo_correlate::CorrelateConfig;
use seismo_detect::DetectConfig;
use seismo_forecast::ForecastConfig;
use seismo_ingest::IngestConfig;
use seismo_kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

/// Everything Seismo can be told. Every section and field has a default, so an empty file
/// (or none) is a valid configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub storage: StorageConfig,
    pub bus: BusConfig,
    pub kafka: KafkaConfig,
    pub stages: StagesConfig,
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub detect: DetectConfig,
    pub forecast: ForecastConfig,
    pub correlate: CorrelateConfig,
    pub notify: seismo_notify::NotifyConfig,
    pub explain: seismo_explain::ExplainConfig,
    /// Limits of ad-hoc SQL (`seismo query`, `POST /api/v1/query`).
    pub query: seismo_store::scan::QueryLimits,
}

/// Where results are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Database URL: `sqlite://FILE` (embedded; created if missing), `sqlite::memory:`, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (distributed mode).
    pub url: String,
    /// PostgreSQL only: `auto` uses TimescaleDB when the server has the extension and
    /// native partitioning otherwise; `require` fails without it; `off` never uses it.
    pub timescaledb: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://seismo.db".into(),
            timescaledb: "auto".into(),
        }
    }
}

/// How every stage runs, in both modes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagesConfig {
    /// How often detect, forecast and correlate save what changed in their state per
    /// partition and commit their input, in ms. Shorter means less replay after a crash,
    /// more checkpoint writes.
    pub checkpoint_interval_ms: u64,
    /// How long a stage retries a transient failure (database locked or away, broker
    /// away) before it gives up and stops the process with a non-zero exit, in seconds.
    pub retry_for_secs: u64,
    /// `/readyz` reports a stage stuck (503) when one batch has taken longer than this,
    /// in seconds.
    pub stuck_after_secs: u64,
    /// Correlate holds anomalies until every detect partition's watermark passes them;
    /// after this many seconds without any input it releases what it holds, in seconds. A
    /// forecast partition silent this long while the others go on is no longer waited for
    /// until it speaks again.
    pub idle_release_secs: u64,
}

impl Default for StagesConfig {
    fn default() -> Self {
        StagesConfig {
            checkpoint_interval_ms: 5000,
            retry_for_secs: 600,
            stuck_after_secs: 120,
            idle_release_secs: 30,
        }
    }
}

/// The durable on-disk bus of embedded mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Folder of the bus's log (created if missing). Accepted records wait here, fsync'd,
    /// until every stage has taken them; a restart resumes from it.
    pub dir: String,
    /// Partitions per topic; the unit of parallelism, as on Kafka.
    pub partitions: u32,
    /// Most records a stage takes from the bus per batch (and per store transaction).
    pub batch_records: usize,
    /// Most bytes a topic holds that a stage has not yet taken. Beyond it producers wait
    /// and HTTP ingest answers 503 with Retry-After (nothing of the request accepted).
    pub max_backlog_bytes: u64,
    /// Size at which a log segment file is closed and a new one started; consumed
    /// segments are deleted whole.
    pub segment_bytes: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            dir: "seismo-bus".into(),
            partitions: 8,
            batch_records: 2048,
            max_backlog_bytes: 1 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

/// The HTTP server (ingest and API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: String,
    /// How long an ingest request may wait for room on the bus before 503, in ms.
    pub publish_timeout_ms: u64,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most request body bytes held at once by all requests together; beyond it new
    /// requests get 503 with Retry-After.
    pub max_inflight_bytes: usize,
    /// Most open connections; beyond it a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// A connection must send a complete request head within this many ms of opening or
    /// of its previous response (idle keep-alive connections are closed after it).
    pub header_timeout_ms: u64,
    /// A request body must arrive within this many ms (408 beyond).
    pub body_timeout_ms: u64,
    /// Authentication: `on` requires `Authorization: Bearer <token>` (tokens from `seismo
    /// token create`) on every request but `/healthz`, `/readyz` and `/metrics`; `off`
    /// serves everything open, every caller an anonymous admin (warned loudly at start);
    /// `auto` is `off` while listening on a loopback address with no token created yet
    /// and `on` otherwise, and refuses to start beyond loopback with no token.
    pub auth: seismo_api::AuthMode,
    /// How long a checked token is trusted before the store is asked again, in ms: a
    /// revocation made by another process takes effect within it.
    pub auth_cache_ms: u64,
    /// Ingest budget of a token created without a rate of its own, in points per second
    /// (bursts of two seconds' worth); 0 means unlimited.
    pub ingest_rate_per_token: f64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            publish_timeout_ms: 1000,
            max_body_bytes: 8 << 20,
            max_inflight_bytes: 256 << 20,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            auth: seismo_api::AuthMode::Auto,
            auth_cache_ms: 5000,
            ingest_rate_per_token: 0.0,
        }
    }
}

/// Prefix of environment overrides: `SEISMO_HTTP__LISTEN=0.0.0.0:8080` sets `http.listen`.
pub const ENV_PREFIX: &str = "SEISMO_";

impl Config {
    /// Loads `path` (if given), then applies `SEISMO_SECTION__KEY` environment overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?,
            None => String::new(),
        };
        Self::from_toml_and_env(&text, std::env::vars()).with_context(|| {
            format!(
                "in config {}",
                path.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(defaults)".into())
            )
        })
    }

    /// Parses TOML text and applies the overrides found in `env`.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut doc: toml::Table = toml::from_str(text)?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        overrides.sort();
        for (key, value) in overrides {
            let path: Vec<String> = key[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            set_path(&mut doc, &path, parse_env_value(&value))
                .with_context(|| format!("applying {key}"))?;
        }
        let cfg: Config = toml::Value::Table(doc).try_into()?;
        // Refuse a broken [notify] at start rather than at the first page.
        cfg.notify.resolve().map_err(anyhow::Error::msg)?;
        cfg.explain.validate().map_err(anyhow::Error::msg)?;
        cfg.detect.validate().map_err(anyhow::Error::msg)?;
        cfg.forecast.validate().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}

/// An environment value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays, quoted strings) and as a plain string otherwise.
fn parse_env_value(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()))
}

fn set_path(doc: &mut toml::Table, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut table = doc;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(t) = entry.as_table_mut() else {
            bail!("{p} is not a section")
        };
        table = t;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads_and_documents_the_defaults() {
        let text = include_str!("../seismo.example.toml");
        let cfg = Config::from_toml_and_env(text, []).unwrap();
        // Every section is spelled out in the example; the values must be the defaults,
        // so the example cannot drift from the code.
        let mut expected = Config::default();
        expected.correlate.dependencies = cfg.correlate.dependencies.clone();
        assert_eq!(cfg, expected);
        assert!(
            !cfg.correlate.dependencies.is_empty(),
            "the example shows a dependency graph"
        );
        for section in [
            "[storage]",
            "[bus]",
            "[kafka]",
            "[stages]",
            "[http]",
            "[ingest]",
            "[detect]",
            "[forecast]",
            "[correlate]",
            "[notify]",
            "[explain]",
        ] {
            assert!(text.contains(section), "{section} missing from the example");
        }
    }

    #[test]
    fn env_overrides_win_and_unknown_keys_are_refused() {
        let env = [
            (
                "SEISMO_HTTP__LISTEN".to_string(),
                "0.0.0.0:9999".to_string(),
            ),
            ("SEISMO_DETECT__Z_THRESHOLD".to_string(), "4.5".to_string()),
            ("SEISMO_UPDATE_SCHEMAS".to_string(), "1".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let cfg = Config::from_toml_and_env("[http]\nlisten = \"127.0.0.1:1\"\n", env).unwrap();
        assert_eq!(cfg.http.listen, "0.0.0.0:9999");
        assert_eq!(cfg.detect.z_threshold, 4.5);
        let err =
            Config::from_toml_and_env("", [("SEISMO_HTTP__LISTN".to_string(), "x".to_string())])
                .unwrap_err();
        assert!(format!("{err:#}").contains("listn"), "{err:#}");
        let err = Config::from_toml_and_env("[detect]\nz_threshold = \"high\"\n", []).unwrap_err();
        assert!(format!("{err:#}").contains("z_threshold"), "{err:#}");
    }
}
