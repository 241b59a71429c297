//! Property tests of Alertmanager payload parsing and `into_alerts`: no input makes them
//! panic, and every alert they accept obeys the limits and belongs to the request's tenant.
//!
//! Cases: `PROPTEST_CASES` (default 256); e.g. `PROPTEST_CASES=1000000 cargo test
//! --release -p seismo-ingest --test fuzz_alertmanager`.

mod common;

use std::collections::BTreeMap;

use common::{mutate, mutation};
use proptest::prelude::*;
use seismo_schemas::{AlertmanagerAlert as A, AlertmanagerWebhook};
use serde_json::{Value, json};

const TENANT: &str = "acme";

/// Parses and converts `body` as the request of `TENANT`; checks what must hold for any
/// input and returns whether it was accepted (None: not even a payload).
fn check(body: &[u8]) -> Result<Option<bool>, TestCaseError> {
    let Ok(hook) = serde_json::from_slice::<AlertmanagerWebhook>(body) else {
        return Ok(None);
    };
    let n = hook.alerts.len();
    let sent = hook.alerts.clone();
    match hook.into_alerts(Some(TENANT)) {
        Ok(alerts) => {
            prop_assert_eq!(alerts.len(), n);
            for (a, s) in alerts.iter().zip(&sent) {
                prop_assert_eq!(a.tenant.as_str(), TENANT);
                prop_assert!(a.labels.len() <= A::MAX_LABELS);
                prop_assert!(a.annotations.len() <= A::MAX_ANNOTATIONS);
                prop_assert!(a.labels.values().all(|v| v.len() <= A::MAX_LABEL_VALUE_LEN));
                prop_assert!(
                    a.annotations
                        .values()
                        .all(|v| v.len() <= A::MAX_ANNOTATION_VALUE_LEN)
                );
                prop_assert!(
                    a.labels
                        .keys()
                        .chain(a.annotations.keys())
                        .all(|k| k.len() <= A::MAX_NAME_LEN)
                );
                prop_assert!(a.labels.get("tenant").is_none_or(|t| t == TENANT));
                prop_assert_eq!(&a.labels, &s.labels);
                prop_assert!(a.ends_at.is_none_or(|t| t.timestamp() > 0));
            }
            Ok(Some(true))
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(Some(false))
        }
    }
}

/// Whether a payload built by [`webhook`] breaks no rule.
fn acceptable(v: &Value) -> bool {
    let fits = |m: &Value, max_n: usize, max_v: usize| {
        let m = m.as_object().unwrap();
        m.len() <= max_n
            && m.iter()
                .all(|(k, v)| k.len() <= A::MAX_NAME_LEN && v.as_str().unwrap().len() <= max_v)
    };
    v["version"] == "4"
        && v["alerts"].as_array().unwrap().iter().all(|a| {
            fits(&a["labels"], A::MAX_LABELS, A::MAX_LABEL_VALUE_LEN)
                && fits(
                    &a["annotations"],
                    A::MAX_ANNOTATIONS,
                    A::MAX_ANNOTATION_VALUE_LEN,
                )
                && a["labels"].get("tenant").is_none_or(|t| t == TENANT)
        })
}

fn map(max: usize, long_value: usize) -> impl Strategy<Value = BTreeMap<String, String>> {
    let value = prop_oneof![
        8 => "[ -~]{0,12}",
        1 => Just("v".repeat(long_value)),
        1 => Just("v".repeat(long_value + 1)),
    ];
    let key = prop_oneof![
        20 => "[a-z_]{1,8}",
        1 => Just("k".repeat(A::MAX_NAME_LEN + 1)),
    ];
    prop_oneof![
        8 => prop::collection::btree_map(key, value, 0..4),
        1 => (max - 1..max + 2)
            .prop_map(|n| (0..n).map(|i| (format!("k{i}"), "v".into())).collect()),
    ]
}

fn alert() -> impl Strategy<Value = Value> {
    let tenant = prop::option::of(prop::sample::select(&["acme", "bravo", "bad tenant!"][..]));
    (
        map(A::MAX_LABELS, A::MAX_LABEL_VALUE_LEN),
        map(A::MAX_ANNOTATIONS, A::MAX_ANNOTATION_VALUE_LEN),
        tenant,
        any::<bool>(),
        prop::option::of("[0-9a-f]{4,16}"),
    )
        .prop_map(|(mut labels, annotations, tenant, resolved, fingerprint)| {
            if let Some(t) = tenant {
                labels.insert("tenant".into(), t.into());
            }
            let mut a = json!({
                "status": if resolved { "resolved" } else { "firing" },
                "labels": labels,
                "annotations": annotations,
                "startsAt": "2026-05-01T10:00:00Z",
                "endsAt": if resolved { "2026-05-01T10:05:00Z" } else { "0001-01-01T00:00:00Z" },
            });
            if let Some(f) = fingerprint {
                a["fingerprint"] = json!(f);
            }
            a
        })
}

fn webhook() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(alert(), 0..4),
        prop_oneof![9 => Just("4"), 1 => Just("3")],
    )
        .prop_map(|(alerts, version)| {
            json!({
                "version": version,
                "status": "firing",
                "receiver": "seismo",
                "groupKey": "{}:{}",
                "alerts": alerts,
            })
        })
}

proptest! {
    #[test]
    fn arbitrary_strings(body in any::<String>()) {
        check(body.as_bytes())?;
    }

    #[test]
    fn json_ish_text(body in "[{}\\[\\]\",:0-9a-zA-Z_ .\\-]{0,300}") {
        check(body.as_bytes())?;
        // Wrapped in a payload's frame, the fragments reach the field parsers.
        let framed = format!(
            r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","startsAt":"2026-05-01T10:00:00Z","labels":{{{body}}}}}]}}"#
        );
        check(framed.as_bytes())?;
    }

    #[test]
    fn valid_payloads_are_judged_by_the_rules(v in webhook()) {
        let accepted = check(v.to_string().as_bytes())?;
        prop_assert_eq!(accepted, Some(acceptable(&v)));
    }

    #[test]
    fn mutated_valid_payloads(v in webhook(), edits in prop::collection::vec(mutation(), 1..6)) {
        check(&mutate(v.to_string().into_bytes(), &edits))?;
    }
}
