//! The detect core: buckets a partitioned point stream into per-series models and host
//! forests, assembles anomalies with their explanations, and keeps its state per partition
//! so it can be checkpointed entry by entry.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{TimeZone, Utc};
use prometheus::{IntCounter, register_int_counter};
use seismo_schemas::{
    Anomaly, AnomalyKind, BandPoint, DetectorPart, Explanation, MetricPoint, SeriesId, Severity,
};

use crate::entity::{EntityState, Finding, MAX_MEMBERS};
use crate::{AlarmRun, DetectConfig, Scored, SeriesModel, StreamScore, StreamScorer};

static LATE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_late_points_total",
        "Points older than their series' open bucket (stored, but not scored)"
    )
    .expect("metric")
});
static OUT_OF_ORDER: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_out_of_order_points_total",
        "Points not newer than their series' last point (a redelivered duplicate, or a producer out of order): stored, but not scored again"
    )
    .expect("metric")
});
static SATURATED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_saturated_values_total",
        "Values beyond the detectors' range (|v| > 1e150), scored as the range's edge"
    )
    .expect("metric")
});

/// Names of the streaming ensemble's detectors in explanations, in `StreamScore::parts`
/// order; the one that set the bucket's surprisal has weight 1.
pub const ENSEMBLE_PARTS: [&str; crate::PARTS] = [
    "ensemble_global",
    "ensemble_novelty",
    "ensemble_time_of_day",
    "ensemble_burst",
    "ensemble_seasonal",
];

/// Name recorded on every anomaly this detector raises.
pub const DETECTOR_NAME: &str = "seasonal_residual";
/// Name recorded on anomalies of a host's isolation forest.
pub const ENTITY_DETECTOR_NAME: &str = "entity_forest";

/// Largest magnitude the detectors work with. Squares of it (variances) stay finite and
/// sums of many of them too; telemetry beyond it is saturated (and counted), never allowed
/// to turn a model's statistics into infinities. Stored raw values are untouched.
pub const MAX_MAGNITUDE: f64 = 1e150;

/// A series that has sent nothing for this long (in its partition's event time) no
/// longer holds the partition's watermark back.
const WATERMARK_IDLE_MS: i64 = 3_600_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SeriesState {
    bucket: i64,
    sum: f64,
    count: u32,
    /// Time of the newest point folded in: anything not newer is a duplicate (a replay).
    last_ts: i64,
    model: SeriesModel,
    /// The same streaming ensemble that scores files, on this series' buckets: it alone
    /// decides alarms.
    ensemble: StreamScorer,
    alarm: AlarmRun,
    /// Who the series is, to raise its anomaly when a bucket closes without a new point.
    series: SeriesName,
}

/// A series' identity (tenant, name, labels), kept so event time alone can close its
/// bucket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SeriesName {
    tenant: String,
    name: String,
    labels: seismo_schemas::Labels,
}

impl SeriesName {
    fn of(p: &MetricPoint) -> Self {
        SeriesName {
            tenant: p.tenant.clone(),
            name: p.name.clone(),
            labels: p.labels.clone(),
        }
    }

    fn point(&self) -> MetricPoint {
        MetricPoint {
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            ts: 0,
            value: 0.0,
        }
    }
}

/// Event-time progress of one partition.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct PartitionMeta {
    /// Newest point time seen.
    max_ts: i64,
    /// The last watermark announced: no anomaly will be merged before it.
    published_wm: i64,
}

impl Default for PartitionMeta {
    fn default() -> Self {
        PartitionMeta {
            max_ts: i64::MIN,
            published_wm: i64::MIN,
        }
    }
}

/// What changed in a partition since its last checkpoint.
#[derive(Debug, Default)]
struct Dirty {
    series: HashSet<SeriesId>,
    entities: HashSet<String>,
    meta: bool,
}

/// The detect core: per partition, per series, bucket and score. Pure and deterministic.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectConfig,
    bucket_ms: i64,
    /// How far behind its partition's newest point a bucket may still take points.
    lateness_ms: i64,
    partitions: HashMap<u32, HashMap<SeriesId, SeriesState>>,
    /// Per partition, the hosts' isolation forests.
    entities: HashMap<u32, HashMap<String, EntityState>>,
    meta: HashMap<u32, PartitionMeta>,
    dirty: HashMap<u32, Dirty>,
    /// Points skipped as not newer than their series' last one (replays, disorder).
    pub repeated: u64,
    /// Expected bands sampled since the last `take_bands` (`band_every_secs`).
    bands: Vec<BandPoint>,
    band_every_ms: i64,
}

/// Keys of a partition's checkpoint entries.
const KEY_SERIES: u8 = b's';
const KEY_ENTITY: u8 = b'e';
const KEY_META: u8 = b'm';

fn cfg_band_every(cfg: &DetectConfig) -> i64 {
    i64::try_from(cfg.band_every_secs).unwrap_or(0)
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("detector state encodes")
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Self {
        let bucket_ms = (cfg.bucket_secs.max(1) * 1000) as i64;
        let lateness_ms = i64::try_from(cfg.allowed_lateness_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        let band_every_ms = cfg_band_every(&cfg).saturating_mul(1000);
        Detector {
            cfg,
            bucket_ms,
            lateness_ms,
            partitions: HashMap::new(),
            entities: HashMap::new(),
            meta: HashMap::new(),
            dirty: HashMap::new(),
            repeated: 0,
            bands: Vec::new(),
            band_every_ms,
        }
    }

    /// The expected bands sampled since the last call, to be stored.
    pub fn take_bands(&mut self) -> Vec<BandPoint> {
        std::mem::take(&mut self.bands)
    }

    /// Encoded state entries of `partition` changed since the last call (series, host
    /// forests, event-time progress), for an incremental checkpoint.
    pub fn take_dirty(&mut self, partition: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(d) = self.dirty.remove(&partition) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(d.series.len() + d.entities.len() + 1);
        if let Some(series) = self.partitions.get(&partition) {
            let mut ids: Vec<SeriesId> = d.series.into_iter().collect();
            ids.sort_unstable();
            for id in ids {
                if let Some(st) = series.get(&id) {
                    let mut key = vec![KEY_SERIES];
                    key.extend_from_slice(&id.to_be_bytes());
                    out.push((key, encode(st)));
                }
            }
        }
        if let Some(entities) = self.entities.get(&partition) {
            let mut keys: Vec<String> = d.entities.into_iter().collect();
            keys.sort_unstable();
            for k in keys {
                if let Some(e) = entities.get(&k) {
                    let mut key = vec![KEY_ENTITY];
                    key.extend_from_slice(k.as_bytes());
                    out.push((key, encode(e)));
                }
            }
        }
        if d.meta
            && let Some(m) = self.meta.get(&partition)
        {
            out.push((vec![KEY_META], encode(m)));
        }
        out
    }

    /// Replaces one partition's state with checkpoint entries.
    pub fn restore(
        &mut self,
        partition: u32,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut series = HashMap::new();
        let mut entities = HashMap::new();
        let mut meta = PartitionMeta::default();
        for (key, value) in entries {
            let bad = |e: postcard::Error| format!("checkpoint entry {key:?}: {e}");
            match key.split_first() {
                Some((&KEY_SERIES, id)) if id.len() == 8 => {
                    let id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
                    series.insert(
                        id,
                        postcard::from_bytes::<SeriesState>(&value).map_err(bad)?,
                    );
                }
                Some((&KEY_ENTITY, host)) => {
                    let host = String::from_utf8(host.to_vec()).map_err(|e| e.to_string())?;
                    // The forest itself is not stored: it regrows from the stored rows.
                    entities.insert(
                        host,
                        postcard::from_bytes::<EntityState>(&value).map_err(bad)?,
                    );
                }
                Some((&KEY_META, [])) => meta = postcard::from_bytes(&value).map_err(bad)?,
                _ => return Err(format!("unknown checkpoint key {key:?}")),
            }
        }
        self.partitions.insert(partition, series);
        self.entities.insert(partition, entities);
        self.meta.insert(partition, meta);
        self.dirty.remove(&partition);
        Ok(())
    }

    /// Whether this detector holds state of `partition`.
    pub fn has_partition(&self, partition: u32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// The newest watermark of `partition` not yet announced, if it moved: the start of
    /// the oldest open bucket among the partition's active series (those that sent a point
    /// within the last hour of its event time). No anomaly of the partition will be older,
    /// except one of a series that comes back after being idle, whose merge time is then
    /// the watermark (see [`Detector::published_watermark`]).
    pub fn advance_watermark(&mut self, partition: u32) -> Option<i64> {
        let meta = self.meta.get_mut(&partition)?;
        let series = self.partitions.get(&partition)?;
        let horizon = meta.max_ts.saturating_sub(WATERMARK_IDLE_MS);
        let wm = series
            .values()
            .filter(|s| s.last_ts >= horizon)
            .map(|s| s.bucket * self.bucket_ms)
            .min()?;
        if wm <= meta.published_wm {
            return None;
        }
        meta.published_wm = wm;
        self.dirty.entry(partition).or_default().meta = true;
        Some(wm)
    }

    /// The last watermark announced for `partition`.
    pub fn published_watermark(&self, partition: u32) -> Option<i64> {
        self.meta
            .get(&partition)
            .map(|m| m.published_wm)
            .filter(|w| *w > i64::MIN)
    }

    /// Forgets one partition (it moved to another process).
    pub fn drop_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
        self.entities.remove(&partition);
        self.meta.remove(&partition);
        self.dirty.remove(&partition);
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Feeds one point. A point that opens a new bucket closes its series' previous bucket,
    /// which is scored; an anomaly is returned when that bucket is one.
    pub fn process(&mut self, partition: u32, p: &MetricPoint) -> Vec<Anomaly> {
        let mut out = self.process_inner(partition, p);
        for a in &mut out {
            if a.make_finite() {
                tracing::warn!(
                    series = format!("{:016x}", a.series_id),
                    "an anomaly held non-finite numbers; clamped"
                );
            }
        }
        out
    }

    fn process_inner(&mut self, partition: u32, p: &MetricPoint) -> Vec<Anomaly> {
        let id = p.series_id();
        let bucket = p.ts.div_euclid(self.bucket_ms);
        let value = if p.value.abs() > MAX_MAGNITUDE {
            SATURATED.inc();
            p.value.clamp(-MAX_MAGNITUDE, MAX_MAGNITUDE)
        } else {
            p.value
        };
        let meta = self.meta.entry(partition).or_default();
        let before = meta.max_ts;
        meta.max_ts = meta.max_ts.max(p.ts);
        let now = meta.max_ts;
        // Event time moved into a new bucket: close the buckets it left more than the
        // allowed lateness behind, also of series that sent nothing since (their last
        // bucket would otherwise wait for a point that may never come).
        let mut out = if before != i64::MIN
            && now.div_euclid(self.bucket_ms) > before.div_euclid(self.bucket_ms)
        {
            self.close_until(partition, now.saturating_sub(self.lateness_ms))
        } else {
            Vec::new()
        };
        let dirty = self.dirty.entry(partition).or_default();
        dirty.meta = true;
        dirty.series.insert(id);
        let series = self.partitions.entry(partition).or_default();
        let Some(st) = series.get_mut(&id) else {
            series.insert(
                id,
                SeriesState {
                    bucket,
                    sum: value,
                    count: 1,
                    last_ts: p.ts,
                    model: SeriesModel::new(&self.cfg),
                    ensemble: StreamScorer::staggered(&self.cfg.stream, id),
                    alarm: AlarmRun::default(),
                    series: SeriesName::of(p),
                },
            );
            return out;
        };
        if p.ts <= st.last_ts {
            OUT_OF_ORDER.inc();
            self.repeated += 1;
            return out;
        }
        st.last_ts = p.ts;
        if bucket == st.bucket {
            st.sum += value;
            st.count += 1;
            return out;
        }
        if bucket < st.bucket {
            // Its bucket was closed (scored) already: stored, counted, not scored.
            LATE.inc();
            return out;
        }
        let open = st.count > 0;
        if open {
            out.extend(self.close_bucket(partition, id, p));
        }
        let st = self
            .partitions
            .get_mut(&partition)
            .and_then(|s| s.get_mut(&id))
            .expect("series state exists");
        st.bucket = bucket;
        st.sum = value;
        st.count = 1;
        out
    }

    /// Closes and scores the open bucket of every series of `partition` that ends at or
    /// before `horizon` (UTC ms), in series order (deterministic: host forests see their
    /// members in the same order on every run).
    fn close_until(&mut self, partition: u32, horizon: i64) -> Vec<Anomaly> {
        let Some(series) = self.partitions.get(&partition) else {
            return Vec::new();
        };
        let bucket_ms = self.bucket_ms;
        let mut due: Vec<(SeriesId, MetricPoint)> = series
            .iter()
            .filter(|(_, s)| s.count > 0 && (s.bucket + 1).saturating_mul(bucket_ms) <= horizon)
            .map(|(id, s)| (*id, s.series.point()))
            .collect();
        due.sort_unstable_by_key(|d| d.0);
        let mut out = Vec::new();
        for (id, p) in due {
            out.extend(self.close_bucket(partition, id, &p));
        }
        // Hosts whose row's time is over are scored with the members that reported.
        let before = horizon.div_euclid(bucket_ms);
        let mut keys: Vec<String> = self
            .entities
            .get(&partition)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort_unstable();
        for key in keys {
            let found = self
                .entities
                .get_mut(&partition)
                .and_then(|m| m.get_mut(&key))
                .map(|e| e.finish_due(before, self.cfg.entity_threshold, &self.cfg.stream))
                .unwrap_or_default();
            if !found.is_empty() {
                self.dirty
                    .entry(partition)
                    .or_default()
                    .entities
                    .insert(key.clone());
            }
            for f in found {
                out.extend(self.entity_anomaly(partition, &key, &f));
            }
        }
        for a in &mut out {
            a.make_finite();
        }
        out
    }

    /// Closes every open bucket of `partition` that ended at or before `horizon` (UTC ms;
    /// `i64::MAX` closes them all): for a stream that went quiet, and at the end of input.
    pub fn flush(&mut self, partition: u32, horizon: i64) -> Vec<Anomaly> {
        self.close_until(partition, horizon)
    }

    /// The allowed lateness, in ms.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
    }

    /// Partitions this detector holds state of, in order.
    pub fn partitions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.partitions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Scores a series' open bucket and leaves it closed: the next point of the series
    /// opens a later bucket; one of this bucket or older is late. `p` names the series.
    fn close_bucket(&mut self, partition: u32, id: SeriesId, p: &MetricPoint) -> Vec<Anomaly> {
        let Some(st) = self
            .partitions
            .get_mut(&partition)
            .and_then(|s| s.get_mut(&id))
        else {
            return Vec::new();
        };
        if st.count == 0 {
            return Vec::new();
        }
        let closed = st.bucket;
        let closed_ts = closed * self.bucket_ms;
        let mean = st.sum / f64::from(st.count);
        let scored = st.model.update(&self.cfg, closed_ts, mean);
        let ens = st.ensemble.update(&self.cfg.stream, closed_ts, mean);
        // Sampled on the event-time grid, so every series' rows line up and a replay
        // writes the same rows again; nothing while the band is still being learned.
        if self.band_every_ms > 0
            && closed_ts.rem_euclid(self.band_every_ms) == 0
            && self.cfg.warm(st.ensemble.observations())
        {
            self.bands.push(BandPoint {
                series_id: id,
                ts: chrono::DateTime::from_timestamp_millis(closed_ts).unwrap_or_default(),
                expected: scored.expected,
                lower: scored.lower,
                upper: scored.upper,
            });
        }
        st.bucket = closed + 1;
        st.sum = 0.0;
        st.count = 0;
        let dirty = self.dirty.entry(partition).or_default();
        dirty.series.insert(id);
        let mut out = Vec::new();
        // The host's forest sees this bucket beside its other metrics' buckets.
        if let Some(key) = p.entity() {
            dirty.entities.insert(key.clone());
            let entities = self.entities.entry(partition).or_default();
            let e = entities
                .entry(key.clone())
                .or_insert_with(|| EntityState::new(fnv1a(key.as_bytes())));
            let own = if self.cfg.warm(st.ensemble.observations()) {
                ens.surprisal
            } else {
                0.0
            };
            if let Some(i) = e.member(id, &p.name, &p.labels) {
                let found = e.observe(
                    i,
                    closed,
                    mean,
                    own,
                    self.cfg.entity_threshold,
                    &self.cfg.stream,
                );
                for f in found {
                    out.extend(self.entity_anomaly(partition, &key, &f));
                }
            }
        }
        let st = self
            .partitions
            .get_mut(&partition)
            .and_then(|s| s.get_mut(&id))
            .expect("series state exists");
        let raise = st.alarm.step(&self.cfg, st.ensemble.observations(), &ens);
        // The band has followed a deviation long enough to call it a new level: said
        // once, while the ensemble's alarm for it still runs.
        let shift = scored.emit == Some(AnomalyKind::LevelShift) && st.alarm.active();
        if !(raise || shift) {
            return out;
        }
        // What kind of change: a move to a new level, a value beyond the series' usual
        // range, or a change of pattern (novelty, time of day, burst, season) with
        // ordinary values.
        let kind = if shift {
            AnomalyKind::LevelShift
        } else if ens.parts[0] >= ens.parts[1..].iter().copied().fold(0.0, f64::max) {
            AnomalyKind::Point
        } else {
            AnomalyKind::Trend
        };
        out.push(self.anomaly(p, id, closed_ts, &scored, &ens, kind));
        out
    }

    /// The anomaly of a host's unusual row, raised on the member that contributed most.
    fn entity_anomaly(&self, partition: u32, key: &str, f: &Finding) -> Option<Anomaly> {
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
        let (tenant, host) = key.split_once('/').unwrap_or(("", key));
        let left_out = match e.left_out() {
            0 => String::new(),
            n => format!(
                "; {n} more of its series are left out (a host model takes its first {MAX_MEMBERS})"
            ),
        };
        let parts: Vec<String> = e
            .members
            .iter()
            .zip(&f.cells)
            .filter_map(|(m, c)| c.map(|c| format!("{} {:+.1}σ", m.name, c.z)))
            .collect();
        Some(Anomaly {
            id: Anomaly::make_id(m.id, ts_ms, ENTITY_DETECTOR_NAME),
            tenant: tenant.to_string(),
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
                    "host {host}: an unusual combination of its metrics ({}); tail probability 1e-{:.1}{left_out}",
                    parts.join(", "),
                    f.surprisal
                ),
                breach: None,
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
        let top = ens.parts.iter().copied().fold(0.0, f64::max);
        let severity = if ens.surprisal >= 2.0 * self.cfg.alarm_surprisal {
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
                                weight: if surprisal >= top && surprisal > 0.0 {
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
                breach: None,
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
        // Three metrics of host h1 with independent noise; for ten buckets from 4500 (past
        // the host's calibration warm-up) all
        // three are 3 sd up at once: no single value is remarkable for its series (a tail
        // near 1e-3), the three together are. The host raises it once, during the episode.
        let mut det = Detector::new(DetectConfig::default());
        let mut rng = crate::Rng::new(3);
        let mut noise = move || (0..6).map(|_| rng.f64()).sum::<f64>() * 1.414 - 4.243;
        let names = ["cpu", "load", "latency"];
        let mut found = Vec::new();
        let mut checkpoint = None;
        for b in 0..4600i64 {
            if b == 2000 {
                checkpoint = Some(det.take_dirty(0));
            }
            for name in names {
                let v = 50.0 + 5.0 * (noise() + if (4500..4510).contains(&b) { 3.0 } else { 0.0 });
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
        assert!((4500..4510).contains(&bucket), "raised at bucket {bucket}");
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
        other.restore(0, checkpoint.unwrap()).unwrap();
        let mut again = Vec::new();
        let mut rng = crate::Rng::new(3);
        let mut noise = move || (0..6).map(|_| rng.f64()).sum::<f64>() * 1.414 - 4.243;
        for b in 0..4600i64 {
            for name in names {
                let v = 50.0 + 5.0 * (noise() + if (4500..4510).contains(&b) { 3.0 } else { 0.0 });
                if b >= 2000 {
                    again.extend(other.process(0, &point(name, "h1", b * 60_000, v)));
                }
            }
        }
        let ids = |v: &[Anomaly]| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&again), ids(&found));
    }

    #[test]
    fn duplicates_are_not_learned_twice_and_huge_values_stay_finite() {
        let mut once = Detector::new(DetectConfig::default());
        let mut twice = Detector::new(DetectConfig::default());
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..600i64 {
            let v = if i == 500 {
                f64::MAX
            } else {
                10.0 + (i % 7) as f64
            };
            let p = point("cpu", "h1", i * 30_000, v);
            a.extend(once.process(0, &p));
            b.extend(twice.process(0, &p));
            // A redelivered point changes nothing.
            b.extend(twice.process(0, &p));
        }
        let ids = |v: &[Anomaly]| v.iter().map(|x| x.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert!(!a.is_empty(), "the saturated value is an anomaly");
        for x in &a {
            let json = serde_json::to_string(x).unwrap();
            let back: Anomaly = serde_json::from_str(&json).unwrap();
            assert!(
                back.observed.is_finite() && back.upper.is_finite(),
                "{json}"
            );
        }
    }

    #[test]
    fn the_watermark_follows_the_slowest_active_series() {
        let mut det = Detector::new(DetectConfig::default());
        for i in 0..10i64 {
            det.process(0, &point("a", "h1", i * 60_000, 1.0));
        }
        det.process(0, &point("b", "h2", 3 * 60_000, 1.0));
        assert_eq!(det.advance_watermark(0), Some(3 * 60_000));
        assert_eq!(det.advance_watermark(0), None, "announced once");
        // b goes quiet: after an hour of event time it no longer holds the partition back.
        for i in 10..70i64 {
            det.process(0, &point("a", "h1", i * 60_000, 1.0));
        }
        assert_eq!(det.advance_watermark(0), Some(69 * 60_000));
        let entries = det.take_dirty(0);
        let mut other = Detector::new(DetectConfig::default());
        other.restore(0, entries).unwrap();
        assert_eq!(other.published_watermark(0), Some(69 * 60_000));
        assert!(det.take_dirty(0).is_empty(), "nothing changed since");
    }
    /// Buckets of host h1's `a` (steady) and h2's `b`, whose bucket 300 spikes, up to 300.
    fn two_series_until_a_spike(det: &mut Detector) -> Vec<Anomaly> {
        let mut found = Vec::new();
        for i in 0..=300i64 {
            found.extend(det.process(0, &point("a", "h1", i * 60_000, 10.0 + (i % 5) as f64)));
            let v = if i == 300 {
                1000.0
            } else {
                10.0 + (i % 3) as f64
            };
            found.extend(det.process(0, &point("b", "h2", i * 60_000, v)));
        }
        found
    }

    #[test]
    fn a_quiet_series_last_bucket_is_scored_once_event_time_passes_its_lateness() {
        // Lateness 120 s: the spike's bucket [300, 301) closes when the partition's event
        // time reaches 303 minutes, though b sends nothing more.
        let mut det = Detector::new(DetectConfig::default());
        let mut found = two_series_until_a_spike(&mut det);
        assert!(
            found.iter().all(|a| a.name != "b"),
            "the bucket is still open"
        );
        found.extend(det.process(0, &point("a", "h1", 302 * 60_000, 11.0)));
        assert!(
            found.iter().all(|a| a.name != "b"),
            "still within its lateness"
        );
        found.extend(det.process(0, &point("a", "h1", 303 * 60_000, 11.0)));
        let b: Vec<&Anomaly> = found.iter().filter(|a| a.name == "b").collect();
        assert_eq!(b.len(), 1, "{b:#?}");
        assert_eq!(b[0].ts.timestamp_millis(), 300 * 60_000);
        assert_eq!(b[0].labels["host"], "h2");
        assert_eq!(b[0].observed, 1000.0);
        // The watermark no longer waits for b.
        assert_eq!(det.advance_watermark(0), Some(301 * 60_000));
        // A point for the closed bucket is late: not scored, nothing raised.
        let late = det.process(0, &point("b", "h2", 300 * 60_000 + 30_000, 5000.0));
        assert!(late.is_empty(), "{late:#?}");
        // b resumes in a later bucket as usual.
        det.process(0, &point("b", "h2", 304 * 60_000, 11.0));
        assert_eq!(det.advance_watermark(0), Some(303 * 60_000));
    }

    #[test]
    fn a_flush_scores_every_open_bucket_once_and_survives_a_checkpoint() {
        let mut det = Detector::new(DetectConfig::default());
        let found = two_series_until_a_spike(&mut det);
        assert!(found.iter().all(|a| a.ts.timestamp_millis() < 300 * 60_000));
        let entries = det.take_dirty(0);
        let flushed = det.flush(0, i64::MAX);
        assert_eq!(flushed.len(), 1, "{flushed:#?}");
        assert_eq!(flushed[0].name, "b");
        assert_eq!(flushed[0].ts.timestamp_millis(), 300 * 60_000);
        assert!(det.flush(0, i64::MAX).is_empty(), "closed once");
        // A flush up to a horizon leaves buckets that end after it open.
        let mut other = Detector::new(DetectConfig::default());
        other.restore(0, entries).unwrap();
        assert!(other.flush(0, 300 * 60_000).is_empty());
        let again = other.flush(0, 301 * 60_000);
        assert_eq!(
            again.iter().map(|a| &a.id).collect::<Vec<_>>(),
            vec![&flushed[0].id]
        );
        // The closed state is checkpointed: a restored detector counts the bucket's
        // stragglers as late too.
        let mut third = Detector::new(DetectConfig::default());
        third.restore(0, other.take_dirty(0)).unwrap();
        assert!(
            third
                .process(0, &point("b", "h2", 300 * 60_000 + 1, 9e9))
                .is_empty()
        );
        assert!(third.flush(0, i64::MAX).is_empty());
    }
}
