//! The deterministic explanation, made from the facts pack alone: used when no model is configured, the budget is spent or the model fails.

use crate::answer::{Answer, Hypothesis, PostmortemAnswer, UNKNOWN_CAUSE};
use crate::facts::{FactKind, FactsPack};

fn service_of(target: &str) -> &str {
    target.split_once('=').map(|(_, v)| v).unwrap_or(target)
}

/// The explain answer a template gives.
pub fn answer(pack: &FactsPack) -> Answer {
    let anomalies: Vec<_> = pack
        .facts
        .iter()
        .filter(|f| f.kind == FactKind::Anomaly)
        .collect();
    let mut services: Vec<&str> = anomalies
        .iter()
        .filter_map(|f| f.service.as_deref())
        .collect();
    services.sort();
    services.dedup();
    let runbooks: Vec<String> = pack
        .facts
        .iter()
        .filter(|f| f.kind == FactKind::Runbook)
        .map(|f| f.id.clone())
        .take(3)
        .collect();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut summary = format!(
        "{} and {} since {}",
        plural(pack.strength.anomalies, "anomaly", "anomalies"),
        plural(pack.strength.alerts, "firing alert", "firing alerts"),
        pack.started_at
    );
    if !services.is_empty() {
        summary.push_str(&format!(" on {}", services.join(", ")));
    }
    summary.push('.');
    if pack.strength.weak {
        summary.push_str(&format!(
            " Inconclusive: the evidence is too thin to name a cause ({}).",
            pack.strength.reason
        ));
    } else if let Some(top) = pack.candidates.first() {
        summary.push_str(&format!(
            " The most likely origin is {}, the top-ranked root-cause candidate.",
            service_of(top)
        ));
    }
    let mut hypotheses = Vec::new();
    if !pack.strength.weak {
        let scores: Vec<f64> = pack
            .facts
            .iter()
            .filter(|f| f.kind == FactKind::Candidate)
            .map(|f| candidate_score(&f.text))
            .collect();
        let total: f64 = scores.iter().sum::<f64>().max(1e-9);
        for (i, target) in pack.candidates.iter().enumerate().take(2) {
            let service = service_of(target);
            let mut evidence = vec![format!("rc-{}", i + 1)];
            evidence.extend(
                anomalies
                    .iter()
                    .filter(|f| f.service.as_deref() == Some(service))
                    .map(|f| f.id.clone())
                    .take(2),
            );
            hypotheses.push(Hypothesis {
                text: format!(
                    "{service} is where the change started (rank {} of the candidates).",
                    i + 1
                ),
                cause: target.clone(),
                evidence_ids: evidence,
                confidence: (scores.get(i).copied().unwrap_or(0.0) / total).clamp(0.0, 1.0),
            });
        }
    }
    let mut next_checks = Vec::new();
    match (pack.strength.weak, pack.candidates.first()) {
        (false, Some(top)) => {
            let s = service_of(top);
            next_checks.push(format!("Check recent deploys and config changes of {s}."));
            next_checks.push(match runbooks.first() {
                Some(r) => format!("Follow runbook {r}."),
                None => format!("Read the logs and saturation of {s} around the start."),
            });
        }
        _ => {
            next_checks.push("Watch whether more signals join this incident.".to_string());
            if let Some(r) = runbooks.first() {
                next_checks.push(format!("Follow runbook {r}."));
            }
        }
    }
    Answer {
        summary,
        inconclusive: pack.strength.weak,
        hypotheses,
        next_checks,
        runbook_refs: runbooks,
    }
}

/// The score a candidate fact shows (`score 0.71`).
fn candidate_score(text: &str) -> f64 {
    text.split("score ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The post-mortem a template gives.
pub fn postmortem(pack: &FactsPack, explained: &Answer) -> PostmortemAnswer {
    let cause = match explained
        .hypotheses
        .iter()
        .find(|h| h.cause != UNKNOWN_CAUSE)
    {
        Some(h) if !explained.inconclusive => format!(
            "Most likely {}, the top-ranked root-cause candidate; not confirmed by a person.",
            service_of(&h.cause)
        ),
        _ => "Not established: the evidence was inconclusive.".to_string(),
    };
    PostmortemAnswer {
        impact: format!(
            "{} anomalies and {} firing alerts, severity {}, from {}.",
            pack.strength.anomalies, pack.strength.alerts, pack.severity, pack.started_at
        ),
        cause,
        went_well: vec!["The incident was detected and grouped automatically.".into()],
        actions: vec![
            "Confirm the cause and record it on the incident.".into(),
            "Add or update a runbook for this failure.".into(),
        ],
    }
}
