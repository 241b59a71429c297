//! The detect stage: per-series, strictly causal anomaly scoring with explanations.
//!
//! [`SeriesModel`] scores one series observation by observation (the same code scores a
//! CSV file); [`Detector`] buckets a partitioned point stream and keeps one model per
//! series; [`run`] is the bus runner (`seismo.points` → anomalies table + `seismo.anomalies`).

mod entity;
mod iforest;
mod model;
mod prefetch;
mod runner;
mod seasonal;
mod stream;
mod window;

pub use iforest::{ForestParams, IsolationForest, Rng, Rows, c as average_path_length};
pub use model::{DetectConfig, Scored, SeriesModel};
pub use runner::{
    Checkpointing, DETECTOR_NAME, DetectError, DetectStats, Detector, ENTITY_DETECTOR_NAME, run,
};
pub use seasonal::SeasonalView;
pub use stream::{StreamConfig, StreamScore, StreamScorer, normal_tail};
