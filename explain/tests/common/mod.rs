//! Test incidents for the explainer's tests: a db fault seen on db and checkout, with secrets in an alert.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use seismo_schemas::{
    Anomaly, AnomalyKind, Explanation, Incident, IncidentEvent, IncidentEventKind, IncidentStatus,
    Labels, RootCauseCandidate, Severity,
};
use seismo_store::{IncidentWrite, Store};

/// The dependency graph of the test fleet.
pub fn deps() -> BTreeMap<String, Vec<String>> {
    [
        (
            "checkout".to_string(),
            vec!["db".to_string(), "payments".to_string()],
        ),
        ("payments".to_string(), vec!["db".to_string()]),
        ("search".to_string(), vec!["cache".to_string()]),
    ]
    .into()
}

pub fn anomaly(i: i64, service: &str, host: &str, score: f64) -> Anomaly {
    let labels: Labels = [
        ("service".to_string(), service.to_string()),
        ("host".to_string(), host.to_string()),
    ]
    .into();
    Anomaly {
        id: Anomaly::make_id(i as u64, i, "test"),
        tenant: "default".into(),
        series_id: i as u64,
        name: "http_request_duration_p99_seconds".into(),
        labels,
        ts: Utc.timestamp_opt(1_767_571_200 + i * 60, 0).unwrap(),
        observed: 0.42,
        expected: 0.031,
        lower: 0.02,
        upper: 0.05,
        score,
        severity: Severity::Critical,
        kind: AnomalyKind::LevelShift,
        detector: "test".into(),
        explanation: Explanation {
            summary: format!("anomaly {i}"),
            z_score: 12.5,
            ..Default::default()
        },
    }
}

/// An incident on db (root cause) and checkout, with an alert whose text holds secrets.
/// `extra` is a label value put on one anomaly (an injection); `signals` anomalies.
pub async fn seed(store: &Arc<dyn Store>, id: &str, signals: usize, extra: Option<&str>) {
    let mut anomalies: Vec<Anomaly> = (0..signals as i64)
        .map(|i| {
            let (s, h) = if i % 2 == 0 {
                ("db", "db-7.prod.internal")
            } else {
                ("checkout", "co-2.prod.internal")
            };
            let mut a = anomaly(i + (id.len() as i64) * 100, s, h, 0.9 - i as f64 * 0.01);
            a.tenant = "default".into();
            a
        })
        .collect();
    if let (Some(x), Some(a)) = (extra, anomalies.first_mut()) {
        a.labels.insert("note".into(), x.into());
    }
    store.insert_anomalies(&anomalies).await.unwrap();
    let at = Utc.timestamp_opt(1_767_571_200, 0).unwrap();
    let incident = Incident {
        id: id.into(),
        tenant: "default".into(),
        title: "http_request_duration_p99_seconds anomalous on db".into(),
        status: IncidentStatus::Detected,
        severity: Severity::Critical,
        started_at: at,
        updated_at: at,
        resolved_at: None,
        scope: [("service".to_string(), "db".to_string())].into(),
        root_cause_candidates: vec![
            RootCauseCandidate {
                target: "service=db".into(),
                score: 0.8,
                evidence: vec!["latency x13 on db".into()],
            },
            RootCauseCandidate {
                target: "service=checkout".into(),
                score: 0.3,
                evidence: vec!["errors on checkout".into()],
            },
        ],
        anomaly_ids: vec![],
        alert_fingerprints: vec![],
    };
    let events = vec![
        IncidentEvent {
            id: format!("{id}-created"),
            incident_id: id.into(),
            ts: at,
            kind: IncidentEventKind::Created,
            actor: "seismo".into(),
            message: "opened".into(),
            from_status: None,
            to_status: Some(IncidentStatus::Detected),
        },
        IncidentEvent {
            id: format!("{id}-firing-a"),
            incident_id: id.into(),
            ts: at,
            kind: IncidentEventKind::AlertFiring,
            actor: "alertmanager".into(),
            message: "DbSlow firing: db-7.prod.internal slow; conn postgres://app:hunter2@db-7.prod.internal/x password=hunter2 Authorization: Bearer sk-abcdefghijklmnopqrstuvwx".into(),
            from_status: None,
            to_status: None,
        },
    ];
    store
        .write_incidents(&[IncidentWrite {
            incident,
            new_anomaly_ids: anomalies.iter().map(|a| a.id.clone()).collect(),
            new_alert_fingerprints: vec![],
            events,
        }])
        .await
        .unwrap();
}
