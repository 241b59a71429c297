//! `MetricPoint`, its validation rules and the stable series id.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::{DEFAULT_TENANT, stable_hash};

/// Label set of a series; a sorted map so that equal sets serialise and hash identically.
pub type Labels = BTreeMap<String, String>;

/// Stable 64-bit identity of a series (tenant, name, labels).
pub type SeriesId = u64;

/// Most labels one point may carry; more is almost always a cardinality accident.
pub const MAX_LABELS: usize = 32;
/// Longest label value accepted, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
/// Longest metric or label name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Earliest timestamp accepted (2000-01-01T00:00:00Z), in ms.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// Latest timestamp accepted (2100-01-01T00:00:00Z), in ms.
pub const MAX_TS_MS: i64 = 4_102_444_800_000;

/// One sample of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricPoint {
    /// Tenant owning the series; `default` when the producer names none.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Metric name, Prometheus style: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    pub name: String,
    /// Labels; names follow `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[serde(default)]
    pub labels: Labels,
    /// Sample time, UTC milliseconds since the Unix epoch. Producers may also send an
    /// RFC 3339 string such as `2024-05-01T12:00:00Z`.
    #[serde(deserialize_with = "de_ts")]
    #[schemars(with = "TsInput")]
    pub ts: i64,
    /// Sample value; must be finite.
    pub value: f64,
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

/// What `ts` accepts on input: milliseconds or an RFC 3339 string.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum TsInput {
    Millis(i64),
    Rfc3339(String),
}

fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ts<'a> {
        Int(i64),
        Float(f64),
        #[serde(borrow)]
        Str(std::borrow::Cow<'a, str>),
    }
    match Ts::deserialize(d)? {
        Ts::Int(ms) => Ok(ms),
        // Some producers send fractional milliseconds; keep the millisecond.
        Ts::Float(f) if f.is_finite() => Ok(f.floor() as i64),
        Ts::Float(_) => Err(serde::de::Error::custom("ts must be finite")),
        Ts::Str(s) => chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| serde::de::Error::custom(format!("ts {s:?} is not RFC 3339: {e}"))),
    }
}

/// What a producer's JSON line may say; `tenant` is optional so that a request-level
/// tenant can fill it in.
#[derive(Deserialize)]
struct PointLine {
    tenant: Option<String>,
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(deserialize_with = "de_ts")]
    ts: i64,
    value: f64,
}

/// Parses and validates one JSON line of a `MetricPoint`. `tenant`, when given, applies to
/// a line that names none and must equal the tenant of a line that does. The error is a
/// message for the producer.
pub fn parse_point_line(line: &[u8], tenant: Option<&str>) -> Result<MetricPoint, String> {
    let raw: PointLine = serde_json::from_slice(line).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("malformed JSON: {e}")
        } else {
            format!("not a MetricPoint: {e}")
        }
    })?;
    let tenant = match (raw.tenant, tenant) {
        (Some(named), Some(t)) if named != t => {
            return Err(format!(
                "tenant {named:?} does not match the request's tenant {t:?}"
            ));
        }
        (Some(named), _) => named,
        (None, Some(t)) => t.to_string(),
        (None, None) => DEFAULT_TENANT.to_string(),
    };
    let p = MetricPoint {
        tenant,
        name: raw.name,
        labels: raw.labels,
        ts: raw.ts,
        value: raw.value,
    };
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

/// Why a point was refused. Messages are written for the producer who has to fix them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointError {
    #[error("invalid tenant {0:?}: use 1-64 characters of [A-Za-z0-9_.-]")]
    Tenant(String),
    #[error("invalid metric name {0:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]* (at most 256 bytes)")]
    Name(String),
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]* (at most 256 bytes)")]
    LabelName(String),
    #[error("label {0:?} has a value longer than {MAX_LABEL_VALUE_LEN} bytes")]
    LabelValue(String),
    #[error("too many labels ({0}); at most {MAX_LABELS} are accepted")]
    TooManyLabels(usize),
    #[error("value {0} is not a finite number")]
    Value(f64),
    #[error("ts {0} is outside 2000-01-01..2100-01-01 (expected UTC milliseconds)")]
    Timestamp(i64),
}

/// Checks a tenant name.
pub fn validate_tenant(t: &str) -> Result<(), PointError> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PointError::Tenant(t.to_string()))
    }
}

/// Checks a Prometheus-style metric name.
pub fn validate_metric_name(n: &str) -> Result<(), PointError> {
    let mut bytes = n.bytes();
    let ok = n.len() <= MAX_NAME_LEN
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(PointError::Name(n.to_string()))
    }
}

/// Checks a Prometheus-style label name.
pub fn validate_label_name(n: &str) -> Result<(), PointError> {
    let mut bytes = n.bytes();
    let ok = n.len() <= MAX_NAME_LEN
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PointError::LabelName(n.to_string()))
    }
}

/// The stable id of a series: xxh3-64 over the length-prefixed tenant, name, and each
/// label name and value in sorted order.
pub fn series_id(tenant: &str, name: &str, labels: &Labels) -> SeriesId {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * labels.len());
    parts.push(tenant.as_bytes());
    parts.push(name.as_bytes());
    for (k, v) in labels {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    stable_hash(&parts)
}

impl MetricPoint {
    /// Most labels one point may carry ([`PointError::TooManyLabels`] beyond), for
    /// decoders that check it before building points.
    pub const MAX_LABELS: usize = MAX_LABELS;

    /// The stable id of this point's series.
    pub fn series_id(&self) -> SeriesId {
        series_id(&self.tenant, &self.name, &self.labels)
    }

    /// The entity (host) this point's series belongs to: its tenant and `host` label.
    /// Detect scores a host's series together, so `seismo.points` is keyed by it.
    pub fn entity(&self) -> Option<String> {
        self.labels
            .get("host")
            .map(|h| format!("{}/{h}", self.tenant))
    }

    /// The key of this point on `seismo.points`: its entity when it has one (so a host's
    /// series meet in one partition), else its series id. Either keeps each series in
    /// one partition, in order.
    pub fn points_key(&self) -> String {
        self.entity()
            .unwrap_or_else(|| format!("{:016x}", self.series_id()))
    }

    /// Checks every rule a producer must follow; the first broken rule is reported.
    pub fn validate(&self) -> Result<(), PointError> {
        validate_tenant(&self.tenant)?;
        validate_metric_name(&self.name)?;
        if self.labels.len() > MAX_LABELS {
            return Err(PointError::TooManyLabels(self.labels.len()));
        }
        for (k, v) in &self.labels {
            validate_label_name(k)?;
            if v.len() > MAX_LABEL_VALUE_LEN {
                return Err(PointError::LabelValue(k.clone()));
            }
        }
        if !self.value.is_finite() {
            return Err(PointError::Value(self.value));
        }
        if !(MIN_TS_MS..MAX_TS_MS).contains(&self.ts) {
            return Err(PointError::Timestamp(self.ts));
        }
        Ok(())
    }
}

/// The points of one `seismo.points` record: canonical `MetricPoint` JSON, one per line.
/// Ingest groups the points of a series that arrive together into one record, so the
/// broker carries fewer, larger records; a record of one point is one line.
pub fn points_of_record(
    payload: &[u8],
) -> impl Iterator<Item = Result<MetricPoint, serde_json::Error>> + '_ {
    payload
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(serde_json::from_slice::<MetricPoint>)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> MetricPoint {
        MetricPoint {
            tenant: "acme".into(),
            name: "http_requests_total".into(),
            labels: [
                ("service".to_string(), "cart".to_string()),
                ("host".into(), "h1".into()),
            ]
            .into_iter()
            .collect(),
            ts: 1_700_000_000_000,
            value: 1.5,
        }
    }

    #[test]
    fn series_id_is_stable_across_versions() {
        // A golden value: if this changes, every stored series id changes with it. Python's
        // `xxhash.xxh3_64` over the same length-prefixed encoding gives the same number, so
        // producers in other languages can compute ids too.
        assert_eq!(point().series_id(), 0x9526_89af_5afc_72b3);
    }

    #[test]
    fn series_id_ignores_label_order_but_not_boundaries() {
        let a = point();
        let mut b = point();
        b.labels = b.labels.into_iter().rev().collect();
        assert_eq!(a.series_id(), b.series_id());
        let x = series_id("t", "ab", &Labels::new());
        let y = series_id("ta", "b", &Labels::new());
        assert_ne!(x, y);
    }

    #[test]
    fn parses_millis_and_rfc3339_and_defaults_tenant() {
        let p: MetricPoint =
            serde_json::from_str(r#"{"name":"m","ts":"2023-11-14T22:13:20Z","value":1}"#).unwrap();
        assert_eq!(p.ts, 1_700_000_000_000);
        assert_eq!(p.tenant, DEFAULT_TENANT);
        let q: MetricPoint =
            serde_json::from_str(r#"{"name":"m","ts":1700000000000,"value":1}"#).unwrap();
        assert_eq!(q.ts, p.ts);
        let err = serde_json::from_str::<MetricPoint>(r#"{"name":"m","ts":"yesterday","value":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn validation_names_the_broken_rule() {
        let mut p = point();
        p.name = "9lives".into();
        assert_eq!(p.validate(), Err(PointError::Name("9lives".into())));
        let mut p = point();
        p.value = f64::NAN;
        assert!(matches!(p.validate(), Err(PointError::Value(_))));
        let mut p = point();
        p.ts = 1_700_000_000; // seconds, not ms
        assert_eq!(p.validate(), Err(PointError::Timestamp(1_700_000_000)));
        let mut p = point();
        p.labels.insert("bad-label".into(), "x".into());
        assert_eq!(p.validate(), Err(PointError::LabelName("bad-label".into())));
        assert_eq!(point().validate(), Ok(()));
    }
}

/// Serde helper: series ids travel as 16-digit hex strings in JSON, because 64-bit
/// integers lose precision in JavaScript (Grafana, browsers). Numbers are accepted too.
pub mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        // Binary encodings (checkpoints) keep the plain integer.
        if !s.is_human_readable() {
            return s.serialize_u64(*id);
        }
        s.serialize_str(&format!("{id:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        if !d.is_human_readable() {
            return u64::deserialize(d);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Id {
            Num(u64),
            Str(String),
        }
        match Id::deserialize(d)? {
            Id::Num(n) => Ok(n),
            Id::Str(s) => u64::from_str_radix(&s, 16)
                .map_err(|_| serde::de::Error::custom(format!("series id {s:?} is not hex"))),
        }
    }
}
