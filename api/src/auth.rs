//! Authentication of every HTTP request: bearer tokens checked against the store through a short cache, a role per route, the caller's tenant, and per-token ingest quotas.
//!
//! A token reads `smo_<id>_<secret>`: 12 hex digits that name it (in listings and the audit
//! log) and 64 hex digits of secret, of which the store keeps only the SHA-256. The layer
//! ([`protect`]) turns a request's token into a [`Caller`] in the request's extensions;
//! handlers confine every read and write to the caller's tenant.
#![expect(
    clippy::disallowed_methods,
    reason = "the API stamps requests, tokens and silences with the wall clock"
)]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, register_int_counter_vec};
use seismo_schemas::{Caller, DEFAULT_TENANT, Quota, Role};
use seismo_store::{ApiToken, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::ApiError;

/// The header naming the tenant a request acts on (an admin token may name any).
pub const TENANT_HEADER: &str = "x-seismo-tenant";
/// Paths served to anyone: probes and scrapers carry no token.
pub const PUBLIC_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"];
/// Longest token name, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 256;

const TOKEN_PREFIX: &str = "smo_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
/// Most token lookups the cache holds. Every request with an unknown id adds one, so the
/// bound keeps a client sending random ids from growing the process without limit.
const MAX_CACHED: usize = 10_000;

static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_http_auth_refused_total",
        "HTTP requests refused by authentication, by reason",
        &["reason"]
    )
    .expect("metric")
});

/// Whether requests need a token (`http.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Open while listening on loopback with no token created yet; tokens required
    /// otherwise (and no start at all beyond loopback without a token).
    #[default]
    Auto,
    /// Every request but the public paths needs a valid token.
    On,
    /// Everything is open; every caller is an anonymous admin.
    Off,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Auto => "auto",
            AuthMode::On => "on",
            AuthMode::Off => "off",
        }
    }
}

/// What a process does about authentication, decided once at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Tokens required.
    Require,
    /// Serve open.
    Open,
    /// `auto` beyond loopback with no token: serving would expose everything.
    Refuse,
}

/// The rule of `http.auth`: `auto` serves open only where nobody else can reach it
/// (loopback) and only until someone has created a token.
pub fn decide(mode: AuthMode, loopback: bool, tokens_exist: bool) -> Decision {
    match mode {
        AuthMode::On => Decision::Require,
        AuthMode::Off => Decision::Open,
        AuthMode::Auto if tokens_exist => Decision::Require,
        AuthMode::Auto if loopback => Decision::Open,
        AuthMode::Auto => Decision::Refuse,
    }
}

/// Whether a configured listen address (`host:port`) only accepts local connections.
/// A name other than `localhost` counts as not loopback: it may resolve to anything.
pub fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// What a route needs of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Ingest,
    Read,
    Write,
    Admin,
}

impl Need {
    /// Admin may do everything; otherwise ingest only ingests, read only reads, and write
    /// reads and moves incidents.
    pub fn allows(self, role: Role) -> bool {
        role == Role::Admin
            || match self {
                Need::Ingest => role == Role::Ingest,
                Need::Read => matches!(role, Role::Read | Role::Write),
                Need::Write => role == Role::Write,
                Need::Admin => false,
            }
    }

    fn describe(self) -> &'static str {
        match self {
            Need::Ingest => "an ingest or admin token",
            Need::Read => "a read, write or admin token",
            Need::Write => "a write or admin token",
            Need::Admin => "an admin token",
        }
    }
}

/// What a request needs, by method and path. Anything not listed needs admin, so a route
/// added later without a rule here is closed rather than open.
pub fn need(method: &Method, path: &str) -> Need {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reads = matches!(*method, Method::GET | Method::HEAD);
    match segments.as_slice() {
        ["api", "v1", "ingest", ..] | ["api", "v1", "write"] => Need::Ingest,
        ["api", "v1", "anomalies"] | ["api", "v1", "incidents"] | ["api", "v1", "incidents", _]
            if reads =>
        {
            Need::Read
        }
        ["api", "v1", "forecasts"]
        | ["api", "v1", "series"]
        | ["api", "v1", "series", _]
        | ["api", "v1", "series", _, "forecast"]
        | ["api", "v1", "stream", "incidents"]
            if reads =>
        {
            Need::Read
        }
        ["api", "v1", "incidents", _, "transition"] if *method == Method::POST => Need::Write,
        ["api", "v1", "incidents", _, "explanation" | "postmortem"] if reads => Need::Read,
        // May make a model call, which costs.
        ["api", "v1", "incidents", _, "explanation"] if *method == Method::POST => Need::Write,
        // Reads the stored points and writes nothing.
        ["api", "v1", "investigate"] if *method == Method::POST => Need::Read,
        // Read-only SQL over the caller's tenant.
        ["api", "v1", "query"] if *method == Method::POST => Need::Read,
        ["api", "v1", "silences"] if reads => Need::Read,
        ["api", "v1", "silences"] if *method == Method::POST => Need::Write,
        ["api", "v1", "silences", _] if *method == Method::DELETE => Need::Write,
        _ => Need::Admin,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256, the form in which secrets are stored.
pub fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares without stopping at the first difference, so the time an answer takes says
/// nothing about how much of a guessed hash was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits `smo_<id>_<secret>` into id and secret, if it has that exact shape.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (lower_hex(id, ID_BYTES * 2) && lower_hex(secret, SECRET_BYTES * 2)).then_some((id, secret))
}

/// A new token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub tenant: String,
    pub role: Role,
    pub name: String,
    pub rate_per_sec: Option<f64>,
}

/// Creates a token (recording `actor` in the audit log) and returns it with the whole
/// token string, which exists nowhere else afterwards: show it once.
pub async fn create_token(
    store: &dyn Store,
    new: NewToken,
    actor: &str,
) -> Result<(ApiToken, String), ApiError> {
    seismo_schemas::validate_tenant(&new.tenant)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if new.name.len() > MAX_TOKEN_NAME_BYTES || new.name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "a token name has at most {MAX_TOKEN_NAME_BYTES} bytes and no control characters"
        )));
    }
    if let Some(r) = new.rate_per_sec
        && !(r.is_finite() && r > 0.0)
    {
        return Err(ApiError::BadRequest(format!(
            "rate_per_sec = {r}: give a positive number of points per second, or none for the server's default"
        )));
    }
    let mut random = [0u8; ID_BYTES + SECRET_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
    let (id, secret) = (hex(&random[..ID_BYTES]), hex(&random[ID_BYTES..]));
    let token = ApiToken {
        id,
        tenant: new.tenant,
        role: new.role,
        name: new.name,
        secret_sha256: sha256_hex(&secret),
        rate_per_sec: new.rate_per_sec,
        // Whole milliseconds, as stored, so the returned token equals the stored one.
        created_at: DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
            .unwrap_or_default(),
        revoked_at: None,
    };
    store.create_token(&token, actor).await?;
    let full = format!("{TOKEN_PREFIX}{}_{secret}", token.id);
    Ok((token, full))
}

/// A token bucket of points: `rate` per second, holding at most two seconds' worth, so a
/// producer may send in bursts but not sustain more than its rate.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` points per second (positive).
    pub fn new(rate: f64) -> Self {
        Self::full_at(rate, Instant::now())
    }

    /// A bucket full at `now` (tests drive time by hand).
    pub fn full_at(rate: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            capacity: 2.0 * rate,
            state: Mutex::new((2.0 * rate, now)),
        }
    }

    /// `take` at a given instant (tests drive time by hand).
    pub fn take_at(&self, points: u64, now: Instant) -> Result<(), Duration> {
        // A std mutex: nothing is awaited while it is held.
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.capacity);
        s.1 = s.1.max(now);
        let points = points as f64;
        // A request larger than the whole burst could never fit; it goes through once the
        // bucket is full and leaves it in debt, so the average rate still holds.
        let needed = points.min(self.capacity);
        if s.0 >= needed {
            s.0 -= points;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - s.0) / self.rate))
        }
    }
}

impl Quota for TokenBucket {
    fn take(&self, points: u64) -> Result<(), Duration> {
        self.take_at(points, Instant::now())
    }
}

/// How the authenticator runs (from the `[http]` section).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `On` or `Off` as decided at start; `Auto` when nobody decided, in which case the
    /// first request decides by the same rule (see [`decide`]), refusal meaning tokens.
    pub mode: AuthMode,
    /// The configured listen address, for an undecided `Auto`.
    pub listen: String,
    /// How long a token read from the store is trusted before it is read again.
    pub cache_ttl: Duration,
    /// Ingest budget of tokens created without a rate, points per second; 0 = unlimited.
    pub default_rate_per_sec: f64,
}

struct Cached {
    read_at: Instant,
    token: Option<ApiToken>,
}

/// Checks tokens, with the caches that keep a store read off most requests.
pub struct Authenticator {
    store: Arc<dyn Store>,
    settings: AuthSettings,
    auto: tokio::sync::OnceCell<bool>,
    /// Lookups by token id, unknown ids included. A std mutex: never held across an await.
    cache: Mutex<HashMap<String, Cached>>,
    /// Ingest budgets by token id; apart from the cache so a refresh keeps what was spent.
    buckets: Mutex<HashMap<String, Arc<TokenBucket>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Why a request was refused; each becomes one status code.
enum Refusal {
    /// 401: no token, or none that is valid.
    Unauthenticated(&'static str, String),
    /// 403: a valid token that may not do this.
    Forbidden(&'static str, String),
    BadRequest(String),
    /// The store could not be asked.
    Unavailable(StoreError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (reason, code, message) = match self {
            Refusal::Unauthenticated(r, m) => (r, StatusCode::UNAUTHORIZED, m),
            Refusal::Forbidden(r, m) => (r, StatusCode::FORBIDDEN, m),
            Refusal::BadRequest(m) => ("bad_tenant", StatusCode::BAD_REQUEST, m),
            Refusal::Unavailable(e) => {
                tracing::error!(error = %e, "cannot check an API token");
                (
                    "unavailable",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the token now; retry later".to_string(),
                )
            }
        };
        REFUSED.with_label_values(&[reason]).inc();
        let mut r = (code, axum::Json(json!({ "error": message }))).into_response();
        match code {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"seismo\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

fn named_tenant(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    match headers.get(TENANT_HEADER) {
        None => Ok(None),
        Some(v) => {
            let t = v.to_str().unwrap_or_default();
            seismo_schemas::validate_tenant(t)
                .map_err(|e| Refusal::BadRequest(format!("X-Seismo-Tenant: {e}")))?;
            Ok(Some(t.to_string()))
        }
    }
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, settings: AuthSettings) -> Arc<Self> {
        Arc::new(Authenticator {
            store,
            settings,
            auto: tokio::sync::OnceCell::new(),
            cache: Mutex::default(),
            buckets: Mutex::default(),
        })
    }

    /// Whether requests need tokens; an undecided `auto` is decided on first use.
    async fn requires_tokens(&self) -> Result<bool, StoreError> {
        match self.settings.mode {
            AuthMode::On => Ok(true),
            AuthMode::Off => Ok(false),
            AuthMode::Auto => self
                .auto
                .get_or_try_init(|| async {
                    let exist = self.store.has_tokens().await?;
                    let decision = decide(AuthMode::Auto, is_loopback(&self.settings.listen), exist);
                    match decision {
                        Decision::Open => tracing::warn!(
                            listen = %self.settings.listen,
                            "AUTHENTICATION IS OFF: http.auth = auto, listening on loopback and no API token exists, so every request is served as an anonymous admin; create a token with `seismo token create` to turn it on"
                        ),
                        Decision::Refuse => tracing::error!(
                            listen = %self.settings.listen,
                            "http.auth = auto beyond loopback with no API token: every request is refused until one is created with `seismo token create`"
                        ),
                        Decision::Require => {}
                    }
                    Ok(decision != Decision::Open)
                })
                .await
                .copied(),
        }
    }

    /// The token with this id, from the cache when read within the cache's lifetime.
    async fn lookup(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        let ttl = self.settings.cache_ttl;
        if let Some(c) = self.cache.lock().expect("cache lock").get(id)
            && c.read_at.elapsed() < ttl
        {
            return Ok(c.token.clone());
        }
        let token = self.store.token(id).await?;
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.read_at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            id.to_string(),
            Cached {
                read_at: Instant::now(),
                token: token.clone(),
            },
        );
        Ok(token)
    }

    /// Forgets what is cached of a token, so its revocation in this process applies to
    /// the very next request (other processes see it within the cache's lifetime).
    pub fn forget(&self, id: &str) {
        self.cache.lock().expect("cache lock").remove(id);
        self.buckets.lock().expect("buckets lock").remove(id);
    }

    fn quota(&self, token: &ApiToken) -> Option<Arc<dyn Quota>> {
        let rate = token
            .rate_per_sec
            .unwrap_or(self.settings.default_rate_per_sec);
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let bucket = self
            .buckets
            .lock()
            .expect("buckets lock")
            .entry(token.id.clone())
            .or_insert_with(|| Arc::new(TokenBucket::new(rate)))
            .clone();
        Some(bucket)
    }

    /// The caller of a request to `path`, or why it is refused.
    async fn caller(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        if !self.requires_tokens().await.map_err(Refusal::Unavailable)? {
            return Ok(Caller {
                tenant: named_tenant(headers)?.unwrap_or_else(|| DEFAULT_TENANT.to_string()),
                actor: "anonymous".into(),
                role: Role::Admin,
                quota: None,
            });
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Refusal::Unauthenticated(
                "missing",
                "this endpoint needs a token: send `Authorization: Bearer smo_...`".into(),
            ));
        };
        let malformed = || {
            Refusal::Unauthenticated(
                "malformed",
                "the Authorization header is not `Bearer smo_<id>_<secret>`".into(),
            )
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .ok_or_else(malformed)?
            .1
            .trim();
        let (id, secret) = parse_token(presented).ok_or_else(malformed)?;
        let token = self.lookup(id).await.map_err(Refusal::Unavailable)?;
        // One answer for an unknown id and a wrong secret: which ids exist is no one's business.
        let Some(token) = token.filter(|t| {
            constant_time_eq(t.secret_sha256.as_bytes(), sha256_hex(secret).as_bytes())
        }) else {
            return Err(Refusal::Unauthenticated(
                "invalid",
                "the token is not valid".into(),
            ));
        };
        if token.revoked_at.is_some() {
            return Err(Refusal::Unauthenticated(
                "revoked",
                format!("token {} was revoked", token.id),
            ));
        }
        let need = need(method, path);
        if !need.allows(token.role) {
            return Err(Refusal::Forbidden(
                "role",
                format!(
                    "{method} {path} needs {}; token {} is {}",
                    need.describe(),
                    token.id,
                    token.role.as_str()
                ),
            ));
        }
        let tenant = match named_tenant(headers)? {
            Some(t) if t != token.tenant && token.role != Role::Admin => {
                return Err(Refusal::Forbidden(
                    "tenant",
                    format!(
                        "token {} belongs to tenant {:?}; only an admin token may name another tenant in X-Seismo-Tenant",
                        token.id, token.tenant
                    ),
                ));
            }
            Some(t) => t,
            None => token.tenant.clone(),
        };
        Ok(Caller {
            tenant,
            actor: format!("token:{}", token.id),
            role: token.role,
            quota: self.quota(&token),
        })
    }
}

/// Puts authentication in front of every route of `router` but [`PUBLIC_PATHS`]: 401 (with
/// `WWW-Authenticate: Bearer`) without a valid token, 403 for a token whose role or tenant
/// does not fit, and otherwise a [`Caller`] in the request's extensions.
pub fn protect(router: axum::Router, auth: Arc<Authenticator>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(auth, authenticate))
}

async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match auth
        .caller(req.method(), req.uri().path(), req.headers())
        .await
    {
        Err(refusal) => refusal.into_response(),
        Ok(caller) => {
            // Handlers that read the tenant header, and ingest lines that name no tenant,
            // then see the caller's tenant whatever the client sent.
            if let Ok(v) = HeaderValue::from_str(&caller.tenant) {
                req.headers_mut().insert(TENANT_HEADER, v);
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_open_only_on_loopback_before_the_first_token() {
        use Decision::*;
        assert_eq!(decide(AuthMode::Auto, true, false), Open);
        assert_eq!(decide(AuthMode::Auto, true, true), Require);
        assert_eq!(decide(AuthMode::Auto, false, true), Require);
        assert_eq!(decide(AuthMode::Auto, false, false), Refuse);
        assert_eq!(decide(AuthMode::On, true, false), Require);
        assert_eq!(decide(AuthMode::Off, false, false), Open);
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("[::1]:0"));
        assert!(is_loopback("localhost:8080"));
        assert!(!is_loopback("0.0.0.0:8080"));
        assert!(!is_loopback("10.1.2.3:80"));
        assert!(!is_loopback("seismo.internal:8080"));
    }

    #[test]
    fn routes_need_their_role_and_unknown_ones_need_admin() {
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        for (m, p, n) in [
            (&post, "/api/v1/ingest/points", Need::Ingest),
            (&post, "/api/v1/ingest/alertmanager", Need::Ingest),
            (&post, "/api/v1/write", Need::Ingest),
            (&get, "/api/v1/anomalies", Need::Read),
            (&get, "/api/v1/incidents", Need::Read),
            (&get, "/api/v1/incidents/abc", Need::Read),
            (&get, "/api/v1/forecasts", Need::Read),
            (&get, "/api/v1/series/00ff/forecast", Need::Read),
            (&post, "/api/v1/forecasts", Need::Admin),
            (&post, "/api/v1/incidents/abc/transition", Need::Write),
            (&get, "/api/v1/incidents/abc/transition", Need::Admin),
            (&post, "/api/v1/anomalies", Need::Admin),
            (&post, "/api/v1/investigate", Need::Read),
            (&post, "/api/v1/query", Need::Read),
            (&get, "/api/v1/query", Need::Admin),
            (&get, "/api/v1/silences", Need::Read),
            (&post, "/api/v1/silences", Need::Write),
            (&delete, "/api/v1/silences/abc", Need::Write),
            (&post, "/api/v1/silences/abc", Need::Admin),
            (&get, "/api/v1/investigate", Need::Admin),
            (&get, "/api/v1/tokens", Need::Admin),
            (&delete, "/api/v1/tokens/abc", Need::Admin),
            (&get, "/api/v1/audit", Need::Admin),
            (&get, "/api/v2/anything", Need::Admin),
        ] {
            assert_eq!(need(m, p), n, "{m} {p}");
        }
        assert!(Need::Read.allows(Role::Write) && !Need::Read.allows(Role::Ingest));
        assert!(!Need::Write.allows(Role::Read) && !Need::Ingest.allows(Role::Write));
        assert!(Need::Admin.allows(Role::Admin) && !Need::Admin.allows(Role::Write));
    }

    #[test]
    fn tokens_have_one_exact_shape() {
        let good = format!("smo_{}_{}", "0a".repeat(6), "f1".repeat(32));
        assert_eq!(parse_token(&good).unwrap().0, "0a0a0a0a0a0a");
        for bad in [
            good.replacen("smo_", "smx_", 1),
            good.to_uppercase(),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            good.replacen('_', "-", 2),
            String::new(),
        ] {
            assert_eq!(parse_token(&bad), None, "{bad}");
        }
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_bucket_allows_two_seconds_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::full_at(100.0, t0);
        assert_eq!(b.take_at(150, t0), Ok(()));
        assert_eq!(b.take_at(50, t0), Ok(()));
        // Empty: 10 points come back in 0.1 s.
        let wait = b.take_at(10, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(b.take_at(10, t0 + Duration::from_millis(100)), Ok(()));
        // Refilling stops at the burst (200), however long the pause.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take_at(200, later), Ok(()));
        assert!(b.take_at(1, later).is_err());
        // A batch bigger than the burst passes once the bucket is full, then is paid for.
        assert!(b.take_at(500, later + Duration::from_secs(1)).is_err());
        let full = later + Duration::from_secs(2);
        assert_eq!(b.take_at(500, full), Ok(()));
        let wait = b.take_at(100, full).unwrap_err();
        assert!((wait.as_secs_f64() - 4.0).abs() < 1e-9, "{wait:?}");
    }
}
