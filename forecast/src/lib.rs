//! The forecast stage and its models: per-series forecasts hours ahead with calibrated intervals, and predicted threshold breaches.
//!
//! [`models`] holds the forecasting models, [`periods`] finds a series' seasonal periods,
//! [`select`] chooses models by a rolling-origin backtest and builds the intervals,
//! [`metrics`] scores forecasts as the M4 organisers do, [`thresholds`] checks forecasts
//! against capacity and SLO limits, [`forecaster`] is the stage's pure core (bounded
//! history per series, staggered schedule, CPU budget) and [`stage`] runs it on the bus.

pub mod forecaster;
pub mod metrics;
pub mod models;
pub mod periods;
pub mod select;
pub mod stage;
pub mod thresholds;

pub use forecaster::Forecaster;
pub use stage::{ForecastOut, ForecastStage};

use serde::{Deserialize, Serialize};

/// Forecast settings (`[forecast]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastConfig {
    /// Width of the buckets the history is kept in, in seconds. A day and a week are the
    /// seasonal periods looked for, so the bucket should divide a day.
    pub bucket_secs: u64,
    /// How much history each series keeps, in seconds. 22 days: the weekly period is
    /// looked for on the history differenced at a day, and its test needs three weeks of
    /// that.
    pub history_secs: u64,
    /// How far ahead each forecast reaches, in seconds (DESIGN: 3 to 12 hours).
    pub horizon_secs: u64,
    /// How often each series is forecast, in seconds of stream time. Series are spread
    /// over this interval (by their id) rather than all forecast at once.
    pub every_secs: u64,
    /// Buckets of history a series needs before its first forecast.
    pub min_history_buckets: usize,
    /// CPU budget: milliseconds of forecasting per second of wall time (1000 is one
    /// core; 0 is no limit). Series due while the budget is spent wait for their next
    /// bucket.
    pub budget_ms_per_sec: u64,
    /// Coverage of the prediction interval, e.g. 0.95.
    pub level: f64,
    /// The candidate models and how one is chosen (`[forecast.models]`).
    pub models: select::ModelSettings,
    /// Limits whose predicted crossing raises a `predicted` anomaly
    /// (`[[forecast.thresholds]]`).
    pub thresholds: Vec<thresholds::Threshold>,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            bucket_secs: 3600,
            history_secs: 22 * 86_400,
            horizon_secs: 12 * 3600,
            every_secs: 3600,
            min_history_buckets: 24,
            budget_ms_per_sec: 500,
            level: 0.95,
            models: select::ModelSettings::default(),
            thresholds: Vec::new(),
        }
    }
}

impl ForecastConfig {
    /// Checks the settings, saying which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket_secs == 0 {
            return Err("forecast.bucket_secs must be positive".into());
        }
        if self.history_secs < 2 * self.bucket_secs {
            return Err("forecast.history_secs must hold at least two buckets".into());
        }
        if self.history_secs / self.bucket_secs > 100_000 {
            return Err(format!(
                "forecast.history_secs is {} buckets of forecast.bucket_secs; at most 100000",
                self.history_secs / self.bucket_secs
            ));
        }
        if self.horizon_secs < self.bucket_secs || self.horizon_secs / self.bucket_secs > 10_000 {
            return Err("forecast.horizon_secs must be between one and 10000 buckets".into());
        }
        if self.min_history_buckets > self.capacity() {
            return Err(format!(
                "forecast.min_history_buckets ({}) is more than forecast.history_secs holds ({} \
                 buckets): no series would ever be forecast",
                self.min_history_buckets,
                self.capacity()
            ));
        }
        if !(0.5..=0.995).contains(&self.level) {
            return Err("forecast.level must be between 0.5 and 0.995".into());
        }
        if self.models.models.is_empty() {
            return Err("forecast.models.models must name at least one model".into());
        }
        if !(1..=4).contains(&self.models.combine) {
            return Err("forecast.models.combine must be between 1 and 4".into());
        }
        if self.models.origins > 20 {
            return Err("forecast.models.origins must be at most 20".into());
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.thresholds {
            t.validate()?;
            if !names.insert(t.name.as_str()) {
                return Err(format!("forecast.thresholds: {:?} is named twice", t.name));
            }
        }
        Ok(())
    }

    /// Buckets per forecast.
    pub fn horizon(&self) -> usize {
        (self.horizon_secs / self.bucket_secs.max(1)).max(1) as usize
    }

    /// Buckets of history kept.
    pub fn capacity(&self) -> usize {
        (self.history_secs / self.bucket_secs.max(1)).max(2) as usize
    }
}
