//! Seismo's configuration: one TOML file with documented defaults, overridable by `SEISMO_*`.

use std::path::Path;

use anyhow::{Context, bail};
use seismo_correlate::CorrelateConfig;
use seismo_detect::DetectConfig;
use seismo_forecast::ForecastConfig;
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
    pub detect: DetectConfig,
    pub forecast: ForecastConfig,
    pub correlate: CorrelateConfig,
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

/// Stage processes of the distributed mode (`seismo run --stage NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagesConfig {
    /// How often detect saves its learned state per partition and commits its input
    /// offsets, in ms. Shorter means less replay after a crash, more checkpoint writes.
    pub checkpoint_interval_ms: u64,
}

impl Default for StagesConfig {
    fn default() -> Self {
        StagesConfig {
            checkpoint_interval_ms: 5000,
        }
    }
}

/// The in-process bus of embedded mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Partitions per topic; the unit of parallelism, as on Kafka.
    pub partitions: u32,
    /// Records each consumer's channel holds before producers wait (backpressure) and
    /// HTTP ingest answers 503. Memory is bounded by this times the record size.
    pub capacity: usize,
    /// Most records a stage takes from the bus per batch (and per store transaction).
    pub batch_records: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            partitions: 8,
            capacity: 4096,
            batch_records: 2048,
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
    /// Largest ingest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            publish_timeout_ms: 1000,
            max_body_bytes: 8 << 20,
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
        Ok(toml::Value::Table(doc).try_into()?)
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
            "[detect]",
            "[forecast]",
            "[correlate]",
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
