//! Bucketing of a partitioned point stream into per-series models, and the bus runner.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use prometheus::{IntCounter, register_int_counter};
use seismo_schemas::{
    Anomaly, AnomalyKind, DetectorPart, Explanation, MetricPoint, SeriesId, Severity,
    correlation_key, topics,
};
use seismo_store::Store;
use seismo_transport::{Consumer, OutRecord, Producer, TransportError};

use crate::{DetectConfig, Scored, SeriesModel};

static ANOMALIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("seismo_detect_anomalies_total", "Anomalies raised").expect("metric")
});
static LATE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_late_points_total",
        "Points older than their series' open bucket (stored, but not scored)"
    )
    .expect("metric")
});
static BAD: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_unparsable_total",
        "Records on seismo.points that are not points"
    )
    .expect("metric")
});

/// Name recorded on every anomaly this detector raises.
pub const DETECTOR_NAME: &str = "seasonal_residual";

#[derive(Debug, Clone)]
struct SeriesState {
    bucket: i64,
    sum: f64,
    count: u32,
    model: SeriesModel,
}

/// The detect core: per partition, per series, bucket and score. Pure and deterministic.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    bucket_ms: i64,
    partitions: HashMap<u32, HashMap<SeriesId, SeriesState>>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Self {
        let bucket_ms = (cfg.bucket_secs.max(1) * 1000) as i64;
        Detector {
            cfg,
            bucket_ms,
            partitions: HashMap::new(),
        }
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Feeds one point. A point that opens a new bucket closes its series' previous bucket,
    /// which is scored; an anomaly is returned when that bucket is one.
    pub fn process(&mut self, partition: u32, p: &MetricPoint) -> Option<Anomaly> {
        let id = p.series_id();
        let bucket = p.ts.div_euclid(self.bucket_ms);
        let series = self.partitions.entry(partition).or_default();
        let Some(st) = series.get_mut(&id) else {
            series.insert(
                id,
                SeriesState {
                    bucket,
                    sum: p.value,
                    count: 1,
                    model: SeriesModel::new(&self.cfg),
                },
            );
            return None;
        };
        if bucket == st.bucket {
            st.sum += p.value;
            st.count += 1;
            return None;
        }
        if bucket < st.bucket {
            LATE.inc();
            return None;
        }
        let closed_ts = st.bucket * self.bucket_ms;
        let mean = st.sum / f64::from(st.count);
        let scored = st.model.update(&self.cfg, closed_ts, mean);
        st.bucket = bucket;
        st.sum = p.value;
        st.count = 1;
        let kind = scored.emit?;
        Some(self.anomaly(p, id, closed_ts, &scored, kind))
    }

    fn anomaly(
        &self,
        p: &MetricPoint,
        id: SeriesId,
        ts_ms: i64,
        s: &Scored,
        kind: AnomalyKind,
    ) -> Anomaly {
        let severity = if s.z.abs() >= 2.0 * self.cfg.z_threshold {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let direction = if s.z > 0.0 { "above" } else { "below" };
        let baseline = if s.seasonal {
            "its daily profile"
        } else {
            "its recent level"
        };
        let what = match kind {
            AnomalyKind::LevelShift => "moved to a new level",
            _ => "deviates",
        };
        Anomaly {
            id: Anomaly::make_id(id, ts_ms, DETECTOR_NAME),
            tenant: p.tenant.clone(),
            series_id: id,
            name: p.name.clone(),
            labels: p.labels.clone(),
            ts: Utc.timestamp_millis_opt(ts_ms).single().unwrap_or_default(),
            observed: s.observed,
            expected: s.expected,
            lower: s.lower,
            upper: s.upper,
            score: s.score,
            severity,
            kind,
            detector: DETECTOR_NAME.into(),
            explanation: Explanation {
                detectors: vec![DetectorPart {
                    detector: DETECTOR_NAME.into(),
                    score: s.score,
                    weight: 1.0,
                }],
                features: Vec::new(),
                seasonal_periods_s: if s.seasonal {
                    vec![self.cfg.season_secs]
                } else {
                    Vec::new()
                },
                z_score: s.z,
                summary: format!(
                    "{} {what}: {:.4} is {:.1} robust σ {direction} {baseline} ({:.4}; band {:.4}..{:.4})",
                    p.name,
                    s.observed,
                    s.z.abs(),
                    s.expected,
                    s.lower,
                    s.upper
                ),
            },
        }
    }
}

/// Errors that stop the detect runner.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] seismo_store::StoreError),
}

/// Counts of what a runner did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DetectStats {
    pub points: u64,
    pub anomalies: u64,
}

/// Runs detect until its input ends: score every point of `seismo.points`, store the
/// anomalies, publish them keyed by correlation scope, then commit.
pub async fn run(
    cfg: DetectConfig,
    scope_label: Option<String>,
    mut input: Box<dyn Consumer>,
    output: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    batch_records: usize,
) -> Result<DetectStats, DetectError> {
    let mut det = Detector::new(cfg);
    let mut stats = DetectStats::default();
    while let Some(batch) = input.next_batch(batch_records).await {
        let batch = batch?;
        let mut anomalies = Vec::new();
        for m in &batch {
            match serde_json::from_slice::<MetricPoint>(&m.payload) {
                Ok(p) => {
                    stats.points += 1;
                    anomalies.extend(det.process(m.partition, &p));
                }
                Err(e) => {
                    BAD.inc();
                    tracing::warn!(partition = m.partition, offset = m.offset, error = %e, "skipping a record that is not a point");
                }
            }
        }
        if !anomalies.is_empty() {
            stats.anomalies += anomalies.len() as u64;
            ANOMALIES.inc_by(anomalies.len() as u64);
            store.insert_anomalies(&anomalies).await?;
            let records = anomalies
                .iter()
                .map(|a| {
                    OutRecord::new(
                        Bytes::from(correlation_key(
                            &a.tenant,
                            &a.labels,
                            scope_label.as_deref(),
                        )),
                        Bytes::from(serde_json::to_vec(a).expect("anomalies serialise")),
                    )
                })
                .collect();
            output.send(topics::ANOMALIES, records).await?;
        }
        input.commit(&batch).await?;
    }
    output.flush().await?;
    Ok(stats)
}
