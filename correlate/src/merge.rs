//! The event-time merge in front of the correlator: anomalies from every detect partition
//! and alerts, taken in one deterministic order whatever order the bus delivers them in.
//!
//! Each detect partition (a source) sends its anomalies in its own deterministic order,
//! each with a merge time that never decreases, and from time to time a watermark: it will
//! send nothing with a merge time before it. The merger holds signals until every source's
//! watermark has passed them, then releases them sorted by (merge time, kind, id). So the
//! correlator sees the same sequence in an uninterrupted run, after a crash and replay, and
//! with any number of detect processes, and its incidents come out the same. Replayed
//! anomalies (a detect process that restarted from its checkpoint) carry sequence numbers
//! the merger has already taken, and are dropped. The forecast stage's partitions are
//! sources too (numbered from `FORECAST_SOURCE_BASE`), waited for once they have spoken:
//! its predictions then take their place in the same order, however far forecast lags.

use std::collections::BTreeMap;

use seismo_schemas::topics::headers::FORECAST_SOURCE_BASE;
use serde::{Deserialize, Serialize};

use crate::Signal;

/// Position of an anomaly in its source's output: (input offset, index).
pub type Seq = (i64, u32);

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct SourceState {
    watermark: Option<i64>,
    last_seq: Option<Seq>,
}

/// The merge buffer of one correlate partition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Merger {
    /// How many source partitions feed this merger (partitions of `seismo.points`).
    sources: u32,
    state: BTreeMap<u32, SourceState>,
    /// Held signals by (merge time, kind: 0 alert / 1 anomaly, id).
    buffer: BTreeMap<(i64, u8, String), Signal>,
    /// Everything before this merge time has been released.
    released_to: i64,
}

impl Merger {
    pub fn new(sources: u32) -> Self {
        Merger {
            sources: sources.max(1),
            released_to: i64::MIN,
            ..Merger::default()
        }
    }

    /// Signals held.
    pub fn held(&self) -> usize {
        self.buffer.len()
    }

    /// The merge time before which everything has been released: the clock of what
    /// follows the merge. `None` before anything was released.
    pub fn released_to(&self) -> Option<i64> {
        (self.released_to > i64::MIN).then_some(self.released_to)
    }

    /// A source's watermark.
    pub fn watermark(&mut self, source: u32, at_ms: i64) {
        let s = self.state.entry(source).or_default();
        s.watermark = Some(s.watermark.map_or(at_ms, |w| w.max(at_ms)));
    }

    /// Forecast sources (numbered from `FORECAST_SOURCE_BASE`) waited for now.
    pub fn forecast_sources(&self) -> impl Iterator<Item = u32> + '_ {
        self.state
            .iter()
            .filter(|(id, s)| **id >= FORECAST_SOURCE_BASE && s.watermark.is_some())
            .map(|(id, _)| *id)
    }

    /// Stops waiting for a forecast source until it speaks again: it has gone silent (its
    /// process stopped, or forecasting was switched off), and must not hold the merge
    /// back for good. Its replays are still recognised.
    pub fn forget(&mut self, source: u32) {
        if source >= FORECAST_SOURCE_BASE
            && let Some(s) = self.state.get_mut(&source)
        {
            s.watermark = None;
        }
    }

    /// Takes an anomaly in. `from` is its source and sequence when it came from a detect
    /// partition (records written straight to the topic have none). Returns false for a
    /// replay of an anomaly already taken.
    pub fn anomaly(
        &mut self,
        from: Option<(u32, Seq)>,
        merge_at_ms: i64,
        a: seismo_schemas::Anomaly,
    ) -> bool {
        if let Some((source, seq)) = from {
            let s = self.state.entry(source).or_default();
            if s.last_seq.is_some_and(|last| seq <= last) {
                return false;
            }
            s.last_seq = Some(seq);
        }
        let at = merge_at_ms.max(self.released_to);
        self.buffer
            .insert((at, 1, a.id.clone()), Signal::Anomaly(a));
        true
    }

    /// Takes an alert in at its event time (or at the release frontier, if it is late).
    pub fn alert(&mut self, a: seismo_schemas::Alert, at_ms: i64) {
        let at = at_ms.max(self.released_to);
        let id = format!(
            "{}/{:?}/{}",
            a.fingerprint,
            a.status,
            a.starts_at.timestamp_millis()
        );
        self.buffer.insert((at, 0, id), Signal::Alert(a));
    }

    /// The merge time before which every source has promised nothing more, once every
    /// detect source has spoken (a forecast source counts from its first watermark on).
    fn frontier(&self) -> Option<i64> {
        if (self
            .state
            .iter()
            .filter(|(id, s)| **id < FORECAST_SOURCE_BASE && s.watermark.is_some())
            .count() as u32)
            < self.sources
        {
            return None;
        }
        self.state.values().filter_map(|s| s.watermark).min()
    }

    /// Releases, in order, the signals every source's watermark has passed, each with its
    /// merge time.
    pub fn release(&mut self) -> Vec<(i64, Signal)> {
        match self.frontier() {
            Some(f) => self.release_before(f),
            None => Vec::new(),
        }
    }

    /// Releases everything held: at the end of the input, after an idle timeout, or when
    /// the buffer outgrows its bound.
    pub fn release_all(&mut self) -> Vec<(i64, Signal)> {
        self.release_before(i64::MAX)
    }

    /// Releases the oldest signals beyond `max_held`, so a stalled source cannot make the
    /// buffer grow without bound.
    pub fn release_excess(&mut self, max_held: usize) -> Vec<(i64, Signal)> {
        let excess = self.buffer.len().saturating_sub(max_held);
        if excess == 0 {
            return Vec::new();
        }
        let cut = self.buffer.keys().nth(excess).map_or(i64::MAX, |k| k.0);
        self.release_before(cut)
    }

    fn release_before(&mut self, frontier: i64) -> Vec<(i64, Signal)> {
        let keep = self.buffer.split_off(&(frontier, 0, String::new()));
        let out = std::mem::replace(&mut self.buffer, keep);
        if let Some(((last, _, _), _)) = out.last_key_value() {
            self.released_to = self.released_to.max(*last);
        }
        if frontier < i64::MAX {
            self.released_to = self.released_to.max(frontier);
        }
        out.into_iter().map(|((at, _, _), s)| (at, s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use seismo_schemas::{Anomaly, AnomalyKind, Explanation, Severity};

    fn anomaly(id: &str, minute: i64) -> Anomaly {
        Anomaly {
            id: id.into(),
            tenant: "t".into(),
            series_id: 1,
            name: "m".into(),
            labels: Default::default(),
            ts: Utc.timestamp_opt(minute * 60, 0).unwrap(),
            observed: 1.0,
            expected: 0.0,
            lower: 0.0,
            upper: 0.5,
            score: 0.9,
            severity: Severity::Warning,
            kind: AnomalyKind::Point,
            detector: "d".into(),
            explanation: Explanation::default(),
        }
    }

    fn ids(v: &[(i64, Signal)]) -> Vec<String> {
        v.iter()
            .map(|(_, s)| match s {
                Signal::Anomaly(a) => a.id.clone(),
                Signal::Alert(a) => a.fingerprint.clone(),
            })
            .collect()
    }

    #[test]
    fn any_interleaving_of_the_sources_gives_one_order_and_replays_are_dropped() {
        // Source 0 and source 1 each send anomalies in their own order, then watermarks.
        let s0 = [(0, "a", 1), (1, "c", 3), (2, "e", 5)];
        let s1 = [(0, "b", 2), (1, "d", 4)];
        let run = |interleave: &[(u32, usize)]| {
            let mut m = Merger::new(2);
            let mut out = Vec::new();
            for &(src, i) in interleave {
                let (off, id, minute) = if src == 0 { s0[i] } else { s1[i] };
                let a = anomaly(id, minute);
                m.anomaly(Some((src, (off, 0))), minute * 60_000, a);
                m.watermark(src, minute * 60_000);
                out.extend(m.release());
            }
            m.watermark(0, i64::MAX);
            m.watermark(1, i64::MAX);
            out.extend(m.release());
            ids(&out)
        };
        let a = run(&[(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
        let b = run(&[(1, 0), (0, 0), (1, 1), (0, 1), (0, 2)]);
        assert_eq!(a, ["a", "b", "c", "d", "e"]);
        assert_eq!(a, b);
        let mut m = Merger::new(1);
        assert!(m.anomaly(Some((0, (5, 0))), 0, anomaly("x", 0)));
        assert!(
            !m.anomaly(Some((0, (5, 0))), 0, anomaly("x", 0)),
            "a replay"
        );
        assert!(
            !m.anomaly(Some((0, (4, 3))), 0, anomaly("w", 0)),
            "older than taken"
        );
        // Until every source has spoken, nothing is released.
        let mut m = Merger::new(2);
        m.anomaly(Some((0, (0, 0))), 0, anomaly("x", 0));
        m.watermark(0, 10);
        assert!(m.release().is_empty());
        m.watermark(1, 10);
        assert_eq!(ids(&m.release()), ["x"]);
        // A forecast source is not waited for until it speaks; then it is.
        let mut m = Merger::new(1);
        m.anomaly(Some((0, (0, 0))), 10, anomaly("x", 0));
        m.watermark(0, 20);
        assert_eq!(ids(&m.release()), ["x"], "no forecast source has spoken");
        m.watermark(FORECAST_SOURCE_BASE, 30);
        m.anomaly(Some((0, (1, 0))), 40, anomaly("y", 0));
        m.watermark(0, 50);
        assert!(m.release().is_empty(), "held for the forecast source");
        m.anomaly(Some((FORECAST_SOURCE_BASE, (0, 0))), 35, anomaly("p", 0));
        m.watermark(FORECAST_SOURCE_BASE, 60);
        assert_eq!(ids(&m.release()), ["p", "y"]);
        // A forecast source never stands in for a detect source that has not spoken.
        let mut m = Merger::new(2);
        m.anomaly(Some((0, (0, 0))), 0, anomaly("x", 0));
        m.watermark(0, 10);
        m.watermark(FORECAST_SOURCE_BASE, 10);
        assert!(m.release().is_empty(), "detect source 1 is still to speak");
        m.watermark(1, 10);
        assert_eq!(ids(&m.release()), ["x"]);
        // A forecast source forgotten is not waited for until it speaks again; a detect
        // source cannot be forgotten.
        m.anomaly(Some((0, (1, 0))), 20, anomaly("y", 0));
        m.watermark(0, 30);
        m.watermark(1, 30);
        assert!(m.release().is_empty(), "held for the forecast source");
        assert_eq!(
            m.forecast_sources().collect::<Vec<_>>(),
            [FORECAST_SOURCE_BASE]
        );
        m.forget(FORECAST_SOURCE_BASE);
        m.forget(1);
        assert_eq!(ids(&m.release()), ["y"]);
        m.watermark(FORECAST_SOURCE_BASE, 35);
        m.anomaly(Some((0, (2, 0))), 40, anomaly("z", 0));
        m.watermark(0, 50);
        m.watermark(1, 50);
        assert!(m.release().is_empty(), "it spoke again");
        // A bound on what is held.
        let mut m = Merger::new(1);
        for i in 0..10 {
            m.anomaly(None, i, anomaly(&i.to_string(), 0));
        }
        assert_eq!(m.release_excess(4).len(), 6);
        assert_eq!(m.held(), 4);
    }
}
