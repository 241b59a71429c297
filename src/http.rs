//! The HTTP server every Seismo process runs: its routes, authentication in front of them,
//! and the limits that keep a slow or hostile client from taking it down (connections,
//! header and body read timeouts, bytes in flight), with a graceful shutdown that finishes
//! requests in progress.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, register_int_counter_vec};
use seismo_api::auth::{AuthMode, AuthSettings, Authenticator, Decision};
use seismo_runtime::Health;
use seismo_store::Store;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::Config;
use crate::pipeline::Embedded;

static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_http_refused_total",
        "HTTP requests and connections refused by a limit, by the limit's name",
        &["limit"]
    )
    .expect("metric")
});

/// The server's limits (the `[http]` section).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_inflight_bytes: usize,
}

impl HttpLimits {
    pub fn from_config(cfg: &Config) -> Self {
        HttpLimits {
            max_connections: cfg.http.max_connections,
            header_timeout: Duration::from_millis(cfg.http.header_timeout_ms),
            body_timeout: Duration::from_millis(cfg.http.body_timeout_ms),
            max_body_bytes: cfg.http.max_body_bytes,
            max_inflight_bytes: cfg.http.max_inflight_bytes,
        }
    }
}

/// Every route of a process: the query API (with `store`), the ingest endpoints of an
/// embedded pipeline, and liveness, readiness and metrics; behind authentication as
/// `http.auth` says (decide `auto` first with [`auth_mode`]), request bodies read under
/// the limits.
pub fn router(
    cfg: &Config,
    pipeline: Option<&Embedded>,
    store: Option<Arc<dyn Store>>,
    health: Health,
) -> axum::Router {
    let stuck_after = Duration::from_secs(cfg.stages.stuck_after_secs);
    let mut r = seismo_api::ops_router(health, stuck_after);
    // Tokens live in the store, so the pipeline's store checks them when the API has none.
    let auth_store = store.clone().or_else(|| pipeline.map(|p| p.store.clone()));
    let auth = auth_store.map(|s| authenticator(cfg, s));
    if let Some(store) = store {
        let explainer = explainer_for_api(cfg, store.clone());
        r = r.merge(seismo_api::router(
            seismo_api::ApiState::new(store)
                .with_explainer(explainer)
                .with_auth(auth.clone())
                .with_correlate(cfg.correlate.clone())
                .with_query_limits(cfg.query)
                .with_changes(pipeline.map(Embedded::changes_producer))
                .with_feed(pipeline.map(|p| p.feed.clone())),
        ));
    }
    if let Some(p) = pipeline {
        r = r.merge(seismo_ingest::http::router(p.ingest_http(cfg)));
    }
    let r = with_body_limits(r, &HttpLimits::from_config(cfg));
    match auth {
        Some(auth) => with_auth(r, auth),
        None => r,
    }
}

/// The authenticator of a process, from the `[http]` section.
pub fn authenticator(cfg: &Config, store: Arc<dyn Store>) -> Arc<Authenticator> {
    Authenticator::new(
        store,
        AuthSettings {
            mode: cfg.http.auth,
            listen: cfg.http.listen.clone(),
            cache_ttl: Duration::from_millis(cfg.http.auth_cache_ms),
            default_rate_per_sec: cfg.http.ingest_rate_per_token,
        },
    )
}

/// Puts authentication in front of every route but `/healthz`, `/readyz` and `/metrics`.
/// It goes outermost, so a request without a valid token is refused before its body is
/// read and holds none of the bytes-in-flight budget.
pub fn with_auth(r: axum::Router, auth: Arc<Authenticator>) -> axum::Router {
    seismo_api::auth::protect(r, auth)
}

/// Decides `http.auth` once, at start: `on` or `off`, never `auto`. With `auto`, a process
/// listening on `listen` beyond loopback while no token exists refuses to start (an error
/// saying what to do); serving open is warned about loudly.
pub async fn auth_mode(
    cfg: &Config,
    store: &dyn Store,
    listen: std::net::SocketAddr,
) -> anyhow::Result<AuthMode> {
    let tokens = store.has_tokens().await.context("looking for API tokens")?;
    let loopback = listen.ip().is_loopback();
    match seismo_api::auth::decide(cfg.http.auth, loopback, tokens) {
        Decision::Require => {
            if !tokens {
                tracing::warn!(
                    "http.auth = on and no API token exists: every request but /healthz, /readyz and /metrics is refused until one is created with `seismo token create --tenant T --role ROLE`"
                );
            }
            Ok(AuthMode::On)
        }
        Decision::Open => {
            let why = if cfg.http.auth == AuthMode::Off {
                "http.auth = off"
            } else {
                "http.auth = auto, listening on loopback and no API token exists yet"
            };
            tracing::warn!(
                %listen,
                "AUTHENTICATION IS OFF ({why}): anyone who can connect reads and writes every tenant's data as an anonymous admin. Create a token with `seismo token create --tenant T --role admin` to require tokens"
            );
            Ok(AuthMode::Off)
        }
        Decision::Refuse => anyhow::bail!(
            "refusing to serve an open API on {listen}: it is not a loopback address and no API token exists. \
             Create one with `seismo token create --tenant default --role admin` (and give every client a token), \
             or set http.auth = \"off\" (SEISMO_HTTP__AUTH=off) to serve without authentication"
        ),
    }
}

/// Reads every request body up front, within `body_timeout`, `max_body_bytes` and the
/// process-wide budget of bytes in flight, so handlers get whole bodies and a client that
/// trickles its body or a flood of large requests cannot hold memory or tasks.
pub fn with_body_limits(r: axum::Router, limits: &HttpLimits) -> axum::Router {
    let budget = Arc::new(BodyBudget {
        permits: Semaphore::new(limits.max_inflight_bytes.div_ceil(1024).max(1)),
        limits: limits.clone(),
    });
    r.layer(axum::middleware::from_fn_with_state(budget, read_body))
}

struct BodyBudget {
    /// Bytes in flight, in KiB.
    permits: Semaphore,
    limits: HttpLimits,
}

fn refuse(code: StatusCode, limit: &'static str, message: String) -> Response {
    REFUSED.with_label_values(&[limit]).inc();
    let mut r = (
        code,
        axum::Json(serde_json::json!({ "error": message, "limit": limit })),
    )
        .into_response();
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn read_body(State(b): State<Arc<BodyBudget>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared == Some(0)
        || matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        )
    {
        return next.run(req).await;
    }
    let max = b.limits.max_body_bytes;
    if declared.is_some_and(|n| n > max) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "http.max_body_bytes",
            format!("the body is larger than {max} bytes (http.max_body_bytes)"),
        );
    }
    let kib = declared.unwrap_or(max).div_ceil(1024).max(1) as u32;
    let Ok(_permit) = b.permits.try_acquire_many(kib) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "http.max_inflight_bytes",
            format!(
                "too many request bytes in flight (http.max_inflight_bytes = {}); nothing was accepted, retry later",
                b.limits.max_inflight_bytes
            ),
        );
    };
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, max);
    let bytes = match tokio::time::timeout(b.limits.body_timeout, limited.collect()).await {
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "http.body_timeout_ms",
                format!(
                    "the body did not arrive within {} ms (http.body_timeout_ms)",
                    b.limits.body_timeout.as_millis()
                ),
            );
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "http.max_body_bytes",
                format!("the body is larger than {max} bytes (http.max_body_bytes)"),
            );
        }
        Ok(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            )
                .into_response();
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Raises this process's open-file limit to its hard limit and returns it, so the
/// connection limit, not the file-descriptor limit, is what a flood of sockets meets.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes requests in
/// progress (for up to 30 s). Beyond `max_connections` a new connection is answered 503
/// and closed at once; a connection that sends no complete request head within
/// `header_timeout` (idle keep-alive ones included) is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: HttpLimits,
) -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit() as usize;
    let max = limits
        .max_connections
        .min(fd_limit.saturating_sub(128).max(16));
    if max < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            fd_limit,
            using = max,
            "http.max_connections lowered to fit the open-file limit"
        );
    }
    let slots = Arc::new(Semaphore::new(max));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            REFUSED.with_label_values(&["http.max_connections"]).inc();
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let conn = graceful.watch(b.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections were still open 30 s after shutdown began");
    }
    Ok(())
}

/// Binds `addr`, with a message naming it on failure.
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The API's explainer (for `POST .../explanation`), when the explainer is on. Its
/// configuration was checked at start; a failure here leaves regeneration off, with a log.
pub fn explainer_for_api(
    cfg: &Config,
    store: Arc<dyn seismo_store::Store>,
) -> Option<Arc<seismo_explain::Explainer>> {
    if !cfg.explain.enabled {
        return None;
    }
    match crate::stages::explainer(cfg, store) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            tracing::error!(error = %e, "explainer unavailable to the API");
            None
        }
    }
}
