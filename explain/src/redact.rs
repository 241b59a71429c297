//! Redaction before any model call: secret patterns removed, chosen identifiers replaced by reversible pseudonyms.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

/// What a removed secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secret shapes found in labels, alert annotations and notes. Each is removed wherever
/// it appears, whatever field it is in.
static BUILTIN: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // key=value and key: value secrets (password=..., api_key: ..., token=...).
        r#"(?i)\b(pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|credentials?)\b\s*[=:]\s*["']?[^\s"',;}]+"#,
        // Bearer and basic credentials.
        r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
        // Credentials inside a URL.
        r"://[^/\s:@]+:[^/\s@]+@",
        // AWS access key ids, GitHub, Slack and OpenAI-style tokens, JWTs.
        r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
        r"\bgh[pousr]_[A-Za-z0-9]{20,}\b",
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        r"\bsk-[A-Za-z0-9_-]{16,}",
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        // PEM private keys, whole.
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
        // Long random-looking strings (40+ hex or base64 characters): keys more often
        // than anything an explanation needs.
        r"\b[A-Fa-f0-9]{40,}\b",
        r"\b[A-Za-z0-9+/]{40,}={0,2}",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("built-in pattern"))
    .collect()
});

/// Removes secrets; keeps everything else as it was.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra: Vec<Regex>,
}

impl Redactor {
    /// `extra` are checked by [`crate::ExplainConfig::validate`]; a bad one is skipped.
    pub fn new(extra: &[String]) -> Redactor {
        Redactor {
            extra: extra.iter().filter_map(|p| Regex::new(p).ok()).collect(),
        }
    }

    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for re in BUILTIN.iter().chain(&self.extra) {
            if re.is_match(&out) {
                out = re.replace_all(&out, REDACTED).into_owned();
            }
        }
        out
    }
}

/// A reversible map from identifiers (hosts, pods) to pseudonyms like `host-1`, made per
/// facts pack: the model sees only pseudonyms, the answer gets the real names back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pseudonyms {
    /// real → pseudonym.
    forward: BTreeMap<String, String>,
}

impl Pseudonyms {
    /// Numbers the values of each label (sorted, so the same values give the same
    /// pseudonyms and the facts pack's hash is stable).
    pub fn new<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Pseudonyms {
        let mut by_label: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
        for (label, value) in values {
            if !value.is_empty() {
                by_label.entry(label).or_default().insert(value);
            }
        }
        let mut forward = BTreeMap::new();
        for (label, values) in by_label {
            let prefix: String = label
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            for (i, v) in values.into_iter().enumerate() {
                forward
                    .entry(v.to_string())
                    .or_insert_with(|| format!("{prefix}-{}", i + 1));
            }
        }
        Pseudonyms { forward }
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// Real names replaced by pseudonyms, longest first so `db-10` is not read as `db-1`.
    pub fn hide(&self, s: &str) -> String {
        replace_all(
            s,
            self.forward.iter().map(|(a, b)| (a.as_str(), b.as_str())),
        )
    }

    /// Pseudonyms replaced by the real names.
    pub fn reveal(&self, s: &str) -> String {
        replace_all(
            s,
            self.forward.iter().map(|(a, b)| (b.as_str(), a.as_str())),
        )
    }

    /// The pseudonym of a real name, if it has one.
    pub fn of(&self, real: &str) -> Option<&str> {
        self.forward.get(real).map(String::as_str)
    }
}

/// Replaces whole-token occurrences (not inside a longer identifier) of each `from`.
fn replace_all<'a>(s: &str, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = pairs.collect();
    if pairs.is_empty() {
        return s.to_string();
    }
    pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '-' || c == '.';
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let bytes = s.as_bytes();
    'outer: while i < s.len() {
        let before_ok = i == 0 || !s[..i].chars().next_back().is_some_and(ident);
        if before_ok {
            for (from, to) in &pairs {
                if s[i..].starts_with(from) {
                    let end = i + from.len();
                    // A trailing dot ends a sentence rather than continuing the name.
                    let after_ok = end == s.len()
                        || !s[end..].chars().next().is_some_and(ident)
                        || (bytes[end] == b'.' && !s[end + 1..].chars().next().is_some_and(ident));
                    if after_ok {
                        out.push_str(to);
                        i = end;
                        continue 'outer;
                    }
                }
            }
        }
        let c = s[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_of_every_builtin_shape_are_removed() {
        let r = Redactor::new(&["CORP-[0-9]{6}".into()]);
        for (input, secret) in [
            ("db password=hunter2x ok", "hunter2x"),
            ("api_key: 'abcd1234efgh'", "abcd1234efgh"),
            ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
            ("postgres://app:s3cr3t@db:5432/x", "s3cr3t"),
            ("key AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE"),
            (
                "ghp_abcdefghijklmnopqrstuvwxyz0123 in log",
                "ghp_abcdefghijklmnopqrstuvwxyz0123",
            ),
            ("xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
            (
                "sk-proj-abcdefghijklmnopqrst",
                "sk-proj-abcdefghijklmnopqrst",
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
                "eyJhbGciOiJIUzI1NiJ9",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
                "MIIEow",
            ),
            ("ticket CORP-123456", "CORP-123456"),
        ] {
            let out = r.redact(input);
            assert!(!out.contains(secret), "{input:?} → {out:?}");
            assert!(out.contains(REDACTED), "{input:?} → {out:?}");
        }
        // Ordinary telemetry is left alone.
        let plain = "http_request_duration_p99_seconds{service=\"db\",host=\"db-1\"} 0.42 at 03:01";
        assert_eq!(r.redact(plain), plain);
    }

    #[test]
    fn pseudonyms_are_stable_whole_token_and_reversible() {
        let p = Pseudonyms::new([("host", "db-1"), ("host", "db-10"), ("host", "api-7")]);
        let s = "db-10 and db-1 are slow; db-1.";
        let hidden = p.hide(s);
        assert_eq!(hidden, "host-3 and host-2 are slow; host-2.");
        assert_eq!(p.reveal(&hidden), s);
        // Part of a longer name is not a match.
        assert_eq!(p.hide("xdb-1 db-1x"), "xdb-1 db-1x");
        assert_eq!(
            p,
            Pseudonyms::new([("host", "api-7"), ("host", "db-10"), ("host", "db-1")])
        );
    }
}
