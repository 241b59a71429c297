//! The `seismo` binary's library: configuration, pipeline wiring and the demo simulator.
//!
//! Only this crate knows every stage; each stage crate knows just `schemas`, the transport
//! and the store.

pub mod cli;
pub mod config;
pub mod demo;
pub mod distributed;
pub mod eval;
pub mod forecast_file;
pub mod http;
pub mod pipeline;
pub mod report;
pub mod stages;

pub use config::Config;

/// The environment variable holding the log filter (tracing's `EnvFilter` syntax).
pub const LOG_ENV: &str = "SEISMO_LOG";
