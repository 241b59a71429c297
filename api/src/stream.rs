//! Live incident changes for consoles and chat bots: a per-process feed of what is published to `seismo.incidents`, served as server-sent events.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use prometheus::{IntCounter, IntGauge, register_int_counter, register_int_gauge};
use seismo_schemas::{Caller, IncidentChange, topics};
use seismo_transport::{OutRecord, Producer, TransportError};
use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{ApiError, ApiResult, ApiState, caller};

/// Changes a slow client may fall behind by before it is told it missed some.
const FEED_CAPACITY: usize = 1024;
/// Most concurrent streams per process: each holds a connection and a feed slot.
pub const MAX_STREAMS: usize = 512;
/// A stream ends after this long and the client reconnects (EventSource does on its
/// own): its token is checked again then, so a revoked token stops hearing changes.
pub const MAX_STREAM_SECS: u64 = 900;

static STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "seismo_api_streams",
        "Clients connected to /api/v1/stream/incidents"
    )
    .expect("metric")
});
static LAGGED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_api_stream_lagged_total",
        "Incident changes a slow stream client missed"
    )
    .expect("metric")
});

/// The incident changes this process hears of, fanned out to every stream client of
/// their tenant. It holds nothing: a client hears the changes made while it is connected
/// (the incidents API has the rest).
#[derive(Clone)]
pub struct ChangeFeed {
    /// One channel per tenant with a listener, so a client's lag counts only its own
    /// tenant's changes and a busy tenant cannot make a quiet one's clients fall behind.
    tenants: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<IncidentChange>>>>>,
    /// Stream slots: one per connected client, at most [`MAX_STREAMS`].
    slots: Arc<Semaphore>,
    /// Ends every stream: an HTTP server drains its connections on shutdown, and a
    /// stream left open would hold it until its drain timeout.
    closing: CancellationToken,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            tenants: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_STREAMS)),
            closing: CancellationToken::new(),
        }
    }
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("free_slots", &self.slots.available_permits())
            .finish()
    }
}

impl ChangeFeed {
    /// Hands the records published to `seismo.incidents` to their tenants' clients.
    pub fn publish_records<'a>(&self, records: impl IntoIterator<Item = &'a [u8]>) {
        let mut tenants = self.tenants.lock().expect("feed lock");
        // Channels whose clients all left go, so the map holds only tenants listened to.
        tenants.retain(|_, tx| tx.receiver_count() > 0);
        if tenants.is_empty() {
            return;
        }
        for payload in records {
            match serde_json::from_slice::<IncidentChange>(payload) {
                Ok(c) => {
                    if let Some(tx) = tenants.get(&c.incident.tenant) {
                        // No receiver left is not an error: nobody is listening.
                        drop(tx.send(Arc::new(c)));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a seismo.incidents record that is not a change")
                }
            }
        }
    }

    fn subscribe(&self, tenant: &str) -> broadcast::Receiver<Arc<IncidentChange>> {
        self.tenants
            .lock()
            .expect("feed lock")
            .entry(tenant.to_string())
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Ends every open stream (and refuses new ones): call when the server shuts down.
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// A producer that, once `seismo.incidents` records are on the bus, hands them to a
/// [`ChangeFeed`]: in one process (embedded mode) the stream hears correlate's and the
/// API's changes as they are published, after the store committed them.
pub struct FeedingProducer {
    inner: Arc<dyn Producer>,
    feed: ChangeFeed,
}

impl FeedingProducer {
    pub fn new(inner: Arc<dyn Producer>, feed: ChangeFeed) -> Self {
        FeedingProducer { inner, feed }
    }

    fn feed(&self, topic: &str, payloads: &[bytes::Bytes]) {
        if topic == topics::INCIDENTS {
            self.feed
                .publish_records(payloads.iter().map(|b| b.as_ref()));
        }
    }
}

#[async_trait]
impl Producer for FeedingProducer {
    async fn send(&self, topic: &str, records: Vec<OutRecord>) -> Result<(), TransportError> {
        let payloads: Vec<bytes::Bytes> = records.iter().map(|r| r.payload.clone()).collect();
        self.inner.send(topic, records).await?;
        self.feed(topic, &payloads);
        Ok(())
    }

    async fn try_send_all(
        &self,
        topic: &str,
        records: Vec<OutRecord>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let payloads: Vec<bytes::Bytes> = records.iter().map(|r| r.payload.clone()).collect();
        self.inner.try_send_all(topic, records, timeout).await?;
        self.feed(topic, &payloads);
        Ok(())
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.inner.flush().await
    }
}

/// A connected client's slot, counted for as long as its stream lives.
struct Connected(#[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for Connected {
    fn drop(&mut self) {
        STREAMS.dec();
    }
}

/// `GET /api/v1/stream/incidents[?kind=opened,resolved]`: the caller's tenant's incident
/// changes as server-sent events (`event:` the change kind, `id:` the change id, `data:`
/// the change as JSON), with a comment every 15 s to keep proxies from closing it. A
/// client that falls more than 1024 of its tenant's changes behind gets a `lagged` event
/// saying how many it missed, and goes on. A stream ends after 15 minutes (clients
/// reconnect, and their token is checked again).
pub(crate) async fn incidents(
    State(s): State<ApiState>,
    found: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let who = caller(found, &headers)?;
    let mut kinds: Option<Vec<String>> = None;
    for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?
    {
        match k.as_str() {
            "kind" => {
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for kind in &list {
                    serde_json::from_value::<seismo_schemas::ChangeKind>(
                        serde_json::Value::String(kind.clone()),
                    )
                    .map_err(|_| {
                        ApiError::BadRequest(format!("kind={kind} is not a change kind"))
                    })?;
                }
                kinds.get_or_insert_with(Vec::new).extend(list);
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {other} (this stream takes kind)"
                )));
            }
        }
    }
    let Some(feed) = s.feed.clone() else {
        return Err(ApiError::Unavailable(
            "this process does not hear incident changes (no pipeline or broker)".into(),
        ));
    };
    if feed.closing.is_cancelled() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let Ok(permit) = feed.slots.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable(format!(
            "{MAX_STREAMS} streams are open, the most this process serves"
        )));
    };
    STREAMS.inc();
    let until = tokio::time::Instant::now() + Duration::from_secs(MAX_STREAM_SECS);
    let state = (
        feed.subscribe(&who.tenant),
        feed.closing.clone(),
        kinds,
        Connected(permit),
    );
    let stream =
        futures_util::stream::unfold(state, move |(mut rx, closing, kinds, guard)| async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = closing.cancelled() => return None,
                    _ = tokio::time::sleep_until(until) => return None,
                };
                let event = match received {
                    Ok(c) => {
                        let kind = serde_json::to_value(c.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        if kinds.as_ref().is_some_and(|k| !k.contains(&kind)) {
                            continue;
                        }
                        Event::default()
                            .event(kind)
                            .id(c.id.clone())
                            .data(serde_json::to_string(&*c).expect("changes serialise"))
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        LAGGED.inc_by(n);
                        Event::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (rx, closing, kinds, guard)));
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
