//! The stage contract: every stage is a pure core behind [`Stage`], driven by one generic
//! runner ([`run`]) that owns input positions, checkpoints, restore, replay skipping,
//! retries and commit-after-checkpoint, and reports its health for `/readyz`.
//!
//! A stage never commits input itself: the runner commits only once the outputs derived
//! from that input are durable (written by [`Stage::write`]) and, for stages with state,
//! once that state is checkpointed with the input position it has reached. A process that
//! takes over a partition (restart, rebalance) restores the state and skips the records it
//! already holds, so nothing is learned twice and nothing is lost.

mod error;
mod health;
mod retry;
mod runner;
mod watermarks;

pub use error::{ErrorDomain, StageError};
pub use health::{Health, StageHealth, StageState, resident_bytes};
pub use retry::RetryPolicy;
pub use runner::{Checkpointing, Dirty, Entries, RunReport, Stage, StageIo, Tick, run};
pub use watermarks::{Announcer, MergeTag, WatermarkSource, merge_records};
