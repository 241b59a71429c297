//! Seismo's distributed transport: the bus traits implemented over Kafka with rdkafka.
//!
//! Producers are idempotent (`enable.idempotence`, `acks=all`), so a retried send never
//! duplicates a record on the broker; `send` returns only once the broker has acknowledged
//! every record. Consumers join a consumer group with auto-commit off: offsets are
//! committed only when a stage says its outputs are durable, which makes delivery
//! at-least-once, and the stages' idempotent writes make it effectively exactly-once.
#![expect(clippy::disallowed_methods, reason = "records carry their append time")]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use seismo_transport::{Consumer, Message, OutRecord, Producer, TransportError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The `[kafka]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`. Empty means embedded mode (no Kafka).
    pub brokers: String,
    /// Partitions per topic for `seismo topics create`: the most processes of one stage
    /// that can share the work.
    pub partitions: i32,
    /// Replicas per partition for `seismo topics create` (3 in production, 1 locally).
    pub replication: i32,
    /// Prefix of every consumer group; a stage's group is `PREFIX-STAGE`.
    pub group_prefix: String,
    /// Prefix of every topic name on the broker (`staging.` gives `staging.seismo.points`),
    /// so several Seismo deployments can share a cluster. Stages never see it.
    pub topic_prefix: String,
    /// How long the group waits for a silent member before giving its partitions to
    /// others, in ms (Kafka's `session.timeout.ms`).
    pub session_timeout_ms: u32,
    /// How long a producer waits to fill a batch, in ms (`linger.ms`).
    pub linger_ms: u32,
    /// Batch compression: none, gzip, snappy, lz4 or zstd (`compression.type`).
    pub compression: String,
    /// Extra librdkafka properties for every client, e.g. `{"security.protocol" = "SSL"}`.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            partitions: 12,
            replication: 1,
            group_prefix: "seismo".into(),
            topic_prefix: String::new(),
            session_timeout_ms: 10_000,
            linger_ms: 5,
            compression: "none".into(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// The consumer group of a stage.
    pub fn group(&self, stage: &str) -> String {
        format!("{}-{stage}", self.group_prefix)
    }

    /// The broker's name of a Seismo topic.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn other(e: KafkaError) -> TransportError {
    TransportError::Other(e.to_string())
}

/// Creates `topics` with the configured partitions and replication; topics that already
/// exist are left as they are. Returns, per topic, whether it was created.
pub async fn create_topics(
    cfg: &KafkaConfig,
    topics: &[&str],
) -> Result<Vec<(String, bool)>, TransportError> {
    let admin: AdminClient<DefaultClientContext> = cfg.client().create().map_err(other)?;
    let names: Vec<String> = topics.iter().map(|t| cfg.topic(t)).collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| NewTopic::new(t, cfg.partitions, TopicReplication::Fixed(cfg.replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await.map_err(other)?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(t) => out.push((t, true)),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((t, false)),
            Err((t, e)) => {
                return Err(TransportError::Other(format!("creating topic {t}: {e}")));
            }
        }
    }
    Ok(out)
}

/// An idempotent Kafka producer.
#[derive(Clone)]
pub struct KafkaProducer {
    inner: FutureProducer,
    topic_prefix: String,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaProducer")
    }
}

impl KafkaProducer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, TransportError> {
        let inner = cfg
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("compression.type", &cfg.compression)
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "524288")
            .set("message.timeout.ms", "120000")
            .create()
            .map_err(other)?;
        Ok(KafkaProducer {
            inner,
            topic_prefix: cfg.topic_prefix.clone(),
        })
    }

    async fn send_within(
        &self,
        topic: &str,
        records: Vec<OutRecord>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), TransportError> {
        let topic = format!("{}{topic}", self.topic_prefix);
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_ref()),
                });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
                .payload(r.payload.as_ref())
                .headers(headers);
            if !r.key.is_empty() {
                rec = rec.key(r.key.as_ref());
            }
            if let Some(p) = r.partition {
                rec = rec.partition(p as i32);
            }
            // Enqueueing is local; when the local queue is full, wait for the broker to
            // drain it (backpressure) instead of growing memory.
            loop {
                match self.inner.send_result(rec) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            return Err(TransportError::Full);
                        }
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(other(e)),
                }
            }
        }
        let acks = join_all(pending);
        let results = match deadline {
            Some(d) => tokio::time::timeout_at(d, acks)
                .await
                .map_err(|_| TransportError::Full)?,
            None => acks.await,
        };
        for r in results {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(other(e)),
                Err(_) => return Err(TransportError::Other("delivery report lost".into())),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, topic: &str, records: Vec<OutRecord>) -> Result<(), TransportError> {
        self.send_within(topic, records, None).await
    }

    /// Kafka has no all-or-nothing send without transactions: on timeout some records may
    /// already be on the broker. The caller answers 503 and the producer retries; every
    /// downstream write is idempotent, so the records that did land take effect once.
    async fn try_send_all(
        &self,
        topic: &str,
        records: Vec<OutRecord>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        self.send_within(topic, records, Some(tokio::time::Instant::now() + timeout))
            .await
    }

    async fn flush(&self) -> Result<(), TransportError> {
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(60)))
            .await
            .map_err(|e| TransportError::Other(e.to_string()))?
            .map_err(other)
    }
}

/// Records partitions taken away by group rebalances, so a stage can drop their state.
#[derive(Default)]
struct GroupContext {
    revoked: Arc<Mutex<HashSet<u32>>>,
    /// Revocations so far: a batch must not carry records from both sides of one.
    revocations: Arc<AtomicU64>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().expect("revoked lock");
            for e in tpl.elements() {
                r.insert(e.partition() as u32);
            }
            self.revocations.fetch_add(1, Ordering::SeqCst);
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?parts, "partitions assigned");
        }
    }
}

/// Longest a consumer waits on a quiet stream before handing its stage an empty batch.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// One member of a consumer group.
pub struct KafkaConsumer {
    inner: StreamConsumer<GroupContext>,
    revoked: Arc<Mutex<HashSet<u32>>>,
    revocations: Arc<AtomicU64>,
    /// A record received after a revocation, kept for the next batch (see `next_batch`).
    held: Option<Message>,
    shutdown: watch::Receiver<bool>,
    topic_prefix: String,
    /// Longest wait for more records once a batch has its first one.
    linger: Duration,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaConsumer")
    }
}

impl KafkaConsumer {
    /// Joins `group` and subscribes to `topics`. The stream ends (next_batch gives `None`)
    /// once `shutdown` turns true.
    pub fn new(
        cfg: &KafkaConfig,
        group: &str,
        topics: &[&str],
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, TransportError> {
        Self::joining(cfg, group, topics, shutdown, "earliest")
    }

    /// Reads `topics` from their ends as the only member of a group of its own, without
    /// committing: a listener that wants what is published from now on (the API's live
    /// stream), not a share of the work.
    pub fn tail(
        cfg: &KafkaConfig,
        topics: &[&str],
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, TransportError> {
        let group = format!(
            "{}-tail-{}-{}",
            cfg.group_prefix,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros()
        );
        Self::joining(cfg, &group, topics, shutdown, "latest")
    }

    fn joining(
        cfg: &KafkaConfig,
        group: &str,
        topics: &[&str],
        shutdown: watch::Receiver<bool>,
        reset: &str,
    ) -> Result<Self, TransportError> {
        let ctx = GroupContext::default();
        let revoked = ctx.revoked.clone();
        let revocations = ctx.revocations.clone();
        let inner: StreamConsumer<GroupContext> = cfg
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", reset)
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (cfg.session_timeout_ms / 5).max(100).to_string(),
            )
            .set("fetch.wait.max.ms", "50")
            .create_with_context(ctx)
            .map_err(other)?;
        let names: Vec<String> = topics.iter().map(|t| cfg.topic(t)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        inner.subscribe(&names).map_err(other)?;
        Ok(KafkaConsumer {
            inner,
            revoked,
            revocations,
            held: None,
            shutdown,
            topic_prefix: cfg.topic_prefix.clone(),
            linger: Duration::from_millis(20),
        })
    }

    fn owned(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_string(),
                            Bytes::copy_from_slice(x.value.unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Message {
            topic: m
                .topic()
                .strip_prefix(self.topic_prefix.as_str())
                .unwrap_or(m.topic())
                .to_string(),
            partition: m.partition() as u32,
            offset: m.offset(),
            key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
            payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    /// Rebalances run inside `recv`, and the stage applies the revocations they report
    /// after the batch (its records were fetched while the partitions were ours). So a
    /// batch never holds a record received after a revocation: that record is held back
    /// and opens the next batch. Otherwise, when a partition comes straight back, the
    /// records re-fetched from its committed offset would meet the old position, be
    /// skipped as replays, and the progress past the last checkpoint would be dropped
    /// with the revoked state without ever being redone.
    async fn next_batch(&mut self, max: usize) -> Option<Result<Vec<Message>, TransportError>> {
        let mut out = Vec::new();
        let revocations = self.revocations.load(Ordering::SeqCst);
        let revoked_since = |c: &Self| c.revocations.load(Ordering::SeqCst) != revocations;
        if let Some(m) = self.held.take() {
            out.push(m);
        } else {
            // The first record: wait until one comes, shutdown, or the idle tick, which
            // returns an empty batch so stages get to do periodic work (checkpoints) on a
            // quiet stream. Nothing is ever pulled and then dropped here.
            let idle = tokio::time::sleep(IDLE_TICK);
            tokio::pin!(idle);
            loop {
                if *self.shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    r = self.inner.recv() => match r {
                        Ok(m) => {
                            let m = self.owned(&m);
                            if revoked_since(self) {
                                self.held = Some(m);
                                return Some(Ok(Vec::new()));
                            }
                            out.push(m);
                            break;
                        }
                        Err(e) => return Some(Err(other(e))),
                    },
                    _ = self.shutdown.changed() => {}
                    _ = &mut idle => return Some(Ok(Vec::new())),
                }
            }
        }
        // Then whatever else arrives shortly, up to `max`, so stores get big batches.
        let until = tokio::time::Instant::now() + self.linger;
        while out.len() < max.max(1) {
            match tokio::time::timeout_at(until, self.inner.recv()).await {
                Ok(Ok(m)) => {
                    let m = self.owned(&m);
                    if revoked_since(self) {
                        self.held = Some(m);
                        break;
                    }
                    out.push(m);
                }
                Ok(Err(e)) => return Some(Err(other(e))),
                Err(_) => break,
            }
        }
        Some(Ok(out))
    }

    async fn commit(&mut self, batch: &[Message]) -> Result<(), TransportError> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let e = next.entry((&m.topic, m.partition as i32)).or_insert(0);
            *e = (*e).max(m.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in next {
            tpl.add_partition_offset(&format!("{}{t}", self.topic_prefix), p, Offset::Offset(o))
                .map_err(other)?;
        }
        // Async: a commit lost in a crash only means a longer replay, which idempotent
        // writes absorb. A commit for partitions this member no longer owns fails
        // harmlessly: their new owner resumes from the last good commit.
        match self.inner.commit(&tpl, CommitMode::Async) {
            Ok(()) => Ok(()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; the records will be replayed");
                Ok(())
            }
        }
    }

    fn assignment(&self) -> Vec<u32> {
        self.inner
            .assignment()
            .map(|t| t.elements().iter().map(|e| e.partition() as u32).collect())
            .unwrap_or_default()
    }

    fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), TransportError> {
        self.inner
            .seek(
                &format!("{}{topic}", self.topic_prefix),
                partition as i32,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
            .map_err(other)
    }

    fn take_revoked(&mut self) -> Vec<u32> {
        let mut r = self.revoked.lock().expect("revoked lock");
        let mut v: Vec<u32> = r.drain().collect();
        v.sort_unstable();
        v
    }
}
