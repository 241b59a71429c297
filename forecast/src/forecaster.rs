//! The forecast stage's pure core: a bounded history per series, a staggered schedule, a CPU budget, and predicted breaches.
//!
//! Points are averaged into buckets; each series keeps at most `history_secs` of closed
//! buckets, a missing bucket kept as NaN and a gap longer than the whole history simply
//! emptying it (so a century of silence costs nothing). A series falls due once every
//! `every_secs`, at a phase set by its id, so thousands of series do not all forecast in
//! the same bucket; when the CPU budget is spent a due series waits for its next bucket.
//! A forecast is the models' choice for the usable end of the history (short gaps
//! bridged, see `select::regular_tail`), from the bucket now open to the horizon; each
//! `[[forecast.thresholds]]` rule watching the series then raises a `predicted` anomaly
//! when the forecast first crosses it, reports it again when its ETA moves, and
//! withdraws it when two forecasts in a row no longer cross.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use seismo_schemas::{
    Anomaly, AnomalyKind, DetectorPart, Explanation, Forecast, ForecastPoint, Labels, MetricPoint,
    PredictedBreach, SeriesId, Severity,
};
use serde::{Deserialize, Serialize};

use crate::ForecastConfig;
use crate::periods::{calendar_candidates, find_periods};
use crate::select::{Step, predict, regular_tail};
use crate::thresholds::Threshold;

/// The detector name predicted anomalies carry.
pub const DETECTOR: &str = "forecast";

/// A series silent for this long (of its partition's event time) no longer holds the
/// partition's watermark back, as in detect.
const WATERMARK_IDLE_MS: i64 = 3_600_000;

/// How far a partition's input has got, for its watermark.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Newest point time seen.
    max_ts: i64,
    /// The last watermark announced.
    published: Option<i64>,
}

/// One series' state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct History {
    tenant: String,
    name: String,
    labels: Labels,
    /// Closed buckets, oldest first, ending with the bucket before `open`; NaN where a
    /// bucket had no point.
    values: VecDeque<f32>,
    open: i64,
    sum: f64,
    count: u32,
    /// Time of the newest point folded in: anything not newer is a duplicate (a replay).
    last_ts: i64,
    /// The bucket at which the next forecast is due.
    next_due: i64,
    /// Thresholds with a standing prediction.
    standing: BTreeMap<String, Standing>,
    /// The bucket width `open` and `values` are in: a checkpoint taken at another width
    /// is not restored.
    bucket_ms: i64,
}

/// A prediction in force: the bucket its ETA falls in, as last reported, and how many
/// forecasts in a row have not crossed since.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Standing {
    eta: Option<i64>,
    misses: u32,
}

/// Forecasts in a row that must stop crossing before a prediction is withdrawn: one
/// forecast whose interval dips just under the limit is not an all-clear (with one, the
/// demo's leaking host flapped predicted → withdrawn → predicted within three hours).
const WITHDRAW_AFTER: u32 = 2;

/// Whether a new ETA differs enough from the reported one to report again: it appeared
/// or vanished, or moved by more than a bucket and a tenth of the time left.
fn eta_moved(reported: Option<i64>, now: Option<i64>, b: i64) -> bool {
    // A breach already under way has its ETA at the current bucket, which moves with
    // time: that is not news.
    match (reported.map(|r| r.max(b)), now.map(|n| n.max(b))) {
        (Some(r), Some(n)) => (n - r).abs() > 1.max((r - b) / 10),
        (None, None) => false,
        _ => true,
    }
}

/// What the core has done, for the stage's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForecastStats {
    /// Series forecasts made.
    pub forecasts: u64,
    /// Forecast rows (steps) produced.
    pub rows: u64,
    /// Forecasts put off because the CPU budget was spent.
    pub postponed: u64,
    pub predicted: u64,
    pub withdrawn: u64,
}

/// Milliseconds of forecasting allowed per second of wall time, as a token bucket
/// holding at most one second's worth.
#[derive(Debug)]
struct Budget {
    ms_per_sec: f64,
    tokens: f64,
    at: Instant,
}

#[expect(
    clippy::disallowed_methods,
    reason = "a CPU budget is wall time by nature: under load a forecast is postponed (counted in seismo_forecast_postponed_total), the one place this core depends on the machine"
)]
impl Budget {
    fn new(ms_per_sec: u64) -> Self {
        Budget {
            ms_per_sec: ms_per_sec as f64,
            tokens: ms_per_sec as f64,
            at: Instant::now(),
        }
    }

    fn available(&mut self) -> bool {
        if self.ms_per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + secs * self.ms_per_sec).min(self.ms_per_sec);
        self.tokens > 0.0
    }

    fn spend(&mut self, ms: f64) {
        if self.ms_per_sec > 0.0 {
            self.tokens -= ms;
        }
    }
}

/// The forecast core: histories per partition and series, and the schedule.
#[derive(Debug)]
pub struct Forecaster {
    cfg: ForecastConfig,
    bucket_ms: i64,
    /// Buckets between a series' forecasts.
    every: i64,
    cap: usize,
    candidates: Vec<usize>,
    series: HashMap<u32, HashMap<SeriesId, History>>,
    dirty: HashMap<u32, HashSet<SeriesId>>,
    progress: HashMap<u32, Progress>,
    budget: Budget,
    pub stats: ForecastStats,
}

/// What one point produced.
#[derive(Debug, Default)]
pub struct Produced {
    pub forecasts: Vec<Forecast>,
    pub anomalies: Vec<Anomaly>,
}

fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Forecaster {
    pub fn new(cfg: ForecastConfig) -> Self {
        let bucket_secs = cfg.bucket_secs.max(1);
        Forecaster {
            bucket_ms: (bucket_secs * 1000) as i64,
            every: (cfg.every_secs / bucket_secs).max(1) as i64,
            cap: cfg.capacity(),
            candidates: calendar_candidates(bucket_secs),
            budget: Budget::new(cfg.budget_ms_per_sec),
            cfg,
            series: HashMap::new(),
            dirty: HashMap::new(),
            progress: HashMap::new(),
            stats: ForecastStats::default(),
        }
    }

    /// Series held, over all partitions.
    pub fn series_count(&self) -> usize {
        self.series.values().map(HashMap::len).sum()
    }

    /// Bucket values held, over all series (their memory is four bytes each).
    pub fn values_held(&self) -> usize {
        self.series
            .values()
            .flat_map(HashMap::values)
            .map(|h| h.values.len())
            .sum()
    }

    /// Encoded histories of `partition` changed since the last call.
    pub fn take_dirty(&mut self, partition: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(ids) = self.dirty.remove(&partition) else {
            return Vec::new();
        };
        let Some(series) = self.series.get(&partition) else {
            return Vec::new();
        };
        let mut ids: Vec<SeriesId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let h = series.get(&id)?;
                Some((
                    id.to_be_bytes().to_vec(),
                    postcard::to_stdvec(h).expect("history encodes"),
                ))
            })
            .collect()
    }

    /// Replaces `partition`'s histories with checkpoint entries.
    pub fn restore(
        &mut self,
        partition: u32,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut series = HashMap::with_capacity(entries.len());
        for (k, v) in entries {
            let id: [u8; 8] = k
                .try_into()
                .map_err(|k| format!("bad checkpoint key {k:?}"))?;
            let mut h: History = postcard::from_bytes(&v).map_err(|e| e.to_string())?;
            if h.bucket_ms != self.bucket_ms {
                // forecast.bucket_secs changed: the history is in other units. The
                // series starts afresh; its standing predictions lapse in correlation.
                continue;
            }
            // A smaller history_secs since the checkpoint: keep the newest part.
            while h.values.len() > self.cap {
                h.values.pop_front();
            }
            series.insert(u64::from_be_bytes(id), h);
        }
        // The watermark is worked out again from the histories: what the checkpoint's
        // inputs had announced, give or take a batch (correlate keeps the highest).
        let max_ts = series.values().map(|h| h.last_ts).max().unwrap_or(i64::MIN);
        self.series.insert(partition, series);
        self.dirty.remove(&partition);
        self.progress.insert(
            partition,
            Progress {
                max_ts,
                published: None,
            },
        );
        self.advance_watermark(partition);
        Ok(())
    }

    /// Forgets a partition (it moved to another process).
    pub fn drop_partition(&mut self, partition: u32) {
        self.series.remove(&partition);
        self.dirty.remove(&partition);
        self.progress.remove(&partition);
    }

    /// Whether this forecaster holds series of `partition`.
    pub fn has_partition(&self, partition: u32) -> bool {
        self.series.contains_key(&partition)
    }

    /// The newest watermark of `partition` not yet announced, if it moved: the end of
    /// the oldest open bucket among the partition's active series (those with a point in
    /// the last hour of its event time). A series forecasts only when a point of a later
    /// bucket closes its open one, and a prediction carries that later bucket's time, so
    /// none will be older, except one of a series back from silence, whose merge time is
    /// then the watermark. Being a bucket ahead of detect's, it does not hold correlate
    /// back when the input stops.
    pub fn advance_watermark(&mut self, partition: u32) -> Option<i64> {
        let series = self.series.get(&partition)?;
        let progress = self.progress.get_mut(&partition)?;
        let horizon = progress.max_ts.saturating_sub(WATERMARK_IDLE_MS);
        let wm = series
            .values()
            .filter(|h| h.last_ts >= horizon)
            .map(|h| h.open.saturating_add(1).saturating_mul(self.bucket_ms))
            .min()?;
        if progress.published.is_some_and(|p| wm <= p) {
            return None;
        }
        progress.published = Some(wm);
        Some(wm)
    }

    /// The last watermark announced for `partition`.
    pub fn published_watermark(&self, partition: u32) -> Option<i64> {
        self.progress.get(&partition)?.published
    }

    /// The first bucket after `b` at which series `id` is due.
    fn next_slot(&self, id: SeriesId, b: i64) -> i64 {
        let phase = (id % self.every as u64) as i64;
        b + 1 + (phase - (b + 1)).rem_euclid(self.every)
    }

    /// Feeds one point of `partition`; a forecast (and any breach it predicts or
    /// withdraws) comes out when its series falls due.
    #[expect(
        clippy::disallowed_methods,
        reason = "the CPU budget charges wall time spent forecasting"
    )]
    pub fn process(&mut self, partition: u32, p: &MetricPoint, out: &mut Produced) {
        let id = p.series_id();
        let bucket_ms = self.bucket_ms;
        let b = p.ts.div_euclid(bucket_ms);
        // The same saturation as the detectors': a value beyond it cannot poison means.
        let value = p.value.clamp(-1e150, 1e150);
        let first_due = self.next_slot(id, b);
        let progress = self.progress.entry(partition).or_insert(Progress {
            max_ts: i64::MIN,
            published: None,
        });
        progress.max_ts = progress.max_ts.max(p.ts);
        let h = self
            .series
            .entry(partition)
            .or_default()
            .entry(id)
            .or_insert_with(|| History {
                tenant: p.tenant.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                values: VecDeque::new(),
                open: b,
                sum: 0.0,
                count: 0,
                last_ts: i64::MIN,
                next_due: first_due,
                standing: BTreeMap::new(),
                bucket_ms,
            });
        if b < h.open || p.ts <= h.last_ts {
            return;
        }
        h.last_ts = p.ts;
        self.dirty.entry(partition).or_default().insert(id);
        if b == h.open {
            h.sum += value;
            h.count += 1;
            return;
        }
        // Close the open bucket; a gap is kept as NaN, and one as long as the whole
        // history empties it instead of filling it.
        h.values.push_back(if h.count > 0 {
            // Clamped into f32's range: an infinite bucket would read as a gap.
            (h.sum / f64::from(h.count)).clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
        } else {
            f32::NAN
        });
        let gap = b - h.open - 1;
        if gap >= self.cap as i64 {
            h.values.clear();
        } else {
            h.values.extend(std::iter::repeat_n(f32::NAN, gap as usize));
        }
        while h.values.len() > self.cap {
            h.values.pop_front();
        }
        h.open = b;
        h.sum = value;
        h.count = 1;
        if b < h.next_due {
            return;
        }
        // Too little history to forecast: due again at its next slot, and no charge to
        // the budget.
        let known = h.values.iter().filter(|v| v.is_finite()).count();
        if known < self.cfg.min_history_buckets.max(3) {
            h.next_due = first_due;
            return;
        }
        if !self.budget.available() {
            self.stats.postponed += 1;
            return;
        }
        let started = Instant::now();
        let before = out.anomalies.len();
        let done = forecast_series(&self.cfg, &self.candidates, self.bucket_ms, id, h, b, out);
        self.budget.spend(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(rows) = done {
            self.stats.forecasts += 1;
            self.stats.rows += rows as u64;
        }
        for a in &out.anomalies[before..] {
            match a.explanation.breach.as_ref().map(|b| b.withdrawn) {
                Some(true) => self.stats.withdrawn += 1,
                Some(false) => self.stats.predicted += 1,
                None => {}
            }
        }
        let next = self.next_slot(id, b);
        if let Some(h) = self.series.get_mut(&partition).and_then(|s| s.get_mut(&id)) {
            h.next_due = next;
        }
    }
}

/// Forecasts series `id` at open bucket `b` into `out`; returns the rows written, or
/// `None` when the history is too short or too stale.
fn forecast_series(
    cfg: &ForecastConfig,
    candidates: &[usize],
    bucket_ms: i64,
    id: SeriesId,
    h: &mut History,
    b: i64,
    out: &mut Produced,
) -> Option<usize> {
    let values: Vec<f64> = h.values.iter().map(|v| f64::from(*v)).collect();
    let max_gap = (candidates.first().copied().unwrap_or(8) / 8).max(1);
    let (start, y) = regular_tail(&values, max_gap);
    if y.len() < cfg.min_history_buckets.max(3) {
        return None;
    }
    // `values` ends with bucket b − 1; the tail may end earlier when the newest buckets
    // are missing, and the forecast then starts after the tail and is cut at `b`.
    let last = b - values.len() as i64 + (start + y.len()) as i64 - 1;
    let skip = (b - last - 1) as usize;
    let horizon = cfg.horizon();
    if skip > horizon {
        return None;
    }
    let periods = find_periods(&y, candidates);
    let p = predict(&y, &periods, horizon + skip, cfg.level, &cfg.models);
    let steps: Vec<Step> = p.steps[skip..].to_vec();
    let generated_at = time(b * bucket_ms);
    out.forecasts
        .extend(steps.iter().enumerate().map(|(i, s)| Forecast {
            series_id: id,
            generated_at,
            ts: time((b + i as i64) * bucket_ms),
            yhat: s.yhat,
            lower: s.lower,
            upper: s.upper,
            model: p.model.clone(),
        }));
    let observed = y[y.len() - 1];
    // A threshold removed from the configuration since its prediction: forget it (the
    // prediction lapses in correlation at its ETA).
    h.standing
        .retain(|name, _| cfg.thresholds.iter().any(|t| &t.name == name));
    for t in cfg
        .thresholds
        .iter()
        .filter(|t| t.matches(&h.name, &h.labels))
    {
        let crossing = t.crossing(&steps);
        let standing = h.standing.get(&t.name).cloned();
        match (crossing, standing) {
            (Some(c), s)
                if s.as_ref()
                    .is_none_or(|s| eta_moved(s.eta, c.eta.map(|e| b + e as i64), b)) =>
            {
                let a = breach_anomaly(
                    h,
                    id,
                    t,
                    &steps,
                    b,
                    bucket_ms,
                    &p.model,
                    observed,
                    Some(c),
                    horizon,
                );
                h.standing.insert(
                    t.name.clone(),
                    Standing {
                        eta: c.eta.map(|e| b + e as i64),
                        misses: 0,
                    },
                );
                out.anomalies.push(a);
            }
            (Some(_), _) => {
                if let Some(s) = h.standing.get_mut(&t.name) {
                    s.misses = 0;
                }
            }
            (None, Some(s)) if s.misses + 1 < WITHDRAW_AFTER => {
                if let Some(s) = h.standing.get_mut(&t.name) {
                    s.misses += 1;
                }
            }
            (None, Some(_)) => {
                h.standing.remove(&t.name);
                out.anomalies.push(breach_anomaly(
                    h, id, t, &steps, b, bucket_ms, &p.model, observed, None, horizon,
                ));
            }
            (None, None) => {}
        }
    }
    Some(steps.len())
}

/// The anomaly raising (`crossing` set) or withdrawing a predicted breach.
#[allow(clippy::too_many_arguments)]
fn breach_anomaly(
    h: &History,
    id: SeriesId,
    t: &Threshold,
    steps: &[Step],
    b: i64,
    bucket_ms: i64,
    model: &str,
    observed: f64,
    crossing: Option<crate::thresholds::Crossing>,
    horizon: usize,
) -> Anomaly {
    let at = |i: usize| time((b + i as i64) * bucket_ms);
    let withdrawn = crossing.is_none();
    let shown = crossing.map_or(steps.len(), |c| c.eta.unwrap_or(c.earliest) + 1);
    let key = crossing.map_or(steps.len() - 1, |c| c.eta.unwrap_or(c.earliest));
    let s = steps[key.min(steps.len() - 1)];
    let series = if h.labels.is_empty() {
        h.name.clone()
    } else {
        let l: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}{{{}}}", h.name, l.join(","))
    };
    let direction = seismo_schemas::BreachDirection::Above;
    let word = if t.direction() == direction {
        "rise to"
    } else {
        "fall to"
    };
    let (score, summary) = match crossing {
        Some(c) => {
            let when = c.eta.unwrap_or(c.earliest);
            let score = (1.0 - when as f64 / horizon.max(1) as f64).clamp(0.05, 1.0);
            let eta = match c.eta {
                Some(e) => format!(
                    "expected at {} (in {} min)",
                    at(e).format("%Y-%m-%d %H:%M UTC"),
                    e as i64 * bucket_ms / 60_000
                ),
                None => "not expected within the horizon".into(),
            };
            (
                score,
                format!(
                    "{series} is forecast to {word} {} ({}): {eta}, plausible from {}; model {model}",
                    t.limit(),
                    t.name,
                    at(c.earliest).format("%Y-%m-%d %H:%M UTC"),
                ),
            )
        }
        None => (
            0.0,
            format!(
                "{series} is no longer forecast to {word} {} ({}) within {} min",
                t.limit(),
                t.name,
                steps.len() as i64 * bucket_ms / 60_000
            ),
        ),
    };
    let breach = PredictedBreach {
        threshold: t.name.clone(),
        limit: t.limit(),
        direction: t.direction(),
        eta: crossing.and_then(|c| c.eta).map(at),
        earliest: at(crossing.map_or(0, |c| c.earliest)),
        generated_at: at(0),
        model: model.to_string(),
        withdrawn,
        forecast: steps
            .iter()
            .take(shown)
            .enumerate()
            .map(|(i, s)| ForecastPoint {
                ts: at(i),
                yhat: s.yhat,
                lower: s.lower,
                upper: s.upper,
            })
            .collect(),
    };
    // Each report of a prediction is its own anomaly (the bucket is in the id); the
    // breach's fingerprint ties them together.
    let verb = if withdrawn { "withdrawn" } else { "predicted" };
    let mut a = Anomaly {
        id: Anomaly::make_id(id, b * bucket_ms, &format!("{DETECTOR}/{}/{verb}", t.name)),
        tenant: h.tenant.clone(),
        series_id: id,
        name: h.name.clone(),
        labels: h.labels.clone(),
        ts: at(0),
        observed,
        expected: s.yhat,
        lower: s.lower,
        upper: s.upper,
        score,
        severity: if withdrawn {
            Severity::Info
        } else {
            t.severity
        },
        kind: AnomalyKind::Predicted,
        detector: DETECTOR.into(),
        explanation: Explanation {
            detectors: vec![DetectorPart {
                detector: DETECTOR.into(),
                score,
                weight: 1.0,
            }],
            features: Vec::new(),
            seasonal_periods_s: Vec::new(),
            z_score: 0.0,
            summary,
            breach: Some(Box::new(breach)),
        },
    };
    a.make_finite();
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, host: &str, ts: i64, value: f64) -> MetricPoint {
        MetricPoint {
            tenant: "t".into(),
            name: name.into(),
            labels: [("host".to_string(), host.to_string())].into(),
            ts,
            value,
        }
    }

    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn cfg() -> ForecastConfig {
        ForecastConfig {
            budget_ms_per_sec: 0,
            ..ForecastConfig::default()
        }
    }

    #[test]
    fn the_watermark_is_the_oldest_open_bucket_of_the_series_still_sending() {
        let mut f = Forecaster::new(cfg());
        let mut out = Produced::default();
        let mut feed = |f: &mut Forecaster, host: &str, hour: i64| {
            f.process(0, &point("m", host, T0 + hour * HOUR, 1.0), &mut out);
        };
        assert_eq!(f.advance_watermark(0), None, "nothing read yet");
        for hour in 0..=4 {
            feed(&mut f, "a", hour);
            feed(&mut f, "b", hour);
        }
        // Both have hour 4 open: a prediction comes only when a point of hour 5 or later
        // closes it, and carries that later hour.
        assert_eq!(f.advance_watermark(0), Some(T0 + 5 * HOUR));
        feed(&mut f, "a", 5);
        assert_eq!(f.advance_watermark(0), None, "b still holds it at hour 4");
        // b has been silent for more than an hour of the partition's time: it no longer
        // holds the watermark back.
        feed(&mut f, "a", 6);
        assert_eq!(f.advance_watermark(0), Some(T0 + 7 * HOUR));
        assert_eq!(f.published_watermark(0), Some(T0 + 7 * HOUR));
        // Restored from a checkpoint, the watermark is worked out again.
        let entries = {
            f.dirty
                .entry(0)
                .or_default()
                .extend(f.series[&0].keys().copied());
            f.take_dirty(0)
        };
        let mut g = Forecaster::new(cfg());
        g.restore(0, entries).unwrap();
        assert_eq!(g.published_watermark(0), Some(T0 + 7 * HOUR));
        assert_eq!(g.advance_watermark(0), None);
    }

    #[test]
    fn series_fall_due_once_per_interval_at_their_own_phase() {
        let mut f = Forecaster::new(ForecastConfig {
            every_secs: 4 * 3600,
            min_history_buckets: 3,
            ..cfg()
        });
        let mut due: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for hour in 0..48 {
            for host in ["a", "b", "c", "d", "e", "f"] {
                let mut out = Produced::default();
                f.process(
                    0,
                    &point("m", host, T0 + hour * HOUR, 1.0 + hour as f64),
                    &mut out,
                );
                if let Some(fc) = out.forecasts.first() {
                    due.entry(host.into())
                        .or_default()
                        .push((fc.generated_at.timestamp_millis() - T0) / HOUR);
                    assert_eq!(out.forecasts.len(), 12);
                }
            }
        }
        let mut phases = HashSet::new();
        for (host, hours) in &due {
            // Every 4 hours once started.
            assert!(
                hours.windows(2).all(|w| w[1] - w[0] == 4),
                "{host}: {hours:?}"
            );
            assert!(hours.len() >= 10, "{host}: {hours:?}");
            phases.insert(hours[0] % 4);
        }
        assert!(phases.len() > 1, "every series at the same phase: {due:?}");
    }

    #[test]
    fn a_century_gap_costs_no_memory_and_the_state_survives_a_restart() {
        let mut f = Forecaster::new(cfg());
        let mut out = Produced::default();
        for i in 0..600 {
            f.process(0, &point("m", "a", T0 + i * HOUR, 1.0), &mut out);
        }
        // Bounded by history_secs (22 days of hours).
        assert_eq!(f.values_held(), 22 * 24);
        // A point 100 years later: the history is emptied, not padded.
        f.process(0, &point("m", "a", T0 + 876_600 * HOUR, 1.0), &mut out);
        assert_eq!(f.values_held(), 0);
        f.process(0, &point("m", "a", T0 + 876_601 * HOUR, 2.0), &mut out);
        assert_eq!(f.values_held(), 1);
        let entries = f.take_dirty(0);
        // A checkpoint at another bucket width is not restored: its units differ.
        let mut other = Forecaster::new(ForecastConfig {
            bucket_secs: 600,
            ..cfg()
        });
        other.restore(0, entries.clone()).unwrap();
        assert_eq!(other.series_count(), 0);
        let mut g = Forecaster::new(cfg());
        g.restore(0, entries).unwrap();
        assert_eq!(g.series_count(), 1);
        assert_eq!(g.values_held(), 1);
        // A replayed point is not folded in twice.
        let before = g.series[&0].values().next().unwrap().sum;
        g.process(0, &point("m", "a", T0 + 876_601 * HOUR, 2.0), &mut out);
        assert_eq!(g.series[&0].values().next().unwrap().sum, before);
    }

    #[test]
    fn a_spent_budget_postpones_forecasts() {
        let mut f = Forecaster::new(ForecastConfig {
            budget_ms_per_sec: 1,
            min_history_buckets: 24,
            ..cfg()
        });
        let mut out = Produced::default();
        for hour in 0..24 * 10 {
            for s in 0..50 {
                f.process(
                    0,
                    &point("m", &format!("h{s}"), T0 + hour * HOUR, (hour % 24) as f64),
                    &mut out,
                );
            }
        }
        assert!(f.stats.postponed > 0, "{:?}", f.stats);
        assert!(f.stats.forecasts > 0, "{:?}", f.stats);
    }

    /// A disk filling at a steady rate with a daily swing: the breach of 90 % is
    /// predicted before it happens, with the right time, and withdrawn after cleanup.
    #[test]
    fn a_planted_capacity_breach_is_predicted_with_its_eta_and_withdrawn() {
        let mut c = cfg();
        c.thresholds.push(Threshold::disk_full());
        let mut f = Forecaster::new(c);
        let mut s = 7u64;
        let mut noise = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 0.6
        };
        // 0.25 points an hour from 40 %: 90 % is reached at hour 200.
        let level = |t: f64| 40.0 + 0.25 * t + 2.0 * (t * std::f64::consts::TAU / 24.0).sin();
        let breach_hour = (0..400).find(|h| level(*h as f64) >= 90.0).unwrap() as i64;
        // Every report in order: (time, withdrawn?, anomaly).
        let mut reports: Vec<(i64, bool, Anomaly)> = Vec::new();
        for minute in 0..(breach_hour + 48) * 60 {
            let t = minute as f64 / 60.0;
            // Cleanup right at the breach: back to 30 %, flat.
            let v = if minute / 60 >= breach_hour {
                30.0
            } else {
                level(t)
            } + noise();
            let mut out = Produced::default();
            f.process(
                0,
                &point("disk_used_percent", "db1", T0 + minute * 60_000, v),
                &mut out,
            );
            for a in out.anomalies {
                let w = a.explanation.breach.as_ref().unwrap().withdrawn;
                reports.push((a.ts.timestamp_millis(), w, a));
            }
        }
        let breach_at = T0 + breach_hour * HOUR;
        let before: Vec<&Anomaly> = reports
            .iter()
            .filter(|r| r.0 < breach_at)
            .map(|r| &r.2)
            .collect();
        // Raised before the breach, never withdrawn before it, and reported again only
        // as the ETA firmed up.
        assert!(
            !before.is_empty(),
            "nothing predicted before the breach: {reports:#?}"
        );
        assert!(
            before
                .iter()
                .all(|a| !a.explanation.breach.as_ref().unwrap().withdrawn)
        );
        assert!(before.len() <= 4, "{before:#?}");
        let a = before.last().unwrap();
        assert_eq!(a.kind, AnomalyKind::Predicted);
        assert_eq!(a.severity, Severity::Critical);
        let b = a.explanation.breach.as_ref().unwrap();
        // The last report before the breach has its time right to the bucket.
        let eta = b.eta.expect("an ETA").timestamp_millis();
        assert!(
            (eta - breach_at).abs() <= HOUR,
            "ETA {} vs breach {}",
            b.eta.unwrap(),
            time(breach_at)
        );
        assert!(b.earliest.timestamp_millis() <= eta);
        assert!(!b.forecast.is_empty());
        // After the cleanup the forecasts stop crossing: the last report withdraws it.
        let last = reports.last().unwrap();
        assert!(last.1 && last.0 > breach_at, "{reports:#?}");
        assert_ne!(last.2.id, a.id);
    }
}
