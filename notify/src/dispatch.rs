//! When to page whom: a pure core from incident changes and the time to due deliveries.
//!
//! Per incident and receiver it keeps what was last sent and what is due. The page follows
//! the incident's status: DETECTED wants a trigger, ACKNOWLEDGED, INVESTIGATING and MITIGATED
//! an acknowledgement, RESOLVED, LEARNED and INCONCLUSIVE a resolution. A first trigger waits
//! `group_wait` (so one fault's burst pages once, with a settled root cause); an escalation
//! re-triggers at most every `group_interval`; acknowledgements and resolutions go at once;
//! an incident resolved before its first page never pages; an unacknowledged one is paged
//! again every `repeat_interval`. Delivery ids count each action per incident and receiver,
//! so replaying the same changes yields the same ids and the notification log can tell
//! what was already sent.

use std::collections::BTreeMap;

use seismo_schemas::{Incident, IncidentChange, IncidentStatus, Severity};
use serde::{Deserialize, Serialize};

/// What a page asks of the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Acknowledge,
    Resolve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Acknowledge => "acknowledge",
            Action::Resolve => "resolve",
        }
    }

    /// What an incident in `status` wants its pagers to show.
    pub fn wanted(status: IncidentStatus) -> Action {
        match status {
            IncidentStatus::Detected => Action::Trigger,
            IncidentStatus::Acknowledged
            | IncidentStatus::Investigating
            | IncidentStatus::Mitigated => Action::Acknowledge,
            IncidentStatus::Resolved | IncidentStatus::Learned | IncidentStatus::Inconclusive => {
                Action::Resolve
            }
        }
    }
}

/// Timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    /// 0: never repeat.
    pub repeat_interval_ms: i64,
}

/// One page to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `{incident}:{receiver}:{action}:{n}`.
    pub id: String,
    pub receiver: String,
    pub action: Action,
    /// The incident as it stood when the page became due.
    pub incident: Incident,
    /// The latest change's message, e.g. `severity rose from warning to critical`.
    pub note: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sent {
    last: Option<Action>,
    last_ms: i64,
    /// Severity of the last trigger, to see escalations.
    severity: Option<Severity>,
    /// How many of each action went out: the ordinal of the next delivery id.
    counts: BTreeMap<Action, u32>,
    due: Option<(Action, i64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Track {
    incident: Incident,
    note: String,
    /// When the incident was first seen here (its first page waits from then).
    seen_ms: i64,
    per: BTreeMap<String, Sent>,
}

/// The dispatcher of one input partition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dispatcher {
    tracks: BTreeMap<String, Track>,
}

impl Dispatcher {
    /// Incidents it follows.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Takes in one change; `receivers` are where the incident routes now (a receiver
    /// once paged stays, so it hears of the resolution).
    pub fn on_change(&mut self, c: &IncidentChange, receivers: &[String], now_ms: i64, t: &Timing) {
        let track = self
            .tracks
            .entry(c.incident.id.clone())
            .or_insert_with(|| Track {
                incident: c.incident.clone(),
                note: String::new(),
                seen_ms: now_ms,
                per: BTreeMap::new(),
            });
        // Changes of one incident arrive in order on its partition; an older copy (a
        // replay behind a newer one) must not roll the incident back.
        if c.incident.updated_at >= track.incident.updated_at
            || c.incident.status != track.incident.status
        {
            track.incident = c.incident.clone();
        }
        track.note = c.message.clone();
        for r in receivers {
            track.per.entry(r.clone()).or_default();
        }
        let wanted = Action::wanted(track.incident.status);
        let severity = track.incident.severity;
        for s in track.per.values_mut() {
            s.due = match (s.last, wanted) {
                // Nothing sent yet: the first trigger waits; anything else is moot.
                (None, Action::Trigger) => Some((
                    Action::Trigger,
                    s.due.map_or(track.seen_ms + t.group_wait_ms, |d| d.1),
                )),
                (None, _) => None,
                (Some(Action::Trigger), Action::Trigger) => {
                    if s.severity.is_some_and(|sent| severity > sent) {
                        Some((
                            Action::Trigger,
                            (s.last_ms + t.group_interval_ms).max(now_ms),
                        ))
                    } else {
                        s.due
                    }
                }
                (Some(last), w) if last == w => s.due,
                // A reopened incident pages again at once.
                (Some(Action::Resolve), _) => Some((Action::Trigger, now_ms)),
                (Some(_), w) => Some((w, now_ms)),
            };
        }
    }

    /// Takes every delivery due by `now_ms` (every pending one when `all`, at the end of
    /// the input), counting it as sent. Finished incidents are forgotten.
    pub fn due(&mut self, now_ms: i64, all: bool, t: &Timing) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (id, track) in self.tracks.iter_mut() {
            for (receiver, s) in track.per.iter_mut() {
                if s.due.is_none()
                    && s.last == Some(Action::Trigger)
                    && t.repeat_interval_ms > 0
                    && now_ms - s.last_ms >= t.repeat_interval_ms
                {
                    s.due = Some((Action::Trigger, now_ms));
                }
                let Some((action, at)) = s.due else { continue };
                if at > now_ms && !all {
                    continue;
                }
                let n = s.counts.entry(action).or_insert(0);
                out.push(Delivery {
                    id: format!("{id}:{receiver}:{}:{n}", action.as_str()),
                    receiver: receiver.clone(),
                    action,
                    incident: track.incident.clone(),
                    note: track.note.clone(),
                });
                *n += 1;
                s.last = Some(action);
                s.last_ms = now_ms;
                if action == Action::Trigger {
                    s.severity = Some(track.incident.severity);
                }
                s.due = None;
            }
        }
        self.tracks.retain(|_, t| {
            let closed = Action::wanted(t.incident.status) == Action::Resolve;
            let settled = t.per.values().all(|s| s.due.is_none());
            !(closed && settled)
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use seismo_schemas::{ChangeKind, Labels};

    const T: Timing = Timing {
        group_wait_ms: 30_000,
        group_interval_ms: 300_000,
        repeat_interval_ms: 3_600_000,
    };

    fn change(status: IncidentStatus, severity: Severity, updated_s: i64) -> IncidentChange {
        let at = Utc.timestamp_opt(1_700_000_000 + updated_s, 0).unwrap();
        let inc = Incident {
            id: "i1".into(),
            tenant: "t".into(),
            title: "latency anomalous on db".into(),
            status,
            severity,
            started_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            updated_at: at,
            resolved_at: None,
            scope: Labels::new(),
            root_cause_candidates: vec![],
            anomaly_ids: vec![],
            alert_fingerprints: vec![],
        };
        IncidentChange::new(&inc, ChangeKind::SignalAdded, "e", at, "seismo", "m".into())
    }

    fn rx() -> Vec<String> {
        vec!["pd".into(), "slack".into()]
    }

    fn actions(d: &[Delivery]) -> Vec<(String, Action)> {
        d.iter().map(|d| (d.receiver.clone(), d.action)).collect()
    }

    #[test]
    fn the_first_page_waits_then_escalation_ack_and_resolve_follow() {
        use IncidentStatus::*;
        let mut d = Dispatcher::default();
        d.on_change(&change(Detected, Severity::Warning, 0), &rx(), 0, &T);
        d.on_change(&change(Detected, Severity::Warning, 5), &rx(), 5_000, &T);
        assert!(d.due(29_999, false, &T).is_empty(), "group wait");
        let first = d.due(30_000, false, &T);
        assert_eq!(
            actions(&first),
            vec![
                ("pd".into(), Action::Trigger),
                ("slack".into(), Action::Trigger)
            ]
        );
        assert_eq!(first[0].id, "i1:pd:trigger:0");
        // An escalation waits for the group interval since the last page.
        d.on_change(&change(Detected, Severity::Critical, 60), &rx(), 60_000, &T);
        assert!(d.due(300_000, false, &T).is_empty());
        let esc = d.due(330_000, false, &T);
        assert_eq!(esc.len(), 2);
        assert_eq!(esc[0].id, "i1:pd:trigger:1");
        assert_eq!(esc[0].incident.severity, Severity::Critical);
        // The same severity again pages nothing more.
        d.on_change(
            &change(Detected, Severity::Critical, 400),
            &rx(),
            400_000,
            &T,
        );
        assert!(d.due(400_000, false, &T).is_empty());
        d.on_change(
            &change(Acknowledged, Severity::Critical, 500),
            &rx(),
            500_000,
            &T,
        );
        assert_eq!(d.due(500_000, false, &T)[0].action, Action::Acknowledge);
        d.on_change(
            &change(Resolved, Severity::Critical, 600),
            &rx(),
            600_000,
            &T,
        );
        let r = d.due(600_000, false, &T);
        assert_eq!(
            actions(&r),
            vec![
                ("pd".into(), Action::Resolve),
                ("slack".into(), Action::Resolve)
            ]
        );
        assert!(
            d.is_empty(),
            "a resolved incident with nothing due is forgotten"
        );
    }

    #[test]
    fn resolved_before_the_first_page_never_pages() {
        let mut d = Dispatcher::default();
        d.on_change(
            &change(IncidentStatus::Detected, Severity::Critical, 0),
            &rx(),
            0,
            &T,
        );
        d.on_change(
            &change(IncidentStatus::Resolved, Severity::Critical, 10),
            &rx(),
            10_000,
            &T,
        );
        assert!(d.due(60_000, true, &T).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn unacknowledged_incidents_repeat_and_reopened_ones_page_again() {
        let mut d = Dispatcher::default();
        let one = vec!["pd".to_string()];
        d.on_change(
            &change(IncidentStatus::Detected, Severity::Warning, 0),
            &one,
            0,
            &T,
        );
        assert_eq!(d.due(30_000, false, &T).len(), 1);
        assert!(d.due(3_629_999, false, &T).is_empty());
        let again = d.due(3_630_000, false, &T);
        assert_eq!(again[0].id, "i1:pd:trigger:1");
        d.on_change(
            &change(IncidentStatus::Resolved, Severity::Warning, 4000),
            &one,
            4_000_000,
            &T,
        );
        assert_eq!(d.due(4_000_000, false, &T)[0].action, Action::Resolve);
        // Reopened (RESOLVED → INVESTIGATING) after it was forgotten: a new track, whose
        // wanted action is an acknowledgement of something never paged: nothing to say.
        d.on_change(
            &change(IncidentStatus::Investigating, Severity::Warning, 4100),
            &one,
            4_100_000,
            &T,
        );
        assert!(d.due(5_000_000, true, &T).is_empty());
    }

    #[test]
    fn the_end_of_input_sends_what_waits_and_replays_give_the_same_ids() {
        let run = || {
            let mut d = Dispatcher::default();
            d.on_change(
                &change(IncidentStatus::Detected, Severity::Warning, 0),
                &rx(),
                0,
                &T,
            );
            d.due(1, true, &T)
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), vec!["i1:pd:trigger:0", "i1:slack:trigger:0"]);
        assert_eq!(run(), run());
    }
}
