//! The HTTP API: query anomalies and incidents, drive incidents through their lifecycle,
//! manage tokens, read the audit log, and expose health and Prometheus metrics.
#![expect(
    clippy::disallowed_methods,
    reason = "the API stamps requests, tokens and silences with the wall clock"
)]

mod admin;
pub mod auth;
pub mod openapi;
pub mod query;
mod series;
pub mod silences;
pub mod stream;

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use prometheus::{IntCounter, register_int_counter};
use seismo_runtime::Health;
use seismo_schemas::{
    Anomaly, Caller, DEFAULT_TENANT, Incident, IncidentEvent, IncidentEventKind, IncidentStatus,
    Role,
};
use seismo_store::access::ACTION_INCIDENT_TRANSITION;
use seismo_store::{AnomalyQuery, AuditRecord, Cursor, IncidentQuery, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use auth::{AuthMode, AuthSettings, Authenticator};

/// Default page size of listings.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size a client may ask for.
pub const MAX_LIMIT: usize = 1000;
/// Most anomalies the answer about one incident carries (it counts them all).
pub const MAX_INCIDENT_ANOMALIES: usize = 1000;
/// Most status changes of one incident through the API, so its timeline cannot grow
/// without bound.
pub const MAX_STATUS_CHANGES: usize = 100;
/// Longest `note` of a transition, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;
/// Longest `actor` of a transition, in bytes.
pub const MAX_ACTOR_BYTES: usize = 256;

static SKIPPED_ROWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_store_rows_skipped_total",
        "Stored rows that listings skipped because they could not be decoded"
    )
    .expect("metric")
});

/// The API's errors; mapped to status codes in one place ([`IntoResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The service cannot answer this now (503), e.g. too many streams.
    #[error("{0}")]
    Unavailable(String),
    /// Understood, but it went past a limit (422): a query's time or memory.
    #[error("{0}")]
    Limit(String),
    /// This build lacks the part that would answer (501).
    #[error("{0}")]
    NotBuilt(String),
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
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotBuilt(_) => StatusCode::NOT_IMPLEMENTED,
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
    /// The service label, dependency graph and metric roles investigations use.
    pub correlate: Arc<seismo_correlate::CorrelateConfig>,
    /// The authenticator in front of the API, told of revocations so they apply at once.
    pub auth: Option<Arc<Authenticator>>,
    /// Where status changes are announced (`seismo.incidents`), for notifiers.
    pub changes: Option<Arc<dyn seismo_transport::Producer>>,
    /// Regenerates explanations on request (`POST .../explanation`).
    pub explainer: Option<Arc<seismo_explain::Explainer>>,
    /// The incident changes this process hears of, for `/api/v1/stream/incidents`.
    pub feed: Option<stream::ChangeFeed>,
    /// Limits of `POST /api/v1/query`.
    pub query_limits: query::QueryLimits,
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>) -> Self {
        ApiState {
            store,
            correlate: Arc::default(),
            auth: None,
            changes: None,
            explainer: None,
            feed: None,
            query_limits: query::QueryLimits::default(),
        }
    }

    pub fn with_query_limits(mut self, limits: query::QueryLimits) -> Self {
        self.query_limits = limits;
        self
    }

    pub fn with_feed(mut self, feed: Option<stream::ChangeFeed>) -> Self {
        self.feed = feed;
        self
    }

    pub fn with_explainer(mut self, e: Option<Arc<seismo_explain::Explainer>>) -> Self {
        self.explainer = e;
        self
    }

    pub fn with_changes(mut self, producer: Option<Arc<dyn seismo_transport::Producer>>) -> Self {
        self.changes = producer;
        self
    }

    pub fn with_correlate(mut self, cfg: seismo_correlate::CorrelateConfig) -> Self {
        self.correlate = Arc::new(cfg);
        self
    }

    pub fn with_auth(mut self, auth: Option<Arc<Authenticator>>) -> Self {
        self.auth = auth;
        self
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
        .route("/api/v1/openapi.json", get(openapi_json))
}

/// The OpenAPI document, built once.
async fn openapi_json() -> Json<&'static serde_json::Value> {
    static DOC: LazyLock<serde_json::Value> = LazyLock::new(openapi::document);
    Json(&DOC)
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/anomalies", get(list_anomalies))
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/forecasts", get(list_forecasts))
        .route("/api/v1/series", get(series::list))
        .route("/api/v1/series/{id}", get(series::one))
        .route("/api/v1/series/{id}/forecast", get(series_forecast))
        .route("/api/v1/incidents/{id}", get(get_incident))
        .route("/api/v1/incidents/{id}/transition", post(transition))
        .route(
            "/api/v1/incidents/{id}/explanation",
            get(get_explanation).post(regenerate_explanation),
        )
        .route("/api/v1/incidents/{id}/postmortem", get(get_postmortem))
        .route("/api/v1/investigate", post(investigate))
        .route("/api/v1/query", post(query::run))
        .route(
            "/api/v1/silences",
            get(silences::list).post(silences::create),
        )
        .route("/api/v1/silences/{id}", delete(silences::expire))
        .route(
            "/api/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(admin::revoke_token))
        .route("/api/v1/audit", get(admin::list_audit))
        .route("/api/v1/stream/incidents", get(stream::incidents))
        .with_state(state)
}

async fn metrics() -> Response {
    seismo_runtime::resident_bytes();
    // The store counts skipped rows without depending on prometheus; catch up here.
    let skipped = seismo_store::skipped_rows();
    SKIPPED_ROWS.inc_by(skipped.saturating_sub(SKIPPED_ROWS.get()));
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_utf8(&prometheus::gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

fn tenant(headers: &HeaderMap) -> ApiResult<String> {
    match headers.get(auth::TENANT_HEADER) {
        None => Ok(DEFAULT_TENANT.to_string()),
        Some(v) => {
            let t = v.to_str().unwrap_or_default();
            seismo_schemas::validate_tenant(t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(t.to_string())
        }
    }
}

/// Who calls: as the authentication layer established it, or, with no layer in front
/// (authentication off, or a test calling the router directly), an anonymous admin of the
/// header's tenant.
fn caller(found: Option<Extension<Caller>>, headers: &HeaderMap) -> ApiResult<Caller> {
    match found {
        Some(Extension(c)) => Ok(c),
        None => Ok(Caller {
            tenant: tenant(headers)?,
            actor: "anonymous".into(),
            role: Role::Admin,
            quota: None,
        }),
    }
}

/// A request body as `T`, or a 400 saying what is wrong with it.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
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
    /// A metric name (series listing).
    name: Option<String>,
    /// The last series id of the previous page (series listing).
    after: Option<u64>,
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
            "series_id" | "after" => {
                let id = Some(
                    u64::from_str_radix(&v, 16)
                        .map_err(|_| ApiError::BadRequest(format!("{k}={v:?} is not a hex series id")))?,
                );
                if k == "after" { p.after = id } else { p.series_id = id }
            }
            "name" => {
                seismo_schemas::validate_metric_name(&v).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                p.name = Some(v);
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
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
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
            tenant: who.tenant,
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

/// The window of a forecast query; `from` defaults to three days before `to`, `to` to
/// two days after now (forecasts lie ahead); at most `max_days` long.
fn forecast_window(p: &ListParams, max_days: i64) -> ApiResult<(i64, i64)> {
    // With only `from`, the window runs 3 days from it; with neither, it is the 3 days
    // before 2 days from now (a forecast's horizon ahead).
    let to = match (p.from, p.to) {
        (_, Some(t)) => t,
        (Some(f), None) => f + chrono::Duration::days(3),
        (None, None) => Utc::now() + chrono::Duration::days(2),
    }
    .timestamp_millis();
    let from = p.from.map_or(to - 3 * 86_400_000, |f| f.timestamp_millis());
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    if to - from > max_days * 86_400_000 {
        return Err(ApiError::BadRequest(format!(
            "from..to spans more than {max_days} days; ask for less"
        )));
    }
    Ok((from, to))
}

fn latest_param(raw: &Option<String>) -> ApiResult<(Option<String>, bool)> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
    let mut latest = true;
    let mut rest = Vec::new();
    for (k, v) in pairs {
        if k == "runs" {
            latest = match v.as_str() {
                "latest" => true,
                "all" => false,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "runs={v:?}: use runs=latest or runs=all"
                    )));
                }
            };
        } else {
            rest.push((k, v));
        }
    }
    let rest = serde_urlencoded::to_string(&rest).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((Some(rest), latest))
}

/// `GET /api/v1/forecasts?series_id&from&to&runs=latest|all`: the series' forecast rows
/// in the window, from its newest forecast run (default) or every run.
async fn list_forecasts(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let (rest, latest) = latest_param(&q)?;
    let p = parse_params(rest, &["series_id", "from", "to"])?;
    let series = p
        .series_id
        .ok_or_else(|| ApiError::BadRequest("series_id is required".into()))?;
    let (from, to) = forecast_window(&p, 90)?;
    let rows = s
        .store
        .forecasts(&who.tenant, series, from, to, latest)
        .await?;
    Ok(Json(json!({
        "series_id": format!("{series:016x}"),
        "runs": if latest { "latest" } else { "all" },
        "forecasts": rows,
    }))
    .into_response())
}

/// `GET /api/v1/series/{id}/forecast?from&to`: the observed values and the newest
/// forecast of one series side by side, for a chart.
async fn series_forecast(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let series = u64::from_str_radix(&id, 16)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a hex series id")))?;
    let p = parse_params(q, &["from", "to"])?;
    let (from, to) = forecast_window(&p, 7)?;
    let forecast = s
        .store
        .forecasts(&who.tenant, series, from, to, true)
        .await?;
    // The points carry no tenant: the series must be one of the tenant's that has been
    // forecast (the forecasts query joins the series table), here or at any time.
    let known = !forecast.is_empty()
        || !s
            .store
            .forecasts(&who.tenant, series, 0, 4_102_444_800_000, true)
            .await?
            .is_empty();
    if !known {
        return Err(ApiError::NotFound(format!(
            "no forecast of series {id} for this tenant"
        )));
    }
    let observed: Vec<[f64; 2]> = s
        .store
        .newest_points(series, from, to, series::MAX_POINTS)
        .await?
        .into_iter()
        .map(|(t, v)| [t as f64, v])
        .collect();
    Ok(Json(json!({
        "series_id": format!("{series:016x}"),
        "observed": observed,
        "forecast": forecast,
    }))
    .into_response())
}

/// `GET /api/v1/incidents?from&to&status&label=name:value&limit&cursor`
async fn list_incidents(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let who = caller(found, &headers)?;
    let p = parse_params(q, &["from", "to", "status", "label", "limit", "cursor"])?;
    let page = s
        .store
        .list_incidents(&IncidentQuery {
            tenant: who.tenant,
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

/// One incident with its timeline and (some of) its anomalies.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IncidentDetail {
    /// The incident; its `anomaly_ids` are those of `anomalies`, at most
    /// [`MAX_INCIDENT_ANOMALIES`] of them.
    pub incident: Incident,
    pub timeline: Vec<IncidentEvent>,
    /// At most [`MAX_INCIDENT_ANOMALIES`] of the incident's anomalies (the first by id),
    /// so a huge incident cannot make a huge answer.
    pub anomalies: Vec<Anomaly>,
    /// How many anomalies the incident has in all.
    #[serde(default)]
    pub anomalies_total: usize,
    /// Its latest explanation (see `GET .../explanation`), if one was made.
    #[serde(default)]
    pub explanation: Option<serde_json::Value>,
    /// Pages sent about it (or given up on), oldest first.
    #[serde(default)]
    pub notifications: Vec<seismo_store::NotificationRecord>,
}

async fn get_incident(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<IncidentDetail>> {
    let tenant = caller(found, &headers)?.tenant;
    let mut incident = s
        .store
        .get_incident(&tenant, &id)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    let timeline = s.store.incident_events(&tenant, &id).await?;
    let anomalies_total = incident.anomaly_ids.len();
    // The ids come sorted, so the same ones are shown every time.
    incident.anomaly_ids.truncate(MAX_INCIDENT_ANOMALIES);
    let anomalies = s
        .store
        .anomalies_by_id(&tenant, &incident.anomaly_ids)
        .await?;
    let notifications = s.store.incident_notifications(&tenant, &id).await?;
    let explanation = s.store.explanation(&tenant, &id).await?.map(|e| e.body);
    Ok(Json(IncidentDetail {
        incident,
        timeline,
        anomalies,
        anomalies_total,
        notifications,
        explanation,
    }))
}

/// The incident's latest explanation (made by the explain stage once its changes go quiet).
async fn get_explanation(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = caller(found, &headers)?.tenant;
    s.store
        .get_incident(&tenant, &id)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    match s.store.explanation(&tenant, &id).await? {
        Some(e) => Ok(Json(e.body)),
        None => Err(ApiError::NotFound(format!(
            "an explanation of incident {id} (not made yet: the explain stage makes one once the incident's changes are quiet for explain.debounce_secs, or POST here)"
        ))),
    }
}

/// Explains the incident again now, without the cache (a model call if one is configured).
async fn regenerate_explanation(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<seismo_explain::IncidentExplanation>> {
    let tenant = caller(found, &headers)?.tenant;
    let Some(explainer) = &s.explainer else {
        return Err(ApiError::Conflict(
            "the explainer is off in this process (explain.enabled = false)".into(),
        ));
    };
    let e = explainer
        .explain(&tenant, &id, true)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    Ok(Json(e))
}

/// The post-mortem draft of a resolved incident, as Markdown.
async fn get_postmortem(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tenant = caller(found, &headers)?.tenant;
    let incident = s
        .store
        .get_incident(&tenant, &id)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    let stored = s.store.explanation(&tenant, &id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("an explanation of incident {id} (not made yet)"))
    })?;
    let e: seismo_explain::IncidentExplanation = serde_json::from_value(stored.body)
        .map_err(|e| ApiError::Internal(format!("stored explanation: {e}")))?;
    let md = seismo_explain::postmortem_markdown(&incident, &e);
    Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], md).into_response())
}

/// Runs an atomic store operation again (up to three times) after a transient failure.
/// On SQLite a transaction that reads before it writes fails at once, without waiting,
/// when another writer (an ingesting stage, a checkpoint) commits in between; the
/// operation was rolled back whole, so running it again is safe.
async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "retrying a transient store failure");
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            r => return r,
        }
    }
}

fn not_found_as(e: StoreError, id: &str) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound(format!("incident {id}")),
        e => e.into(),
    }
}

/// Body of `POST /api/v1/incidents/{id}/transition`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TransitionRequest")]
pub(crate) struct TransitionBody {
    /// Target status, e.g. `ACKNOWLEDGED`.
    status: String,
    /// The person acting, recorded on the timeline beside the token that acts.
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    note: String,
}

/// The actor of an API call without authentication and without a named person.
const DEFAULT_ACTOR: &str = "api";

/// `POST /api/v1/investigate {service | labels, at}`: root-cause candidates for a symptom
/// the caller names, ranked from the stored points.
async fn investigate(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<seismo_correlate::investigate::Answer>> {
    use seismo_correlate::investigate::{InvestigateError, Question, investigate};
    let who = caller(found, &headers)?;
    let q: Question = json_body(&body)?;
    match investigate(s.store.as_ref(), &s.correlate, &who.tenant, &q).await {
        Ok(a) => Ok(Json(a)),
        Err(InvestigateError::Invalid(m)) => Err(ApiError::BadRequest(m)),
        Err(InvestigateError::Store(e)) => Err(e.into()),
    }
}

async fn transition(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Incident>> {
    let authenticated = found.is_some();
    let who = caller(found, &headers)?;
    let b: TransitionBody = json_body(&body)?;
    if b.note.len() > MAX_NOTE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "note has {} bytes; at most {MAX_NOTE_BYTES} are accepted",
            b.note.len()
        )));
    }
    if let Some(a) = &b.actor
        && a.len() > MAX_ACTOR_BYTES
    {
        return Err(ApiError::BadRequest(format!(
            "actor has {} bytes; at most {MAX_ACTOR_BYTES} are accepted",
            a.len()
        )));
    }
    let to = IncidentStatus::parse(&b.status).ok_or_else(|| {
        ApiError::BadRequest(format!("status {:?} is not an incident status", b.status))
    })?;
    let before = s
        .store
        .get_incident(&who.tenant, &id)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    // Two transitions racing past this check can each add one more: the bound is loose by
    // the number of concurrent writers, which is what keeps it a bound.
    let changes = s
        .store
        .incident_events(&who.tenant, &id)
        .await?
        .iter()
        .filter(|e| e.kind == IncidentEventKind::StatusChanged)
        .count();
    if changes >= MAX_STATUS_CHANGES {
        return Err(ApiError::Conflict(format!(
            "incident {id} has changed status {changes} times, the most allowed ({MAX_STATUS_CHANGES}); its timeline takes no more"
        )));
    }
    // The timeline names the person (when given) and the credential that acted for them.
    let actor = match (&b.actor, authenticated) {
        (Some(person), true) => format!("{person} ({})", who.actor),
        (None, true) => who.actor.clone(),
        (Some(person), false) => person.clone(),
        (None, false) => DEFAULT_ACTOR.to_string(),
    };
    let now = Utc::now();
    let inc = retry_transient(|| {
        s.store
            .transition_incident(&who.tenant, &id, to, &actor, &b.note, now)
    })
    .await
    .map_err(|e| not_found_as(e, &id))?;
    // After the change, not before: the log holds changes that happened. Should this
    // write fail, the client hears of it (500) and the error is logged with the change.
    s.store
        .append_audit(&AuditRecord {
            time: now,
            tenant: who.tenant.clone(),
            actor: who.actor.clone(),
            action: ACTION_INCIDENT_TRANSITION.into(),
            target: id.clone(),
            detail: json!({
                "from": before.status,
                "to": inc.status,
                "person": b.actor,
                "note": b.note,
            }),
        })
        .await
        .map_err(|e| {
            ApiError::Internal(format!(
                "incident {id} went to {to} but its audit record failed: {e}"
            ))
        })?;
    if let Some(p) = &s.changes {
        let change = seismo_schemas::IncidentChange::new(
            &inc,
            seismo_schemas::ChangeKind::of_transition(before.status, inc.status),
            &format!("{id}-{}-{}", inc.status, now.timestamp_millis()),
            now,
            &actor,
            format!("{} → {}", before.status, inc.status),
        );
        let record = seismo_transport::OutRecord::new(
            id.clone(),
            serde_json::to_vec(&change).expect("changes serialise"),
        );
        // Notifiers act on this record; a change they never hear of is a page that never
        // follows the incident, so the client is told (the status itself is stored).
        p.send(seismo_schemas::topics::INCIDENTS, vec![record])
            .await
            .map_err(|e| {
                ApiError::Internal(format!(
                    "incident {id} went to {to} but announcing the change failed: {e}"
                ))
            })?;
    }
    Ok(Json(inc))
}
