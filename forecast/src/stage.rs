//! The forecast stage on the bus: `seismo.points` → the `forecasts` table, and predicted breaches → the anomalies table and `seismo.anomalies`.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{IntCounter, register_int_counter};
use seismo_runtime::{Dirty, Entries, Stage, StageError};
use seismo_schemas::topics::{self, headers};
use seismo_schemas::{Anomaly, Forecast, correlation_key};
use seismo_store::Store;
use seismo_transport::{Message, OutRecord, Producer};

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
}

/// The forecast stage.
pub struct ForecastStage {
    core: Forecaster,
    store: Arc<dyn Store>,
    output: Arc<dyn Producer>,
    scope_label: Option<String>,
    counted: ForecastStats,
}

impl ForecastStage {
    pub fn new(
        cfg: ForecastConfig,
        scope_label: Option<String>,
        store: Arc<dyn Store>,
        output: Arc<dyn Producer>,
    ) -> Self {
        ForecastStage {
            core: Forecaster::new(cfg),
            store,
            output,
            scope_label,
            counted: ForecastStats::default(),
        }
    }

    /// What the core has done so far.
    pub fn stats(&self) -> ForecastStats {
        self.core.stats
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
        out.forecasts.append(&mut produced.forecasts);
        out.anomalies.append(&mut produced.anomalies);
        let s = self.core.stats;
        FORECASTS.inc_by(s.forecasts - self.counted.forecasts);
        POSTPONED.inc_by(s.postponed - self.counted.postponed);
        PREDICTED.inc_by(s.predicted - self.counted.predicted);
        self.counted = s;
        n
    }

    fn has_output(out: &ForecastOut) -> bool {
        !out.forecasts.is_empty() || !out.anomalies.is_empty()
    }

    async fn write(&self, out: &ForecastOut) -> Result<(), StageError> {
        self.store.insert_forecasts(&out.forecasts).await?;
        if !out.anomalies.is_empty() {
            self.store.insert_anomalies(&out.anomalies).await?;
            // No source headers: correlation merges these at their own time and does
            // not take them for replays of a detect partition's output.
            let records = out
                .anomalies
                .iter()
                .map(|a| {
                    OutRecord::new(
                        Bytes::from(correlation_key(
                            &a.tenant,
                            &a.labels,
                            self.scope_label.as_deref(),
                        )),
                        Bytes::from(serde_json::to_vec(a).expect("anomalies serialise")),
                    )
                    .header(headers::MERGE_AT, a.ts.timestamp_millis().to_string())
                })
                .collect();
            self.output.send(topics::ANOMALIES, records).await?;
        }
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        (self.core.take_dirty(partition), Vec::new())
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        self.core.restore(partition, entries)
    }

    fn drop_partition(&mut self, partition: u32) {
        self.core.drop_partition(partition);
    }
}
