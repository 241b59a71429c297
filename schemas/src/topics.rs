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

/// Headers Seismo's stages put on records of `seismo.anomalies`, so correlate can merge
/// the anomalies of every detect partition in one deterministic, event-time order.
pub mod headers {
    /// The `seismo.points` partition whose detector produced the record; for the
    /// forecast stage's predictions, [`FORECAST_SOURCE_BASE`] plus that partition.
    pub const SOURCE_PARTITION: &str = "seismo-source-partition";
    /// Source numbers from here on are forecast partitions. Correlate waits for one only
    /// once it has announced a watermark, so a deployment without forecast never stalls.
    pub const FORECAST_SOURCE_BASE: u32 = 1 << 20;
    /// `OFFSET.INDEX`: the input record and the position within its outputs, unique and
    /// increasing per source partition, so replays are recognised and dropped.
    pub const SOURCE_SEQ: &str = "seismo-source-seq";
    /// The event time (UTC ms) at which correlate takes the anomaly in: its own time, or
    /// the source's last watermark if that is later (a late anomaly).
    pub const MERGE_AT: &str = "seismo-merge-at";
    /// On a control record with no payload: the source partition will send nothing with
    /// a merge time before this (UTC ms).
    pub const WATERMARK: &str = "seismo-watermark";
}
