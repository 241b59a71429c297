//! The notify stage: incident changes from `seismo.incidents` paged to PagerDuty, Slack and webhooks.
//!
//! Kept apart as Alertmanager keeps them: [`config`] (receivers, routes by label
//! matchers), [`dispatch`] (the pure core deciding what is due when: group wait, group
//! interval, repeat interval, trigger → acknowledge → resolve in step with the incident),
//! [`receivers`] (each integration's payload and the webhook signature), [`deliver`]
//! (HTTP with retries honouring Retry-After, and PagerDuty's per-key rate limit) and
//! [`stage`] (the runner's stage: checkpointed dispatch state and the notification log
//! that keeps a restart from paging twice).

pub mod config;
pub mod deliver;
pub mod dispatch;
pub mod receivers;
pub mod stage;

pub use config::{NotifyConfig, ReceiverConfig, ReceiverKind, RouteConfig};
pub use stage::{NotifyOut, NotifyStage, NotifyStats};
