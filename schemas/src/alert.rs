//! `Alert`, and the Alertmanager webhook (version 4) payload that maps onto it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_TENANT, Labels, PointError, stable_hash, validate_tenant};

/// Short names of the associated limits, for messages.
type A = AlertmanagerAlert;

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

/// Why an Alertmanager payload was refused. Messages are written for whoever configures
/// the sender; any problem refuses the whole payload, so Alertmanager's retry cannot
/// duplicate the alerts that were fine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertError {
    #[error("unsupported Alertmanager webhook version {0:?}; only \"4\" is accepted")]
    Version(String),
    #[error("the request's tenant is invalid: {0}")]
    RequestTenant(PointError),
    /// Alert `index` (0-based, as in the payload's `alerts` array) broke a rule.
    #[error("alert {index} (alertname {name:?}): {problem}")]
    Alert {
        index: usize,
        /// Its `alertname` label, cut to 64 bytes.
        name: String,
        problem: AlertProblem,
    },
}

impl AlertError {
    /// The size rule the payload broke, when that is why it was refused: a short fixed
    /// name, fit for a metric label.
    pub fn limit(&self) -> Option<&'static str> {
        let AlertError::Alert { problem, .. } = self else {
            return None;
        };
        match problem {
            AlertProblem::TooManyLabels(_) => Some("alert_labels"),
            AlertProblem::TooManyAnnotations(_) => Some("alert_annotations"),
            AlertProblem::NameLength(_) => Some("alert_name_bytes"),
            AlertProblem::LabelValue(_) => Some("alert_label_value_bytes"),
            AlertProblem::AnnotationValue(_) => Some("alert_annotation_value_bytes"),
            AlertProblem::Tenant(_) | AlertProblem::OtherTenant { .. } => None,
        }
    }
}

/// What is wrong with one alert of a payload.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertProblem {
    #[error("{0} labels; at most {max} are accepted", max = A::MAX_LABELS)]
    TooManyLabels(usize),
    #[error("{0} annotations; at most {max} are accepted", max = A::MAX_ANNOTATIONS)]
    TooManyAnnotations(usize),
    #[error(
        "a label or annotation name starting {0:?} is longer than {max} bytes",
        max = A::MAX_NAME_LEN
    )]
    NameLength(String),
    #[error("label {0:?} has a value longer than {max} bytes", max = A::MAX_LABEL_VALUE_LEN)]
    LabelValue(String),
    #[error(
        "annotation {0:?} has a value longer than {max} bytes",
        max = A::MAX_ANNOTATION_VALUE_LEN
    )]
    AnnotationValue(String),
    #[error("its tenant label is invalid: {0}")]
    Tenant(PointError),
    #[error(
        "its tenant label {label:?} is not the request's tenant {request:?}; send each tenant's alerts with that tenant's credentials"
    )]
    OtherTenant { label: String, request: String },
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AlertmanagerAlert {
    /// Most labels one alert may carry. Alertmanager's own alerts carry a handful; the
    /// bound keeps one hostile alert from costing correlate more than a few kilobytes.
    pub const MAX_LABELS: usize = 64;
    /// Most annotations one alert may carry.
    pub const MAX_ANNOTATIONS: usize = 64;
    /// Longest label value, in bytes. Labels identify the alert and are matched against
    /// series labels, so they are short (the bound of a point's label values).
    pub const MAX_LABEL_VALUE_LEN: usize = crate::point::MAX_LABEL_VALUE_LEN;
    /// Longest annotation value, in bytes: room for a runbook paragraph or a templated
    /// description, not for a log dump.
    pub const MAX_ANNOTATION_VALUE_LEN: usize = 16 << 10;
    /// Longest label or annotation name, in bytes (the bound of a point's label names).
    pub const MAX_NAME_LEN: usize = crate::point::MAX_NAME_LEN;

    /// Checks the size rules and the tenant label against the request's tenant.
    fn check(&self, request_tenant: &str) -> Result<(), AlertProblem> {
        if self.labels.len() > Self::MAX_LABELS {
            return Err(AlertProblem::TooManyLabels(self.labels.len()));
        }
        if self.annotations.len() > Self::MAX_ANNOTATIONS {
            return Err(AlertProblem::TooManyAnnotations(self.annotations.len()));
        }
        let fields = [
            (&self.labels, Self::MAX_LABEL_VALUE_LEN, true),
            (&self.annotations, Self::MAX_ANNOTATION_VALUE_LEN, false),
        ];
        for (map, max_value, is_label) in fields {
            for (k, v) in map {
                if k.len() > Self::MAX_NAME_LEN {
                    return Err(AlertProblem::NameLength(prefix(k, 64).to_string()));
                }
                if v.len() > max_value {
                    return Err(if is_label {
                        AlertProblem::LabelValue(k.clone())
                    } else {
                        AlertProblem::AnnotationValue(k.clone())
                    });
                }
            }
        }
        if let Some(t) = self.labels.get("tenant") {
            validate_tenant(t).map_err(AlertProblem::Tenant)?;
            if t != request_tenant {
                return Err(AlertProblem::OtherTenant {
                    label: t.clone(),
                    request: request_tenant.to_string(),
                });
            }
        }
        Ok(())
    }
}

impl AlertmanagerWebhook {
    /// Converts the payload into canonical alerts of `tenant` (the request's tenant;
    /// `None` is the default tenant). Every alert is checked first and any broken rule
    /// refuses the whole payload: too many or too large labels or annotations, or a
    /// `tenant` label naming another tenant. The label can only confirm the tenant, never
    /// choose it: whoever may post for one tenant must not open incidents in another.
    pub fn into_alerts(self, tenant: Option<&str>) -> Result<Vec<Alert>, AlertError> {
        if self.version != "4" {
            return Err(AlertError::Version(prefix(&self.version, 64).to_string()));
        }
        let tenant = tenant.unwrap_or(DEFAULT_TENANT);
        validate_tenant(tenant).map_err(AlertError::RequestTenant)?;
        for (index, a) in self.alerts.iter().enumerate() {
            a.check(tenant).map_err(|problem| AlertError::Alert {
                index,
                name: prefix(
                    a.labels.get("alertname").map(String::as_str).unwrap_or(""),
                    64,
                )
                .to_string(),
                problem,
            })?;
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
                // Year-1 end times are Alertmanager's "not ended yet".
                let ends_at = a.ends_at.filter(|t| t.timestamp() > 0);
                Alert {
                    tenant: tenant.to_string(),
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
        let err = hook.into_alerts(None).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }

    fn hook() -> AlertmanagerWebhook {
        serde_json::from_str(PAYLOAD).unwrap()
    }

    #[test]
    fn the_tenant_label_must_be_the_requests_tenant() {
        let mut h = hook();
        h.alerts[0].labels.insert("tenant".into(), "acme".into());
        let alerts = h.clone().into_alerts(Some("acme")).unwrap();
        assert_eq!(alerts[0].tenant, "acme");
        // Posting as another tenant cannot move the alert into acme.
        let err = h.clone().into_alerts(Some("other")).unwrap_err();
        assert!(
            matches!(&err, AlertError::Alert { index: 0, problem: AlertProblem::OtherTenant { label, .. }, .. } if label == "acme"),
            "{err:?}"
        );
        assert!(err.to_string().contains("HighErrorRate"), "{err}");
        // Nor can the default tenant.
        assert!(h.into_alerts(None).is_err());
        let mut h = hook();
        h.alerts[0]
            .labels
            .insert("tenant".into(), "bad tenant".into());
        let err = h.into_alerts(Some("bad tenant")).unwrap_err();
        assert!(matches!(err, AlertError::RequestTenant(_)), "{err:?}");
        let mut h = hook();
        h.alerts[0]
            .labels
            .insert("tenant".into(), "bad tenant".into());
        let err = h.into_alerts(None).unwrap_err();
        assert!(
            matches!(
                err,
                AlertError::Alert {
                    problem: AlertProblem::Tenant(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn labels_and_annotations_are_bounded() {
        let problem = |h: AlertmanagerWebhook| match h.into_alerts(None) {
            Err(AlertError::Alert { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        let mut h = hook();
        for i in 0..A::MAX_LABELS {
            h.alerts[0].labels.insert(format!("l{i}"), "v".into());
        }
        assert_eq!(problem(h), AlertProblem::TooManyLabels(A::MAX_LABELS + 2));
        let mut h = hook();
        for i in 0..A::MAX_ANNOTATIONS {
            h.alerts[0].annotations.insert(format!("a{i}"), "v".into());
        }
        assert_eq!(
            problem(h),
            AlertProblem::TooManyAnnotations(A::MAX_ANNOTATIONS + 1)
        );
        let mut h = hook();
        h.alerts[0]
            .labels
            .insert("service".into(), "x".repeat(A::MAX_LABEL_VALUE_LEN + 1));
        assert_eq!(problem(h), AlertProblem::LabelValue("service".into()));
        let mut h = hook();
        h.alerts[0].annotations.insert(
            "description".into(),
            "x".repeat(A::MAX_ANNOTATION_VALUE_LEN + 1),
        );
        assert_eq!(
            problem(h),
            AlertProblem::AnnotationValue("description".into())
        );
        let mut h = hook();
        h.alerts[0]
            .labels
            .insert("n".repeat(A::MAX_NAME_LEN + 1), "v".into());
        assert!(matches!(problem(h), AlertProblem::NameLength(n) if n.len() == 64));
        // At the bounds everything passes.
        let mut h = hook();
        h.alerts[0].annotations.insert(
            "description".into(),
            "x".repeat(A::MAX_ANNOTATION_VALUE_LEN),
        );
        h.alerts[0]
            .labels
            .insert("service".into(), "x".repeat(A::MAX_LABEL_VALUE_LEN));
        assert!(h.into_alerts(None).is_ok());
    }
}
