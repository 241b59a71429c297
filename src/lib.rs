//! The `seismo` binary's library: configuration, pipeline wiring and the demo simulator.
//!
//! Only this crate knows every stage; each stage crate knows just `schemas`, the transport
//! and the store.

pub mod config;
pub mod demo;
pub mod eval;
pub mod pipeline;

pub use config::Config;
