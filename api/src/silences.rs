//! Silences through the API: `POST`, `GET` and `DELETE /api/v1/silences`.
#![expect(
    clippy::disallowed_methods,
    reason = "the API stamps requests, tokens and silences with the wall clock"
)]

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::{Extension, response::IntoResponse, response::Response};
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use seismo_schemas::Caller;
use seismo_store::{AuditRecord, Silence};
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, ApiResult, ApiState, caller, json_body, not_found_as};

/// Most matchers of one silence, and the longest one, in bytes.
pub const MAX_MATCHERS: usize = 32;
pub const MAX_MATCHER_BYTES: usize = 256;
/// Longest comment and author, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4096;
pub const MAX_AUTHOR_BYTES: usize = 256;
/// Most silences a tenant may have that have not ended.
pub const MAX_SILENCES: usize = 1000;
/// Longest a silence may last.
pub const MAX_DAYS: i64 = 366;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SilenceRequest")]
pub(crate) struct NewSilence {
    matchers: Vec<String>,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    ends_at: DateTime<Utc>,
    #[serde(default)]
    author: Option<String>,
    comment: String,
}

fn bad(m: String) -> ApiError {
    ApiError::BadRequest(m)
}

/// `POST /api/v1/silences {matchers, starts_at?, ends_at, author?, comment}`.
pub async fn create(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Silence>> {
    let who = caller(found, &headers)?;
    let b: NewSilence = json_body(&body)?;
    if b.matchers.is_empty() || b.matchers.len() > MAX_MATCHERS {
        return Err(bad(format!(
            "a silence needs 1 to {MAX_MATCHERS} matchers; it has {}",
            b.matchers.len()
        )));
    }
    for m in &b.matchers {
        if m.len() > MAX_MATCHER_BYTES {
            return Err(bad(format!(
                "matcher longer than {MAX_MATCHER_BYTES} bytes"
            )));
        }
        seismo_notify::config::Matcher::parse(m).map_err(bad)?;
    }
    if b.comment.trim().is_empty() || b.comment.len() > MAX_COMMENT_BYTES {
        return Err(bad(format!(
            "a silence needs a comment of 1 to {MAX_COMMENT_BYTES} bytes saying why"
        )));
    }
    let author = b.author.unwrap_or_else(|| who.actor.clone());
    if author.len() > MAX_AUTHOR_BYTES {
        return Err(bad(format!("author longer than {MAX_AUTHOR_BYTES} bytes")));
    }
    let now = Utc::now();
    let starts_at = b.starts_at.unwrap_or(now).max(now - Duration::minutes(1));
    if b.ends_at <= starts_at {
        return Err(bad("ends_at must be after starts_at (and after now)".into()));
    }
    if b.ends_at - starts_at > Duration::days(MAX_DAYS) {
        return Err(bad(format!("a silence lasts at most {MAX_DAYS} days")));
    }
    let live = s.store.list_silences(&who.tenant, now, false).await?.len();
    if live >= MAX_SILENCES {
        return Err(ApiError::Conflict(format!(
            "the tenant has {live} silences that have not ended, the most allowed ({MAX_SILENCES})"
        )));
    }
    let id = format!(
        "{:016x}",
        seismo_schemas::stable_hash(&[
            who.tenant.as_bytes(),
            b"silence",
            &now.timestamp_nanos_opt().unwrap_or_default().to_le_bytes(),
            b.matchers.join("\n").as_bytes(),
        ])
    );
    let silence = Silence {
        id,
        tenant: who.tenant.clone(),
        matchers: b.matchers,
        starts_at,
        ends_at: b.ends_at,
        author,
        comment: b.comment,
        created_at: now,
    };
    s.store.create_silence(&silence).await?;
    s.store
        .append_audit(&AuditRecord {
            time: now,
            tenant: who.tenant.clone(),
            actor: who.actor.clone(),
            action: "silence.create".into(),
            target: silence.id.clone(),
            detail: json!({ "matchers": silence.matchers, "ends_at": silence.ends_at, "comment": silence.comment }),
        })
        .await?;
    Ok(Json(silence))
}

/// `GET /api/v1/silences[?expired=true]`: the tenant's silences that have not ended (all
/// of them with `expired=true`), newest first.
pub async fn list(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let mut expired = false;
    for (k, v) in q
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
    {
        match (k, v) {
            ("expired", "true") => expired = true,
            ("expired", "false") => expired = false,
            _ => {
                return Err(bad(format!(
                    "unknown parameter {k}={v} (only expired=true|false)"
                )));
            }
        }
    }
    let items = s
        .store
        .list_silences(&who.tenant, Utc::now(), expired)
        .await?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// `DELETE /api/v1/silences/{id}`: ends it now.
pub async fn expire(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Silence>> {
    let who = caller(found, &headers)?;
    let now = Utc::now();
    let silence = s
        .store
        .expire_silence(&who.tenant, &id, now)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    s.store
        .append_audit(&AuditRecord {
            time: now,
            tenant: who.tenant.clone(),
            actor: who.actor.clone(),
            action: "silence.expire".into(),
            target: id.clone(),
            detail: json!({}),
        })
        .await?;
    Ok(Json(silence))
}
