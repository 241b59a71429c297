//! The SQLite store of embedded mode: one file, WAL journal, idempotent batched writes.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use seismo_schemas::{
    Alert, AlertStatus, Anomaly, AnomalyKind, BandPoint, Forecast, Incident, IncidentEvent,
    IncidentEventKind, IncidentStatus, MetricPoint, SeriesId, Severity,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::{
    AnomalyQuery, Cursor, IncidentQuery, IncidentWrite, Page, Result, Store, StoreError,
    TableCounts, corrupt, count_slots, page_skipping, skip_undecodable, status_changed_event,
};

/// SQLite accepts at most 32766 bound parameters per statement; stay well below.
const MAX_PARAMS: usize = 30_000;
// Multi-row INSERTs are built with as many rows as a batch holds, so their text differs from
// batch to batch. Only a full chunk, whose text repeats, is kept as a prepared statement
// (`persistent`); cached, every row count seen became one more prepared statement per
// connection (up to sqlx's 100), each as large as its rows: a month of one host's points
// left ~100 MB of them in memory.

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Embedded store on one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Series already written, so hot point batches skip the series upsert. A cache only:
    /// losing it costs a redundant `ON CONFLICT DO NOTHING`.
    known_series: Mutex<HashSet<SeriesId>>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url`, e.g. `sqlite://seismo.db` or
    /// `sqlite::memory:`.
    pub async fn connect(url: &str) -> Result<Self> {
        let memory = url.contains(":memory:");
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            // WAL with NORMAL is durable against process crashes; only an OS crash can lose
            // the last transactions, which embedded mode accepts for throughput.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false);
        // An in-memory database exists per connection, so it must have exactly one.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 4 })
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            known_series: Mutex::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn anomaly_from_row(r: &SqliteRow) -> Result<Anomaly> {
    let severity: String = r.try_get("severity")?;
    let kind: String = r.try_get("kind")?;
    Ok(Anomaly {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        series_id: r.try_get::<i64, _>("series_id")? as u64,
        name: r.try_get("name")?,
        labels: parse_json("labels", &r.try_get::<String, _>("labels")?)?,
        ts: from_ms(r.try_get("time")?),
        observed: r.try_get("observed")?,
        expected: r.try_get("expected")?,
        lower: r.try_get("lower")?,
        upper: r.try_get("upper")?,
        score: r.try_get("score")?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        kind: AnomalyKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        detector: r.try_get("detector")?,
        explanation: parse_json("explanation", &r.try_get::<String, _>("explanation")?)?,
    })
}

fn split_list(s: Option<String>) -> Vec<String> {
    let mut v: Vec<String> = s
        .unwrap_or_default()
        .split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn incident_from_row(r: &SqliteRow) -> Result<Incident> {
    let status: String = r.try_get("status")?;
    let severity: String = r.try_get("severity")?;
    Ok(Incident {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        title: r.try_get("title")?,
        status: IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        started_at: from_ms(r.try_get("started_at")?),
        updated_at: from_ms(r.try_get("updated_at")?),
        resolved_at: r.try_get::<Option<i64>, _>("resolved_at")?.map(from_ms),
        scope: parse_json("scope", &r.try_get::<String, _>("scope")?)?,
        root_cause_candidates: parse_json(
            "root_cause_candidates",
            &r.try_get::<String, _>("root_cause_candidates")?,
        )?,
        anomaly_ids: split_list(r.try_get("anomaly_ids")?),
        alert_fingerprints: split_list(r.try_get("alert_fingerprints")?),
    })
}

fn event_from_row(r: &SqliteRow) -> Result<IncidentEvent> {
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
        ts: from_ms(r.try_get("time")?),
        kind: IncidentEventKind::parse(&kind).ok_or_else(|| corrupt("event kind", &kind))?,
        actor: r.try_get("actor")?,
        message: r.try_get("message")?,
        from_status: status("from_status")?,
        to_status: status("to_status")?,
    })
}

const INCIDENT_SELECT: &str = "SELECT i.*, \
    (SELECT group_concat(anomaly_id) FROM incident_anomalies a WHERE a.incident_id = i.id) AS anomaly_ids, \
    (SELECT group_concat(fingerprint) FROM incident_alerts f WHERE f.incident_id = i.id) AS alert_fingerprints \
    FROM incidents i";

fn push_event<'a>(qb: &mut QueryBuilder<'a, Sqlite>, events: &'a [IncidentEvent]) {
    qb.push(
        "INSERT INTO incident_events (id, incident_id, time, kind, actor, message, from_status, to_status) ",
    );
    qb.push_values(events, |mut b, e| {
        b.push_bind(&e.id)
            .push_bind(&e.incident_id)
            .push_bind(ms(e.ts))
            .push_bind(e.kind.as_str())
            .push_bind(&e.actor)
            .push_bind(&e.message)
            .push_bind(e.from_status.map(|s| s.as_str()))
            .push_bind(e.to_status.map(|s| s.as_str()));
    });
    qb.push(" ON CONFLICT (id) DO NOTHING");
}

fn label_path(name: &str) -> Result<String> {
    seismo_schemas::validate_label_name(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(format!("$.\"{name}\""))
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn insert_points(&self, points: &[MetricPoint]) -> Result<u64> {
        if points.is_empty() {
            return Ok(0);
        }
        let ids: Vec<SeriesId> = points.iter().map(MetricPoint::series_id).collect();
        let mut new_series: Vec<(SeriesId, &MetricPoint)> = {
            let known = self.known_series.lock().expect("series cache lock");
            ids.iter()
                .zip(points)
                .filter(|(id, _)| !known.contains(id))
                .map(|(id, p)| (*id, p))
                .collect()
        };
        new_series.sort_by_key(|(id, _)| *id);
        new_series.dedup_by_key(|(id, _)| *id);
        let mut tx = self.pool.begin().await?;
        for chunk in new_series.chunks(MAX_PARAMS / 5) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO series (series_id, tenant, name, labels, first_seen) ",
            );
            qb.push_values(chunk, |mut b, (id, p)| {
                b.push_bind(*id as i64)
                    .push_bind(&p.tenant)
                    .push_bind(&p.name)
                    .push_bind(json(&p.labels))
                    .push_bind(p.ts);
            });
            qb.push(" ON CONFLICT (series_id) DO NOTHING");
            qb.build()
                .persistent(chunk.len() == MAX_PARAMS / 5)
                .execute(&mut *tx)
                .await?;
        }
        let mut written = 0;
        let rows: Vec<(i64, i64, f64)> = ids
            .iter()
            .zip(points)
            .map(|(id, p)| (*id as i64, p.ts, p.value))
            .collect();
        for chunk in rows.chunks(MAX_PARAMS / 3) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO metric_points (series_id, time, value) ");
            qb.push_values(chunk, |mut b, (id, ts, v)| {
                b.push_bind(*id).push_bind(*ts).push_bind(*v);
            });
            qb.push(" ON CONFLICT (series_id, time) DO NOTHING");
            written += qb
                .build()
                .persistent(chunk.len() == MAX_PARAMS / 3)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        // Only after the commit: a failed transaction must not mark its series as known.
        self.known_series
            .lock()
            .expect("series cache lock")
            .extend(new_series.iter().map(|(id, _)| *id));
        Ok(written)
    }

    async fn insert_anomalies(&self, anomalies: &[Anomaly]) -> Result<u64> {
        let mut written = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in anomalies.chunks(MAX_PARAMS / 15) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO anomalies (id, tenant, series_id, name, labels, time, observed, expected, \
                 lower, upper, score, severity, kind, detector, explanation) ",
            );
            qb.push_values(chunk, |mut b, a| {
                b.push_bind(&a.id)
                    .push_bind(&a.tenant)
                    .push_bind(a.series_id as i64)
                    .push_bind(&a.name)
                    .push_bind(json(&a.labels))
                    .push_bind(ms(a.ts))
                    .push_bind(a.observed)
                    .push_bind(a.expected)
                    .push_bind(a.lower)
                    .push_bind(a.upper)
                    .push_bind(a.score)
                    .push_bind(a.severity.as_str())
                    .push_bind(a.kind.as_str())
                    .push_bind(&a.detector)
                    .push_bind(json(&a.explanation));
            });
            qb.push(" ON CONFLICT (id) DO NOTHING");
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
        let mut written = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in forecasts.chunks(MAX_PARAMS / 7) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO forecasts (series_id, generated_at, time, yhat, lower, upper, model) ",
            );
            qb.push_values(chunk, |mut b, f| {
                b.push_bind(f.series_id as i64)
                    .push_bind(ms(f.generated_at))
                    .push_bind(ms(f.ts))
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
        let mut written = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in bands.chunks(MAX_PARAMS / 5) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO bands (series_id, time, expected, lower, upper) ",
            );
            qb.push_values(chunk, |mut b, p| {
                b.push_bind(p.series_id as i64)
                    .push_bind(ms(p.ts))
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
        let mut written = 0;
        for chunk in alerts.chunks(MAX_PARAMS / 8) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO alerts (tenant, fingerprint, starts_at, status, ends_at, labels, annotations, source) ",
            );
            qb.push_values(chunk, |mut b, a| {
                b.push_bind(&a.tenant)
                    .push_bind(&a.fingerprint)
                    .push_bind(ms(a.starts_at))
                    .push_bind(if a.status == AlertStatus::Firing {
                        "firing"
                    } else {
                        "resolved"
                    })
                    .push_bind(a.ends_at.map(ms))
                    .push_bind(json(&a.labels))
                    .push_bind(json(&a.annotations))
                    .push_bind(&a.source);
            });
            // A later notification of the same alert carries its newest status.
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
                 resolved_at, scope, root_cause_candidates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, severity = excluded.severity, \
                 updated_at = max(incidents.updated_at, excluded.updated_at), scope = excluded.scope, \
                 root_cause_candidates = excluded.root_cause_candidates",
            )
            .bind(&i.id)
            .bind(&i.tenant)
            .bind(&i.title)
            .bind(i.status.as_str())
            .bind(i.severity.as_str())
            .bind(ms(i.started_at))
            .bind(ms(i.updated_at))
            .bind(i.resolved_at.map(ms))
            .bind(json(&i.scope))
            .bind(json(&i.root_cause_candidates))
            .execute(&mut *tx)
            .await?;
            for chunk in w.new_anomaly_ids.chunks(MAX_PARAMS / 2) {
                let mut qb = QueryBuilder::<Sqlite>::new(
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
                let mut qb = QueryBuilder::<Sqlite>::new(
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
                push_event(&mut qb, chunk);
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
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT * FROM anomalies WHERE tenant = ");
        qb.push_bind(&q.tenant);
        if let Some(from) = q.from {
            qb.push(" AND time >= ").push_bind(ms(from));
        }
        if let Some(to) = q.to {
            qb.push(" AND time < ").push_bind(ms(to));
        }
        if let Some(min) = q.min_score {
            qb.push(" AND score >= ").push_bind(min);
        }
        if let Some(s) = q.series_id {
            qb.push(" AND series_id = ").push_bind(s as i64);
        }
        for (k, v) in &q.labels {
            qb.push(" AND json_extract(labels, ")
                .push_bind(label_path(k)?)
                .push(") = ")
                .push_bind(v);
        }
        if let Some(c) = &q.cursor {
            qb.push(" AND (time < ")
                .push_bind(c.ts_ms)
                .push(" OR (time = ")
                .push_bind(c.ts_ms)
                .push(" AND id < ")
                .push_bind(&c.id)
                .push("))");
        }
        qb.push(" ORDER BY time DESC, id DESC LIMIT ")
            .push_bind(q.limit as i64 + 1);
        let rows = qb.build().fetch_all(&self.pool).await?;
        page_skipping(rows, q.limit, "anomalies", anomaly_from_row, |r| {
            Ok(Cursor {
                ts_ms: r.try_get("time")?,
                id: r.try_get("id")?,
            })
        })
    }

    async fn anomalies_by_id(&self, tenant: &str, ids: &[String]) -> Result<Vec<Anomaly>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_PARAMS) {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT * FROM anomalies WHERE tenant = ");
            qb.push_bind(tenant).push(" AND id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(") ORDER BY time, id");
            let rows = qb.build().fetch_all(&self.pool).await?;
            out.extend(skip_undecodable(
                "anomalies",
                rows.iter().map(anomaly_from_row),
            ));
        }
        out.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        Ok(out)
    }

    async fn list_incidents(&self, q: &IncidentQuery) -> Result<Page<Incident>> {
        let mut qb = QueryBuilder::<Sqlite>::new(INCIDENT_SELECT);
        qb.push(" WHERE tenant = ").push_bind(&q.tenant);
        if let Some(from) = q.from {
            qb.push(" AND started_at >= ").push_bind(ms(from));
        }
        if let Some(to) = q.to {
            qb.push(" AND started_at < ").push_bind(ms(to));
        }
        if let Some(s) = q.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        // A scope value lists the incident's services (or hosts) comma-separated: a
        // filter matches any one of them exactly.
        for (k, v) in &q.labels {
            qb.push(" AND instr(',' || json_extract(scope, ")
                .push_bind(label_path(k)?)
                .push(") || ',', ',' || ")
                .push_bind(v)
                .push(" || ',') > 0 AND instr(")
                .push_bind(v)
                .push(", ',') = 0");
        }
        if let Some(c) = &q.cursor {
            qb.push(" AND (started_at < ")
                .push_bind(c.ts_ms)
                .push(" OR (started_at = ")
                .push_bind(c.ts_ms)
                .push(" AND id < ")
                .push_bind(&c.id)
                .push("))");
        }
        qb.push(" ORDER BY started_at DESC, id DESC LIMIT ")
            .push_bind(q.limit as i64 + 1);
        let rows = qb.build().fetch_all(&self.pool).await?;
        page_skipping(rows, q.limit, "incidents", incident_from_row, |r| {
            Ok(Cursor {
                ts_ms: r.try_get("started_at")?,
                id: r.try_get("id")?,
            })
        })
    }

    async fn get_incident(&self, tenant: &str, id: &str) -> Result<Incident> {
        let row = sqlx::query(&format!("{INCIDENT_SELECT} WHERE tenant = ? AND id = ?"))
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
             WHERE i.tenant = ? AND e.incident_id = ? ORDER BY e.time, e.id",
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
        let mut out = HashMap::new();
        for chunk in ids.chunks(MAX_PARAMS) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT id, status FROM incidents WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            qb.push(")");
            for r in qb.build().fetch_all(&self.pool).await? {
                let status: String = r.try_get("status")?;
                let st =
                    IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
                out.insert(r.try_get("id")?, st);
            }
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
        // Take the write lock first (a no-op write waits for it under the busy timeout):
        // a transaction that reads and then writes fails at once, instead of waiting,
        // when another writer commits in between.
        sqlx::query("UPDATE incidents SET updated_at = updated_at WHERE tenant = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let status: String =
            sqlx::query_scalar("SELECT status FROM incidents WHERE tenant = ? AND id = ?")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
        let from = IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
        from.transition(to)?;
        // The status guard makes a concurrent transition lose cleanly instead of both
        // applying: whoever commits second matches no row.
        let updated = sqlx::query(
            "UPDATE incidents SET status = ?, updated_at = max(updated_at, ?), \
             resolved_at = CASE WHEN ? THEN ? ELSE resolved_at END WHERE id = ? AND status = ?",
        )
        .bind(to.as_str())
        .bind(ms(now))
        .bind(to == IncidentStatus::Resolved)
        .bind(ms(now))
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        let seq: i64 =
            sqlx::query_scalar("SELECT count(*) FROM incident_events WHERE incident_id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let events = [status_changed_event(id, seq, from, to, actor, note, now)];
        let mut qb = QueryBuilder::new("");
        push_event(&mut qb, &events);
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
        // The write lock first, as in `transition_incident`.
        sqlx::query("UPDATE incidents SET updated_at = updated_at WHERE tenant = ? AND id = ?")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let Some(status): Option<String> =
            sqlx::query_scalar("SELECT status FROM incidents WHERE tenant = ? AND id = ?")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let done: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM incident_events WHERE id = ?)")
                .bind(&event.id)
                .fetch_one(&mut *tx)
                .await?;
        if !done {
            let now = IncidentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
            if !from.contains(&now) {
                return Ok(None);
            }
            sqlx::query(
                "UPDATE incidents SET status = ?, updated_at = max(updated_at, ?), \
                 resolved_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ?",
            )
            .bind(to.as_str())
            .bind(ms(event.ts))
            .bind(to == IncidentStatus::Resolved)
            .bind(ms(event.ts))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let events = [IncidentEvent {
                from_status: Some(now),
                to_status: Some(to),
                ..event.clone()
            }];
            let mut qb = QueryBuilder::new("");
            push_event(&mut qb, &events);
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
            "SELECT time, value FROM metric_points WHERE series_id = ? AND time >= ? AND time < ? ORDER BY time",
        )
        .bind(series as i64)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("time")?, r.try_get("value")?)))
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
            "SELECT time, value FROM (SELECT time, value FROM metric_points WHERE series_id = ? \
             AND time >= ? AND time < ? ORDER BY time DESC LIMIT ?) ORDER BY time",
        )
        .bind(series as i64)
        .bind(from_ms)
        .bind(to_ms)
        .bind(n.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("time")?, r.try_get("value")?)))
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
             WHERE g.series_id = ?1 AND g.time >= ?3 AND g.time < ?4)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT f.series_id, f.generated_at, f.time, f.yhat, f.lower, f.upper, f.model \
             FROM forecasts f JOIN series s ON s.series_id = f.series_id \
             WHERE f.series_id = ?1 AND s.tenant = ?2 AND f.time >= ?3 AND f.time < ?4 {newest} \
             ORDER BY f.generated_at DESC, f.time DESC LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(series as i64)
            .bind(tenant)
            .bind(from_ms)
            .bind(to_ms)
            .bind(crate::MAX_FORECAST_ROWS as i64)
            .fetch_all(&self.pool)
            .await?;
        // Newest first so a cut keeps the newest runs; returned oldest first.
        rows.iter()
            .rev()
            .map(|r| {
                Ok(Forecast {
                    series_id: r.try_get::<i64, _>("series_id")? as u64,
                    generated_at: self::from_ms(r.try_get("generated_at")?),
                    ts: self::from_ms(r.try_get("time")?),
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
             WHERE b.series_id = ?1 AND s.tenant = ?2 AND b.time >= ?3 AND b.time < ?4 ORDER BY b.time DESC LIMIT ?5",
        )
        .bind(series as i64)
        .bind(tenant)
        .bind(from_ms)
            .bind(to_ms)
        .bind(crate::MAX_FORECAST_ROWS as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .rev()
            .map(|r| {
                Ok(BandPoint {
                    series_id: r.try_get::<i64, _>("series_id")? as u64,
                    ts: self::from_ms(r.try_get("time")?),
                    expected: r.try_get("expected")?,
                    lower: r.try_get("lower")?,
                    upper: r.try_get("upper")?,
                })
            })
            .collect()
    }

    async fn list_series(&self, q: &crate::SeriesQuery) -> Result<Vec<crate::SeriesInfo>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
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
            qb.push(" AND json_extract(labels, '$.' || ")
                .push_bind(k)
                .push(") = ")
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
                    labels: parse_json("series labels", &r.try_get::<String, _>("labels")?)?,
                })
            })
            .collect()
    }
}

crate::checkpoint::checkpoint_store!(SqliteStore, sqlx::Sqlite);
crate::access::access_store!(SqliteStore, sqlx::Sqlite);
crate::notify::notify_store!(SqliteStore, sqlx::Sqlite);
crate::explain::explain_store!(SqliteStore, sqlx::Sqlite);

/// SQLite's spelling of a scan: times are stored as epoch milliseconds, JSON as text.
struct SqliteScan;

impl crate::scan::Dialect for SqliteScan {
    fn param(n: usize) -> String {
        format!("?{n}")
    }
    fn time(e: &str) -> String {
        e.to_string()
    }
    fn json(e: &str) -> String {
        e.to_string()
    }
    fn label(e: &str, key: &str) -> String {
        // `key` comes from the compiled-in catalogue, never from a query.
        format!("json_extract({e}, '$.{key}')")
    }
}

#[async_trait]
impl crate::scan::ScanStore for SqliteStore {
    async fn scan(&self, req: crate::scan::ScanRequest) -> Result<crate::scan::ScanStream> {
        let (sql, binds) = crate::scan::scan_sql::<SqliteScan>(&req);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let q = crate::scan::bind_scan::<sqlx::Sqlite, _>(&sql, &req, binds, |ms| ms);
            crate::scan::pump(q.fetch(&pool), &req, tx).await;
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn engine_transitions_follow_the_contract() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::engine_transition_conformance(&store).await;
    }

    #[tokio::test]
    async fn alerts_fired_and_resolved_in_one_batch_are_stored_once() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::alert_conformance(&store).await;
    }

    #[tokio::test]
    async fn series_list_by_name_labels_and_pages() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::series_conformance(&store).await;
    }

    #[tokio::test]
    async fn the_newest_points_of_a_window_are_cut_in_the_database() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::newest_points_conformance(&store).await;
    }

    #[tokio::test]
    async fn expected_bands_query_by_time_and_tenant() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::band_conformance(&store).await;
    }

    #[tokio::test]
    async fn forecasts_query_by_run_and_tenant() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::forecast_conformance(&store).await;
    }

    #[tokio::test]
    async fn explanations_and_model_calls_follow_the_contract() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::explain_conformance(&store).await;
    }

    #[tokio::test]
    async fn checkpoints_are_incremental_and_never_move_backwards() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::checkpoint_conformance(&store).await;
    }
}
