//! In-process bus: bounded channels partitioned by key, one channel per consumer-group member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{Consumer, Message, OutRecord, Producer, TransportError, partition_for};

/// An in-process, Kafka-shaped bus.
///
/// Wiring happens in two phases, as with Kafka topics that exist before anyone produces:
/// first every consumer group subscribes, then producers are created, then [`InProcBus::seal`]
/// drops the bus's own channel ends. From then on a topic's consumers see the end of their
/// stream exactly when the last producer of that topic is dropped, which is how the embedded
/// pipeline drains stage by stage on shutdown.
#[derive(Debug)]
pub struct InProcBus {
    partitions: u32,
    capacity: usize,
    topics: Mutex<HashMap<String, Topic>>,
}

#[derive(Debug)]
struct Topic {
    groups: Vec<Group>,
    offsets: Arc<Vec<AtomicI64>>,
    has_producer: bool,
}

#[derive(Debug)]
struct Group {
    name: String,
    /// Channel of each member; `None` once sealed.
    members: Option<Vec<mpsc::Sender<Message>>>,
}

impl InProcBus {
    /// A bus whose topics have `partitions` partitions and whose channels hold at most
    /// `capacity` records each.
    pub fn new(partitions: u32, capacity: usize) -> Self {
        InProcBus {
            partitions: partitions.max(1),
            capacity: capacity.max(1),
            topics: Mutex::default(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    fn with_topic<R>(&self, name: &str, f: impl FnOnce(&mut Topic) -> R) -> R {
        let mut topics = self.topics.lock().expect("bus lock");
        let topic = topics.entry(name.to_string()).or_insert_with(|| Topic {
            groups: Vec::new(),
            offsets: Arc::new((0..self.partitions).map(|_| AtomicI64::new(0)).collect()),
            has_producer: false,
        });
        f(topic)
    }

    /// Joins `members` consumers to `group` on `topic`; partition `p` goes to member
    /// `p % members`. Panics if the topic already has a producer: that is a wiring bug.
    pub fn subscribe(&self, topic: &str, group: &str, members: usize) -> Vec<InProcConsumer> {
        let members = members.clamp(1, self.partitions as usize);
        let partitions = self.partitions;
        let capacity = self.capacity;
        self.with_topic(topic, |t| {
            assert!(
                !t.has_producer,
                "subscribe to {topic} before creating its producers"
            );
            let mut senders = Vec::with_capacity(members);
            let mut consumers = Vec::with_capacity(members);
            for m in 0..members {
                let (tx, rx) = mpsc::channel(capacity);
                senders.push(tx);
                consumers.push(InProcConsumer {
                    rx,
                    assignment: (0..partitions)
                        .filter(|p| *p as usize % members == m)
                        .collect(),
                });
            }
            t.groups.push(Group {
                name: group.to_string(),
                members: Some(senders),
            });
            consumers
        })
    }

    /// A producer for `topics`. Consumers of a topic see their stream end once every
    /// producer naming it is dropped (after [`InProcBus::seal`]).
    pub fn producer(&self, topics: &[&str]) -> InProcProducer {
        let mut routes = HashMap::new();
        for name in topics {
            let route = self.with_topic(name, |t| {
                t.has_producer = true;
                let groups = t
                    .groups
                    .iter()
                    .map(|g| {
                        let members = g.members.as_ref().unwrap_or_else(|| {
                            panic!("producer for {name} created after the bus was sealed")
                        });
                        (0..self.partitions)
                            .map(|p| members[p as usize % members.len()].clone())
                            .collect()
                    })
                    .collect();
                Route {
                    groups,
                    offsets: t.offsets.clone(),
                }
            });
            routes.insert(name.to_string(), route);
        }
        InProcProducer {
            inner: Arc::new(ProducerInner {
                routes,
                partitions: self.partitions,
                rr: AtomicU64::new(0),
            }),
        }
    }

    /// Ends the wiring phase: the bus drops its own channel ends.
    pub fn seal(&self) {
        let mut topics = self.topics.lock().expect("bus lock");
        for t in topics.values_mut() {
            for g in &mut t.groups {
                g.members = None;
            }
        }
    }

    /// Names of the groups subscribed to `topic`.
    pub fn groups(&self, topic: &str) -> Vec<String> {
        let topics = self.topics.lock().expect("bus lock");
        topics
            .get(topic)
            .map(|t| t.groups.iter().map(|g| g.name.clone()).collect())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Route {
    /// Per group, the sender for each partition.
    groups: Vec<Vec<mpsc::Sender<Message>>>,
    offsets: Arc<Vec<AtomicI64>>,
}

#[derive(Debug)]
struct ProducerInner {
    routes: HashMap<String, Route>,
    partitions: u32,
    rr: AtomicU64,
}

/// Producer half of the in-process bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct InProcProducer {
    inner: Arc<ProducerInner>,
}

impl InProcProducer {
    fn route(&self, topic: &str) -> Result<&Route, TransportError> {
        self.inner
            .routes
            .get(topic)
            .ok_or_else(|| TransportError::UnknownTopic(topic.to_string()))
    }

    fn partition(&self, r: &OutRecord) -> u32 {
        if let Some(p) = r.partition {
            return p % self.inner.partitions;
        }
        let key = &r.key[..];
        if key.is_empty() {
            (self.inner.rr.fetch_add(1, Ordering::Relaxed) % u64::from(self.inner.partitions))
                as u32
        } else {
            partition_for(key, self.inner.partitions)
        }
    }

    fn message(topic: &str, route: &Route, partition: u32, r: &OutRecord) -> Message {
        Message {
            topic: topic.to_string(),
            partition,
            offset: route.offsets[partition as usize].fetch_add(1, Ordering::Relaxed),
            key: r.key.clone(),
            payload: r.payload.clone(),
            headers: r.headers.clone(),
            timestamp_ms: None,
        }
    }
}

#[async_trait]
impl Producer for InProcProducer {
    async fn send(&self, topic: &str, records: Vec<OutRecord>) -> Result<(), TransportError> {
        let route = self.route(topic)?;
        for r in &records {
            let p = self.partition(r);
            for senders in &route.groups {
                // Reserve before numbering so offsets follow channel order.
                let permit = senders[p as usize]
                    .reserve()
                    .await
                    .map_err(|_| TransportError::Closed(topic.to_string()))?;
                permit.send(Self::message(topic, route, p, r));
            }
        }
        Ok(())
    }

    async fn try_send_all(
        &self,
        topic: &str,
        records: Vec<OutRecord>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let route = self.route(topic)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let parts: Vec<u32> = records.iter().map(|r| self.partition(r)).collect();
        // Reserve a slot for every record in every group first; only when all are held do
        // we publish. Dropping the permits on timeout releases the slots, so a refused
        // request leaves nothing half-published.
        let mut permits = Vec::with_capacity(records.len() * route.groups.len());
        for (r, &p) in records.iter().zip(&parts) {
            for senders in &route.groups {
                let permit = tokio::time::timeout_at(deadline, senders[p as usize].reserve())
                    .await
                    .map_err(|_| TransportError::Full)?
                    .map_err(|_| TransportError::Closed(topic.to_string()))?;
                permits.push((permit, r, p));
            }
        }
        for (permit, r, p) in permits {
            permit.send(Self::message(topic, route, p, r));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), TransportError> {
        // Records are in the consumer's channel as soon as send returns.
        Ok(())
    }
}

/// One member of a consumer group on the in-process bus.
#[derive(Debug)]
pub struct InProcConsumer {
    rx: mpsc::Receiver<Message>,
    assignment: Vec<u32>,
}

impl InProcConsumer {
    /// Records waiting in this member's channel.
    pub fn lag(&self) -> usize {
        self.rx.len()
    }
}

#[async_trait]
impl Consumer for InProcConsumer {
    async fn next_batch(&mut self, max: usize) -> Option<Result<Vec<Message>, TransportError>> {
        let mut batch = Vec::with_capacity(max.min(1024));
        if self.rx.recv_many(&mut batch, max.max(1)).await == 0 {
            return None;
        }
        Some(Ok(batch))
    }

    async fn commit(&mut self, _batch: &[Message]) -> Result<(), TransportError> {
        // Nothing to record: the in-process bus keeps no log to replay from.
        Ok(())
    }

    fn drained(&self) -> bool {
        // The stream of this bus ends only when every producer is gone.
        self.rx.is_closed() && self.rx.is_empty()
    }

    fn assignment(&self) -> Vec<u32> {
        self.assignment.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, payload: &str) -> OutRecord {
        OutRecord::new(key.as_bytes().to_vec(), payload.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn same_key_same_partition_in_order_for_every_group() {
        let bus = InProcBus::new(4, 64);
        let mut a = bus.subscribe("t", "a", 1);
        let mut b = bus.subscribe("t", "b", 2);
        let p = bus.producer(&["t"]);
        bus.seal();
        let records: Vec<_> = (0..20)
            .map(|i| rec(&format!("k{}", i % 3), &i.to_string()))
            .collect();
        p.send("t", records).await.unwrap();
        drop(p);
        let mut got = Vec::new();
        while let Some(batch) = a[0].next_batch(7).await {
            got.extend(batch.unwrap());
        }
        assert_eq!(got.len(), 20);
        for k in ["k0", "k1", "k2"] {
            let of_key: Vec<_> = got.iter().filter(|m| m.key == k.as_bytes()).collect();
            assert!(of_key.windows(2).all(|w| w[0].partition == w[1].partition));
            assert!(of_key.windows(2).all(|w| w[0].offset < w[1].offset));
            let payloads: Vec<i32> = of_key
                .iter()
                .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
                .collect();
            assert!(payloads.windows(2).all(|w| w[0] < w[1]), "{payloads:?}");
        }
        // Group b splits partitions between two members, and together they see everything.
        let (mut n, mut parts) = (0, Vec::new());
        for c in &mut b {
            parts.extend(c.assignment());
            while let Some(batch) = c.next_batch(100).await {
                n += batch.unwrap().len();
            }
        }
        parts.sort();
        assert_eq!(parts, vec![0, 1, 2, 3]);
        assert_eq!(n, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn full_bus_refuses_all_or_nothing() {
        let bus = InProcBus::new(1, 3);
        let mut c = bus.subscribe("t", "g", 1);
        let p = bus.producer(&["t"]);
        bus.seal();
        p.try_send_all(
            "t",
            vec![rec("", "1"), rec("", "2")],
            Duration::from_millis(10),
        )
        .await
        .unwrap();
        // Two more do not fit in the one free slot: none may be published.
        let err = p
            .try_send_all(
                "t",
                vec![rec("", "3"), rec("", "4")],
                Duration::from_millis(10),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Full));
        p.try_send_all("t", vec![rec("", "5")], Duration::from_millis(10))
            .await
            .unwrap();
        drop(p);
        let mut got = Vec::new();
        while let Some(batch) = c[0].next_batch(10).await {
            got.extend(batch.unwrap().into_iter().map(|m| m.payload));
        }
        assert_eq!(got, vec!["1", "2", "5"]);
    }

    #[tokio::test]
    async fn stream_ends_only_when_every_producer_is_gone() {
        let bus = InProcBus::new(2, 8);
        let mut c = bus.subscribe("t", "g", 1);
        let p1 = bus.producer(&["t"]);
        let p2 = p1.clone();
        let p3 = bus.producer(&["t"]);
        bus.seal();
        drop(p1);
        drop(p3);
        p2.send("t", vec![rec("x", "last")]).await.unwrap();
        drop(p2);
        assert_eq!(c[0].next_batch(10).await.unwrap().unwrap().len(), 1);
        assert!(c[0].next_batch(10).await.is_none());
    }
}
