//! The HTTP API: query anomalies and incidents, drive incidents through their lifecycle,
//! and expose health and Prometheus metrics.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use seismo_runtime::Health;
use seismo_schemas::{Anomaly, DEFAULT_TENANT, Incident, IncidentEvent, IncidentStatus};
use seismo_store::{AnomalyQuery, Cursor, IncidentQuery, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Default page size of listings.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size a client may ask for.
pub const MAX_LIMIT: usize = 1000;

/// The API's errors; mapped to status codes in one place ([`IntoResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("resource".into()),
            StoreError::IllegalTransition(t) => ApiError::Conflict(t.to_string()),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(detail) => {
                // Internal details go to the log, not to the client.
                tracing::error!(%detail, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (code, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>) -> Self {
        ApiState { store }
    }
}

/// Liveness (`/healthz`: the process answers), readiness (`/readyz`: every stage of the
/// process runs and none is stuck in one batch longer than `stuck_after`; 503 with the
/// per-stage report otherwise) and Prometheus metrics. Every process serves them, whatever
/// its stage, without authentication.
pub fn ops_router(health: Health, stuck_after: std::time::Duration) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let (ready, report) = health.readiness(stuck_after);
                    let code = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, Json(report))
                }
            }),
        )
        .route("/metrics", get(metrics))
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/anomalies", get(list_anomalies))
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/incidents/{id}", get(get_incident))
        .route("/api/v1/incidents/{id}/transition", post(transition))
        .with_state(state)
}

async fn metrics() -> Response {
    seismo_runtime::resident_bytes();
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_utf8(&prometheus::gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

fn tenant(headers: &HeaderMap) -> ApiResult<String> {
    match headers.get("x-seismo-tenant") {
        None => Ok(DEFAULT_TENANT.to_string()),
        Some(v) => {
            let t = v.to_str().unwrap_or_default();
            seismo_schemas::validate_tenant(t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(t.to_string())
        }
    }
}

fn parse_time(name: &str, v: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(ms) = v.parse::<i64>() {
        return Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| ApiError::BadRequest(format!("{name}={v} is out of range")));
    }
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!("{name}={v:?}: use RFC 3339 or epoch milliseconds"))
        })
}

/// Query parameters common to listings, parsed by hand because `label` repeats.
#[derive(Default)]
struct ListParams {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    labels: Vec<(String, String)>,
    min_score: Option<f64>,
    status: Option<IncidentStatus>,
    series_id: Option<u64>,
    limit: usize,
    cursor: Option<Cursor>,
}

fn parse_params(raw: Option<String>, allowed: &[&str]) -> ApiResult<ListParams> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
    let mut p = ListParams {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter {k:?}; accepted: {}",
                allowed.join(", ")
            )));
        }
        match k.as_str() {
            "from" => p.from = Some(parse_time("from", &v)?),
            "to" => p.to = Some(parse_time("to", &v)?),
            "label" => {
                let (name, value) = v
                    .split_once(':')
                    .ok_or_else(|| ApiError::BadRequest(format!("label={v:?}: use label=name:value")))?;
                seismo_schemas::validate_label_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                p.labels.push((name.to_string(), value.to_string()));
            }
            "min_score" => {
                let s: f64 = v.parse().map_err(|_| ApiError::BadRequest(format!("min_score={v:?} is not a number")))?;
                if !(0.0..=1.0).contains(&s) {
                    return Err(ApiError::BadRequest(format!("min_score={v} must lie in 0..1")));
                }
                p.min_score = Some(s);
            }
            "status" => {
                p.status = Some(IncidentStatus::parse(&v).ok_or_else(|| {
                    ApiError::BadRequest(format!("status={v:?} is not one of DETECTED, ACKNOWLEDGED, INVESTIGATING, MITIGATED, RESOLVED, LEARNED, INCONCLUSIVE"))
                })?)
            }
            "series_id" => {
                p.series_id = Some(
                    u64::from_str_radix(&v, 16)
                        .map_err(|_| ApiError::BadRequest(format!("series_id={v:?} is not a hex series id")))?,
                )
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| ApiError::BadRequest(format!("limit={v:?} is not a number")))?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}")));
                }
                p.limit = n;
            }
            "cursor" => p.cursor = Some(Cursor::decode(&v)?),
            _ => unreachable!("filtered above"),
        }
    }
    if let (Some(f), Some(t)) = (p.from, p.to)
        && f >= t
    {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    Ok(p)
}

/// `GET /api/v1/anomalies?from&to&label=name:value&min_score&series_id&limit&cursor`
async fn list_anomalies(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = parse_params(
        q,
        &[
            "from",
            "to",
            "label",
            "min_score",
            "series_id",
            "limit",
            "cursor",
        ],
    )?;
    let page = s
        .store
        .list_anomalies(&AnomalyQuery {
            tenant: tenant(&headers)?,
            from: p.from,
            to: p.to,
            labels: p.labels,
            min_score: p.min_score,
            series_id: p.series_id,
            limit: p.limit,
            cursor: p.cursor,
        })
        .await?;
    Ok(Json(page).into_response())
}

/// `GET /api/v1/incidents?from&to&status&label=name:value&limit&cursor`
async fn list_incidents(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = parse_params(q, &["from", "to", "status", "label", "limit", "cursor"])?;
    let page = s
        .store
        .list_incidents(&IncidentQuery {
            tenant: tenant(&headers)?,
            from: p.from,
            to: p.to,
            status: p.status,
            labels: p.labels,
            limit: p.limit,
            cursor: p.cursor,
        })
        .await?;
    Ok(Json(page).into_response())
}

/// One incident with its timeline and anomalies.
#[derive(Debug, Serialize, Deserialize)]
pub struct IncidentDetail {
    pub incident: Incident,
    pub timeline: Vec<IncidentEvent>,
    pub anomalies: Vec<Anomaly>,
}

async fn get_incident(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<IncidentDetail>> {
    let tenant = tenant(&headers)?;
    let incident = s
        .store
        .get_incident(&tenant, &id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("incident {id}")),
            e => e.into(),
        })?;
    let timeline = s.store.incident_events(&tenant, &id).await?;
    let anomalies = s
        .store
        .anomalies_by_id(&tenant, &incident.anomaly_ids)
        .await?;
    Ok(Json(IncidentDetail {
        incident,
        timeline,
        anomalies,
    }))
}

/// Body of `POST /api/v1/incidents/{id}/transition`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    /// Target status, e.g. `ACKNOWLEDGED`.
    status: String,
    /// Who acts; recorded on the timeline.
    #[serde(default = "default_actor")]
    actor: String,
    #[serde(default)]
    note: String,
}

fn default_actor() -> String {
    "api".into()
}

async fn transition(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Incident>> {
    let tenant = tenant(&headers)?;
    let b: TransitionBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let to = IncidentStatus::parse(&b.status).ok_or_else(|| {
        ApiError::BadRequest(format!("status {:?} is not an incident status", b.status))
    })?;
    let inc = s
        .store
        .transition_incident(&tenant, &id, to, &b.actor, &b.note, Utc::now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("incident {id}")),
            e => e.into(),
        })?;
    Ok(Json(inc))
}
