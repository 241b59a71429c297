//! HTTP ingest: JSON lines of points and Alertmanager webhooks, answered 2xx only once on the bus.
//!
//! Every request is held to the process's [`Limits`] before anything is published:
//! decompressed size, points or alerts per request, the time window, the active series
//! of its tenant, and the caller's quota. A refusal names the option that refused it.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use bytes::{Bytes, BytesMut};
use seismo_schemas::{AlertmanagerWebhook, Caller, DEFAULT_TENANT, Role, correlation_key, topics};
use seismo_transport::{OutRecord, Producer, TransportError};
use serde_json::json;

use crate::{
    DecodeError, Limit, Limits, Parsed, TooLarge, check_line_count, metrics, now_ms,
    parse_lines_chunked,
};

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
    /// The process's ingest limits: share them with its ingest stage ([`crate::run`]),
    /// so one limiter counts each tenant's active series.
    pub limits: Limits,
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

/// A refused request: answered `{"error": message}`, with `limit` naming the option when
/// a limit refused it, and `Retry-After` when retrying later can succeed.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    limit: Option<Limit>,
    retry_after_secs: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            limit: None,
            retry_after_secs: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match self.limit {
            Some(l) => json!({ "error": self.message, "limit": format!("ingest.{}", l.as_str()) }),
            None => json!({ "error": self.message }),
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

/// 413 for a request beyond a limit, counted under that limit.
fn too_large(t: TooLarge) -> Refusal {
    t.limit.count(1);
    Refusal {
        limit: Some(t.limit),
        ..Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, t.message)
    }
}

/// The tenant of a request. With a caller (authentication on) it is the caller's tenant;
/// `X-Seismo-Tenant` may name another only for an admin (403 otherwise). Without one it
/// is the header's, if any (400 when the header is not a valid tenant).
fn request_tenant(caller: Option<&Caller>, headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let named = match headers.get("x-seismo-tenant") {
        None => None,
        Some(v) => {
            let t = v.to_str().unwrap_or_default();
            seismo_schemas::validate_tenant(t)
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            Some(t.to_string())
        }
    };
    let Some(c) = caller else {
        return Ok(named);
    };
    match named {
        Some(t) if t != c.tenant && c.role != Role::Admin => {
            let message = format!(
                "X-Seismo-Tenant names tenant {t:?}, but this token belongs to tenant {:?}; only admin tokens may write for another tenant",
                c.tenant
            );
            Err(Refusal::new(StatusCode::FORBIDDEN, message))
        }
        Some(t) => Ok(Some(t)),
        None => Ok(Some(c.tenant.clone())),
    }
}

/// Spends `n` of the caller's quota, if it has one; the error is a 429 with Retry-After
/// (seconds, rounded up, at least 1).
fn take_quota(caller: Option<&Caller>, n: u64) -> Result<(), Refusal> {
    let Some(quota) = caller.and_then(|c| c.quota.as_ref()) else {
        return Ok(());
    };
    if n == 0 {
        return Ok(());
    }
    quota.take(n).map_err(|wait| {
        Limit::Quota.count(1);
        let secs = u64::try_from(wait.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1);
        Refusal {
            limit: Some(Limit::Quota),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token's ingest quota is spent; nothing was accepted, retry in {secs} s"
                ),
            )
        }
        .retry_after(secs)
    })
}

/// Decompresses a gzip body into at most `max` bytes, refusing it as soon as it would
/// exceed them: the buffer never grows beyond `max`, whatever the body declares.
pub fn gunzip(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DecodeError::Malformed(format!(
                    "the body is not valid gzip: {e}"
                )));
            }
        };
        let need = out.len() + n;
        if need > max {
            return Err(DecodeError::TooLarge(TooLarge {
                limit: Limit::MaxDecompressedBytes,
                message: format!(
                    "the body decompresses to more than {max} bytes (ingest.max_decompressed_bytes)"
                ),
            }));
        }
        if out.capacity() < need {
            // Doubling as Vec would, but never past the limit.
            let target = (out.capacity() * 2).clamp(need, max);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// The body of a JSON lines request, decompressed per its `Content-Encoding` (gzip, or
/// none); the error is the response to give.
fn decoded_body(headers: &HeaderMap, body: Bytes, max: usize) -> Result<Bytes, Refusal> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") | Some("x-gzip") => match gunzip(&body, max) {
            Ok(b) => Ok(Bytes::from(b)),
            Err(DecodeError::TooLarge(t)) => Err(too_large(t)),
            Err(DecodeError::Malformed(m)) => Err(Refusal::new(StatusCode::BAD_REQUEST, m)),
        },
        Some(other) => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported; send gzip or no encoding"),
        )),
    }
}

fn count(endpoint: &str, resp: Response) -> Response {
    metrics::HTTP_REQUESTS
        .with_label_values(&[endpoint, resp.status().as_str()])
        .inc();
    resp
}

fn publish_error(e: TransportError) -> Refusal {
    match e {
        TransportError::Full => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is full; nothing was accepted, retry later",
        )
        .retry_after(1),
        TransportError::Closed(_) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; nothing was accepted",
        ),
        other => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// The answer to a request with refused lines: what was accepted, the first refusals
/// (at most `ingest.max_rejections_listed`) and how many there were in all.
fn partial(parsed: &Parsed, accepted: usize, late: usize) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(with_late(
            json!({
                "accepted": accepted,
                "rejected": parsed.rejected,
                "rejected_count": parsed.rejected_count,
            }),
            late,
        )),
    )
        .into_response()
}

/// Says in an answer how many accepted points were late (see [`LATE_HEADER`]).
fn with_late(mut body: serde_json::Value, late: usize) -> serde_json::Value {
    if late > 0 {
        body["late"] = json!(late);
        body["late_note"] = json!(
            "points older than their series' newest bucket are stored but will not be scored; send each series' points in time order"
        );
    }
    body
}

/// Header of a remote_write answer (which has no body) counting late points: accepted
/// and stored, but older than their series' newest bucket, so never scored.
pub const LATE_HEADER: &str = "x-seismo-late-points";

/// Accepts JSON lines of `MetricPoint`, plain or gzip. Valid lines are published even when
/// others are refused (a partial write): the answer is 202 when every line was accepted,
/// 400 with `accepted`, the first numbered `rejected` lines and `rejected_count`
/// otherwise, 503 when the bus is full, 413 beyond a request limit, 429 beyond the
/// caller's quota.
async fn ingest_points(
    State(s): State<IngestHttp>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = caller.as_ref().map(|c| &c.0);
    let r = ingest_points_inner(&s, caller, &headers, body).await;
    count("points", r.unwrap_or_else(IntoResponse::into_response))
}

async fn ingest_points_inner(
    s: &IngestHttp,
    caller: Option<&Caller>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let cfg = s.limits.config();
    let tenant = request_tenant(caller, headers)?;
    let body = decoded_body(headers, body, cfg.max_decompressed_bytes)?;
    check_line_count(&body, cfg.max_points_per_request).map_err(too_large)?;
    let now = now_ms();
    // Parsed a chunk at a time, keeping only the byte ranges of accepted lines: a request
    // then holds its body and one chunk of points, not ten times its body in points.
    let mut parsed = Parsed::new(cfg.max_rejections_listed);
    let mut kept: Vec<Vec<std::ops::Range<usize>>> = vec![Vec::new(); FORWARD_KEYS as usize];
    let mut accepted = 0;
    let mut late = 0;
    parse_lines_chunked(
        &body,
        tenant.as_deref(),
        s.limits.parse_limits(now).window.as_ref(),
        PARSE_CHUNK_LINES,
        &mut parsed,
        |chunk| {
            late += s.limits.admit_series(chunk, now);
            accepted += chunk.points.len();
            for (p, r) in chunk.points.iter().zip(chunk.accepted_lines.drain(..)) {
                let lines = &mut kept[forward_key(p) as usize];
                match lines.last_mut() {
                    Some(last) if last.end + 1 == r.start => last.end = r.end,
                    _ => lines.push(r),
                }
            }
            chunk.points.clear();
            chunk.origins.clear();
        },
    );
    parsed.count_refusals();
    crate::metrics::LATE.inc_by(late as u64);
    if accepted > 0 {
        take_quota(caller, accepted as u64)?;
        // Forward the accepted lines unchanged, with the tenant in a header for the lines
        // that name none, so ingest's runner stores and re-keys them exactly as if a
        // producer had written them to Kafka. Lines are grouped by forward key, so a series'
        // points always take the same partition and reach detect in order. A request whose
        // lines all share a key and were all accepted is forwarded uncopied.
        let used: Vec<usize> = (0..kept.len()).filter(|k| !kept[*k].is_empty()).collect();
        let records = used
            .iter()
            .map(|&k| {
                let payload = if used.len() == 1 && parsed.rejected_count == 0 {
                    body.clone()
                } else {
                    let lines = &kept[k];
                    let mut payload =
                        BytesMut::with_capacity(lines.iter().map(|r| r.len() + 1).sum());
                    for r in lines {
                        payload.extend_from_slice(&body[r.clone()]);
                        payload.extend_from_slice(b"\n");
                    }
                    payload.freeze()
                };
                forward_record(k as u32, payload, tenant.as_deref())
            })
            .collect();
        forward(s, records).await?;
    }
    if parsed.rejected_count > 0 {
        return Ok(partial(&parsed, accepted, late));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(with_late(
            json!({ "accepted": accepted, "rejected": [], "rejected_count": 0 }),
            late,
        )),
    )
        .into_response())
}

/// Lines parsed at a time by the JSON-lines endpoint (a few MB of points at most).
const PARSE_CHUNK_LINES: usize = 4096;

/// Keys HTTP ingest forwards points under. Each point's key is a hash of its `points_key`
/// (host or series), so one series always takes one `seismo.metrics` partition and its
/// points reach detect in order (spread over partitions, a later minute could overtake an
/// earlier one, which detect would then refuse as late); 64 keys bound the records per
/// request and still spread the load over up to 64 partitions.
const FORWARD_KEYS: u32 = 64;

fn forward_key(p: &seismo_schemas::MetricPoint) -> u32 {
    seismo_transport::partition_for(p.points_key().as_bytes(), FORWARD_KEYS)
}

fn forward_record(key: u32, payload: Bytes, tenant: Option<&str>) -> OutRecord {
    let r = OutRecord::new(Bytes::from(format!("fwd-{key:02}")), payload);
    match tenant {
        Some(t) => r.header("tenant", t.to_string()),
        None => r,
    }
}

/// Publishes accepted points (JSON lines) to `seismo.metrics` as one record, all or
/// nothing within the publish timeout; the error is the response to give.
async fn forward(s: &IngestHttp, records: Vec<OutRecord>) -> Result<(), Refusal> {
    s.producer
        .try_send_all(topics::METRICS, records, s.publish_timeout)
        .await
        .map_err(publish_error)
}

/// Accepts a Prometheus remote_write request. It is validated here, so Prometheus learns
/// of bad series in the response (400 and 413 are not retried by Prometheus, 5xx and 429
/// are), and the accepted points are forwarded as JSON lines like every other point.
async fn ingest_remote_write(
    State(s): State<IngestHttp>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = caller.as_ref().map(|c| &c.0);
    let r = remote_write_inner(&s, caller, &headers, body).await;
    count(
        "remote_write",
        r.unwrap_or_else(IntoResponse::into_response),
    )
}

async fn remote_write_inner(
    s: &IngestHttp,
    caller: Option<&Caller>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let tenant = request_tenant(caller, headers)?;
    let now = now_ms();
    let (mut parsed, _stale) =
        crate::remote_write::decode(&body, tenant.as_deref(), &s.limits.parse_limits(now))
            .map_err(|e| match e {
                DecodeError::TooLarge(t) => too_large(t),
                DecodeError::Malformed(m) => Refusal::new(StatusCode::BAD_REQUEST, m),
            })?;
    let late = s.limits.admit_series(&mut parsed, now);
    crate::metrics::LATE.inc_by(late as u64);
    parsed.count_refusals();
    let accepted = parsed.points.len();
    if accepted > 0 {
        take_quota(caller, accepted as u64)?;
        let mut payloads: Vec<BytesMut> = vec![BytesMut::new(); FORWARD_KEYS as usize];
        for p in &parsed.points {
            let payload = &mut payloads[forward_key(p) as usize];
            payload.extend_from_slice(&serde_json::to_vec(p).expect("points serialise"));
            payload.extend_from_slice(b"\n");
        }
        let records = payloads
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(k, p)| forward_record(k as u32, p.freeze(), None))
            .collect();
        forward(s, records).await?;
    }
    if parsed.rejected_count > 0 {
        return Ok(partial(&parsed, accepted, late));
    }
    if late > 0 {
        return Ok((StatusCode::NO_CONTENT, [(LATE_HEADER, late.to_string())]).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Accepts an Alertmanager webhook (version 4) and publishes one canonical alert per
/// entry, all of them in one all-or-nothing send (so a large webhook is admitted whole
/// whenever the bus has room, and a retry cannot duplicate part of it).
async fn ingest_alertmanager(
    State(s): State<IngestHttp>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = caller.as_ref().map(|c| &c.0);
    let r = ingest_alertmanager_inner(&s, caller, &headers, body).await;
    count(
        "alertmanager",
        r.unwrap_or_else(IntoResponse::into_response),
    )
}

async fn ingest_alertmanager_inner(
    s: &IngestHttp,
    caller: Option<&Caller>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let tenant = request_tenant(caller, headers)?;
    let hook: AlertmanagerWebhook = serde_json::from_slice(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("not an Alertmanager v4 payload: {e}"),
        )
    })?;
    let max = s.limits.config().max_alerts_per_request;
    if hook.alerts.len() > max {
        return Err(too_large(TooLarge {
            limit: Limit::MaxAlertsPerRequest,
            message: format!(
                "the webhook holds {} alerts, more than {max} (ingest.max_alerts_per_request); lower max_alerts in Alertmanager's webhook_config",
                hook.alerts.len()
            ),
        }));
    }
    let alerts = hook
        .into_alerts(Some(tenant.as_deref().unwrap_or(DEFAULT_TENANT)))
        .map_err(|e| {
            if let Some(l) = e.limit().and_then(Limit::of_alert) {
                l.count(1);
            }
            Refusal::new(StatusCode::BAD_REQUEST, e.to_string())
        })?;
    take_quota(caller, alerts.len() as u64)?;
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
    s.producer
        .try_send_all(topics::ALERTS, records, s.publish_timeout)
        .await
        .map_err(publish_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": n }))).into_response())
}
