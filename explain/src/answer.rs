//! The answer a model must give: its JSON schema (built per facts pack, so evidence ids are an enum) and its validation.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::facts::FactsPack;

/// The cause a hypothesis names when it is none of the candidates.
pub const UNKNOWN_CAUSE: &str = "unknown";

/// One hypothesis of what caused the incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    pub text: String,
    /// A root-cause candidate target (`service=db`) or `unknown`.
    pub cause: String,
    pub evidence_ids: Vec<String>,
    /// 0..1.
    pub confidence: f64,
}

/// The explain call's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub summary: String,
    pub inconclusive: bool,
    pub hypotheses: Vec<Hypothesis>,
    pub next_checks: Vec<String>,
    pub runbook_refs: Vec<String>,
}

/// A hypothesis as the model gives it: confidence in whole percent, a range grammar-
/// constrained decoders enforce (they do not all enforce bounds on real numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHypothesis {
    text: String,
    cause: String,
    evidence_ids: Vec<String>,
    confidence_percent: i64,
}

/// The explain answer as the model gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAnswer {
    summary: String,
    inconclusive: bool,
    hypotheses: Vec<WireHypothesis>,
    next_checks: Vec<String>,
    runbook_refs: Vec<String>,
}

/// The post-mortem call's answer; the timeline is built from the facts, not asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostmortemAnswer {
    pub impact: String,
    pub cause: String,
    pub went_well: Vec<String>,
    pub actions: Vec<String>,
}

// Lengths bound the answer: at worst (a character per token) summary, hypotheses and
// checks fit max_output_tokens (1,536) with the JSON and the whitespace a grammar allows
// around them, so an answer is never cut off mid-string.
const TEXT: usize = 240;
const ITEM: usize = 120;
const MAX_HYPOTHESES: usize = 2;
const MAX_CHECKS: usize = 2;

fn text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max})
}

/// The explain answer's schema for `pack`: evidence ids, causes and runbooks are enums of
/// what the pack holds, so a schema-constrained model cannot cite what is not there.
pub fn schema(pack: &FactsPack) -> Value {
    let mut causes: Vec<String> = pack.candidates.clone();
    causes.push(UNKNOWN_CAUSE.into());
    let ids: Vec<String> = pack.ids();
    let runbooks: Vec<String> = pack
        .facts
        .iter()
        .filter(|f| f.kind == crate::facts::FactKind::Runbook)
        .map(|f| f.id.clone())
        .collect();
    let id_items = if ids.is_empty() {
        json!({"type": "string", "maxLength": 0})
    } else {
        json!({"type": "string", "enum": ids})
    };
    // No runbook matched: the only valid list is the empty one.
    let runbook_refs = if runbooks.is_empty() {
        json!({"type": "array", "maxItems": 0, "items": {"type": "string"}})
    } else {
        json!({"type": "array", "maxItems": 3, "items": {"type": "string", "enum": runbooks}})
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["summary", "inconclusive", "hypotheses", "next_checks", "runbook_refs"],
        "properties": {
            "summary": text(TEXT),
            "inconclusive": {"type": "boolean"},
            "hypotheses": {
                "type": "array", "maxItems": MAX_HYPOTHESES,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["text", "cause", "evidence_ids", "confidence_percent"],
                    "properties": {
                        "text": text(ITEM),
                        "cause": {"type": "string", "enum": causes},
                        "evidence_ids": {"type": "array", "minItems": 1, "maxItems": 3, "items": id_items},
                        "confidence_percent": {"type": "integer", "minimum": 0, "maximum": 100}
                    }
                }
            },
            "next_checks": {"type": "array", "maxItems": MAX_CHECKS, "items": text(ITEM)},
            "runbook_refs": runbook_refs
        }
    })
}

/// The post-mortem answer's schema.
pub fn postmortem_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["impact", "cause", "went_well", "actions"],
        "properties": {
            "impact": text(ITEM),
            "cause": text(ITEM),
            "went_well": {"type": "array", "maxItems": 2, "items": text(ITEM)},
            "actions": {"type": "array", "maxItems": 2, "items": text(ITEM)}
        }
    })
}

/// Parses and checks an explain answer against `pack`; the error says what was wrong
/// (stored with the call).
pub fn parse(content: &str, pack: &FactsPack) -> Result<Answer, String> {
    let w: WireAnswer = serde_json::from_str(strip_fences(content))
        .map_err(|e| format!("schema: not the answer object: {e}"))?;
    if let Some(h) = w
        .hypotheses
        .iter()
        .find(|h| !(0..=100).contains(&h.confidence_percent))
    {
        return Err(format!(
            "schema: confidence_percent {} is not in 0..100",
            h.confidence_percent
        ));
    }
    let a = Answer {
        summary: w.summary,
        inconclusive: w.inconclusive,
        hypotheses: w
            .hypotheses
            .into_iter()
            .map(|h| {
                // A repeated citation says nothing more (small models repeat themselves).
                let mut seen = std::collections::BTreeSet::new();
                let mut ids = h.evidence_ids;
                ids.retain(|id| seen.insert(id.clone()));
                Hypothesis {
                    text: h.text,
                    cause: h.cause,
                    evidence_ids: ids,
                    confidence: h.confidence_percent as f64 / 100.0,
                }
            })
            .collect(),
        next_checks: w.next_checks,
        runbook_refs: w.runbook_refs,
    };
    let too_long = |s: &str, max: usize| s.chars().count() > max;
    if a.summary.trim().is_empty() || too_long(&a.summary, TEXT) {
        return Err("schema: summary empty or too long".into());
    }
    if a.hypotheses.len() > MAX_HYPOTHESES
        || a.next_checks.len() > MAX_CHECKS
        || a.runbook_refs.len() > 3
    {
        return Err("schema: too many items".into());
    }
    for h in &a.hypotheses {
        if h.text.trim().is_empty() || too_long(&h.text, ITEM) {
            return Err("schema: hypothesis text empty or too long".into());
        }
        if h.cause != UNKNOWN_CAUSE && !pack.candidates.contains(&h.cause) {
            return Err(format!("schema: cause {:?} is not a candidate", h.cause));
        }
        if h.evidence_ids.is_empty() || h.evidence_ids.len() > 3 {
            return Err("schema: a hypothesis needs 1 to 3 evidence ids".into());
        }
        if let Some(id) = h.evidence_ids.iter().find(|id| pack.fact(id).is_none()) {
            return Err(format!(
                "schema: evidence id {id:?} is not in the facts pack"
            ));
        }
        if !(0.0..=1.0).contains(&h.confidence) {
            return Err(format!(
                "schema: confidence {} is not in 0..1",
                h.confidence
            ));
        }
    }
    if let Some(c) = a
        .next_checks
        .iter()
        .find(|c| c.trim().is_empty() || too_long(c, ITEM))
    {
        return Err(format!("schema: next check {c:?} empty or too long"));
    }
    if let Some(r) = a.runbook_refs.iter().find(|r| {
        pack.fact(r)
            .is_none_or(|f| f.kind != crate::facts::FactKind::Runbook)
    }) {
        return Err(format!("schema: runbook {r:?} is not a matched runbook"));
    }
    Ok(a)
}

/// Parses and checks a post-mortem answer.
pub fn parse_postmortem(content: &str) -> Result<PostmortemAnswer, String> {
    let a: PostmortemAnswer = serde_json::from_str(strip_fences(content))
        .map_err(|e| format!("schema: not the post-mortem object: {e}"))?;
    if a.impact.trim().is_empty() || a.cause.trim().is_empty() {
        return Err("schema: impact and cause must not be empty".into());
    }
    let long = |s: &String| s.chars().count() > ITEM;
    if long(&a.impact) || long(&a.cause) || a.went_well.iter().chain(&a.actions).any(long) {
        return Err("schema: a post-mortem field is too long".into());
    }
    if a.went_well.len() > 2 || a.actions.len() > 2 {
        return Err("schema: too many items".into());
    }
    Ok(a)
}

/// Some servers wrap JSON in a Markdown code fence even when asked not to.
fn strip_fences(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(t)
}
