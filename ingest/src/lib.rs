//! The ingest stage: turns producers' records into validated, stored, re-keyed points.
//!
//! [`parse_lines`] is the pure core; [`run`] is the bus runner (`seismo.metrics` →
//! metric_points table + `seismo.points`); [`http::router`] is the HTTP front door that
//! validates before publishing, so producers learn about bad lines in the response.

pub mod http;
mod metrics;
pub mod remote_write;

use std::sync::Arc;

use bytes::Bytes;
use seismo_runtime::{ErrorDomain, RetryPolicy, StageError, StageHealth};
use seismo_schemas::{MetricPoint, topics};
use seismo_store::Store;
use seismo_transport::{Consumer, Message, OutRecord, Producer};

/// A line that was refused, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rejection {
    /// 1-based line number within the record or request body.
    pub line: usize,
    pub reason: String,
}

/// The outcome of parsing a body of JSON lines.
#[derive(Debug, Default)]
pub struct Parsed {
    pub points: Vec<MetricPoint>,
    /// Byte ranges of the accepted lines in the input, to forward them unchanged.
    pub accepted_lines: Vec<std::ops::Range<usize>>,
    pub rejected: Vec<Rejection>,
}

/// Parses JSON lines of `MetricPoint`. Blank lines are skipped; every other line is
/// either accepted or rejected with its number and a reason a producer can act on.
/// `tenant`, when given, applies to lines that name none and must match lines that do.
pub fn parse_lines(body: &[u8], tenant: Option<&str>) -> Parsed {
    let mut out = Parsed::default();
    let mut start = 0;
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let range = start..start + raw.len();
        start += raw.len() + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match seismo_schemas::parse_point_line(line, tenant) {
            Ok(p) => {
                out.points.push(p);
                out.accepted_lines.push(range);
            }
            Err(reason) => out.rejected.push(Rejection {
                line: i + 1,
                reason,
            }),
        }
    }
    out
}

/// The bus key (see `MetricPoint::points_key`) and payload of a point on `seismo.points`.
pub fn point_record(p: &MetricPoint) -> OutRecord {
    OutRecord::new(
        Bytes::from(p.points_key()),
        Bytes::from(serde_json::to_vec(p).expect("points serialise")),
    )
}

/// What a `seismo.metrics` record's headers say its format is, if anything: producers
/// that forward Prometheus' requests keep its `Content-Type` / `Content-Encoding`.
fn declared_remote_write(m: &Message) -> Option<bool> {
    let header = |n: &str| {
        m.header(n)
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    if let Some(ct) = header("content-type") {
        return Some(ct.contains("protobuf"));
    }
    if header("content-encoding").as_deref() == Some("snappy") {
        return Some(true);
    }
    None
}

/// A decoded `seismo.metrics` record.
enum Decoded {
    Lines(Parsed),
    /// Points, and the number of staleness markers skipped.
    RemoteWrite(Parsed, u64),
}

/// Decodes one record: remote_write when declared, or when it is not JSON and decodes
/// as remote_write; JSON lines otherwise (so a text record of bad lines is refused line
/// by line, with reasons, rather than as bad protobuf).
fn decode_record(m: &Message, tenant: Option<&str>) -> Result<Decoded, String> {
    let remote = match declared_remote_write(m) {
        Some(r) => r,
        None if !remote_write::looks_like_remote_write(&m.payload) => false,
        None => match remote_write::decode(&m.payload, tenant) {
            Ok((p, stale)) => return Ok(Decoded::RemoteWrite(p, stale)),
            Err(e) if std::str::from_utf8(&m.payload).is_err() => return Err(e),
            Err(_) => false,
        },
    };
    if remote {
        remote_write::decode(&m.payload, tenant).map(|(p, stale)| Decoded::RemoteWrite(p, stale))
    } else {
        Ok(Decoded::Lines(parse_lines(&m.payload, tenant)))
    }
}

/// Largest `seismo.points` record ingest builds; a key's points beyond it start another.
const MAX_POINTS_RECORD: usize = 1 << 20;

/// The `seismo.points` records of a batch of points, keyed by `points_key` (host or
/// series): all of a key's points in the batch become records of JSON lines, in input
/// order, so the bus carries one record per host and batch rather than one per point
/// (each record costs a frame, an fsync share and a decode per consumer). Every key's
/// points keep their order; order across keys does not matter downstream, where each
/// partition's watermark, not record order, tells how far event time has come.
pub fn point_records(points: &[MetricPoint]) -> Vec<OutRecord> {
    let mut order: Vec<String> = Vec::new();
    let mut bodies: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
    for p in points {
        let key = p.points_key();
        let parts = bodies.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            vec![Vec::new()]
        });
        if parts.last().is_some_and(|b| b.len() >= MAX_POINTS_RECORD) {
            parts.push(Vec::new());
        }
        let body = parts.last_mut().expect("one body at least");
        serde_json::to_writer(&mut *body, p).expect("points serialise");
        body.push(b'\n');
    }
    order
        .into_iter()
        .flat_map(|key| {
            let parts = bodies.remove(&key).unwrap_or_default();
            parts
                .into_iter()
                .map(move |b| OutRecord::new(Bytes::from(key.clone()), Bytes::from(b)))
        })
        .collect()
}

/// Counts of what a runner did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestStats {
    pub records: u64,
    pub points: u64,
    pub rejected: u64,
}

/// Batches being written at once. Each write is mostly waiting on PostgreSQL's commit and
/// the broker's acknowledgement, so a second one in flight keeps both cores busy while the
/// next batch is parsed (one at a time: 190 k points/s; two: 220–310 k on 2 cores).
const WRITES_IN_FLIGHT: usize = 2;

/// Runs ingest until its input ends: parse each `seismo.metrics` record, store the points,
/// publish them keyed by entity or series id to `seismo.points`, send refused lines to `seismo.dlq`,
/// and only then commit the input. Transient store and bus failures are retried under
/// `retry` (the batch waits; nothing is dropped); an error is returned only when the
/// stage cannot go on.
///
/// Ingest keeps its own loop rather than the generic stage runner: it is stateless, and
/// it overlaps the writes of two batches with the parsing of the next (about 1.3× the
/// throughput of one write at a time), which the runner does not do.
pub async fn run(
    mut input: Box<dyn Consumer>,
    output: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    batch_records: usize,
    health: StageHealth,
    retry: RetryPolicy,
) -> Result<IngestStats, StageError> {
    health.running();
    let r = run_inner(&mut input, output, store, batch_records, &health, retry).await;
    match &r {
        Ok(_) => health.stopped(),
        Err(e) => {
            health.failed(&e.to_string());
            tracing::error!(stage = health.name(), error = %e, "stage failed");
        }
    }
    r
}

async fn run_inner(
    input: &mut Box<dyn Consumer>,
    output: Arc<dyn Producer>,
    store: Arc<dyn Store>,
    batch_records: usize,
    health: &StageHealth,
    retry: RetryPolicy,
) -> Result<IngestStats, StageError> {
    let mut stats = IngestStats::default();
    // Writes run as their own tasks while the next batch is fetched and parsed here.
    // Commits stay in input order (the front write is awaited first), and each write
    // publishes only after the one before it has published, so records of one series keep
    // their order on `seismo.points`; the table writes overlap freely.
    let mut in_flight: std::collections::VecDeque<InFlight> = Default::default();
    let mut published: Option<tokio::sync::oneshot::Receiver<()>> = None;
    loop {
        while in_flight.len() >= WRITES_IN_FLIGHT
            || in_flight.front().is_some_and(|w| w.task.is_finished())
        {
            let w = in_flight.pop_front().expect("a write in flight");
            finish(w, &mut **input).await?;
        }
        health.progress(input.lag());
        let Some(batch) = input.next_batch(batch_records).await else {
            break;
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let e = StageError::from(e).context("reading input");
                if !e.retry {
                    return Err(e);
                }
                health.retrying(&e.to_string());
                tokio::time::sleep(retry.max_delay).await;
                continue;
            }
        };
        let b = prepare(batch);
        stats.records += b.batch.len() as u64;
        stats.points += b.points.len() as u64;
        stats.rejected += b.dlq.len() as u64;
        metrics::POINTS.inc_by(b.points.len() as u64);
        metrics::REJECTED.inc_by(b.dlq.len() as u64);
        if b.batch.is_empty() {
            continue;
        }
        let (done, next) = tokio::sync::oneshot::channel();
        let previous = published.replace(next);
        let (output, store, health) = (output.clone(), store.clone(), health.clone());
        let Prepared {
            batch,
            points,
            dlq,
            parse_ms,
        } = b;
        let meta = (batch.len(), points.len(), parse_ms);
        let task = tokio::spawn(async move {
            let w = Writer {
                output: &*output,
                store: &*store,
                health: &health,
                retry,
            };
            w.write_batch(&points, dlq, previous, done).await
        });
        in_flight.push_back(InFlight { batch, meta, task });
    }
    while let Some(w) = in_flight.pop_front() {
        finish(w, &mut **input).await?;
    }
    output.flush().await?;
    Ok(stats)
}

/// A batch whose write is under way.
struct InFlight {
    batch: Vec<Message>,
    /// Records, points and parse time, for the log.
    meta: (usize, usize, u64),
    task: tokio::task::JoinHandle<Result<(u64, u64), StageError>>,
}

/// Waits for a write and commits its input.
async fn finish(w: InFlight, input: &mut dyn Consumer) -> Result<(), StageError> {
    let (store_ms, send_ms) = w
        .task
        .await
        .map_err(|e| StageError::new(ErrorDomain::Internal, false, "ingest write task", e))??;
    input
        .commit(&w.batch)
        .await
        .map_err(|e| StageError::from(e).context("committing input"))?;
    tracing::debug!(
        records = w.meta.0,
        points = w.meta.1,
        parse_ms = w.meta.2,
        store_ms,
        send_ms,
        "ingest batch"
    );
    Ok(())
}

/// A parsed input batch, ready to be written.
struct Prepared {
    batch: Vec<Message>,
    points: Vec<MetricPoint>,
    dlq: Vec<OutRecord>,
    parse_ms: u64,
}

/// Parses every record of a batch; refused lines and records become DLQ records that name
/// their origin and reason.
fn prepare(batch: Vec<Message>) -> Prepared {
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    let mut dlq = Vec::new();
    for m in &batch {
        let tenant = m.header("tenant").and_then(|t| std::str::from_utf8(t).ok());
        let dead = |payload: Bytes, reason: String, line: Option<usize>| {
            let mut r = OutRecord::new(m.key.clone(), payload)
                .header("source_topic", m.topic.clone())
                .header("source_partition", m.partition.to_string())
                .header("source_offset", m.offset.to_string())
                .header("reason", reason);
            if let Some(l) = line {
                r = r.header("line", l.to_string());
            }
            r
        };
        match decode_record(m, tenant) {
            Ok(Decoded::Lines(parsed)) => {
                for r in &parsed.rejected {
                    let line = m
                        .payload
                        .split(|b| *b == b'\n')
                        .nth(r.line - 1)
                        .unwrap_or_default();
                    dlq.push(dead(
                        Bytes::copy_from_slice(line),
                        r.reason.clone(),
                        Some(r.line),
                    ));
                }
                points.extend(parsed.points);
            }
            Ok(Decoded::RemoteWrite(parsed, stale)) => {
                metrics::STALE.inc_by(stale);
                if !parsed.rejected.is_empty() {
                    // The protobuf has no lines to cut out, so the whole record goes to
                    // the DLQ once, with every reason.
                    let reasons: Vec<String> = parsed
                        .rejected
                        .iter()
                        .map(|r| format!("series {}: {}", r.line, r.reason))
                        .collect();
                    dlq.push(dead(m.payload.clone(), reasons.join("; "), None));
                }
                points.extend(parsed.points);
            }
            Err(reason) => dlq.push(dead(m.payload.clone(), reason, None)),
        }
    }
    Prepared {
        batch,
        points,
        dlq,
        parse_ms: started.elapsed().as_millis() as u64,
    }
}

/// What a batch write needs.
struct Writer<'a> {
    output: &'a dyn Producer,
    store: &'a dyn Store,
    health: &'a StageHealth,
    retry: RetryPolicy,
}

impl Writer<'_> {
    /// Makes a batch durable: points in the table and on `seismo.points`, refusals on the
    /// DLQ, each retried on its own while it fails transiently. Only then may its input
    /// be committed; a crash before replays the batch, and the idempotent writes (and
    /// detect's duplicate check) absorb the replay. Publishing waits for `previous` (the
    /// batch before has published) and then signals `published`. Returns the store and
    /// send times in ms.
    async fn write_batch(
        &self,
        points: &[MetricPoint],
        dlq: Vec<OutRecord>,
        previous: Option<tokio::sync::oneshot::Receiver<()>>,
        published: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(u64, u64), StageError> {
        let (stored, sent) = tokio::join!(
            async {
                let t = std::time::Instant::now();
                self.retry
                    .run("storing points", self.health, || async {
                        self.store
                            .insert_points(points)
                            .await
                            .map_err(StageError::from)
                    })
                    .await?;
                Ok::<_, StageError>(t.elapsed().as_millis() as u64)
            },
            async {
                let t = std::time::Instant::now();
                if let Some(p) = previous
                    && p.await.is_err()
                {
                    // The batch before failed to publish: publishing this one now would
                    // put it ahead of that batch's replay.
                    return Err(StageError::new(
                        ErrorDomain::Internal,
                        false,
                        "ingest",
                        "an earlier batch failed to publish",
                    ));
                }
                self.retry
                    .run("publishing points", self.health, || async {
                        self.output
                            .send(topics::POINTS, point_records(points))
                            .await?;
                        if !dlq.is_empty() {
                            self.output.send(topics::DLQ, dlq.clone()).await?;
                        }
                        Ok(())
                    })
                    .await?;
                let _ = published.send(());
                Ok(t.elapsed().as_millis() as u64)
            }
        );
        Ok((stored?, sent?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_lines_and_names_each_bad_one() {
        let body =
            b"{\"name\":\"cpu\",\"labels\":{\"host\":\"a\"},\"ts\":1700000000000,\"value\":0.5}\n\
\n\
{\"name\":\"cpu\",\"ts\":1700000000000}\n\
not json\r\n\
{\"name\":\"cpu\",\"ts\":1700000000,\"value\":1}\n\
{\"tenant\":\"acme\",\"name\":\"mem\",\"ts\":\"2023-11-14T22:13:20Z\",\"value\":2}";
        let parsed = parse_lines(body, None);
        assert_eq!(parsed.points.len(), 2);
        assert_eq!(parsed.points[1].tenant, "acme");
        let lines: Vec<usize> = parsed.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 4, 5]);
        assert!(
            parsed.rejected[0].reason.contains("missing field `value`"),
            "{:?}",
            parsed.rejected[0]
        );
        assert!(parsed.rejected[1].reason.starts_with("malformed JSON"));
        assert!(parsed.rejected[2].reason.contains("outside 2000-01-01"));
        assert_eq!(
            &body[parsed.accepted_lines[0].clone()][..9],
            b"{\"name\":\""
        );
    }

    #[test]
    fn points_of_one_key_share_a_record_and_keep_their_order() {
        let p = |host: &str, ts: i64| MetricPoint {
            tenant: "default".into(),
            name: "cpu".into(),
            labels: [("host".to_string(), host.to_string())].into(),
            ts,
            value: 1.0,
        };
        let points = [p("a", 1), p("a", 2), p("b", 1), p("a", 3)];
        let recs = point_records(&points);
        let lines: Vec<usize> = recs
            .iter()
            .map(|r| seismo_schemas::points_of_record(&r.payload).count())
            .collect();
        assert_eq!(lines, [3, 1]);
        assert_ne!(recs[0].key, recs[1].key);
        let back: Vec<MetricPoint> = recs
            .iter()
            .flat_map(|r| {
                seismo_schemas::points_of_record(&r.payload)
                    .map(Result::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(back, [p("a", 1), p("a", 2), p("a", 3), p("b", 1)]);
    }

    #[test]
    fn request_tenant_fills_in_and_must_agree() {
        let body = b"{\"name\":\"a\",\"ts\":1700000000000,\"value\":1}\n{\"tenant\":\"other\",\"name\":\"a\",\"ts\":1700000000000,\"value\":1}";
        let parsed = parse_lines(body, Some("acme"));
        assert_eq!(parsed.points.len(), 1);
        assert_eq!(parsed.points[0].tenant, "acme");
        assert!(parsed.rejected[0].reason.contains("does not match"));
    }
}
