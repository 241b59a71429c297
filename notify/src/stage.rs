//! The notify stage: `seismo.incidents` changes in, pages out, each recorded in the notification log.
#![expect(
    clippy::disallowed_methods,
    reason = "paging is wall-clock work: retries, group and repeat intervals, delivery stamps"
)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec, register_int_counter, register_int_counter_vec};
use seismo_runtime::{Dirty, Entries, Stage, StageError, Tick};
use seismo_schemas::IncidentChange;
use seismo_store::{NotificationRecord, NotificationStatus, Silence, Store};
use seismo_transport::{Message, OutRecord, Producer};

use crate::config::{NotifyConfig, ReceiverKind, Resolved, all_match};
use crate::deliver::{self, KeyLimiter};
use crate::dispatch::{Delivery, Dispatcher, Timing};
use crate::receivers;

static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_notify_deliveries_total",
        "Notifications finished, by receiver, action and outcome (delivered, failed, skipped as already sent)",
        &["receiver", "action", "outcome"]
    )
    .expect("metric")
});
static HELD: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_notify_held_total",
        "Pages held back (and checked again later) because a silence or an inhibition rule matched"
    )
    .expect("metric")
});
static ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_notify_attempts_total",
        "HTTP requests made to receivers, retries included",
        &["receiver"]
    )
    .expect("metric")
});

/// Counts of what a notify process did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NotifyStats {
    pub changes: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Due again after a restart but found in the notification log.
    pub already_sent: u64,
    pub refused: u64,
}

/// What a batch produced.
#[derive(Debug, Default)]
pub struct NotifyOut {
    pub deliveries: Vec<Delivery>,
    pub dlq: Vec<OutRecord>,
}

/// The notify stage.
pub struct NotifyStage {
    cfg: NotifyConfig,
    receivers: Vec<Resolved>,
    timing: Timing,
    parts: BTreeMap<u32, Dispatcher>,
    dirty: BTreeSet<u32>,
    store: Arc<dyn Store>,
    output: Arc<dyn Producer>,
    client: reqwest::Client,
    limiter: Mutex<KeyLimiter>,
    /// Counts; `write` takes `&self`, hence the lock.
    stats: Mutex<NotifyStats>,
    /// Current and future silences of every tenant, read every [`SILENCE_REFRESH`].
    silences: Vec<Silence>,
    silences_read: Option<Instant>,
}

/// How often silences are read from the store: a silence made through the API holds new
/// pages within this long.
const SILENCE_REFRESH: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The labels routes match against: tenant, severity, status, the top root cause's
/// service and the incident's scope labels.
pub fn routing_labels(inc: &seismo_schemas::Incident) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = inc.scope.clone().into_iter().collect();
    l.insert("tenant".into(), inc.tenant.clone());
    l.insert("severity".into(), inc.severity.as_str().into());
    l.insert("status".into(), inc.status.as_str().into());
    if let Some(c) = inc.root_cause_candidates.first() {
        let v = c
            .target
            .split_once('=')
            .map(|(_, v)| v)
            .unwrap_or(&c.target);
        l.insert("root_cause".into(), v.to_string());
    }
    l
}

impl NotifyStage {
    /// Fails when the configuration is inconsistent (see [`NotifyConfig::resolve`]).
    pub fn new(
        cfg: NotifyConfig,
        store: Arc<dyn Store>,
        output: Arc<dyn Producer>,
    ) -> Result<Self, String> {
        let receivers = cfg.resolve()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .user_agent(concat!("seismo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("notify: HTTP client: {e}"))?;
        let secs = |s: u64| {
            i64::try_from(s)
                .unwrap_or(i64::MAX / 2000)
                .saturating_mul(1000)
        };
        Ok(NotifyStage {
            timing: Timing {
                group_wait_ms: secs(cfg.group_wait_secs),
                group_interval_ms: secs(cfg.group_interval_secs),
                repeat_interval_ms: secs(cfg.repeat_interval_secs),
            },
            cfg,
            receivers,
            parts: BTreeMap::new(),
            dirty: BTreeSet::new(),
            store,
            output,
            client,
            limiter: Mutex::new(KeyLimiter::default()),
            stats: Mutex::new(NotifyStats::default()),
            silences: Vec::new(),
            silences_read: None,
        })
    }

    pub fn stats(&self) -> NotifyStats {
        *self.stats.lock().expect("stats lock")
    }

    fn release(&mut self, out: &mut NotifyOut, all: bool) {
        let now = now_ms();
        let now_t = chrono::Utc::now();
        let rules = &self.cfg.inhibit_rules;
        // Open incidents inhibit; the view is this process's partitions.
        let sources: Vec<(String, BTreeMap<String, String>)> = if rules.is_empty() {
            Vec::new()
        } else {
            self.parts
                .values()
                .flat_map(|d| d.incidents())
                .filter(|i| i.status.is_open())
                .map(|i| (i.id.clone(), routing_labels(i)))
                .collect()
        };
        let silences = &self.silences;
        let muted = |inc: &seismo_schemas::Incident, _receiver: &str| {
            let labels = routing_labels(inc);
            silences.iter().any(|s| {
                s.tenant == inc.tenant && s.active_at(now_t) && all_match(&s.matchers, &labels)
            }) || rules.iter().any(|rule| {
                sources
                    .iter()
                    .any(|(id, src)| *id != inc.id && rule.inhibits(src, &labels))
            })
        };
        for (p, d) in self.parts.iter_mut() {
            let (due, held) = d.due(now, all, &self.timing, &muted);
            HELD.inc_by(held as u64);
            if !due.is_empty() {
                self.dirty.insert(*p);
                out.deliveries.extend(due);
            }
        }
    }

    async fn deliver(&self, d: &Delivery) -> NotificationRecord {
        let record = |status, attempts, response: String| NotificationRecord {
            id: d.id.clone(),
            tenant: d.incident.tenant.clone(),
            incident_id: d.incident.id.clone(),
            receiver: d.receiver.clone(),
            action: d.action.as_str().into(),
            status,
            attempts,
            response,
            at: chrono::Utc::now(),
        };
        let Some(r) = self.receivers.iter().find(|r| r.name == d.receiver) else {
            // The receiver left the configuration since the incident was routed.
            return record(
                NotificationStatus::Failed,
                0,
                "receiver no longer configured".into(),
            );
        };
        if r.kind == ReceiverKind::Pagerduty {
            let key = r.routing_key.clone().unwrap_or_default();
            let wait = self
                .limiter
                .lock()
                .expect("limiter lock")
                .take(&key, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let req = receivers::request(r, d, &self.cfg.external_url, chrono::Utc::now().timestamp());
        let o = deliver::send(
            &self.client,
            &req,
            Duration::from_secs(self.cfg.retry_for_secs),
        )
        .await;
        ATTEMPTS
            .with_label_values(&[&d.receiver])
            .inc_by(o.attempts as u64);
        let status = if o.delivered {
            NotificationStatus::Delivered
        } else {
            tracing::error!(receiver = %d.receiver, delivery = %d.id, response = %o.response, "notification failed");
            NotificationStatus::Failed
        };
        record(status, o.attempts, o.response)
    }
}

#[async_trait]
impl Stage for NotifyStage {
    type Out = NotifyOut;
    const FORMAT: u32 = 1;

    fn process(&mut self, m: &Message, out: &mut NotifyOut) -> u64 {
        match serde_json::from_slice::<IncidentChange>(&m.payload) {
            Ok(c) => {
                let receivers = self.cfg.route(&routing_labels(&c.incident));
                self.dirty.insert(m.partition);
                self.parts.entry(m.partition).or_default().on_change(
                    &c,
                    &receivers,
                    now_ms(),
                    &self.timing,
                );
                self.stats.lock().expect("stats lock").changes += 1;
                1
            }
            Err(e) => {
                tracing::warn!(offset = m.offset, error = %e, "record is not an incident change; sent to the DLQ");
                self.stats.lock().expect("stats lock").refused += 1;
                out.dlq.push(
                    OutRecord::new(m.key.clone(), m.payload.clone())
                        .header("source_topic", m.topic.clone())
                        .header("source_partition", m.partition.to_string())
                        .header("source_offset", m.offset.to_string())
                        .header("reason", format!("not an incident change: {e}")),
                );
                0
            }
        }
    }

    async fn tick(&mut self, out: &mut NotifyOut, _tick: &Tick) {
        if self
            .silences_read
            .is_none_or(|t| t.elapsed() >= SILENCE_REFRESH)
        {
            match self.store.current_silences(chrono::Utc::now()).await {
                Ok(s) => {
                    self.silences = s;
                    self.silences_read = Some(Instant::now());
                }
                // Pages go on under the silences last read; the next tick tries again.
                Err(e) => tracing::warn!(error = %e, "could not read silences; will retry"),
            }
        }
        self.release(out, false);
    }

    fn finish(&mut self, out: &mut NotifyOut) {
        // The input ended for good: what waits for group_wait goes now.
        self.release(out, true);
    }

    fn has_output(out: &NotifyOut) -> bool {
        !out.deliveries.is_empty() || !out.dlq.is_empty()
    }

    async fn write(&self, out: &NotifyOut) -> Result<(), StageError> {
        if !out.dlq.is_empty() {
            self.output
                .send(seismo_schemas::topics::DLQ, out.dlq.clone())
                .await?;
        }
        if out.deliveries.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = out
            .deliveries
            .iter()
            .flat_map(|d| std::iter::once(d.id.clone()).chain(d.only_if_sent.clone()))
            .collect();
        let done: HashSet<String> = self
            .store
            .notifications_done(&ids)
            .await?
            .into_iter()
            .collect();
        for d in out.deliveries.iter().filter(|d| done.contains(&d.id)) {
            DELIVERIES
                .with_label_values(&[&d.receiver, d.action.as_str(), "already_sent"])
                .inc();
            self.stats.lock().expect("stats lock").already_sent += 1;
        }
        // One at a time, recorded as each finishes: a crash loses at most the page in
        // flight, which the receiver can recognise by its delivery id.
        for d in out.deliveries.iter().filter(|d| !done.contains(&d.id)) {
            if d.only_if_sent.as_ref().is_some_and(|t| !done.contains(t)) {
                // Acknowledging or resolving what was never paged: nothing to say.
                continue;
            }
            let rec = self.deliver(d).await;
            self.store
                .record_notifications(std::slice::from_ref(&rec))
                .await?;
            let mut stats = self.stats.lock().expect("stats lock");
            let outcome = match rec.status {
                NotificationStatus::Delivered => {
                    stats.delivered += 1;
                    "delivered"
                }
                NotificationStatus::Failed => {
                    stats.failed += 1;
                    "failed"
                }
            };
            DELIVERIES
                .with_label_values(&[&d.receiver, d.action.as_str(), outcome])
                .inc();
        }
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        if !self.dirty.remove(&partition) {
            return (Vec::new(), Vec::new());
        }
        match self.parts.get(&partition) {
            Some(d) => (
                vec![(
                    b"n".to_vec(),
                    postcard::to_stdvec(d).expect("notify state encodes"),
                )],
                Vec::new(),
            ),
            None => (Vec::new(), vec![b"n".to_vec()]),
        }
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        for (key, value) in entries {
            if key != b"n" {
                return Err(format!("unknown checkpoint key {key:?}"));
            }
            let d: Dispatcher = postcard::from_bytes(&value).map_err(|e| e.to_string())?;
            self.parts.insert(partition, d);
        }
        self.dirty.remove(&partition);
        Ok(())
    }

    fn drop_partition(&mut self, partition: u32) {
        self.parts.remove(&partition);
        self.dirty.remove(&partition);
    }
}
