//! The correlate runner: merges the anomaly and alert streams into the correlator.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, register_int_counter};
use seismo_schemas::{Alert, AlertmanagerWebhook, Anomaly, topics};
use seismo_store::{IncidentWrite, Store};
use seismo_transport::{Consumer, Message, OutRecord, Producer, TransportError};

use crate::{CorrelateConfig, Correlator, Signal};

static INCIDENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_correlate_incidents_created_total",
        "Incidents opened"
    )
    .expect("metric")
});

/// Errors that stop the correlate runner.
#[derive(Debug, thiserror::Error)]
pub enum CorrelateError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] seismo_store::StoreError),
}

/// Counts of what a runner did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CorrelateStats {
    pub anomalies: u64,
    pub alerts: u64,
    pub incidents_created: u64,
    /// Input records that were not alerts or anomalies (sent to the DLQ).
    pub refused: u64,
}

/// Alerts arrive either canonical (from Seismo's HTTP ingest) or as raw Alertmanager
/// webhook payloads written straight to the topic; anything else is refused with a reason.
fn parse_alerts(m: &Message) -> Result<Vec<Alert>, String> {
    if let Ok(a) = serde_json::from_slice::<Alert>(&m.payload) {
        return Ok(vec![a]);
    }
    let tenant = m.header("tenant").and_then(|t| std::str::from_utf8(t).ok());
    serde_json::from_slice::<AlertmanagerWebhook>(&m.payload)
        .map_err(|e| format!("neither an alert nor an Alertmanager v4 payload: {e}"))
        .and_then(|h| h.into_alerts(tenant))
}

/// The DLQ record of a refused input record: its raw bytes, and where it came from.
fn dead_letter(m: &Message, reason: String) -> OutRecord {
    OutRecord::new(m.key.clone(), m.payload.clone())
        .header("source_topic", m.topic.clone())
        .header("source_partition", m.partition.to_string())
        .header("source_offset", m.offset.to_string())
        .header("reason", reason)
}

/// How often open incidents are checked for closure through the API.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// Runs correlate until both inputs end.
pub async fn run(
    cfg: CorrelateConfig,
    mut anomalies: Box<dyn Consumer>,
    mut alerts: Box<dyn Consumer>,
    output: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    batch_records: usize,
) -> Result<CorrelateStats, CorrelateError> {
    let mut core = Correlator::new(cfg);
    let mut stats = CorrelateStats::default();
    let (mut anomalies_done, mut alerts_done) = (false, false);
    let mut refreshed = Instant::now();
    while !(anomalies_done && alerts_done) {
        let (batch, from_alerts) = tokio::select! {
            b = anomalies.next_batch(batch_records), if !anomalies_done => (b, false),
            b = alerts.next_batch(batch_records), if !alerts_done => (b, true),
        };
        let Some(batch) = batch else {
            if from_alerts {
                alerts_done = true
            } else {
                anomalies_done = true
            }
            continue;
        };
        let batch = batch?;
        if refreshed.elapsed() >= STATUS_REFRESH {
            refreshed = Instant::now();
            let open = core.open_ids();
            if !open.is_empty() {
                for (id, status) in store.incident_statuses(&open).await? {
                    if !status.is_open() {
                        core.mark_closed(&id);
                    }
                }
            }
        }
        let mut writes: Vec<IncidentWrite> = Vec::new();
        if from_alerts {
            let mut parsed: Vec<Alert> = Vec::new();
            let mut dlq = Vec::new();
            for m in &batch {
                match parse_alerts(m) {
                    Ok(a) => parsed.extend(a),
                    Err(reason) => {
                        tracing::warn!(offset = m.offset, %reason, "alert record refused; sent to the DLQ");
                        dlq.push(dead_letter(m, reason));
                    }
                }
            }
            stats.refused += dlq.len() as u64;
            if !dlq.is_empty() {
                output.send(topics::DLQ, dlq).await?;
            }
            stats.alerts += parsed.len() as u64;
            store.insert_alerts(&parsed).await?;
            for a in parsed {
                writes.extend(core.process(Signal::Alert(a)));
            }
        } else {
            for m in &batch {
                match serde_json::from_slice::<Anomaly>(&m.payload) {
                    Ok(a) => {
                        stats.anomalies += 1;
                        writes.extend(core.process(Signal::Anomaly(a)));
                    }
                    Err(e) => {
                        tracing::warn!(offset = m.offset, error = %e, "record is not an anomaly; sent to the DLQ");
                        stats.refused += 1;
                        output
                            .send(
                                topics::DLQ,
                                vec![dead_letter(m, format!("not an anomaly: {e}"))],
                            )
                            .await?;
                    }
                }
            }
        }
        publish(&writes, &mut stats, output.as_ref(), store.as_ref()).await?;
        if from_alerts {
            alerts.commit(&batch).await?
        } else {
            anomalies.commit(&batch).await?
        }
    }
    // Both streams ended: groups still waiting for company are decided now.
    let last = core.flush();
    publish(&last, &mut stats, output.as_ref(), store.as_ref()).await?;
    output.flush().await?;
    Ok(stats)
}

/// Writes incident changes, then announces them on `seismo.incidents`.
async fn publish(
    writes: &[IncidentWrite],
    stats: &mut CorrelateStats,
    output: &dyn Producer,
    store: &dyn Store,
) -> Result<(), CorrelateError> {
    if writes.is_empty() {
        return Ok(());
    }
    let created = writes
        .iter()
        .filter(|w| {
            w.events
                .iter()
                .any(|e| e.kind == seismo_schemas::IncidentEventKind::Created)
        })
        .count() as u64;
    stats.incidents_created += created;
    INCIDENTS.inc_by(created);
    store.write_incidents(writes).await?;
    let records = writes
        .iter()
        .map(|w| {
            OutRecord::new(
                Bytes::from(w.incident.id.clone()),
                Bytes::from(serde_json::to_vec(&w.incident).expect("incidents serialise")),
            )
        })
        .collect();
    output.send(topics::INCIDENTS, records).await?;
    Ok(())
}
