//! Grounding: every name and number a statement mentions must be in the facts pack; a sentence that mentions anything else is dropped and counted.

use serde::{Deserialize, Serialize};

use crate::facts::FactsPack;

/// What grounding found in one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grounding {
    /// Names (services, hosts, metrics, identifiers) and numbers mentioned.
    pub mentions: u64,
    /// Mentions the facts pack does not support.
    pub violations: u64,
    /// Sentences dropped because they held a violation.
    pub dropped_sentences: u64,
    /// Summaries that were not prose (or were all dropped) and were replaced by the
    /// template's.
    #[serde(default)]
    pub replaced_summaries: u64,
}

impl Grounding {
    pub fn add(&mut self, o: Grounding) {
        self.mentions += o.mentions;
        self.violations += o.violations;
        self.dropped_sentences += o.dropped_sentences;
        self.replaced_summaries += o.replaced_summaries;
    }
}

/// One mention in a text.
#[derive(Debug, PartialEq)]
enum Mention {
    Supported,
    Unsupported,
}

/// Words of the answer's own vocabulary that look like identifiers but name nothing.
const COMMON: &[&str] = &[
    "root-cause",
    "p99",
    "p95",
    "p50",
    "5xx",
    "4xx",
    "2xx",
    "http",
    "cpu",
    "ram",
    "utc",
    "ids",
    "level_shift",
    "id",
    "dns",
    "tls",
    "io",
    "gc",
    "oom",
    "k8s",
    "slo",
    "sla",
    "rca",
    "up-to-date",
    "follow-up",
    "on-call",
    "roll-back",
    "re-run",
    "well-known",
    "real-time",
];

fn is_number(tok: &str) -> Option<(f64, bool)> {
    let percent = tok.ends_with('%');
    let t = tok.trim_end_matches('%');
    // Units glued to the number: 3.5s, 250ms, 8x, 2.1GB.
    let t = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let t = t.trim_start_matches(['~', '+', '≈']);
    if t.is_empty()
        || !t
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
    {
        return None;
    }
    let t = t.replace(',', "");
    t.parse::<f64>().ok().map(|v| (v, percent))
}

fn number_supported(v: f64, percent: bool, pack: &FactsPack) -> bool {
    let close = |x: f64, y: f64| {
        let scale = x.abs().max(y.abs());
        scale == 0.0 || (x - y).abs() <= 0.051 * scale || (x - y).abs() < 1e-9
    };
    let candidates: &[f64] = if percent { &[v, v / 100.0] } else { &[v] };
    candidates
        .iter()
        .any(|c| pack.numbers.iter().any(|n| close(*c, *n) || close(*c, n.abs())))
        // Times of day and dates are checked as whole tokens elsewhere; small ordinals
        // ("rank 1", "2 of") are as supported as the list they count.
        || (v.fract() == 0.0 && (1.0..=3.0).contains(&v))
}

/// Classifies the tokens of `sentence` that are mentions.
fn mentions(sentence: &str, pack: &FactsPack, facts_text: &str) -> Vec<Mention> {
    let mut out = Vec::new();
    for raw in sentence.split(|c: char| c.is_whitespace() || ",;()[]{}\"'`<>!?".contains(c)) {
        let tok = raw
            .trim_end_matches(['.', ':'])
            .trim_start_matches(['.', ':']);
        if tok.is_empty() {
            continue;
        }
        let lower = tok.to_ascii_lowercase();
        if COMMON.contains(&lower.as_str()) {
            continue;
        }
        // service=db style targets: both halves must be known.
        if let Some((k, v)) = tok.split_once('=') {
            let ok = pack.names.contains(tok) || (pack.names.contains(v) && !k.is_empty());
            out.push(if ok {
                Mention::Supported
            } else {
                Mention::Unsupported
            });
            continue;
        }
        // Dates and times of day: supported when a fact shows the same.
        if tok.contains(':') && tok.chars().all(|c| c.is_ascii_digit() || c == ':')
            || (tok.len() == 10
                && tok.chars().filter(|c| *c == '-').count() == 2
                && tok.starts_with("20"))
        {
            out.push(if facts_text.contains(tok) {
                Mention::Supported
            } else {
                Mention::Unsupported
            });
            continue;
        }
        if let Some((v, pct)) = is_number(tok) {
            out.push(if number_supported(v, pct, pack) {
                Mention::Supported
            } else {
                Mention::Unsupported
            });
            continue;
        }
        if pack.names.contains(tok) || pack.names.contains(&lower) {
            out.push(Mention::Supported);
            continue;
        }
        if pack.other_services.contains(tok) || pack.other_services.contains(&lower) {
            // A service of the graph the evidence does not involve.
            out.push(Mention::Unsupported);
            continue;
        }
        let has_digit = tok.chars().any(|c| c.is_ascii_digit());
        let has_alpha = tok.chars().any(|c| c.is_ascii_alphabetic());
        let identifier_shaped = tok.contains('_')
            || (has_digit && has_alpha)
            || (tok.contains('-') && tok.split('-').any(|p| pack.names.contains(p)))
            || (tok.contains('.')
                && has_alpha
                && !tok.ends_with('.')
                && tok.split('.').all(|p| !p.is_empty()));
        if identifier_shaped {
            // Part of a known identifier (`duration_p99` of a metric) counts as it.
            let known = pack
                .names
                .iter()
                .any(|n| n.len() > tok.len() && n.contains(tok));
            out.push(if known {
                Mention::Supported
            } else {
                Mention::Unsupported
            });
        }
    }
    out
}

/// Sentences of a text: split after `.`, `!`, `?` or `;` followed by a space, or a newline.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    for i in 0..b.len() {
        let end = (matches!(b[i], b'.' | b'!' | b'?' | b';')
            && (i + 1 == b.len() || b[i + 1] == b' '))
            || b[i] == b'\n';
        if end {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Checks `text`; returns it without its unsupported sentences, and the counts.
pub fn check(text: &str, pack: &FactsPack) -> (String, Grounding) {
    let facts_text: String = pack
        .facts
        .iter()
        .map(|f| f.text.as_str())
        .chain(std::iter::once(pack.started_at.as_str()))
        .collect::<Vec<_>>()
        .join("\n");
    let mut g = Grounding::default();
    let mut kept = Vec::new();
    for s in sentences(text) {
        let m = mentions(s, pack, &facts_text);
        let bad = m.iter().filter(|m| **m == Mention::Unsupported).count() as u64;
        g.mentions += m.len() as u64;
        g.violations += bad;
        if bad > 0 {
            g.dropped_sentences += 1;
        } else {
            kept.push(s);
        }
    }
    (kept.join(" "), g)
}
