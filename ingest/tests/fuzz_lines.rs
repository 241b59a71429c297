//! Property tests of `parse_lines`: no input makes it panic, and what it reports adds up.
//!
//! Cases: `PROPTEST_CASES` (default 256); e.g. `PROPTEST_CASES=1000000 cargo test
//! --release -p seismo-ingest --test fuzz_lines`.

mod common;

use common::{mutate, mutation};
use proptest::prelude::*;
use seismo_ingest::{IngestConfig, MAX_REASON_BYTES, TimeWindow, parse_lines_within};
use serde_json::json;

/// A fixed "now", so the window is the same in every run.
const NOW: i64 = 1_800_000_000_000;

fn window() -> TimeWindow {
    TimeWindow::around(NOW, &IngestConfig::default()).unwrap()
}

fn is_blank(l: &[u8]) -> bool {
    l.iter().all(u8::is_ascii_whitespace)
}

/// Parses `body` and checks every property that must hold for any input.
fn check(
    body: &[u8],
    tenant: Option<&str>,
    max_listed: usize,
    window: Option<&TimeWindow>,
) -> Result<usize, TestCaseError> {
    let p = parse_lines_within(body, tenant, max_listed, window);
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let non_blank: Vec<usize> = (1..=lines.len())
        .filter(|&n| !is_blank(lines[n - 1]))
        .collect();
    // Every non-blank line is accepted or refused, never both.
    prop_assert_eq!(p.points.len() + p.rejected_count, non_blank.len());
    prop_assert_eq!(p.origins.len(), p.points.len());
    prop_assert_eq!(p.accepted_lines.len(), p.points.len());
    prop_assert!(p.origins.windows(2).all(|w| w[0] < w[1]));
    // The listed refusals are the first refused lines, at most `max_listed` of them.
    let refused: Vec<usize> = non_blank
        .iter()
        .copied()
        .filter(|n| p.origins.binary_search(n).is_err())
        .collect();
    prop_assert_eq!(refused.len(), p.rejected_count);
    let listed: Vec<usize> = p.rejected.iter().map(|r| r.line).collect();
    prop_assert_eq!(&listed[..], &refused[..refused.len().min(max_listed)]);
    for r in &p.rejected {
        prop_assert!(r.reason.len() <= MAX_REASON_BYTES, "{}", r.reason);
        prop_assert!(!r.reason.chars().any(char::is_control), "{:?}", r.reason);
        prop_assert!(!r.reason.is_empty());
    }
    // Every accepted point validates, is in the window, belongs to the request's tenant,
    // and is what its line says.
    for ((pt, &origin), range) in p.points.iter().zip(&p.origins).zip(&p.accepted_lines) {
        prop_assert_eq!(pt.validate(), Ok(()));
        if let Some(w) = window {
            prop_assert!(w.check(pt.ts).is_ok());
        }
        if let Some(t) = tenant {
            prop_assert_eq!(&pt.tenant, t);
        }
        prop_assert_eq!(&body[range.clone()], lines[origin - 1]);
        let line = lines[origin - 1]
            .strip_suffix(b"\r")
            .unwrap_or(lines[origin - 1]);
        let again = seismo_schemas::parse_point_line(line, tenant);
        prop_assert_eq!(again.as_ref(), Ok(pt));
    }
    Ok(p.points.len())
}

fn tenant() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(&["acme", "bravo", "bad tenant!"][..]))
}

/// A line that is valid except, perhaps, for its tenant or its age.
fn valid_line() -> impl Strategy<Value = String> {
    let name = "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}";
    let labels = prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "[ -~]{0,16}", 0..4);
    let ts = prop_oneof![
        NOW - 10 * 86_400_000..NOW + 3_600_000,
        946_684_800_000i64..4_102_444_800_000,
    ];
    let value = prop_oneof![any::<i32>().prop_map(f64::from), -1e300f64..1e300];
    (tenant(), name, labels, ts, any::<bool>(), value).prop_map(
        |(tenant, name, labels, ts, rfc3339, value)| {
            let ts = if rfc3339 {
                json!(
                    chrono::DateTime::from_timestamp_millis(ts)
                        .unwrap()
                        .to_rfc3339()
                )
            } else {
                json!(ts)
            };
            let mut v = json!({ "name": name, "labels": labels, "ts": ts, "value": value });
            if let Some(t) = tenant {
                v["tenant"] = json!(t);
            }
            v.to_string()
        },
    )
}

fn body_of(lines: &[String], crlf: bool) -> Vec<u8> {
    lines.join(if crlf { "\r\n" } else { "\n" }).into_bytes()
}

proptest! {
    #[test]
    fn arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        tenant in tenant(),
        max_listed in 0usize..8,
        windowed in any::<bool>(),
    ) {
        let w = window();
        check(&body, tenant, max_listed, windowed.then_some(&w))?;
    }

    #[test]
    fn json_ish_text(
        body in "[{}\\[\\]\",:0-9a-z_ .eE+\\-\\\\\n\r]{0,400}",
        tenant in tenant(),
        max_listed in 0usize..8,
    ) {
        check(body.as_bytes(), tenant, max_listed, Some(&window()))?;
    }

    #[test]
    fn valid_lines_are_accepted(
        lines in prop::collection::vec(valid_line(), 0..12),
        crlf in any::<bool>(),
    ) {
        // No request tenant and no window: only a line's own bad tenant refuses it.
        let body = body_of(&lines, crlf);
        let accepted = check(&body, None, 100, None)?;
        let bad = lines.iter().filter(|l| l.contains("bad tenant!")).count();
        prop_assert_eq!(accepted, lines.len() - bad);
    }

    #[test]
    fn mutated_valid_lines(
        lines in prop::collection::vec(valid_line(), 1..8),
        edits in prop::collection::vec(mutation(), 1..6),
        tenant in tenant(),
        max_listed in 0usize..4,
    ) {
        let body = mutate(body_of(&lines, false), &edits);
        check(&body, tenant, max_listed, Some(&window()))?;
    }
}
