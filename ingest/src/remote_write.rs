//! Prometheus remote_write (protocol 1.0): snappy-compressed protobuf `WriteRequest`s.
//!
//! The message types are declared here with prost's derive rather than generated from
//! Prometheus' .proto files: only four small messages are needed, and this keeps protoc
//! out of the build. Field numbers follow prometheus/prompb/types.proto and remote.proto.

use seismo_schemas::{Labels, MetricPoint};

use crate::{Parsed, Rejection};

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Prometheus marks a series that disappeared with this particular NaN. It is a signal
/// about scraping, not a measurement, so it is skipped rather than refused.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether a payload looks like remote_write rather than JSON lines: JSON starts with `{`
/// (after whitespace); a snappy block starts with the varint of the uncompressed length.
pub fn looks_like_remote_write(payload: &[u8]) -> bool {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => false,
        Some(_) => true,
    }
}

/// Compresses and encodes a request, as Prometheus sends it (used by tests and tools).
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input")
}

/// Decodes a remote_write body into points. A body that does not decompress or decode is
/// refused whole (`Err`); otherwise each invalid series or sample is refused on its own
/// with a reason naming the series (`line` is the 1-based series index), and stale
/// markers are counted in `stale`.
pub fn decode(body: &[u8], tenant: Option<&str>) -> Result<(Parsed, u64), String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("not snappy-compressed remote_write: {e}"))?;
    let req: WriteRequest = prost::Message::decode(raw.as_slice())
        .map_err(|e| format!("not a remote_write WriteRequest: {e}"))?;
    let tenant = tenant.unwrap_or(seismo_schemas::DEFAULT_TENANT);
    let mut out = Parsed::default();
    let mut stale = 0;
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        let reject = |out: &mut Parsed, reason: String| {
            out.rejected.push(Rejection {
                line: i + 1,
                reason,
            })
        };
        let mut name = None;
        let mut labels = Labels::new();
        for l in ts.labels {
            if l.name == "__name__" {
                name = Some(l.value);
            } else {
                labels.insert(l.name, l.value);
            }
        }
        let Some(name) = name else {
            reject(&mut out, "series has no __name__ label".into());
            continue;
        };
        for s in ts.samples {
            if s.value.to_bits() == STALE_NAN_BITS {
                stale += 1;
                continue;
            }
            let p = MetricPoint {
                tenant: tenant.to_string(),
                name: name.clone(),
                labels: labels.clone(),
                ts: s.timestamp,
                value: s.value,
            };
            match p.validate() {
                Ok(()) => out.points.push(p),
                Err(e) => reject(&mut out, format!("series {name}: {e}")),
            }
        }
    }
    Ok((out, stale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: Option<&str>, host: &str, samples: &[(i64, f64)]) -> TimeSeries {
        let mut labels = vec![Label {
            name: "host".into(),
            value: host.into(),
        }];
        if let Some(n) = name {
            labels.push(Label {
                name: "__name__".into(),
                value: n.into(),
            });
        }
        TimeSeries {
            labels,
            samples: samples
                .iter()
                .map(|(t, v)| Sample {
                    value: *v,
                    timestamp: *t,
                })
                .collect(),
        }
    }

    #[test]
    fn decodes_series_and_refuses_bad_ones_with_reasons() {
        let t = 1_700_000_000_000;
        let req = WriteRequest {
            timeseries: vec![
                series(Some("cpu"), "a", &[(t, 0.5), (t + 15_000, 0.75)]),
                series(None, "b", &[(t, 1.0)]),
                series(
                    Some("mem"),
                    "c",
                    &[(t, f64::from_bits(STALE_NAN_BITS)), (t, f64::INFINITY)],
                ),
            ],
        };
        let body = encode(&req);
        assert!(looks_like_remote_write(&body));
        let (parsed, stale) = decode(&body, Some("acme")).unwrap();
        assert_eq!(parsed.points.len(), 2);
        assert_eq!(parsed.points[1].ts, t + 15_000);
        assert_eq!(parsed.points[0].tenant, "acme");
        assert_eq!(parsed.points[0].labels["host"], "a");
        assert!(!parsed.points[0].labels.contains_key("__name__"));
        assert_eq!(stale, 1);
        let lines: Vec<usize> = parsed.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3]);
        assert!(parsed.rejected[0].reason.contains("__name__"));
        assert!(
            parsed.rejected[1].reason.contains("mem"),
            "{:?}",
            parsed.rejected[1]
        );
    }

    #[test]
    fn garbage_is_refused_whole() {
        assert!(decode(b"\x05hello", None).unwrap_err().contains("snappy"));
        let not_proto = snap::raw::Encoder::new()
            .compress_vec(b"\xff\xff\xff")
            .unwrap();
        assert!(
            decode(&not_proto, None)
                .unwrap_err()
                .contains("WriteRequest")
        );
        assert!(!looks_like_remote_write(b"  {\"name\":1}"));
    }
}
