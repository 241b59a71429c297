//! A result table as DataFusion sees it: a provider bound to one tenant whose every scan
//! is a tenant-bound store scan, with time bounds pushed down.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures_util::StreamExt;
use seismo_store::scan::{Kind, ScanBatch, ScanRequest, Table, Values};
use seismo_store::{Store, StoreError};

/// Rows per batch a scan sends.
const BATCH_ROWS: usize = 8192;
/// Store scans running at once for ad-hoc SQL in this process, whatever the queries: each
/// holds a database connection the pipeline also writes through. A plan with more scans
/// (a UNION of many) runs them in turn.
static SCANS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// Time bounds pushed into the database stay within years 1..9999, which every backend can
/// represent; a bound beyond is left to the engine (the filter is applied there anyway).
const PUSHABLE_MS: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Kind::Text | Kind::Json | Kind::Label(_) => DataType::Utf8,
    }
}

/// The Arrow schema of a table.
pub fn schema_of(t: &Table) -> SchemaRef {
    Arc::new(Schema::new(
        t.columns
            .iter()
            .map(|c| Field::new(c.name, data_type(c.kind), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// One result table, for one tenant.
pub struct TenantTable {
    table: &'static Table,
    tenant: String,
    store: Arc<dyn Store>,
    schema: SchemaRef,
    /// Name of the column time bounds can be pushed into the store on.
    time_column: Option<&'static str>,
    /// The database's limit on each scan, in ms.
    timeout_ms: u64,
}

impl TenantTable {
    pub fn new(
        table: &'static Table,
        tenant: &str,
        store: Arc<dyn Store>,
        timeout_ms: u64,
    ) -> Self {
        let time_column = table.time.and_then(|t| {
            table
                .columns
                .iter()
                .find(|c| c.expr == t && c.kind == Kind::Time)
                .map(|c| c.name)
        });
        TenantTable {
            table,
            tenant: tenant.to_string(),
            store,
            schema: schema_of(table),
            time_column,
            timeout_ms,
        }
    }

    /// The time bound `e` puts on the time column, as [from, to) in epoch ms, widened to
    /// whole milliseconds so rounding can only let more rows through (DataFusion applies
    /// the exact filter again above the scan).
    fn bound(&self, e: &Expr) -> Option<(Option<i64>, Option<i64>)> {
        let time = self.time_column?;
        let is_time = |e: &Expr| matches!(e, Expr::Column(c) if c.name == time);
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, v) = if is_time(left) {
                    (*op, millis(right)?)
                } else if is_time(right) {
                    (op.swap()?, millis(left)?)
                } else {
                    return None;
                };
                // (floor, ceil) of the literal in milliseconds.
                let (lo, hi) = v;
                match op {
                    Operator::Gt | Operator::GtEq => Some((Some(lo), None)),
                    Operator::Lt => Some((None, Some(hi))),
                    Operator::LtEq => Some((None, Some(lo.saturating_add(1)))),
                    Operator::Eq => Some((Some(lo), Some(lo.saturating_add(1)))),
                    _ => None,
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_time(expr) => {
                let (lo, _) = millis(low)?;
                let (hi, _) = millis(high)?;
                Some((Some(lo), Some(hi.saturating_add(1))))
            }
            _ => None,
        }
    }
}

/// A timestamp literal as (floor, ceil) epoch milliseconds.
fn millis(e: &Expr) -> Option<(i64, i64)> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    let (v, per_ms) = match v {
        ScalarValue::TimestampSecond(Some(v), _) => {
            let ms = v.checked_mul(1000)?;
            return Some((ms, ms));
        }
        ScalarValue::TimestampMillisecond(Some(v), _) => (*v, 1),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (*v, 1000),
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1_000_000),
        _ => return None,
    };
    Some((
        v.div_euclid(per_ms),
        v.div_euclid(per_ms) + i64::from(v.rem_euclid(per_ms) != 0),
    ))
}

#[async_trait]
impl TableProvider for TenantTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.bound(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.table.columns.len()).collect(),
        };
        let (mut from_ms, mut to_ms): (Option<i64>, Option<i64>) = (None, None);
        for (lo, hi) in filters.iter().filter_map(|f| self.bound(f)) {
            let (lo, hi) = (
                lo.filter(|v| PUSHABLE_MS.contains(v)),
                hi.filter(|v| PUSHABLE_MS.contains(v)),
            );
            if let Some(lo) = lo {
                from_ms = Some(from_ms.map_or(lo, |f| f.max(lo)));
            }
            if let Some(hi) = hi {
                to_ms = Some(to_ms.map_or(hi, |t| t.min(hi)));
            }
        }
        let schema = Arc::new(self.schema.project(&columns)?);
        let part = ScanPartition {
            store: self.store.clone(),
            schema: schema.clone(),
            req: ScanRequest {
                table: self.table,
                tenant: self.tenant.clone(),
                columns,
                from_ms,
                to_ms,
                limit: limit.map(|l| l as u64),
                batch_rows: BATCH_ROWS,
                timeout_ms: self.timeout_ms,
            },
        };
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![Arc::new(part)],
            None,
            Vec::new(),
            false,
            limit,
        )?))
    }
}

/// The one partition of a scan: the store's stream of rows, as Arrow batches.
struct ScanPartition {
    store: Arc<dyn Store>,
    schema: SchemaRef,
    req: ScanRequest,
}

impl std::fmt::Debug for TenantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTable")
            .field("table", &self.table.name)
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl std::fmt::Debug for ScanPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPartition")
            .field("req", &self.req)
            .finish()
    }
}

fn external(e: StoreError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl PartitionStream for ScanPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (store, req, schema) = (self.store.clone(), self.req.clone(), self.schema.clone());
        let types: Vec<DataType> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let out_schema = schema.clone();
        let batches = futures_util::stream::once(async move {
            // Waiting for a turn counts against the query's time limit.
            let permit = SCANS
                .acquire()
                .await
                .expect("the scan semaphore is never closed");
            store.scan(req).await.map(|rx| (rx, permit))
        })
        .map(move |started| {
            let (schema, types) = (schema.clone(), types.clone());
            match started {
                // The permit lives as long as the stream of rows.
                Ok(state) => futures_util::stream::unfold(state, |(mut rx, permit)| async move {
                    rx.recv().await.map(|b| (b, (rx, permit)))
                })
                .map(move |b| {
                    b.map_err(external)
                        .and_then(|b| to_record_batch(&schema, &types, b))
                })
                .boxed(),
                Err(e) => futures_util::stream::iter([Err(external(e))]).boxed(),
            }
        })
        .flatten();
        Box::pin(RecordBatchStreamAdapter::new(out_schema, batches))
    }
}

fn to_record_batch(
    schema: &SchemaRef,
    types: &[DataType],
    b: ScanBatch,
) -> datafusion::error::Result<RecordBatch> {
    let rows = b.rows;
    let arrays: Vec<ArrayRef> = b
        .columns
        .into_iter()
        .zip(types)
        .map(|(values, t)| -> ArrayRef {
            match (values, t) {
                (Values::Int(v), DataType::Timestamp(_, _)) => {
                    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
                }
                (Values::Int(v), _) => Arc::new(Int64Array::from(v)),
                (Values::Float(v), _) => Arc::new(Float64Array::from(v)),
                (Values::Text(v), _) => Arc::new(StringArray::from(v)),
            }
        })
        .collect();
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}
