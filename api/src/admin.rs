//! Admin endpoints: create, list and revoke API tokens, and read the audit log, always within the caller's tenant.
#![expect(
    clippy::disallowed_methods,
    reason = "the API stamps requests, tokens and silences with the wall clock"
)]

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use chrono::Utc;
use seismo_schemas::{Caller, Role};
use seismo_store::{ApiToken, AuditQuery, StoreError};
use serde::Deserialize;
use serde_json::json;

use crate::auth::NewToken;
use crate::{ApiError, ApiResult, ApiState, caller, json_body, parse_params};

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TokenRequest")]
pub(crate) struct CreateBody {
    /// The token's tenant; the caller's when absent.
    #[serde(default)]
    tenant: Option<String>,
    role: String,
    name: String,
    #[serde(default)]
    rate_per_sec: Option<f64>,
}

/// `POST /api/v1/tokens {tenant?, role, name, rate_per_sec?}`: 201 with the token, whose
/// whole string (`token`) this answer is the only one to carry.
pub(crate) async fn create_token(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let b: CreateBody = json_body(&body)?;
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role {:?} is not one of ingest, read, write, admin",
            b.role
        ))
    })?;
    let new = NewToken {
        tenant: b.tenant.unwrap_or_else(|| who.tenant.clone()),
        role,
        name: b.name,
        rate_per_sec: b.rate_per_sec,
    };
    let (token, secret) = crate::auth::create_token(s.store.as_ref(), new, &who.actor).await?;
    let mut v = serde_json::to_value(&token).expect("plain data serialises");
    v["token"] = secret.into();
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /api/v1/tokens`: the caller's tenant's tokens, revoked ones included, no secrets.
pub(crate) async fn list_tokens(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let who = caller(found, &headers)?;
    let items: Vec<ApiToken> = s.store.list_tokens(Some(&who.tenant)).await?;
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /api/v1/tokens/{id}`: revokes a token of the caller's tenant (404 for any other).
pub(crate) async fn revoke_token(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiToken>> {
    let who = caller(found, &headers)?;
    let token = s
        .store
        .revoke_token(Some(&who.tenant), &id, &who.actor, Utc::now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("token {id}")),
            e => e.into(),
        })?;
    if let Some(auth) = &s.auth {
        auth.forget(&token.id);
    }
    Ok(Json(token))
}

/// `GET /api/v1/audit?from&to&limit&cursor`: the caller's tenant's audit log, newest first.
pub(crate) async fn list_audit(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let p = parse_params(q, &["from", "to", "limit", "cursor"])?;
    let page = s
        .store
        .list_audit(&AuditQuery {
            tenant: who.tenant,
            from: p.from,
            to: p.to,
            limit: p.limit,
            cursor: p.cursor,
        })
        .await?;
    Ok(Json(page).into_response())
}
