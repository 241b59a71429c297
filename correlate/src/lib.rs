//! The correlate stage: groups anomalies and alerts into incidents and ranks root causes.
//!
//! [`Correlator`] is the pure core, driven by event time so that replaying a stream gives
//! the same incidents; [`run`] is the bus runner (`seismo.anomalies` + `seismo.alerts` →
//! incident tables + `seismo.incidents`).

mod core;
mod runner;

pub use crate::core::{CorrelateConfig, Correlator, Signal};
pub use runner::{CorrelateError, CorrelateStats, run};
