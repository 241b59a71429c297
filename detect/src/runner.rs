//! Bucketing of a partitioned point stream into per-series models, and the bus runner.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use prometheus::{IntCounter, register_int_counter};
use seismo_schemas::{
    Anomaly, AnomalyKind, DetectorPart, Explanation, MetricPoint, SeriesId, Severity,
    correlation_key, topics,
};
use seismo_store::{Checkpoint, Store};
use seismo_transport::{Consumer, Message, OutRecord, Producer, TransportError};

use crate::entity::{EntityState, Finding};
use crate::{DetectConfig, Scored, SeriesModel, StreamConfig, StreamScore, StreamScorer};

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

static RESTORED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_partitions_restored_total",
        "Partitions whose learned state was restored from a checkpoint"
    )
    .expect("metric")
});
static REPLAYED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_replayed_records_total",
        "Redelivered records skipped because the restored state already contains them"
    )
    .expect("metric")
});

/// Names of the streaming ensemble's detectors in explanations, in `StreamScore::parts`
/// order; the one that set the bucket's surprisal has weight 1.
pub const ENSEMBLE_PARTS: [&str; 6] = [
    "ensemble_global",
    "ensemble_novelty",
    "ensemble_time_of_day",
    "ensemble_burst",
    "ensemble_seasonal",
    "ensemble_window_forest",
];

/// Name recorded on every anomaly this detector raises.
pub const DETECTOR_NAME: &str = "seasonal_residual";
/// Name recorded on anomalies of a host's isolation forest.
pub const ENTITY_DETECTOR_NAME: &str = "entity_forest";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SeriesState {
    bucket: i64,
    sum: f64,
    count: u32,
    model: SeriesModel,
    /// The same streaming ensemble that scores files, on this series' buckets.
    ensemble: StreamScorer,
}

/// The detect core: per partition, per series, bucket and score. Pure and deterministic.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    stream_cfg: StreamConfig,
    bucket_ms: i64,
    partitions: HashMap<u32, HashMap<SeriesId, SeriesState>>,
    /// Per partition, the hosts' isolation forests.
    entities: HashMap<u32, HashMap<String, EntityState>>,
}

/// The same checkpoint, borrowed, for writing.
#[derive(serde::Serialize)]
struct PartitionStateRef<'a> {
    series: Vec<(&'a SeriesId, &'a SeriesState)>,
    entities: Vec<(&'a String, &'a EntityState)>,
}

/// A partition's checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct PartitionState {
    series: Vec<(SeriesId, SeriesState)>,
    #[serde(default)]
    entities: Vec<(String, EntityState)>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Self {
        let bucket_ms = (cfg.bucket_secs.max(1) * 1000) as i64;
        Detector {
            cfg,
            stream_cfg: StreamConfig::default(),
            bucket_ms,
            partitions: HashMap::new(),
            entities: HashMap::new(),
        }
    }

    /// The learned state of one partition's series, for a checkpoint.
    pub fn export_partition(&self, partition: u32) -> Vec<u8> {
        // Serialised by reference: a checkpoint must not copy the partition's state first.
        let mut series: Vec<(&SeriesId, &SeriesState)> = self
            .partitions
            .get(&partition)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        let mut entities: Vec<(&String, &EntityState)> = self
            .entities
            .get(&partition)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        // Sorted, so equal states give equal bytes.
        series.sort_by_key(|(id, _)| **id);
        entities.sort_by(|a, b| a.0.cmp(b.0));
        let state = PartitionStateRef { series, entities };
        serde_json::to_vec(&state).expect("detector state serialises")
    }

    /// Replaces one partition's state with a checkpoint's.
    pub fn import_partition(&mut self, partition: u32, state: &[u8]) -> Result<(), String> {
        // Checkpoints written before entities existed are a bare list of series.
        let state: PartitionState = match serde_json::from_slice(state) {
            Ok(s) => s,
            Err(e) => PartitionState {
                series: serde_json::from_slice(state).map_err(|_| e.to_string())?,
                entities: Vec::new(),
            },
        };
        self.partitions
            .insert(partition, state.series.into_iter().collect());
        self.entities
            .insert(partition, state.entities.into_iter().collect());
        Ok(())
    }

    /// Forgets one partition (it moved to another process).
    pub fn drop_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
        self.entities.remove(&partition);
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Feeds one point. A point that opens a new bucket closes its series' previous bucket,
    /// which is scored; an anomaly is returned when that bucket is one.
    pub fn process(&mut self, partition: u32, p: &MetricPoint) -> Vec<Anomaly> {
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
                    ensemble: StreamScorer::staggered(&self.stream_cfg, id),
                },
            );
            return Vec::new();
        };
        if bucket == st.bucket {
            st.sum += p.value;
            st.count += 1;
            return Vec::new();
        }
        if bucket < st.bucket {
            LATE.inc();
            return Vec::new();
        }
        let closed = st.bucket;
        let closed_ts = closed * self.bucket_ms;
        let mean = st.sum / f64::from(st.count);
        let scored = st.model.update(&self.cfg, closed_ts, mean);
        let ens = st.ensemble.update(&self.stream_cfg, closed_ts, mean);
        st.bucket = bucket;
        st.sum = p.value;
        st.count = 1;
        let mut out = Vec::new();
        // The host's forest sees this bucket beside its other metrics' buckets.
        if let Some(key) = p.entity() {
            let entities = self.entities.entry(partition).or_default();
            let e = entities
                .entry(key.clone())
                .or_insert_with(|| EntityState::new(fnv1a(key.as_bytes())));
            if let Some(i) = e.member(id, &p.name, &p.labels)
                && let Some(f) = e.observe(i, closed, mean, self.cfg.entity_threshold)
            {
                out.extend(self.entity_anomaly(partition, p, &key, &f));
            }
        }
        let kind = match scored.emit {
            Some(k) => k,
            // The ensemble sees what the band does not: a broken daily pattern, a new
            // pattern of values, a burst of moderate surprises.
            None if ens.score >= self.cfg.ensemble_threshold => {
                if ens.parts[0] >= ens.parts[1..].iter().copied().fold(0.0, f64::max) {
                    AnomalyKind::Point
                } else {
                    AnomalyKind::Trend
                }
            }
            None => return out,
        };
        out.push(self.anomaly(p, id, closed_ts, &scored, &ens, kind));
        out
    }

    /// The anomaly of a host's unusual row, raised on the member that contributed most.
    fn entity_anomaly(
        &self,
        partition: u32,
        p: &MetricPoint,
        key: &str,
        f: &Finding,
    ) -> Option<Anomaly> {
        let e = self.entities.get(&partition)?.get(key)?;
        let share = |i: usize| f.contributions.get(i).copied().unwrap_or(0.0);
        let top = (0..e.members.len())
            .filter(|i| f.cells[*i].is_some())
            .max_by(|a, b| {
                share(*a).total_cmp(&share(*b)).then_with(|| {
                    let z = |i: usize| f.cells[i].map_or(0.0, |c| c.z.abs());
                    z(*a).total_cmp(&z(*b))
                })
            })?;
        let (m, c) = (&e.members[top], f.cells[top]?);
        let ts_ms = f.bucket * self.bucket_ms;
        let host = key.split_once('/').map_or(key, |(_, h)| h);
        let parts: Vec<String> = e
            .members
            .iter()
            .zip(&f.cells)
            .filter_map(|(m, c)| c.map(|c| format!("{} {:+.1}σ", m.name, c.z)))
            .collect();
        Some(Anomaly {
            id: Anomaly::make_id(m.id, ts_ms, ENTITY_DETECTOR_NAME),
            tenant: p.tenant.clone(),
            series_id: m.id,
            name: m.name.clone(),
            labels: m.labels.clone(),
            ts: Utc.timestamp_millis_opt(ts_ms).single().unwrap_or_default(),
            observed: c.value,
            expected: c.expected,
            lower: c.expected - 3.0 * c.sd,
            upper: c.expected + 3.0 * c.sd,
            score: (f.surprisal / 300.0).clamp(0.0, 1.0),
            severity: Severity::Warning,
            kind: AnomalyKind::Multivariate,
            detector: ENTITY_DETECTOR_NAME.into(),
            explanation: Explanation {
                detectors: vec![DetectorPart {
                    detector: ENTITY_DETECTOR_NAME.into(),
                    score: f.score,
                    weight: 1.0,
                }],
                features: e
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| seismo_schemas::FeatureContribution {
                        feature: m.name.clone(),
                        weight: share(i),
                    })
                    .collect(),
                seasonal_periods_s: Vec::new(),
                z_score: c.z,
                summary: format!(
                    "host {host}: an unusual combination of its metrics ({}); tail probability 1e-{:.1}",
                    parts.join(", "),
                    f.surprisal
                ),
            },
        })
    }

    fn anomaly(
        &self,
        p: &MetricPoint,
        id: SeriesId,
        ts_ms: i64,
        s: &Scored,
        ens: &StreamScore,
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
            score: s.score.max(ens.score),
            severity,
            kind,
            detector: DETECTOR_NAME.into(),
            explanation: Explanation {
                detectors: std::iter::once(DetectorPart {
                    detector: DETECTOR_NAME.into(),
                    score: s.score,
                    weight: 1.0,
                })
                .chain(
                    ENSEMBLE_PARTS
                        .iter()
                        .zip(ens.parts)
                        .map(|(name, surprisal)| {
                            DetectorPart {
                                detector: (*name).into(),
                                // Surprisal on the file scorer's 0..1 scale (−log10 p / 300).
                                score: surprisal / 300.0,
                                weight: if surprisal >= ens.surprisal && surprisal > 0.0 {
                                    1.0
                                } else {
                                    0.0
                                },
                            }
                        }),
                )
                .collect(),
                features: Vec::new(),
                // The band's daily season, then the periods the ensemble's seasonal
                // baseline detected (in buckets, so in seconds at the bucket width).
                seasonal_periods_s: s
                    .seasonal
                    .then_some(self.cfg.season_secs)
                    .into_iter()
                    .chain(ens.seasonal.iter().flat_map(|v| {
                        v.periods
                            .into_iter()
                            .filter(|p| *p > 0)
                            .map(|p| u64::from(p) * self.cfg.bucket_secs.max(1))
                    }))
                    .collect(),
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

/// FNV-1a, for a stable seed per entity.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    /// Partitions whose state came from a checkpoint.
    pub restored_partitions: u64,
    /// Redelivered records that the restored state already contained.
    pub replayed_skipped: u64,
}

/// Where and how often detect checkpoints its per-partition state (distributed mode).
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// The consumer group whose partitions the checkpoints belong to.
    pub group: String,
    pub interval: Duration,
}

/// Position of one input partition.
#[derive(Debug, Default)]
struct PartitionPos {
    /// First offset the state has not seen; records below it are replays.
    next_offset: i64,
    /// Points folded into the state over the partition's life.
    records: u64,
    /// The last record folded in since the previous checkpoint, to commit its offset.
    last: Option<Message>,
    /// Set after seeking back to `next_offset`: records beyond it, fetched before the
    /// seek took effect, are dropped until the partition restarts at `next_offset`.
    rewinding: bool,
    /// Seeks made for this partition; bounded, in case the records are gone (retention).
    seeks: u32,
}

/// Seeks per partition before a gap is accepted (records deleted by retention).
const MAX_SEEKS: u32 = 3;

/// Runs detect until its input ends: score every point of `seismo.points`, store the
/// anomalies, publish them keyed by correlation scope, then commit.
///
/// With `checkpointing`, the learned state of each input partition is saved with the
/// offset it has reached, and input offsets are committed only up to saved checkpoints.
/// A process that takes over a partition (restart, rebalance) restores the state and
/// skips redelivered records the state already contains, so baselines survive and no
/// point is learned twice. Anomalies are deterministic, so a replay rewrites the same ids.
pub async fn run(
    cfg: DetectConfig,
    scope_label: Option<String>,
    mut input: Box<dyn Consumer>,
    output: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    batch_records: usize,
    checkpointing: Option<Checkpointing>,
) -> Result<DetectStats, DetectError> {
    let mut det = Detector::new(cfg);
    let mut stats = DetectStats::default();
    let mut pos: HashMap<u32, PartitionPos> = HashMap::new();
    let mut last_checkpoint = Instant::now();
    while let Some(batch) = input.next_batch(batch_records).await {
        let batch = batch?;
        let mut anomalies = Vec::new();
        for m in &batch {
            if let Some(ck) = &checkpointing {
                let p = match pos.entry(m.partition) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let restored = restore(&mut det, &*store, ck, m).await?;
                        stats.restored_partitions += u64::from(restored.records > 0);
                        e.insert(restored)
                    }
                };
                if p.rewinding {
                    if m.offset > p.next_offset {
                        continue;
                    }
                    p.rewinding = false;
                }
                if m.offset < p.next_offset {
                    stats.replayed_skipped += 1;
                    REPLAYED.inc();
                    continue;
                }
                if m.offset > p.next_offset {
                    // The state stops before this record (a checkpoint restored while the
                    // fetch position was ahead of it): fetch the missing records again
                    // rather than learn with a hole.
                    if p.seeks < MAX_SEEKS {
                        p.seeks += 1;
                        p.rewinding = true;
                        tracing::info!(
                            partition = m.partition,
                            from = p.next_offset,
                            at = m.offset,
                            "rewinding to the checkpoint"
                        );
                        input.seek(&m.topic, m.partition, p.next_offset)?;
                        continue;
                    }
                    tracing::warn!(
                        partition = m.partition,
                        from = p.next_offset,
                        at = m.offset,
                        "records missing from the partition (retention?); continuing after the gap"
                    );
                }
                p.next_offset = m.offset + 1;
                p.last = Some(m.clone());
            }
            let mut folded = 0;
            for point in seismo_schemas::points_of_record(&m.payload) {
                match point {
                    Ok(p) => {
                        folded += 1;
                        anomalies.extend(det.process(m.partition, &p));
                    }
                    Err(e) => {
                        BAD.inc();
                        tracing::warn!(partition = m.partition, offset = m.offset, error = %e, "skipping a line that is not a point");
                    }
                }
            }
            stats.points += folded;
            if let Some(p) = pos.get_mut(&m.partition) {
                p.records += folded;
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
        // Revocations apply after the batch: its records were fetched while the
        // partitions were ours and continue our state; state kept past a revocation
        // could be stale when the partition comes back.
        for p in input.take_revoked() {
            det.drop_partition(p);
            pos.remove(&p);
        }
        match &checkpointing {
            None => input.commit(&batch).await?,
            Some(ck) if last_checkpoint.elapsed() >= ck.interval => {
                checkpoint(&det, &mut pos, &*store, ck, &mut *input, &*output).await?;
                last_checkpoint = Instant::now();
            }
            Some(_) => {}
        }
    }
    if let Some(ck) = &checkpointing {
        checkpoint(&det, &mut pos, &*store, ck, &mut *input, &*output).await?;
    }
    output.flush().await?;
    Ok(stats)
}

/// Loads the checkpoint of `m`'s partition into the detector, if there is one.
async fn restore(
    det: &mut Detector,
    store: &dyn Store,
    ck: &Checkpointing,
    m: &Message,
) -> Result<PartitionPos, DetectError> {
    let Some(cp) = store
        .load_checkpoint(&ck.group, &m.topic, m.partition)
        .await?
    else {
        return Ok(PartitionPos::default());
    };
    if let Err(e) = det.import_partition(m.partition, &cp.state) {
        // Unreadable state (say, from an incompatible version): learn afresh rather than
        // stop the partition; skipping stays right because it depends only on offsets.
        tracing::error!(partition = m.partition, error = %e, "checkpoint unreadable; starting this partition afresh");
    } else {
        RESTORED.inc();
        tracing::info!(
            partition = m.partition,
            next_offset = cp.next_offset,
            series = det.partitions.get(&m.partition).map_or(0, HashMap::len),
            "restored detector state"
        );
    }
    Ok(PartitionPos {
        next_offset: cp.next_offset,
        records: cp.records,
        ..PartitionPos::default()
    })
}

/// Saves the state of every partition that moved since the last checkpoint, then commits
/// the input up to it. Anomalies are already durable (stored and acknowledged).
async fn checkpoint(
    det: &Detector,
    pos: &mut HashMap<u32, PartitionPos>,
    store: &dyn Store,
    ck: &Checkpointing,
    input: &mut dyn Consumer,
    output: &dyn Producer,
) -> Result<(), DetectError> {
    let moved: Vec<u32> = pos
        .iter()
        .filter(|(_, p)| p.last.is_some())
        .map(|(k, _)| *k)
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    output.flush().await?;
    let mut by_topic: HashMap<String, Vec<Checkpoint>> = HashMap::new();
    let mut lasts = Vec::new();
    for partition in moved {
        let p = pos.get_mut(&partition).expect("listed above");
        let last = p.last.take().expect("filtered on");
        by_topic
            .entry(last.topic.clone())
            .or_default()
            .push(Checkpoint {
                partition,
                next_offset: p.next_offset,
                records: p.records,
                state: det.export_partition(partition),
            });
        lasts.push(last);
    }
    for (topic, cps) in &by_topic {
        store.save_checkpoints(&ck.group, topic, cps).await?;
    }
    input.commit(&lasts).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, host: &str, ts: i64, value: f64) -> MetricPoint {
        MetricPoint {
            tenant: "default".into(),
            name: name.into(),
            labels: [("host".to_string(), host.to_string())].into(),
            ts,
            value,
        }
    }

    #[test]
    fn a_host_whose_metrics_rise_together_gets_one_multivariate_anomaly() {
        // Three metrics of host h1 with independent noise; for ten buckets from 900 all
        // three are 3 sd up at once: no single value is remarkable for its series (a tail
        // near 1e-3), the three together are. The host raises it once, during the episode.
        let mut det = Detector::new(DetectConfig::default());
        let mut rng = crate::Rng::new(3);
        let mut noise = move || (0..6).map(|_| rng.f64()).sum::<f64>() * 1.414 - 4.243;
        let names = ["cpu", "load", "latency"];
        let mut found = Vec::new();
        let mut checkpoint = None;
        for b in 0..1000i64 {
            if b == 500 {
                checkpoint = Some(det.export_partition(0));
            }
            for name in names {
                let v = 50.0 + 5.0 * (noise() + if (900..910).contains(&b) { 3.0 } else { 0.0 });
                found.extend(det.process(0, &point(name, "h1", b * 60_000, v)));
            }
        }
        let multi: Vec<&Anomaly> = found
            .iter()
            .filter(|a| a.kind == AnomalyKind::Multivariate)
            .collect();
        assert_eq!(multi.len(), 1, "{multi:#?}");
        let a = multi[0];
        let bucket = a.ts.timestamp_millis() / 60_000;
        assert!((900..910).contains(&bucket), "raised at bucket {bucket}");
        assert_eq!(a.detector, ENTITY_DETECTOR_NAME);
        assert!(
            a.explanation.summary.contains("host h1"),
            "{}",
            a.explanation.summary
        );
        let names_seen: Vec<&str> = a
            .explanation
            .features
            .iter()
            .map(|f| f.feature.as_str())
            .collect();
        assert_eq!(names_seen, names);

        // A checkpoint restores the host's forest: a process that resumes from it raises
        // the same anomaly.
        let mut other = Detector::new(DetectConfig::default());
        other.import_partition(0, &checkpoint.unwrap()).unwrap();
        let mut again = Vec::new();
        let mut rng = crate::Rng::new(3);
        let mut noise = move || (0..6).map(|_| rng.f64()).sum::<f64>() * 1.414 - 4.243;
        for b in 0..1000i64 {
            for name in names {
                let v = 50.0 + 5.0 * (noise() + if (900..910).contains(&b) { 3.0 } else { 0.0 });
                if b >= 500 {
                    again.extend(other.process(0, &point(name, "h1", b * 60_000, v)));
                }
            }
        }
        let ids = |v: &[Anomaly]| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&again), ids(&found));
    }

    #[test]
    fn checkpoints_from_before_entities_still_restore() {
        let mut det = Detector::new(DetectConfig::default());
        for b in 0..10 {
            det.process(0, &point("cpu", "h1", b * 60_000, 1.0));
        }
        let new = det.export_partition(0);
        let state: PartitionState = serde_json::from_slice(&new).unwrap();
        let old = serde_json::to_vec(&state.series).unwrap();
        let mut other = Detector::new(DetectConfig::default());
        other.import_partition(0, &old).unwrap();
        assert_eq!(other.series(), 1);
    }
}
