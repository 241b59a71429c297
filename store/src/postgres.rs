//! The PostgreSQL store of distributed mode: TimescaleDB when present, native partitions otherwise.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use seismo_schemas::{
    Alert, AlertStatus, Anomaly, AnomalyKind, BandPoint, Forecast, Incident, IncidentEvent,
    IncidentEventKind, IncidentStatus, MetricPoint, SeriesId, Severity,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use crate::{
    AnomalyQuery, Cursor, IncidentQuery, IncidentWrite, Page, READER_ROLE, Result, Store,
    StoreError, TableCounts, corrupt, count_slots, page_skipping, skip_undecodable,
    status_changed_event,
};

/// PostgreSQL accepts at most 65535 bound parameters per statement.
const MAX_PARAMS: usize = 60_000;
// Multi-row INSERTs are built with as many rows as a batch holds, so their text differs from
// batch to batch. Only a full chunk, whose text repeats, is kept as a prepared statement
// (`persistent`); cached, every row count seen became one more prepared statement per
// connection (up to sqlx's 100), each as large as its rows: a month of one host's points
// left ~100 MB of them in memory.

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Whether to use TimescaleDB (`storage.timescaledb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimescaleMode {
    /// Use the extension when the server has it; native partitioning otherwise.
    #[default]
    Auto,
    /// Fail the migration when the extension is missing.
    Require,
    /// Native partitioning even where the extension exists.
    Off,
}

impl TimescaleMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "require" => Some(Self::Require),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Require => "require",
            Self::Off => "off",
        }
    }
}

/// Whether a database can use TimescaleDB (`PgStore::timescale_support`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimescaleSupport {
    /// The server has no timescaledb extension.
    Missing,
    /// The extension is installed but cannot be created here: the server's message.
    Unusable(String),
    /// The extension exists in this database or can be created.
    Usable,
}

/// How far back the 1-minute rollup's refresh reaches, as TimescaleDB prints the interval.
const CAGG_START_OFFSET: &str = "29 days";

/// What to change on a server whose TimescaleDB is installed but unusable.
const PRELOAD_HINT: &str = "add shared_preload_libraries = 'timescaledb' to postgresql.conf \
     and restart PostgreSQL (and give the role the right to create extensions)";

/// How the time-series tables of a migrated database are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// TimescaleDB hypertables.
    Hypertables,
    /// Native range partitions by day, created on demand before writes.
    NativePartitions,
}

/// Distributed store on PostgreSQL.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    timescale: TimescaleMode,
    /// Series already written; a cache only (losing it costs a redundant upsert).
    known_series: Mutex<HashSet<SeriesId>>,
    /// Days whose native partitions exist, per table; a cache only.
    known_days: Mutex<HashSet<(&'static str, NaiveDate)>>,
    layout: Mutex<Option<Layout>>,
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn day_of(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`).
    pub async fn connect(url: &str, timescale: TimescaleMode) -> Result<Self> {
        // Notices ("already exists, skipping") are expected on every idempotent DDL and
        // would flood the logs.
        let opts: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .options([("client_min_messages", "warning")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await?;
        Ok(PgStore {
            pool,
            timescale,
            known_series: Mutex::default(),
            known_days: Mutex::default(),
            layout: Mutex::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether this database can use TimescaleDB. The extension's files may be installed
    /// while the server cannot load it (it must be in `shared_preload_libraries`), or the
    /// role may not create it; the probe creates it in a transaction that is rolled back,
    /// on a connection that is closed afterwards, so nothing of the attempt remains.
    pub async fn timescale_support(&self) -> Result<TimescaleSupport> {
        let installed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !installed {
            return Ok(TimescaleSupport::Missing);
        }
        let created: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
        )
        .fetch_one(&self.pool)
        .await?;
        if created {
            return Ok(TimescaleSupport::Usable);
        }
        let mut conn = self.pool.acquire().await?.detach();
        let mut tx = sqlx::Connection::begin(&mut conn).await?;
        let probe = sqlx::query("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .execute(&mut *tx)
            .await;
        let _ = tx.rollback().await;
        let _ = sqlx::Connection::close(conn).await;
        Ok(match probe {
            Ok(_) => TimescaleSupport::Usable,
            // Another process migrating the same database created it meanwhile.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => {
                TimescaleSupport::Usable
            }
            Err(e) => TimescaleSupport::Unusable(match e.as_database_error() {
                Some(d) => d.message().to_string(),
                None => e.to_string(),
            }),
        })
    }

    /// How the migrated tables are laid out.
    pub async fn layout(&self) -> Result<Layout> {
        if let Some(l) = *self.layout.lock().expect("layout lock") {
            return Ok(l);
        }
        let partitioned: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'metric_points'::regclass)",
        )
        .fetch_one(&self.pool)
        .await?;
        let l = if partitioned {
            Layout::NativePartitions
        } else {
            Layout::Hypertables
        };
        *self.layout.lock().expect("layout lock") = Some(l);
        Ok(l)
    }

    /// Creates the native partitions that rows at `times` of `table` need.
    async fn ensure_partitions(
        &self,
        table: &'static str,
        times: impl Iterator<Item = DateTime<Utc>>,
    ) -> Result<()> {
        if self.layout().await? != Layout::NativePartitions {
            return Ok(());
        }
        let days: BTreeSet<NaiveDate> = {
            let known = self.known_days.lock().expect("days lock");
            times
                .map(day_of)
                .filter(|d| !known.contains(&(table, *d)))
                .collect()
        };
        let (Some(first), Some(last)) = (days.first(), days.last()) else {
            return Ok(());
        };
        let at = |d: &NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
        sqlx::query("SELECT seismo_ensure_partitions($1, $2, $3)")
            .bind(table)
            .bind(at(first))
            .bind(at(last))
            .execute(&self.pool)
            .await?;
        let mut known = self.known_days.lock().expect("days lock");
        let mut d = *first;
        while d <= *last {
            known.insert((table, d));
            d = d.succ_opt().expect("date in range");
        }
        Ok(())
    }
}

fn anomaly_from_row(r: &PgRow) -> Result<Anomaly> {
    let severity: String = r.try_get("severity")?;
    let kind: String = r.try_get("kind")?;
    Ok(Anomaly {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        series_id: r.try_get::<i64, _>("series_id")? as u64,
        name: r.try_get("name")?,
        labels: r.try_get::<Json<_>, _>("labels")?.0,
        ts: r.try_get("time")?,
        observed: r.try_get("observed")?,
        expected: r.try_get("expected")?,
        lower: r.try_get("lower")?,
        upper: r.try_get("upper")?,
        score: r.try_get("score")?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        kind: AnomalyKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        detector: r.try_get("detector")?,
        explanation: r.try_get::<Json<_>, _>("explanation")?.0,
    })
}

fn incident_from_row(r: &PgRow) -> Result<Incident> {
    let status: String = r.try_get("status")?;
    let severity: String = r.try_get("severity")?;
    let mut anomaly_ids: Vec<String> = r.try_get("anomaly_ids")?;
    let mut alert_fingerprints: Vec<String> = r.try_get("alert_fingerprints")?;
    anomaly_ids.sort();
    alert_fingerprints.sort();
    Ok(Incident {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        title: r.try_get("title")?,
        status: IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        started_at: r.try_get("started_at")?,
        updated_at: r.try_get("updated_at")?,
        resolved_at: r.try_get("resolved_at")?,
        scope: r.try_get::<Json<_>, _>("scope")?.0,
        root_cause_candidates: r.try_get::<Json<_>, _>("root_cause_candidates")?.0,
        anomaly_ids,
        alert_fingerprints,
    })
}

fn event_from_row(r: &PgRow) -> Result<IncidentEvent> {
    let kind: String = r.try_get("kind")?;
    let status = |col: &str| -> Result<Option<IncidentStatus>> {
        match r.try_get::<Option<String>, _>(col)? {
            None => Ok(None),
            Some(s) => IncidentStatus::parse(&s)
                .map(Some)
                .ok_or_else(|| corrupt(col, s)),
        }
    };
    Ok(IncidentEvent {
        id: r.try_get("id")?,
        incident_id: r.try_get("incident_id")?,
        ts: r.try_get("time")?,
        kind: IncidentEventKind::parse(&kind).ok_or_else(|| corrupt("event kind", &kind))?,
        actor: r.try_get("actor")?,
        message: r.try_get("message")?,
        from_status: status("from_status")?,
        to_status: status("to_status")?,
    })
}

const INCIDENT_SELECT: &str = "SELECT i.*, \
    ARRAY(SELECT anomaly_id FROM incident_anomalies a WHERE a.incident_id = i.id) AS anomaly_ids, \
    ARRAY(SELECT fingerprint FROM incident_alerts f WHERE f.incident_id = i.id) AS alert_fingerprints \
    FROM incidents i";

fn push_events<'a>(qb: &mut QueryBuilder<'a, Postgres>, events: &'a [IncidentEvent]) {
    qb.push(
        "INSERT INTO incident_events (id, incident_id, time, kind, actor, message, from_status, to_status) ",
    );
    qb.push_values(events, |mut b, e| {
        b.push_bind(&e.id)
            .push_bind(&e.incident_id)
            .push_bind(e.ts)
            .push_bind(e.kind.as_str())
            .push_bind(&e.actor)
            .push_bind(&e.message)
            .push_bind(e.from_status.map(|s| s.as_str()))
            .push_bind(e.to_status.map(|s| s.as_str()));
    });
    qb.push(" ON CONFLICT (id) DO NOTHING");
}

fn check_label(name: &str) -> Result<()> {
    seismo_schemas::validate_label_name(name).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// PostgreSQL's binary COPY signature, flags and header-extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// Appends one binary COPY tuple of a point: (int8 series_id, timestamptz time, float8
/// value). Binary spares the server parsing text numbers and dates, the larger part of a
/// text COPY's cost, and carries every f64 exactly.
fn copy_row(buf: &mut Vec<u8>, id: i64, ms: i64, value: f64) {
    buf.extend_from_slice(&3i16.to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&((ms - PG_EPOCH_MS) * 1000).to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&value.to_bits().to_be_bytes());
}

/// Sends a whole binary COPY body; returns the rows copied.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    body: &[u8],
) -> std::result::Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(body).await?;
    copy.finish().await
}

/// Whether an error is PostgreSQL's unique_violation (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Batches at least this big are written by several concurrent transactions.
const PARALLEL_POINTS: usize = 4096;
/// Concurrent transactions per big batch.
const WRITERS: usize = 2;

impl PgStore {
    async fn copy_points(&self, points: &[&MetricPoint]) -> Result<u64> {
        if points.is_empty() {
            return Ok(0);
        }
        let ids: Vec<SeriesId> = points.iter().map(|p| p.series_id()).collect();
        let mut new_series: Vec<(SeriesId, &MetricPoint)> = {
            let known = self.known_series.lock().expect("series cache lock");
            ids.iter()
                .zip(points)
                .filter(|(id, _)| !known.contains(id))
                .map(|(id, p)| (*id, *p))
                .collect()
        };
        new_series.sort_by_key(|(id, _)| *id);
        new_series.dedup_by_key(|(id, _)| *id);
        let mut tx = self.pool.begin().await?;
        for chunk in new_series.chunks(MAX_PARAMS / 5) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO series (series_id, tenant, name, labels, first_seen) ",
            );
            qb.push_values(chunk, |mut b, (id, p)| {
                b.push_bind(*id as i64)
                    .push_bind(&p.tenant)
                    .push_bind(&p.name)
                    .push_bind(Json(&p.labels))
                    .push_bind(from_ms(p.ts));
            });
            qb.push(" ON CONFLICT (series_id) DO NOTHING");
            qb.build()
                .persistent(chunk.len() == MAX_PARAMS / 5)
                .execute(&mut *tx)
                .await?;
        }
        // Rows go in key order: concurrent writers that share keys (a replay overlapping
        // a live batch) then wait on each other in one order and cannot deadlock, and
        // the primary key index is filled page by page.
        let mut rows: Vec<(i64, i64, f64)> = ids
            .iter()
            .zip(points)
            .map(|(id, p)| (*id as i64, p.ts, p.value))
            .collect();
        rows.sort_unstable_by_key(|r| (r.0, r.1));
        let mut buf = Vec::with_capacity(COPY_HEADER.len() + points.len() * 38 + 2);
        buf.extend_from_slice(COPY_HEADER);
        for (id, ts, value) in rows {
            copy_row(&mut buf, id, ts, value);
        }
        buf.extend_from_slice(&(-1i16).to_be_bytes());
        // COPY straight into metric_points is PostgreSQL's fastest path, but it cannot skip
        // duplicates. Replays are rare (a crash between store and commit), so COPY is tried
        // first inside a savepoint; only when a point is already stored does the batch take
        // the slower idempotent path: COPY into a transaction-local staging table, then
        // INSERT … ON CONFLICT DO NOTHING.
        let written = {
            let mut sp = sqlx::Connection::begin(&mut *tx).await?;
            match copy_in(
                &mut sp,
                "COPY metric_points (series_id, time, value) FROM STDIN (FORMAT binary)",
                &buf,
            )
            .await
            {
                Ok(n) => {
                    sp.commit().await?;
                    n
                }
                Err(e) if is_unique_violation(&e) => {
                    sp.rollback().await?;
                    sqlx::query(
                        "CREATE TEMP TABLE IF NOT EXISTS points_stage (series_id BIGINT, time TIMESTAMPTZ, value DOUBLE PRECISION) \
                         ON COMMIT DELETE ROWS",
                    )
                    .execute(&mut *tx)
                    .await?;
                    copy_in(
                        &mut tx,
                        "COPY points_stage (series_id, time, value) FROM STDIN (FORMAT binary)",
                        &buf,
                    )
                    .await?;
                    sqlx::query(
                        "INSERT INTO metric_points (series_id, time, value) \
                         SELECT series_id, time, value FROM points_stage \
                         ON CONFLICT (series_id, time) DO NOTHING",
                    )
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                }
                Err(e) => return Err(e.into()),
            }
        };
        tx.commit().await?;
        self.known_series
            .lock()
            .expect("series cache lock")
            .extend(new_series.iter().map(|(id, _)| *id));
        Ok(written)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        // Decided here, where the server's reason can be reported: the migration's DO
        // block would otherwise try `CREATE EXTENSION` and fail on a server that has the
        // files but does not preload the library.
        let mode = match self.timescale {
            TimescaleMode::Off => TimescaleMode::Off,
            wanted => match self.timescale_support().await? {
                TimescaleSupport::Usable => wanted,
                TimescaleSupport::Missing => wanted,
                TimescaleSupport::Unusable(why) if wanted == TimescaleMode::Require => {
                    return Err(StoreError::Config(format!(
                        "storage.timescaledb = require, but the timescaledb extension is \
                         installed and cannot be used: {why}. To use it, {PRELOAD_HINT}"
                    )));
                }
                TimescaleSupport::Unusable(why) => {
                    tracing::warn!(
                        "storage.timescaledb = auto: the timescaledb extension is installed but \
                         cannot be used ({why}); a new database gets native partitions. To use \
                         TimescaleDB, {PRELOAD_HINT}, then migrate a new database"
                    );
                    TimescaleMode::Off
                }
            },
        };
        let mut conn = self.pool.acquire().await?;
        // Read by the migration's DO block; session-local, so nothing else sees it.
        sqlx::query("SELECT set_config('seismo.timescaledb', $1, false)")
            .bind(mode.as_str())
            .execute(&mut *conn)
            .await?;
        MIGRATOR.run_direct(&mut *conn).await?;
        *self.layout.lock().expect("layout lock") = None;
        if self.layout().await? == Layout::Hypertables {
            // A continuous aggregate cannot be created inside a transaction, so it lives
            // here rather than in the migration files; IF NOT EXISTS keeps it idempotent.
            sqlx::query(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS metric_points_1m \
                 WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS \
                 SELECT series_id, time_bucket(INTERVAL '1 minute', time) AS bucket, \
                 avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count \
                 FROM metric_points GROUP BY 1, 2 WITH NO DATA",
            )
            .execute(&mut *conn)
            .await?;
            // Real-time: minutes not materialised yet are computed from the raw rows on
            // read, so a panel shows fresh data at once. (Databases migrated before this
            // was set get it here.)
            sqlx::query(
                "ALTER MATERIALIZED VIEW metric_points_1m SET (timescaledb.materialized_only = false)",
            )
            .execute(&mut *conn)
            .await?;
            // The refresh covers 29 days back, so points backfilled or replayed below
            // what was already materialised are aggregated within a minute (a policy
            // over the last hour left them out of the rollup for good). It stops short
            // of the raw table's 30-day retention: a refresh over dropped chunks would
            // delete their minutes from the rollup, which keeps a year.
            // Matched through the aggregate's view: before TimescaleDB 2.20 the jobs view
            // named its materialisation hypertable instead.
            let policy: Option<Option<String>> = sqlx::query_scalar(
                "SELECT j.config->>'start_offset' FROM timescaledb_information.jobs j \
                 JOIN timescaledb_information.continuous_aggregates c \
                 ON j.hypertable_name IN (c.view_name, c.materialization_hypertable_name) \
                 WHERE j.proc_name = 'policy_refresh_continuous_aggregate' \
                 AND c.view_name = 'metric_points_1m'",
            )
            .fetch_optional(&mut *conn)
            .await?;
            if policy
                .as_ref()
                .is_some_and(|p| p.as_deref() != Some(CAGG_START_OFFSET))
            {
                sqlx::query("SELECT remove_continuous_aggregate_policy('metric_points_1m')")
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query(&format!(
                "SELECT add_continuous_aggregate_policy('metric_points_1m', \
                 start_offset => INTERVAL '{CAGG_START_OFFSET}', end_offset => INTERVAL '1 minute', \
                 schedule_interval => INTERVAL '1 minute', if_not_exists => true)"
            ))
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "SELECT add_retention_policy('metric_points_1m', INTERVAL '365 days', if_not_exists => true)",
            )
            .execute(&mut *conn)
            .await?;
            tracing::info!("storage: TimescaleDB hypertables");
        } else {
            tracing::info!("storage: native PostgreSQL partitions (timescaledb not in use)");
        }
        grant_readers(&mut conn).await
    }

    async fn insert_points(&self, points: &[MetricPoint]) -> Result<u64> {
        if points.is_empty() {
            return Ok(0);
        }
        self.ensure_partitions("metric_points", points.iter().map(|p| from_ms(p.ts)))
            .await?;
        if points.len() < PARALLEL_POINTS {
            return self.copy_points(&points.iter().collect::<Vec<_>>()).await;
        }
        // One backend inserts about 200k points/s; big batches are split by series into
        // concurrent transactions so the server can use more cores. Each part is
        // idempotent, so a failure of one part is repaired by the caller's retry.
        let mut parts: Vec<Vec<&MetricPoint>> = vec![Vec::new(); WRITERS];
        for p in points {
            parts[(p.series_id() % WRITERS as u64) as usize].push(p);
        }
        let results =
            futures_util::future::join_all(parts.iter().map(|part| self.copy_points(part))).await;
        let mut written = 0;
        for r in results {
            written += r?;
        }
        Ok(written)
    }

    async fn insert_anomalies(&self, anomalies: &[Anomaly]) -> Result<u64> {
        if anomalies.is_empty() {
            return Ok(0);
        }
        self.ensure_partitions("anomalies", anomalies.iter().map(|a| a.ts))
            .await?;
        let mut written = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in anomalies.chunks(MAX_PARAMS / 15) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO anomalies (id, tenant, series_id, name, labels, time, observed, expected, \
                 lower, upper, score, severity, kind, detector, explanation) ",
            );
            qb.push_values(chunk, |mut b, a| {
                b.push_bind(&a.id)
                    .push_bind(&a.tenant)
                    .push_bind(a.series_id as i64)
                    .push_bind(&a.name)
                    .push_bind(Json(&a.labels))
                    .push_bind(a.ts)
                    .push_bind(a.observed)
                    .push_bind(a.expected)
                    .push_bind(a.lower)
                    .push_bind(a.upper)
                    .push_bind(a.score)
                    .push_bind(a.severity.as_str())
                    .push_bind(a.kind.as_str())
                    .push_bind(&a.detector)
                    .push_bind(Json(&a.explanation));
            });
            qb.push(" ON CONFLICT (id, time) DO NOTHING");
            written += qb
                .build()
                .persistent(chunk.len() == MAX_PARAMS / 15)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn insert_forecasts(&self, forecasts: &[Forecast]) -> Result<u64> {
        if forecasts.is_empty() {
            return Ok(0);
        }
        self.ensure_partitions("forecasts", forecasts.iter().map(|f| f.ts))
            .await?;
        let mut written = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in forecasts.chunks(MAX_PARAMS / 7) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO forecasts (series_id, generated_at, time, yhat, lower, upper, model) ",
            );
            qb.push_values(chunk, |mut b, f| {
                b.push_bind(f.series_id as i64)
                    .push_bind(f.generated_at)
                    .push_bind(f.ts)
                    .push_bind(f.yhat)
                    .push_bind(f.lower)
                    .push_bind(f.upper)
                    .push_bind(&f.model);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            written += qb
                .build()
                .persistent(chunk.len() == MAX_PARAMS / 7)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn insert_bands(&self, bands: &[BandPoint]) -> Result<u64> {
        if bands.is_empty() {
            return Ok(0);
        }
        self.ensure_partitions("bands", bands.iter().map(|b| b.ts))
            .await?;
        let mut written = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in bands.chunks(MAX_PARAMS / 5) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO bands (series_id, time, expected, lower, upper) ",
            );
            qb.push_values(chunk, |mut b, p| {
                b.push_bind(p.series_id as i64)
                    .push_bind(p.ts)
                    .push_bind(p.expected)
                    .push_bind(p.lower)
                    .push_bind(p.upper);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            written += qb
                .build()
                .persistent(chunk.len() == MAX_PARAMS / 5)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn insert_alerts(&self, alerts: &[Alert]) -> Result<u64> {
        // One statement may not update a row twice ("ON CONFLICT DO UPDATE command cannot
        // affect row a second time"): an alert that fired and resolved within one batch
        // is written once, in its last state, as consecutive upserts would leave it.
        let mut last: HashMap<(&str, &str, DateTime<Utc>), usize> = HashMap::new();
        for (i, a) in alerts.iter().enumerate() {
            last.insert((&a.tenant, &a.fingerprint, a.starts_at), i);
        }
        let alerts: Vec<&Alert> = alerts
            .iter()
            .enumerate()
            .filter(|(i, a)| last[&(a.tenant.as_str(), a.fingerprint.as_str(), a.starts_at)] == *i)
            .map(|(_, a)| a)
            .collect();
        let mut written = 0;
        for chunk in alerts.chunks(MAX_PARAMS / 8) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO alerts (tenant, fingerprint, starts_at, status, ends_at, labels, annotations, source) ",
            );
            qb.push_values(chunk, |mut b, a| {
                b.push_bind(&a.tenant)
                    .push_bind(&a.fingerprint)
                    .push_bind(a.starts_at)
                    .push_bind(if a.status == AlertStatus::Firing {
                        "firing"
                    } else {
                        "resolved"
                    })
                    .push_bind(a.ends_at)
                    .push_bind(Json(&a.labels))
                    .push_bind(Json(&a.annotations))
                    .push_bind(&a.source);
            });
            qb.push(
                " ON CONFLICT (tenant, fingerprint, starts_at) DO UPDATE SET status = excluded.status, \
                 ends_at = excluded.ends_at, annotations = excluded.annotations",
            );
            written += qb
                .build()
                .persistent(chunk.len() == MAX_PARAMS / 8)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(written)
    }

    async fn write_incidents(&self, writes: &[IncidentWrite]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for w in writes {
            let i = &w.incident;
            sqlx::query(
                "INSERT INTO incidents (id, tenant, title, status, severity, started_at, updated_at, \
                 resolved_at, scope, root_cause_candidates) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, severity = excluded.severity, \
                 updated_at = greatest(incidents.updated_at, excluded.updated_at), scope = excluded.scope, \
                 root_cause_candidates = excluded.root_cause_candidates",
            )
            .bind(&i.id)
            .bind(&i.tenant)
            .bind(&i.title)
            .bind(i.status.as_str())
            .bind(i.severity.as_str())
            .bind(i.started_at)
            .bind(i.updated_at)
            .bind(i.resolved_at)
            .bind(Json(&i.scope))
            .bind(Json(&i.root_cause_candidates))
            .execute(&mut *tx)
            .await?;
            for chunk in w.new_anomaly_ids.chunks(MAX_PARAMS / 2) {
                let mut qb = QueryBuilder::<Postgres>::new(
                    "INSERT INTO incident_anomalies (incident_id, anomaly_id) ",
                );
                qb.push_values(chunk, |mut b, a| {
                    b.push_bind(&i.id).push_bind(a);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build()
                    .persistent(chunk.len() == MAX_PARAMS / 2)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in w.new_alert_fingerprints.chunks(MAX_PARAMS / 2) {
                let mut qb = QueryBuilder::<Postgres>::new(
                    "INSERT INTO incident_alerts (incident_id, fingerprint) ",
                );
                qb.push_values(chunk, |mut b, f| {
                    b.push_bind(&i.id).push_bind(f);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build()
                    .persistent(chunk.len() == MAX_PARAMS / 2)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in w.events.chunks(MAX_PARAMS / 8) {
                let mut qb = QueryBuilder::new("");
                push_events(&mut qb, chunk);
                qb.build()
                    .persistent(chunk.len() == MAX_PARAMS / 8)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_anomalies(&self, q: &AnomalyQuery) -> Result<Page<Anomaly>> {
        let mut qb = QueryBuilder::<Postgres>::new("SELECT * FROM anomalies WHERE tenant = ");
        qb.push_bind(&q.tenant);
        if let Some(from) = q.from {
            qb.push(" AND time >= ").push_bind(from);
        }
        if let Some(to) = q.to {
            qb.push(" AND time < ").push_bind(to);
        }
        if let Some(min) = q.min_score {
            qb.push(" AND score >= ").push_bind(min);
        }
        if let Some(s) = q.series_id {
            qb.push(" AND series_id = ").push_bind(s as i64);
        }
        for (k, v) in &q.labels {
            check_label(k)?;
            qb.push(" AND labels ->> ")
                .push_bind(k)
                .push(" = ")
                .push_bind(v);
        }
        if let Some(c) = &q.cursor {
            let t = from_ms(c.ts_ms);
            qb.push(" AND (time < ")
                .push_bind(t)
                .push(" OR (time = ")
                .push_bind(t)
                .push(" AND id < ")
                .push_bind(&c.id)
                .push("))");
        }
        qb.push(" ORDER BY time DESC, id DESC LIMIT ")
            .push_bind(q.limit as i64 + 1);
        let rows = qb.build().fetch_all(&self.pool).await?;
        page_skipping(rows, q.limit, "anomalies", anomaly_from_row, |r| {
            Ok(Cursor {
                ts_ms: r.try_get::<DateTime<Utc>, _>("time")?.timestamp_millis(),
                id: r.try_get("id")?,
            })
        })
    }

    async fn anomalies_by_id(&self, tenant: &str, ids: &[String]) -> Result<Vec<Anomaly>> {
        let rows = sqlx::query(
            "SELECT * FROM anomalies WHERE tenant = $1 AND id = ANY($2) ORDER BY time, id",
        )
        .bind(tenant)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(skip_undecodable(
            "anomalies",
            rows.iter().map(anomaly_from_row),
        ))
    }

    async fn list_incidents(&self, q: &IncidentQuery) -> Result<Page<Incident>> {
        let mut qb = QueryBuilder::<Postgres>::new(INCIDENT_SELECT);
        qb.push(" WHERE tenant = ").push_bind(&q.tenant);
        if let Some(from) = q.from {
            qb.push(" AND started_at >= ").push_bind(from);
        }
        if let Some(to) = q.to {
            qb.push(" AND started_at < ").push_bind(to);
        }
        if let Some(s) = q.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        // A scope value lists the incident's services (or hosts) comma-separated: a
        // filter matches any one of them exactly.
        for (k, v) in &q.labels {
            check_label(k)?;
            qb.push(" AND ")
                .push_bind(v)
                .push(" = ANY(string_to_array(scope ->> ")
                .push_bind(k)
                .push(", ','))");
        }
        if let Some(c) = &q.cursor {
            let t = from_ms(c.ts_ms);
            qb.push(" AND (started_at < ")
                .push_bind(t)
                .push(" OR (started_at = ")
                .push_bind(t)
                .push(" AND id < ")
                .push_bind(&c.id)
                .push("))");
        }
        qb.push(" ORDER BY started_at DESC, id DESC LIMIT ")
            .push_bind(q.limit as i64 + 1);
        let rows = qb.build().fetch_all(&self.pool).await?;
        page_skipping(rows, q.limit, "incidents", incident_from_row, |r| {
            Ok(Cursor {
                ts_ms: r
                    .try_get::<DateTime<Utc>, _>("started_at")?
                    .timestamp_millis(),
                id: r.try_get("id")?,
            })
        })
    }

    async fn get_incident(&self, tenant: &str, id: &str) -> Result<Incident> {
        let row = sqlx::query(&format!("{INCIDENT_SELECT} WHERE tenant = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        incident_from_row(&row)
    }

    async fn incident_events(&self, tenant: &str, id: &str) -> Result<Vec<IncidentEvent>> {
        let rows = sqlx::query(
            "SELECT e.* FROM incident_events e JOIN incidents i ON i.id = e.incident_id \
             WHERE i.tenant = $1 AND e.incident_id = $2 ORDER BY e.time, e.id",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(skip_undecodable(
            "incident_events",
            rows.iter().map(event_from_row),
        ))
    }

    async fn incident_statuses(&self, ids: &[String]) -> Result<HashMap<String, IncidentStatus>> {
        let rows = sqlx::query("SELECT id, status FROM incidents WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::new();
        for r in rows {
            let status: String = r.try_get("status")?;
            let st = IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
            out.insert(r.try_get("id")?, st);
        }
        Ok(out)
    }

    async fn transition_incident(
        &self,
        tenant: &str,
        id: &str,
        to: IncidentStatus,
        actor: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<Incident> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE serialises concurrent transitions of one incident.
        let status: String = sqlx::query_scalar(
            "SELECT status FROM incidents WHERE tenant = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let from = IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
        from.transition(to)?;
        sqlx::query(
            "UPDATE incidents SET status = $1, updated_at = greatest(updated_at, $2), \
             resolved_at = CASE WHEN $3 THEN $2 ELSE resolved_at END WHERE id = $4",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(to == IncidentStatus::Resolved)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let seq: i64 =
            sqlx::query_scalar("SELECT count(*) FROM incident_events WHERE incident_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let events = [status_changed_event(id, seq, from, to, actor, note, now)];
        let mut qb = QueryBuilder::new("");
        push_events(&mut qb, &events);
        qb.build().persistent(false).execute(&mut *tx).await?;
        tx.commit().await?;
        self.get_incident(tenant, id).await
    }

    async fn engine_transition(
        &self,
        tenant: &str,
        id: &str,
        from: &[IncidentStatus],
        to: IncidentStatus,
        event: &IncidentEvent,
    ) -> Result<Option<Incident>> {
        let mut tx = self.pool.begin().await?;
        let Some(status): Option<String> = sqlx::query_scalar(
            "SELECT status FROM incidents WHERE tenant = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let done: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM incident_events WHERE id = $1)")
                .bind(&event.id)
                .fetch_one(&mut *tx)
                .await?;
        if !done {
            let now = IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
            if !from.contains(&now) {
                return Ok(None);
            }
            sqlx::query(
                "UPDATE incidents SET status = $1, updated_at = greatest(updated_at, $2), \
                 resolved_at = CASE WHEN $3 THEN $2 ELSE NULL END WHERE id = $4",
            )
            .bind(to.as_str())
            .bind(event.ts)
            .bind(to == IncidentStatus::Resolved)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let events = [IncidentEvent {
                from_status: Some(now),
                to_status: Some(to),
                ..event.clone()
            }];
            let mut qb = QueryBuilder::new("");
            push_events(&mut qb, &events);
            qb.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.get_incident(tenant, id).await.map(Some)
    }

    async fn counts(&self) -> Result<TableCounts> {
        let mut c = TableCounts::default();
        for (table, slot) in count_slots(&mut c) {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&self.pool)
                .await?;
            *slot = n as u64;
        }
        Ok(c)
    }

    async fn points(&self, series: SeriesId, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, f64)>> {
        let rows = sqlx::query(
            "SELECT time, value FROM metric_points WHERE series_id = $1 AND time >= $2 AND time < $3 ORDER BY time",
        )
        .bind(series as i64)
        .bind(self::from_ms(from_ms))
        .bind(self::from_ms(to_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let t: DateTime<Utc> = r.try_get("time")?;
                Ok((t.timestamp_millis(), r.try_get("value")?))
            })
            .collect()
    }

    async fn newest_points(
        &self,
        series: SeriesId,
        from_ms: i64,
        to_ms: i64,
        n: usize,
    ) -> Result<Vec<(i64, f64)>> {
        let rows = sqlx::query(
            "SELECT time, value FROM (SELECT time, value FROM metric_points WHERE series_id = $1 \
             AND time >= $2 AND time < $3 ORDER BY time DESC LIMIT $4) q ORDER BY time",
        )
        .bind(series as i64)
        .bind(self::from_ms(from_ms))
        .bind(self::from_ms(to_ms))
        .bind(n.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let t: DateTime<Utc> = r.try_get("time")?;
                Ok((t.timestamp_millis(), r.try_get("value")?))
            })
            .collect()
    }

    async fn forecasts(
        &self,
        tenant: &str,
        series: SeriesId,
        from_ms: i64,
        to_ms: i64,
        latest: bool,
    ) -> Result<Vec<Forecast>> {
        // The tenant check is the join: another tenant's series id finds nothing.
        let newest = if latest {
            "AND f.generated_at = (SELECT MAX(g.generated_at) FROM forecasts g \
             WHERE g.series_id = $1 AND g.time >= $3 AND g.time < $4)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT f.series_id, f.generated_at, f.time, f.yhat, f.lower, f.upper, f.model \
             FROM forecasts f JOIN series s ON s.series_id = f.series_id \
             WHERE f.series_id = $1 AND s.tenant = $2 AND f.time >= $3 AND f.time < $4 {newest} \
             ORDER BY f.generated_at DESC, f.time DESC LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(series as i64)
            .bind(tenant)
            .bind(self::from_ms(from_ms))
            .bind(self::from_ms(to_ms))
            .bind(crate::MAX_FORECAST_ROWS as i64)
            .fetch_all(&self.pool)
            .await?;
        // Newest first so a cut keeps the newest runs; returned oldest first.
        rows.iter()
            .rev()
            .map(|r| {
                Ok(Forecast {
                    series_id: r.try_get::<i64, _>("series_id")? as u64,
                    generated_at: r.try_get("generated_at")?,
                    ts: r.try_get("time")?,
                    yhat: r.try_get("yhat")?,
                    lower: r.try_get("lower")?,
                    upper: r.try_get("upper")?,
                    model: r.try_get("model")?,
                })
            })
            .collect()
    }

    async fn bands(
        &self,
        tenant: &str,
        series: SeriesId,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<BandPoint>> {
        // The tenant check is the join: another tenant's series id finds nothing.
        let rows = sqlx::query(
            "SELECT b.series_id, b.time, b.expected, b.lower, b.upper \
             FROM bands b JOIN series s ON s.series_id = b.series_id \
             WHERE b.series_id = $1 AND s.tenant = $2 AND b.time >= $3 AND b.time < $4 ORDER BY b.time DESC LIMIT $5",
        )
        .bind(series as i64)
        .bind(tenant)
        .bind(self::from_ms(from_ms))
            .bind(self::from_ms(to_ms))
        .bind(crate::MAX_FORECAST_ROWS as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .rev()
            .map(|r| {
                Ok(BandPoint {
                    series_id: r.try_get::<i64, _>("series_id")? as u64,
                    ts: r.try_get("time")?,
                    expected: r.try_get("expected")?,
                    lower: r.try_get("lower")?,
                    upper: r.try_get("upper")?,
                })
            })
            .collect()
    }

    async fn list_series(&self, q: &crate::SeriesQuery) -> Result<Vec<crate::SeriesInfo>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT series_id, name, labels FROM series WHERE tenant = ",
        );
        qb.push_bind(&q.tenant);
        if let Some(id) = q.series_id {
            qb.push(" AND series_id = ").push_bind(id as i64);
        }
        if let Some(name) = &q.name {
            qb.push(" AND name = ").push_bind(name);
        }
        for (k, v) in &q.labels {
            qb.push(" AND labels ->> ")
                .push_bind(k)
                .push(" = ")
                .push_bind(v);
        }
        // Ids are unsigned and stored as their two's-complement signed values, so order
        // and pages follow the signed value.
        if let Some(after) = q.after {
            qb.push(" AND series_id > ").push_bind(after as i64);
        }
        qb.push(" ORDER BY series_id LIMIT ")
            .push_bind(q.limit.min(i64::MAX as usize) as i64);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(crate::SeriesInfo {
                    series_id: r.try_get::<i64, _>("series_id")? as SeriesId,
                    name: r.try_get("name")?,
                    labels: r.try_get::<Json<_>, _>("labels")?.0,
                })
            })
            .collect()
    }
}

crate::checkpoint::checkpoint_store!(PgStore, sqlx::Postgres);
crate::access::access_store!(PgStore, sqlx::Postgres);
crate::notify::notify_store!(PgStore, sqlx::Postgres);
crate::explain::explain_store!(PgStore, sqlx::Postgres);

/// The result tables a read-only user may read: what dashboards and analytics look at,
/// and not tokens, the audit trail, model prompts, notification targets or stage state.
const READABLE: [&str; 13] = [
    "alerts",
    "anomalies",
    "bands",
    "explanations",
    "forecasts",
    "incident_alerts",
    "incident_anomalies",
    "incident_events",
    "incidents",
    "metric_points",
    "metric_points_1m",
    "series",
    "silences",
];

/// Serialises the grants of migrations running at once on one database.
const GRANT_LOCK: i64 = 0x5e15_0000_0000_0001;

/// Creates the server's read-only role when it is missing and lets it read this database's
/// result tables. Roles belong to the server, so another database's migration may create
/// it at the same moment; a user without CREATEROLE gets a warning naming the statement.
async fn grant_readers(conn: &mut sqlx::PgConnection) -> Result<()> {
    let made = sqlx::query(&format!(
        "DO $$ BEGIN CREATE ROLE {READER_ROLE} NOLOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    ))
    .execute(&mut *conn)
    .await;
    match made {
        Ok(_) => {}
        Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42501") => {}
        Err(e) => return Err(e.into()),
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(READER_ROLE)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        tracing::warn!(
            "storage: no read-only role for dashboards: this user may not create roles; \
             as an administrator run `CREATE ROLE {READER_ROLE} NOLOGIN`, then migrate again"
        );
        return Ok(());
    }
    // Every stage migrates as it starts, so several can be here at once, and PostgreSQL
    // takes no lock for a GRANT: two at once on one table fail ("tuple concurrently
    // updated"). So only what is missing is granted, one migration at a time.
    if missing_grants(conn).await?.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(GRANT_LOCK)
        .execute(&mut *conn)
        .await?;
    let granted = async {
        let missing = missing_grants(conn).await?;
        if !missing.is_empty() {
            sqlx::query(&format!(
                "GRANT SELECT ON {} TO {READER_ROLE}",
                missing.join(", ")
            ))
            .execute(&mut *conn)
            .await?;
        }
        Ok::<_, StoreError>(())
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(GRANT_LOCK)
        .execute(&mut *conn)
        .await;
    granted?;
    unlocked?;
    Ok(())
}

/// The readable tables the reader role may not read yet.
async fn missing_grants(conn: &mut sqlx::PgConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) t WHERE NOT has_table_privilege($2, t, 'SELECT')",
    )
    .bind(&READABLE[..])
    .bind(READER_ROLE)
    .fetch_all(conn)
    .await?)
}

/// PostgreSQL's spelling of a scan.
struct PgScan;

impl crate::scan::Dialect for PgScan {
    fn param(n: usize) -> String {
        format!("${n}")
    }
    fn time(e: &str) -> String {
        // Floored, as the time bounds are: a row at 1.6 ms is 1 ms, and `>= 1 ms` keeps it.
        format!("floor(extract(epoch FROM {e}) * 1000)::int8")
    }
    fn json(e: &str) -> String {
        format!("{e}::text")
    }
    fn label(e: &str, key: &str) -> String {
        // `key` comes from the compiled-in catalogue, never from a query.
        format!("{e}->>'{key}'")
    }
}

#[async_trait]
impl crate::scan::ScanStore for PgStore {
    async fn scan(&self, req: crate::scan::ScanRequest) -> Result<crate::scan::ScanStream> {
        let (sql, binds) = crate::scan::scan_sql::<PgScan>(&req);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            // A read-only transaction whose statements the server stops at the query's
            // limit: a query stopped early must not leave its scan running on the server.
            let mut conn = match pool.begin().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let mut setup = vec!["SET TRANSACTION READ ONLY".to_string()];
            if req.timeout_ms > 0 {
                setup.push(format!("SET LOCAL statement_timeout = {}", req.timeout_ms));
            }
            for s in setup {
                if let Err(e) = sqlx::query(&s).execute(&mut *conn).await {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            let q = crate::scan::bind_scan::<sqlx::Postgres, _>(&sql, &req, binds, from_ms);
            crate::scan::pump(q.fetch(&mut *conn), &req, tx).await;
        });
        Ok(rx)
    }
}
