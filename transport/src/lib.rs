//! The bus between stages: Kafka-shaped producer/consumer traits and an in-process bus.
//!
//! Stages see only [`Producer`] and [`Consumer`], so the same runner code moves records
//! through bounded in-process channels (embedded mode) or through Kafka (distributed mode).
//! Records carry opaque bytes, a key that picks the partition, and headers, as on Kafka.
//! [`DiskBus`] is the embedded mode's durable twin of Kafka: an append-only segment log on
//! local disk whose appends are acknowledged only once fsync'd.

mod inproc;
mod log;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use inproc::{InProcBus, InProcConsumer, InProcProducer};
pub use log::{DiskBus, DiskBusConfig, DiskConsumer, DiskProducer};

/// A record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Picks the partition: records with equal keys stay in order on one partition.
    /// Empty keys are spread round-robin.
    pub key: Bytes,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// An explicit partition, overriding the key (control records such as watermarks
    /// that must reach every partition).
    pub partition: Option<u32>,
}

impl OutRecord {
    pub fn new(key: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        OutRecord {
            key: key.into(),
            payload: payload.into(),
            headers: Vec::new(),
            partition: None,
        }
    }

    /// Sends this record to `partition` whatever its key.
    pub fn to_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A record as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub key: Bytes,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// When the bus took the record, in UTC ms (Kafka's record timestamp), if known.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Why the bus refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The bus stayed full until the deadline: the caller should retry later (HTTP 503).
    #[error("the pipeline is full; retry later")]
    Full,
    /// Nothing consumes this topic any more (the pipeline is shutting down).
    #[error("topic {0} is closed")]
    Closed(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// A broker or client failure.
    #[error("transport failure: {0}")]
    Other(String),
    /// The local log could not be read or written.
    #[error("bus I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// Whether retrying the same operation later may succeed (a broker or disk that comes
    /// back, a full bus that drains), as opposed to a wiring or shutdown condition.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Full | TransportError::Other(_) | TransportError::Io(_)
        )
    }
}

/// Publishes records to topics.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Publishes `records` to `topic` in order, waiting while the bus is full
    /// (backpressure). Returns once every record is on the bus (acknowledged by the broker
    /// in distributed mode).
    async fn send(&self, topic: &str, records: Vec<OutRecord>) -> Result<(), TransportError>;

    /// Like [`Producer::send`] but all-or-nothing within `timeout`: if the bus cannot take
    /// every record in time, none is published and [`TransportError::Full`] is returned.
    async fn try_send_all(
        &self,
        topic: &str,
        records: Vec<OutRecord>,
        timeout: Duration,
    ) -> Result<(), TransportError>;

    /// Waits until everything sent so far is durable on the bus.
    async fn flush(&self) -> Result<(), TransportError>;
}

/// Reads a topic as one member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits for the next records (at most `max`). `None` means the stream has ended: every
    /// producer closed (embedded) or shutdown was requested (distributed). A batch may be
    /// empty when the stream is quiet (Kafka), so stages can do periodic work.
    async fn next_batch(&mut self, max: usize) -> Option<Result<Vec<Message>, TransportError>>;

    /// Marks every record up to and including `batch` as processed. Call only once the
    /// outputs derived from them are durable: this is what makes delivery at-least-once.
    async fn commit(&mut self, batch: &[Message]) -> Result<(), TransportError>;

    /// Partitions this member currently owns.
    fn assignment(&self) -> Vec<u32>;

    /// Makes the next records of `partition` of `topic` start at `offset`. Used by stages
    /// whose restored state is behind the fetch position. The in-process bus never needs
    /// it (it has no rebalances), so by default it is refused.
    fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), TransportError> {
        let _ = (partition, offset);
        Err(TransportError::Other(format!(
            "seek is not supported on {topic}"
        )))
    }

    /// Partitions taken away from this member (by a group rebalance) since the last call.
    /// A stage that keeps state per partition must drop it: the next owner may advance
    /// the partition, so the state could be stale if the partition comes back. Revocations
    /// taken after a batch happened after all of its records were received: no batch mixes
    /// records from before and after one.
    fn take_revoked(&mut self) -> Vec<u32> {
        Vec::new()
    }

    /// Whether the stream ended because every producer is gone and everything was read
    /// (the end of a finite input: a demo, a backfill), as opposed to a stop request. Only
    /// then should a stage flush what it holds back for more input.
    fn drained(&self) -> bool {
        false
    }

    /// Records and bytes waiting for this member (consumer lag), when the bus knows them.
    fn lag(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The partition a key maps to; equal keys always map to the same partition.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions.max(1))) as u32
}
