//! Prometheus metrics of the ingest stage (bounded labels only).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, register_int_counter, register_int_counter_vec};

pub static POINTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("seismo_ingest_points_total", "Points accepted by ingest")
        .expect("metric")
});
pub static REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("seismo_ingest_rejected_total", "Lines refused by ingest")
        .expect("metric")
});
pub static LATE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_ingest_late_points_total",
        "Points accepted over HTTP though older than their series' newest bucket: stored, not scored (reported in the answer)"
    )
    .expect("metric")
});
pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_ingest_refused_total",
        "Refusals by the ingest limit that refused: points for per-point limits (time window, series), requests or records for the others",
        &["limit"]
    )
    .expect("metric")
});
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seismo_ingest_http_requests_total",
        "Ingest HTTP requests by endpoint and status code",
        &["endpoint", "code"]
    )
    .expect("metric")
});
pub static STALE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seismo_ingest_stale_markers_total",
        "Prometheus staleness markers skipped in remote_write input"
    )
    .expect("metric")
});
