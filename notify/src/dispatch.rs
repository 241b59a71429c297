//! When to page whom: a pure core from incident changes and the time to due deliveries.
//!
//! Per incident and receiver it keeps what was last sent and what is due. The page follows
//! the incident's status: DETECTED wants a trigger, ACKNOWLEDGED, INVESTIGATING and MITIGATED
//! an acknowledgement, RESOLVED, LEARNED and INCONCLUSIVE a resolution. A first trigger waits
//! `group_wait` (so one fault's burst pages once, with a settled root cause); an escalation
//! re-triggers at most every `group_interval`; acknowledgements and resolutions go at once;
//! an incident resolved before its first page never pages (its resolution is emitted only on
//! condition that the trigger is in the notification log, which covers a trigger sent just
//! before a crash lost the state that counted it); an unacknowledged one is paged
//! again every `repeat_interval`. Delivery ids count each action per incident and receiver,
//! so replaying the same changes yields the same ids and the notification log can tell
//! what was already sent.

use std::collections::BTreeMap;

use seismo_schemas::{ChangeKind, Incident, IncidentChange, IncidentStatus, Severity};
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
    /// Send only if this delivery is in the notification log. An acknowledgement or
    /// resolution of an incident this state never saw paged carries the id of the trigger
    /// that may have gone out just before a crash lost the state that counted it.
    #[serde(default)]
    pub only_if_sent: Option<String>,
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
    /// The due action depends on a trigger this state does not know was sent.
    #[serde(default)]
    conditional: bool,
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
        // Status belongs to people: the engine's changes carry the status correlate knew
        // when it wrote, which is stale once someone moved the incident (and a restarted
        // correlate replays old writes after newer status changes). So only status changes
        // set the status; every change refreshes the rest (title, severity, causes).
        let status = match c.kind {
            ChangeKind::Acknowledged
            | ChangeKind::Resolved
            | ChangeKind::Reopened
            | ChangeKind::StatusChanged => c.incident.status,
            _ => track.incident.status,
        };
        track.incident = c.incident.clone();
        track.incident.status = status;
        track.note = c.message.clone();
        for r in receivers {
            track.per.entry(r.clone()).or_default();
        }
        let wanted = Action::wanted(track.incident.status);
        let severity = track.incident.severity;
        for s in track.per.values_mut() {
            s.conditional = s.last.is_none() && wanted != Action::Trigger;
            s.due = match (s.last, wanted) {
                // Nothing sent yet: the first trigger waits; anything else is moot.
                (None, Action::Trigger) => Some((
                    Action::Trigger,
                    s.due.map_or(track.seen_ms + t.group_wait_ms, |d| d.1),
                )),
                // Nothing sent as far as this state knows; but a crash may have lost the
                // count of a trigger that went out. The log decides (see `only_if_sent`).
                (None, w) => Some((w, now_ms)),
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

    /// The incidents it follows.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.tracks.values().map(|t| &t.incident)
    }

    /// Takes every delivery due by `now_ms` (every pending one when `all`, at the end of
    /// the input), counting it as sent. Finished incidents are forgotten. A trigger that
    /// `muted` holds (a silence, an inhibition) stays due and goes once it no longer is;
    /// acknowledgements and resolutions are never held, they only quieten what was paged.
    /// Returns the deliveries and how many triggers were held.
    pub fn due(
        &mut self,
        now_ms: i64,
        all: bool,
        t: &Timing,
        muted: &dyn Fn(&Incident, &str) -> bool,
    ) -> (Vec<Delivery>, usize) {
        let mut out = Vec::new();
        let mut held = 0;
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
                if action == Action::Trigger && muted(&track.incident, receiver) {
                    held += 1;
                    continue;
                }
                let only_if_sent = s.conditional.then(|| {
                    let n = s.counts.get(&Action::Trigger).copied().unwrap_or(0);
                    format!("{id}:{receiver}:trigger:{n}")
                });
                let n = s.counts.entry(action).or_insert(0);
                out.push(Delivery {
                    id: format!("{id}:{receiver}:{}:{n}", action.as_str()),
                    receiver: receiver.clone(),
                    action,
                    incident: track.incident.clone(),
                    note: track.note.clone(),
                    only_if_sent,
                });
                *n += 1;
                s.last = Some(action);
                s.last_ms = now_ms;
                if action == Action::Trigger {
                    s.severity = Some(track.incident.severity);
                }
                s.due = None;
                s.conditional = false;
            }
        }
        self.tracks.retain(|_, t| {
            let closed = Action::wanted(t.incident.status) == Action::Resolve;
            let settled = t.per.values().all(|s| s.due.is_none());
            !(closed && settled)
        });
        (out, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use seismo_schemas::Labels;

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
        let kind = match status {
            IncidentStatus::Detected => ChangeKind::SignalAdded,
            IncidentStatus::Acknowledged => ChangeKind::Acknowledged,
            IncidentStatus::Resolved => ChangeKind::Resolved,
            _ => ChangeKind::StatusChanged,
        };
        IncidentChange::new(&inc, kind, "e", at, "seismo", "m".into())
    }

    const NONE: fn(&Incident, &str) -> bool = |_, _| false;

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
        assert!(d.due(29_999, false, &T, &NONE).0.is_empty(), "group wait");
        let first = d.due(30_000, false, &T, &NONE).0;
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
        assert!(d.due(300_000, false, &T, &NONE).0.is_empty());
        let esc = d.due(330_000, false, &T, &NONE).0;
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
        assert!(d.due(400_000, false, &T, &NONE).0.is_empty());
        d.on_change(
            &change(Acknowledged, Severity::Critical, 500),
            &rx(),
            500_000,
            &T,
        );
        assert_eq!(
            d.due(500_000, false, &T, &NONE).0[0].action,
            Action::Acknowledge
        );
        d.on_change(
            &change(Resolved, Severity::Critical, 600),
            &rx(),
            600_000,
            &T,
        );
        let r = d.due(600_000, false, &T, &NONE).0;
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
        let (sent, _) = d.due(60_000, true, &T, &NONE);
        assert!(
            sent.iter().all(|d| d.action == Action::Resolve
                && d.only_if_sent.as_deref() == Some(&format!("i1:{}:trigger:0", d.receiver))),
            "only if the log shows a trigger: {sent:?}"
        );
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
        assert_eq!(d.due(30_000, false, &T, &NONE).0.len(), 1);
        assert!(d.due(3_629_999, false, &T, &NONE).0.is_empty());
        let again = d.due(3_630_000, false, &T, &NONE).0;
        assert_eq!(again[0].id, "i1:pd:trigger:1");
        d.on_change(
            &change(IncidentStatus::Resolved, Severity::Warning, 4000),
            &one,
            4_000_000,
            &T,
        );
        assert_eq!(
            d.due(4_000_000, false, &T, &NONE).0[0].action,
            Action::Resolve
        );
        // Reopened (RESOLVED → INVESTIGATING) after it was forgotten: a new track.
        d.on_change(
            &change(IncidentStatus::Investigating, Severity::Warning, 4100),
            &one,
            4_100_000,
            &T,
        );
        // Its wanted action is an acknowledgement, sent only if the log holds a trigger.
        let (sent, _) = d.due(5_000_000, true, &T, &NONE);
        assert_eq!(sent[0].only_if_sent.as_deref(), Some("i1:pd:trigger:0"));
    }

    #[test]
    fn muted_triggers_wait_for_the_mute_to_end_but_resolutions_pass() {
        let mut d = Dispatcher::default();
        let one = vec!["pd".to_string()];
        d.on_change(
            &change(IncidentStatus::Detected, Severity::Warning, 0),
            &one,
            0,
            &T,
        );
        let all: fn(&Incident, &str) -> bool = |_, _| true;
        let (sent, held) = d.due(60_000, false, &T, &all);
        assert!(sent.is_empty());
        assert_eq!(held, 1);
        let (sent, _) = d.due(70_000, false, &T, &NONE);
        assert_eq!(
            sent[0].action,
            Action::Trigger,
            "sent once the silence ends"
        );
        d.on_change(
            &change(IncidentStatus::Resolved, Severity::Warning, 80),
            &one,
            80_000,
            &T,
        );
        let (sent, held) = d.due(80_000, false, &T, &all);
        assert_eq!((sent[0].action, held), (Action::Resolve, 0));
    }

    #[test]
    fn an_engine_change_after_a_resolution_does_not_reopen() {
        // Correlate, restarted, replays an old write (status DETECTED) after people
        // resolved the incident: no new page.
        let mut d = Dispatcher::default();
        let one = vec!["pd".to_string()];
        d.on_change(
            &change(IncidentStatus::Detected, Severity::Warning, 0),
            &one,
            0,
            &T,
        );
        assert_eq!(d.due(30_000, false, &T, &NONE).0.len(), 1);
        d.on_change(
            &change(IncidentStatus::Resolved, Severity::Warning, 40),
            &one,
            40_000,
            &T,
        );
        d.on_change(
            &change(IncidentStatus::Detected, Severity::Warning, 50),
            &one,
            50_000,
            &T,
        );
        let (sent, _) = d.due(90_000, true, &T, &NONE);
        assert_eq!(
            sent.iter().map(|d| d.action).collect::<Vec<_>>(),
            vec![Action::Resolve]
        );
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
            d.due(1, true, &T, &NONE)
                .0
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), vec!["i1:pd:trigger:0", "i1:slack:trigger:0"]);
        assert_eq!(run(), run());
    }
}
