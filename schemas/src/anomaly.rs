//! `Anomaly`: one scored deviation of one series, with the explanation an SRE reads.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Labels, SeriesId, stable_hash};

/// How urgent an anomaly is, from its score.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// What shape of deviation was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A single bucket far from its expected value.
    Point,
    /// The series moved to a new level and stayed there.
    LevelShift,
    /// The series drifts away from its baseline.
    Trend,
    /// Several metrics of one entity are jointly unusual.
    Multivariate,
    /// A forecast crosses a threshold in the future.
    Predicted,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Point => "point",
            AnomalyKind::LevelShift => "level_shift",
            AnomalyKind::Trend => "trend",
            AnomalyKind::Multivariate => "multivariate",
            AnomalyKind::Predicted => "predicted",
        }
    }

    pub fn parse(s: &str) -> Option<AnomalyKind> {
        Some(match s {
            "point" => AnomalyKind::Point,
            "level_shift" => AnomalyKind::LevelShift,
            "trend" => AnomalyKind::Trend,
            "multivariate" => AnomalyKind::Multivariate,
            "predicted" => AnomalyKind::Predicted,
            _ => return None,
        })
    }
}

/// One detector's share of an anomaly's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DetectorPart {
    /// Detector name, e.g. `seasonal_residual` or `isolation_forest`.
    pub detector: String,
    /// That detector's own score in 0..1.
    pub score: f64,
    /// Its weight in the combined score.
    pub weight: f64,
}

/// One input feature's contribution to an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureContribution {
    pub feature: String,
    /// Relative contribution; the contributions of one anomaly sum to 1.
    pub weight: f64,
}

/// Why an anomaly was raised, in numbers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Explanation {
    pub detectors: Vec<DetectorPart>,
    #[serde(default)]
    pub features: Vec<FeatureContribution>,
    /// Seasonal periods of the baseline, in seconds (86400 for daily).
    #[serde(default)]
    pub seasonal_periods_s: Vec<u64>,
    /// Robust z-score of the residual: (observed - expected) / robust scale.
    pub z_score: f64,
    /// A one-line human summary.
    pub summary: String,
    /// For a `predicted` anomaly: the threshold the forecast crosses, when, and the
    /// forecast itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breach: Option<Box<PredictedBreach>>,
}

/// Which side of a threshold is a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BreachDirection {
    Above,
    Below,
}

/// One step of the forecast a predicted breach rests on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ForecastPoint {
    pub ts: DateTime<Utc>,
    pub yhat: f64,
    pub lower: f64,
    pub upper: f64,
}

/// A forecast crossing a configured threshold (`[[forecast.thresholds]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PredictedBreach {
    /// The threshold's name in the configuration.
    pub threshold: String,
    pub limit: f64,
    pub direction: BreachDirection,
    /// When the point forecast crosses the limit; absent when only the interval does
    /// within the horizon.
    pub eta: Option<DateTime<Utc>>,
    /// When the interval's far bound first crosses it: the earliest the breach is
    /// plausible.
    pub earliest: DateTime<Utc>,
    /// When the forecast was made (stream time).
    pub generated_at: DateTime<Utc>,
    /// The forecast's models.
    pub model: String,
    /// True on the record that withdraws an earlier prediction: a later forecast no
    /// longer crosses.
    pub withdrawn: bool,
    /// The forecast from its start to the crossing (or its horizon).
    pub forecast: Vec<ForecastPoint>,
}

impl PredictedBreach {
    /// What correlation tracks a prediction by while it stands: the series and threshold.
    pub fn fingerprint(&self, series_id: SeriesId) -> String {
        format!("predicted/{series_id:016x}/{}", self.threshold)
    }
}

/// A scored anomaly on one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Anomaly {
    /// Deterministic: the same series, bucket and detector always give the same id, so a
    /// replayed input never creates a duplicate.
    pub id: String,
    pub tenant: String,
    /// The series, as a 16-digit hex string.
    #[serde(with = "crate::point::hex_id")]
    #[schemars(with = "String")]
    pub series_id: SeriesId,
    pub name: String,
    pub labels: Labels,
    /// Start of the scored bucket.
    pub ts: DateTime<Utc>,
    pub observed: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// 0..1; higher is more anomalous.
    pub score: f64,
    pub severity: Severity,
    pub kind: AnomalyKind,
    /// Name of the detector configuration that raised it.
    pub detector: String,
    pub explanation: Explanation,
}

impl Anomaly {
    /// The deterministic id of an anomaly of `series` in the bucket starting at `ts_ms`.
    /// Replaces every non-finite number (an overflowing mean, an infinite band) by the
    /// nearest finite one (NaN by 0), so no stored row or API answer carries a number JSON
    /// cannot hold. Returns whether anything had to change.
    pub fn make_finite(&mut self) -> bool {
        fn fix(v: &mut f64) -> bool {
            if v.is_finite() {
                return false;
            }
            *v = if v.is_nan() {
                0.0
            } else {
                v.clamp(f64::MIN, f64::MAX)
            };
            true
        }
        let mut changed = false;
        for v in [
            &mut self.observed,
            &mut self.expected,
            &mut self.lower,
            &mut self.upper,
            &mut self.score,
            &mut self.explanation.z_score,
        ] {
            changed |= fix(v);
        }
        for d in &mut self.explanation.detectors {
            changed |= fix(&mut d.score);
            changed |= fix(&mut d.weight);
        }
        for f in &mut self.explanation.features {
            changed |= fix(&mut f.weight);
        }
        if let Some(b) = &mut self.explanation.breach {
            changed |= fix(&mut b.limit);
            for p in &mut b.forecast {
                changed |= fix(&mut p.yhat) | fix(&mut p.lower) | fix(&mut p.upper);
            }
        }
        changed
    }

    pub fn make_id(series: SeriesId, ts_ms: i64, detector: &str) -> String {
        let h = stable_hash(&[
            &series.to_le_bytes(),
            &ts_ms.to_le_bytes(),
            detector.as_bytes(),
        ]);
        format!("{h:016x}")
    }
}
