//! `Incident`, its lifecycle state machine and its timeline events.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Labels, Severity};

/// Lifecycle of an incident, as in the SRE copilot:
/// DETECTED → ACKNOWLEDGED → INVESTIGATING → MITIGATED → RESOLVED → LEARNED,
/// with INCONCLUSIVE as a terminal alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IncidentStatus {
    Detected,
    Acknowledged,
    Investigating,
    Mitigated,
    Resolved,
    Learned,
    Inconclusive,
}

/// A refused status change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an incident cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: IncidentStatus,
    pub to: IncidentStatus,
}

impl IncidentStatus {
    pub const ALL: [IncidentStatus; 7] = [
        IncidentStatus::Detected,
        IncidentStatus::Acknowledged,
        IncidentStatus::Investigating,
        IncidentStatus::Mitigated,
        IncidentStatus::Resolved,
        IncidentStatus::Learned,
        IncidentStatus::Inconclusive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Detected => "DETECTED",
            IncidentStatus::Acknowledged => "ACKNOWLEDGED",
            IncidentStatus::Investigating => "INVESTIGATING",
            IncidentStatus::Mitigated => "MITIGATED",
            IncidentStatus::Resolved => "RESOLVED",
            IncidentStatus::Learned => "LEARNED",
            IncidentStatus::Inconclusive => "INCONCLUSIVE",
        }
    }

    pub fn parse(s: &str) -> Option<IncidentStatus> {
        IncidentStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the incident still collects new anomalies and alerts.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            IncidentStatus::Detected
                | IncidentStatus::Acknowledged
                | IncidentStatus::Investigating
                | IncidentStatus::Mitigated
        )
    }

    /// The legal next states. Steps may be skipped forwards (an SRE can resolve an incident
    /// straight from ACKNOWLEDGED), a mitigation that did not hold goes back to
    /// INVESTIGATING, and nothing leaves LEARNED or INCONCLUSIVE.
    pub fn next_states(self) -> &'static [IncidentStatus] {
        use IncidentStatus::*;
        match self {
            Detected => &[
                Acknowledged,
                Investigating,
                Mitigated,
                Resolved,
                Inconclusive,
            ],
            Acknowledged => &[Investigating, Mitigated, Resolved, Inconclusive],
            Investigating => &[Mitigated, Resolved, Inconclusive],
            Mitigated => &[Investigating, Resolved, Inconclusive],
            Resolved => &[Learned, Investigating],
            Learned | Inconclusive => &[],
        }
    }

    /// Checks a status change against the state machine.
    pub fn transition(self, to: IncidentStatus) -> Result<IncidentStatus, TransitionError> {
        if self.next_states().contains(&to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl std::fmt::Display for IncidentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ranked guess at what caused an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RootCauseCandidate {
    /// What is suspected, e.g. `service=db`.
    pub target: String,
    /// 0..1; candidates are sorted by it, highest first.
    pub score: f64,
    /// The facts behind the guess, one per line.
    pub evidence: Vec<String>,
}

/// A group of related anomalies and alerts, told as one story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Incident {
    /// Deterministic: derived from the scope and the record that opened the incident.
    pub id: String,
    pub tenant: String,
    pub title: String,
    pub status: IncidentStatus,
    pub severity: Severity,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Labels shared by the incident's members, e.g. the services involved.
    pub scope: Labels,
    pub root_cause_candidates: Vec<RootCauseCandidate>,
    pub anomaly_ids: Vec<String>,
    pub alert_fingerprints: Vec<String>,
}

/// What happened on an incident's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentEventKind {
    Created,
    AnomalyAttached,
    AlertFiring,
    AlertResolved,
    StatusChanged,
    Note,
    /// The incident's severity rose.
    Escalated,
}

impl IncidentEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentEventKind::Created => "created",
            IncidentEventKind::AnomalyAttached => "anomaly_attached",
            IncidentEventKind::AlertFiring => "alert_firing",
            IncidentEventKind::AlertResolved => "alert_resolved",
            IncidentEventKind::StatusChanged => "status_changed",
            IncidentEventKind::Note => "note",
            IncidentEventKind::Escalated => "escalated",
        }
    }

    pub fn parse(s: &str) -> Option<IncidentEventKind> {
        use IncidentEventKind::*;
        [
            Created,
            AnomalyAttached,
            AlertFiring,
            AlertResolved,
            StatusChanged,
            Note,
            Escalated,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentEvent {
    /// Deterministic for machine events (replays write nothing twice).
    pub id: String,
    pub incident_id: String,
    pub ts: DateTime<Utc>,
    pub kind: IncidentEventKind,
    /// Who did it: `seismo` for the engine, the user otherwise.
    pub actor: String,
    pub message: String,
    #[serde(default)]
    pub from_status: Option<IncidentStatus>,
    #[serde(default)]
    pub to_status: Option<IncidentStatus>,
}

/// What happened to an incident, as `seismo.incidents` carries it (keyed by incident id)
/// for notifiers and other consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The incident opened.
    Opened,
    /// Its severity rose.
    Escalated,
    /// Anomalies or a firing alert joined it.
    SignalAdded,
    /// One of its alerts resolved.
    AlertResolved,
    /// Someone acknowledged it.
    Acknowledged,
    /// It was resolved (by a person or because its signals cleared).
    Resolved,
    /// A resolved incident went back to investigating.
    Reopened,
    /// Any other status change (investigating, mitigated, learned, inconclusive).
    StatusChanged,
}

impl ChangeKind {
    /// The change a status step amounts to.
    pub fn of_transition(from: IncidentStatus, to: IncidentStatus) -> ChangeKind {
        match (from, to) {
            (_, IncidentStatus::Acknowledged) => ChangeKind::Acknowledged,
            (_, IncidentStatus::Resolved) => ChangeKind::Resolved,
            (IncidentStatus::Resolved, _) => ChangeKind::Reopened,
            _ => ChangeKind::StatusChanged,
        }
    }
}

/// One change of one incident: what changed and the incident as it stands after it, so a
/// consumer (a pager) needs nothing else to act. The id is deterministic, so a consumer
/// that sees a change twice (a replay) can tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentChange {
    /// Unique per change: the incident id and the timeline event behind it.
    pub id: String,
    pub kind: ChangeKind,
    /// When it happened (event time for the engine's changes, wall time for people's).
    pub at: DateTime<Utc>,
    /// `seismo` for the engine, the user otherwise.
    pub actor: String,
    /// What the change says, e.g. `3 anomalies joined` or `DETECTED → ACKNOWLEDGED`.
    pub message: String,
    /// The incident after the change; its member id lists are left empty (they can be
    /// long, and the API has them).
    pub incident: Incident,
}

impl IncidentChange {
    /// A change of `incident`, carrying it without its member lists.
    pub fn new(
        incident: &Incident,
        kind: ChangeKind,
        event_id: &str,
        at: DateTime<Utc>,
        actor: &str,
        message: String,
    ) -> IncidentChange {
        let mut incident = incident.clone();
        incident.anomaly_ids = Vec::new();
        incident.alert_fingerprints = Vec::new();
        IncidentChange {
            id: event_id.to_string(),
            kind,
            at,
            actor: actor.to_string(),
            message,
            incident,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IncidentStatus::*;

    #[test]
    fn lifecycle_allows_the_copilot_path() {
        let mut s = Detected;
        for to in [Acknowledged, Investigating, Mitigated, Resolved, Learned] {
            s = s.transition(to).unwrap();
        }
        assert_eq!(s, Learned);
    }

    #[test]
    fn illegal_transitions_are_refused() {
        assert!(Learned.transition(Detected).is_err());
        assert!(Inconclusive.transition(Resolved).is_err());
        assert!(Acknowledged.transition(Detected).is_err());
        assert!(Detected.transition(Learned).is_err());
        assert!(Resolved.transition(Resolved).is_err());
        let e = Learned.transition(Investigating).unwrap_err();
        assert_eq!(
            e.to_string(),
            "an incident cannot go from LEARNED to INVESTIGATING"
        );
    }

    #[test]
    fn open_states_are_the_pre_resolution_ones() {
        let open: Vec<_> = super::IncidentStatus::ALL
            .into_iter()
            .filter(|s| s.is_open())
            .collect();
        assert_eq!(open, vec![Detected, Acknowledged, Investigating, Mitigated]);
    }
}
