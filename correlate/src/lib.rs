//! The correlate stage: groups anomalies and alerts into incidents and ranks root causes.
//!
//! [`Correlator`] is the pure core, driven by event time so that replaying a stream gives
//! the same incidents; [`Merger`] puts its inputs in one event-time order; [`CorrelateStage`]
//! runs both on the bus (`seismo.anomalies` + `seismo.alerts` → incident tables +
//! `seismo.incidents`) through the generic stage runner.

pub mod changes;
pub mod cooccur;
mod core;
pub mod investigate;
mod merge;
pub mod rank;
mod stage;

pub use crate::core::{CorrelateConfig, Correlator, Signal, StatusStep};
pub use merge::Merger;
pub use stage::{CorrelateOut, CorrelateStage, CorrelateStats};
