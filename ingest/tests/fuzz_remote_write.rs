//! Property tests of `remote_write::decode`: no input makes it panic, its wire walk agrees
//! with prost's decoder, and what it reports adds up.
//!
//! Cases: `PROPTEST_CASES` (default 256); e.g. `PROPTEST_CASES=1000000 cargo test
//! --release -p seismo-ingest --test fuzz_remote_write`.

mod common;

use common::{mutate, mutation};
use proptest::prelude::*;
use prost::Message;
use seismo_ingest::remote_write::{
    Label, STALE_NAN_BITS, Sample, TimeSeries, WriteRequest, decode, encode,
};
use seismo_ingest::{DecodeError, IngestConfig, MAX_REASON_BYTES, ParseLimits, TimeWindow};

const NOW: i64 = 1_800_000_000_000;

fn limits(windowed: bool) -> ParseLimits {
    ParseLimits {
        window: windowed.then(|| TimeWindow::around(NOW, &IngestConfig::default()).unwrap()),
        ..ParseLimits::lenient()
    }
}

fn compress(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

/// Decodes `body` and checks what must hold for any input; returns the decoded counts
/// (points, refusals, stale markers) when it decoded.
fn check(body: &[u8], windowed: bool) -> Result<Option<(usize, usize, u64)>, TestCaseError> {
    let limits = limits(windowed);
    let (p, stale) = match decode(body, Some("acme"), &limits) {
        Ok(r) => r,
        Err(DecodeError::Malformed(m)) => {
            prop_assert!(!m.is_empty());
            return Ok(None);
        }
        Err(DecodeError::TooLarge(t)) => {
            // Only a declared length can be too large here: the inputs are small.
            prop_assert_eq!(t.limit.as_str(), "max_decompressed_bytes");
            return Ok(None);
        }
    };
    prop_assert_eq!(p.origins.len(), p.points.len());
    prop_assert!(p.rejected.len() <= limits.max_listed.min(p.rejected_count));
    prop_assert!(p.rejected.windows(2).all(|w| w[0].line <= w[1].line));
    for r in &p.rejected {
        prop_assert!(r.reason.len() <= MAX_REASON_BYTES);
    }
    for pt in &p.points {
        prop_assert_eq!(pt.validate(), Ok(()));
        prop_assert_eq!(pt.tenant.as_str(), "acme");
        prop_assert!(!pt.labels.contains_key("__name__"));
        if let Some(w) = &limits.window {
            prop_assert!(w.check(pt.ts).is_ok());
        }
    }
    Ok(Some((p.points.len(), p.rejected_count, stale)))
}

/// What prost makes of the uncompressed bytes, when it decodes them: each series'
/// expected outcome count (its samples when named, one refusal when not), unless a
/// series has more labels than decode reads.
fn expected(raw: &[u8]) -> Option<usize> {
    let req = WriteRequest::decode(raw).ok()?;
    let mut n = 0;
    for ts in &req.timeseries {
        if ts.labels.len() > seismo_schemas::MetricPoint::MAX_LABELS + 1 {
            return None;
        }
        n += if ts.labels.iter().any(|l| l.name == "__name__") {
            ts.samples.len()
        } else {
            1
        };
    }
    Some(n)
}

/// Checks `raw` (uncompressed) against prost: whatever prost decodes, decode does too,
/// with every sample accounted for.
fn check_raw(raw: &[u8], windowed: bool) -> Result<(), TestCaseError> {
    let got = check(&compress(raw), windowed)?;
    if let Some(want) = expected(raw) {
        let Some((points, refused, stale)) = got else {
            return Err(TestCaseError::fail(format!(
                "prost decodes {raw:?} but decode refused it"
            )));
        };
        prop_assert_eq!(points + refused + stale as usize, want);
    }
    Ok(())
}

fn sample() -> impl Strategy<Value = Sample> {
    let ts = prop_oneof![NOW - 10 * 86_400_000..NOW + 3_600_000, any::<i64>(),];
    let value = prop_oneof![
        4 => any::<f64>(),
        1 => Just(f64::from_bits(STALE_NAN_BITS)),
    ];
    (ts, value).prop_map(|(timestamp, value)| Sample { value, timestamp })
}

fn series() -> impl Strategy<Value = TimeSeries> {
    let label = (
        "__name__|[a-zA-Z_][a-zA-Z0-9_]{0,6}|[ -~]{0,4}",
        "[ -~]{0,12}",
    )
        .prop_map(|(name, value)| Label { name, value });
    (
        prop::collection::vec(label, 0..5),
        prop::collection::vec(sample(), 0..6),
    )
        .prop_map(|(labels, samples)| TimeSeries { labels, samples })
}

fn request() -> impl Strategy<Value = WriteRequest> {
    prop::collection::vec(series(), 0..5).prop_map(|timeseries| WriteRequest { timeseries })
}

proptest! {
    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        check(&body, true)?;
    }

    #[test]
    fn arbitrary_bytes_as_snappy(
        raw in prop::collection::vec(any::<u8>(), 0..1024),
        windowed in any::<bool>(),
    ) {
        check_raw(&raw, windowed)?;
    }

    #[test]
    fn valid_requests(req in request(), windowed in any::<bool>()) {
        let raw = req.encode_to_vec();
        prop_assert!(expected(&raw).is_some());
        check_raw(&raw, windowed)?;
        prop_assert_eq!(compress(&raw), encode(&req));
    }

    #[test]
    fn mutated_valid_encodings(
        req in request(),
        edits in prop::collection::vec(mutation(), 1..6),
        windowed in any::<bool>(),
    ) {
        check_raw(&mutate(req.encode_to_vec(), &edits), windowed)?;
    }

    #[test]
    fn mutated_compressed_bodies(
        req in request(),
        edits in prop::collection::vec(mutation(), 1..4),
    ) {
        check(&mutate(encode(&req), &edits), true)?;
    }
}
