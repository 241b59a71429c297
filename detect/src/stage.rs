//! The detect stage: the [`Detector`] core behind the generic runner, writing anomalies to
//! the store and to `seismo.anomalies` with the watermarks correlate merges them by.
#![expect(
    clippy::disallowed_methods,
    reason = "the stage shell paces idle flushes by the wall clock; its core does not read it"
)]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use prometheus::{IntCounter, register_int_counter};
use seismo_runtime::{
    Announcer, Dirty, Entries, MergeTag, Stage, StageError, Tick, WatermarkSource, merge_records,
};
use seismo_schemas::topics;
use seismo_schemas::{Anomaly, BandPoint};
use seismo_store::Store;
use seismo_transport::{Message, Producer};

use crate::{DetectConfig, Detector};

static ANOMALIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("seismo_detect_anomalies_total", "Anomalies raised").expect("metric")
});
static BAD: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_detect_unparsable_total",
        "Records on seismo.points that are not points"
    )
    .expect("metric")
});

/// What a batch of points produced.
#[derive(Debug, Default)]
pub struct DetectOut {
    pub anomalies: Vec<Anomaly>,
    pub sources: Vec<MergeTag>,
    /// (source partition, watermark in UTC ms) to announce.
    pub watermarks: Vec<(u32, i64)>,
    /// Expected bands sampled on the way, for the `bands` table.
    pub bands: Vec<BandPoint>,
}

/// Sequence indexes of anomalies raised by a flush start here, above any one record's.
const FLUSH_SEQ_BASE: u32 = 1 << 31;

/// The detect stage.
pub struct DetectStage {
    det: Detector,
    store: Arc<dyn Store>,
    output: Arc<dyn Producer>,
    scope_label: Option<String>,
    /// Partitions of `seismo.anomalies`: every one hears every watermark.
    anomaly_partitions: u32,
    /// Which watermarks to announce at the next tick.
    announcer: Announcer,
    /// Points scored and anomalies raised by this process.
    pub points: u64,
    pub raised: u64,
    /// After this long without input, open buckets that ended `allowed_lateness` ago (by
    /// the wall clock) are scored: a stream that stopped still has its last bucket seen.
    idle_flush: Duration,
    /// Per partition, the last input offset and how many flushes followed it: anomalies
    /// raised without a record get sequence numbers after that record's.
    flush_seq: HashMap<u32, (i64, u32)>,
    last_idle_flush: Instant,
}

impl DetectStage {
    /// Scores the open buckets that ended at or before `horizon` in every partition this
    /// process has read a record of (a flushed anomaly needs a sequence number after it).
    fn flush(&mut self, horizon: i64, out: &mut DetectOut) {
        for p in self.det.partitions() {
            let Some((offset, flushes)) = self.flush_seq.get_mut(&p) else {
                continue;
            };
            let anomalies = self.det.flush(p, horizon);
            if anomalies.is_empty() {
                continue;
            }
            self.announcer.touch(p);
            let wm = self.det.published_watermark(p).unwrap_or(i64::MIN);
            for a in anomalies {
                // After the record's own anomalies (indexes from 0) and earlier flushes.
                *flushes += 1;
                out.sources.push(MergeTag {
                    partition: p,
                    seq: (*offset, FLUSH_SEQ_BASE + *flushes),
                    merge_at_ms: a.ts.timestamp_millis().max(wm),
                });
                out.anomalies.push(a);
                self.raised += 1;
            }
        }
    }

    pub fn new(
        cfg: DetectConfig,
        scope_label: Option<String>,
        store: Arc<dyn Store>,
        output: Arc<dyn Producer>,
        anomaly_partitions: u32,
        idle_flush: Duration,
    ) -> Self {
        DetectStage {
            idle_flush,
            flush_seq: HashMap::new(),
            last_idle_flush: Instant::now(),
            det: Detector::new(cfg),
            store,
            output,
            scope_label,
            anomaly_partitions: anomaly_partitions.max(1),
            announcer: Announcer::default(),
            points: 0,
            raised: 0,
        }
    }
}

impl WatermarkSource for Detector {
    fn published_watermark(&self, partition: u32) -> Option<i64> {
        Detector::published_watermark(self, partition)
    }
    fn advance_watermark(&mut self, partition: u32) -> Option<i64> {
        Detector::advance_watermark(self, partition)
    }
    fn has_partition(&self, partition: u32) -> bool {
        Detector::has_partition(self, partition)
    }
}

#[async_trait]
impl Stage for DetectStage {
    type Out = DetectOut;
    /// 6: series remember whether their last value was a time-of-day outlier (a spike
    /// is learned clipped); 5: host rows carry the members' surprisals and the joint test's state (4 had the
    /// calibrated ensemble without them; 3 had the salted novelty sets and the windowed
    /// forest; 2 lacked the series' name and labels; 1 was one JSON document).
    const FORMAT: u32 = 6;

    fn process(&mut self, m: &Message, out: &mut DetectOut) -> u64 {
        let mut folded = 0;
        let repeated_before = self.det.repeated;
        let mut index = 0u32;
        self.announcer.touch(m.partition);
        self.flush_seq.insert(m.partition, (m.offset, 0));
        for point in seismo_schemas::points_of_record(&m.payload) {
            match point {
                Ok(p) => {
                    folded += 1;
                    for a in self.det.process(m.partition, &p) {
                        let wm = self
                            .det
                            .published_watermark(m.partition)
                            .unwrap_or(i64::MIN);
                        out.sources.push(MergeTag {
                            partition: m.partition,
                            seq: (m.offset, index),
                            merge_at_ms: a.ts.timestamp_millis().max(wm),
                        });
                        out.anomalies.push(a);
                        index += 1;
                        self.raised += 1;
                    }
                }
                Err(e) => {
                    BAD.inc();
                    tracing::warn!(partition = m.partition, offset = m.offset, error = %e, "skipping a line that is not a point");
                }
            }
        }
        // Count each point once: a replayed duplicate (an upstream retry) is not folded.
        let folded = folded - (self.det.repeated - repeated_before);
        self.points += folded;
        out.bands.append(&mut self.det.take_bands());
        folded
    }

    async fn tick(&mut self, out: &mut DetectOut, tick: &Tick) {
        // Again every idle period while the quiet lasts: buckets still within their
        // lateness at one flush are due at a later one.
        if tick.idle_for >= self.idle_flush && self.last_idle_flush.elapsed() >= self.idle_flush {
            self.last_idle_flush = Instant::now();
            let horizon = chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(self.det.lateness_ms());
            self.flush(horizon, out);
            out.bands.append(&mut self.det.take_bands());
        }
        self.announcer.announce(&mut self.det, &mut out.watermarks);
        self.announcer
            .cover_empty(&self.det, &tick.assignment, &mut out.watermarks);
    }

    /// The input ended (a file run): every open bucket is scored and announced.
    fn finish(&mut self, out: &mut DetectOut) {
        self.flush(i64::MAX, out);
        out.bands.append(&mut self.det.take_bands());
        self.announcer.announce(&mut self.det, &mut out.watermarks);
    }

    fn has_output(out: &DetectOut) -> bool {
        !out.anomalies.is_empty() || !out.watermarks.is_empty() || !out.bands.is_empty()
    }

    async fn write(&self, out: &DetectOut) -> Result<(), StageError> {
        if !out.anomalies.is_empty() {
            self.store.insert_anomalies(&out.anomalies).await?;
        }
        if !out.bands.is_empty() {
            self.store.insert_bands(&out.bands).await?;
        }
        let records = merge_records(
            &out.anomalies,
            &out.sources,
            &out.watermarks,
            0,
            self.anomaly_partitions,
            self.scope_label.as_deref(),
        );
        self.output.send(topics::ANOMALIES, records).await?;
        ANOMALIES.inc_by(out.anomalies.len() as u64);
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        (self.det.take_dirty(partition), Vec::new())
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        self.det.restore(partition, entries)?;
        self.announcer.restored(partition);
        Ok(())
    }

    fn drop_partition(&mut self, partition: u32) {
        self.det.drop_partition(partition);
        self.announcer.drop_partition(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use seismo_transport::{InProcBus, Message};

    fn record(offset: i64) -> Message {
        let line = serde_json::json!({
            "name": "cpu",
            "labels": {"host": "h1"},
            "ts": 1_767_225_600_000i64 + offset * 60_000,
            "value": 1.0,
        })
        .to_string();
        Message {
            topic: topics::POINTS.into(),
            partition: 0,
            offset,
            key: Bytes::new(),
            payload: Bytes::from(line + "\n"),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    async fn stage() -> DetectStage {
        let store = seismo_store::SqliteStore::connect("sqlite::memory:")
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let bus = InProcBus::new(1, 1024);
        DetectStage::new(
            DetectConfig::default(),
            None,
            Arc::new(store),
            Arc::new(bus.producer(&[topics::ANOMALIES])),
            1,
            Duration::from_secs(3600),
        )
    }

    #[tokio::test]
    async fn a_partition_restored_from_a_checkpoint_announces_its_watermark_again() {
        let tick = Tick {
            idle_for: Duration::ZERO,
            assignment: vec![0],
        };
        let mut first = stage().await;
        let mut out = DetectOut::default();
        for k in 0..30 {
            first.process(&record(k), &mut out);
        }
        first.tick(&mut out, &tick).await;
        let announced = out
            .watermarks
            .iter()
            .filter(|(p, _)| *p == 0)
            .map(|(_, w)| *w)
            .max()
            .expect("a watermark for the partition with data");
        // The process checkpoints, then dies before the announcement reaches the bus:
        // another one restores the partition and must say it again, or correlate holds
        // the partition's last anomalies back.
        let (entries, _) = first.take_dirty(0);
        let mut second = stage().await;
        second.restore(0, entries).unwrap();
        let mut out = DetectOut::default();
        second.tick(&mut out, &tick).await;
        assert!(
            out.watermarks.contains(&(0, announced)),
            "{:?}",
            out.watermarks
        );
        // Once is enough.
        let mut out = DetectOut::default();
        second.tick(&mut out, &tick).await;
        assert!(out.watermarks.is_empty(), "{:?}", out.watermarks);
    }
}
