//! `Forecast`: one predicted value of one series with its prediction interval.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SeriesId;

/// One step of a forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Forecast {
    /// The series, as a 16-digit hex string.
    #[serde(with = "crate::point::hex_id")]
    #[schemars(with = "String")]
    pub series_id: SeriesId,
    /// When the forecast was made (stream time of the newest data it used).
    pub generated_at: DateTime<Utc>,
    /// The time being predicted.
    pub ts: DateTime<Utc>,
    pub yhat: f64,
    pub lower: f64,
    pub upper: f64,
    /// Model name, e.g. `seasonal_naive`.
    pub model: String,
}

/// What the detector expected of one series at one time: the centre and the band outside
/// which a value counts as unusual. Sampled every `detect.band_every_secs`, for dashboards
/// and the series API to draw beside the observed values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BandPoint {
    /// The series, as a 16-digit hex string.
    #[serde(with = "crate::point::hex_id")]
    #[schemars(with = "String")]
    pub series_id: SeriesId,
    /// Start of the detection bucket.
    pub ts: DateTime<Utc>,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
}
