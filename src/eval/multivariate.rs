//! `seismo eval multivariate DIR`: server-metric entities (SMD, ASD) streamed through the pipeline's detector, scored per entity, pooled, and left one entity out.
//!
//! Each entity is a host: every column of its `train.csv` then `test.csv` becomes a series
//! `mNN{host=<entity>}` with one point per row, fed to the same [`Detector`] the detect
//! stage runs (per-series ensemble alarms and the host model, one configuration). What
//! the detector raises in the test rows is scored against the labels:
//! - point-adjusted precision, recall and F1 (OmniAnomaly's `adjust_predicts`: a segment
//!   with one raised row counts whole; rows raised outside segments are false positives);
//! - event recall (segments with at least one raised row);
//! - false-alarm minutes per day (rows raised outside every segment, times the sampling
//!   step, per test day);
//! - the median detection delay (first raised row minus the segment's start);
//! - HitRate@100 % and @150 % of the explanation: per interpretation line that was
//!   detected, the metrics ranked by the evidence the raised anomalies give them (a
//!   series alarm: its own surprisal; a host anomaly: each member's attributed
//!   surprisal), k = floor(P/100 · |labelled metrics|).
#![expect(
    clippy::disallowed_methods,
    reason = "evaluations report their wall time"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use seismo_detect::{DetectConfig, Detector};
use seismo_schemas::{Anomaly, MetricPoint};
use serde::Serialize;

use super::read_numeric_csv;

/// The first training row's time: a Monday, 00:00 UTC (2026-01-05), so the detectors'
/// time-of-day and weekly views line up with something plausible.
const EPOCH_MS: i64 = 1_767_571_200_000;

/// The sampling step of a group the data sets' description gives, in seconds: ASD is
/// sampled every 5 minutes, SMD every minute.
pub fn default_step(group: &str) -> u64 {
    if group.eq_ignore_ascii_case("asd") {
        300
    } else {
        60
    }
}

/// One entity's data: its metric columns, train and test rows, labels and interpretation.
#[derive(Debug, Clone)]
pub struct Entity {
    pub group: String,
    pub name: String,
    pub step_secs: u64,
    pub metrics: Vec<String>,
    pub train: Vec<f64>,
    pub test: Vec<f64>,
    pub labels: Vec<bool>,
    /// Interpretation lines: test rows `[start, end)` and their (0-based) metrics.
    pub lines: Vec<(usize, usize, Vec<usize>)>,
}

impl Entity {
    fn width(&self) -> usize {
        self.metrics.len()
    }

    fn test_rows(&self) -> usize {
        self.labels.len()
    }

    /// Maximal runs of labelled rows, `[start, end)`.
    pub fn segments(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.labels.len() {
            if self.labels[i] {
                let s = i;
                while i < self.labels.len() && self.labels[i] {
                    i += 1;
                }
                out.push((s, i));
            } else {
                i += 1;
            }
        }
        out
    }
}

/// Reads `start-end:m1,m2,...` lines (1-based metrics). The two data sets disagree on
/// whether `end` is in the segment; the labels decide: a line covers its labelled rows
/// from `start` up to `end` at most.
fn read_interpretation(
    path: &Path,
    labels: &[bool],
    width: usize,
) -> anyhow::Result<Vec<(usize, usize, Vec<usize>)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "{} line {}: expected start-end:m1,m2,... got {line:?}",
                path.display(),
                n + 1
            )
        };
        let (span, metrics) = line.split_once(':').with_context(bad)?;
        let (a, b) = span.split_once('-').with_context(bad)?;
        let (a, b): (usize, usize) = (
            a.trim().parse().with_context(bad)?,
            b.trim().parse().with_context(bad)?,
        );
        let mut ms = Vec::new();
        for m in metrics.split(',') {
            let k: usize = m.trim().parse().with_context(bad)?;
            if k == 0 || k > width {
                bail!(
                    "{}: metric {k} is not among the {width} columns (metrics are 1-based)",
                    bad()
                );
            }
            ms.push(k - 1);
        }
        let mut end = a;
        while end <= b && end < labels.len() && labels[end] {
            end += 1;
        }
        if end > a {
            out.push((a, end, ms));
        }
    }
    Ok(out)
}

/// Opens `dir`: either one group (a folder of entity folders) or a folder of groups
/// (`smd/`, `asd/`). An entity folder holds `train.csv`, `test.csv` with a `label`
/// column, and optionally `interpretation.txt`.
pub fn open(dir: &Path, steps: &BTreeMap<String, u64>) -> anyhow::Result<Vec<Entity>> {
    entity_dirs(dir)?
        .into_iter()
        .map(|(group, p)| {
            let step = steps
                .get(&group)
                .copied()
                .unwrap_or_else(|| default_step(&group));
            open_entity(&p, &group, step)
        })
        .collect()
}

/// The entity folders under `dir` with their group's name, in name order: `dir` itself when
/// it is one (its group is its parent's name), else its entity subfolders (its group is
/// `dir`'s name), else those of each subfolder (a folder of groups).
pub fn entity_dirs(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let is_entity = |p: &Path| p.join("train.csv").is_file() && p.join("test.csv").is_file();
    let children = |p: &Path| -> anyhow::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        Ok(v)
    };
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if is_entity(dir) {
        let group = dir.parent().map(name_of).unwrap_or_default();
        return Ok(vec![(group, dir.to_path_buf())]);
    }
    let mut out: Vec<(String, PathBuf)> = children(dir)?
        .into_iter()
        .filter(|p| is_entity(p))
        .map(|p| (name_of(dir), p))
        .collect();
    if out.is_empty() {
        for g in children(dir)? {
            out.extend(
                children(&g)?
                    .into_iter()
                    .filter(|p| is_entity(p))
                    .map(|p| (name_of(&g), p)),
            );
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no entity folders (each with train.csv and test.csv) in it or in its subfolders",
            dir.display()
        );
    }
    Ok(out)
}

/// Reads one entity folder (`train.csv`, `test.csv` with a `label` column, optionally
/// `interpretation.txt`) of `group`, sampled every `step_secs`.
pub fn open_entity(p: &Path, group: &str, step_secs: u64) -> anyhow::Result<Entity> {
    let train = read_numeric_csv(&p.join("train.csv"))?;
    let test = read_numeric_csv(&p.join("test.csv"))?;
    let label = test
        .column("label")
        .with_context(|| format!("{}: test.csv has no label column", p.display()))?;
    let (test_values, w) = test.features_without(Some(label));
    let (train_values, tw) = train.features_without(train.column("label"));
    let metrics: Vec<String> = train
        .header
        .iter()
        .filter(|h| *h != "label")
        .cloned()
        .collect();
    if tw != w {
        bail!(
            "{}: train.csv has {tw} metric columns, test.csv {w}",
            p.display()
        );
    }
    let labels: Vec<bool> = test
        .data
        .chunks(test.width())
        .map(|r| r[label] != 0.0)
        .collect();
    let lines = read_interpretation(&p.join("interpretation.txt"), &labels, w)?;
    Ok(Entity {
        group: group.to_string(),
        name: p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        step_secs,
        metrics,
        train: train_values,
        test: test_values,
        labels,
        lines,
    })
}

/// What the detector raised on an entity's test rows: per row, whether anything was
/// raised, and per row the evidence each metric got (largest over the row's anomalies).
#[derive(Debug, Clone, Default)]
pub struct Raised {
    pub rows: Vec<bool>,
    pub evidence: Vec<BTreeMap<usize, f64>>,
    /// Anomalies raised in the training rows (no labels there; shown, not scored).
    pub train_anomalies: usize,
    pub test_anomalies: usize,
    /// Per row, the detectors that raised something in it.
    pub detectors: Vec<Vec<String>>,
}

/// The evidence an anomaly gives each metric (by column index): a series alarm gives its
/// own metric the largest calibrated surprisal of its detectors; a host anomaly gives each
/// member its share of the host's surprisal.
fn evidence(a: &Anomaly, column: &BTreeMap<&str, usize>) -> Vec<(usize, f64)> {
    if a.explanation.features.is_empty() {
        // Detector parts carry surprisal / 300 (the band's part is a 0..1 score: left out).
        let own = a
            .explanation
            .detectors
            .iter()
            .filter(|d| d.detector != a.detector)
            .map(|d| d.score * 300.0)
            .fold(a.score * 300.0, f64::max);
        return column
            .get(a.name.as_str())
            .map(|c| (*c, own))
            .into_iter()
            .collect();
    }
    let surprisal = a.score * 300.0;
    a.explanation
        .features
        .iter()
        .filter_map(|f| {
            column
                .get(f.feature.as_str())
                .map(|c| (*c, f.weight * surprisal))
        })
        .collect()
}

/// Streams an entity's train then test rows through a fresh detector.
pub fn run_entity(cfg: &DetectConfig, e: &Entity) -> Raised {
    let mut det = Detector::new(cfg.clone());
    let w = e.width();
    let step_ms = e.step_secs as i64 * 1000;
    let train_rows = e.train.len() / w.max(1);
    let column: BTreeMap<&str, usize> = e
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut raised = Raised {
        rows: vec![false; e.test_rows()],
        evidence: vec![BTreeMap::new(); e.test_rows()],
        detectors: vec![Vec::new(); e.test_rows()],
        ..Default::default()
    };
    let labels: seismo_schemas::Labels = [("host".to_string(), e.name.clone())].into();
    let take = |found: Vec<Anomaly>, raised: &mut Raised| {
        for a in found {
            let row = (a.ts.timestamp_millis() - EPOCH_MS).div_euclid(step_ms);
            let Some(t) = usize::try_from(row - train_rows as i64)
                .ok()
                .filter(|t| *t < raised.rows.len())
            else {
                raised.train_anomalies += 1;
                continue;
            };
            raised.test_anomalies += 1;
            raised.rows[t] = true;
            if !raised.detectors[t].contains(&a.detector) {
                raised.detectors[t].push(a.detector.clone());
            }
            for (c, v) in evidence(&a, &column) {
                let slot = raised.evidence[t].entry(c).or_insert(0.0);
                *slot = slot.max(v);
            }
        }
    };
    let rows = e.train.chunks(w).chain(e.test.chunks(w));
    for (r, values) in rows.enumerate() {
        let ts = EPOCH_MS + r as i64 * step_ms;
        for (name, v) in e.metrics.iter().zip(values) {
            let p = MetricPoint {
                tenant: "eval".into(),
                name: name.clone(),
                labels: labels.clone(),
                ts,
                value: *v,
            };
            let found = det.process(0, &p);
            take(found, &mut raised);
        }
    }
    let found = det.flush(0, i64::MAX);
    take(found, &mut raised);
    raised
}

/// One entity's (or a pool's) scores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub test_days: f64,
    pub segments: usize,
    pub detected: usize,
    /// Point-adjusted counts.
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub event_recall: f64,
    pub false_alarm_minutes_per_day: f64,
    /// Detection delays of the detected segments, in minutes.
    pub delays_min: Vec<f64>,
    pub median_delay_min: f64,
    /// HitRate sums and how many interpretation lines were detected and ranked.
    pub hit100_sum: f64,
    pub hit150_sum: f64,
    pub ranked: usize,
    pub hit100: f64,
    pub hit150: f64,
    /// Rows raised outside every segment, and the minutes they stand for (rows times the
    /// step; a pool may mix steps, so it adds minutes, not rows).
    pub false_rows: usize,
    pub false_minutes: f64,
    /// The sampling step (0 in a pool of several steps).
    pub step_secs: u64,
    /// Per detector: the rows outside segments it raised, and the segments whose first
    /// raised row it raised.
    pub false_rows_by: BTreeMap<String, usize>,
    pub false_rows_after_segment: usize,
    pub detected_by: BTreeMap<String, usize>,
}

impl Scores {
    fn finish(mut self) -> Self {
        self.precision = self.tp as f64 / (self.tp + self.fp).max(1) as f64;
        self.recall = self.tp as f64 / (self.tp + self.fn_).max(1) as f64;
        self.f1 = if self.precision + self.recall > 0.0 {
            2.0 * self.precision * self.recall / (self.precision + self.recall)
        } else {
            0.0
        };
        self.event_recall = self.detected as f64 / self.segments.max(1) as f64;
        self.false_alarm_minutes_per_day = self.false_minutes / self.test_days.max(1e-9);
        let mut d = self.delays_min.clone();
        d.sort_by(f64::total_cmp);
        self.median_delay_min = if d.is_empty() {
            f64::NAN
        } else if d.len() % 2 == 1 {
            d[d.len() / 2]
        } else {
            (d[d.len() / 2 - 1] + d[d.len() / 2]) / 2.0
        };
        let n = self.ranked.max(1) as f64;
        (self.hit100, self.hit150) = if self.ranked == 0 {
            (f64::NAN, f64::NAN)
        } else {
            (self.hit100_sum / n, self.hit150_sum / n)
        };
        self
    }

    /// Pools entities' scores: counts add, rates are recomputed.
    pub fn pool<'a>(all: impl IntoIterator<Item = &'a Scores>) -> Scores {
        let mut p = Scores::default();
        let mut steps = std::collections::BTreeSet::new();
        for s in all {
            steps.insert(s.step_secs);
            p.false_minutes += s.false_minutes;
            p.test_days += s.test_days;
            p.segments += s.segments;
            p.detected += s.detected;
            p.tp += s.tp;
            p.fp += s.fp;
            p.fn_ += s.fn_;
            p.delays_min.extend(&s.delays_min);
            p.hit100_sum += s.hit100_sum;
            p.hit150_sum += s.hit150_sum;
            p.ranked += s.ranked;
            p.false_rows += s.false_rows;
            p.false_rows_after_segment += s.false_rows_after_segment;
            for (k, v) in &s.false_rows_by {
                *p.false_rows_by.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &s.detected_by {
                *p.detected_by.entry(k.clone()).or_default() += v;
            }
        }
        p.step_secs = match steps.len() {
            1 => steps.into_iter().next().unwrap_or(0),
            _ => 0,
        };
        p.finish()
    }
}

/// HitRate@P% of one ranking against the labelled metrics.
fn hit_rate(ranking: &[usize], truth: &[usize], percent: usize, width: usize) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    let k = (percent * truth.len() / 100).min(width);
    ranking.iter().take(k).filter(|m| truth.contains(m)).count() as f64 / truth.len() as f64
}

/// Scores what was raised on an entity.
pub fn score(e: &Entity, raised: &Raised) -> Scores {
    let mut s = Scores {
        step_secs: e.step_secs,
        test_days: e.test_rows() as f64 * e.step_secs as f64 / 86_400.0,
        ..Default::default()
    };
    let segments = e.segments();
    s.segments = segments.len();
    for &(a, b) in &segments {
        let first = (a..b).find(|t| raised.rows[*t]);
        if let Some(f) = first {
            s.detected += 1;
            s.tp += b - a;
            s.delays_min
                .push((f - a) as f64 * e.step_secs as f64 / 60.0);
            for d in raised.detectors.get(f).into_iter().flatten() {
                *s.detected_by.entry(d.clone()).or_default() += 1;
            }
        } else {
            s.fn_ += b - a;
        }
    }
    s.false_rows = (0..e.test_rows())
        .filter(|t| raised.rows[*t] && !e.labels[*t])
        .count();
    s.fp = s.false_rows;
    s.false_minutes = s.false_rows as f64 * e.step_secs as f64 / 60.0;
    // False rows within an hour after a segment's end: often the labelled episode's
    // aftermath rather than a new false alarm (shown apart; counted as false anyway).
    let hour = (3600 / e.step_secs.max(1)) as usize;
    s.false_rows_after_segment = (0..e.test_rows())
        .filter(|t| raised.rows[*t] && !e.labels[*t])
        .filter(|t| segments.iter().any(|(_, b)| *t >= *b && *t < b + hour))
        .count();
    for t in (0..e.test_rows()).filter(|t| raised.rows[*t] && !e.labels[*t]) {
        for d in raised.detectors.get(t).into_iter().flatten() {
            *s.false_rows_by.entry(d.clone()).or_default() += 1;
        }
    }
    for (a, b, truth) in &e.lines {
        // The metrics ranked by their largest evidence over the line's raised rows; ties
        // (and metrics without evidence) in column order.
        let mut best: BTreeMap<usize, f64> = BTreeMap::new();
        for t in *a..*b {
            for (c, v) in &raised.evidence[t] {
                let slot = best.entry(*c).or_insert(0.0);
                *slot = slot.max(*v);
            }
        }
        if !(*a..*b).any(|t| raised.rows[t]) {
            continue;
        }
        let mut ranking: Vec<usize> = (0..e.width()).collect();
        ranking.sort_by(|x, y| {
            let v = |m: &usize| best.get(m).copied().unwrap_or(0.0);
            v(y).total_cmp(&v(x)).then(x.cmp(y))
        });
        s.ranked += 1;
        s.hit100_sum += hit_rate(&ranking, truth, 100, e.width());
        s.hit150_sum += hit_rate(&ranking, truth, 150, e.width());
    }
    s.finish()
}

/// One entity's result in a report.
#[derive(Debug, Clone, Serialize)]
pub struct EntityReport {
    pub group: String,
    pub entity: String,
    pub scores: Scores,
    pub train_anomalies: usize,
    pub test_anomalies: usize,
}

/// A held-out entity, scored with the candidate the other entities of its group chose.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    pub group: String,
    pub entity: String,
    pub choice: usize,
    pub scores: Scores,
}

/// What `seismo eval multivariate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub candidates: Vec<String>,
    /// Per group, the candidate chosen on all of its entities.
    pub chosen: BTreeMap<String, usize>,
    /// Every entity at its group's chosen candidate.
    pub entities: Vec<EntityReport>,
    /// Per group, the entities pooled at the chosen candidate.
    pub pooled: BTreeMap<String, Scores>,
    /// Per group, the entities pooled at every candidate.
    pub candidate_pooled: BTreeMap<String, Vec<Scores>>,
    pub folds: Vec<Fold>,
    /// Per group, the held-out folds pooled.
    pub folds_pooled: BTreeMap<String, Scores>,
    /// The target a candidate is chosen by: false-alarm minutes a day at most.
    pub max_false_minutes_per_day: f64,
    pub seconds: f64,
}

/// The candidate the entities `fit` choose: the best event recall (pooled over `fit`)
/// among those that keep every host of `fit` within the false-alarm budget (the target is
/// per host), then the best point-adjusted F1; if none does, the smallest worst host.
fn choose(scores: &[Vec<Scores>], fit: &[usize], budget: f64) -> usize {
    let worst = |c: usize| {
        fit.iter()
            .map(|i| scores[c][*i].false_alarm_minutes_per_day)
            .fold(0.0, f64::max)
    };
    let pooled: Vec<Scores> = scores
        .iter()
        .map(|c| Scores::pool(fit.iter().map(|i| &c[*i])))
        .collect();
    let within: Vec<usize> = (0..pooled.len()).filter(|c| worst(*c) <= budget).collect();
    if within.is_empty() {
        return (0..pooled.len())
            .min_by(|a, b| worst(*a).total_cmp(&worst(*b)))
            .unwrap_or(0);
    }
    let mut best = within[0];
    for &c in &within[1..] {
        let (p, q) = (&pooled[c], &pooled[best]);
        if (p.event_recall, p.f1) > (q.event_recall, q.f1) {
            best = c;
        }
    }
    best
}

/// Runs every candidate over every entity (two at a time) and builds the report.
pub fn report(
    entities: &[Entity],
    candidates: &[(String, DetectConfig)],
    budget: f64,
    progress: bool,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!candidates.is_empty(), "no configuration to score");
    anyhow::ensure!(!entities.is_empty(), "no entities");
    let started = std::time::Instant::now();
    let jobs: Vec<(usize, usize)> = (0..candidates.len())
        .flat_map(|c| (0..entities.len()).map(move |e| (c, e)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(c, e)) = jobs.get(j) else { break };
                    let raised = run_entity(&candidates[c].1, &entities[e]);
                    let sc = score(&entities[e], &raised);
                    if progress {
                        eprintln!(
                            "  [{}/{}] {}/{} ({}): event recall {:.2}, {:.1} false-alarm min/day",
                            j + 1,
                            jobs.len(),
                            entities[e].group,
                            entities[e].name,
                            candidates[c].0,
                            sc.event_recall,
                            sc.false_alarm_minutes_per_day
                        );
                    }
                    results
                        .lock()
                        .expect("no panics while held")
                        .insert((c, e), (sc, raised.train_anomalies, raised.test_anomalies));
                }
            });
        }
    });
    let results = results.into_inner().expect("workers finished");
    let scores: Vec<Vec<Scores>> = (0..candidates.len())
        .map(|c| {
            (0..entities.len())
                .map(|e| results[&(c, e)].0.clone())
                .collect()
        })
        .collect();
    let mut groups: Vec<&str> = entities.iter().map(|e| e.group.as_str()).collect();
    groups.dedup();
    let mut r = Report {
        candidates: candidates.iter().map(|c| c.0.clone()).collect(),
        chosen: BTreeMap::new(),
        entities: Vec::new(),
        pooled: BTreeMap::new(),
        candidate_pooled: BTreeMap::new(),
        folds: Vec::new(),
        folds_pooled: BTreeMap::new(),
        max_false_minutes_per_day: budget,
        seconds: 0.0,
    };
    for g in groups {
        let members: Vec<usize> = (0..entities.len())
            .filter(|e| entities[*e].group == g)
            .collect();
        let chosen = choose(&scores, &members, budget);
        r.chosen.insert(g.to_string(), chosen);
        for &e in &members {
            let (sc, train_a, test_a) = &results[&(chosen, e)];
            r.entities.push(EntityReport {
                group: g.to_string(),
                entity: entities[e].name.clone(),
                scores: sc.clone(),
                train_anomalies: *train_a,
                test_anomalies: *test_a,
            });
        }
        r.pooled.insert(
            g.to_string(),
            Scores::pool(members.iter().map(|e| &scores[chosen][*e])),
        );
        r.candidate_pooled.insert(
            g.to_string(),
            scores
                .iter()
                .map(|c| Scores::pool(members.iter().map(|e| &c[*e])))
                .collect(),
        );
        let mut held_scores = Vec::new();
        for &e in &members {
            let fit: Vec<usize> = members.iter().copied().filter(|m| *m != e).collect();
            let choice = if fit.is_empty() {
                0
            } else {
                choose(&scores, &fit, budget)
            };
            held_scores.push(scores[choice][e].clone());
            r.folds.push(Fold {
                group: g.to_string(),
                entity: entities[e].name.clone(),
                choice,
                scores: scores[choice][e].clone(),
            });
        }
        r.folds_pooled
            .insert(g.to_string(), Scores::pool(&held_scores));
    }
    r.seconds = started.elapsed().as_secs_f64();
    Ok(r)
}

fn row(name: &str, s: &Scores) -> String {
    format!(
        "  {name:<16} {:>5.3} {:>5.3} {:>5.3}  {:>3}/{:<3} {:>5.2}  {:>7.1}  {:>6.0}  {:>5.2} {:>5.2}\n",
        s.precision,
        s.recall,
        s.f1,
        s.detected,
        s.segments,
        s.event_recall,
        s.false_alarm_minutes_per_day,
        s.median_delay_min,
        s.hit100,
        s.hit150
    )
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    if r.candidates.len() > 1 {
        for (c, name) in r.candidates.iter().enumerate() {
            out.push_str(&format!("  [{c}] {name}\n"));
        }
    }
    let header =
        "  entity           PA-P  PA-R  PA-F1  events  recall  FA min/d  delay m  H@100 H@150\n";
    for (g, chosen) in &r.chosen {
        out.push_str(&format!(
            "{g}: configuration chosen on all entities: {}\n",
            r.candidates[*chosen]
        ));
        out.push_str(header);
        for e in r.entities.iter().filter(|e| &e.group == g) {
            out.push_str(&row(&e.entity, &e.scores));
        }
        out.push_str(&row("pooled", &r.pooled[g]));
        if r.candidates.len() > 1 {
            out.push_str(&format!("{g}: every candidate, its entities pooled\n"));
            out.push_str(header);
            for (c, s) in r.candidate_pooled[g].iter().enumerate() {
                out.push_str(&row(&format!("[{c}]"), s));
            }
            out.push_str(&format!(
                "{g}: leave one entity out (each scored with the other entities' choice)\n"
            ));
            out.push_str(header);
            for f in r.folds.iter().filter(|f| &f.group == g) {
                out.push_str(&row(&format!("{} [{}]", f.entity, f.choice), &f.scores));
            }
            out.push_str(&row("folds pooled", &r.folds_pooled[g]));
        }
    }
    out.push_str(&format!(
        "  (events: segments with a raised row; FA: rows raised outside segments, in minutes per test day; delay: median minutes to the first raised row; H@P: HitRate per detected interpretation line, k = floor(P%·|labelled|); choice: best event recall with every host within {} false-alarm min/day; {:.0} s)\n",
        r.max_false_minutes_per_day, r.seconds
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(labels: &[u8], lines: Vec<(usize, usize, Vec<usize>)>) -> Entity {
        Entity {
            group: "g".into(),
            name: "e".into(),
            step_secs: 60,
            metrics: (0..4).map(|i| format!("m{i:02}")).collect(),
            train: Vec::new(),
            test: Vec::new(),
            labels: labels.iter().map(|l| *l == 1).collect(),
            lines,
        }
    }

    #[test]
    fn point_adjustment_event_recall_delay_and_hit_rate_are_counted_as_defined() {
        // Two segments: rows 2..5 (hit at row 3) and 8..10 (missed); a false row at 6.
        let e = entity(
            &[0, 0, 1, 1, 1, 0, 0, 0, 1, 1],
            vec![(2, 5, vec![1, 2]), (8, 10, vec![0])],
        );
        let mut raised = Raised {
            rows: vec![false; 10],
            evidence: vec![BTreeMap::new(); 10],
            ..Default::default()
        };
        raised.rows[3] = true;
        raised.evidence[3] = [(2, 9.0), (3, 7.0), (1, 5.0)].into();
        raised.rows[6] = true;
        let s = score(&e, &raised);
        assert_eq!((s.tp, s.fp, s.fn_), (3, 1, 2));
        assert_eq!((s.detected, s.segments), (1, 2));
        assert_eq!(s.delays_min, vec![1.0]);
        // Ranking 2, 3, 1: the top 2 hold one of {1, 2}; the top 3 hold both.
        assert_eq!((s.hit100, s.hit150), (0.5, 1.0));
        assert!((s.false_alarm_minutes_per_day - 1.0 / (10.0 / 1440.0)).abs() < 1e-9);
        assert!((s.precision - 0.75).abs() < 1e-12 && (s.recall - 0.6).abs() < 1e-12);
    }

    #[test]
    fn a_candidate_is_chosen_only_if_every_host_keeps_the_budget() {
        let host = |detected: usize, false_rows: usize| {
            Scores {
                test_days: 1.0,
                segments: 10,
                detected,
                false_rows,
                false_minutes: false_rows as f64,
                step_secs: 60,
                ..Default::default()
            }
            .finish()
        };
        // Candidate 0 finds more, but one host raises 9 false minutes a day (the pool, 5.5,
        // would pass a pooled budget of 6); candidate 1 keeps both hosts within 6.
        let scores = vec![vec![host(9, 2), host(9, 9)], vec![host(7, 1), host(7, 6)]];
        assert_eq!(choose(&scores, &[0, 1], 6.0), 1);
        // Without host 1 both keep the budget, and the better recall wins.
        assert_eq!(choose(&scores, &[0], 6.0), 0);
        // Nothing keeps a budget of 1: the smallest worst host.
        assert_eq!(choose(&scores, &[0, 1], 1.0), 1);
    }

    #[test]
    fn interpretation_ends_follow_the_labels() {
        let dir = std::env::temp_dir().join(format!("seismo-mv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("interpretation.txt");
        // Rows 1..=3 labelled: "1-4" (end exclusive) and "1-3" (inclusive) both cover 1..4.
        let labels = [false, true, true, true, false];
        std::fs::write(&path, "1-4:1,2\n1-3:3\n").unwrap();
        let lines = read_interpretation(&path, &labels, 3).unwrap();
        assert_eq!(lines, vec![(1, 4, vec![0, 1]), (1, 4, vec![2])]);
        std::fs::write(&path, "1-3:4\n").unwrap();
        assert!(read_interpretation(&path, &labels, 3).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_synthetic_host_is_streamed_through_the_detector_and_scored() {
        // Six metrics of one host on a daily wave with noise (seeded); in the test half,
        // metrics 1, 2 and 4 move 10 sd for 20 minutes from row 800.
        let mut rng = seismo_detect::Rng::new(9);
        let mut noise = move || (0..6).map(|_| rng.f64()).sum::<f64>() * 1.414 - 4.243;
        let (train_rows, test_rows, w) = (5000, 1500, 6);
        let mut values = Vec::new();
        for r in 0..train_rows + test_rows {
            let wave = (r as f64 * std::f64::consts::TAU / 1440.0).sin();
            for m in 0..w {
                let t = r as i64 - train_rows as i64;
                let up = if (800..820).contains(&t) && [1, 2, 4].contains(&m) {
                    10.0
                } else {
                    0.0
                };
                values.push(100.0 + 20.0 * wave * (m as f64 + 1.0) + noise() + up);
            }
        }
        let mut labels = vec![false; test_rows];
        labels[800..820].iter_mut().for_each(|l| *l = true);
        let e = Entity {
            group: "g".into(),
            name: "host-1".into(),
            step_secs: 60,
            metrics: (0..w).map(|i| format!("m{i:02}")).collect(),
            test: values.split_off(train_rows * w),
            train: values,
            labels,
            lines: vec![(800, 820, vec![1, 2, 4])],
        };
        let raised = run_entity(&DetectConfig::default(), &e);
        let s = score(&e, &raised);
        assert_eq!((s.detected, s.segments), (1, 1), "{s:?}");
        assert!(s.delays_min[0] <= 2.0, "{s:?}");
        assert!(s.false_alarm_minutes_per_day <= 5.0, "{s:?}");
        assert_eq!(s.hit100, 1.0, "{s:?}");
    }
}
