//! The detect stage: per-series, strictly causal anomaly scoring with explanations.
//!
//! [`SeriesModel`] scores one series observation by observation (the same code scores a
//! CSV file); [`Detector`] buckets a partitioned point stream and keeps one model per
//! series; [`DetectStage`] runs it on the bus (`seismo.points` → anomalies table +
//! `seismo.anomalies`) through the generic stage runner.

mod calibrate;
mod detector;
mod entity;
mod iforest;
mod model;
mod prefetch;
mod seasonal;
mod stage;
mod stream;

pub use detector::{DETECTOR_NAME, Detector, ENSEMBLE_PARTS, ENTITY_DETECTOR_NAME, MAX_MAGNITUDE};
pub use iforest::{ForestParams, IsolationForest, Rng, Rows, c as average_path_length};
pub use model::{AlarmRun, DetectConfig, Scored, SeriesModel};
pub use seasonal::SeasonalView;
pub use stage::{DetectOut, DetectStage};
pub use stream::{PARTS, StreamConfig, StreamScore, StreamScorer, normal_tail};
