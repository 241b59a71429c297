//! The table of stages: what each reads and writes, and how to start it. Embedded mode,
//! distributed mode and the benches all start stages through [`spawn`], so the wiring is
//! written once.

use std::sync::Arc;
use std::time::Duration;

use seismo_correlate::{CorrelateStage, CorrelateStats};
use seismo_detect::DetectStage;
use seismo_forecast::ForecastStage;
use seismo_ingest::IngestStats;
use seismo_runtime::{Checkpointing, Health, RetryPolicy, StageError, StageIo};
use seismo_schemas::topics;
use seismo_store::Store;
use seismo_transport::{Consumer, Producer};
use tokio::task::JoinHandle;

use crate::Config;
use crate::cli::Stage;

/// One stage of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    pub stage: Stage,
    /// Topics it consumes, in one consumer group.
    pub inputs: &'static [&'static str],
    /// Topics it produces to.
    pub outputs: &'static [&'static str],
}

/// Every stage that reads the bus, in pipeline order.
pub const STAGES: [StageSpec; 6] = [
    StageSpec {
        stage: Stage::Ingest,
        inputs: &[topics::METRICS],
        outputs: &[topics::POINTS, topics::DLQ],
    },
    StageSpec {
        stage: Stage::Detect,
        inputs: &[topics::POINTS],
        outputs: &[topics::ANOMALIES],
    },
    StageSpec {
        stage: Stage::Forecast,
        inputs: &[topics::POINTS],
        outputs: &[topics::ANOMALIES],
    },
    StageSpec {
        stage: Stage::Correlate,
        inputs: &[topics::ANOMALIES, topics::ALERTS],
        outputs: &[topics::INCIDENTS, topics::DLQ],
    },
    StageSpec {
        stage: Stage::Notify,
        inputs: &[topics::INCIDENTS],
        outputs: &[topics::DLQ],
    },
    StageSpec {
        stage: Stage::Explain,
        inputs: &[topics::INCIDENTS],
        outputs: &[],
    },
];

/// The spec of a stage.
pub fn spec(stage: Stage) -> Option<&'static StageSpec> {
    STAGES.iter().find(|s| s.stage == stage)
}

/// What the stages did, once they have stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineStats {
    pub ingest: IngestStats,
    pub detect: DetectStats,
    pub forecasts: u64,
    /// Predicted breaches raised (or re-reported as their ETA moved).
    pub predicted: u64,
    pub correlate: CorrelateStats,
    pub notify: seismo_notify::NotifyStats,
    pub explain: seismo_explain::ExplainStats,
}

/// What detect did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DetectStats {
    pub points: u64,
    pub anomalies: u64,
    /// Partitions whose state came from a checkpoint.
    pub restored_partitions: u64,
    /// Redelivered records skipped because the restored state already held them.
    pub replayed_skipped: u64,
}

impl PipelineStats {
    /// Adds another stage's figures.
    pub fn merge(&mut self, o: PipelineStats) {
        self.ingest.records += o.ingest.records;
        self.ingest.points += o.ingest.points;
        self.ingest.rejected += o.ingest.rejected;
        self.detect.points += o.detect.points;
        self.detect.anomalies += o.detect.anomalies;
        self.detect.restored_partitions += o.detect.restored_partitions;
        self.detect.replayed_skipped += o.detect.replayed_skipped;
        self.forecasts += o.forecasts;
        self.predicted += o.predicted;
        self.correlate.anomalies += o.correlate.anomalies;
        self.correlate.alerts += o.correlate.alerts;
        self.correlate.incidents_created += o.correlate.incidents_created;
        self.correlate.refused += o.correlate.refused;
        self.notify.changes += o.notify.changes;
        self.notify.delivered += o.notify.delivered;
        self.notify.failed += o.notify.failed;
        self.notify.already_sent += o.notify.already_sent;
        self.notify.refused += o.notify.refused;
        self.explain.changes += o.explain.changes;
        self.explain.explained += o.explain.explained;
        self.explain.by_model += o.explain.by_model;
        self.explain.by_template += o.explain.by_template;
        self.explain.refused += o.explain.refused;
    }

    /// One log line for a stage's figures.
    pub fn line(&self, stage: Stage) -> String {
        match stage {
            Stage::Ingest => format!(
                "ingest: {} records, {} points, {} refused",
                self.ingest.records, self.ingest.points, self.ingest.rejected
            ),
            Stage::Detect => format!(
                "detect: {} points, {} anomalies, {} partitions restored, {} replayed records skipped",
                self.detect.points,
                self.detect.anomalies,
                self.detect.restored_partitions,
                self.detect.replayed_skipped
            ),
            Stage::Forecast => format!(
                "forecast: {} forecast rows, {} predicted breaches",
                self.forecasts, self.predicted
            ),
            Stage::Correlate => format!(
                "correlate: {} anomalies, {} alerts, {} incidents opened",
                self.correlate.anomalies, self.correlate.alerts, self.correlate.incidents_created
            ),
            Stage::Notify => format!(
                "notify: {} changes, {} pages delivered, {} failed, {} already sent",
                self.notify.changes,
                self.notify.delivered,
                self.notify.failed,
                self.notify.already_sent
            ),
            Stage::Explain => format!(
                "explain: {} changes, {} explanations ({} by the model, {} by the template)",
                self.explain.changes,
                self.explain.explained,
                self.explain.by_model,
                self.explain.by_template
            ),
            Stage::Api => "api: stopped".into(),
        }
    }
}

/// What every stage of a process shares.
#[derive(Clone)]
pub struct StageContext {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    pub health: Health,
    /// Partitions of `seismo.points` and of `seismo.anomalies` (and `seismo.alerts`).
    pub points_partitions: u32,
    pub anomaly_partitions: u32,
    /// Consumer group of a stage.
    pub group: Arc<dyn Fn(Stage) -> String + Send + Sync>,
    /// Ingest's limits (`[ingest]`), one per process: its ingest stage and HTTP ingest
    /// share them, so one limiter counts each tenant's active series.
    pub ingest_limits: seismo_ingest::Limits,
}

impl StageContext {
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            give_up_after: Duration::from_secs(self.cfg.stages.retry_for_secs),
            ..RetryPolicy::default()
        }
    }
}

/// Starts `stage` on `input`, producing to `output`. The task ends when the input ends
/// (drained, or a stop request) or the stage fails for good.
pub fn spawn(
    stage: Stage,
    ctx: &StageContext,
    input: Box<dyn Consumer>,
    output: Arc<dyn Producer>,
) -> JoinHandle<Result<PipelineStats, StageError>> {
    let ctx = ctx.clone();
    let health = ctx.health.stage(stage.name());
    let batch = ctx.cfg.bus.batch_records;
    let io = |input: Box<dyn Consumer>| StageIo {
        input,
        batch_records: batch,
        checkpoint: Some(Checkpointing {
            store: ctx.store.clone(),
            group: (ctx.group)(stage),
            interval: Duration::from_millis(ctx.cfg.stages.checkpoint_interval_ms),
        }),
        health: health.clone(),
        retry: ctx.retry(),
    };
    match stage {
        Stage::Ingest => {
            let retry = ctx.retry();
            tokio::spawn(async move {
                let s = seismo_ingest::run(
                    input,
                    output,
                    ctx.store.clone(),
                    batch.div_ceil(64).max(1),
                    health,
                    retry,
                    ctx.ingest_limits.clone(),
                )
                .await?;
                Ok(PipelineStats {
                    ingest: s,
                    ..Default::default()
                })
            })
        }
        Stage::Detect => {
            let io = io(input);
            let mut core = DetectStage::new(
                ctx.cfg.detect.clone(),
                ctx.cfg.correlate.scope_label.clone(),
                ctx.store.clone(),
                output,
                ctx.anomaly_partitions,
                Duration::from_secs(ctx.cfg.stages.idle_release_secs),
            );
            tokio::spawn(async move {
                let r = seismo_runtime::run(&mut core, io).await?;
                Ok(PipelineStats {
                    detect: DetectStats {
                        points: core.points,
                        anomalies: core.raised,
                        restored_partitions: r.restored_partitions,
                        replayed_skipped: r.replayed_skipped,
                    },
                    ..Default::default()
                })
            })
        }
        Stage::Forecast => {
            let io = io(input);
            let mut core = ForecastStage::new(
                ctx.cfg.forecast.clone(),
                ctx.cfg.correlate.scope_label.clone(),
                ctx.store.clone(),
                output,
                ctx.anomaly_partitions,
            );
            tokio::spawn(async move {
                seismo_runtime::run(&mut core, io).await?;
                Ok(PipelineStats {
                    forecasts: core.stats().rows,
                    predicted: core.stats().predicted,
                    ..Default::default()
                })
            })
        }
        Stage::Correlate => {
            let io = io(input);
            let mut core = CorrelateStage::new(
                ctx.cfg.correlate.clone(),
                ctx.points_partitions,
                Duration::from_secs(ctx.cfg.stages.idle_release_secs),
                ctx.store.clone(),
                output,
            );
            tokio::spawn(async move {
                seismo_runtime::run(&mut core, io).await?;
                Ok(PipelineStats {
                    correlate: core.stats,
                    ..Default::default()
                })
            })
        }
        Stage::Notify => {
            let io = io(input);
            let core =
                seismo_notify::NotifyStage::new(ctx.cfg.notify.clone(), ctx.store.clone(), output);
            tokio::spawn(async move {
                // The configuration was checked when it was loaded.
                let mut core = core.map_err(|e| {
                    StageError::new(
                        seismo_runtime::ErrorDomain::Internal,
                        false,
                        "notify configuration",
                        std::io::Error::other(e),
                    )
                })?;
                seismo_runtime::run(&mut core, io).await?;
                Ok(PipelineStats {
                    notify: core.stats(),
                    ..Default::default()
                })
            })
        }
        Stage::Explain => {
            let io = io(input);
            let explainer = explainer(&ctx.cfg, ctx.store.clone());
            tokio::spawn(async move {
                // The configuration and runbooks were checked when the process started.
                let explainer = explainer.map_err(|e| {
                    StageError::new(
                        seismo_runtime::ErrorDomain::Internal,
                        false,
                        "explain configuration",
                        std::io::Error::other(e),
                    )
                })?;
                let mut core = seismo_explain::ExplainStage::new(Arc::new(explainer));
                seismo_runtime::run(&mut core, io).await?;
                Ok(PipelineStats {
                    explain: core.stats(),
                    ..Default::default()
                })
            })
        }
        Stage::Api => tokio::spawn(async { Ok(PipelineStats::default()) }),
    }
}

/// The explainer of a configuration: the stage's, and the API's for regeneration.
pub fn explainer(cfg: &Config, store: Arc<dyn Store>) -> Result<seismo_explain::Explainer, String> {
    seismo_explain::Explainer::new(
        cfg.explain.clone(),
        cfg.correlate.dependencies.clone(),
        cfg.correlate.service_label.clone(),
        store,
    )
}
