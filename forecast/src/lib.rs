//! The forecast stage: keeps a bucketed history per series and periodically forecasts it.
//!
//! [`forecast_values`] is the pure model; [`Forecaster`] buckets a point stream and decides
//! when each series is due; [`run`] is the bus runner (`seismo.points` → forecasts table).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use seismo_schemas::{Forecast, MetricPoint, SeriesId};
use seismo_store::Store;
use seismo_transport::{Consumer, TransportError};
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

#[derive(Debug)]
struct History {
    values: VecDeque<f32>,
    open: i64,
    sum: f64,
    count: u32,
}

/// The forecast core: bucketed history per series and the schedule.
#[derive(Debug)]
pub struct Forecaster {
    cfg: ForecastConfig,
    bucket_ms: i64,
    season: usize,
    cap: usize,
    series: HashMap<SeriesId, History>,
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
        }
    }

    /// Feeds one point; returns the forecast of its series when one falls due.
    pub fn process(&mut self, p: &MetricPoint) -> Vec<Forecast> {
        let id = p.series_id();
        let b = p.ts.div_euclid(self.bucket_ms);
        let h = self.series.entry(id).or_insert_with(|| History {
            values: VecDeque::new(),
            open: b,
            sum: 0.0,
            count: 0,
        });
        if b < h.open {
            return Vec::new();
        }
        if b == h.open {
            h.sum += p.value;
            h.count += 1;
            return Vec::new();
        }
        // Close the open bucket, then pad any skipped buckets with NaN.
        h.values.push_back(if h.count > 0 {
            (h.sum / f64::from(h.count)) as f32
        } else {
            f32::NAN
        });
        for _ in h.open + 1..b {
            h.values.push_back(f32::NAN);
        }
        while h.values.len() > self.cap {
            h.values.pop_front();
        }
        h.open = b;
        h.sum = p.value;
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

/// Errors that stop the forecast runner.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] seismo_store::StoreError),
}

/// Runs forecast until its input ends, writing forecasts as they fall due.
pub async fn run(
    cfg: ForecastConfig,
    mut input: Box<dyn Consumer>,
    store: Arc<dyn Store>,
    batch_records: usize,
) -> Result<u64, ForecastError> {
    let mut f = Forecaster::new(cfg);
    let mut written = 0;
    while let Some(batch) = input.next_batch(batch_records).await {
        let batch = batch?;
        let mut out = Vec::new();
        for m in &batch {
            for p in seismo_schemas::points_of_record(&m.payload).flatten() {
                out.extend(f.process(&p));
            }
        }
        if !out.is_empty() {
            written += store.insert_forecasts(&out).await?;
        }
        input.commit(&batch).await?;
    }
    Ok(written)
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
            let out = f.process(&p);
            if !out.is_empty() {
                assert_eq!(out.len(), 12);
                due.push(out[0].generated_at);
            }
        }
        // History needs 12 buckets (an hour) before the first forecast.
        assert_eq!(due.len(), 2, "{due:?}");
    }
}
