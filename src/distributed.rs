//! The distributed mode: one stage per process on Kafka and PostgreSQL (`seismo run --stage`).
//!
//! Every stage process serves `/healthz` and `/metrics` on `http.listen` (the ingest stage
//! adds HTTP ingest, the api stage the query API) and stops on SIGTERM or Ctrl-C after
//! draining its current batch: outputs flushed, detect's state checkpointed, offsets
//! committed. A process killed outright loses nothing either: its partitions resume from
//! the last committed offsets, and the idempotent writes absorb the replay.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use seismo_kafka::{KafkaConsumer, KafkaProducer};
use seismo_schemas::topics;
use seismo_transport::Producer;
use tokio::sync::watch;

use crate::Config;
use crate::cli::Stage;
use crate::pipeline;

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

fn consumer(
    cfg: &Config,
    group: &str,
    topics: &[&str],
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Box<KafkaConsumer>> {
    Ok(Box::new(
        KafkaConsumer::new(&cfg.kafka, group, topics, stop.clone())
            .with_context(|| format!("joining consumer group {group}"))?,
    ))
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
    let batch = cfg.bus.batch_records;
    let group = cfg.kafka.group(stage.name());
    let producer = || -> anyhow::Result<Arc<KafkaProducer>> {
        Ok(Arc::new(
            KafkaProducer::new(&cfg.kafka).context("creating the Kafka producer")?,
        ))
    };
    let mut router = seismo_api::ops_router();
    let work: tokio::task::JoinHandle<anyhow::Result<String>> = match stage {
        Stage::Ingest => {
            let out = producer()?;
            router = router.merge(seismo_ingest::http::router(
                seismo_ingest::http::IngestHttp {
                    producer: out.clone() as Arc<dyn Producer>,
                    publish_timeout: Duration::from_millis(cfg.http.publish_timeout_ms),
                    max_body_bytes: cfg.http.max_body_bytes,
                    scope_label: cfg.correlate.scope_label.clone(),
                },
            ));
            let input = consumer(cfg, &group, &[topics::METRICS], &stop)?;
            let store = store.clone();
            tokio::spawn(async move {
                let s = seismo_ingest::run(input, out, store, batch.div_ceil(64).max(1)).await?;
                Ok(format!(
                    "ingest: {} records, {} points, {} refused",
                    s.records, s.points, s.rejected
                ))
            })
        }
        Stage::Detect => {
            let input = consumer(cfg, &group, &[topics::POINTS], &stop)?;
            let run = seismo_detect::run(
                cfg.detect.clone(),
                cfg.correlate.scope_label.clone(),
                input,
                producer()?,
                store.clone(),
                batch,
                Some(seismo_detect::Checkpointing {
                    group: group.clone(),
                    interval: Duration::from_millis(cfg.stages.checkpoint_interval_ms),
                }),
            );
            tokio::spawn(async move {
                let s = run.await?;
                Ok(format!(
                    "detect: {} points, {} anomalies, {} partitions restored, {} replayed records skipped",
                    s.points, s.anomalies, s.restored_partitions, s.replayed_skipped
                ))
            })
        }
        Stage::Forecast => {
            let input = consumer(cfg, &group, &[topics::POINTS], &stop)?;
            let run = seismo_forecast::run(cfg.forecast.clone(), input, store.clone(), batch);
            tokio::spawn(async move { Ok(format!("forecast: {} forecasts", run.await?)) })
        }
        Stage::Correlate => {
            // Separate groups per input: correlate keeps its open incidents in memory,
            // so it runs as one process (see deploy/); alerts and anomalies of one
            // scope must reach the same process.
            let anomalies = consumer(cfg, &group, &[topics::ANOMALIES], &stop)?;
            let alerts = consumer(cfg, &format!("{group}-alerts"), &[topics::ALERTS], &stop)?;
            let run = seismo_correlate::run(
                cfg.correlate.clone(),
                anomalies,
                alerts,
                producer()?,
                store.clone(),
                batch,
            );
            tokio::spawn(async move {
                let s = run.await?;
                Ok(format!(
                    "correlate: {} anomalies, {} alerts, {} incidents opened",
                    s.anomalies, s.alerts, s.incidents_created
                ))
            })
        }
        Stage::Api => {
            router = pipeline::router(cfg, None, store.clone());
            let token = token.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                Ok("api: stopped".to_string())
            })
        }
    };
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.http.listen))?;
    tracing::info!(
        stage = stage.name(),
        group = %group,
        brokers = %cfg.kafka.brokers,
        store = %pipeline::redact(&cfg.storage.url),
        http = %listener.local_addr()?,
        "seismo stage running"
    );
    let serving = token.clone();
    let server = tokio::spawn(pipeline::serve(listener, router, async move {
        serving.cancelled().await
    }));
    let result = work.await;
    // The stage is over (drained, or failed): stop serving too, so a failure ends the
    // process and its supervisor restarts it.
    token.cancel();
    let summary = result.context("stage panicked")??;
    tracing::info!("{summary}");
    server.await.context("HTTP server panicked")??;
    Ok(())
}
