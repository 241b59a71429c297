//! The explain stage: `seismo.incidents` changes in, each incident explained once its changes go quiet.
#![expect(
    clippy::disallowed_methods,
    reason = "the stage stamps when it explained"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use seismo_runtime::{Dirty, Entries, Stage, StageError, Tick};
use seismo_schemas::IncidentChange;
use seismo_store::StoreError;
use seismo_transport::Message;

use crate::explainer::{Explainer, Source};

/// Counts of what an explain process did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExplainStats {
    pub changes: u64,
    pub explained: u64,
    pub by_model: u64,
    pub by_template: u64,
    pub refused: u64,
}

/// Incidents to explain: (tenant, id) → wall time of the last change (ms).
type Pending = BTreeMap<(String, String), i64>;

/// What a tick hands to `write`.
#[derive(Debug, Default)]
pub struct ExplainOut {
    pub due: Vec<(String, String)>,
}

/// The explain stage. Explanations are side output: nothing downstream waits for them.
pub struct ExplainStage {
    explainer: Arc<Explainer>,
    debounce_ms: i64,
    parts: BTreeMap<u32, Pending>,
    dirty: BTreeSet<u32>,
    stats: Mutex<ExplainStats>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ExplainStage {
    pub fn new(explainer: Arc<Explainer>) -> Self {
        let debounce = Duration::from_secs(explainer.config().debounce_secs);
        ExplainStage {
            explainer,
            debounce_ms: debounce.as_millis() as i64,
            parts: BTreeMap::new(),
            dirty: BTreeSet::new(),
            stats: Mutex::new(ExplainStats::default()),
        }
    }

    pub fn stats(&self) -> ExplainStats {
        *self.stats.lock().expect("stats lock")
    }

    fn release(&mut self, out: &mut ExplainOut, all: bool) {
        let now = now_ms();
        for (p, pending) in self.parts.iter_mut() {
            let due: Vec<(String, String)> = pending
                .iter()
                .filter(|(_, t)| all || now - **t >= self.debounce_ms)
                .map(|(k, _)| k.clone())
                .collect();
            if due.is_empty() {
                continue;
            }
            for k in &due {
                pending.remove(k);
            }
            self.dirty.insert(*p);
            out.due.extend(due);
        }
    }
}

#[async_trait]
impl Stage for ExplainStage {
    type Out = ExplainOut;

    fn process(&mut self, m: &Message, _out: &mut ExplainOut) -> u64 {
        match serde_json::from_slice::<IncidentChange>(&m.payload) {
            Ok(c) => {
                self.parts
                    .entry(m.partition)
                    .or_default()
                    .insert((c.incident.tenant.clone(), c.incident.id.clone()), now_ms());
                self.dirty.insert(m.partition);
                self.stats.lock().expect("stats lock").changes += 1;
                1
            }
            Err(e) => {
                // Notify sends such records to the DLQ; here they are only skipped.
                tracing::warn!(offset = m.offset, error = %e, "record is not an incident change; skipped");
                self.stats.lock().expect("stats lock").refused += 1;
                0
            }
        }
    }

    async fn tick(&mut self, out: &mut ExplainOut, _tick: &Tick) {
        self.release(out, false);
    }

    fn finish(&mut self, out: &mut ExplainOut) {
        self.release(out, true);
    }

    fn has_output(out: &ExplainOut) -> bool {
        !out.due.is_empty()
    }

    async fn write(&self, out: &ExplainOut) -> Result<(), StageError> {
        for (tenant, id) in &out.due {
            match self.explainer.explain(tenant, id, false).await {
                Ok(e) => {
                    let mut s = self.stats.lock().expect("stats lock");
                    s.explained += 1;
                    match e.source {
                        Source::Model => s.by_model += 1,
                        Source::Template => s.by_template += 1,
                    }
                }
                // Deleted since, or never stored (another tenant's replay): nothing to explain.
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        if !self.dirty.remove(&partition) {
            return (Vec::new(), Vec::new());
        }
        match self.parts.get(&partition) {
            Some(p) if !p.is_empty() => (
                vec![(
                    b"p".to_vec(),
                    postcard::to_stdvec(p).expect("explain state encodes"),
                )],
                Vec::new(),
            ),
            _ => (Vec::new(), vec![b"p".to_vec()]),
        }
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        for (key, value) in entries {
            if key != b"p" {
                return Err(format!("unknown checkpoint key {key:?}"));
            }
            let p: Pending = postcard::from_bytes(&value).map_err(|e| e.to_string())?;
            self.parts.insert(partition, p);
        }
        self.dirty.remove(&partition);
        Ok(())
    }

    fn drop_partition(&mut self, partition: u32) {
        self.parts.remove(&partition);
        self.dirty.remove(&partition);
    }
}
