//! `POST /api/v1/query`: read-only SQL over the caller's result tables, answered as JSON or
//! as an Arrow IPC stream (built with the `sql` feature; 501 without it).

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use seismo_schemas::Caller;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiResult, ApiState, caller, json_body};

pub use seismo_store::scan::QueryLimits;

/// Longest query text, in bytes.
/// (Parsing and planning are not interruptible by the time limit; a short text keeps them
/// short.)
pub const MAX_SQL_BYTES: usize = 16 << 10;
/// Media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// How the answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    Json,
    Arrow,
}

/// A query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryRequest {
    /// One SELECT (or WITH, EXPLAIN) over the tables anomalies, incidents,
    /// incident_anomalies, incident_events, alerts, series, forecasts and bands.
    sql: String,
    /// Most rows wanted; the server's `query.max_rows` caps it.
    #[serde(default)]
    max_rows: Option<usize>,
    /// `json` (the default) or `arrow` (an Arrow IPC stream); `Accept:
    /// application/vnd.apache.arrow.stream` also asks for Arrow.
    #[serde(default)]
    format: Option<Format>,
}

/// A column of an answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct AnswerColumn {
    name: String,
    /// Arrow type, e.g. `Int64`, `Utf8`, `Timestamp(ms, "UTC")`.
    r#type: String,
}

/// A JSON answer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct QueryAnswer {
    columns: Vec<AnswerColumn>,
    row_count: usize,
    /// More rows matched than the row limit; the first ones are here.
    truncated: bool,
    elapsed_ms: u64,
    /// One object per row, by column name; times as RFC 3339 text.
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /api/v1/query`.
pub(crate) async fn run(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let req: QueryRequest = json_body(&body)?;
    if req.sql.len() > MAX_SQL_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the query is {} bytes; at most {MAX_SQL_BYTES} are accepted",
            req.sql.len()
        )));
    }
    if req.max_rows == Some(0) {
        return Err(ApiError::BadRequest("max_rows must be at least 1".into()));
    }
    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    let arrow = match req.format {
        Some(f) => f == Format::Arrow,
        None => wants_arrow,
    };
    answer(&s, &who.tenant, &req.sql, req.max_rows, arrow).await
}

#[cfg(feature = "sql")]
async fn answer(
    s: &ApiState,
    tenant: &str,
    sql: &str,
    max_rows: Option<usize>,
    arrow: bool,
) -> ApiResult<Response> {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;
    use seismo_query::{QueryEngine, QueryError};
    let engine = QueryEngine::new(s.store.clone(), s.query_limits);
    let a = engine
        .run(tenant, sql, max_rows)
        .await
        .map_err(|e| match e {
            QueryError::Invalid(m) => ApiError::BadRequest(m),
            e @ (QueryError::Timeout(_) | QueryError::Memory { .. }) => {
                ApiError::Limit(e.to_string())
            }
            QueryError::Internal(m) => ApiError::Internal(m),
        })?;
    let flag = |b: bool| HeaderValue::from_static(if b { "true" } else { "false" });
    let encoded = if arrow { a.to_arrow_ipc() } else { a.to_json() }
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = encoded.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if arrow {
            ARROW_STREAM
        } else {
            "application/json"
        }),
    );
    // One tenant's rows: no shared cache may keep them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-seismo-truncated", flag(a.truncated));
    h.insert("x-seismo-row-count", HeaderValue::from(a.rows));
    Ok(resp)
}

#[cfg(not(feature = "sql"))]
async fn answer(
    _s: &ApiState,
    _tenant: &str,
    _sql: &str,
    _max_rows: Option<usize>,
    _arrow: bool,
) -> ApiResult<Response> {
    Err(ApiError::NotBuilt(
        "this build of seismo has no SQL engine: build it with `--features sql`".into(),
    ))
}
