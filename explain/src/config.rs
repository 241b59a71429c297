//! The explainer's settings (`[explain]`): the model endpoint, prices, budget, redaction and runbooks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's server, Ollama).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Base URL up to and including `/v1`, e.g. `http://127.0.0.1:18080/v1`. Empty: no
    /// model; every incident gets the template explanation.
    pub base_url: String,
    /// Model name sent in each request.
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token when set). The key
    /// itself never sits in the configuration file.
    pub api_key_env: String,
    /// Per attempt.
    pub timeout_ms: u64,
    /// Attempts per call; 429, 5xx and broken connections are retried with exponential
    /// backoff that honours Retry-After (a timeout is not: it would take as long again).
    pub max_attempts: u32,
    pub max_output_tokens: u32,
    /// Sampling; 0 makes a local model's answers repeat.
    pub temperature: f64,
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            base_url: String::new(),
            model: String::new(),
            api_key_env: "SEISMO_LLM_API_KEY".into(),
            timeout_ms: 60_000,
            max_attempts: 3,
            max_output_tokens: 1536,
            temperature: 0.0,
            seed: 42,
        }
    }
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// `[explain]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainConfig {
    /// Runs the explain stage (it never sits on the path of correlation or paging).
    pub enabled: bool,
    pub model: ModelConfig,
    /// Price per model name; a model missing here costs 0 (a local one).
    pub prices: BTreeMap<String, Price>,
    /// Tokens (input plus output) each tenant may spend per UTC day; beyond it the
    /// template explains. 0: no limit.
    pub daily_token_budget: u64,
    /// An incident is explained once its changes have been quiet this long, so a burst of
    /// joining anomalies costs one call, not one per change.
    pub debounce_secs: u64,
    /// Folder of Markdown runbooks with label matchers in their front matter; empty: none.
    pub runbooks_dir: String,
    /// The facts pack holds at most this many anomalies (strongest first) and timeline
    /// entries (newest first).
    pub max_anomalies: usize,
    pub max_events: usize,
    /// Untrusted text (labels, alert messages, notes) is cut to this many characters.
    pub max_text_chars: usize,
    /// Label names whose values are replaced by pseudonyms (`host-1`) before any call and
    /// put back in the answer, e.g. `["host", "instance", "pod"]`.
    pub pseudonymise_labels: Vec<String>,
    /// Extra secret patterns (regular expressions) redacted before any call, beside the
    /// built-in ones (keys, tokens, passwords, credentials in URLs, private keys).
    pub redact_patterns: Vec<String>,
    /// Fewer signals (anomalies plus firing alerts) than this, or no root-cause candidate,
    /// is weak evidence: the explanation says inconclusive.
    pub min_signals: usize,
    /// A top root-cause candidate scoring below this is weak evidence too. Correlate's
    /// scores map a change as unusual as the series' ordinary bad minutes to 0.5, so the
    /// default means "no candidate changed more than on an ordinary bad minute".
    pub min_candidate_score: f64,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            enabled: true,
            model: ModelConfig::default(),
            prices: BTreeMap::new(),
            daily_token_budget: 2_000_000,
            debounce_secs: 10,
            runbooks_dir: String::new(),
            max_anomalies: 8,
            max_events: 10,
            max_text_chars: 160,
            pseudonymise_labels: Vec::new(),
            redact_patterns: Vec::new(),
            min_signals: 3,
            min_candidate_score: 0.5,
        }
    }
}

impl ExplainConfig {
    /// Checks what can be checked before starting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.model.base_url.is_empty() {
            if !(self.model.base_url.starts_with("http://")
                || self.model.base_url.starts_with("https://"))
            {
                return Err(format!(
                    "explain.model.base_url must start with http:// or https://, not {:?}",
                    self.model.base_url
                ));
            }
            if self.model.model.is_empty() {
                return Err("explain.model.model is empty: name the model to call".into());
            }
            if self.model.max_attempts == 0 {
                return Err("explain.model.max_attempts must be at least 1".into());
            }
        }
        for p in &self.redact_patterns {
            regex::Regex::new(p)
                .map_err(|e| format!("explain.redact_patterns: {p:?} is not a pattern: {e}"))?;
        }
        Ok(())
    }

    /// The cost of a call in US dollars.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        let p = self
            .prices
            .get(&self.model.model)
            .copied()
            .unwrap_or_default();
        (input_tokens as f64 * p.input_per_mtok + output_tokens as f64 * p.output_per_mtok) / 1e6
    }
}
