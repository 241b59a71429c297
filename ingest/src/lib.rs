//! The ingest stage: turns producers' records into validated, stored, re-keyed points.
//!
//! [`parse_lines`] is the pure core; [`run`] is the bus runner (`seismo.metrics` →
//! metric_points table + `seismo.points`); [`http::router`] is the HTTP front door that
//! validates before publishing, so producers learn about bad lines in the response.
#![expect(
    clippy::disallowed_methods,
    reason = "ingest times requests and stamps receipt in wall time"
)]

pub mod http;
mod limits;
mod metrics;
pub mod remote_write;

use std::sync::Arc;

use bytes::Bytes;
use seismo_runtime::{ErrorDomain, RetryPolicy, StageError, StageHealth};
use seismo_schemas::{MetricPoint, topics};
use seismo_store::Store;
use seismo_transport::{Consumer, Message, OutRecord, Producer};

pub use limits::{
    AlertLimit, IngestConfig, Limit, Limits, ParseLimits, TimeWindow, TooLarge, now_ms,
};

/// Longest reason kept for a refused line, in bytes: enough to say what is wrong, short
/// enough that an answer listing `max_rejections_listed` of them stays small even when a
/// reason would quote a megabyte-long field.
pub const MAX_REASON_BYTES: usize = 256;

/// A line that was refused, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rejection {
    /// 1-based line number within the record or request body (for remote_write, the
    /// 1-based index of the series).
    pub line: usize,
    /// At most [`MAX_REASON_BYTES`] bytes, without control characters.
    pub reason: String,
}

/// Cuts a reason to [`MAX_REASON_BYTES`] (ending it with `…` when cut) and replaces
/// control characters, so that its JSON form is at most twice as long.
pub fn cut_reason(reason: &str) -> String {
    const ELLIPSIS: char = '…';
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    };
    let mut out = clean(reason);
    if out.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - ELLIPSIS.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push(ELLIPSIS);
    }
    out
}

/// The outcome of parsing a body of JSON lines (or a remote_write request).
#[derive(Debug)]
pub struct Parsed {
    pub points: Vec<MetricPoint>,
    /// For each point, the 1-based line (remote_write: series) it came from.
    pub origins: Vec<usize>,
    /// For each point of JSON lines, the byte range of its line in the input, to forward
    /// it unchanged (empty for remote_write).
    pub accepted_lines: Vec<std::ops::Range<usize>>,
    /// The refused lines with the lowest line numbers, at most `max_listed`, in order.
    pub rejected: Vec<Rejection>,
    /// Every refused line, listed or not.
    pub rejected_count: usize,
    /// Points refused by the time window, by the option that refused them (past, future).
    pub out_of_window: [u64; 2],
    max_listed: usize,
}

impl Parsed {
    /// Nothing yet; at most `max_listed` refusals will be kept with their reason.
    pub fn new(max_listed: usize) -> Parsed {
        Parsed {
            points: Vec::new(),
            origins: Vec::new(),
            accepted_lines: Vec::new(),
            rejected: Vec::new(),
            rejected_count: 0,
            out_of_window: [0; 2],
            max_listed,
        }
    }

    /// Counts a refused line, keeping its reason while it is among the first
    /// `max_listed` by line number (so memory stays bounded by the limit, not the input).
    pub fn reject(&mut self, line: usize, reason: &str) {
        self.rejected_count += 1;
        if self.rejected.len() >= self.max_listed
            && self.rejected.last().is_none_or(|last| last.line <= line)
        {
            return;
        }
        let at = self.rejected.partition_point(|r| r.line <= line);
        self.rejected.insert(
            at,
            Rejection {
                line,
                reason: cut_reason(reason),
            },
        );
        self.rejected.truncate(self.max_listed);
    }

    fn accept(&mut self, p: MetricPoint, origin: usize, window: Option<&TimeWindow>) {
        if let Some(w) = window
            && let Err((limit, reason)) = w.check(p.ts)
        {
            self.out_of_window[usize::from(limit == Limit::MaxFutureSecs)] += 1;
            self.reject(origin, &reason);
            return;
        }
        self.points.push(p);
        self.origins.push(origin);
    }

    /// Refuses the points at `refused` (indices into `points`, ascending) with their
    /// reasons, removing them from the accepted ones.
    pub(crate) fn refuse_points(&mut self, refused: Vec<(usize, String)>) {
        if refused.is_empty() {
            return;
        }
        let mut keep = vec![true; self.points.len()];
        for (i, reason) in refused {
            self.reject(self.origins[i], &reason);
            keep[i] = false;
        }
        let mut k = keep.iter();
        self.points
            .retain(|_| *k.next().expect("one flag per point"));
        let mut k = keep.iter();
        self.origins
            .retain(|_| *k.next().expect("one flag per point"));
        if !self.accepted_lines.is_empty() {
            let mut k = keep.iter();
            self.accepted_lines
                .retain(|_| *k.next().expect("one flag per point"));
        }
    }

    /// Moves `chunk` into `self`: its points (when `self` keeps points, that is, when it
    /// is the only chunk), and its refusals and counts, leaving `chunk` empty for reuse.
    fn absorb(&mut self, chunk: &mut Parsed) {
        if self.points.is_empty() && self.rejected_count == 0 {
            // The first (or only) chunk: take it whole.
            std::mem::swap(self, chunk);
            chunk.max_listed = self.max_listed;
            return;
        }
        let unlisted = chunk.rejected_count - chunk.rejected.len();
        for r in chunk.rejected.drain(..) {
            self.reject(r.line, &r.reason);
        }
        self.rejected_count += unlisted;
        self.out_of_window[0] += chunk.out_of_window[0];
        self.out_of_window[1] += chunk.out_of_window[1];
        self.points.append(&mut chunk.points);
        self.origins.append(&mut chunk.origins);
        self.accepted_lines.append(&mut chunk.accepted_lines);
        chunk.rejected_count = 0;
        chunk.out_of_window = [0; 2];
    }

    /// Counts this outcome's refusals in the stage's metrics.
    pub fn count_refusals(&self) {
        metrics::REJECTED.inc_by(self.rejected_count as u64);
        Limit::MaxPastSecs.count(self.out_of_window[0]);
        Limit::MaxFutureSecs.count(self.out_of_window[1]);
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Refuses a body of JSON lines holding more than `max_points` non-blank lines (each is a
/// point or a refusal), before any of it is parsed.
pub fn check_line_count(body: &[u8], max_points: usize) -> Result<(), TooLarge> {
    let lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !is_blank(l))
        .take(max_points.saturating_add(1))
        .count();
    if lines > max_points {
        return Err(TooLarge {
            limit: Limit::MaxPointsPerRequest,
            message: format!(
                "the request holds more than {max_points} points (ingest.max_points_per_request); split it"
            ),
        });
    }
    Ok(())
}

/// Parses JSON lines of `MetricPoint`. Blank lines are skipped; every other line is
/// either accepted or refused with its number and a reason a producer can act on.
/// `tenant`, when given, applies to lines that name none and must match lines that do.
/// Any timestamp from 2000 to 2100 is accepted; see [`parse_lines_within`] for the
/// ingest limits.
pub fn parse_lines(body: &[u8], tenant: Option<&str>) -> Parsed {
    let d = IngestConfig::default();
    parse_lines_within(body, tenant, d.max_rejections_listed, None)
}

/// [`parse_lines`] keeping at most `max_listed` refusals with their reason (the rest are
/// counted) and refusing points outside `window` (none: any time from 2000 to 2100).
pub fn parse_lines_within(
    body: &[u8],
    tenant: Option<&str>,
    max_listed: usize,
    window: Option<&TimeWindow>,
) -> Parsed {
    let mut out = Parsed::new(max_listed);
    parse_lines_chunked(body, tenant, window, usize::MAX, &mut out, |_| {});
    out
}

/// Parses JSON lines `chunk_lines` lines at a time: each chunk's points go to `each` in a
/// [`Parsed`] that holds that chunk only (its line numbers and `accepted_lines` ranges are
/// the body's), which may refuse points with [`Parsed::refuse_points`] before its refusals
/// and counts are moved into `total`. Memory then holds one chunk of points (about ten
/// times their JSON size), not the whole body's.
pub fn parse_lines_chunked(
    body: &[u8],
    tenant: Option<&str>,
    window: Option<&TimeWindow>,
    chunk_lines: usize,
    total: &mut Parsed,
    mut each: impl FnMut(&mut Parsed),
) {
    let mut chunk = Parsed::new(total.max_listed);
    let mut lines = 0;
    let mut start = 0;
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let range = start..start + raw.len();
        start += raw.len() + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if is_blank(line) {
            continue;
        }
        match seismo_schemas::parse_point_line(line, tenant) {
            Ok(p) => {
                let before = chunk.points.len();
                chunk.accept(p, i + 1, window);
                if chunk.points.len() > before {
                    chunk.accepted_lines.push(range);
                }
            }
            Err(reason) => chunk.reject(i + 1, &reason),
        }
        lines += 1;
        if lines == chunk_lines {
            each(&mut chunk);
            total.absorb(&mut chunk);
            lines = 0;
        }
    }
    each(&mut chunk);
    total.absorb(&mut chunk);
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

/// Why a compressed or encoded body was refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not what it claims to be: not snappy, gzip or a `WriteRequest` (400).
    Malformed(String),
    /// Beyond an ingest limit (413).
    TooLarge(TooLarge),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(m) => f.write_str(m),
            DecodeError::TooLarge(t) => f.write_str(&t.message),
        }
    }
}

/// A decoded `seismo.metrics` record.
enum Decoded {
    Lines(Parsed),
    /// Points, and the number of staleness markers skipped.
    RemoteWrite(Parsed, u64),
}

/// Why a whole record was refused: the limit, when a limit refused it, and the reason.
type RecordRefusal = (Option<Limit>, String);

/// Decodes one record: remote_write when declared, or when it is not JSON and decodes
/// as remote_write; JSON lines otherwise (so a text record of bad lines is refused line
/// by line, with reasons, rather than as bad protobuf).
fn decode_record(
    m: &Message,
    tenant: Option<&str>,
    limits: &ParseLimits,
) -> Result<Decoded, RecordRefusal> {
    let remote_write = |payload: &[u8]| {
        remote_write::decode(payload, tenant, limits).map_err(|e| match e {
            DecodeError::TooLarge(t) => (Some(t.limit), t.message),
            DecodeError::Malformed(m) => (None, m),
        })
    };
    let remote = match declared_remote_write(m) {
        Some(r) => r,
        None if !remote_write::looks_like_remote_write(&m.payload) => false,
        None => match remote_write(&m.payload) {
            Ok((p, stale)) => return Ok(Decoded::RemoteWrite(p, stale)),
            // Text is parsed as lines even when it happens to look like a huge
            // declared length: its refusals then name lines.
            Err(e) if std::str::from_utf8(&m.payload).is_err() => return Err(e),
            Err(_) => false,
        },
    };
    if remote {
        remote_write(&m.payload).map(|(p, stale)| Decoded::RemoteWrite(p, stale))
    } else {
        check_line_count(&m.payload, limits.max_points).map_err(|t| (Some(t.limit), t.message))?;
        Ok(Decoded::Lines(parse_lines_within(
            &m.payload,
            tenant,
            limits.max_listed,
            limits.window.as_ref(),
        )))
    }
}

/// The lines of `payload` at the 1-based, ascending line numbers `lines`, in one pass.
fn lines_at<'a>(payload: &'a [u8], lines: &[usize]) -> Vec<&'a [u8]> {
    let mut wanted = lines.iter().peekable();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in payload.split(|b| *b == b'\n').enumerate() {
        while wanted.next_if(|&&l| l == i + 1).is_some() {
            out.push(line);
        }
        if wanted.peek().is_none() {
            break;
        }
    }
    out
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
/// stage cannot go on. `limits` are the process's (shared with its HTTP ingest): points
/// they refuse go to the DLQ with the reason, as invalid lines do.
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
    limits: Limits,
) -> Result<IngestStats, StageError> {
    health.running();
    let r = run_inner(
        &mut input,
        output,
        store,
        batch_records,
        &health,
        retry,
        limits,
    )
    .await;
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
    limits: Limits,
) -> Result<IngestStats, StageError> {
    let mut stats = IngestStats::default();
    // Writes run as their own tasks while the next batch is fetched and parsed here.
    // Commits stay in input order (the front write is awaited first), and each write
    // publishes only after the one before it has published, so records of one series keep
    // their order on `seismo.points`; the table writes overlap freely.
    let mut in_flight: std::collections::VecDeque<InFlight> = Default::default();
    let mut published: Option<tokio::sync::oneshot::Receiver<()>> = None;
    let mut chunks: std::collections::VecDeque<Vec<Message>> = Default::default();
    loop {
        while in_flight.len() >= WRITES_IN_FLIGHT
            || in_flight.front().is_some_and(|w| w.task.is_finished())
        {
            let w = in_flight.pop_front().expect("a write in flight");
            finish(w, &mut **input).await?;
        }
        let batch = match chunks.pop_front() {
            Some(c) => c,
            None => {
                health.progress(input.lag());
                let Some(batch) = input.next_batch(batch_records).await else {
                    break;
                };
                match batch {
                    Ok(b) => {
                        chunks = split_by_bytes(b, WRITE_BATCH_BYTES);
                        continue;
                    }
                    Err(e) => {
                        let e = StageError::from(e).context("reading input");
                        if !e.retry {
                            return Err(e);
                        }
                        health.retrying(&e.to_string());
                        tokio::time::sleep(retry.max_delay).await;
                        continue;
                    }
                }
            }
        };
        let b = prepare(batch, &limits);
        stats.records += b.batch.len() as u64;
        stats.points += b.points.len() as u64;
        stats.rejected += b.refused;
        metrics::POINTS.inc_by(b.points.len() as u64);
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
            ..
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

/// Input bytes per write. A record can hold many points (an HTTP request is forwarded as
/// one), and parsed points take about ten times their JSON size, so batches are cut by
/// bytes: three writes of 4 MiB (two in flight, one being parsed) hold about 120 MB of
/// points, whatever `bus.batch_records` says.
const WRITE_BATCH_BYTES: usize = 4 << 20;

/// Cuts `batch` into runs of consecutive records of at most `max` payload bytes (a larger
/// record goes alone). Committing the runs in order commits the batch.
fn split_by_bytes(batch: Vec<Message>, max: usize) -> std::collections::VecDeque<Vec<Message>> {
    let mut out = std::collections::VecDeque::new();
    let mut run = Vec::new();
    let mut bytes = 0;
    for m in batch {
        if !run.is_empty() && bytes + m.payload.len() > max {
            out.push_back(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += m.payload.len();
        run.push(m);
    }
    if !run.is_empty() {
        out.push_back(run);
    }
    out
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
    /// Lines, series or records refused.
    refused: u64,
    parse_ms: u64,
}

/// Parses every record of a batch; refused lines and records become DLQ records that name
/// their origin and reason. A record's points are judged against the time window around
/// when the bus took it (not now), so a stage catching up on a backlog does not refuse
/// what HTTP ingest accepted.
fn prepare(batch: Vec<Message>, limits: &Limits) -> Prepared {
    let started = std::time::Instant::now();
    let now = now_ms();
    let max_listed = limits.config().max_rejections_listed;
    let mut points = Vec::new();
    let mut dlq = Vec::new();
    let mut refused = 0u64;
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
        let taken_at = m.timestamp_ms.filter(|t| *t <= now).unwrap_or(now);
        let parse_limits = limits.parse_limits(taken_at);
        let (mut parsed, lines) = match decode_record(m, tenant, &parse_limits) {
            Ok(Decoded::Lines(parsed)) => (parsed, true),
            Ok(Decoded::RemoteWrite(parsed, stale)) => {
                metrics::STALE.inc_by(stale);
                (parsed, false)
            }
            Err((limit, reason)) => {
                if let Some(l) = limit {
                    l.count(1);
                }
                metrics::REJECTED.inc();
                refused += 1;
                dlq.push(dead(m.payload.clone(), cut_reason(&reason), None));
                continue;
            }
        };
        limits.admit_series(&mut parsed, now);
        parsed.count_refusals();
        refused += parsed.rejected_count as u64;
        let unlisted = parsed.rejected_count - parsed.rejected.len();
        if lines {
            let numbers: Vec<usize> = parsed.rejected.iter().map(|r| r.line).collect();
            for (r, line) in parsed.rejected.iter().zip(lines_at(&m.payload, &numbers)) {
                dlq.push(dead(
                    Bytes::copy_from_slice(line),
                    r.reason.clone(),
                    Some(r.line),
                ));
            }
            if unlisted > 0 {
                // Beyond the listed lines the DLQ gets the whole record once rather than
                // a record per line, so a record of junk cannot multiply into as many
                // DLQ records as it has lines.
                dlq.push(dead(
                    m.payload.clone(),
                    format!(
                        "{unlisted} more refused lines beyond the {max_listed} sent one by one (ingest.max_rejections_listed); the whole record is attached"
                    ),
                    None,
                ));
            }
        } else if parsed.rejected_count > 0 {
            // The protobuf has no lines to cut out, so the whole record goes to the DLQ
            // once, with the listed reasons.
            let mut reasons: Vec<String> = parsed
                .rejected
                .iter()
                .map(|r| format!("series {}: {}", r.line, r.reason))
                .collect();
            if unlisted > 0 {
                reasons.push(format!("and {unlisted} more"));
            }
            dlq.push(dead(m.payload.clone(), reasons.join("; "), None));
        }
        points.extend(parsed.points);
    }
    Prepared {
        batch,
        points,
        dlq,
        refused,
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
    fn text_records_are_parsed_as_lines_whatever_they_start_with() {
        // U+0800 then "x" is 0xE0 0xA0 0x80 0x78: read as a snappy header, a declared
        // length of 240 MiB. Text is still refused line by line, not whole.
        let m = Message {
            topic: topics::METRICS.into(),
            partition: 0,
            offset: 0,
            key: Bytes::new(),
            payload: Bytes::from(
                "\u{800}x is not a point\n{\"name\":\"a\",\"ts\":1700000000000,\"value\":1}",
            ),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        let cfg = IngestConfig {
            backfill: true,
            ..IngestConfig::default()
        };
        let limits = Limits::new(cfg).parse_limits(now_ms());
        let Ok(Decoded::Lines(p)) = decode_record(&m, None, &limits) else {
            panic!("not parsed as lines");
        };
        assert_eq!((p.points.len(), p.rejected_count), (1, 1));
        assert!(p.rejected[0].reason.starts_with("malformed JSON"));
        // Binary that declares too much is refused whole, naming the limit.
        let m = Message {
            payload: Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x04, 0xff]),
            ..m
        };
        let Err((Some(limit), reason)) = decode_record(&m, None, &limits) else {
            panic!("not refused whole");
        };
        assert_eq!(limit, Limit::MaxDecompressedBytes);
        assert!(reason.contains("ingest.max_decompressed_bytes"), "{reason}");
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
