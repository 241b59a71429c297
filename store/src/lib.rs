//! Seismo's result tables behind one `Store` trait: SQLite (embedded) and PostgreSQL.
//!
//! Every write is idempotent, keyed by the deterministic ids of the canonical types, so a
//! record delivered twice by the bus takes effect once.

pub mod access;
pub mod checkpoint;
pub mod explain;
pub mod notify;
mod postgres;
pub mod scan;
mod sqlite;
pub mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use seismo_schemas::{
    Alert, Anomaly, BandPoint, Forecast, Incident, IncidentEvent, IncidentStatus, MetricPoint,
    SeriesId, TransitionError,
};

pub use access::{AccessStore, ApiToken, AuditEntry, AuditQuery, AuditRecord};
pub use checkpoint::{CheckpointStore, PartitionCheckpoint, Position, StoredPartition};
pub use explain::{ExplainStore, LlmCall, StoredExplanation};
pub use notify::{NotificationRecord, NotificationStatus, NotifyStore, Silence};
pub use postgres::{Layout, PgStore, TimescaleMode, TimescaleSupport};
pub use scan::{ScanBatch, ScanRequest, ScanStore, ScanStream};
pub use sqlite::SqliteStore;

/// Errors of the store, split by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// The caller asked for a status change the lifecycle forbids.
    #[error(transparent)]
    IllegalTransition(#[from] TransitionError),
    /// A malformed cursor or filter from the caller.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The database failed; usually worth retrying.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The server cannot give what the configuration asks for.
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether retrying later may succeed: a locked, busy, restarting or unreachable
    /// database, as opposed to a request or data the database refuses outright.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Database(d) => {
                    matches!(d.kind(), sqlx::error::ErrorKind::Other)
                        && d.code().is_none_or(|c| transient_code(&c))
                }
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// Whether a database's error code says a retry may succeed. PostgreSQL's five-character
/// SQLSTATE: a lost connection (08), a rolled-back transaction such as a serialization
/// failure or deadlock (40), too few resources (53), a shutdown or cancel (57), a system
/// error (58), a lock not available (55P03) or a standby during failover (25006); not a
/// data exception (22) or a cardinality violation (21), which fail the same way every
/// time. SQLite's numeric result code: busy (5), locked (6), an I/O error (10) or a full
/// disk (13), in its low byte.
fn transient_code(code: &str) -> bool {
    if code.len() == 5 {
        matches!(&code[..2], "08" | "40" | "53" | "57" | "58") || code == "55P03" || code == "25006"
    } else {
        code.parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13))
    }
}

/// The PostgreSQL role Grafana and other read-only users log in through (as its members,
/// `CREATE ROLE grafana LOGIN PASSWORD '…' IN ROLE seismo_read`): `seismo migrate`
/// creates it when it may and lets it read the result tables and nothing else.
pub const READER_ROLE: &str = "seismo_read";

/// Position in a listing sorted by (time, id) descending; opaque to API clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub ts_ms: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts_ms, self.id)
    }

    pub fn decode(s: &str) -> Result<Cursor> {
        let bad = || StoreError::Invalid(format!("cursor {s:?} is not one this API returned"));
        let (ts, id) = s.split_once('.').ok_or_else(bad)?;
        let ts_ms = ts.parse().map_err(|_| bad())?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad());
        }
        Ok(Cursor {
            ts_ms,
            id: id.to_string(),
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters for listing anomalies, newest first.
#[derive(Debug, Clone, Default)]
pub struct AnomalyQuery {
    pub tenant: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Every (name, value) must match the anomaly's labels.
    pub labels: Vec<(String, String)>,
    pub min_score: Option<f64>,
    pub series_id: Option<SeriesId>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// Filters for listing incidents, newest first.
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    pub tenant: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub status: Option<IncidentStatus>,
    /// Every (name, value) must match the incident's scope.
    pub labels: Vec<(String, String)>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// What correlate writes for one incident: its current state (status excepted: after
/// creation, status belongs to the people driving the incident through the API) and
/// the new members and timeline entries.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentWrite {
    pub incident: Incident,
    pub new_anomaly_ids: Vec<String>,
    pub new_alert_fingerprints: Vec<String>,
    pub events: Vec<IncidentEvent>,
}

/// A row whose stored value cannot be read back.
pub(crate) fn corrupt(what: &str, v: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {v}"))
}

static SKIPPED_ROWS: AtomicU64 = AtomicU64::new(0);

/// Stored rows that listings skipped because they could not be decoded, since the process
/// started (exported as a metric by the API).
pub fn skipped_rows() -> u64 {
    SKIPPED_ROWS.load(Ordering::Relaxed)
}

/// The rows that decode. One bad row (written by an older version, or by hand) must not
/// turn a whole listing into an error; it is logged and counted instead.
pub(crate) fn skip_undecodable<T>(
    table: &'static str,
    rows: impl IntoIterator<Item = Result<T>>,
) -> Vec<T> {
    rows.into_iter()
        .filter_map(|r| match r {
            Ok(v) => Some(v),
            Err(e) => {
                SKIPPED_ROWS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(table, error = %e, "skipping a stored row that cannot be read");
                None
            }
        })
        .collect()
}

/// A page of at most `limit` items from a listing that fetched `limit + 1` rows to learn
/// whether another page exists. Rows that do not decode are skipped, but the cursor comes
/// from the last row read (by `key`, which reads only its sort columns), so a skipped row
/// can neither end the walk early nor make it repeat itself.
pub(crate) fn page_skipping<R, T>(
    mut rows: Vec<R>,
    limit: usize,
    table: &'static str,
    decode: impl Fn(&R) -> Result<T>,
    key: impl Fn(&R) -> Result<Cursor>,
) -> Result<Page<T>> {
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|r| key(r).map(|c| c.encode()))
            .transpose()?
    } else {
        None
    };
    Ok(Page {
        items: skip_undecodable(table, rows.iter().map(decode)),
        next_cursor,
    })
}

/// The timeline entry of a lifecycle step; `seq` (the incident's event count) keeps its id
/// deterministic.
pub(crate) fn status_changed_event(
    id: &str,
    seq: i64,
    from: IncidentStatus,
    to: IncidentStatus,
    actor: &str,
    note: &str,
    now: DateTime<Utc>,
) -> IncidentEvent {
    let message = if note.is_empty() {
        format!("{from} → {to}")
    } else {
        format!("{from} → {to}: {note}")
    };
    IncidentEvent {
        id: format!("{id}-s{seq}"),
        incident_id: id.to_string(),
        ts: now,
        kind: seismo_schemas::IncidentEventKind::StatusChanged,
        actor: actor.to_string(),
        message,
        from_status: Some(from),
        to_status: Some(to),
    }
}

/// The tables `Store::counts` reports, with where each count goes.
pub(crate) fn count_slots(c: &mut TableCounts) -> [(&'static str, &mut u64); 6] {
    [
        ("series", &mut c.series),
        ("metric_points", &mut c.metric_points),
        ("anomalies", &mut c.anomalies),
        ("forecasts", &mut c.forecasts),
        ("alerts", &mut c.alerts),
        ("incidents", &mut c.incidents),
    ]
}

/// Counts of rows, for summaries and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableCounts {
    pub series: u64,
    pub metric_points: u64,
    pub anomalies: u64,
    pub forecasts: u64,
    pub alerts: u64,
    pub incidents: u64,
}

/// The result tables, with the checkpoints and the API's tokens and audit log beside them.
#[async_trait]
pub trait Store:
    CheckpointStore + AccessStore + NotifyStore + ExplainStore + ScanStore + Send + Sync + 'static
{
    /// Creates or upgrades the tables.
    async fn migrate(&self) -> Result<()>;

    /// Writes raw points (and their series), skipping ones already stored.
    async fn insert_points(&self, points: &[MetricPoint]) -> Result<u64>;
    async fn insert_anomalies(&self, anomalies: &[Anomaly]) -> Result<u64>;
    async fn insert_forecasts(&self, forecasts: &[Forecast]) -> Result<u64>;
    /// Writes the detector's sampled expected bands; a row already stored is kept.
    async fn insert_bands(&self, bands: &[BandPoint]) -> Result<u64>;
    async fn insert_alerts(&self, alerts: &[Alert]) -> Result<u64>;
    /// Applies correlate's incident changes in one transaction.
    async fn write_incidents(&self, writes: &[IncidentWrite]) -> Result<()>;

    async fn list_anomalies(&self, q: &AnomalyQuery) -> Result<Page<Anomaly>>;
    async fn anomalies_by_id(&self, tenant: &str, ids: &[String]) -> Result<Vec<Anomaly>>;
    async fn list_incidents(&self, q: &IncidentQuery) -> Result<Page<Incident>>;
    async fn get_incident(&self, tenant: &str, id: &str) -> Result<Incident>;
    async fn incident_events(&self, tenant: &str, id: &str) -> Result<Vec<IncidentEvent>>;
    /// Current status of each incident that exists.
    async fn incident_statuses(&self, ids: &[String]) -> Result<HashMap<String, IncidentStatus>>;
    /// Moves an incident through its lifecycle, refusing illegal steps, and records the
    /// step on its timeline.
    async fn transition_incident(
        &self,
        tenant: &str,
        id: &str,
        to: IncidentStatus,
        actor: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<Incident>;

    /// A status step the engine takes on its own (an incident resolving itself when its
    /// signals clear, reopening when they recur), recorded as `event` (its id makes a
    /// replay a no-op). It applies only while the stored status is one of `from`, so a
    /// person's choice wins. Returns the incident after the step when it applied, now or
    /// before (so a replay announces it again), `None` when it did not.
    async fn engine_transition(
        &self,
        tenant: &str,
        id: &str,
        from: &[IncidentStatus],
        to: IncidentStatus,
        event: &IncidentEvent,
    ) -> Result<Option<Incident>>;

    async fn counts(&self) -> Result<TableCounts>;

    /// Stored points of one series in [from, to), oldest first.
    async fn points(&self, series: SeriesId, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, f64)>>;

    /// The newest `n` stored points of one series in [from, to), oldest first: a window
    /// longer than an answer may hold is cut in the database, not after reading it whole.
    async fn newest_points(
        &self,
        series: SeriesId,
        from_ms: i64,
        to_ms: i64,
        n: usize,
    ) -> Result<Vec<(i64, f64)>>;

    /// Forecast rows of one of `tenant`'s series with times in [from, to), by time: every
    /// forecast run's (oldest run first), or with `latest` only the newest run's. At most
    /// `MAX_FORECAST_ROWS`, the newest runs' when more match.
    async fn forecasts(
        &self,
        tenant: &str,
        series: SeriesId,
        from_ms: i64,
        to_ms: i64,
        latest: bool,
    ) -> Result<Vec<Forecast>>;

    /// The expected band of one of `tenant`'s series with times in [from, to), oldest
    /// first; at most `MAX_FORECAST_ROWS`, the newest when more match.
    async fn bands(
        &self,
        tenant: &str,
        series: SeriesId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<BandPoint>>;

    /// A tenant's series (id, metric name, labels) matching `q`, by id.
    async fn list_series(&self, q: &SeriesQuery) -> Result<Vec<SeriesInfo>>;
}

/// Every incident of `tenant`, following the cursor a page of 1,000 at a time, for
/// reports and evaluations that need them all.
pub async fn all_incidents(store: &dyn Store, tenant: &str) -> Result<Vec<Incident>> {
    let mut query = IncidentQuery {
        tenant: tenant.to_string(),
        limit: 1000,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let page = store.list_incidents(&query).await?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => query.cursor = Some(Cursor::decode(&c)?),
            None => return Ok(out),
        }
    }
}

/// Most forecast rows one `Store::forecasts` call returns.
pub const MAX_FORECAST_ROWS: usize = 10_000;

/// Filters for listing series, by id.
#[derive(Debug, Clone, Default)]
pub struct SeriesQuery {
    pub tenant: String,
    /// Only this series.
    pub series_id: Option<SeriesId>,
    /// Only series of this metric name.
    pub name: Option<String>,
    /// Every (name, value) must match the series' labels.
    pub labels: Vec<(String, String)>,
    /// Only series with ids above this one (the next page).
    pub after: Option<SeriesId>,
    pub limit: usize,
}

/// One stored series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesInfo {
    pub series_id: SeriesId,
    pub name: String,
    pub labels: seismo_schemas::Labels,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;

    #[tokio::test]
    async fn a_refused_statement_is_not_retried_and_a_busy_database_is() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut a = opts.connect().await.unwrap();
        let mut b = opts.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut a)
            .await
            .unwrap();
        let e = sqlx::query("SELECT json_extract('not json', '$.a')")
            .execute(&mut a)
            .await
            .unwrap_err();
        let e = StoreError::from(e);
        assert!(!e.is_transient(), "{e}");
        // Another connection holds the write lock: SQLITE_BUSY, worth retrying.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .unwrap();
        let e = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut b)
            .await
            .unwrap_err();
        let e = StoreError::from(e);
        assert!(e.is_transient(), "{e}");
    }
}
