//! The explain stage: every incident explained in plain language, grounded in its evidence.
//!
//! [`facts`] builds a deterministic, redacted facts pack with stable evidence ids;
//! [`answer`] is the schema a model must answer in; [`client`] makes one schema-constrained
//! call to an OpenAI-compatible endpoint; [`ground`] drops every statement that names what
//! the facts do not hold; [`template`] explains when no model can; [`explainer`] ties them
//! together with the cache and the budget; [`stage`] runs it on `seismo.incidents`.

pub mod answer;
pub mod client;
pub mod config;
pub mod explainer;
pub mod facts;
pub mod ground;
pub mod redact;
pub mod runbooks;
pub mod stage;
pub mod template;

pub use config::{ExplainConfig, ModelConfig, Price};
pub use explainer::{Explainer, IncidentExplanation, PROMPT_VERSION, Source, postmortem_markdown};
pub use stage::{ExplainOut, ExplainStage, ExplainStats};
