//! Wiring of the embedded pipeline: every stage in one process on the in-process bus.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use seismo_schemas::topics;
use seismo_store::{PgStore, SqliteStore, Store, TimescaleMode};
use seismo_transport::{InProcBus, InProcProducer};
use tokio::task::JoinHandle;

use crate::Config;

/// Opens the configured store and brings its tables up to date.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = &cfg.storage.url;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mode = TimescaleMode::parse(&cfg.storage.timescaledb).with_context(|| {
            format!(
                "storage.timescaledb must be auto, require or off, not {:?}",
                cfg.storage.timescaledb
            )
        })?;
        let store = PgStore::connect(url, mode)
            .await
            .with_context(|| format!("connecting to {}", redact(url)))?;
        store.migrate().await.context("applying migrations")?;
        return Ok(Arc::new(store));
    }
    if !url.starts_with("sqlite:") {
        anyhow::bail!(
            "storage.url {:?} is not supported: use sqlite://FILE or postgres://USER@HOST/DB",
            redact(url)
        );
    }
    let store = SqliteStore::connect(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    store.migrate().await.context("applying migrations")?;
    Ok(Arc::new(store))
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// What each stage did, once the pipeline has drained.
#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineStats {
    pub ingest: seismo_ingest::IngestStats,
    pub detect: seismo_detect::DetectStats,
    pub forecasts: u64,
    pub correlate: seismo_correlate::CorrelateStats,
}

/// A running embedded pipeline.
pub struct Embedded {
    pub store: Arc<dyn Store>,
    /// Where producers put raw metrics (`seismo.metrics`) and alerts (`seismo.alerts`).
    /// The pipeline drains and stops once every clone of it is dropped.
    pub source: InProcProducer,
    ingest: JoinHandle<anyhow::Result<seismo_ingest::IngestStats>>,
    detect: JoinHandle<anyhow::Result<seismo_detect::DetectStats>>,
    forecast: JoinHandle<anyhow::Result<u64>>,
    correlate: JoinHandle<anyhow::Result<seismo_correlate::CorrelateStats>>,
}

fn spawn<T: Send + 'static, E: Into<anyhow::Error>>(
    name: &'static str,
    f: impl Future<Output = Result<T, E>> + Send + 'static,
) -> JoinHandle<anyhow::Result<T>> {
    tokio::spawn(async move {
        let r = f
            .await
            .map_err(Into::into)
            .with_context(|| format!("stage {name} failed"));
        if let Err(e) = &r {
            tracing::error!(stage = name, error = format!("{e:#}"), "stage stopped");
        }
        r
    })
}

impl Embedded {
    /// Wires the bus and starts ingest, detect, forecast and correlate.
    pub fn start(cfg: &Config, store: Arc<dyn Store>) -> Embedded {
        let bus = InProcBus::new(cfg.bus.partitions, cfg.bus.capacity);
        let mut ingest_in = bus.subscribe(topics::METRICS, "ingest", 1);
        let mut detect_in = bus.subscribe(topics::POINTS, "detect", 1);
        let mut forecast_in = bus.subscribe(topics::POINTS, "forecast", 1);
        let mut corr_anomalies = bus.subscribe(topics::ANOMALIES, "correlate", 1);
        let mut corr_alerts = bus.subscribe(topics::ALERTS, "correlate", 1);
        let source = bus.producer(&[topics::METRICS, topics::ALERTS]);
        let ingest_out = Arc::new(bus.producer(&[topics::POINTS, topics::DLQ]));
        let detect_out = Arc::new(bus.producer(&[topics::ANOMALIES]));
        let correlate_out = Arc::new(bus.producer(&[topics::INCIDENTS, topics::DLQ]));
        bus.seal();

        let batch = cfg.bus.batch_records;
        let scope = cfg.correlate.scope_label.clone();
        Embedded {
            ingest: spawn(
                "ingest",
                seismo_ingest::run(
                    Box::new(ingest_in.remove(0)),
                    ingest_out,
                    store.clone(),
                    batch.div_ceil(64).max(1),
                ),
            ),
            detect: spawn(
                "detect",
                seismo_detect::run(
                    cfg.detect.clone(),
                    scope,
                    Box::new(detect_in.remove(0)),
                    detect_out,
                    store.clone(),
                    batch,
                    // The in-process bus starts from offset 0 on every run, so there is
                    // nothing to resume: checkpoints belong to the distributed mode.
                    None,
                ),
            ),
            forecast: spawn(
                "forecast",
                seismo_forecast::run(
                    cfg.forecast.clone(),
                    Box::new(forecast_in.remove(0)),
                    store.clone(),
                    batch,
                ),
            ),
            correlate: spawn(
                "correlate",
                seismo_correlate::run(
                    cfg.correlate.clone(),
                    Box::new(corr_anomalies.remove(0)),
                    Box::new(corr_alerts.remove(0)),
                    correlate_out,
                    store.clone(),
                    batch,
                ),
            ),
            store,
            source,
        }
    }

    /// The HTTP ingest front door of this pipeline.
    pub fn ingest_http(&self, cfg: &Config) -> seismo_ingest::http::IngestHttp {
        seismo_ingest::http::IngestHttp {
            producer: Arc::new(self.source.clone()),
            publish_timeout: Duration::from_millis(cfg.http.publish_timeout_ms),
            max_body_bytes: cfg.http.max_body_bytes,
            scope_label: cfg.correlate.scope_label.clone(),
        }
    }

    /// Closes this handle's source and waits for every stage to drain what was accepted.
    /// Other clones of `source` (an HTTP server's) must be dropped too.
    pub async fn finish(self) -> anyhow::Result<PipelineStats> {
        drop(self.source);
        Ok(PipelineStats {
            ingest: join(self.ingest).await?,
            detect: join(self.detect).await?,
            forecasts: join(self.forecast).await?,
            correlate: join(self.correlate).await?,
        })
    }
}

async fn join<T>(h: JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    h.await.context("stage panicked")?
}

/// The HTTP router: ingest plus the query API.
pub fn router(cfg: &Config, pipeline: Option<&Embedded>, store: Arc<dyn Store>) -> axum::Router {
    let api = seismo_api::router(seismo_api::ApiState { store });
    match pipeline {
        Some(p) => api.merge(seismo_ingest::http::router(p.ingest_http(cfg))),
        None => api,
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
