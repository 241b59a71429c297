//! The embedded pipeline: every stage in one process on the durable on-disk bus, with the
//! SQLite (or PostgreSQL) store; and the pieces every mode shares (opening the store).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use seismo_runtime::{Health, StageError};
use seismo_schemas::topics;
use seismo_store::{PgStore, SqliteStore, Store, TimescaleMode};
use seismo_transport::{DiskBus, DiskBusConfig, DiskProducer, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;
pub use crate::stages::PipelineStats;
use crate::stages::{self, STAGES, StageContext};

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

/// The embedded bus's settings from the configuration.
pub fn bus_config(cfg: &Config) -> DiskBusConfig {
    DiskBusConfig {
        dir: PathBuf::from(&cfg.bus.dir),
        partitions: cfg.bus.partitions,
        // One partition: records are consumed in the order their 2xx answers went out.
        topic_partitions: [(topics::METRICS.to_string(), 1)].into(),
        segment_bytes: cfg.bus.segment_bytes,
        max_backlog_bytes: cfg.bus.max_backlog_bytes,
    }
}

/// A running embedded pipeline.
pub struct Embedded {
    pub store: Arc<dyn Store>,
    pub bus: DiskBus,
    pub health: Health,
    /// Where producers put raw metrics (`seismo.metrics`) and alerts (`seismo.alerts`).
    /// [`Embedded::finish`] drains the pipeline once every clone of it is dropped.
    pub source: DiskProducer,
    /// Where the API announces status changes (`seismo.incidents`).
    pub incident_changes: DiskProducer,
    /// Every incident change published in this process (correlate's and the API's), for
    /// the API's live stream.
    pub feed: seismo_api::stream::ChangeFeed,
    tasks: Vec<(&'static str, JoinHandle<Result<PipelineStats, StageError>>)>,
    stop: watch::Sender<bool>,
    failed: watch::Receiver<Option<String>>,
    /// Shared by the ingest stage and [`Embedded::ingest_http`].
    ingest_limits: seismo_ingest::Limits,
}

impl Embedded {
    /// Opens the bus in `bus.dir` (resuming what it holds) and starts every stage.
    pub fn start(cfg: &Config, store: Arc<dyn Store>) -> anyhow::Result<Embedded> {
        Embedded::start_without(cfg, store, &[])
    }

    /// [`Embedded::start`] without the stages in `skip`: what a stage costs is measured by
    /// running without it (`seismo eval host --no-correlate`).
    pub fn start_without(
        cfg: &Config,
        store: Arc<dyn Store>,
        skip: &[crate::cli::Stage],
    ) -> anyhow::Result<Embedded> {
        let bus = DiskBus::open(bus_config(cfg))
            .with_context(|| format!("opening the bus in {}", cfg.bus.dir))?;
        let health = Health::default();
        let (stop, stop_rx) = watch::channel(false);
        let ctx = StageContext {
            cfg: cfg.clone(),
            store: store.clone(),
            health: health.clone(),
            points_partitions: cfg.bus.partitions,
            anomaly_partitions: cfg.bus.partitions,
            group: Arc::new(|s: crate::cli::Stage| s.name().to_string()),
            ingest_limits: seismo_ingest::Limits::new(cfg.ingest.clone())
                .with_detect_bucket(cfg.detect.bucket_secs),
        };
        if cfg.explain.enabled {
            // A broken runbook folder stops the start, not the stage later.
            stages::explainer(cfg, store.clone()).map_err(anyhow::Error::msg)?;
        }
        let mut wired = Vec::new();
        for spec in STAGES
            .iter()
            .filter(|s| s.stage != crate::cli::Stage::Explain || cfg.explain.enabled)
            .filter(|s| !skip.contains(&s.stage))
        {
            let input = bus
                .subscribe(spec.inputs, spec.stage.name())?
                .with_stop(stop_rx.clone());
            wired.push((spec, input));
        }
        let feed = seismo_api::stream::ChangeFeed::default();
        let mut outputs = Vec::new();
        for (spec, _) in &wired {
            let mut out = Arc::new(bus.producer(spec.outputs)?) as Arc<dyn Producer>;
            if spec.outputs.contains(&topics::INCIDENTS) {
                out = Arc::new(seismo_api::stream::FeedingProducer::new(out, feed.clone()));
            }
            outputs.push(out);
        }
        let source = bus.producer(&[topics::METRICS, topics::ALERTS])?;
        let incident_changes = bus.producer(&[topics::INCIDENTS])?;
        bus.seal();
        let (failed_tx, failed) = watch::channel(None);
        let failed_tx = Arc::new(failed_tx);
        let mut tasks = Vec::new();
        for ((spec, input), output) in wired.into_iter().zip(outputs) {
            let name = spec.stage.name();
            let h = stages::spawn(spec.stage, &ctx, Box::new(input), output);
            let failed_tx = failed_tx.clone();
            // Watch each stage: the first failure is announced so the process can stop.
            let h = tokio::spawn(async move {
                let r = h.await.map_err(|e| {
                    StageError::new(
                        seismo_runtime::ErrorDomain::Internal,
                        false,
                        "stage task",
                        e,
                    )
                })?;
                if let Err(e) = &r {
                    failed_tx.send_replace(Some(format!("stage {name} failed: {e}")));
                }
                r
            });
            tasks.push((name, h));
        }
        Ok(Embedded {
            store,
            bus,
            health,
            source,
            incident_changes,
            feed,
            tasks,
            stop,
            failed,
            ingest_limits: ctx.ingest_limits.clone(),
        })
    }

    /// Where the API announces the status changes people make, heard by the live stream.
    pub fn changes_producer(&self) -> Arc<dyn Producer> {
        Arc::new(seismo_api::stream::FeedingProducer::new(
            Arc::new(self.incident_changes.clone()),
            self.feed.clone(),
        ))
    }

    /// The HTTP ingest front door of this pipeline.
    pub fn ingest_http(&self, cfg: &Config) -> seismo_ingest::http::IngestHttp {
        seismo_ingest::http::IngestHttp {
            producer: Arc::new(self.source.clone()),
            publish_timeout: Duration::from_millis(cfg.http.publish_timeout_ms),
            max_body_bytes: cfg.http.max_body_bytes,
            scope_label: cfg.correlate.scope_label.clone(),
            limits: self.ingest_limits.clone(),
        }
    }

    /// Resolves with the first stage failure.
    pub fn failure(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.failed.clone();
        async move {
            loop {
                if let Some(m) = rx.borrow().clone() {
                    return m;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Closes this handle's source and waits for every stage to drain what was accepted,
    /// deciding at the end what waited for more input (the end of a finite input: the
    /// demo, a backfill). Other clones of `source` (an HTTP server's) must be dropped too.
    pub async fn finish(self) -> anyhow::Result<PipelineStats> {
        drop(self.source);
        // Notify reads seismo.incidents to its end only once every producer of it is gone.
        drop(self.incident_changes);
        join_all(self.tasks).await
    }

    /// Stops every stage after its current batch, with a checkpoint: what is not yet
    /// consumed stays on the bus and is taken up on the next start, exactly as if the
    /// process had run on.
    pub async fn stop(self) -> anyhow::Result<PipelineStats> {
        let _ = self.stop.send(true);
        drop(self.source);
        drop(self.incident_changes);
        join_all(self.tasks).await
    }
}

async fn join_all(
    tasks: Vec<(&'static str, JoinHandle<Result<PipelineStats, StageError>>)>,
) -> anyhow::Result<PipelineStats> {
    let mut stats = PipelineStats::default();
    let mut first_err = None;
    for (name, h) in tasks {
        match h.await {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => {
                first_err
                    .get_or_insert(anyhow::Error::new(e).context(format!("stage {name} failed")));
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("stage {name} panicked: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(stats),
    }
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
