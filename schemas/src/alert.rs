//! `Alert`, and the Alertmanager webhook (version 4) payload that maps onto it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_TENANT, Labels, stable_hash};

/// Whether an alert is currently firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// An alert from an external alerting system, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    pub tenant: String,
    /// Identity of the alert across its firing and resolved notifications.
    pub fingerprint: String,
    pub status: AlertStatus,
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    pub starts_at: DateTime<Utc>,
    /// When the alert resolved; absent while it fires.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Which system sent it, e.g. `alertmanager`.
    pub source: String,
}

/// One alert inside an Alertmanager webhook payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    pub status: AlertStatus,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    pub starts_at: DateTime<Utc>,
    /// Alertmanager sends `0001-01-01T00:00:00Z` while an alert fires.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Present since Alertmanager 0.19; computed from the labels when absent.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The Alertmanager webhook payload, version 4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerWebhook {
    /// Must be `"4"`.
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: AlertStatus,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: Labels,
    #[serde(default)]
    pub common_labels: Labels,
    #[serde(default)]
    pub common_annotations: Labels,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<AlertmanagerAlert>,
}

impl AlertmanagerWebhook {
    /// Converts the payload into canonical alerts. The tenant comes from a `tenant` label
    /// when present, else from `default_tenant`.
    pub fn into_alerts(self, default_tenant: Option<&str>) -> Result<Vec<Alert>, String> {
        if self.version != "4" {
            return Err(format!(
                "unsupported Alertmanager webhook version {:?}; only \"4\" is accepted",
                self.version
            ));
        }
        Ok(self
            .alerts
            .into_iter()
            .map(|a| {
                let fingerprint = a.fingerprint.clone().unwrap_or_else(|| {
                    let parts: Vec<&[u8]> = a
                        .labels
                        .iter()
                        .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
                        .collect();
                    format!("{:016x}", stable_hash(&parts))
                });
                let tenant = a
                    .labels
                    .get("tenant")
                    .map(String::as_str)
                    .or(default_tenant)
                    .unwrap_or(DEFAULT_TENANT)
                    .to_string();
                // Year-1 end times are Alertmanager's "not ended yet".
                let ends_at = a.ends_at.filter(|t| t.timestamp() > 0);
                Alert {
                    tenant,
                    fingerprint,
                    status: a.status,
                    labels: a.labels,
                    annotations: a.annotations,
                    starts_at: a.starts_at,
                    ends_at,
                    source: "alertmanager".into(),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{
      "version": "4", "groupKey": "{}:{alertname=\"HighErrorRate\"}", "truncatedAlerts": 0,
      "status": "firing", "receiver": "seismo",
      "groupLabels": {"alertname": "HighErrorRate"},
      "commonLabels": {"alertname": "HighErrorRate", "service": "checkout"},
      "commonAnnotations": {}, "externalURL": "http://am:9093",
      "alerts": [{
        "status": "firing",
        "labels": {"alertname": "HighErrorRate", "service": "checkout"},
        "annotations": {"summary": "errors above 5%"},
        "startsAt": "2024-05-01T10:03:00Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prom/graph", "fingerprint": "c0ffee"
      }]
    }"#;

    #[test]
    fn maps_v4_payload_onto_alerts() {
        let hook: AlertmanagerWebhook = serde_json::from_str(PAYLOAD).unwrap();
        let alerts = hook.into_alerts(None).unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(a.fingerprint, "c0ffee");
        assert_eq!(a.tenant, DEFAULT_TENANT);
        assert_eq!(a.status, AlertStatus::Firing);
        assert_eq!(a.ends_at, None);
        assert_eq!(a.labels["service"], "checkout");
    }

    #[test]
    fn refuses_other_versions() {
        let hook: AlertmanagerWebhook =
            serde_json::from_str(&PAYLOAD.replace(r#""version": "4""#, r#""version": "3""#))
                .unwrap();
        assert!(hook.into_alerts(None).unwrap_err().contains("version"));
    }
}
