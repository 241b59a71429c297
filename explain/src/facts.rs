//! The facts pack: everything known about an incident, as numbered evidence lines, redacted, deterministic and hashed.

use std::collections::{BTreeMap, BTreeSet};

use seismo_schemas::{Anomaly, Incident, IncidentEvent, IncidentEventKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ExplainConfig;
use crate::redact::{Pseudonyms, Redactor};
use crate::runbooks::Runbook;

/// What a fact is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactKind {
    Anomaly,
    Candidate,
    Event,
    Alert,
    /// A deploy, config change or annotation.
    Change,
    Service,
    Runbook,
}

/// One piece of evidence: a stable id (the same fact always has the same id) and one
/// line of text, already redacted and pseudonymised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub id: String,
    pub kind: FactKind,
    pub text: String,
    /// The service it concerns, if any (pseudonymised like the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// How strong the evidence is, from the facts alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strength {
    pub anomalies: usize,
    pub alerts: usize,
    pub candidates: usize,
    /// Below `explain.min_signals` signals, or no candidate: the explanation says
    /// inconclusive whatever a model answers.
    pub weak: bool,
    pub reason: String,
}

/// The facts pack of one incident revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactsPack {
    pub tenant: String,
    pub incident_id: String,
    pub title: String,
    pub status: String,
    pub severity: String,
    pub started_at: String,
    pub facts: Vec<Fact>,
    pub strength: Strength,
    /// Root-cause candidates as `service=x` targets, best first (pseudonymised).
    pub candidates: Vec<String>,
    /// Every name and number a statement may mention: the grounding vocabulary.
    pub names: BTreeSet<String>,
    pub numbers: Vec<f64>,
    /// Services of the dependency graph that are not in the pack: naming one is an
    /// unsupported statement.
    pub other_services: BTreeSet<String>,
    #[serde(skip)]
    pub pseudonyms: Pseudonyms,
}

/// The text of untrusted input as data: cut to `max` characters and quoted as a JSON
/// string, so an instruction inside it reads as a quotation, never as part of the prompt.
pub fn quote(s: &str, max: usize) -> String {
    let mut cut: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        cut.push('…');
    }
    serde_json::to_string(&cut).expect("strings serialise")
}

/// A number as the pack shows it: 4 significant digits, no exponent for ordinary sizes.
pub fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-4..=9).contains(&mag) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - mag).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The labels of an anomaly, in a fixed order, `name="value"`.
fn label_text(labels: &BTreeMap<String, String>, max: usize) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v, max)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a label value reads as one identifier (a host, a service), not as prose: only
/// such values join the grounding vocabulary, so words inside an untrusted text cannot
/// make a statement look supported.
fn identifier(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 80
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

/// Everything the pack is built from.
pub struct Inputs<'a> {
    pub incident: &'a Incident,
    pub anomalies: &'a [Anomaly],
    pub events: &'a [IncidentEvent],
    /// service → services it calls.
    pub dependencies: &'a BTreeMap<String, Vec<String>>,
    pub service_label: &'a str,
    pub runbooks: &'a [&'a Runbook],
}

impl FactsPack {
    pub fn build(inp: &Inputs<'_>, cfg: &ExplainConfig, redactor: &Redactor) -> FactsPack {
        let inc = inp.incident;
        let max = cfg.max_text_chars;
        // Pseudonyms first, over every value of the chosen labels the pack will show.
        let mut hidden: Vec<(&str, &str)> = Vec::new();
        for l in &cfg.pseudonymise_labels {
            for a in inp.anomalies {
                if let Some(v) = a.labels.get(l) {
                    hidden.push((l, v));
                }
            }
            if let Some(v) = inc.scope.get(l) {
                hidden.push((l, v));
            }
        }
        let pseudonyms = Pseudonyms::new(hidden);
        let clean = |s: &str| pseudonyms.hide(&redactor.redact(s));

        let mut facts = Vec::new();
        let mut names = BTreeSet::new();
        let mut numbers = Vec::new();
        let mut services = BTreeSet::new();
        let note_value = |names: &mut BTreeSet<String>, v: &str| {
            let v = clean(v);
            if identifier(&v) {
                names.insert(v);
            }
        };

        // Anomalies, strongest first; ties by time and id so the order never varies.
        let mut anomalies: Vec<&Anomaly> = inp.anomalies.iter().collect();
        anomalies.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.ts.cmp(&b.ts))
                .then(a.id.cmp(&b.id))
        });
        for a in anomalies.iter().take(cfg.max_anomalies) {
            let service = a.labels.get(inp.service_label).map(|s| clean(s));
            if let Some(s) = &service {
                services.insert(s.clone());
            }
            // The two detectors that scored highest say why; the rest cost tokens.
            let mut parts: Vec<_> = a.explanation.detectors.iter().collect();
            parts.sort_by(|x, y| {
                y.score
                    .total_cmp(&x.score)
                    .then(x.detector.cmp(&y.detector))
            });
            let detectors = parts
                .iter()
                .take(2)
                .map(|d| format!("{} {}", d.detector, num(d.score)))
                .collect::<Vec<_>>()
                .join(", ");
            let features = a
                .explanation
                .features
                .iter()
                .take(3)
                .map(|f| format!("{} {}", f.feature, num(f.weight)))
                .collect::<Vec<_>>()
                .join(", ");
            let text = clean(&format!(
                "{} {} {{{}}} at {}: observed {}, expected {} (band {} to {}), score {}, z {}, {} {}; detectors: {}{}",
                a.severity.as_str(),
                a.kind.as_str(),
                label_text(&a.labels, max),
                a.ts.format("%Y-%m-%d %H:%M UTC"),
                num(a.observed),
                num(a.expected),
                num(a.lower),
                num(a.upper),
                num(a.score),
                num(a.explanation.z_score),
                "metric",
                quote(&a.name, max),
                detectors,
                if features.is_empty() {
                    String::new()
                } else {
                    format!("; features: {features}")
                }
            ));
            note_value(&mut names, &a.name);
            for v in a.labels.values() {
                note_value(&mut names, v);
            }
            for d in &a.explanation.detectors {
                names.insert(d.detector.clone());
                numbers.push(d.score);
            }
            for f in &a.explanation.features {
                note_value(&mut names, &f.feature);
            }
            numbers.extend([
                a.observed,
                a.expected,
                a.lower,
                a.upper,
                a.score,
                a.explanation.z_score,
            ]);
            // A change is often told as a ratio or a difference.
            if a.expected.abs() > 1e-12 {
                numbers.push(a.observed / a.expected);
            }
            numbers.push(a.observed - a.expected);
            facts.push(Fact {
                id: format!("an-{}", &a.id[..a.id.len().min(8)]),
                kind: FactKind::Anomaly,
                text,
                service,
            });
        }

        let mut candidates = Vec::new();
        for (i, c) in inc.root_cause_candidates.iter().take(3).enumerate() {
            let target = clean(&c.target);
            let service = target.split_once('=').map(|(_, v)| v.to_string());
            if let Some(s) = &service {
                services.insert(s.clone());
                note_value(&mut names, s);
            }
            note_value(&mut names, &target);
            numbers.push(c.score);
            let evidence = c
                .evidence
                .iter()
                .take(3)
                .map(|e| clean(&e.chars().take(max).collect::<String>()))
                .collect::<Vec<_>>()
                .join("; ");
            facts.push(Fact {
                id: format!("rc-{}", i + 1),
                kind: FactKind::Candidate,
                text: format!(
                    "root-cause candidate {} (rank {}, score {}): {}",
                    target,
                    i + 1,
                    num(c.score),
                    evidence
                ),
                service,
            });
            candidates.push(target);
        }

        // Timeline, newest first within the cap, shown oldest first. Anomalies joining are
        // left out: the anomalies above say more, and an incident collects hundreds.
        let mut events: Vec<&IncidentEvent> = inp
            .events
            .iter()
            .filter(|e| e.kind != IncidentEventKind::AnomalyAttached)
            .collect();
        events.sort_by(|a, b| a.ts.cmp(&b.ts).then(a.id.cmp(&b.id)));
        let skip = events.len().saturating_sub(cfg.max_events);
        let mut alerts = 0;
        for e in events.into_iter().skip(skip) {
            let is_change = e.message.to_ascii_lowercase().contains("deploy")
                || e.message.to_ascii_lowercase().contains("config change");
            let kind = match e.kind {
                IncidentEventKind::AlertFiring | IncidentEventKind::AlertResolved if is_change => {
                    FactKind::Change
                }
                IncidentEventKind::AlertFiring | IncidentEventKind::AlertResolved => {
                    FactKind::Alert
                }
                IncidentEventKind::Note if is_change => FactKind::Change,
                _ => FactKind::Event,
            };
            if e.kind == IncidentEventKind::AlertFiring {
                alerts += 1;
            }
            if let Some(name) = e.message.split([' ', ':']).next() {
                note_value(&mut names, name);
            }
            facts.push(Fact {
                id: format!("ev-{}", short_hash(&[&e.id])),
                kind,
                text: clean(&format!(
                    "{} {} by {}: {}",
                    e.ts.format("%Y-%m-%d %H:%M UTC"),
                    e.kind.as_str(),
                    quote(&e.actor, 40),
                    quote(&e.message, max)
                )),
                service: None,
            });
        }

        // The neighbourhood of the services involved in the dependency graph.
        let mut callers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (s, calls) in inp.dependencies {
            for c in calls {
                callers.entry(c.as_str()).or_default().push(s.as_str());
            }
        }
        let known: BTreeSet<String> = inp
            .dependencies
            .iter()
            .flat_map(|(s, c)| std::iter::once(s.clone()).chain(c.iter().cloned()))
            .collect();
        let mut shown = services.clone();
        for s in &services {
            let calls: Vec<&str> = inp
                .dependencies
                .get(s)
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default();
            let called_by = callers.get(s.as_str()).cloned().unwrap_or_default();
            if calls.is_empty() && called_by.is_empty() {
                continue;
            }
            shown.extend(calls.iter().map(|c| c.to_string()));
            shown.extend(called_by.iter().map(|c| c.to_string()));
            facts.push(Fact {
                id: format!("svc-{}", short_hash(&[s])),
                kind: FactKind::Service,
                text: format!(
                    "service {s} calls [{}] and is called by [{}]",
                    calls.join(", "),
                    called_by.join(", ")
                ),
                service: Some(s.clone()),
            });
        }
        names.extend(shown.iter().cloned());
        let other_services = known.difference(&shown).cloned().collect();

        for r in inp.runbooks {
            facts.push(Fact {
                id: r.id.clone(),
                kind: FactKind::Runbook,
                text: format!(
                    "runbook {}: {}",
                    quote(&r.title, max),
                    quote(&r.summary, max)
                ),
                service: None,
            });
        }

        // Evidence and runbook ids may be named in the text too.
        names.extend(facts.iter().map(|f| f.id.clone()));
        let n_anomalies = inc.anomaly_ids.len();
        let signals = n_anomalies + alerts;
        let weak_reason = if inc.root_cause_candidates.is_empty() {
            Some("no root-cause candidate".to_string())
        } else if inc.root_cause_candidates[0].score < cfg.min_candidate_score {
            Some(format!(
                "the top root-cause candidate scores {} (below {}): no change larger than an ordinary bad minute",
                num(inc.root_cause_candidates[0].score),
                num(cfg.min_candidate_score)
            ))
        } else if signals < cfg.min_signals {
            Some(format!(
                "only {signals} signal{} (anomalies and firing alerts); {} needed",
                if signals == 1 { "" } else { "s" },
                cfg.min_signals
            ))
        } else {
            None
        };
        // Counts a statement may give, and the thresholds the strength reason names.
        numbers.extend(
            [
                n_anomalies,
                alerts,
                services.len(),
                facts.len(),
                signals,
                cfg.min_signals,
            ]
            .iter()
            .map(|&n| n as f64),
        );
        numbers.push(cfg.min_candidate_score);
        numbers.retain(|v| v.is_finite());
        numbers.sort_by(f64::total_cmp);
        numbers.dedup();
        FactsPack {
            tenant: inc.tenant.clone(),
            incident_id: inc.id.clone(),
            title: clean(&inc.title),
            status: inc.status.as_str().into(),
            severity: inc.severity.as_str().into(),
            started_at: inc.started_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            facts,
            strength: Strength {
                anomalies: n_anomalies,
                alerts,
                candidates: inc.root_cause_candidates.len(),
                weak: weak_reason.is_some(),
                reason: weak_reason.unwrap_or_else(|| {
                    format!("{signals} signals and {} candidates", candidates.len())
                }),
            },
            candidates,
            names,
            numbers,
            other_services,
            pseudonyms,
        }
    }

    /// The pack's content hash: the cache key (with the model and the prompt version).
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).expect("facts serialise"));
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn fact(&self, id: &str) -> Option<&Fact> {
        self.facts.iter().find(|f| f.id == id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.facts.iter().map(|f| f.id.clone()).collect()
    }
}
