//! The generic stage runner: positions, checkpoints, restore, replay skipping, retries.
#![expect(
    clippy::disallowed_methods,
    reason = "the runner paces checkpoints and idle ticks by the wall clock; cores do not read it"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use seismo_store::{CheckpointStore, PartitionCheckpoint, Position};
use seismo_transport::{Consumer, Message};

use crate::{RetryPolicy, StageError, StageHealth};

/// Encoded state entries: (key, value).
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// What changed in a state partition: entries written, and keys of entries dropped.
pub type Dirty = (Entries, Vec<Vec<u8>>);

/// A stage: a synchronous core that folds input records into state and outputs, plus the
/// one async step that makes outputs durable.
///
/// State is partitioned like the input: records of input partition `p` (of any of the
/// stage's input topics) touch only state partition `p`, so a partition's state can move
/// between processes with its input.
#[async_trait]
pub trait Stage: Send + 'static {
    /// What one batch of input produces.
    type Out: Default + Send + Sync;

    /// Version of the state encoding; a checkpoint of another version is not restored
    /// (the partition starts afresh, with a warning).
    const FORMAT: u32 = 1;

    /// Folds one record in, appending what it produces to `out`. Returns the items it
    /// folded (points, anomalies), which the positions count.
    fn process(&mut self, m: &Message, out: &mut Self::Out) -> u64;

    /// Called after every batch and on idle ticks. Time-driven work (watermarks, idle
    /// timeouts) goes here.
    async fn tick(&mut self, _out: &mut Self::Out, _tick: &Tick) {}

    /// The input ended for good (every producer is gone and everything was read): decide
    /// what was held back waiting for more input. Not called on a stop request, so a
    /// restart continues exactly where a stop left off.
    fn finish(&mut self, _out: &mut Self::Out) {}

    /// Whether `out` holds anything to write.
    fn has_output(out: &Self::Out) -> bool;

    /// Makes `out` durable (store, bus). Called again with the same outputs after a
    /// transient failure, so it must be idempotent.
    async fn write(&self, out: &Self::Out) -> Result<(), StageError>;

    /// Encoded state entries of `partition` changed since the last call, and the keys of
    /// entries dropped since then.
    fn take_dirty(&mut self, _partition: u32) -> Dirty {
        (Vec::new(), Vec::new())
    }

    /// Replaces `partition`'s state with stored entries.
    fn restore(
        &mut self,
        _partition: u32,
        _entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Forgets a partition (it moved to another process).
    fn drop_partition(&mut self, _partition: u32) {}
}

/// What a stage learns at each tick.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    /// How long no input has arrived (zero after a batch with records).
    pub idle_for: Duration,
    /// The input partitions this process owns now.
    pub assignment: Vec<u32>,
}

/// Where and how often a stage checkpoints.
#[derive(Clone)]
pub struct Checkpointing {
    pub store: Arc<dyn CheckpointStore>,
    /// The consumer group the checkpoints belong to.
    pub group: String,
    pub interval: Duration,
}

/// Everything a stage runs with besides its core.
pub struct StageIo {
    pub input: Box<dyn Consumer>,
    /// Most records per batch.
    pub batch_records: usize,
    /// `None` for stateless stages: input is committed as soon as a batch's outputs are
    /// written.
    pub checkpoint: Option<Checkpointing>,
    pub health: StageHealth,
    pub retry: RetryPolicy,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub records: u64,
    pub items: u64,
    /// Partitions whose state came from a checkpoint.
    pub restored_partitions: u64,
    /// Redelivered records skipped because the restored state already holds them.
    pub replayed_skipped: u64,
    pub checkpoints: u64,
}

/// Seeks per partition before a gap is accepted (records deleted by retention).
const MAX_SEEKS: u32 = 3;

#[derive(Debug, Default)]
struct Pos {
    /// First offset the state has not seen; records below it are replays.
    next_offset: i64,
    records: u64,
    /// Whether `next_offset` came from a checkpoint (so a gap after it is a real gap).
    known: bool,
    /// The last record folded in since the previous checkpoint, to commit it.
    last: Option<Message>,
    rewinding: bool,
    seeks: u32,
}

fn commit_marker(m: &Message) -> Message {
    // Only the topic, partition and offset matter for a commit.
    Message {
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
        key: Default::default(),
        payload: Default::default(),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// Runs `stage` until its input ends or a stop is requested, or until an error it cannot
/// recover from (returned; the caller stops the process).
pub async fn run<S: Stage>(stage: &mut S, mut io: StageIo) -> Result<RunReport, StageError> {
    let health = io.health.clone();
    health.running();
    let r = run_inner(stage, &mut io).await;
    match &r {
        Ok(_) => health.stopped(),
        Err(e) => {
            health.failed(&e.to_string());
            tracing::error!(stage = health.name(), error = %e, domain = ?e.domain, "stage failed");
        }
    }
    r
}

async fn run_inner<S: Stage>(stage: &mut S, io: &mut StageIo) -> Result<RunReport, StageError> {
    let health = io.health.clone();
    let retry = io.retry;
    let mut report = RunReport::default();
    let mut pos: BTreeMap<(String, u32), Pos> = BTreeMap::new();
    let mut restored: BTreeSet<u32> = BTreeSet::new();
    let mut last_checkpoint = Instant::now();
    let mut last_input = Instant::now();
    let mut fetch_failing_since: Option<Instant> = None;
    loop {
        let batch = match io.input.next_batch(io.batch_records).await {
            None => break,
            Some(Ok(b)) => {
                if fetch_failing_since.take().is_some() {
                    health.running();
                }
                b
            }
            Some(Err(e)) => {
                let e = StageError::from(e).context("reading input");
                let since = *fetch_failing_since.get_or_insert_with(Instant::now);
                if !e.retry || since.elapsed() > retry.give_up_after {
                    return Err(e);
                }
                health.retrying(&e.to_string());
                tracing::warn!(stage = health.name(), error = %e, "input failed; retrying");
                tokio::time::sleep(retry.max_delay).await;
                continue;
            }
        };
        health.busy();
        let mut out = S::Out::default();
        for m in &batch {
            if let Some(ck) = &io.checkpoint {
                if !restored.contains(&m.partition) {
                    restored.insert(m.partition);
                    if restore(stage, ck, &retry, &health, m.partition, &mut pos).await? {
                        report.restored_partitions += 1;
                    }
                }
                let p = pos.entry((m.topic.clone(), m.partition)).or_default();
                if p.rewinding {
                    if m.offset > p.next_offset {
                        continue;
                    }
                    p.rewinding = false;
                }
                if p.known && m.offset < p.next_offset {
                    report.replayed_skipped += 1;
                    continue;
                }
                if p.known && m.offset > p.next_offset {
                    // The state stops before this record (restored while the fetch
                    // position was ahead of it): fetch the missing records again rather
                    // than learn with a hole.
                    if p.seeks < MAX_SEEKS {
                        p.seeks += 1;
                        p.rewinding = true;
                        tracing::info!(stage = health.name(), topic = %m.topic, partition = m.partition, from = p.next_offset, at = m.offset, "rewinding to the checkpoint");
                        io.input
                            .seek(&m.topic, m.partition, p.next_offset)
                            .map_err(StageError::from)?;
                        continue;
                    }
                    tracing::warn!(stage = health.name(), topic = %m.topic, partition = m.partition, from = p.next_offset, at = m.offset, "records missing from the partition (retention?); continuing after the gap");
                }
                p.known = true;
                p.next_offset = m.offset + 1;
                p.last = Some(commit_marker(m));
                let items = stage.process(m, &mut out);
                p.records += items;
                report.items += items;
            } else {
                report.items += stage.process(m, &mut out);
            }
            report.records += 1;
        }
        let idle_for = if batch.is_empty() {
            last_input.elapsed()
        } else {
            last_input = Instant::now();
            Duration::ZERO
        };
        let tick = Tick {
            idle_for,
            assignment: io.input.assignment(),
        };
        stage.tick(&mut out, &tick).await;
        if S::has_output(&out) {
            retry
                .run("writing outputs", &health, || stage.write(&out))
                .await?;
        }
        // Revocations apply after the batch: its records were fetched while the
        // partitions were ours and continue our state.
        for p in io.input.take_revoked() {
            stage.drop_partition(p);
            restored.remove(&p);
            pos.retain(|k, _| k.1 != p);
        }
        match &io.checkpoint {
            None => {
                if !batch.is_empty() {
                    let input = &mut io.input;
                    let b = &batch;
                    commit(input, b).await?;
                }
            }
            Some(ck) if last_checkpoint.elapsed() >= ck.interval => {
                report.checkpoints += checkpoint(
                    stage,
                    ck,
                    &retry,
                    &health,
                    &mut pos,
                    &mut restored,
                    &mut io.input,
                )
                .await?;
                last_checkpoint = Instant::now();
            }
            Some(_) => {}
        }
        health.progress(io.input.lag());
    }
    if io.input.drained() {
        let mut out = S::Out::default();
        stage.finish(&mut out);
        if S::has_output(&out) {
            retry
                .run("writing final outputs", &health, || stage.write(&out))
                .await?;
        }
    }
    if let Some(ck) = &io.checkpoint {
        report.checkpoints += checkpoint(
            stage,
            ck,
            &retry,
            &health,
            &mut pos,
            &mut restored,
            &mut io.input,
        )
        .await?;
    }
    Ok(report)
}

async fn commit(input: &mut Box<dyn Consumer>, batch: &[Message]) -> Result<(), StageError> {
    input
        .commit(batch)
        .await
        .map_err(|e| StageError::from(e).context("committing input"))
}

/// Loads a partition's checkpoint into the stage. Returns whether state was restored.
async fn restore<S: Stage>(
    stage: &mut S,
    ck: &Checkpointing,
    retry: &RetryPolicy,
    health: &StageHealth,
    partition: u32,
    pos: &mut BTreeMap<(String, u32), Pos>,
) -> Result<bool, StageError> {
    let stored = retry
        .run("loading a checkpoint", health, || async {
            ck.store
                .load_partition(&ck.group, partition)
                .await
                .map_err(StageError::from)
        })
        .await?;
    for p in &stored.positions {
        pos.insert(
            (p.topic.clone(), partition),
            Pos {
                next_offset: p.next_offset,
                records: p.records,
                known: true,
                ..Pos::default()
            },
        );
    }
    if stored.positions.is_empty() {
        return Ok(false);
    }
    // Skipping replays stays right whatever happens to the state: it depends only on
    // the positions. Unreadable state means the partition learns afresh.
    if stored.format != S::FORMAT {
        tracing::warn!(
            stage = health.name(),
            partition,
            stored = stored.format,
            expected = S::FORMAT,
            "checkpoint written by an incompatible version; this partition starts afresh"
        );
        return Ok(false);
    }
    let entries = stored.entries.len();
    if let Err(e) = stage.restore(partition, stored.entries) {
        tracing::error!(stage = health.name(), partition, error = %e, "checkpoint unreadable; this partition starts afresh");
        stage.drop_partition(partition);
        return Ok(false);
    }
    tracing::info!(
        stage = health.name(),
        partition,
        entries,
        "restored stage state"
    );
    Ok(true)
}

/// Saves the state of every partition that moved since the last checkpoint with the
/// positions it reached, then commits the input up to there. Outputs are already durable.
async fn checkpoint<S: Stage>(
    stage: &mut S,
    ck: &Checkpointing,
    retry: &RetryPolicy,
    health: &StageHealth,
    pos: &mut BTreeMap<(String, u32), Pos>,
    restored: &mut BTreeSet<u32>,
    input: &mut Box<dyn Consumer>,
) -> Result<u64, StageError> {
    let moved: BTreeSet<u32> = pos
        .iter()
        .filter(|(_, p)| p.last.is_some())
        .map(|(k, _)| k.1)
        .collect();
    if moved.is_empty() {
        return Ok(0);
    }
    let mut cps = Vec::with_capacity(moved.len());
    let mut lasts: HashMap<u32, Vec<Message>> = HashMap::new();
    for &partition in &moved {
        let (upserts, deletes) = stage.take_dirty(partition);
        let mut positions = Vec::new();
        for ((topic, p), at) in pos.iter_mut().filter(|(k, _)| k.1 == partition) {
            positions.push(Position {
                topic: topic.clone(),
                partition: *p,
                next_offset: at.next_offset,
                records: at.records,
            });
            if let Some(m) = at.last.take() {
                lasts.entry(partition).or_default().push(m);
            }
        }
        cps.push(PartitionCheckpoint {
            partition,
            format: S::FORMAT,
            positions,
            upserts,
            deletes,
        });
    }
    let written = retry
        .run("saving a checkpoint", health, || async {
            ck.store
                .save_partitions(&ck.group, &cps)
                .await
                .map_err(StageError::from)
        })
        .await?;
    let mut commits = Vec::new();
    for (cp, ok) in cps.iter().zip(written) {
        if ok {
            commits.extend(lasts.remove(&cp.partition).unwrap_or_default());
        } else {
            // Another process is further ahead on this partition: it owns it now.
            tracing::info!(
                stage = health.name(),
                partition = cp.partition,
                "a newer checkpoint exists; dropping this partition's state"
            );
            stage.drop_partition(cp.partition);
            restored.remove(&cp.partition);
            pos.retain(|k, _| k.1 != cp.partition);
        }
    }
    if !commits.is_empty() {
        commit(input, &commits).await?;
    }
    Ok(cps.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorDomain, Health};
    use bytes::Bytes;
    use seismo_store::{Result as StoreResult, StoredPartition};
    use seismo_transport::TransportError;
    use std::sync::Mutex;

    /// (partition, offset) pairs a scripted consumer records.
    type Log = Arc<Mutex<Vec<(u32, i64)>>>;

    /// Sums the numbers of each partition; the state entry is the running sum.
    #[derive(Default)]
    struct Summer {
        sums: HashMap<u32, i64>,
        dirty: BTreeSet<u32>,
        fail_writes: Arc<Mutex<u32>>,
        written: Arc<Mutex<Vec<i64>>>,
    }

    #[async_trait]
    impl Stage for Summer {
        type Out = Vec<i64>;
        fn process(&mut self, m: &Message, out: &mut Vec<i64>) -> u64 {
            let v: i64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            let s = self.sums.entry(m.partition).or_default();
            *s += v;
            out.push(*s);
            self.dirty.insert(m.partition);
            1
        }
        fn has_output(out: &Vec<i64>) -> bool {
            !out.is_empty()
        }
        async fn write(&self, out: &Vec<i64>) -> Result<(), StageError> {
            let mut f = self.fail_writes.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(StageError::new(
                    ErrorDomain::External,
                    true,
                    "store",
                    "database is locked",
                ));
            }
            self.written.lock().unwrap().extend(out);
            Ok(())
        }
        fn take_dirty(&mut self, p: u32) -> Dirty {
            if !self.dirty.remove(&p) {
                return (Vec::new(), Vec::new());
            }
            let s = self.sums.get(&p).copied().unwrap_or(0);
            (
                vec![(b"sum".to_vec(), s.to_le_bytes().to_vec())],
                Vec::new(),
            )
        }
        fn restore(&mut self, p: u32, entries: Entries) -> Result<(), String> {
            for (_, v) in entries {
                self.sums
                    .insert(p, i64::from_le_bytes(v.try_into().map_err(|_| "bad")?));
            }
            Ok(())
        }
        fn drop_partition(&mut self, p: u32) {
            self.sums.remove(&p);
        }
    }

    /// A consumer scripted with batches, redeliveries and seeks over a fixed log.
    struct Scripted {
        log: Vec<Message>,
        script: Vec<Vec<usize>>,
        seeks: Arc<Mutex<Vec<(u32, i64)>>>,
        committed: Arc<Mutex<Vec<(u32, i64)>>>,
    }

    #[async_trait]
    impl Consumer for Scripted {
        async fn next_batch(
            &mut self,
            _max: usize,
        ) -> Option<Result<Vec<Message>, TransportError>> {
            if self.script.is_empty() {
                return None;
            }
            let idx = self.script.remove(0);
            Some(Ok(idx.into_iter().map(|i| self.log[i].clone()).collect()))
        }
        async fn commit(&mut self, batch: &[Message]) -> Result<(), TransportError> {
            self.committed
                .lock()
                .unwrap()
                .extend(batch.iter().map(|m| (m.partition, m.offset)));
            Ok(())
        }
        fn assignment(&self) -> Vec<u32> {
            vec![0]
        }
        fn seek(&mut self, _t: &str, p: u32, o: i64) -> Result<(), TransportError> {
            self.seeks.lock().unwrap().push((p, o));
            Ok(())
        }
    }

    #[derive(Default)]
    struct MemStore {
        parts: Mutex<HashMap<u32, StoredPartition>>,
    }

    #[async_trait]
    impl CheckpointStore for MemStore {
        async fn load_partition(&self, _g: &str, p: u32) -> StoreResult<StoredPartition> {
            Ok(self
                .parts
                .lock()
                .unwrap()
                .get(&p)
                .cloned()
                .unwrap_or_default())
        }
        async fn save_partitions(
            &self,
            _g: &str,
            cps: &[PartitionCheckpoint],
        ) -> StoreResult<Vec<bool>> {
            let mut parts = self.parts.lock().unwrap();
            for cp in cps {
                let e = parts.entry(cp.partition).or_default();
                e.format = cp.format;
                e.positions = cp.positions.clone();
                for (k, v) in &cp.upserts {
                    e.entries.retain(|(ek, _)| ek != k);
                    e.entries.push((k.clone(), v.clone()));
                }
            }
            Ok(vec![true; cps.len()])
        }
        async fn clear_partition(&self, _g: &str, p: u32) -> StoreResult<()> {
            self.parts.lock().unwrap().remove(&p);
            Ok(())
        }
        async fn positions(&self, _g: &str) -> StoreResult<Vec<Position>> {
            Ok(Vec::new())
        }
    }

    fn log(n: i64) -> Vec<Message> {
        (0..n)
            .map(|o| Message {
                topic: "t".into(),
                partition: 0,
                offset: o,
                key: Bytes::new(),
                payload: Bytes::from((o + 1).to_string()),
                headers: Vec::new(),
                timestamp_ms: None,
            })
            .collect()
    }

    fn io(script: Vec<Vec<usize>>, store: Arc<MemStore>, health: &Health) -> (StageIo, Log, Log) {
        let seeks = Arc::new(Mutex::new(Vec::new()));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let input = Scripted {
            log: log(10),
            script,
            seeks: seeks.clone(),
            committed: committed.clone(),
        };
        (
            StageIo {
                input: Box::new(input),
                batch_records: 100,
                checkpoint: Some(Checkpointing {
                    store,
                    group: "g".into(),
                    interval: Duration::ZERO,
                }),
                health: health.stage("summer"),
                retry: RetryPolicy {
                    first_delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(2),
                    give_up_after: Duration::from_secs(5),
                },
            },
            seeks,
            committed,
        )
    }

    #[tokio::test]
    async fn a_restart_resumes_from_the_checkpoint_without_learning_twice_or_leaving_a_gap() {
        let store = Arc::new(MemStore::default());
        let health = Health::default();
        // First process: records 0..5, the write of the second batch fails twice
        // (retried), then it stops.
        let mut a = Summer::default();
        *a.fail_writes.lock().unwrap() = 2;
        let (io_a, _, committed) = io(vec![vec![0, 1, 2], vec![3, 4]], store.clone(), &health);
        let r = run(&mut a, io_a).await.unwrap();
        assert_eq!(r.records, 5);
        assert_eq!(*a.written.lock().unwrap(), vec![1, 3, 6, 10, 15]);
        assert_eq!(committed.lock().unwrap().last(), Some(&(0, 4)));
        assert_eq!(health.snapshot()["summer"].retries, 2);

        // Second process: the bus redelivers from 2 (its commit was lost), then jumps to 7
        // (a fetch position ahead of the checkpoint), then delivers from the checkpoint.
        let mut b = Summer::default();
        let (io_b, seeks, _) = io(
            vec![vec![2, 3, 4, 5], vec![7, 8], vec![6, 7, 8, 9]],
            store.clone(),
            &health,
        );
        let r = run(&mut b, io_b).await.unwrap();
        assert_eq!(r.restored_partitions, 1);
        assert_eq!(r.replayed_skipped, 3);
        assert_eq!(*seeks.lock().unwrap(), vec![(0, 6)]);
        // Each record folded exactly once across both processes: 1 + 2 + ... + 10.
        assert_eq!(*b.written.lock().unwrap(), vec![21, 28, 36, 45, 55]);
        assert_eq!(store.parts.lock().unwrap()[&0].positions[0].next_offset, 10);
        assert_eq!(store.parts.lock().unwrap()[&0].positions[0].records, 10);
    }
}
