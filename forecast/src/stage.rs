//! The forecast stage on the bus: `seismo.points` → the `forecasts` table, and predicted breaches → the anomalies table and `seismo.anomalies`.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;

use prometheus::{IntCounter, register_int_counter};
use seismo_runtime::{
    Announcer, Dirty, Entries, MergeTag, Stage, StageError, Tick, WatermarkSource, merge_records,
};
use seismo_schemas::topics::{self, headers};
use seismo_schemas::{Anomaly, Forecast};
use seismo_store::Store;
use seismo_transport::{Message, Producer};

use crate::forecaster::{ForecastStats, Produced};
use crate::{ForecastConfig, Forecaster};

static FORECASTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_forecast_series_forecasts_total",
        "Series forecasts made"
    )
    .expect("metric")
});
static POSTPONED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_forecast_postponed_total",
        "Forecasts put off because the CPU budget (forecast.budget_ms_per_sec) was spent"
    )
    .expect("metric")
});
static PREDICTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_forecast_predicted_breaches_total",
        "Predicted threshold breaches raised or re-reported"
    )
    .expect("metric")
});

/// What a batch produced.
#[derive(Debug, Default)]
pub struct ForecastOut {
    pub forecasts: Vec<Forecast>,
    pub anomalies: Vec<Anomaly>,
    /// For each anomaly: its `seismo.points` partition, sequence (input offset, index)
    /// and merge time, for correlate's merge.
    pub sources: Vec<MergeTag>,
    /// (source partition, watermark in UTC ms) to announce.
    pub watermarks: Vec<(u32, i64)>,
}

/// The forecast stage.
pub struct ForecastStage {
    core: Forecaster,
    store: Arc<dyn Store>,
    output: Arc<dyn Producer>,
    scope_label: Option<String>,
    counted: ForecastStats,
    /// Whether any threshold is configured: only then can predictions come, and only
    /// then are watermarks announced (correlate waits for a source that announces).
    predicts: bool,
    /// Partitions of `seismo.anomalies`: every one hears every watermark.
    anomaly_partitions: u32,
    /// Which watermarks to announce at the next tick.
    announcer: Announcer,
}

impl ForecastStage {
    pub fn new(
        cfg: ForecastConfig,
        scope_label: Option<String>,
        store: Arc<dyn Store>,
        output: Arc<dyn Producer>,
        anomaly_partitions: u32,
    ) -> Self {
        ForecastStage {
            predicts: !cfg.thresholds.is_empty(),
            core: Forecaster::new(cfg),
            store,
            output,
            scope_label,
            counted: ForecastStats::default(),
            anomaly_partitions: anomaly_partitions.max(1),
            announcer: Announcer::default(),
        }
    }

    /// What the core has done so far.
    pub fn stats(&self) -> ForecastStats {
        self.core.stats
    }
}

impl WatermarkSource for Forecaster {
    fn published_watermark(&self, partition: u32) -> Option<i64> {
        Forecaster::published_watermark(self, partition)
    }
    fn advance_watermark(&mut self, partition: u32) -> Option<i64> {
        Forecaster::advance_watermark(self, partition)
    }
    fn has_partition(&self, partition: u32) -> bool {
        Forecaster::has_partition(self, partition)
    }
}

#[async_trait]
impl Stage for ForecastStage {
    type Out = ForecastOut;
    /// 2: histories carry their series' names and standing predictions.
    const FORMAT: u32 = 2;

    fn process(&mut self, m: &Message, out: &mut ForecastOut) -> u64 {
        let mut n = 0;
        let mut produced = Produced::default();
        for p in seismo_schemas::points_of_record(&m.payload).flatten() {
            self.core.process(m.partition, &p, &mut produced);
            n += 1;
        }
        self.announcer.touch(m.partition);
        let wm = self
            .core
            .published_watermark(m.partition)
            .unwrap_or(i64::MIN);
        for (i, a) in produced.anomalies.iter().enumerate() {
            out.sources.push(MergeTag {
                partition: m.partition,
                seq: (m.offset, i as u32),
                merge_at_ms: a.ts.timestamp_millis().max(wm),
            });
        }
        out.forecasts.append(&mut produced.forecasts);
        out.anomalies.append(&mut produced.anomalies);
        let s = self.core.stats;
        FORECASTS.inc_by(s.forecasts - self.counted.forecasts);
        POSTPONED.inc_by(s.postponed - self.counted.postponed);
        PREDICTED.inc_by(s.predicted - self.counted.predicted);
        self.counted = s;
        n
    }

    async fn tick(&mut self, out: &mut ForecastOut, tick: &Tick) {
        if !self.predicts {
            return;
        }
        self.announcer.announce(&mut self.core, &mut out.watermarks);
        self.announcer
            .cover_empty(&self.core, &tick.assignment, &mut out.watermarks);
    }

    fn finish(&mut self, out: &mut ForecastOut) {
        if self.predicts {
            self.announcer.announce(&mut self.core, &mut out.watermarks);
        }
    }

    fn has_output(out: &ForecastOut) -> bool {
        !out.forecasts.is_empty() || !out.anomalies.is_empty() || !out.watermarks.is_empty()
    }

    async fn write(&self, out: &ForecastOut) -> Result<(), StageError> {
        if !out.forecasts.is_empty() {
            self.store.insert_forecasts(&out.forecasts).await?;
        }
        if !out.anomalies.is_empty() {
            self.store.insert_anomalies(&out.anomalies).await?;
        }
        // Numbered apart from detect's sources: correlate merges these in event-time
        // order with detect's anomalies once this partition has announced a watermark,
        // and drops replays by their sequence.
        let records = merge_records(
            &out.anomalies,
            &out.sources,
            &out.watermarks,
            headers::FORECAST_SOURCE_BASE,
            self.anomaly_partitions,
            self.scope_label.as_deref(),
        );
        if !records.is_empty() {
            self.output.send(topics::ANOMALIES, records).await?;
        }
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        (self.core.take_dirty(partition), Vec::new())
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        self.core.restore(partition, entries)?;
        self.announcer.restored(partition);
        Ok(())
    }

    fn drop_partition(&mut self, partition: u32) {
        self.core.drop_partition(partition);
        self.announcer.drop_partition(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thresholds::Threshold;
    use bytes::Bytes;
    use seismo_transport::{Consumer, InProcBus};
    use std::collections::BTreeMap;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    /// One hour of a disk filling 0.25 points an hour from 40 %, as one record of
    /// `seismo.points` partition 3.
    fn hour(h: i64) -> Message {
        let lines: String = (0..60)
            .map(|m| {
                let t = h as f64 + m as f64 / 60.0;
                let v = 40.0 + 0.25 * t + 2.0 * (t * std::f64::consts::TAU / 24.0).sin();
                serde_json::json!({
                    "name": "disk_used_percent",
                    "labels": {"host": "db1"},
                    "ts": T0 + h * 3_600_000 + m * 60_000,
                    "value": v,
                })
                .to_string()
                    + "\n"
            })
            .collect();
        Message {
            topic: topics::POINTS.into(),
            partition: 3,
            offset: h,
            key: Bytes::new(),
            payload: Bytes::from(lines),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[tokio::test]
    async fn predictions_never_come_before_their_partitions_announced_watermark() {
        let store = seismo_store::SqliteStore::connect("sqlite::memory:")
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let bus = InProcBus::new(2, 1 << 20);
        let mut consumers = bus.subscribe(topics::ANOMALIES, "test", 1);
        let mut cfg = ForecastConfig {
            budget_ms_per_sec: 0,
            ..ForecastConfig::default()
        };
        cfg.thresholds.push(Threshold::disk_full());
        let mut stage = ForecastStage::new(
            cfg,
            None,
            Arc::new(store),
            Arc::new(bus.producer(&[topics::ANOMALIES])),
            2,
        );
        let tick = Tick {
            idle_for: std::time::Duration::ZERO,
            assignment: vec![3],
        };
        // 90 % comes at about hour 200: predictions come well before.
        for h in 0..190 {
            let mut out = ForecastOut::default();
            stage.process(&hour(h), &mut out);
            stage.tick(&mut out, &tick).await;
            stage.write(&out).await.unwrap();
        }
        drop(stage);
        bus.seal();
        let source = (headers::FORECAST_SOURCE_BASE + 3).to_string();
        let num = |m: &Message, h: &str| -> i64 {
            std::str::from_utf8(m.header(h).expect(h))
                .unwrap()
                .parse()
                .unwrap()
        };
        // Per anomaly partition: the watermark announced so far, and the last sequence.
        let mut announced: BTreeMap<u32, i64> = BTreeMap::new();
        let mut last_seq: BTreeMap<u32, (i64, u32)> = BTreeMap::new();
        let mut predictions = 0;
        while let Some(batch) = consumers[0].next_batch(1000).await {
            for m in batch.unwrap() {
                assert_eq!(
                    m.header(headers::SOURCE_PARTITION).map(|v| v.as_ref()),
                    Some(source.as_bytes())
                );
                if m.payload.is_empty() {
                    let wm = num(&m, headers::WATERMARK);
                    let slot = announced.entry(m.partition).or_insert(wm);
                    assert!(wm >= *slot, "watermarks never go back");
                    *slot = wm;
                    continue;
                }
                let a: Anomaly = serde_json::from_slice(&m.payload).unwrap();
                let merge_at = num(&m, headers::MERGE_AT);
                assert!(merge_at >= a.ts.timestamp_millis());
                if let Some(wm) = announced.get(&m.partition) {
                    assert!(
                        merge_at >= *wm,
                        "merge time {merge_at} before watermark {wm}"
                    );
                }
                let (o, i) = std::str::from_utf8(m.header(headers::SOURCE_SEQ).unwrap())
                    .unwrap()
                    .split_once('.')
                    .unwrap();
                let seq = (o.parse().unwrap(), i.parse().unwrap());
                if let Some(prev) = last_seq.insert(m.partition, seq) {
                    assert!(seq > prev, "sequence {seq:?} after {prev:?}");
                }
                predictions += 1;
            }
        }
        assert!(predictions > 0, "nothing predicted");
        assert_eq!(
            announced.len(),
            2,
            "every anomaly partition hears the watermark"
        );
    }
}
