//! What an incident write amounts to for consumers of `seismo.incidents`: one canonical change per kind of event.

use seismo_schemas::{ChangeKind, IncidentChange, IncidentEventKind};
use seismo_store::IncidentWrite;

/// The changes one write announces, in timeline order: opened, escalated, one "signal
/// added" for all anomalies that joined (a change per anomaly would page-spam), one per
/// firing alert, one per resolved alert. Ids come from the timeline events, so a replayed
/// write announces the same ids again and consumers can drop the repeats.
pub fn changes_of(w: &IncidentWrite) -> Vec<IncidentChange> {
    let inc = &w.incident;
    let mut out = Vec::new();
    let opened = w
        .events
        .iter()
        .any(|e| e.kind == IncidentEventKind::Created);
    let attached: Vec<_> = w
        .events
        .iter()
        .filter(|e| e.kind == IncidentEventKind::AnomalyAttached)
        .collect();
    for e in &w.events {
        let kind = match e.kind {
            IncidentEventKind::Created => ChangeKind::Opened,
            IncidentEventKind::Escalated => ChangeKind::Escalated,
            IncidentEventKind::AlertFiring if !opened => ChangeKind::SignalAdded,
            IncidentEventKind::AlertResolved => ChangeKind::AlertResolved,
            _ => continue,
        };
        out.push(IncidentChange::new(
            inc,
            kind,
            &e.id,
            e.ts,
            &e.actor,
            e.message.clone(),
        ));
    }
    if !opened && let Some(last) = attached.last() {
        out.push(IncidentChange::new(
            inc,
            ChangeKind::SignalAdded,
            &last.id,
            last.ts,
            "seismo",
            format!(
                "{} anomal{} joined",
                attached.len(),
                if attached.len() == 1 { "y" } else { "ies" }
            ),
        ));
    }
    out.sort_by_key(|c| c.at);
    out
}
