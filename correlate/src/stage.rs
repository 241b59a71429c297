//! The correlate stage: per partition of `seismo.anomalies` (and of `seismo.alerts`, keyed
//! the same way), an event-time [`Merger`] in front of a [`Correlator`], behind the generic
//! runner; incident changes go to the store and, as canonical `IncidentChange`s, to
//! `seismo.incidents`.
#![expect(
    clippy::disallowed_methods,
    reason = "the stage shell refreshes its view by the wall clock; its core does not read it"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{IntCounter, register_int_counter};
use seismo_runtime::{Dirty, Entries, Stage, StageError, Tick};
use seismo_schemas::topics::{self, headers};
use seismo_schemas::{
    Alert, AlertStatus, AlertmanagerWebhook, Anomaly, ChangeKind, IncidentChange,
    IncidentEventKind, IncidentStatus,
};
use seismo_store::{IncidentWrite, Store};
use seismo_transport::{Message, OutRecord, Producer};
use serde::{Deserialize, Serialize};

use crate::merge::Merger;
use crate::{CorrelateConfig, Correlator, Signal};

static INCIDENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_correlate_incidents_created_total",
        "Incidents opened"
    )
    .expect("metric")
});
static AUTO_RESOLVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_correlate_auto_resolved_total",
        "Incidents that resolved themselves when their signals cleared"
    )
    .expect("metric")
});
static REOPENED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_correlate_reopened_total",
        "Incidents that reopened when their signals recurred within correlate.reopen_secs"
    )
    .expect("metric")
});
static REPLAYED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_correlate_replayed_anomalies_total",
        "Anomalies a restarted detect process sent again, dropped by sequence number"
    )
    .expect("metric")
});

/// Counts of what a correlate process did.
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
        seismo_schemas::validate_tenant(&a.tenant).map_err(|e| e.to_string())?;
        return Ok(vec![a]);
    }
    let tenant = m.header("tenant").and_then(|t| std::str::from_utf8(t).ok());
    serde_json::from_slice::<AlertmanagerWebhook>(&m.payload)
        .map_err(|e| format!("neither an alert nor an Alertmanager v4 payload: {e}"))
        .and_then(|h| h.into_alerts(tenant).map_err(|e| e.to_string()))
}

/// The DLQ record of a refused input record: its raw bytes, and where it came from.
fn dead_letter(m: &Message, reason: String) -> OutRecord {
    OutRecord::new(m.key.clone(), m.payload.clone())
        .header("source_topic", m.topic.clone())
        .header("source_partition", m.partition.to_string())
        .header("source_offset", m.offset.to_string())
        .header("reason", reason)
}

fn created(writes: &[IncidentWrite]) -> u64 {
    writes
        .iter()
        .filter(|w| {
            w.events
                .iter()
                .any(|e| e.kind == IncidentEventKind::Created)
        })
        .count() as u64
}

fn header_num<T: std::str::FromStr>(m: &Message, name: &str) -> Option<T> {
    std::str::from_utf8(m.header(name)?).ok()?.parse().ok()
}

/// The state of one partition.
#[derive(Serialize, Deserialize)]
struct Part {
    merge: Merger,
    core: Correlator,
}

/// What a batch produced.
#[derive(Debug, Default)]
pub struct CorrelateOut {
    pub writes: Vec<IncidentWrite>,
    /// Incidents resolving or reopening themselves, applied after `writes`.
    pub steps: Vec<crate::core::StatusStep>,
    pub alerts: Vec<Alert>,
    pub dlq: Vec<OutRecord>,
}

/// How often open incidents are checked for closure through the API.
const STATUS_REFRESH: Duration = Duration::from_secs(1);
/// Most signals one partition's merge buffer holds before releasing the oldest.
const MAX_HELD: usize = 100_000;

/// The correlate stage.
pub struct CorrelateStage {
    cfg: CorrelateConfig,
    parts: BTreeMap<u32, Part>,
    dirty: BTreeSet<u32>,
    /// Partitions of `seismo.points`: the sources whose watermarks the merge waits for.
    sources: u32,
    /// With no input for this long, everything held is released.
    idle_release: Duration,
    store: Arc<dyn Store>,
    output: Arc<dyn Producer>,
    refreshed: Instant,
    /// When each forecast source last announced a watermark (by the wall clock): one
    /// silent for `idle_release` is no longer waited for.
    heard: BTreeMap<u32, Instant>,
    pub stats: CorrelateStats,
}

impl CorrelateStage {
    pub fn new(
        cfg: CorrelateConfig,
        sources: u32,
        idle_release: Duration,
        store: Arc<dyn Store>,
        output: Arc<dyn Producer>,
    ) -> Self {
        CorrelateStage {
            cfg,
            parts: BTreeMap::new(),
            dirty: BTreeSet::new(),
            sources,
            idle_release,
            store,
            output,
            refreshed: Instant::now(),
            heard: BTreeMap::new(),
            stats: CorrelateStats::default(),
        }
    }

    fn part(&mut self, p: u32) -> &mut Part {
        self.dirty.insert(p);
        let (cfg, sources) = (&self.cfg, self.sources);
        self.parts.entry(p).or_insert_with(|| Part {
            merge: Merger::new(sources),
            core: Correlator::new(cfg.clone()),
        })
    }

    /// Feeds released signals in merge order, moving the correlator's clock to each one's
    /// merge time first: the clock then crosses a group's wait or an incident's quiet
    /// period before the same signal whether a watermark showed that time passing or the
    /// signal did, so a replay that sees the watermarks at other moments opens and
    /// resolves the same incidents.
    fn feed(part: &mut Part, signals: Vec<(i64, Signal)>, out: &mut CorrelateOut) {
        for (at, s) in signals {
            out.writes.extend(part.core.advance(at).0);
            out.writes.extend(part.core.process(s));
        }
        out.steps.extend(part.core.take_steps());
    }
}

#[async_trait]
impl Stage for CorrelateStage {
    type Out = CorrelateOut;
    /// 2: services keep their largest change per kind of metric, for ranking.
    /// 3: incidents count their signals instead of listing them.
    /// 4: incidents know their firing alerts and which resolved themselves.
    /// 5: incidents know their standing predicted breaches.
    /// 6: the correlator keeps learned co-occurrence of services.
    /// 7: co-occurrence keeps late-tolerant open ticks and pairs by name, then name.
    /// 8: the correlator keeps aged-out pending anomalies for late signals.
    /// 9: a service's strongest changes carry their time (ranking weighs recent ones).
    const FORMAT: u32 = 9;

    fn process(&mut self, m: &Message, out: &mut CorrelateOut) -> u64 {
        if m.topic == topics::ALERTS {
            match parse_alerts(m) {
                Ok(alerts) => {
                    let n = alerts.len() as u64;
                    self.stats.alerts += n;
                    let part = self.part(m.partition);
                    for a in alerts {
                        let at = if a.status == AlertStatus::Resolved {
                            a.ends_at.unwrap_or(a.starts_at)
                        } else {
                            a.starts_at
                        };
                        out.alerts.push(a.clone());
                        part.merge.alert(a, at.timestamp_millis());
                    }
                    n
                }
                Err(reason) => {
                    tracing::warn!(offset = m.offset, %reason, "alert record refused; sent to the DLQ");
                    self.stats.refused += 1;
                    out.dlq.push(dead_letter(m, reason));
                    0
                }
            }
        } else {
            let source: Option<u32> = header_num(m, headers::SOURCE_PARTITION);
            if let (Some(src), Some(wm)) = (source, header_num::<i64>(m, headers::WATERMARK)) {
                if src >= headers::FORECAST_SOURCE_BASE {
                    self.heard.insert(src, Instant::now());
                }
                self.part(m.partition).merge.watermark(src, wm);
                return 0;
            }
            match serde_json::from_slice::<Anomaly>(&m.payload) {
                Ok(a) => {
                    let seq = m.header(headers::SOURCE_SEQ).and_then(|v| {
                        let (o, i) = std::str::from_utf8(v).ok()?.split_once('.')?;
                        Some((o.parse().ok()?, i.parse().ok()?))
                    });
                    let at = header_num(m, headers::MERGE_AT).unwrap_or(a.ts.timestamp_millis());
                    let from = source.zip(seq);
                    if self.part(m.partition).merge.anomaly(from, at, a) {
                        self.stats.anomalies += 1;
                    } else {
                        REPLAYED.inc();
                    }
                    1
                }
                Err(e) => {
                    tracing::warn!(offset = m.offset, error = %e, "record is not an anomaly; sent to the DLQ");
                    self.stats.refused += 1;
                    out.dlq.push(dead_letter(m, format!("not an anomaly: {e}")));
                    0
                }
            }
        }
    }

    async fn tick(&mut self, out: &mut CorrelateOut, tick: &Tick) {
        let idle = tick.idle_for >= self.idle_release;
        let now = Instant::now();
        for (p, part) in self.parts.iter_mut() {
            // A forecast source that has gone quiet (stopped, or switched off; restored
            // from a checkpoint and never heard since) while detect's go on would hold
            // the merge back for good: after `idle_release` it is no longer waited for,
            // and what it sends later is merged as late (see the correlator). When no
            // input comes at all, forecast's silence says nothing about forecast: its
            // clock restarts, so it is not forgotten the moment detect resumes.
            let silent: Vec<u32> = part
                .merge
                .forecast_sources()
                .filter(|src| {
                    let heard = self.heard.entry(*src).or_insert(now);
                    if idle {
                        *heard = now;
                    }
                    now.duration_since(*heard) >= self.idle_release
                })
                .collect();
            for src in silent {
                tracing::warn!(
                    partition = p,
                    source = src - headers::FORECAST_SOURCE_BASE,
                    silent_secs = self.idle_release.as_secs(),
                    "a forecast partition stopped announcing watermarks; correlate no longer waits for it"
                );
                part.merge.forget(src);
                self.dirty.insert(*p);
            }
            let mut released = part.merge.release();
            released.extend(part.merge.release_excess(MAX_HELD));
            if idle && part.merge.held() > 0 {
                tracing::info!(
                    partition = p,
                    held = part.merge.held(),
                    "no input for a while: releasing what waits for watermarks"
                );
                released.extend(part.merge.release_all());
            }
            if !released.is_empty() {
                self.dirty.insert(*p);
                Self::feed(part, released, out);
            }
            // The merge's frontier is the correlator's clock: groups ripen and quiet
            // incidents resolve as event time passes, with or without new signals.
            if let Some(t) = part.merge.released_to() {
                let (writes, moved) = part.core.advance(t);
                if moved {
                    self.dirty.insert(*p);
                    out.writes.extend(writes);
                    out.steps.extend(part.core.take_steps());
                }
            }
        }
        self.stats.incidents_created += created(&out.writes);
        // People close incidents through the API: stop collecting into those.
        if self.refreshed.elapsed() >= STATUS_REFRESH {
            self.refreshed = Instant::now();
            let open: Vec<String> = self
                .parts
                .values()
                .flat_map(|p| p.core.open_ids())
                .collect();
            if !open.is_empty() {
                match self.store.incident_statuses(&open).await {
                    Ok(statuses) => {
                        for (p, part) in self.parts.iter_mut() {
                            for id in part.core.open_ids() {
                                if statuses.get(&id).is_some_and(|s| !s.is_open()) {
                                    part.core.mark_closed(&id);
                                    self.dirty.insert(*p);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read incident statuses; will retry")
                    }
                }
            }
        }
    }

    fn finish(&mut self, out: &mut CorrelateOut) {
        for (p, part) in self.parts.iter_mut() {
            let released = part.merge.release_all();
            Self::feed(part, released, out);
            out.writes.extend(part.core.flush());
            out.steps.extend(part.core.take_steps());
            self.dirty.insert(*p);
        }
        self.stats.incidents_created += created(&out.writes);
    }

    fn has_output(out: &CorrelateOut) -> bool {
        !out.writes.is_empty()
            || !out.steps.is_empty()
            || !out.alerts.is_empty()
            || !out.dlq.is_empty()
    }

    async fn write(&self, out: &CorrelateOut) -> Result<(), StageError> {
        if !out.dlq.is_empty() {
            self.output.send(topics::DLQ, out.dlq.clone()).await?;
        }
        if !out.alerts.is_empty() {
            self.store.insert_alerts(&out.alerts).await?;
        }
        if out.writes.is_empty() && out.steps.is_empty() {
            return Ok(());
        }
        if !out.writes.is_empty() {
            self.store.write_incidents(&out.writes).await?;
        }

        let mut changes: Vec<IncidentChange> = out
            .writes
            .iter()
            .flat_map(crate::changes::changes_of)
            .collect();
        // After the writes: a reopening's signal is stored before the status moves.
        for st in &out.steps {
            let Some(mut incident) = self
                .store
                .engine_transition(&st.tenant, &st.incident_id, st.from, st.to, &st.event)
                .await?
            else {
                // People moved it on (investigating, learned...): theirs to close.
                continue;
            };
            // The status and people's fields from the store; the analysis as of the step.
            incident.title = st.seen.title.clone();
            incident.severity = st.seen.severity;
            incident.scope = st.seen.scope.clone();
            incident.root_cause_candidates = st.seen.root_cause_candidates.clone();
            let kind = if st.to == IncidentStatus::Resolved {
                AUTO_RESOLVED.inc();
                ChangeKind::Resolved
            } else {
                REOPENED.inc();
                ChangeKind::Reopened
            };
            changes.push(IncidentChange::new(
                &incident,
                kind,
                &st.event.id,
                st.event.ts,
                "seismo",
                st.event.message.clone(),
            ));
        }
        let records: Vec<OutRecord> = changes
            .into_iter()
            .map(|c| {
                OutRecord::new(
                    Bytes::from(c.incident.id.clone()),
                    Bytes::from(serde_json::to_vec(&c).expect("changes serialise")),
                )
            })
            .collect();
        self.output.send(topics::INCIDENTS, records).await?;
        INCIDENTS.inc_by(created(&out.writes));
        Ok(())
    }

    fn take_dirty(&mut self, partition: u32) -> Dirty {
        if !self.dirty.remove(&partition) {
            return (Vec::new(), Vec::new());
        }
        match self.parts.get(&partition) {
            Some(part) => (
                vec![(
                    b"c".to_vec(),
                    postcard::to_stdvec(part).expect("correlate state encodes"),
                )],
                Vec::new(),
            ),
            None => (Vec::new(), vec![b"c".to_vec()]),
        }
    }

    fn restore(&mut self, partition: u32, entries: Entries) -> Result<(), String> {
        for (key, value) in entries {
            if key != b"c" {
                return Err(format!("unknown checkpoint key {key:?}"));
            }
            let part: Part = postcard::from_bytes(&value).map_err(|e| e.to_string())?;
            self.parts.insert(
                partition,
                Part {
                    merge: part.merge,
                    core: Correlator::restored(self.cfg.clone(), part.core),
                },
            );
        }
        self.dirty.remove(&partition);
        Ok(())
    }

    fn drop_partition(&mut self, partition: u32) {
        self.parts.remove(&partition);
        self.dirty.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seismo_transport::InProcBus;

    fn watermark(source: u32, at_ms: i64) -> Message {
        Message {
            topic: topics::ANOMALIES.into(),
            partition: 0,
            offset: 0,
            key: Bytes::new(),
            payload: Bytes::new(),
            headers: vec![
                (
                    headers::SOURCE_PARTITION.into(),
                    Bytes::from(source.to_string()),
                ),
                (headers::WATERMARK.into(), Bytes::from(at_ms.to_string())),
            ],
            timestamp_ms: None,
        }
    }

    /// A one-partition stage over an in-memory store whose idle period is `idle`.
    async fn stage_idle_after(idle: Duration) -> CorrelateStage {
        let store = seismo_store::SqliteStore::connect("sqlite::memory:")
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let bus = InProcBus::new(1, 1024);
        CorrelateStage::new(
            CorrelateConfig::default(),
            1,
            idle,
            Arc::new(store),
            Arc::new(bus.producer(&[topics::INCIDENTS])),
        )
    }

    #[tokio::test]
    async fn a_forecast_source_silent_for_the_idle_period_is_no_longer_waited_for() {
        let idle = Duration::from_secs(1);
        let mut stage = stage_idle_after(idle).await;
        let forecast = headers::FORECAST_SOURCE_BASE;
        let flowing = Tick {
            idle_for: Duration::ZERO,
            assignment: vec![0],
        };
        let mut out = CorrelateOut::default();
        stage.process(&watermark(forecast, 1_000), &mut out);
        stage.process(&watermark(0, 5_000), &mut out);
        stage.tick(&mut out, &flowing).await;
        let waited = |s: &CorrelateStage| s.parts[&0].merge.forecast_sources().count();
        assert_eq!(waited(&stage), 1, "it spoke: it is waited for");
        assert_eq!(
            stage.parts[&0].merge.released_to(),
            Some(1_000),
            "held at forecast's watermark"
        );
        // Detect goes on; forecast says nothing more.
        tokio::time::sleep(idle + Duration::from_millis(100)).await;
        stage.process(&watermark(0, 6_000), &mut out);
        stage.tick(&mut out, &flowing).await;
        assert_eq!(waited(&stage), 0, "silent for the idle period: forgotten");
        assert_eq!(stage.parts[&0].merge.released_to(), Some(6_000));
        // It speaks again: waited for again.
        stage.process(&watermark(forecast, 6_500), &mut out);
        stage.tick(&mut out, &flowing).await;
        assert_eq!(waited(&stage), 1);
    }

    #[tokio::test]
    async fn a_forecast_source_is_not_forgotten_while_all_input_is_idle() {
        let idle = Duration::from_secs(1);
        let mut stage = stage_idle_after(idle).await;
        let forecast = headers::FORECAST_SOURCE_BASE;
        let mut out = CorrelateOut::default();
        stage.process(&watermark(forecast, 1_000), &mut out);
        stage.process(&watermark(0, 5_000), &mut out);
        let flowing = Tick {
            idle_for: Duration::ZERO,
            assignment: vec![0],
        };
        stage.tick(&mut out, &flowing).await;
        // Nothing at all comes in for longer than the idle period.
        tokio::time::sleep(idle + Duration::from_millis(100)).await;
        let quiet = Tick {
            idle_for: idle + Duration::from_millis(100),
            assignment: vec![0],
        };
        stage.tick(&mut out, &quiet).await;
        let waited = |s: &CorrelateStage| s.parts[&0].merge.forecast_sources().count();
        assert_eq!(
            waited(&stage),
            1,
            "everything was quiet, not forecast alone"
        );
        // Detect resumes: forecast gets its own idle period to speak again.
        stage.process(&watermark(0, 6_000), &mut out);
        stage.tick(&mut out, &flowing).await;
        assert_eq!(waited(&stage), 1, "not forgotten the moment detect resumes");
    }
}
