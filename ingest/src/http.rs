//! HTTP ingest: JSON lines of points and Alertmanager webhooks, answered 2xx only once on the bus.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use seismo_schemas::{AlertmanagerWebhook, DEFAULT_TENANT, correlation_key, topics};
use seismo_transport::{OutRecord, Producer, TransportError};
use serde_json::json;

use crate::{Rejection, metrics, parse_lines};

/// What the HTTP handlers need.
#[derive(Clone)]
pub struct IngestHttp {
    pub producer: Arc<dyn Producer>,
    /// How long a request may wait for room on the bus before it is refused with 503.
    pub publish_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Label whose value refines the correlation scope (see `correlation_key`).
    pub scope_label: Option<String>,
}

/// The ingest routes: `POST /api/v1/ingest/points`, `POST /api/v1/ingest/alertmanager` and
/// `POST /api/v1/write` (Prometheus remote_write).
pub fn router(state: IngestHttp) -> axum::Router {
    let limit = state.max_body_bytes;
    axum::Router::new()
        .route("/api/v1/ingest/points", post(ingest_points))
        .route("/api/v1/ingest/alertmanager", post(ingest_alertmanager))
        .route("/api/v1/write", post(ingest_remote_write))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The request's tenant header, if any; the error is a message for a 400.
fn tenant_of(headers: &HeaderMap) -> Result<Option<String>, String> {
    match headers.get("x-seismo-tenant") {
        None => Ok(None),
        Some(v) => {
            let t = v.to_str().unwrap_or_default();
            seismo_schemas::validate_tenant(t).map_err(|e| e.to_string())?;
            Ok(Some(t.to_string()))
        }
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

fn count(endpoint: &str, resp: Response) -> Response {
    metrics::HTTP_REQUESTS
        .with_label_values(&[endpoint, resp.status().as_str()])
        .inc();
    resp
}

fn publish_error(e: TransportError) -> Response {
    match e {
        TransportError::Full => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline is full; nothing was accepted, retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        TransportError::Closed(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; nothing was accepted",
        ),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
    }
}

/// Accepts JSON lines of `MetricPoint`. Valid lines are published even when others are
/// refused (a partial write): the answer is 202 when every line was accepted, 400 with
/// `accepted` and the numbered `rejected` lines otherwise, 503 when the bus is full.
async fn ingest_points(State(s): State<IngestHttp>, headers: HeaderMap, body: Bytes) -> Response {
    count("points", ingest_points_inner(&s, &headers, body).await)
}

async fn ingest_points_inner(s: &IngestHttp, headers: &HeaderMap, body: Bytes) -> Response {
    let tenant = match tenant_of(headers) {
        Ok(t) => t,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let parsed = parse_lines(&body, tenant.as_deref());
    let accepted = parsed.points.len();
    if accepted > 0 {
        // Forward the accepted lines as one record, tenant filled in, so ingest's runner
        // stores and re-keys them exactly as if a producer had written them to Kafka.
        let mut payload = BytesMut::with_capacity(body.len());
        for (range, p) in parsed.accepted_lines.iter().zip(&parsed.points) {
            if tenant.is_some() {
                payload.extend_from_slice(&serde_json::to_vec(p).expect("points serialise"));
            } else {
                payload.extend_from_slice(&body[range.clone()]);
            }
            payload.extend_from_slice(b"\n");
        }
        if let Err(r) = forward(s, payload).await {
            return r;
        }
    }
    let status = if parsed.rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    metrics::REJECTED.inc_by(parsed.rejected.len() as u64);
    let rejected: Vec<Rejection> = parsed.rejected;
    (
        status,
        Json(json!({ "accepted": accepted, "rejected": rejected })),
    )
        .into_response()
}

/// Publishes accepted points (JSON lines) to `seismo.metrics` as one record, all or
/// nothing within the publish timeout; the error is the response to give.
async fn forward(s: &IngestHttp, payload: BytesMut) -> Result<(), Response> {
    let record = OutRecord::new(Bytes::new(), payload.freeze());
    s.producer
        .try_send_all(topics::METRICS, vec![record], s.publish_timeout)
        .await
        .map_err(publish_error)
}

/// Accepts a Prometheus remote_write request. It is validated here, so Prometheus learns
/// of bad series in the response (400 is not retried by Prometheus, 5xx is), and the
/// accepted points are forwarded as JSON lines like every other point.
async fn ingest_remote_write(
    State(s): State<IngestHttp>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count("remote_write", remote_write_inner(&s, &headers, body).await)
}

async fn remote_write_inner(s: &IngestHttp, headers: &HeaderMap, body: Bytes) -> Response {
    let tenant = match tenant_of(headers) {
        Ok(t) => t,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let (parsed, _stale) = match crate::remote_write::decode(&body, tenant.as_deref()) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let accepted = parsed.points.len();
    if accepted > 0 {
        let mut payload = BytesMut::new();
        for p in &parsed.points {
            payload.extend_from_slice(&serde_json::to_vec(p).expect("points serialise"));
            payload.extend_from_slice(b"\n");
        }
        if let Err(r) = forward(s, payload).await {
            return r;
        }
    }
    metrics::REJECTED.inc_by(parsed.rejected.len() as u64);
    let status = if parsed.rejected.is_empty() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::BAD_REQUEST
    };
    if status == StatusCode::NO_CONTENT {
        return status.into_response();
    }
    (
        status,
        Json(json!({ "accepted": accepted, "rejected": parsed.rejected })),
    )
        .into_response()
}

/// Accepts an Alertmanager webhook (version 4) and publishes one canonical alert per entry.
async fn ingest_alertmanager(
    State(s): State<IngestHttp>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count(
        "alertmanager",
        ingest_alertmanager_inner(&s, &headers, body).await,
    )
}

async fn ingest_alertmanager_inner(s: &IngestHttp, headers: &HeaderMap, body: Bytes) -> Response {
    let tenant = match tenant_of(headers) {
        Ok(t) => t,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let hook: AlertmanagerWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("not an Alertmanager v4 payload: {e}"),
            );
        }
    };
    let alerts = match hook.into_alerts(Some(tenant.as_deref().unwrap_or(DEFAULT_TENANT))) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let records: Vec<OutRecord> = alerts
        .iter()
        .map(|a| {
            OutRecord::new(
                Bytes::from(correlation_key(
                    &a.tenant,
                    &a.labels,
                    s.scope_label.as_deref(),
                )),
                Bytes::from(serde_json::to_vec(a).expect("alerts serialise")),
            )
        })
        .collect();
    let n = records.len();
    if let Err(e) = s
        .producer
        .try_send_all(topics::ALERTS, records, s.publish_timeout)
        .await
    {
        return publish_error(e);
    }
    (StatusCode::ACCEPTED, Json(json!({ "accepted": n }))).into_response()
}
