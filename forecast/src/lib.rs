//! The forecast stage: keeps a bucketed history per series and periodically forecasts it.
//!
//! [`forecast_values`] is the pure model; [`Forecaster`] buckets a point stream and decides
//! when each series is due; [`ForecastStage`] runs it on the bus (`seismo.points` →
//! forecasts table) through the generic stage runner, checkpointing each series' history.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use seismo_runtime::{Dirty, Entries, Stage, StageError};
use seismo_schemas::{Forecast, MetricPoint, SeriesId};
use seismo_store::Store;
use seismo_transport::Message;
use serde::{Deserialize, Serialize};

/// Forecast settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastConfig {
    /// Width of the buckets the history is kept in, in seconds.
    pub bucket_secs: u64,
    /// Seasonal cycle, in seconds.
    pub season_secs: u64,
    /// How far ahead each forecast reaches, in seconds (DESIGN: 3 to 12 hours).
    pub horizon_secs: u64,
    /// How often each series is forecast, in seconds of stream time.
    pub every_secs: u64,
    /// Coverage of the prediction interval, e.g. 0.95.
    pub level: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            bucket_secs: 600,
            season_secs: 86_400,
            horizon_secs: 6 * 3600,
            every_secs: 3600,
            level: 0.95,
        }
    }
}

/// One forecast step: point forecast and interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub yhat: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Normal quantile for a two-sided interval of coverage `level` (Acklam-free: the few
/// levels people use, interpolated).
fn z_for(level: f64) -> f64 {
    const TABLE: [(f64, f64); 6] = [
        (0.5, 0.674),
        (0.8, 1.282),
        (0.9, 1.645),
        (0.95, 1.960),
        (0.98, 2.326),
        (0.99, 2.576),
    ];
    let l = level.clamp(0.5, 0.99);
    for w in TABLE.windows(2) {
        if l <= w[1].0 {
            let t = (l - w[0].0) / (w[1].0 - w[0].0);
            return w[0].1 + t * (w[1].1 - w[0].1);
        }
    }
    2.576
}

fn finite(v: &[f32]) -> impl Iterator<Item = f64> + '_ {
    v.iter().filter(|x| x.is_finite()).map(|x| f64::from(*x))
}

fn mean(v: &[f32]) -> Option<f64> {
    let (s, n) = finite(v).fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn robust_sigma(mut e: Vec<f64>) -> f64 {
    if e.is_empty() {
        return 0.0;
    }
    e.sort_by(f64::total_cmp);
    let med = e[e.len() / 2];
    let mut dev: Vec<f64> = e.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    1.4826 * dev[dev.len() / 2]
}

/// Forecasts `horizon` steps after `history` (NaN marks missing buckets) with a seasonal
/// naive model corrected for the recent level, falling back to a plain naive model when
/// less than two cycles are known. Returns the steps and the model's name.
pub fn forecast_values(
    history: &[f32],
    season: usize,
    horizon: usize,
    level: f64,
) -> (Vec<Step>, &'static str) {
    let z = z_for(level);
    let n = history.len();
    let last_level = mean(&history[n.saturating_sub(6)..]).unwrap_or(0.0);
    if season > 1 && n >= 2 * season {
        // Level correction: how much the last stretch sits above the same stretch a cycle ago.
        let l = (season / 8).max(1);
        let offset = match (
            mean(&history[n - l..]),
            mean(&history[n - season - l..n - season]),
        ) {
            (Some(a), Some(b)) => a - b,
            _ => 0.0,
        };
        let errors: Vec<f64> = (n - season..n)
            .filter_map(|t| {
                let (y, base) = (history[t], history[t - season]);
                (y.is_finite() && base.is_finite()).then(|| f64::from(y) - f64::from(base))
            })
            .collect();
        let sigma = robust_sigma(errors);
        let steps = (0..horizon)
            .map(|h| {
                let base = history[n - season + h % season];
                let yhat = if base.is_finite() {
                    f64::from(base) + offset
                } else {
                    last_level
                };
                let width = z * sigma * (1.0 + (h / season) as f64).sqrt();
                Step {
                    yhat,
                    lower: yhat - width,
                    upper: yhat + width,
                }
            })
            .collect();
        return (steps, "seasonal_naive_level");
    }
    let diffs: Vec<f64> = history
        .windows(2)
        .filter(|w| w[0].is_finite() && w[1].is_finite())
        .map(|w| f64::from(w[1]) - f64::from(w[0]))
        .collect();
    let sigma = robust_sigma(diffs);
    let steps = (0..horizon)
        .map(|h| {
            let width = z * sigma * ((h + 1) as f64).sqrt();
            Step {
                yhat: last_level,
                lower: last_level - width,
                upper: last_level + width,
            }
        })
        .collect();
    (steps, "naive")
}

#[derive(Debug, Serialize, Deserialize)]
struct History {
    values: VecDeque<f32>,
    open: i64,
    sum: f64,
    count: u32,
    /// Time of the newest point folded in: anything not newer is a duplicate (a replay).
    last_ts: i64,
}

/// The forecast core: bucketed history per series and partition, and the schedule.
#[derive(Debug)]
pub struct Forecaster {
    cfg: ForecastConfig,
    bucket_ms: i64,
    season: usize,
    cap: usize,
    series: HashMap<u32, HashMap<SeriesId, History>>,
    dirty: HashMap<u32, HashSet<SeriesId>>,
}

impl Forecaster {
    pub fn new(cfg: ForecastConfig) -> Self {
        let bucket_ms = (cfg.bucket_secs.max(1) * 1000) as i64;
        let season = (cfg.season_secs / cfg.bucket_secs.max(1)).max(1) as usize;
        Forecaster {
            cfg,
            bucket_ms,
            season,
            cap: 2 * season + 1,
            series: HashMap::new(),
            dirty: HashMap::new(),
        }
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
            let h: History = postcard::from_bytes(&v).map_err(|e| e.to_string())?;
            series.insert(u64::from_be_bytes(id), h);
        }
        self.series.insert(partition, series);
        self.dirty.remove(&partition);
        Ok(())
    }

    /// Forgets a partition (it moved to another process).
    pub fn drop_partition(&mut self, partition: u32) {
        self.series.remove(&partition);
        self.dirty.remove(&partition);
    }

    /// Feeds one point of `partition`; returns the forecast of its series when one falls due.
    pub fn process(&mut self, partition: u32, p: &MetricPoint) -> Vec<Forecast> {
        let id = p.series_id();
        let b = p.ts.div_euclid(self.bucket_ms);
        // The same saturation as the detectors': a value beyond it cannot poison means.
        let value = p.value.clamp(-1e150, 1e150);
        let h = self
            .series
            .entry(partition)
            .or_default()
            .entry(id)
            .or_insert_with(|| History {
                values: VecDeque::new(),
                open: b,
                sum: 0.0,
                count: 0,
                last_ts: i64::MIN,
            });
        if b < h.open || p.ts <= h.last_ts {
            return Vec::new();
        }
        h.last_ts = p.ts;
        self.dirty.entry(partition).or_default().insert(id);
        if b == h.open {
            h.sum += value;
            h.count += 1;
            return Vec::new();
        }
        // Close the open bucket, then pad the skipped buckets with NaN: at most a full
        // history's worth, so a gap of years costs no more memory than a day's.
        h.values.push_back(if h.count > 0 {
            (h.sum / f64::from(h.count)) as f32
        } else {
            f32::NAN
        });
        let gap = (b - h.open - 1).clamp(0, self.cap as i64) as usize;
        h.values.extend(std::iter::repeat_n(f32::NAN, gap));
        while h.values.len() > self.cap {
            h.values.pop_front();
        }
        h.open = b;
        h.sum = value;
        h.count = 1;
        let every = (self.cfg.every_secs.max(self.cfg.bucket_secs) * 1000) as i64;
        if (b * self.bucket_ms).rem_euclid(every) != 0 || h.values.len() < 12 {
            return Vec::new();
        }
        let history: Vec<f32> = h.values.iter().copied().collect();
        let horizon = (self.cfg.horizon_secs / self.cfg.bucket_secs.max(1)) as usize;
        let (steps, model) = forecast_values(&history, self.season, horizon, self.cfg.level);
        let generated_at = Utc
            .timestamp_millis_opt(b * self.bucket_ms)
            .single()
            .unwrap_or_default();
        steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| Forecast {
                series_id: id,
                generated_at,
                ts: Utc
                    .timestamp_millis_opt((b + i as i64) * self.bucket_ms)
                    .single()
                    .unwrap_or_default(),
                yhat: s.yhat,
                lower: s.lower,
                upper: s.upper,
                model: model.into(),
            })
            .collect()
    }
}

/// The forecast stage.
pub struct ForecastStage {
    core: Forecaster,
    store: Arc<dyn Store>,
    /// Forecast rows produced by this process.
    pub written: u64,
}

impl ForecastStage {
    pub fn new(cfg: ForecastConfig, store: Arc<dyn Store>) -> Self {
        ForecastStage {
            core: Forecaster::new(cfg),
            store,
            written: 0,
        }
    }
}

#[async_trait]
impl Stage for ForecastStage {
    type Out = Vec<Forecast>;
    const FORMAT: u32 = 1;

    fn process(&mut self, m: &Message, out: &mut Vec<Forecast>) -> u64 {
        let mut n = 0;
        for p in seismo_schemas::points_of_record(&m.payload).flatten() {
            let f = self.core.process(m.partition, &p);
            self.written += f.len() as u64;
            out.extend(f);
            n += 1;
        }
        n
    }

    fn has_output(out: &Vec<Forecast>) -> bool {
        !out.is_empty()
    }

    async fn write(&self, out: &Vec<Forecast>) -> Result<(), StageError> {
        self.store.insert_forecasts(out).await?;
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        (self.core.take_dirty(partition), Vec::new())
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        self.core.restore(partition, entries)
    }

    fn drop_partition(&mut self, partition: u32) {
        self.core.drop_partition(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_history_is_continued_with_its_cycle() {
        let season = 24;
        let hist: Vec<f32> = (0..72).map(|i| 10.0 + (i % season) as f32).collect();
        let (steps, model) = forecast_values(&hist, season, 30, 0.95);
        assert_eq!(model, "seasonal_naive_level");
        for (h, s) in steps.iter().enumerate() {
            assert!(
                (s.yhat - (10.0 + (h % season) as f64)).abs() < 1e-9,
                "{h}: {s:?}"
            );
            assert!(s.lower <= s.yhat && s.yhat <= s.upper);
        }
    }

    #[test]
    fn short_history_falls_back_to_naive_with_widening_intervals() {
        let hist: Vec<f32> = vec![1.0, 2.0, 1.5, 2.5, 2.0, 1.0, 2.0];
        let (steps, model) = forecast_values(&hist, 24, 5, 0.9);
        assert_eq!(model, "naive");
        assert!(
            steps
                .windows(2)
                .all(|w| w[1].upper - w[1].lower > w[0].upper - w[0].lower)
        );
    }

    #[test]
    fn forecasts_fall_due_on_schedule() {
        let mut f = Forecaster::new(ForecastConfig {
            bucket_secs: 300,
            every_secs: 3600,
            horizon_secs: 3600,
            ..Default::default()
        });
        let mut due = Vec::new();
        for i in 0..(3 * 3600 / 60) {
            let p = MetricPoint {
                tenant: "t".into(),
                name: "m".into(),
                labels: Default::default(),
                ts: 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000 + i * 60_000,
                value: 1.0,
            };
            let out = f.process(0, &p);
            if !out.is_empty() {
                assert_eq!(out.len(), 12);
                due.push(out[0].generated_at);
            }
        }
        // History needs 12 buckets (an hour) before the first forecast.
        assert_eq!(due.len(), 2, "{due:?}");
    }

    #[test]
    fn a_century_gap_costs_no_more_than_a_full_history() {
        let mut f = Forecaster::new(ForecastConfig::default());
        let p = |ts: i64| MetricPoint {
            tenant: "t".into(),
            name: "m".into(),
            labels: Default::default(),
            ts,
            value: 1.0,
        };
        f.process(0, &p(946_684_800_000));
        f.process(0, &p(4_070_908_800_000));
        let h = &f.series[&0].values().next().unwrap().values;
        assert!(h.len() <= 2 * 144 + 1, "{}", h.len());
        let entries = f.take_dirty(0);
        let mut g = Forecaster::new(ForecastConfig::default());
        g.restore(0, entries).unwrap();
        assert_eq!(g.series[&0].len(), 1);
    }
}
