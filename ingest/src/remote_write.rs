//! Prometheus remote_write (protocol 1.0): snappy-compressed protobuf `WriteRequest`s.
//!
//! The message types are declared here with prost's derive rather than generated from
//! Prometheus' .proto files: only four small messages are needed, and this keeps protoc
//! out of the build. Field numbers follow prometheus/prompb/types.proto and remote.proto.

use seismo_schemas::{Labels, MetricPoint};

use crate::{DecodeError, Limit, ParseLimits, Parsed, TooLarge};

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

/// One field of a protobuf message on the wire.
enum Field<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The next `n` bytes of `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("truncated field".into());
    }
    let (v, rest) = buf.split_at(n);
    *buf = rest;
    Ok(v)
}

/// A field's key: its number and wire type.
fn key(buf: &mut &[u8]) -> Result<(u64, u64), String> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) || key >> 3 == 0 {
        return Err(format!("invalid field key {key}"));
    }
    Ok((key >> 3, key & 7))
}

/// Skips a field's value, except a group's (wire type 3, handled by the caller).
fn skip_value<'a>(buf: &mut &'a [u8], wire: u64) -> Result<Field<'a>, String> {
    Ok(match wire {
        0 => {
            varint(buf)?;
            Field::Scalar
        }
        1 => {
            take(buf, 8)?;
            Field::Scalar
        }
        2 => {
            let len = varint(buf)?;
            Field::Bytes(take(buf, usize::try_from(len).unwrap_or(usize::MAX))?)
        }
        5 => {
            take(buf, 4)?;
            Field::Scalar
        }
        4 => return Err("end of a group that was not started".into()),
        w => return Err(format!("unsupported wire type {w}")),
    })
}

/// Groups nest at most this deep (prost's recursion limit).
const MAX_DEPTH: usize = 100;

/// Skips the rest of a (deprecated, but valid) group started with field `number`.
fn skip_group(buf: &mut &[u8], number: u64) -> Result<(), String> {
    let mut open = vec![number];
    while let Some(&top) = open.last() {
        let (n, wire) = key(buf)?;
        match wire {
            3 if open.len() >= MAX_DEPTH => return Err("groups nested too deeply".into()),
            3 => open.push(n),
            4 if n == top => {
                open.pop();
            }
            4 => return Err("a group ends with another group's number".into()),
            w => {
                skip_value(buf, w)?;
            }
        }
    }
    Ok(())
}

/// Walks the fields of one protobuf message without decoding them, so a request can be
/// measured before anything of it is allocated.
fn for_each_field<'a>(mut buf: &'a [u8], mut f: impl FnMut(u64, Field<'a>)) -> Result<(), String> {
    while !buf.is_empty() {
        let (number, wire) = key(&mut buf)?;
        let field = if wire == 3 {
            skip_group(&mut buf, number)?;
            Field::Scalar
        } else {
            skip_value(&mut buf, wire)?
        };
        f(number, field);
    }
    Ok(())
}

/// The size of one series on the wire, before it is decoded.
#[derive(Debug, Default, Clone, Copy)]
struct SeriesSize {
    labels: usize,
    /// Bytes of its encoded labels: about what each of its points repeats.
    label_bytes: usize,
    samples: usize,
}

/// Measures each `TimeSeries` of an encoded `WriteRequest` (field 1; other fields, such as
/// metadata, are skipped), returning their encodings and sizes.
fn measure(raw: &[u8]) -> Result<Vec<(&[u8], SeriesSize)>, String> {
    let mut series = Vec::new();
    let mut wrong = None;
    for_each_field(raw, |n, f| {
        if let (1, Field::Bytes(b)) = (n, f) {
            series.push(b);
        } else if n == 1 {
            wrong = Some("timeseries is not a message");
        }
    })?;
    if let Some(w) = wrong {
        return Err(w.into());
    }
    series
        .into_iter()
        .map(|b| {
            let mut size = SeriesSize::default();
            for_each_field(b, |n, f| match (n, f) {
                (1, Field::Bytes(l)) => {
                    size.labels += 1;
                    size.label_bytes += l.len();
                }
                (2, Field::Bytes(_)) => size.samples += 1,
                _ => {}
            })?;
            Ok((b, size))
        })
        .collect()
}

/// Decodes a remote_write body into points. A body that does not decompress or decode is
/// refused whole (`Malformed`), and so is one beyond `limits` (`TooLarge`): a declared
/// decompressed length over `max_decompressed_bytes` (checked before decompressing),
/// more than `max_points` samples, or points whose repeated labels would add up to more
/// than `max_decompressed_bytes` (both measured on the wire before anything is decoded).
/// Otherwise each invalid series or sample is refused on its own with a reason naming
/// the series (`line` is the 1-based series index), points outside `limits.window` are
/// refused, and stale markers are counted in `stale`.
pub fn decode(
    body: &[u8],
    tenant: Option<&str>,
    limits: &ParseLimits,
) -> Result<(Parsed, u64), DecodeError> {
    let max_bytes = limits.max_decompressed_bytes;
    let len = snap::raw::decompress_len(body)
        .map_err(|e| DecodeError::Malformed(format!("not snappy-compressed remote_write: {e}")))?;
    if len > max_bytes {
        return Err(DecodeError::TooLarge(TooLarge {
            limit: Limit::MaxDecompressedBytes,
            message: format!(
                "the body declares {len} bytes decompressed, more than {max_bytes} (ingest.max_decompressed_bytes)"
            ),
        }));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Malformed(format!("not snappy-compressed remote_write: {e}")))?;
    let malformed =
        |e: String| DecodeError::Malformed(format!("not a remote_write WriteRequest: {e}"));
    let series = measure(&raw).map_err(malformed)?;
    let samples: usize = series.iter().map(|(_, s)| s.samples).sum();
    if samples > limits.max_points {
        return Err(DecodeError::TooLarge(TooLarge {
            limit: Limit::MaxPointsPerRequest,
            message: format!(
                "the request holds {samples} samples, more than {} (ingest.max_points_per_request); lower max_samples_per_send",
                limits.max_points
            ),
        }));
    }
    // Each point carries its series' labels: a few labels repeated over many samples can
    // expand a small body into gigabytes of points.
    let expanded = series.iter().fold(0usize, |acc, (_, s)| {
        acc.saturating_add(s.samples.saturating_mul(s.label_bytes))
    });
    if expanded > max_bytes {
        return Err(DecodeError::TooLarge(TooLarge {
            limit: Limit::MaxDecompressedBytes,
            message: format!(
                "the samples with their labels expand to about {expanded} bytes of points, more than {max_bytes} (ingest.max_decompressed_bytes)"
            ),
        }));
    }
    let tenant = tenant.unwrap_or(seismo_schemas::DEFAULT_TENANT);
    let mut out = Parsed::new(limits.max_listed);
    let mut stale = 0;
    for (i, (encoded, size)) in series.into_iter().enumerate() {
        if size.labels > MetricPoint::MAX_LABELS + 1 {
            // Refused unread (`__name__` aside, it has too many labels to validate):
            // decoding a series of millions of empty labels is the cost this avoids.
            let e = seismo_schemas::PointError::TooManyLabels(size.labels - 1);
            out.reject(i + 1, &e.to_string());
            continue;
        }
        let ts: TimeSeries =
            prost::Message::decode(encoded).map_err(|e| malformed(e.to_string()))?;
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
            out.reject(i + 1, "series has no __name__ label");
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
                Ok(()) => out.accept(p, i + 1, limits.window.as_ref()),
                Err(e) => out.reject(i + 1, &format!("series {name}: {e}")),
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
        let (parsed, stale) = decode(&body, Some("acme"), &ParseLimits::lenient()).unwrap();
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
        let lenient = ParseLimits::lenient();
        let err = |body: &[u8]| decode(body, None, &lenient).unwrap_err().to_string();
        assert!(err(b"\x05hello").contains("snappy"));
        let not_proto = snap::raw::Encoder::new()
            .compress_vec(b"\xff\xff\xff")
            .unwrap();
        assert!(err(&not_proto).contains("WriteRequest"));
        assert!(!looks_like_remote_write(b"  {\"name\":1}"));
    }
}
