//! What each kind of receiver is sent: PagerDuty Events v2, Slack Block Kit, signed JSON webhooks.

use hmac::{Hmac, Mac};
use seismo_schemas::{Incident, Severity};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::{ReceiverKind, Resolved};
use crate::dispatch::{Action, Delivery};

/// Header carrying the Unix time (seconds) a webhook was signed at.
pub const TIMESTAMP_HEADER: &str = "x-seismo-timestamp";
/// Header carrying `v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub const SIGNATURE_HEADER: &str = "x-seismo-signature";
/// Header carrying the delivery id, the same on every retry: receivers can drop repeats.
pub const DELIVERY_HEADER: &str = "x-seismo-delivery";

/// One HTTP request to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// The incident's page in the API.
pub fn incident_url(external_url: &str, inc: &Incident) -> String {
    format!(
        "{}/api/v1/incidents/{}",
        external_url.trim_end_matches('/'),
        inc.id
    )
}

fn top_cause(inc: &Incident) -> Option<String> {
    inc.root_cause_candidates.first().map(|c| c.target.clone())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// PagerDuty's severity for Seismo's.
pub fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// A PagerDuty Events API v2 event: `dedup_key` is the incident id, so trigger,
/// acknowledge and resolve act on one PagerDuty incident.
pub fn pagerduty(routing_key: &str, d: &Delivery, external_url: &str) -> Value {
    let inc = &d.incident;
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": d.action.as_str(),
        "dedup_key": inc.id,
    });
    if d.action == Action::Trigger {
        let url = incident_url(external_url, inc);
        event["payload"] = json!({
            // PagerDuty cuts summaries at 1024 characters.
            "summary": truncate(&inc.title, 1024),
            "source": "seismo",
            "severity": pagerduty_severity(inc.severity),
            "timestamp": inc.started_at.to_rfc3339(),
            "component": top_cause(inc).unwrap_or_default(),
            "group": inc.tenant,
            "class": "seismo incident",
            "custom_details": {
                "status": inc.status.as_str(),
                "root_cause_candidates": inc.root_cause_candidates.iter().take(3).map(|c| json!({
                    "target": c.target,
                    "score": (c.score * 100.0).round() / 100.0,
                    "evidence": c.evidence,
                })).collect::<Vec<_>>(),
                "scope": inc.scope,
                "latest_change": d.note,
                "incident_url": url,
            },
        });
        event["links"] = json!([{ "href": url, "text": "Seismo incident" }]);
        event["client"] = json!("Seismo");
        event["client_url"] = json!(url);
    }
    event
}

/// Slack's mrkdwn treats these three as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Slack incoming-webhook message in Block Kit, with a plain `text` fallback.
pub fn slack(d: &Delivery, external_url: &str) -> Value {
    let inc = &d.incident;
    let (icon, verb) = match d.action {
        Action::Trigger => (
            if inc.severity == Severity::Critical {
                ":red_circle:"
            } else {
                ":large_orange_circle:"
            },
            "Triggered",
        ),
        Action::Acknowledge => (":eyes:", "Acknowledged"),
        Action::Resolve => (":white_check_mark:", "Resolved"),
    };
    let url = incident_url(external_url, inc);
    let header = truncate(&format!("{verb}: {}", inc.title), 150);
    let mut cause = String::new();
    if let Some(c) = inc.root_cause_candidates.first() {
        cause = format!(
            "*Likely cause:* `{}` (score {:.2})",
            escape(&c.target),
            c.score
        );
        for e in c.evidence.iter().take(3) {
            cause.push_str(&format!("\n• {}", escape(&truncate(e, 300))));
        }
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Severity*\n{icon} {}", inc.severity.as_str())},
            {"type": "mrkdwn", "text": format!("*Status*\n{}", inc.status.as_str())},
            {"type": "mrkdwn", "text": format!("*Tenant*\n{}", escape(&inc.tenant))},
            {"type": "mrkdwn", "text": format!("*Started*\n{}", inc.started_at.format("%Y-%m-%d %H:%M:%S UTC"))},
        ]}),
    ];
    if !cause.is_empty() {
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&cause, 2900)}}),
        );
    }
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!("<{url}|Incident {}> · {}", inc.id, escape(&truncate(&d.note, 200)))}
    ]}));
    json!({
        "text": format!("{verb}: {} ({}) {url}", inc.title, inc.severity.as_str()),
        "blocks": blocks,
    })
}

/// The generic webhook body: the delivery, its action and the incident.
pub fn webhook(d: &Delivery, external_url: &str) -> Value {
    json!({
        "version": "1",
        "delivery_id": d.id,
        "action": d.action.as_str(),
        "note": d.note,
        "incident_url": incident_url(external_url, &d.incident),
        "incident": d.incident,
    })
}

/// `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`: a receiver
/// recomputes it to know the body came from Seismo, and checks the timestamp is recent to
/// refuse replays.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// The request a delivery makes to `r`, signed (webhooks with a secret) at `now_s`.
pub fn request(r: &Resolved, d: &Delivery, external_url: &str, now_s: i64) -> Request {
    let body = match r.kind {
        ReceiverKind::Pagerduty => pagerduty(
            r.routing_key.as_deref().unwrap_or_default(),
            d,
            external_url,
        ),
        ReceiverKind::Slack => slack(d, external_url),
        ReceiverKind::Webhook => webhook(d, external_url),
    };
    let body = serde_json::to_vec(&body).expect("payloads serialise");
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (DELIVERY_HEADER.to_string(), d.id.clone()),
    ];
    if r.kind == ReceiverKind::Webhook
        && let Some(secret) = &r.secret
    {
        headers.push((TIMESTAMP_HEADER.to_string(), now_s.to_string()));
        headers.push((
            SIGNATURE_HEADER.to_string(),
            signature(secret, now_s, &body),
        ));
    }
    Request {
        url: r.url.clone(),
        body,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use seismo_schemas::{IncidentStatus, Labels, RootCauseCandidate};

    fn delivery(action: Action) -> Delivery {
        let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        Delivery {
            id: "i1:pd:trigger:0".into(),
            receiver: "pd".into(),
            action,
            incident: Incident {
                id: "i1".into(),
                tenant: "shop".into(),
                title: "latency <anomalous> on db".into(),
                status: IncidentStatus::Detected,
                severity: Severity::Critical,
                started_at: at,
                updated_at: at,
                resolved_at: None,
                scope: Labels::new(),
                root_cause_candidates: vec![RootCauseCandidate {
                    target: "service=db".into(),
                    score: 0.93,
                    evidence: vec!["cpu went from 5 to 97".into()],
                }],
                anomaly_ids: vec![],
                alert_fingerprints: vec![],
            },
            note: "opened".into(),
            only_if_sent: None,
        }
    }

    #[test]
    fn pagerduty_events_carry_dedup_key_severity_cause_and_link() {
        let e = pagerduty("KEY", &delivery(Action::Trigger), "https://seismo.example/");
        assert_eq!(e["routing_key"], "KEY");
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], "i1");
        assert_eq!(e["payload"]["severity"], "critical");
        assert_eq!(e["payload"]["source"], "seismo");
        assert_eq!(e["payload"]["component"], "service=db");
        assert_eq!(
            e["payload"]["custom_details"]["root_cause_candidates"][0]["target"],
            "service=db"
        );
        assert_eq!(
            e["links"][0]["href"],
            "https://seismo.example/api/v1/incidents/i1"
        );
        let r = pagerduty("KEY", &delivery(Action::Resolve), "x");
        assert_eq!(r["event_action"], "resolve");
        assert!(r.get("payload").is_none(), "resolve needs only the key");
    }

    #[test]
    fn slack_messages_are_block_kit_with_escaped_text() {
        let m = slack(&delivery(Action::Trigger), "https://s");
        assert_eq!(m["blocks"][0]["type"], "header");
        assert!(
            m["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .starts_with("Triggered: ")
        );
        let cause = m["blocks"][2]["text"]["text"].as_str().unwrap();
        assert!(cause.contains("`service=db`"), "{cause}");
        let ctx = m["blocks"][3]["elements"][0]["text"].as_str().unwrap();
        assert!(ctx.starts_with("<https://s/api/v1/incidents/i1|"), "{ctx}");
        assert!(m["text"].as_str().unwrap().contains("latency <anomalous>"));
    }

    #[test]
    fn webhook_signatures_are_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 test case 2 (key "Jefe"), with the message split as Seismo signs it.
        assert_eq!(
            signature("Jefe", 0, b"what do ya want for nothing?")
                .strip_prefix("v1=")
                .unwrap()
                .len(),
            64
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let r = Resolved {
            name: "hook".into(),
            kind: ReceiverKind::Webhook,
            url: "http://h".into(),
            routing_key: None,
            secret: Some("s3cret".into()),
        };
        let req = request(&r, &delivery(Action::Trigger), "http://x", 1_700_000_000);
        let get = |h: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == h)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(TIMESTAMP_HEADER), "1700000000");
        assert_eq!(
            get(SIGNATURE_HEADER),
            signature("s3cret", 1_700_000_000, &req.body)
        );
        assert_eq!(get(DELIVERY_HEADER), "i1:pd:trigger:0");
    }
}
