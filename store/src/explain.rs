//! The explainer's tables: each incident's latest explanation and the log of model calls. Written once for both SQL stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::Result;

/// The latest explanation of one incident. The body's shape belongs to the explain crate;
/// the store keeps it as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredExplanation {
    pub tenant: String,
    pub incident_id: String,
    /// Hash of the facts pack it was made from.
    pub facts_hash: String,
    /// `model` or `template`.
    pub source: String,
    pub body: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// One call to a model, successful or not.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlmCall {
    pub id: String,
    pub tenant: String,
    pub incident_id: String,
    /// `explain` or `postmortem`.
    pub purpose: String,
    pub model: String,
    pub prompt_version: String,
    pub facts_hash: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: u64,
    pub cost_usd: f64,
    /// `ok`, or what went wrong (`timeout`, `http 500`, `schema: ...`).
    pub outcome: String,
    /// The model's validated answer (JSON) when the outcome is `ok`: the cache.
    pub answer: Option<String>,
    pub at: DateTime<Utc>,
}

/// Explanations and the model-call log.
#[async_trait]
pub trait ExplainStore: Send + Sync {
    /// Stores an incident's explanation, replacing the previous one.
    async fn save_explanation(&self, e: &StoredExplanation) -> Result<()>;
    async fn explanation(
        &self,
        tenant: &str,
        incident_id: &str,
    ) -> Result<Option<StoredExplanation>>;
    /// Records a call; a repeated id changes nothing.
    async fn record_llm_call(&self, c: &LlmCall) -> Result<()>;
    /// The answer of the newest successful call with this key: a cached answer costs
    /// no call.
    async fn cached_answer(
        &self,
        facts_hash: &str,
        model: &str,
        prompt_version: &str,
        purpose: &str,
    ) -> Result<Option<String>>;
    /// Tokens (input and output) a tenant's calls used since `since`.
    async fn tokens_used_since(&self, tenant: &str, since: DateTime<Utc>) -> Result<u64>;
    /// An incident's calls, oldest first (at most 1,000).
    async fn incident_llm_calls(&self, tenant: &str, incident_id: &str) -> Result<Vec<LlmCall>>;
}

/// Implements [`ExplainStore`] for a store with a `pool` field of sqlx database `$db`.
macro_rules! explain_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::explain::ExplainStore for $store {
            async fn save_explanation(
                &self,
                e: &$crate::explain::StoredExplanation,
            ) -> $crate::Result<()> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO explanations (tenant, incident_id, facts_hash, source, body, created_at) VALUES (",
                );
                qb.separated(", ")
                    .push_bind(&e.tenant)
                    .push_bind(&e.incident_id)
                    .push_bind(&e.facts_hash)
                    .push_bind(&e.source)
                    .push_bind(e.body.to_string())
                    .push_bind(e.created_at.timestamp_millis());
                qb.push(
                    ") ON CONFLICT (tenant, incident_id) DO UPDATE SET facts_hash = excluded.facts_hash, \
                     source = excluded.source, body = excluded.body, created_at = excluded.created_at",
                );
                qb.build().execute(&self.pool).await?;
                Ok(())
            }

            async fn explanation(
                &self,
                tenant: &str,
                incident_id: &str,
            ) -> $crate::Result<Option<$crate::explain::StoredExplanation>> {
                use sqlx::Row;
                let mut qb =
                    sqlx::QueryBuilder::<$db>::new("SELECT * FROM explanations WHERE tenant = ");
                qb.push_bind(tenant)
                    .push(" AND incident_id = ")
                    .push_bind(incident_id);
                let Some(r) = qb.build().fetch_optional(&self.pool).await? else {
                    return Ok(None);
                };
                let body: String = r.try_get("body")?;
                Ok(Some($crate::explain::StoredExplanation {
                    tenant: r.try_get("tenant")?,
                    incident_id: r.try_get("incident_id")?,
                    facts_hash: r.try_get("facts_hash")?,
                    source: r.try_get("source")?,
                    body: serde_json::from_str(&body)
                        .map_err(|e| $crate::corrupt("explanation body", e))?,
                    created_at: chrono::TimeZone::timestamp_millis_opt(
                        &chrono::Utc,
                        r.try_get("created_at")?,
                    )
                    .single()
                    .unwrap_or_default(),
                }))
            }

            async fn record_llm_call(&self, c: &$crate::explain::LlmCall) -> $crate::Result<()> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO llm_calls (id, tenant, incident_id, purpose, model, prompt_version, facts_hash, \
                     input_tokens, output_tokens, latency_ms, cost_usd, outcome, answer, at) VALUES (",
                );
                let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                qb.separated(", ")
                    .push_bind(&c.id)
                    .push_bind(&c.tenant)
                    .push_bind(&c.incident_id)
                    .push_bind(&c.purpose)
                    .push_bind(&c.model)
                    .push_bind(&c.prompt_version)
                    .push_bind(&c.facts_hash)
                    .push_bind(clamp(c.input_tokens))
                    .push_bind(clamp(c.output_tokens))
                    .push_bind(clamp(c.latency_ms))
                    .push_bind(c.cost_usd)
                    .push_bind(&c.outcome)
                    .push_bind(&c.answer)
                    .push_bind(c.at.timestamp_millis());
                qb.push(") ON CONFLICT (id) DO NOTHING");
                qb.build().execute(&self.pool).await?;
                Ok(())
            }

            async fn cached_answer(
                &self,
                facts_hash: &str,
                model: &str,
                prompt_version: &str,
                purpose: &str,
            ) -> $crate::Result<Option<String>> {
                use sqlx::Row;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT answer FROM llm_calls WHERE outcome = 'ok' AND answer IS NOT NULL AND facts_hash = ",
                );
                qb.push_bind(facts_hash)
                    .push(" AND model = ")
                    .push_bind(model)
                    .push(" AND prompt_version = ")
                    .push_bind(prompt_version)
                    .push(" AND purpose = ")
                    .push_bind(purpose)
                    .push(" ORDER BY at DESC LIMIT 1");
                match qb.build().fetch_optional(&self.pool).await? {
                    Some(r) => Ok(r.try_get("answer")?),
                    None => Ok(None),
                }
            }

            async fn tokens_used_since(
                &self,
                tenant: &str,
                since: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<u64> {
                use sqlx::Row;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS n FROM llm_calls WHERE tenant = ",
                );
                qb.push_bind(tenant)
                    .push(" AND at >= ")
                    .push_bind(since.timestamp_millis());
                let r = qb.build().fetch_one(&self.pool).await?;
                let n: i64 = r.try_get("n")?;
                Ok(n.max(0) as u64)
            }

            async fn incident_llm_calls(
                &self,
                tenant: &str,
                incident_id: &str,
            ) -> $crate::Result<Vec<$crate::explain::LlmCall>> {
                use sqlx::Row;
                let mut qb =
                    sqlx::QueryBuilder::<$db>::new("SELECT * FROM llm_calls WHERE tenant = ");
                qb.push_bind(tenant)
                    .push(" AND incident_id = ")
                    .push_bind(incident_id)
                    .push(" ORDER BY at, id LIMIT 1000");
                let rows = qb.build().fetch_all(&self.pool).await?;
                let decode = |r: &<$db as sqlx::Database>::Row| -> $crate::Result<$crate::explain::LlmCall> {
                    let n = |c: &str| -> $crate::Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
                    Ok($crate::explain::LlmCall {
                        id: r.try_get("id")?,
                        tenant: r.try_get("tenant")?,
                        incident_id: r.try_get("incident_id")?,
                        purpose: r.try_get("purpose")?,
                        model: r.try_get("model")?,
                        prompt_version: r.try_get("prompt_version")?,
                        facts_hash: r.try_get("facts_hash")?,
                        input_tokens: n("input_tokens")?,
                        output_tokens: n("output_tokens")?,
                        latency_ms: n("latency_ms")?,
                        cost_usd: r.try_get("cost_usd")?,
                        outcome: r.try_get("outcome")?,
                        answer: r.try_get("answer")?,
                        at: chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, r.try_get("at")?)
                            .single()
                            .unwrap_or_default(),
                    })
                };
                Ok($crate::skip_undecodable("llm_calls", rows.iter().map(decode)))
            }
        }
    };
}
pub(crate) use explain_store;
