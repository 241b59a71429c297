//! Read-only SQL over one tenant's result tables (`POST /api/v1/query`, `seismo query`),
//! planned and run by DataFusion within row, time and memory limits.
//!
//! Each query gets a fresh session whose catalogue holds only the result tables, each a
//! [`TenantTable`] bound to the caller's tenant: every scan DataFusion plans, whether in a
//! join, a subquery, a CTE or a UNION, is a store scan with the tenant as a bound
//! parameter. The query text is never edited. DDL, DML and statements (`SET`, `COPY`, ...)
//! are refused by the planner; there is no `information_schema`, no file access and no
//! spilling to disk.
#![expect(clippy::disallowed_methods, reason = "queries are timed in wall time")]

pub mod table;

/// The Arrow the answers are made of, for callers that read them.
pub use arrow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures_util::StreamExt;
use seismo_store::{Store, StoreError};

pub use seismo_store::scan::QueryLimits;
pub use table::{TenantTable, schema_of};

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL cannot run: bad syntax, an unknown table or column, a write, a type error.
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than its limit of {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the query needs more memory than its limit of {limit_mb} MB: {detail}")]
    Memory { limit_mb: usize, detail: String },
    #[error("query engine: {0}")]
    Internal(String),
}

/// An answer: the rows (at most the row limit) and whether more were cut off.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub truncated: bool,
    pub elapsed: Duration,
}

impl Answer {
    /// The rows as a JSON array of objects (nulls included), times as RFC 3339 text.
    pub fn json_rows(&self) -> Result<Vec<u8>, QueryError> {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(Vec::new());
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        w.write_batches(&refs)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        w.finish()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let out = w.into_inner();
        // An answer with no rows is written as nothing at all.
        Ok(if out.is_empty() { b"[]".to_vec() } else { out })
    }

    /// The answer as one JSON document: columns with their types, rows, and counts.
    pub fn to_json(&self) -> Result<Vec<u8>, QueryError> {
        let columns: Vec<serde_json::Value> = self
            .schema
            .fields()
            .iter()
            .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"columns\":");
        out.extend(serde_json::to_vec(&columns).map_err(|e| QueryError::Internal(e.to_string()))?);
        out.extend_from_slice(
            format!(
                ",\"row_count\":{},\"truncated\":{},\"elapsed_ms\":{},\"rows\":",
                self.rows,
                self.truncated,
                self.elapsed.as_millis()
            )
            .as_bytes(),
        );
        out.extend(self.json_rows()?);
        out.push(b'}');
        Ok(out)
    }

    /// The answer as an Arrow IPC stream.
    pub fn to_arrow_ipc(&self) -> Result<Vec<u8>, QueryError> {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &self.schema)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        for b in &self.batches {
            w.write(b)
                .map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        w.finish()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        w.into_inner()
            .map_err(|e| QueryError::Internal(e.to_string()))
    }

    /// The answer as a text table, for a terminal.
    pub fn to_table(&self) -> Result<String, QueryError> {
        arrow::util::pretty::pretty_format_batches(&self.batches)
            .map(|t| t.to_string())
            .map_err(|e| QueryError::Internal(e.to_string()))
    }
}

/// Queries running at once in this process; more wait for a turn (within their time limit).
static QUERIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs ad-hoc SQL for tenants.
#[derive(Clone)]
pub struct QueryEngine {
    store: Arc<dyn Store>,
    limits: QueryLimits,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("limits", &self.limits)
            .finish()
    }
}

impl QueryEngine {
    pub fn new(store: Arc<dyn Store>, limits: QueryLimits) -> Self {
        QueryEngine { store, limits }
    }

    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// A session that sees only `tenant`'s result tables.
    fn session(&self, tenant: &str) -> Result<SessionContext, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_mb << 20, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        // One partition: the scans are single streams from the database, and the API
        // shares two cores with the pipeline.
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        // Functions that make one value of any size from a small query (`repeat('x',
        // 2000000000)`): such a value is allocated before any memory limit can refuse it.
        for f in ["repeat", "lpad", "rpad"] {
            ctx.deregister_udf(f);
        }
        for t in seismo_store::scan::TABLES {
            ctx.register_table(
                t.name,
                Arc::new(TenantTable::new(
                    t,
                    tenant,
                    self.store.clone(),
                    self.limits.timeout_ms,
                )),
            )
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        Ok(ctx)
    }

    /// Runs `sql` for `tenant`, answering at most `max_rows` rows (capped by the engine's
    /// limit).
    pub async fn run(
        &self,
        tenant: &str,
        sql: &str,
        max_rows: Option<usize>,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let max_rows = max_rows
            .unwrap_or(self.limits.max_rows)
            .min(self.limits.max_rows);
        let work = async {
            // Queries run a few at a time, so their memory limits add up to a bound.
            let _turn = QUERIES
                .acquire()
                .await
                .expect("the query semaphore is never closed");
            let ctx = self.session(tenant)?;
            // The answer held here counts against the same limit as the query's work.
            let answer = MemoryConsumer::new("answer").register(&ctx.runtime_env().memory_pool);
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx
                .sql_with_options(sql, options)
                .await
                .map_err(|e| self.error(e))?;
            // One row past the limit tells a cut answer from one that just fits.
            let df = df
                .limit(0, Some(max_rows.saturating_add(1)))
                .map_err(|e| self.error(e))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(|e| self.error(e))?;
            let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
            while let Some(b) = stream.next().await {
                let b = b.map_err(|e| self.error(e))?;
                answer
                    .try_grow(b.get_array_memory_size())
                    .map_err(|e| self.error(e))?;
                let room = max_rows - rows;
                if b.num_rows() > room {
                    truncated = true;
                    if room > 0 {
                        batches.push(b.slice(0, room));
                    }
                    rows = max_rows;
                    break;
                }
                rows += b.num_rows();
                if b.num_rows() > 0 {
                    batches.push(b);
                }
            }
            Ok::<_, QueryError>((schema, batches, rows, truncated))
        };
        let timeout = Duration::from_millis(self.limits.timeout_ms);
        let (schema, batches, rows, truncated) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| QueryError::Timeout(timeout))??;
        Ok(Answer {
            schema,
            batches,
            rows,
            truncated,
            elapsed: started.elapsed(),
        })
    }

    fn error(&self, e: DataFusionError) -> QueryError {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(detail) => QueryError::Memory {
                limit_mb: self.limits.memory_mb,
                detail: detail.clone(),
            },
            // The caller's to fix: the SQL, its names, its types, its values.
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Execution(_)
            | DataFusionError::ArrowError(..)
            | DataFusionError::Configuration(_) => QueryError::Invalid(e.find_root().to_string()),
            DataFusionError::External(inner) if inner.downcast_ref::<StoreError>().is_some() => {
                QueryError::Internal(format!("reading the result tables: {inner}"))
            }
            // Anything else is ours (a panic, I/O, the engine's own errors): logged, not
            // shown.
            other => QueryError::Internal(other.to_string()),
        }
    }
}
