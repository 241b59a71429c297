//! Names of the bus topics that connect the stages (Kafka topics in distributed mode).

/// Raw metric records from producers: JSON lines of `MetricPoint` (or remote_write).
pub const METRICS: &str = "seismo.metrics";
/// Alertmanager webhook payloads and canonical alerts.
pub const ALERTS: &str = "seismo.alerts";
/// Validated points, keyed by entity (tenant and `host` label) or else by series id; see
/// `MetricPoint::points_key`.
pub const POINTS: &str = "seismo.points";
/// Scored anomalies, keyed by correlation scope.
pub const ANOMALIES: &str = "seismo.anomalies";
/// Incident changes, keyed by incident id, for notifiers.
pub const INCIDENTS: &str = "seismo.incidents";
/// Records that could not be parsed, with the reason.
pub const DLQ: &str = "seismo.dlq";

/// Every topic, for creating them.
pub const ALL: [&str; 6] = [METRICS, ALERTS, POINTS, ANOMALIES, INCIDENTS, DLQ];
