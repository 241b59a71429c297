//! The distributed mode: one stage per process on Kafka and PostgreSQL (`seismo run --stage`).
//!
//! Every stage process serves `/healthz`, `/readyz` and `/metrics` on `http.listen` (the
//! ingest stage adds HTTP ingest, the api stage the query API) and stops on SIGTERM or
//! Ctrl-C after its current batch: outputs written, state checkpointed, offsets
//! committed. A process killed outright loses nothing either: its partitions resume from
//! their checkpoints, and the idempotent writes absorb the replay. A stage that fails for
//! good stops the process with a non-zero exit, so its supervisor restarts it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use seismo_kafka::{KafkaConsumer, KafkaProducer};
use seismo_runtime::Health;
use seismo_schemas::topics;
use seismo_transport::{Consumer, Producer};
use tokio::sync::watch;

use crate::Config;
use crate::cli::Stage;
use crate::stages::{self, StageContext};
use crate::{http, pipeline};

/// Creates every Seismo topic on the configured brokers.
pub async fn create_topics(cfg: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.kafka.enabled(),
        "kafka.brokers is empty: set it (or SEISMO_KAFKA__BROKERS) to create topics"
    );
    let made = seismo_kafka::create_topics(&cfg.kafka, &topics::ALL)
        .await
        .with_context(|| format!("creating topics on {}", cfg.kafka.brokers))?;
    for (topic, created) in made {
        println!(
            "{topic}: {}",
            if created {
                format!(
                    "created ({} partitions, replication {})",
                    cfg.kafka.partitions, cfg.kafka.replication
                )
            } else {
                "already exists".to_string()
            }
        );
    }
    Ok(())
}

/// Runs one stage until SIGTERM or Ctrl-C.
pub async fn run_stage(cfg: &Config, stage: Stage) -> anyhow::Result<()> {
    anyhow::ensure!(
        stage == Stage::Api || cfg.kafka.enabled(),
        "--stage {} needs Kafka: set kafka.brokers (or SEISMO_KAFKA__BROKERS)",
        stage.name()
    );
    if cfg.storage.url.starts_with("sqlite:") && stage != Stage::Api {
        tracing::warn!(
            "storage.url is SQLite: several stage processes on one SQLite file contend for its lock; use PostgreSQL"
        );
    }
    let store = pipeline::open_store(cfg).await?;
    // Bound first: whether `http.auth = auto` may serve open depends on the address.
    let listener = http::bind(&cfg.http.listen).await?;
    // Only ingest and api serve data; the other stages serve /healthz, /readyz, /metrics.
    let auth = if matches!(stage, Stage::Ingest | Stage::Api) {
        let mut decided = cfg.clone();
        decided.http.auth = http::auth_mode(cfg, store.as_ref(), listener.local_addr()?).await?;
        Some(http::authenticator(&decided, store.clone()))
    } else {
        None
    };
    let (stop_tx, stop) = watch::channel(false);
    let token = tokio_util::sync::CancellationToken::new();
    {
        let token = token.clone();
        tokio::spawn(async move {
            pipeline::shutdown_signal().await;
            tracing::info!("shutting down: finishing the current batch");
            let _ = stop_tx.send(true);
            token.cancel();
        });
    }
    let health = Health::default();
    let kafka = cfg.kafka.clone();
    let ctx = StageContext {
        cfg: cfg.clone(),
        store: store.clone(),
        health: health.clone(),
        points_partitions: cfg.kafka.partitions.max(1) as u32,
        anomaly_partitions: cfg.kafka.partitions.max(1) as u32,
        group: Arc::new(move |s: Stage| kafka.group(s.name())),
        ingest_limits: seismo_ingest::Limits::new(cfg.ingest.clone())
            .with_detect_bucket(cfg.detect.bucket_secs),
    };
    let group = (ctx.group)(stage);
    let mut router = seismo_api::ops_router(
        health.clone(),
        Duration::from_secs(cfg.stages.stuck_after_secs),
    );
    // The API's live stream of incident changes; its streams end when the server stops.
    let feed = seismo_api::stream::ChangeFeed::default();
    let work = match stages::spec(stage) {
        Some(spec) => {
            let producer =
                Arc::new(KafkaProducer::new(&cfg.kafka).context("creating the Kafka producer")?);
            if stage == Stage::Ingest {
                router = router.merge(seismo_ingest::http::router(
                    seismo_ingest::http::IngestHttp {
                        producer: producer.clone() as Arc<dyn Producer>,
                        publish_timeout: Duration::from_millis(cfg.http.publish_timeout_ms),
                        max_body_bytes: cfg.http.max_body_bytes,
                        scope_label: cfg.correlate.scope_label.clone(),
                        limits: ctx.ingest_limits.clone(),
                    },
                ));
            }
            // One group for all of a stage's inputs: correlate's two topics are keyed
            // alike, so the group's (range) assignment gives one process the same
            // partitions of both, and alerts meet the anomalies of their scope.
            let input = KafkaConsumer::new(&cfg.kafka, &group, spec.inputs, stop.clone())
                .with_context(|| format!("joining consumer group {group}"))?;
            stages::spawn(stage, &ctx, Box::new(input), producer)
        }
        None => {
            let producer =
                Arc::new(KafkaProducer::new(&cfg.kafka).context("creating the Kafka producer")?);
            // The live stream hears every change published from now on, whoever made it.
            let mut tail = KafkaConsumer::tail(&cfg.kafka, &[topics::INCIDENTS], stop.clone())
                .context("reading seismo.incidents for the live stream")?;
            router = router.merge(seismo_api::router(
                seismo_api::ApiState::new(store.clone())
                    .with_explainer(crate::http::explainer_for_api(cfg, store.clone()))
                    .with_auth(auth.clone())
                    .with_correlate(cfg.correlate.clone())
                    .with_query_limits(cfg.query)
                    .with_changes(Some(producer as Arc<dyn Producer>))
                    .with_feed(Some(feed.clone())),
            ));
            let h = health.stage("api");
            h.running();
            let feed = feed.clone();
            tokio::spawn(async move {
                while let Some(batch) = tail.next_batch(256).await {
                    match batch {
                        Ok(records) => {
                            h.running();
                            feed.publish_records(records.iter().map(|m| m.payload.as_ref()));
                        }
                        Err(e) => {
                            // Readiness says so: the API answers, its live stream is deaf.
                            h.retrying(&format!(
                                "reading seismo.incidents for the live stream: {e}"
                            ));
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                h.stopped();
                Ok(Default::default())
            })
        }
    };
    let router = http::with_body_limits(router, &http::HttpLimits::from_config(cfg));
    let router = match auth {
        Some(a) => http::with_auth(router, a),
        None => router,
    };
    tracing::info!(
        stage = stage.name(),
        group = %group,
        brokers = %cfg.kafka.brokers,
        store = %pipeline::redact(&cfg.storage.url),
        http = %listener.local_addr()?,
        "seismo stage running"
    );
    let serving = token.clone();
    let server = tokio::spawn(http::serve(
        listener,
        router,
        async move {
            serving.cancelled().await;
            feed.close();
        },
        http::HttpLimits::from_config(cfg),
    ));
    let result = work.await;
    // The stage is over (drained, or failed): stop serving too, so a failure ends the
    // process and its supervisor restarts it.
    token.cancel();
    let stats = result
        .context("stage panicked")?
        .with_context(|| format!("stage {} failed", stage.name()))?;
    tracing::info!("{}", stats.line(stage));
    server.await.context("HTTP server panicked")??;
    Ok(())
}
