//! The durable embedded bus: a Kafka-shaped, append-only segment log on local disk.
//!
//! Each topic partition is a folder of segment files named by the offset of their first
//! record. A send appends framed records to the active segment and returns only once a
//! background thread has fsync'd them, so an acknowledged record survives `kill -9` and
//! power loss alike; appends that arrive while an fsync runs share the next one (group
//! commit). Consumers read only what is durable, so no stage ever derives output from a
//! record that a crash could take back. Consumer groups keep their committed offsets in
//! small files; a segment is deleted once every group has committed past it.
//!
//! Frame: `u32 body length | u64 xxh3 of the body | body`, body = `i64 offset | i64 append
//! time (ms) | u32 key length | key | u16 header count | (u16 name length | name | u32 value
//! length | value)* | payload`. At open, the last segment of each partition is scanned and a
//! torn or corrupt tail (a crash mid-append) is cut off: those records were never
//! acknowledged.
#![expect(clippy::disallowed_methods, reason = "records carry their append time")]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::{Consumer, Message, OutRecord, Producer, TransportError, partition_for};

/// Settings of a [`DiskBus`].
#[derive(Debug, Clone)]
pub struct DiskBusConfig {
    /// Folder holding the log (created if missing).
    pub dir: PathBuf,
    /// Partitions of every topic not named in `topic_partitions`.
    pub partitions: u32,
    /// Topics with their own partition count.
    pub topic_partitions: BTreeMap<String, u32>,
    /// A segment file is closed and a new one started beyond this size.
    pub segment_bytes: u64,
    /// Most bytes a topic may hold that some consumer group has not committed; beyond it
    /// `send` waits and `try_send_all` refuses ([`TransportError::Full`]).
    pub max_backlog_bytes: u64,
}

const FRAME_HEADER: usize = 12;
/// Largest frame accepted when reading; anything larger is corruption.
const MAX_FRAME: usize = 1 << 30;
/// Most bytes one `next_batch` returns (beyond a single large record). Stages parse a
/// batch whole and parsed points take about ten times their JSON size, so this bounds
/// each stage's working memory (4 MiB: about 40 MB of points) as much as the I/O size.
const MAX_BATCH_BYTES: u64 = 4 << 20;
/// How long a consumer waits on a quiet bus before returning an empty batch, so stages
/// can do periodic work (checkpoints, idle timeouts).
const IDLE_TICK: Duration = Duration::from_millis(500);

/// The durable bus. Cheap to clone; the log stays open while any clone, producer or
/// consumer lives.
#[derive(Clone)]
pub struct DiskBus {
    inner: Arc<Bus>,
}

impl std::fmt::Debug for DiskBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskBus({})", self.inner.cfg.dir.display())
    }
}

struct Bus {
    cfg: DiskBusConfig,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    syncer: Arc<Syncer>,
    sealed: AtomicBool,
    /// Woken on every durable append and every producer drop.
    data: Arc<Notify>,
    /// Held for the bus's life so a second process cannot open the same folder.
    _lock: File,
}

struct Topic {
    name: String,
    parts: Vec<Arc<Part>>,
    groups: Mutex<Vec<Arc<GroupOffsets>>>,
    producers: AtomicUsize,
    rr: AtomicU64,
    /// Woken whenever a group commits, for senders waiting for backlog room.
    space: Notify,
}

struct Part {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// (next durable offset, logical end position of the durable bytes), or the error of
    /// a failed fsync.
    durable: watch::Sender<Result<(i64, u64), Arc<str>>>,
    queued: AtomicBool,
    /// Logical position of the first retained byte.
    start_pos: AtomicU64,
}

struct Segment {
    base: i64,
    /// Logical position of the segment's first byte.
    base_pos: u64,
    path: PathBuf,
}

struct Writer {
    segments: Vec<Segment>,
    file: Arc<File>,
    active_len: u64,
    next_offset: i64,
    end_pos: u64,
}

struct GroupOffsets {
    path: PathBuf,
    /// Per partition: next offset to read after the last commit, and its logical position
    /// (None until a consumer has positioned itself there).
    committed: Mutex<Vec<(i64, Option<u64>)>>,
}

fn io_err(path: &Path, e: std::io::Error) -> TransportError {
    TransportError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A decoded frame body.
struct Frame {
    offset: i64,
    ts: i64,
    key: Bytes,
    headers: Vec<(String, Bytes)>,
    payload: Bytes,
}

fn encode_frame(buf: &mut Vec<u8>, offset: i64, ts: i64, r: &OutRecord) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&ts.to_le_bytes());
    buf.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&r.key);
    buf.extend_from_slice(&(r.headers.len() as u16).to_le_bytes());
    for (k, v) in &r.headers {
        buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        buf.extend_from_slice(v);
    }
    buf.extend_from_slice(&r.payload);
    let body_len = (buf.len() - start - FRAME_HEADER) as u32;
    let sum = xxhash_rust::xxh3::xxh3_64(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
}

fn decode_body(body: Bytes) -> Option<Frame> {
    let take = |at: &mut usize, n: usize| -> Option<Bytes> {
        let end = at.checked_add(n).filter(|e| *e <= body.len())?;
        let out = body.slice(*at..end);
        *at = end;
        Some(out)
    };
    let mut at = 0;
    let le64 = |b: Bytes| i64::from_le_bytes(b[..].try_into().expect("8 bytes"));
    let offset = le64(take(&mut at, 8)?);
    let ts = le64(take(&mut at, 8)?);
    let klen = u32::from_le_bytes(take(&mut at, 4)?[..].try_into().ok()?) as usize;
    let key = take(&mut at, klen)?;
    let nh = u16::from_le_bytes(take(&mut at, 2)?[..].try_into().ok()?) as usize;
    let mut headers = Vec::with_capacity(nh);
    for _ in 0..nh {
        let n = u16::from_le_bytes(take(&mut at, 2)?[..].try_into().ok()?) as usize;
        let name = String::from_utf8(take(&mut at, n)?.to_vec()).ok()?;
        let vlen = u32::from_le_bytes(take(&mut at, 4)?[..].try_into().ok()?) as usize;
        headers.push((name, take(&mut at, vlen)?));
    }
    let payload = body.slice(at..);
    Some(Frame {
        offset,
        ts,
        key,
        headers,
        payload,
    })
}

/// Reads the frame at the reader's position: `Ok(None)` at a clean end of the file or a
/// torn tail, `Err` on corruption before the end.
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(Frame, u64)>> {
    let mut head = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let sum = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
    if len > MAX_FRAME {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    if let Err(e) = r.read_exact(&mut body) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if xxhash_rust::xxh3::xxh3_64(&body) != sum {
        return Ok(None);
    }
    match decode_body(Bytes::from(body)) {
        Some(f) => Ok(Some((f, (FRAME_HEADER + len) as u64))),
        None => Ok(None),
    }
}

impl Part {
    /// Opens (or creates) a partition folder, cutting a torn tail off its last segment.
    fn open(dir: PathBuf) -> Result<Part, TransportError> {
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let mut bases: Vec<i64> = std::fs::read_dir(&dir)
            .map_err(|e| io_err(&dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<i64>().ok()
            })
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let mut pos = 0u64;
        for (i, base) in bases.iter().enumerate() {
            let path = segment_path(&dir, *base);
            let len = if i + 1 < bases.len() {
                std::fs::metadata(&path)
                    .map_err(|e| io_err(&path, e))?
                    .len()
            } else {
                0
            };
            segments.push(Segment {
                base: *base,
                base_pos: pos,
                path,
            });
            pos += len;
        }
        // Recover the active segment: keep the valid frames, cut what follows.
        let last = segments.last().expect("one segment at least");
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&last.path)
            .map_err(|e| io_err(&last.path, e))?;
        let mut next_offset = last.base;
        let mut valid = 0u64;
        {
            let mut r = BufReader::new(File::open(&last.path).map_err(|e| io_err(&last.path, e))?);
            while let Some((f, size)) = read_frame(&mut r).map_err(|e| io_err(&last.path, e))? {
                if f.offset != next_offset {
                    break;
                }
                next_offset += 1;
                valid += size;
            }
        }
        let on_disk = file.metadata().map_err(|e| io_err(&last.path, e))?.len();
        if on_disk > valid {
            tracing::warn!(
                segment = %last.path.display(),
                cut_bytes = on_disk - valid,
                "cutting a torn tail off the log (records a crash interrupted; never acknowledged)"
            );
            file.set_len(valid).map_err(|e| io_err(&last.path, e))?;
            file.sync_all().map_err(|e| io_err(&last.path, e))?;
        }
        let end_pos = last.base_pos + valid;
        let start_pos = segments[0].base_pos;
        let (durable, _) = watch::channel(Ok((next_offset, end_pos)));
        Ok(Part {
            dir,
            writer: Mutex::new(Writer {
                segments,
                file: Arc::new(file),
                active_len: valid,
                next_offset,
                end_pos,
            }),
            durable,
            queued: AtomicBool::new(false),
            start_pos: AtomicU64::new(start_pos),
        })
    }

    fn durable(&self) -> (i64, u64) {
        match &*self.durable.borrow() {
            Ok(d) => *d,
            Err(_) => (i64::MIN, 0),
        }
    }

    /// Appends records; returns the offset after the last one. On a write error the
    /// segment is cut back, so no partial frame stays behind later appends.
    fn append(
        &self,
        records: &[&OutRecord],
        segment_bytes: u64,
        now_ms: i64,
    ) -> Result<i64, TransportError> {
        let mut w = self.writer.lock().expect("log writer lock");
        if w.active_len >= segment_bytes && w.active_len > 0 {
            // Roll: make the full segment durable before anything is written after it.
            w.file.sync_data().map_err(|e| io_err(&self.dir, e))?;
            let base = w.next_offset;
            let path = segment_path(&self.dir, base);
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            sync_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
            let base_pos = w.end_pos;
            w.segments.push(Segment {
                base,
                base_pos,
                path,
            });
            w.file = Arc::new(file);
            w.active_len = 0;
        }
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 64).sum());
        let mut offset = w.next_offset;
        for r in records {
            encode_frame(&mut buf, offset, now_ms, r);
            offset += 1;
        }
        if let Err(e) = (&*w.file).write_all(&buf) {
            let keep = w.active_len;
            let _ = w.file.set_len(keep);
            return Err(io_err(&self.dir, e));
        }
        w.active_len += buf.len() as u64;
        w.end_pos += buf.len() as u64;
        w.next_offset = offset;
        Ok(offset)
    }
}

/// The fsync thread: makes appended bytes durable and announces them.
struct Syncer {
    queue: Mutex<(Vec<Weak<Part>>, bool)>,
    wake: Condvar,
    data: Arc<Notify>,
}

impl Syncer {
    fn start(data: Arc<Notify>) -> Arc<Syncer> {
        let s = Arc::new(Syncer {
            queue: Mutex::new((Vec::new(), false)),
            wake: Condvar::new(),
            data,
        });
        let me = Arc::downgrade(&s);
        std::thread::Builder::new()
            .name("seismo-log-sync".into())
            .spawn(move || Syncer::run(me))
            .expect("spawning the log sync thread");
        s
    }

    fn request(&self, part: &Arc<Part>) {
        if part.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut q = self.queue.lock().expect("sync queue lock");
        q.0.push(Arc::downgrade(part));
        self.wake.notify_one();
    }

    fn run(me: Weak<Syncer>) {
        loop {
            let Some(s) = me.upgrade() else { return };
            let batch = {
                let mut q = s.queue.lock().expect("sync queue lock");
                while q.0.is_empty() && !q.1 {
                    let (g, _) = s
                        .wake
                        .wait_timeout(q, Duration::from_millis(200))
                        .expect("sync queue lock");
                    q = g;
                    if q.0.is_empty() && Arc::strong_count(&s) == 1 {
                        return;
                    }
                }
                if q.1 && q.0.is_empty() {
                    return;
                }
                std::mem::take(&mut q.0)
            };
            for part in batch.iter().filter_map(Weak::upgrade) {
                part.queued.store(false, Ordering::Release);
                let (file, next, end) = {
                    let w = part.writer.lock().expect("log writer lock");
                    (w.file.clone(), w.next_offset, w.end_pos)
                };
                match file.sync_data() {
                    Ok(()) => {
                        part.durable.send_if_modified(|d| match d {
                            Ok((n, _)) if *n < next => {
                                *d = Ok((next, end));
                                true
                            }
                            _ => false,
                        });
                    }
                    Err(e) => {
                        tracing::error!(dir = %part.dir.display(), error = %e, "fsync of the bus log failed");
                        let _ = part.durable.send_replace(Err(Arc::from(format!(
                            "fsync of {} failed: {e}",
                            part.dir.display()
                        ))));
                    }
                }
            }
            s.data.notify_waiters();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.lock() {
            q.1 = true;
        }
        self.wake.notify_all();
    }
}

impl GroupOffsets {
    fn load(path: PathBuf, partitions: usize) -> GroupOffsets {
        let mut committed = vec![(0i64, None); partitions];
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Some((p, o)) = line.split_once(' ')
                    && let (Ok(p), Ok(o)) = (p.parse::<usize>(), o.parse::<i64>())
                    && p < partitions
                {
                    committed[p].0 = o;
                }
            }
        }
        GroupOffsets {
            path,
            committed: Mutex::new(committed),
        }
    }

    /// Writes the committed offsets (write, rename: never a torn file). Not fsync'd: a
    /// commit lost to a power cut only means a longer replay, which stages absorb.
    fn persist(&self, offsets: &[(i64, Option<u64>)]) -> std::io::Result<()> {
        let text: String = offsets
            .iter()
            .enumerate()
            .map(|(p, (o, _))| format!("{p} {o}\n"))
            .collect();
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

impl Topic {
    /// Bytes not yet committed by the slowest group, over all partitions.
    fn backlog_bytes(&self) -> u64 {
        let groups = self.groups.lock().expect("groups lock");
        self.parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let (_, end) = part.durable();
                let start = part.start_pos.load(Ordering::Acquire);
                let slowest = groups
                    .iter()
                    .map(|g| {
                        g.committed.lock().expect("offsets lock")[i]
                            .1
                            .unwrap_or(start)
                    })
                    .min()
                    .unwrap_or(end);
                end.saturating_sub(slowest)
            })
            .sum()
    }

    /// Deletes segments every group has committed past (never the active one).
    fn retain(&self) {
        let groups = self.groups.lock().expect("groups lock");
        if groups.is_empty() {
            return;
        }
        for (i, part) in self.parts.iter().enumerate() {
            let min = groups
                .iter()
                .map(|g| g.committed.lock().expect("offsets lock")[i].0)
                .min()
                .unwrap_or(0);
            let mut w = part.writer.lock().expect("log writer lock");
            while w.segments.len() > 1 && w.segments[1].base <= min {
                let old = w.segments.remove(0);
                if let Err(e) = std::fs::remove_file(&old.path) {
                    tracing::warn!(segment = %old.path.display(), error = %e, "could not delete a consumed log segment");
                }
                part.start_pos
                    .store(w.segments[0].base_pos, Ordering::Release);
            }
        }
    }
}

impl DiskBus {
    /// Opens the log in `cfg.dir`, recovering every partition, and starts the fsync
    /// thread. Fails if another process holds the folder.
    pub fn open(cfg: DiskBusConfig) -> Result<DiskBus, TransportError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| io_err(&cfg.dir, e))?;
        let lock_path = cfg.dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(TransportError::Other(format!(
                "the bus folder {} is in use by another seismo process",
                cfg.dir.display()
            )));
        }
        let data = Arc::new(Notify::new());
        Ok(DiskBus {
            inner: Arc::new(Bus {
                syncer: Syncer::start(data.clone()),
                data,
                cfg,
                topics: Mutex::default(),
                sealed: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, TransportError> {
        let mut topics = self.inner.topics.lock().expect("topics lock");
        if let Some(t) = topics.get(name) {
            return Ok(t.clone());
        }
        let cfg = &self.inner.cfg;
        let n = cfg
            .topic_partitions
            .get(name)
            .copied()
            .unwrap_or(cfg.partitions)
            .max(1);
        let dir = cfg.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let meta = dir.join("partitions");
        match std::fs::read_to_string(&meta) {
            Ok(text) => {
                let had: u32 = text.trim().parse().unwrap_or(0);
                if had != n {
                    return Err(TransportError::Other(format!(
                        "topic {name} in {} has {had} partitions but the configuration says {n}; \
                         keep the partition count or start with an empty bus folder",
                        cfg.dir.display()
                    )));
                }
            }
            Err(_) => {
                std::fs::write(&meta, format!("{n}\n")).map_err(|e| io_err(&meta, e))?;
            }
        }
        let parts = (0..n)
            .map(|p| Part::open(dir.join(p.to_string())).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Arc::new(Topic {
            name: name.to_string(),
            parts,
            groups: Mutex::default(),
            producers: AtomicUsize::new(0),
            rr: AtomicU64::new(0),
            space: Notify::new(),
        });
        topics.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Joins `group` (its only member) to `topics`, starting after the group's last
    /// committed offsets.
    pub fn subscribe(&self, topics: &[&str], group: &str) -> Result<DiskConsumer, TransportError> {
        let mut parts = Vec::new();
        let mut joined = Vec::new();
        for name in topics {
            let t = self.topic(name)?;
            let gdir = self.inner.cfg.dir.join("groups").join(group);
            std::fs::create_dir_all(&gdir).map_err(|e| io_err(&gdir, e))?;
            let offsets = Arc::new(GroupOffsets::load(
                gdir.join(format!("{name}.offsets")),
                t.parts.len(),
            ));
            t.groups.lock().expect("groups lock").push(offsets.clone());
            for (i, part) in t.parts.iter().enumerate() {
                let start = offsets.committed.lock().expect("offsets lock")[i].0;
                let mut cp = ConsumerPart {
                    topic: t.clone(),
                    index: i as u32,
                    part: part.clone(),
                    offsets: offsets.clone(),
                    reader: None,
                    next_offset: start,
                    delivered: VecDeque::new(),
                };
                let pos = cp.position_at(start)?;
                offsets.committed.lock().expect("offsets lock")[i].1 = Some(pos);
                parts.push(cp);
            }
            joined.push(t);
        }
        Ok(DiskConsumer {
            bus: self.inner.clone(),
            topics: joined,
            parts,
            cursor: 0,
            stop: None,
            drained: false,
        })
    }

    /// A producer for `topics`. Consumers see their stream end (after [`DiskBus::seal`])
    /// once every producer of their topics is dropped.
    pub fn producer(&self, topics: &[&str]) -> Result<DiskProducer, TransportError> {
        let mut map = HashMap::new();
        for name in topics {
            let t = self.topic(name)?;
            t.producers.fetch_add(1, Ordering::AcqRel);
            map.insert(name.to_string(), t);
        }
        Ok(DiskProducer {
            bus: self.inner.clone(),
            topics: Arc::new(map),
        })
    }

    /// Ends the wiring phase: from now on, a topic whose producers are all gone ends its
    /// consumers' streams once they have read everything.
    pub fn seal(&self) {
        self.inner.sealed.store(true, Ordering::Release);
        self.inner.data.notify_waiters();
    }

    /// Bytes of `topic` that its slowest consumer group has not committed.
    pub fn backlog_bytes(&self, topic: &str) -> u64 {
        self.topic(topic).map(|t| t.backlog_bytes()).unwrap_or(0)
    }
}

/// Producer half of the [`DiskBus`]; cheap to clone.
pub struct DiskProducer {
    bus: Arc<Bus>,
    topics: Arc<HashMap<String, Arc<Topic>>>,
}

impl std::fmt::Debug for DiskProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskProducer")
    }
}

impl Clone for DiskProducer {
    fn clone(&self) -> Self {
        for t in self.topics.values() {
            t.producers.fetch_add(1, Ordering::AcqRel);
        }
        DiskProducer {
            bus: self.bus.clone(),
            topics: self.topics.clone(),
        }
    }
}

impl Drop for DiskProducer {
    fn drop(&mut self) {
        for t in self.topics.values() {
            t.producers.fetch_sub(1, Ordering::AcqRel);
        }
        self.bus.data.notify_waiters();
    }
}

impl DiskProducer {
    fn topic(&self, name: &str) -> Result<&Arc<Topic>, TransportError> {
        self.topics
            .get(name)
            .ok_or_else(|| TransportError::UnknownTopic(name.to_string()))
    }

    /// Waits until `topic` has backlog room, or until `deadline` (then `Full`).
    async fn room(
        &self,
        t: &Topic,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), TransportError> {
        let limit = self.bus.cfg.max_backlog_bytes;
        loop {
            let space = t.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if t.backlog_bytes() <= limit {
                return Ok(());
            }
            let wait = Duration::from_millis(50);
            match deadline {
                Some(d) if tokio::time::Instant::now() >= d => return Err(TransportError::Full),
                Some(d) => {
                    let _ =
                        tokio::time::timeout_at(d.min(tokio::time::Instant::now() + wait), space)
                            .await;
                }
                None => {
                    let _ = tokio::time::timeout(wait, space).await;
                }
            }
        }
    }

    async fn append(&self, t: &Topic, records: Vec<OutRecord>) -> Result<(), TransportError> {
        let n = t.parts.len() as u32;
        let mut by_part: BTreeMap<u32, Vec<&OutRecord>> = BTreeMap::new();
        for r in &records {
            let p = match r.partition {
                Some(p) => p % n,
                None if r.key.is_empty() => {
                    (t.rr.fetch_add(1, Ordering::Relaxed) % u64::from(n)) as u32
                }
                None => partition_for(&r.key, n),
            };
            by_part.entry(p).or_default().push(r);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut waits = Vec::with_capacity(by_part.len());
        for (p, recs) in by_part {
            let part = &t.parts[p as usize];
            let end = part.append(&recs, self.bus.cfg.segment_bytes, now_ms)?;
            self.bus.syncer.request(part);
            waits.push((part.clone(), end));
        }
        for (part, end) in waits {
            let mut rx = part.durable.subscribe();
            let r = rx
                .wait_for(|d| match d {
                    Ok((n, _)) => *n >= end,
                    Err(_) => true,
                })
                .await
                .map_err(|_| TransportError::Closed(t.name.clone()))?;
            if let Err(e) = &*r {
                return Err(TransportError::Other(e.to_string()));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Producer for DiskProducer {
    async fn send(&self, topic: &str, records: Vec<OutRecord>) -> Result<(), TransportError> {
        let t = self.topic(topic)?.clone();
        if records.is_empty() {
            return Ok(());
        }
        self.room(&t, None).await?;
        self.append(&t, records).await
    }

    /// Admission is all-or-nothing: the records are refused (nothing written) when the
    /// topic's backlog stays beyond `max_backlog_bytes` until the timeout. Once admitted
    /// they are appended and the call returns when they are durable.
    async fn try_send_all(
        &self,
        topic: &str,
        records: Vec<OutRecord>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let t = self.topic(topic)?.clone();
        if records.is_empty() {
            return Ok(());
        }
        self.room(&t, Some(tokio::time::Instant::now() + timeout))
            .await?;
        self.append(&t, records).await
    }

    async fn flush(&self) -> Result<(), TransportError> {
        // A send returns only once its records are durable.
        Ok(())
    }
}

struct ConsumerPart {
    topic: Arc<Topic>,
    index: u32,
    part: Arc<Part>,
    offsets: Arc<GroupOffsets>,
    reader: Option<SegReader>,
    next_offset: i64,
    /// (offset, logical end position) of records handed out and not yet committed.
    delivered: VecDeque<(i64, u64)>,
}

struct SegReader {
    base: i64,
    file: BufReader<File>,
    pos: u64,
}

impl ConsumerPart {
    /// Positions the reader at `offset` (or at the first retained record when it is
    /// gone) and returns the logical position there.
    fn position_at(&mut self, offset: i64) -> Result<u64, TransportError> {
        let (path, base, base_pos) = {
            let w = self.part.writer.lock().expect("log writer lock");
            let i = w
                .segments
                .iter()
                .rposition(|s| s.base <= offset)
                .unwrap_or(0);
            let s = &w.segments[i];
            (s.path.clone(), s.base, s.base_pos)
        };
        let file = File::open(&path).map_err(|e| io_err(&path, e))?;
        let mut r = SegReader {
            base,
            file: BufReader::with_capacity(256 << 10, file),
            pos: 0,
        };
        let mut next = base;
        while next < offset.min(self.part.durable().0) {
            match read_frame(&mut r.file).map_err(|e| io_err(&path, e))? {
                Some((_, size)) => {
                    r.pos += size;
                    next += 1;
                }
                None => break,
            }
        }
        self.next_offset = next;
        self.reader = Some(r);
        self.delivered.clear();
        Ok(base_pos + self.reader.as_ref().map_or(0, |r| r.pos))
    }

    /// The next durable record, if any.
    fn read(&mut self) -> Result<Option<(Message, u64)>, TransportError> {
        let (durable, _) = self.part.durable();
        if self.next_offset >= durable {
            return Ok(None);
        }
        loop {
            if self.reader.is_none() {
                self.position_at(self.next_offset)?;
            }
            let r = self.reader.as_mut().expect("positioned");
            let path = segment_path(&self.part.dir, r.base);
            let at = r.file.stream_position().map_err(|e| io_err(&path, e))?;
            match read_frame(&mut r.file).map_err(|e| io_err(&path, e))? {
                Some((f, size)) => {
                    if f.offset != self.next_offset {
                        return Err(TransportError::Io(std::io::Error::other(format!(
                            "{}: expected offset {} at byte {at}, found {}",
                            path.display(),
                            self.next_offset,
                            f.offset
                        ))));
                    }
                    r.pos += size;
                    let base_pos = {
                        let w = self.part.writer.lock().expect("log writer lock");
                        w.segments
                            .iter()
                            .find(|s| s.base == r.base)
                            .map_or(0, |s| s.base_pos)
                    };
                    self.next_offset += 1;
                    let end = base_pos + r.pos;
                    let m = Message {
                        topic: self.topic.name.clone(),
                        partition: self.index,
                        offset: f.offset,
                        key: f.key,
                        payload: f.payload,
                        headers: f.headers,
                        timestamp_ms: Some(f.ts),
                    };
                    return Ok(Some((m, end)));
                }
                None => {
                    // End of this segment: the next record starts the next one.
                    let has_next = {
                        let w = self.part.writer.lock().expect("log writer lock");
                        w.segments.iter().any(|s| s.base == self.next_offset)
                    };
                    if !has_next {
                        // The writer has not finished this frame yet (not durable): wait.
                        r.file
                            .seek(SeekFrom::Start(at))
                            .map_err(|e| io_err(&path, e))?;
                        return Ok(None);
                    }
                    self.reader = None;
                }
            }
        }
    }
}

/// The only member of a consumer group on the [`DiskBus`].
pub struct DiskConsumer {
    bus: Arc<Bus>,
    topics: Vec<Arc<Topic>>,
    parts: Vec<ConsumerPart>,
    cursor: usize,
    stop: Option<watch::Receiver<bool>>,
    drained: bool,
}

impl std::fmt::Debug for DiskConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskConsumer")
    }
}

impl DiskConsumer {
    /// Ends the stream (without draining) once `stop` turns true, as a Kafka consumer does
    /// on shutdown: what is not yet consumed stays in the log for the next start.
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    fn ended(&self) -> bool {
        self.bus.sealed.load(Ordering::Acquire)
            && self
                .topics
                .iter()
                .all(|t| t.producers.load(Ordering::Acquire) == 0)
            && self.parts.iter().all(|p| {
                let w = p.part.writer.lock().expect("log writer lock");
                p.next_offset >= w.next_offset
            })
    }
}

#[async_trait]
impl Consumer for DiskConsumer {
    async fn next_batch(&mut self, max: usize) -> Option<Result<Vec<Message>, TransportError>> {
        let idle = tokio::time::sleep(IDLE_TICK);
        tokio::pin!(idle);
        loop {
            if self.stopping() {
                return None;
            }
            let data = self.bus.data.clone();
            let woken = data.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut out = Vec::new();
            let mut bytes = 0u64;
            let n = self.parts.len();
            let mut dry = 0;
            while out.len() < max.max(1) && bytes < MAX_BATCH_BYTES && dry < n {
                let i = self.cursor % n;
                match self.parts[i].read() {
                    Ok(Some((m, end))) => {
                        bytes += m.payload.len() as u64;
                        self.parts[i].delivered.push_back((m.offset, end));
                        out.push(m);
                        dry = 0;
                    }
                    Ok(None) => {
                        dry += 1;
                        self.cursor += 1;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            if !out.is_empty() {
                return Some(Ok(out));
            }
            if self.ended() {
                self.drained = true;
                return None;
            }
            let stop = async {
                match &mut self.stop {
                    Some(s) => {
                        let _ = s.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut woken => {}
                _ = &mut idle => return Some(Ok(Vec::new())),
                _ = stop => {}
            }
        }
    }

    async fn commit(&mut self, batch: &[Message]) -> Result<(), TransportError> {
        let mut upto: BTreeMap<(&str, u32), i64> = BTreeMap::new();
        for m in batch {
            let e = upto
                .entry((m.topic.as_str(), m.partition))
                .or_insert(m.offset);
            *e = (*e).max(m.offset);
        }
        let mut touched: Vec<Arc<GroupOffsets>> = Vec::new();
        let mut topics: Vec<Arc<Topic>> = Vec::new();
        for cp in &mut self.parts {
            let Some(&last) = upto.get(&(cp.topic.name.as_str(), cp.index)) else {
                continue;
            };
            let mut end = None;
            while let Some(&(o, e)) = cp.delivered.front() {
                if o > last {
                    break;
                }
                end = Some(e);
                cp.delivered.pop_front();
            }
            let mut c = cp.offsets.committed.lock().expect("offsets lock");
            let slot = &mut c[cp.index as usize];
            if last + 1 > slot.0 {
                slot.0 = last + 1;
                if end.is_some() {
                    slot.1 = end;
                }
            }
            drop(c);
            if !touched.iter().any(|g| Arc::ptr_eq(g, &cp.offsets)) {
                touched.push(cp.offsets.clone());
                topics.push(cp.topic.clone());
            }
        }
        for (g, t) in touched.iter().zip(&topics) {
            let snapshot = g.committed.lock().expect("offsets lock").clone();
            g.persist(&snapshot).map_err(|e| io_err(&g.path, e))?;
            t.retain();
            t.space.notify_waiters();
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.parts.iter().map(|p| p.index).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), TransportError> {
        let cp = self
            .parts
            .iter_mut()
            .find(|p| p.topic.name == topic && p.index == partition)
            .ok_or_else(|| TransportError::UnknownTopic(format!("{topic}/{partition}")))?;
        cp.position_at(offset)?;
        Ok(())
    }

    fn drained(&self) -> bool {
        self.drained
    }

    fn lag(&self) -> Option<(u64, u64)> {
        let mut records = 0u64;
        let mut bytes = 0u64;
        for cp in &self.parts {
            let (durable, end) = cp.part.durable();
            let c = cp.offsets.committed.lock().expect("offsets lock")[cp.index as usize];
            records += (durable - c.0).max(0) as u64;
            bytes += end.saturating_sub(c.1.unwrap_or(end));
        }
        Some((records, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> DiskBusConfig {
        DiskBusConfig {
            dir: dir.to_path_buf(),
            partitions: 2,
            topic_partitions: BTreeMap::new(),
            segment_bytes: 256,
            max_backlog_bytes: 1 << 20,
        }
    }

    fn rec(key: &str, payload: &str) -> OutRecord {
        OutRecord::new(key.as_bytes().to_vec(), payload.as_bytes().to_vec())
            .header("h", Bytes::from_static(b"v"))
    }

    async fn read_all(c: &mut DiskConsumer) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(b) = c.next_batch(7).await {
            let b = b.unwrap();
            if b.is_empty() {
                break;
            }
            out.extend(b);
        }
        out
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_consumers_resume_after_their_commit() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = DiskBus::open(cfg(dir.path())).unwrap();
            let mut c = bus.subscribe(&["t"], "g").unwrap();
            let p = bus.producer(&["t"]).unwrap();
            for chunk in 0..4 {
                let recs: Vec<_> = (chunk * 10..chunk * 10 + 10)
                    .map(|i| rec(&format!("k{}", i % 3), &i.to_string()))
                    .collect();
                p.send("t", recs).await.unwrap();
            }
            let got = read_all(&mut c).await;
            assert_eq!(got.len(), 40);
            assert_eq!(got[0].header("h").map(|v| &v[..]), Some(&b"v"[..]));
            // Keys keep their order within their partition.
            for k in ["k0", "k1", "k2"] {
                let vals: Vec<i32> = got
                    .iter()
                    .filter(|m| m.key == k.as_bytes())
                    .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
                    .collect();
                assert!(vals.windows(2).all(|w| w[0] < w[1]), "{vals:?}");
            }
            // Commit the first 10 records only.
            c.commit(&got[..10]).await.unwrap();
        }
        let bus = DiskBus::open(cfg(dir.path())).unwrap();
        let mut c = bus.subscribe(&["t"], "g").unwrap();
        let again = read_all(&mut c).await;
        // Everything not covered by the commit comes back (commits are per partition).
        assert!(again.len() >= 30 && again.len() < 40, "{}", again.len());
        // Segments rolled (256-byte segments) and the log still reads in order.
        let segs: usize = ["t/0", "t/1"]
            .iter()
            .map(|d| std::fs::read_dir(dir.path().join(d)).unwrap().count())
            .sum();
        assert!(segs > 2, "{segs} segments");
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfgx = cfg(dir.path());
        cfgx.partitions = 1;
        cfgx.segment_bytes = 1 << 20;
        {
            let bus = DiskBus::open(cfgx.clone()).unwrap();
            let p = bus.producer(&["t"]).unwrap();
            p.send("t", vec![rec("a", "one"), rec("a", "two")])
                .await
                .unwrap();
        }
        // A crash mid-append leaves half a frame behind.
        let seg = dir.path().join("t/0").join(format!("{:020}.log", 0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let bus = DiskBus::open(cfgx).unwrap();
        let mut c = bus.subscribe(&["t"], "g").unwrap();
        let p = bus.producer(&["t"]).unwrap();
        p.send("t", vec![rec("a", "three")]).await.unwrap();
        let got: Vec<_> = read_all(&mut c)
            .await
            .into_iter()
            .map(|m| (m.offset, m.payload))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Bytes::from("one")),
                (1, Bytes::from("two")),
                (2, Bytes::from("three"))
            ]
        );
    }

    #[tokio::test]
    async fn a_full_backlog_refuses_then_drains_and_consumed_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfgx = cfg(dir.path());
        cfgx.partitions = 1;
        cfgx.max_backlog_bytes = 300;
        let bus = DiskBus::open(cfgx).unwrap();
        let mut c = bus.subscribe(&["t"], "g").unwrap();
        let p = bus.producer(&["t"]).unwrap();
        let big = "x".repeat(200);
        for _ in 0..2 {
            p.try_send_all("t", vec![rec("", &big)], Duration::from_millis(10))
                .await
                .unwrap();
        }
        let err = p
            .try_send_all("t", vec![rec("", "y")], Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Full));
        let got = read_all(&mut c).await;
        c.commit(&got).await.unwrap();
        let segs = std::fs::read_dir(dir.path().join("t/0")).unwrap().count();
        assert_eq!(
            segs, 1,
            "consumed segments are deleted, the active one stays"
        );
        p.try_send_all("t", vec![rec("", "y")], Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(c.lag().unwrap().0, 1);
    }

    #[tokio::test]
    async fn the_stream_ends_when_producers_are_gone_and_seek_rewinds() {
        let dir = tempfile::tempdir().unwrap();
        let bus = DiskBus::open(cfg(dir.path())).unwrap();
        let mut c = bus.subscribe(&["t"], "g").unwrap();
        let p = bus.producer(&["t"]).unwrap();
        bus.seal();
        p.send(
            "t",
            (0..5)
                .map(|i| rec("same", &i.to_string()).to_partition(1))
                .collect(),
        )
        .await
        .unwrap();
        drop(p);
        let mut got = Vec::new();
        while let Some(b) = c.next_batch(100).await {
            got.extend(b.unwrap());
        }
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|m| m.partition == 1));
        assert!(c.drained());
        c.seek("t", 1, 3).unwrap();
        let rest: Vec<i64> = read_all(&mut c).await.iter().map(|m| m.offset).collect();
        assert_eq!(rest, vec![3, 4]);
        // A second process cannot open the same folder.
        assert!(DiskBus::open(cfg(dir.path())).is_err());
    }
}
