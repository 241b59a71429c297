//! What each stage is doing, for `/readyz` and the stage metrics.
#![expect(
    clippy::disallowed_methods,
    reason = "health reports wall-clock progress"
)]

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    IntCounterVec, IntGauge, IntGaugeVec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec,
};

static UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "seismo_stage_up",
        "1 while a stage runs normally, 0 while it retries, failed or stopped",
        &["stage"]
    )
    .expect("metric")
});
static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_stage_retries_total",
        "Transient failures a stage retried",
        &["stage"]
    )
    .expect("metric")
});
static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_stage_failures_total",
        "Stages that stopped on an error they could not recover from",
        &["stage"]
    )
    .expect("metric")
});
static LAG_RECORDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "seismo_stage_lag_records",
        "Input records waiting for a stage (consumer lag), where the bus knows it",
        &["stage"]
    )
    .expect("metric")
});
static LAG_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "seismo_stage_lag_bytes",
        "Input bytes waiting for a stage, where the bus knows them",
        &["stage"]
    )
    .expect("metric")
});
static RSS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "seismo_process_resident_bytes",
        "Resident memory of this process"
    )
    .expect("metric")
});

/// The state of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Starting,
    Running,
    /// A transient fault (database locked, broker away) is being retried.
    Retrying,
    /// Stopped after draining or on shutdown.
    Stopped,
    Failed,
}

/// One stage's entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageStatus {
    pub state: StageState,
    /// The last error while retrying or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub retries: u64,
    /// Consumer lag: records and bytes waiting, where the bus knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Seconds since the stage last finished a batch (or an idle tick).
    pub idle_secs: f64,
    #[serde(skip)]
    last_progress: Option<Instant>,
    #[serde(skip)]
    busy_since: Option<Instant>,
}

/// Every stage of this process.
#[derive(Debug, Clone, Default)]
pub struct Health {
    stages: Arc<Mutex<BTreeMap<String, StageStatus>>>,
}

/// A stage's handle on the registry.
#[derive(Debug, Clone)]
pub struct StageHealth {
    health: Health,
    name: String,
}

impl Health {
    /// Registers a stage (starting) and returns its handle.
    pub fn stage(&self, name: &str) -> StageHealth {
        self.stages.lock().expect("health lock").insert(
            name.to_string(),
            StageStatus {
                state: StageState::Starting,
                error: None,
                retries: 0,
                lag_records: None,
                lag_bytes: None,
                idle_secs: 0.0,
                last_progress: Some(Instant::now()),
                busy_since: None,
            },
        );
        UP.with_label_values(&[name]).set(0);
        StageHealth {
            health: self.clone(),
            name: name.to_string(),
        }
    }

    /// Every stage's status now.
    pub fn snapshot(&self) -> BTreeMap<String, StageStatus> {
        let mut m = self.stages.lock().expect("health lock").clone();
        for s in m.values_mut() {
            s.idle_secs = s.last_progress.map_or(0.0, |t| t.elapsed().as_secs_f64());
        }
        m
    }

    /// Whether every stage is ready: running (not starting, retrying, failed or stopped)
    /// and not stuck in one batch for longer than `stuck_after`. With the per-stage report.
    pub fn readiness(&self, stuck_after: Duration) -> (bool, serde_json::Value) {
        let snap = self.snapshot();
        let mut ready = !snap.is_empty();
        let mut stages = serde_json::Map::new();
        for (name, s) in &snap {
            let stuck = s.busy_since.is_some_and(|t| t.elapsed() > stuck_after);
            ready &= s.state == StageState::Running && !stuck;
            let mut v = serde_json::to_value(s).expect("status serialises");
            v["stuck"] = stuck.into();
            stages.insert(name.clone(), v);
        }
        (
            ready,
            serde_json::json!({ "ready": ready, "stages": stages }),
        )
    }
}

impl StageHealth {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn update(&self, f: impl FnOnce(&mut StageStatus)) {
        if let Some(s) = self
            .health
            .stages
            .lock()
            .expect("health lock")
            .get_mut(&self.name)
        {
            f(s);
        }
    }

    pub fn running(&self) {
        self.update(|s| {
            s.state = StageState::Running;
            s.error = None;
        });
        UP.with_label_values(&[&self.name]).set(1);
    }

    pub fn retrying(&self, error: &str) {
        self.update(|s| {
            s.state = StageState::Retrying;
            s.error = Some(error.to_string());
            s.retries += 1;
        });
        RETRIES.with_label_values(&[&self.name]).inc();
        UP.with_label_values(&[&self.name]).set(0);
    }

    pub fn failed(&self, error: &str) {
        self.update(|s| {
            s.state = StageState::Failed;
            s.error = Some(error.to_string());
            s.busy_since = None;
        });
        FAILURES.with_label_values(&[&self.name]).inc();
        UP.with_label_values(&[&self.name]).set(0);
    }

    pub fn stopped(&self) {
        self.update(|s| {
            s.state = StageState::Stopped;
            s.busy_since = None;
        });
        UP.with_label_values(&[&self.name]).set(0);
    }

    /// The stage started work on a batch.
    pub fn busy(&self) {
        self.update(|s| s.busy_since = Some(Instant::now()));
    }

    /// The stage finished a batch or an idle tick; `lag` is its consumer lag if known.
    pub fn progress(&self, lag: Option<(u64, u64)>) {
        self.update(|s| {
            s.last_progress = Some(Instant::now());
            s.busy_since = None;
            s.lag_records = lag.map(|l| l.0);
            s.lag_bytes = lag.map(|l| l.1);
        });
        if let Some((r, b)) = lag {
            LAG_RECORDS.with_label_values(&[&self.name]).set(r as i64);
            LAG_BYTES.with_label_values(&[&self.name]).set(b as i64);
        }
    }
}

/// This process's resident memory in bytes (Linux; 0 elsewhere), also published as
/// `seismo_process_resident_bytes`.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let bytes = pages * 4096;
    RSS.set(bytes as i64);
    bytes
}
