//! Tenant-bound streaming scans of the result tables, for ad-hoc SQL (`seismo query`,
//! `POST /api/v1/query`): one catalogue of tables and columns shared by both backends.
//!
//! The tenant predicate is part of every table's fixed FROM clause and its value is always a
//! bound parameter: a scan can only ever return the rows of the tenant it was asked for,
//! whatever query the rows end up in. Only time bounds (also bound) and a row limit can
//! narrow a scan further; nothing a user writes reaches this SQL.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::Result;

/// How a column is stored and what it becomes in a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Text,
    /// A timestamp, scanned as epoch milliseconds (UTC).
    Time,
    /// A JSON document, scanned as its text.
    Json,
    /// One label's value, taken from the JSON labels column named in `expr`.
    Label(&'static str),
}

/// One column of a scanned table.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// The stored column (qualified by its table's alias).
    pub expr: &'static str,
    pub nullable: bool,
    pub doc: &'static str,
}

/// One table offered to ad-hoc SQL.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub doc: &'static str,
    /// FROM and joins, ending where the tenant predicate (`<tenant> = <bound tenant>`) goes.
    from: &'static str,
    tenant: &'static str,
    /// The column time bounds apply to.
    pub time: Option<&'static str>,
    pub columns: &'static [Column],
}

const fn col(name: &'static str, kind: Kind, expr: &'static str, doc: &'static str) -> Column {
    Column {
        name,
        kind,
        expr,
        nullable: false,
        doc,
    }
}

const fn null(name: &'static str, kind: Kind, expr: &'static str, doc: &'static str) -> Column {
    Column {
        name,
        kind,
        expr,
        nullable: true,
        doc,
    }
}

/// Every table ad-hoc SQL can read. Checkpoints, tokens, the audit log, raw points and
/// anything else not listed here cannot be named at all.
pub const TABLES: &[Table] = &[
    Table {
        name: "anomalies",
        doc: "Anomalies the detectors found",
        from: "anomalies t",
        tenant: "t.tenant",
        time: Some("t.time"),
        columns: &[
            col("id", Kind::Text, "t.id", "Anomaly id"),
            col("series_id", Kind::Int, "t.series_id", "Series id"),
            col("name", Kind::Text, "t.name", "Metric name"),
            null(
                "service",
                Kind::Label("service"),
                "t.labels",
                "The series' service label",
            ),
            null(
                "host",
                Kind::Label("host"),
                "t.labels",
                "The series' host label",
            ),
            col("labels", Kind::Json, "t.labels", "Every label, as JSON"),
            col("ts", Kind::Time, "t.time", "When it happened"),
            col("observed", Kind::Float, "t.observed", "Observed value"),
            col("expected", Kind::Float, "t.expected", "Expected value"),
            col(
                "lower",
                Kind::Float,
                "t.lower",
                "Lower edge of the expected band",
            ),
            col(
                "upper",
                Kind::Float,
                "t.upper",
                "Upper edge of the expected band",
            ),
            col("score", Kind::Float, "t.score", "Anomaly score in [0, 1]"),
            col(
                "severity",
                Kind::Text,
                "t.severity",
                "info, warning or critical",
            ),
            col("kind", Kind::Text, "t.kind", "Kind of anomaly"),
            col(
                "detector",
                Kind::Text,
                "t.detector",
                "Detector that found it",
            ),
        ],
    },
    Table {
        name: "incidents",
        doc: "Incidents correlate opened",
        from: "incidents t",
        tenant: "t.tenant",
        time: Some("t.started_at"),
        columns: &[
            col("id", Kind::Text, "t.id", "Incident id"),
            col("title", Kind::Text, "t.title", "Title"),
            col("status", Kind::Text, "t.status", "Lifecycle status"),
            col(
                "severity",
                Kind::Text,
                "t.severity",
                "Highest severity of its signals",
            ),
            col("started_at", Kind::Time, "t.started_at", "First signal"),
            col("updated_at", Kind::Time, "t.updated_at", "Last change"),
            null(
                "resolved_at",
                Kind::Time,
                "t.resolved_at",
                "When it resolved",
            ),
            col(
                "scope",
                Kind::Json,
                "t.scope",
                "Services and hosts involved, as JSON",
            ),
            col(
                "root_cause_candidates",
                Kind::Json,
                "t.root_cause_candidates",
                "Ranked root-cause candidates, as JSON",
            ),
        ],
    },
    Table {
        name: "incident_anomalies",
        doc: "Which anomalies belong to which incident",
        from: "incident_anomalies t JOIN incidents i ON i.id = t.incident_id",
        tenant: "i.tenant",
        time: None,
        columns: &[
            col("incident_id", Kind::Text, "t.incident_id", "Incident id"),
            col("anomaly_id", Kind::Text, "t.anomaly_id", "Anomaly id"),
        ],
    },
    Table {
        name: "incident_events",
        doc: "Every incident's timeline",
        from: "incident_events t JOIN incidents i ON i.id = t.incident_id",
        tenant: "i.tenant",
        time: Some("t.time"),
        columns: &[
            col("id", Kind::Text, "t.id", "Event id"),
            col("incident_id", Kind::Text, "t.incident_id", "Incident id"),
            col("ts", Kind::Time, "t.time", "When"),
            col("kind", Kind::Text, "t.kind", "What happened"),
            col("actor", Kind::Text, "t.actor", "Who did it"),
            col("message", Kind::Text, "t.message", "Message"),
            null("from_status", Kind::Text, "t.from_status", "Status before"),
            null("to_status", Kind::Text, "t.to_status", "Status after"),
        ],
    },
    Table {
        name: "alerts",
        doc: "Alerts received (Alertmanager and others)",
        from: "alerts t",
        tenant: "t.tenant",
        time: Some("t.starts_at"),
        columns: &[
            col(
                "fingerprint",
                Kind::Text,
                "t.fingerprint",
                "Alert fingerprint",
            ),
            col("starts_at", Kind::Time, "t.starts_at", "When it fired"),
            null("ends_at", Kind::Time, "t.ends_at", "When it resolved"),
            col("status", Kind::Text, "t.status", "firing or resolved"),
            null(
                "service",
                Kind::Label("service"),
                "t.labels",
                "Its service label",
            ),
            col("labels", Kind::Json, "t.labels", "Labels, as JSON"),
            col(
                "annotations",
                Kind::Json,
                "t.annotations",
                "Annotations, as JSON",
            ),
            col("source", Kind::Text, "t.source", "Where it came from"),
        ],
    },
    Table {
        name: "series",
        doc: "Every series seen",
        from: "series t",
        tenant: "t.tenant",
        time: None,
        columns: &[
            col("series_id", Kind::Int, "t.series_id", "Series id"),
            col("name", Kind::Text, "t.name", "Metric name"),
            null(
                "service",
                Kind::Label("service"),
                "t.labels",
                "Its service label",
            ),
            null("host", Kind::Label("host"), "t.labels", "Its host label"),
            col("labels", Kind::Json, "t.labels", "Labels, as JSON"),
            col("first_seen", Kind::Time, "t.first_seen", "First point"),
        ],
    },
    Table {
        name: "forecasts",
        doc: "Forecast runs: predicted values with their interval",
        from: "forecasts t JOIN series s ON s.series_id = t.series_id",
        tenant: "s.tenant",
        time: Some("t.time"),
        columns: &[
            col("series_id", Kind::Int, "t.series_id", "Series id"),
            col(
                "generated_at",
                Kind::Time,
                "t.generated_at",
                "When the run was made",
            ),
            col("ts", Kind::Time, "t.time", "Predicted time"),
            col("yhat", Kind::Float, "t.yhat", "Predicted value"),
            col(
                "lower",
                Kind::Float,
                "t.lower",
                "Lower edge of the interval",
            ),
            col(
                "upper",
                Kind::Float,
                "t.upper",
                "Upper edge of the interval",
            ),
            col("model", Kind::Text, "t.model", "Model"),
        ],
    },
    Table {
        name: "bands",
        doc: "The detectors' expected bands, sampled",
        from: "bands t JOIN series s ON s.series_id = t.series_id",
        tenant: "s.tenant",
        time: Some("t.time"),
        columns: &[
            col("series_id", Kind::Int, "t.series_id", "Series id"),
            col("ts", Kind::Time, "t.time", "Time"),
            col("expected", Kind::Float, "t.expected", "Expected value"),
            col("lower", Kind::Float, "t.lower", "Lower edge"),
            col("upper", Kind::Float, "t.upper", "Upper edge"),
        ],
    },
];

/// Limits of one ad-hoc SQL query: the `[query]` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimits {
    /// Most rows an answer carries; a longer answer is cut off and says so.
    pub max_rows: usize,
    /// Longest a query may plan and run, in ms.
    pub timeout_ms: u64,
    /// Most memory a query's joins, aggregates and sorts may hold, in MiB.
    pub memory_mb: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_rows: 10_000,
            timeout_ms: 30_000,
            memory_mb: 256,
        }
    }
}

/// The table of that name.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub table: &'static Table,
    pub tenant: String,
    /// Indices into `table.columns`, in the order wanted.
    pub columns: Vec<usize>,
    /// Only rows with the table's time at or after this (epoch ms).
    pub from_ms: Option<i64>,
    /// Only rows with the table's time before this (epoch ms).
    pub to_ms: Option<i64>,
    pub limit: Option<u64>,
    /// Rows per batch sent.
    pub batch_rows: usize,
    /// The database stops the scan after this long (PostgreSQL's `statement_timeout`); 0
    /// for no limit. A stopped query's scan must not run on unseen.
    pub timeout_ms: u64,
}

/// Values of one column of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

impl Values {
    fn for_kind(kind: Kind, cap: usize) -> Values {
        match kind {
            Kind::Int | Kind::Time => Values::Int(Vec::with_capacity(cap)),
            Kind::Float => Values::Float(Vec::with_capacity(cap)),
            Kind::Text | Kind::Json | Kind::Label(_) => Values::Text(Vec::with_capacity(cap)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Some rows of a scan, column by column in the requested order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanBatch {
    pub columns: Vec<Values>,
    pub rows: usize,
}

/// A running scan: batches arrive as the database sends rows; dropping it stops the scan.
pub type ScanStream = mpsc::Receiver<Result<ScanBatch>>;

/// Reads the result tables for ad-hoc SQL.
#[async_trait]
pub trait ScanStore: Send + Sync {
    /// Starts streaming the rows `req` asks for, in no particular order.
    async fn scan(&self, req: ScanRequest) -> Result<ScanStream>;
}

/// How a backend spells what differs between them.
pub(crate) trait Dialect {
    fn param(n: usize) -> String;
    fn time(expr: &str) -> String;
    fn json(expr: &str) -> String;
    fn label(expr: &str, key: &str) -> String;
}

/// The SELECT for `req` and which parameters it binds after the tenant: (from, to, limit).
pub(crate) fn scan_sql<D: Dialect>(req: &ScanRequest) -> (String, [bool; 3]) {
    let t = req.table;
    let cols: Vec<String> = if req.columns.is_empty() {
        // Counted below: a query that needs no column (count(*)) needs only how many.
        vec!["1".to_string()]
    } else {
        req.columns
            .iter()
            .map(|&i| {
                let c = &t.columns[i];
                match c.kind {
                    Kind::Time => D::time(c.expr),
                    Kind::Json => D::json(c.expr),
                    Kind::Label(key) => D::label(c.expr, key),
                    Kind::Int | Kind::Float | Kind::Text => c.expr.to_string(),
                }
            })
            .collect()
    };
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {} = {}",
        cols.join(", "),
        t.from,
        t.tenant,
        D::param(1)
    );
    let mut n = 1;
    let mut binds = [false; 3];
    if let Some(time) = t.time {
        if req.from_ms.is_some() {
            n += 1;
            sql += &format!(" AND {time} >= {}", D::param(n));
            binds[0] = true;
        }
        if req.to_ms.is_some() {
            n += 1;
            sql += &format!(" AND {time} < {}", D::param(n));
            binds[1] = true;
        }
    }
    if req.limit.is_some() {
        n += 1;
        sql += &format!(" LIMIT {}", D::param(n));
        binds[2] = true;
    }
    if req.columns.is_empty() {
        // A scan that needs no column (count(*)) needs only how many rows there are: the
        // database counts them rather than sending each one.
        sql = format!("SELECT count(*) FROM ({sql}) q");
    }
    (sql, binds)
}

/// An empty batch shaped for `req`.
pub(crate) fn new_batch(req: &ScanRequest) -> ScanBatch {
    ScanBatch {
        columns: req
            .columns
            .iter()
            .map(|&i| Values::for_kind(req.table.columns[i].kind, req.batch_rows))
            .collect(),
        rows: 0,
    }
}

/// A query whose parameters are bound one by one.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// Binds a scan's parameters in the order [`scan_sql`] numbered them: the tenant, then
/// the time bounds and row limit it used. Times go through `time`, since each backend
/// stores them its own way.
pub(crate) fn bind_scan<'q, DB, T>(
    sql: &'q str,
    req: &ScanRequest,
    binds: [bool; 3],
    time: impl Fn(i64) -> T,
) -> Query<'q, DB>
where
    DB: sqlx::Database,
    T: 'q + sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::query::<DB>(sql).bind(req.tenant.clone());
    if binds[0] {
        q = q.bind(time(req.from_ms.unwrap_or_default()));
    }
    if binds[1] {
        q = q.bind(time(req.to_ms.unwrap_or_default()));
    }
    if binds[2] {
        q = q.bind(req.limit.unwrap_or_default().min(i64::MAX as u64) as i64);
    }
    q
}

/// Reads `rows` into batches of `req.batch_rows` and sends them, until the rows end, an
/// error (sent on), or the receiver is dropped (the query stopped: the rows are dropped too).
pub(crate) async fn pump<R, S>(mut rows: S, req: &ScanRequest, tx: mpsc::Sender<Result<ScanBatch>>)
where
    R: sqlx::Row,
    S: futures_util::Stream<Item = std::result::Result<R, sqlx::Error>> + Unpin,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    use futures_util::TryStreamExt;
    let mut batch = new_batch(req);
    loop {
        // A query that stopped (its limit, or an error elsewhere) closes the channel: stop
        // reading now rather than at the next full batch.
        let next = tokio::select! {
            r = rows.try_next() => r,
            _ = tx.closed() => return,
        };
        match next {
            Ok(Some(row)) if req.columns.is_empty() => {
                // The count a column-less scan asks for (see `scan_sql`): that many rows
                // of nothing, in batches of the usual size.
                let mut n = match row.try_get::<Option<i64>, _>(0) {
                    Ok(n) => n.unwrap_or(0).max(0) as usize,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                while n > 0 {
                    let rows = n.min(req.batch_rows.max(1));
                    n -= rows;
                    if tx
                        .send(Ok(ScanBatch {
                            columns: Vec::new(),
                            rows,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                return;
            }
            Ok(Some(row)) => {
                let mut decoded = Ok(());
                for (i, values) in batch.columns.iter_mut().enumerate() {
                    decoded = match values {
                        Values::Int(v) => row.try_get(i).map(|x| v.push(x)),
                        Values::Float(v) => row.try_get(i).map(|x| v.push(x)),
                        Values::Text(v) => row.try_get(i).map(|x| v.push(x)),
                    };
                    if decoded.is_err() {
                        break;
                    }
                }
                if let Err(e) = decoded {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                batch.rows += 1;
                if batch.rows >= req.batch_rows {
                    let full = std::mem::replace(&mut batch, new_batch(req));
                    if tx.send(Ok(full)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {
                if batch.rows > 0 {
                    let _ = tx.send(Ok(batch)).await;
                }
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pg;
    impl Dialect for Pg {
        fn param(n: usize) -> String {
            format!("${n}")
        }
        fn time(e: &str) -> String {
            format!("ms({e})")
        }
        fn json(e: &str) -> String {
            e.into()
        }
        fn label(e: &str, k: &str) -> String {
            format!("{e}->>'{k}'")
        }
    }

    #[test]
    fn every_scan_is_bound_to_its_tenant_and_names_are_unique() {
        for t in TABLES {
            let req = ScanRequest {
                table: t,
                tenant: "x".into(),
                columns: (0..t.columns.len()).collect(),
                from_ms: Some(0),
                to_ms: Some(1),
                limit: Some(5),
                batch_rows: 10,
                timeout_ms: 0,
            };
            let (sql, binds) = scan_sql::<Pg>(&req);
            assert!(sql.contains(&format!("WHERE {} = $1", t.tenant)), "{sql}");
            assert_eq!(binds, [t.time.is_some(), t.time.is_some(), true], "{sql}");
            let mut names: Vec<_> = t.columns.iter().map(|c| c.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), t.columns.len(), "{}", t.name);
            assert!(
                !t.columns.iter().any(|c| c.name == "tenant"),
                "{}: the tenant is implied",
                t.name
            );
        }
        let names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        assert!(!names.contains(&"stage_checkpoints") && !names.contains(&"api_tokens"));
    }
}
