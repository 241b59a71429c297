//! Per-entity isolation forest: the co-located metrics of one host, scored bucket by bucket.
//!
//! Every series with a `host` label belongs to its host's entity. Each member keeps a
//! short-memory forecast of itself (Holt's level and trend), so what the forest sees is
//! how far each metric is from where it was heading, in units of its usual miss: daily
//! load and slow drifts drop out, a sudden joint move or a broken co-movement stays. When
//! a member closes a bucket its residual is placed in the entity's row for that bucket;
//! the row is finished when any member moves on to a later bucket. A finished row (at
//! least half of the warm members present, the others taken as typical) is scored by an
//! isolation forest fitted on the entity's recent rows, then learned.
//!
//! Forest scores are bounded and skewed, so a normal approximation of them is useless in
//! the tail, and they saturate: a row outside the fitted sample's range in every metric
//! follows the sample's extremes down each tree, so 3.5 sd and 35 sd score alike. One
//! row can therefore never be very improbable to a forest (about 1e-3 to 1e-4 at best),
//! while what an SRE cares about, a host whose metrics stay in an unusual combination, is
//! visible over several rows. So three tail probabilities are taken, the largest
//! surprisal wins:
//! - **point**: peaks over threshold. Above the 90th percentile of the entity's recent
//!   scores, exceedances are taken as exponential with their observed mean (a generalised
//!   Pareto tail of shape 0), so a row scored beyond anything recent still gets a finite,
//!   ordered probability;
//! - **persistence**: how many of the last [`BURST_WINDOW`] rows scored above the recent
//!   95th percentile, against a Poisson count with the 5 % rate that quantile implies;
//!   when high rows come in runs (autocorrelated metrics), runs are counted, not rows;
//! - **distance**: the row's length after whitening (below), with the same
//!   peaks-over-threshold tail over recent lengths, so how far a row is counts as well as
//!   how isolated it is.
//!
//! Rows are whitened before the forest sees them: rotated onto the principal axes of the
//! fitted rows and scaled to unit variance. Isolation trees split one feature at a time,
//! so two metrics that always move together form a narrow diagonal they isolate poorly;
//! whitened, "the pair parted" is one large coordinate.
//!
//! The forest is refitted every [`REFIT_EVERY`] rows from the last [`FIT_ROWS`], with a
//! seed fixed by the entity and the row count, so it is a pure function of the history:
//! checkpoints keep the rows, not the trees, and a restored entity grows the very same
//! forest again.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::iforest::{ForestParams, IsolationForest, Rows, drop_shares};
use crate::stream::{Ew, StreamConfig, poisson_upper};

/// Rows a forest is fitted on, and rows between refits; the history keeps both, so the
/// rows of the last fit are still there when a checkpoint is restored.
const FIT_ROWS: usize = 256;
const REFIT_EVERY: u64 = 128;
const HISTORY: usize = FIT_ROWS + REFIT_EVERY as usize;
/// Forest size: half the paper's 100 trees, since there is one forest per host (under
/// 150 KiB each) and rows have few features; ψ stays at the paper's 256.
const TREES: usize = 50;
const SAMPLE: usize = 256;
/// Most members of one entity. Every metric of a server-sized host takes part (SMD hosts
/// have 38, a node exporter's default set about 60 summary series); the cap only bounds
/// the cost of a host that exports thousands (the whitening refit is cubic in members).
/// Members are taken in the order they first report, so the set is stable across runs;
/// a host's anomaly states how many of its metrics were left out.
pub const MAX_MEMBERS: usize = 128;
/// Rows of the windowed joint test: a 3-to-8-bucket segment in which several metrics are
/// each a little unusual adds up over the window where no single row stands out.
const JOINT_WINDOW: usize = 5;
/// Smoothing of each member's Holt forecast (level, and trend as a share of it): about a
/// 30-bucket memory for the level, so a change stays visible for a while, and a trend
/// that follows a daily cycle's ramps (a sine of 100 times the noise over 1,440 buckets
/// leaves misses of about 1.1 times the noise).
const LEVEL_RATE: f64 = 0.03;
const TREND_RATE: f64 = 0.1;
/// Memory of each member's squared forecast miss, in buckets.
const MISS_MEMORY: usize = 500;
/// Buckets a member learns from before its residuals enter rows.
const MEMBER_WARMUP: u64 = 60;
/// Recent forest scores kept for the tail model; scored rows before anything is raised.
const SCORE_RING: usize = 512;
const MIN_SCORED: usize = 256;
/// The quantile above which the tail is modelled.
const TAIL_QUANTILE: f64 = 0.9;
/// Rows between refits of the tail models.
const TAIL_REFIT: u64 = 16;
/// Rows of the persistence count, and the quantile that makes a row count.
const BURST_WINDOW: usize = 10;
const BURST_QUANTILE: f64 = 0.95;
/// Memory of the mean run length of high rows, in runs.
const RUN_MEMORY: usize = 50;
/// After a finding, the entity raises nothing more until this many rows in a row have
/// stayed below the threshold: an episode is raised once, however its evidence grows.
const QUIET_ROWS: u32 = 25;
/// Residuals are clamped to this many deviations: beyond it a row is isolated at once
/// anyway, and a flat series' first wiggle must not become an astronomical number.
const MAX_Z: f64 = 50.0;

/// A member's one-step forecast of itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Forecaster {
    level: f64,
    trend: f64,
    miss: Ew,
}

impl Forecaster {
    fn expected(&self) -> f64 {
        self.level + self.trend
    }

    /// The deviation of a miss, floored relative to the level so that a series that has
    /// been flat does not turn rounding into alarms.
    fn sd(&self) -> f64 {
        self.miss.var.sqrt().max(1e-3 * self.level.abs()).max(1e-9)
    }

    /// Learns `x`: the Holt update in error-correction form.
    fn learn(&mut self, x: f64) {
        if self.miss.n == 0 && self.level == 0.0 && self.trend == 0.0 {
            self.level = x;
            self.miss.n = 1;
            return;
        }
        let miss = x - self.expected();
        self.miss.add_zero_mean(MISS_MEMORY, miss);
        self.level += self.trend + LEVEL_RATE * miss;
        self.trend += LEVEL_RATE * TREND_RATE * miss;
    }
}

/// A series of the entity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    forecast: Forecaster,
}

/// One member's value in a row: the bucket mean, its forecast and the usual miss, and the
/// residual in those units.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Cell {
    pub value: f64,
    pub expected: f64,
    pub sd: f64,
    pub z: f64,
    /// The member's own calibrated surprisal of this bucket (its ensemble's; 0 while it
    /// warms up).
    #[serde(default)]
    pub surprisal: f64,
}

/// A finished row the forest found improbable.
#[derive(Debug, Clone)]
pub struct Finding {
    pub bucket: i64,
    /// −log10 of the row's tail probability against the entity's recent scores.
    pub surprisal: f64,
    /// The forest's score in (0, 1].
    pub score: f64,
    /// Per member: its cell (if present) and its share of the score.
    pub cells: Vec<Option<Cell>>,
    pub contributions: Vec<f64>,
}

/// The state of one entity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EntityState {
    pub members: Vec<Member>,
    row_bucket: i64,
    row: Vec<Option<Cell>>,
    /// Finished rows of residuals, oldest first, `members.len()` wide.
    history: VecDeque<Vec<f32>>,
    rows_total: u64,
    /// `rows_total` when the forest was last fitted.
    fitted_at: Option<u64>,
    #[serde(skip)]
    model: Option<Model>,
    /// Forest scores of the last rows, oldest first.
    scores: VecDeque<f32>,
    /// Whether each of the last rows scored above the recent [`BURST_QUANTILE`].
    #[serde(default)]
    high: VecDeque<bool>,
    /// The current run of consecutive high rows, and the mean length of past runs.
    #[serde(default)]
    run: u32,
    #[serde(default)]
    runs: Ew,
    /// Whitened distances of the last rows, oldest first.
    #[serde(default)]
    distances: VecDeque<f32>,
    /// Tail models of the scores and the distances.
    #[serde(default)]
    tails: Option<[Tail; 2]>,
    /// The row surprisal checked against the host's own history of it (the calibration
    /// every series detector gets): the three measures' claims are exact only when the
    /// recent rows are typical of the future ones, which a host's drift breaks.
    #[serde(default)]
    calibration: Option<crate::calibrate::Tail>,
    /// The joint test: the members' surprisals of the last [`JOINT_WINDOW`] rows (oldest
    /// first), and the calibration of its one-row and windowed claims.
    #[serde(default)]
    joint_rows: VecDeque<Vec<f32>>,
    #[serde(default)]
    joint_tails: Option<[crate::calibrate::Tail; 2]>,
    /// Whether the row of `row_bucket` was scored already (all members reported, or its
    /// time passed): a cell for it that comes later is learned, not placed.
    #[serde(default)]
    row_done: bool,
    /// Rows the calibrations have learned.
    #[serde(default)]
    calibrated_rows: u64,
    /// Series of the host beyond [`MAX_MEMBERS`], counted once each.
    #[serde(default)]
    left_out: std::collections::BTreeSet<u64>,
    /// Whether an episode was raised and has not yet been quiet for [`QUIET_ROWS`], and
    /// how many rows it has been quiet.
    episode: bool,
    quiet: u32,
    seed: u64,
}

/// The tail model of recent values (forest scores or distances): the [`TAIL_QUANTILE`],
/// the share of values above it and their mean excess, and the [`BURST_QUANTILE`].
/// Refitted every [`TAIL_REFIT`] rows (selection over the ring costs microseconds) and
/// checkpointed, so a restored entity uses the same fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tail {
    u: f64,
    above: f64,
    mean_excess: f64,
    burst: f64,
}

impl Tail {
    fn fit(recent: &VecDeque<f32>) -> Self {
        let mut values: Vec<f64> = recent.iter().map(|v| f64::from(*v)).collect();
        let burst = quantile(&mut values, BURST_QUANTILE);
        let u = quantile(&mut values, TAIL_QUANTILE);
        let (k, excess) = values
            .iter()
            .filter(|v| **v > u)
            .fold((0, 0.0), |(k, e), v| (k + 1, e + (v - u)));
        Tail {
            u,
            above: k as f64 / (values.len() + 1) as f64,
            mean_excess: (excess / f64::from(k.max(1))).max(1e-4),
            burst,
        }
    }

    /// −log10 of the probability of a value of at least `s`: exponential beyond the
    /// [`TAIL_QUANTILE`] with the observed mean excess. Below it a value is unremarkable
    /// (the same curve, capped at a probability of 1: a surprisal under 1).
    fn point(&self, s: f64) -> f64 {
        let p = (self.above.max(1e-9) * (-(s - self.u) / self.mean_excess).exp()).min(1.0);
        -p.max(1e-300).log10()
    }
}

/// The `q` quantile of `values` (reordered in the process); NaN when empty.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let k = ((values.len() as f64 * q) as usize).min(values.len() - 1);
    *values.select_nth_unstable_by(k, f64::total_cmp).1
}

impl EntityState {
    pub fn new(seed: u64) -> Self {
        EntityState {
            seed,
            ..Default::default()
        }
    }

    /// The index of series `id` among the members, adding it if there is room. A new
    /// member changes the rows' width, so the rows learned so far start over (members
    /// keep their forecasts).
    pub fn member(
        &mut self,
        id: u64,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<usize> {
        if let Some(i) = self.members.iter().position(|m| m.id == id) {
            return Some(i);
        }
        if self.members.len() >= MAX_MEMBERS {
            // Looked up on every bucket such a series closes: a set, bounded.
            if self.left_out.len() < 1024 {
                self.left_out.insert(id);
            }
            return None;
        }
        self.members.push(Member {
            id,
            name: name.to_string(),
            labels: labels.clone(),
            forecast: Forecaster::default(),
        });
        self.row = vec![None; self.members.len()];
        self.history.clear();
        self.fitted_at = None;
        self.model = None;
        self.scores.clear();
        self.high.clear();
        (self.run, self.runs) = (0, Ew::default());
        self.distances.clear();
        self.tails = None;
        self.calibration = None;
        self.joint_rows.clear();
        self.joint_tails = None;
        self.calibrated_rows = 0;
        (self.episode, self.quiet) = (false, 0);
        Some(self.members.len() - 1)
    }

    /// Places member `i`'s closed bucket (its mean `value` and its own calibrated
    /// `surprisal`); returns the findings of rows this finishes. A row is scored as soon
    /// as every member has reported its bucket, or when a later bucket starts, or when
    /// [`EntityState::finish_due`] says its time is over, whichever comes first.
    pub fn observe(
        &mut self,
        i: usize,
        bucket: i64,
        value: f64,
        surprisal: f64,
        threshold: f64,
        stream: &StreamConfig,
    ) -> Vec<Finding> {
        if i >= self.members.len() {
            return Vec::new();
        }
        let mut found = Vec::new();
        if bucket > self.row_bucket {
            if !self.row_done {
                found.extend(self.finish_row(threshold, stream));
            }
            self.row_bucket = bucket;
            self.row_done = false;
            self.row.iter_mut().for_each(|c| *c = None);
        }
        let f = &mut self.members[i].forecast;
        if bucket == self.row_bucket && !self.row_done && f.miss.n > MEMBER_WARMUP {
            let (expected, sd) = (f.expected(), f.sd());
            self.row[i] = Some(Cell {
                value,
                expected,
                sd,
                z: ((value - expected) / sd).clamp(-MAX_Z, MAX_Z),
                surprisal,
            });
        }
        if bucket >= self.row_bucket {
            f.learn(value);
        }
        let warm = self
            .members
            .iter()
            .filter(|m| m.forecast.miss.n > MEMBER_WARMUP)
            .count();
        if !self.row_done && warm > 0 && self.row.iter().flatten().count() >= warm {
            found.extend(self.finish_row(threshold, stream));
            self.row_done = true;
        }
        found
    }

    /// Scores the open row if its bucket is before `bucket` (event time has passed its end
    /// and the allowed lateness), with the members that reported.
    pub fn finish_due(
        &mut self,
        bucket: i64,
        threshold: f64,
        stream: &StreamConfig,
    ) -> Vec<Finding> {
        if self.row_done || self.row_bucket >= bucket || self.row.iter().all(Option::is_none) {
            return Vec::new();
        }
        self.row_done = true;
        self.finish_row(threshold, stream).into_iter().collect()
    }

    /// How many series of the host are left out (beyond [`MAX_MEMBERS`]).
    pub fn left_out(&self) -> usize {
        self.left_out.len()
    }

    fn finish_row(&mut self, threshold: f64, stream: &StreamConfig) -> Option<Finding> {
        let warm = self
            .members
            .iter()
            .filter(|m| m.forecast.miss.n > MEMBER_WARMUP)
            .count();
        let present = self.row.iter().flatten().count();
        if warm < 2 || present * 2 < warm {
            return None;
        }
        let x: Vec<f64> = self.row.iter().map(|c| c.map_or(0.0, |c| c.z)).collect();
        // Members that reported: their surprisals (the others count as unremarkable).
        let s_row: f64 = self.row.iter().flatten().map(|c| c.surprisal).sum();
        let n_row = self.row.iter().flatten().count();
        self.ensure_forest();
        let mut found = None;
        if let Some(model) = &self.model {
            let white = model.whiten(&x);
            let s = model.forest.score(&white);
            let dist = white.iter().map(|v| v * v).sum::<f64>().sqrt();
            if self.scores.len() >= MIN_SCORED {
                if self.tails.is_none() || self.rows_total.is_multiple_of(TAIL_REFIT) {
                    self.tails = Some([Tail::fit(&self.scores), Tail::fit(&self.distances)]);
                }
                let [tail, dtail] = self.tails.expect("fitted above");
                let high = s > tail.burst;
                self.high.push_back(high);
                if self.high.len() > BURST_WINDOW {
                    self.high.pop_front();
                }
                // Runs of high rows: their mean length is how clustered high rows are.
                if high {
                    self.run += 1;
                } else if self.run > 0 {
                    self.runs.add(RUN_MEMORY, f64::from(self.run));
                    self.run = 0;
                }
                let count = self.high.iter().filter(|h| **h).count() as f64;
                let rate = (1.0 - BURST_QUANTILE) * self.high.len() as f64;
                // Clustered high rows come in runs of mean length m: count runs, not rows.
                let m = if self.runs.n >= 5 {
                    self.runs.mean.max(1.0)
                } else {
                    1.0
                };
                let persistence = poisson_upper((count / m).ceil() as u32, rate / m);
                let point = tail.point(s);
                let distance = dtail.point(dist);
                let claimed = point.max(persistence).max(distance);
                let cal = self
                    .calibration
                    .get_or_insert_with(|| crate::calibrate::Tail::new(stream.tail_prior));
                let forest = cal.surprisal(claimed, stream.tail_max_shape);
                cal.learn(claimed, stream.tail_rate_memory, stream.tail_excess_memory);
                // The joint test: Fisher's combination of the members' own surprisals, of
                // this row and of the window, each calibrated like every other claim
                // (metrics of one host are dependent, which Fisher's formula ignores).
                let window_sum: f64 = self
                    .joint_rows
                    .iter()
                    .flatten()
                    .map(|v| f64::from(*v))
                    .sum::<f64>()
                    + s_row;
                let window_n = self.joint_rows.iter().map(Vec::len).sum::<usize>() + n_row;
                let claims = [
                    fisher_surprisal(s_row, n_row),
                    fisher_surprisal(window_sum, window_n),
                ];
                let tails = self.joint_tails.get_or_insert_with(|| {
                    std::array::from_fn(|_| crate::calibrate::Tail::new(stream.tail_prior))
                });
                let mut joint = [0.0; 2];
                for ((t, c), j) in tails.iter_mut().zip(claims).zip(&mut joint) {
                    *j = t.surprisal(c, stream.tail_max_shape);
                    t.learn(c, stream.tail_rate_memory, stream.tail_excess_memory);
                }
                // Three tests (the forest's and the two joint ones): Bonferroni.
                let surprisal = (forest.max(joint[0]).max(joint[1]) - 3f64.log10()).max(0.0);
                // The joint tests' nominal tail is known to be wrong for a host's dependent
                // metrics, so nothing is raised before the host's own rows outweigh the
                // calibrations' prior (tail_prior exceedances at the nominal 1 %).
                self.calibrated_rows += 1;
                let calibrated = self.calibrated_rows >= stream.tail_prior.saturating_mul(100);
                let raise = calibrated && surprisal >= threshold && !self.episode;
                if surprisal >= threshold {
                    (self.episode, self.quiet) = (true, 0);
                } else if self.episode {
                    self.quiet += 1;
                    self.episode = self.quiet < QUIET_ROWS;
                }
                if raise {
                    found = Some(Finding {
                        bucket: self.row_bucket,
                        surprisal,
                        score: s,
                        cells: self.row.clone(),
                        contributions: {
                            // Ranked by the members' own calibrated surprisals (over the
                            // window when the windowed test found it), the analogue of
                            // ranking by per-metric likelihood; when no member is unusual
                            // on its own (a broken co-movement), by each member's drop in
                            // the forest's measure.
                            let by: Vec<f64> = (0..self.members.len())
                                .map(|m| {
                                    let own = self.row[m].map_or(0.0, |c| c.surprisal);
                                    if joint[1] > joint[0] {
                                        self.joint_rows
                                            .iter()
                                            .filter_map(|r| r.get(m))
                                            .map(|v| f64::from(*v))
                                            .sum::<f64>()
                                            + own
                                    } else {
                                        own
                                    }
                                })
                                .collect();
                            let total: f64 = by.iter().sum();
                            if total > 0.0 {
                                by.iter().map(|v| v / total).collect()
                            } else if distance > point.max(persistence) {
                                model.contributions(&x, Model::distance)
                            } else {
                                model.contributions(&x, Model::score)
                            }
                        },
                    });
                }
            }
            self.scores.push_back(s as f32);
            if self.scores.len() > SCORE_RING {
                self.scores.pop_front();
            }
            self.distances.push_back(dist as f32);
            if self.distances.len() > SCORE_RING {
                self.distances.pop_front();
            }
        }
        self.joint_rows.push_back(
            self.row
                .iter()
                .map(|c| c.map_or(0.0, |c| c.surprisal as f32))
                .collect(),
        );
        if self.joint_rows.len() >= JOINT_WINDOW {
            self.joint_rows.pop_front();
        }
        self.history
            .push_back(x.iter().map(|v| *v as f32).collect());
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.rows_total += 1;
        let due = match self.fitted_at {
            None => self.history.len() >= FIT_ROWS,
            Some(at) => self.rows_total - at >= REFIT_EVERY,
        };
        if due {
            self.fitted_at = Some(self.rows_total);
            self.model = None;
            self.ensure_forest();
        }
        found
    }

    /// Grows the model of the last fit if it is not in memory (after a restore).
    fn ensure_forest(&mut self) {
        let (Some(at), None) = (self.fitted_at, &self.model) else {
            return;
        };
        // History holds absolute rows [rows_total − len, rows_total); the fit used the
        // FIT_ROWS (or fewer) rows before `at`.
        let first = self.rows_total - self.history.len() as u64;
        let start = at.saturating_sub(FIT_ROWS as u64).max(first);
        let d = self.members.len();
        let data: Vec<f64> = self
            .history
            .iter()
            .skip((start - first) as usize)
            .take((at - start) as usize)
            .flat_map(|r| r.iter().map(|v| f64::from(*v)))
            .collect();
        if data.is_empty() {
            return;
        }
        let params = ForestParams {
            trees: TREES,
            sample_size: SAMPLE,
            seed: self.seed ^ at.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        self.model = Some(Model::fit(&data, d, params));
    }
}

/// −log10 of Fisher's combined p-value of `n` independent tests whose surprisals
/// (−log10 p) sum to `sum`: P(χ²₂ₙ ≥ 2 ln 10 · sum) = e^−h Σ_{k<n} h^k / k!, h = ln 10 · sum.
fn fisher_surprisal(sum: f64, n: usize) -> f64 {
    if n == 0 || sum <= 0.0 {
        return 0.0;
    }
    let h = std::f64::consts::LN_10 * sum;
    // log of the terms h^k / k!, summed by log-sum-exp.
    let mut term = 0.0f64;
    let mut terms = Vec::with_capacity(n);
    for k in 0..n {
        if k > 0 {
            term += h.ln() - (k as f64).ln();
        }
        terms.push(term);
    }
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln();
    ((h - log_sum) / std::f64::consts::LN_10).clamp(0.0, 300.0)
}

/// Smallest variance a whitened direction is given, in squared residual units: metrics
/// that move in lockstep leave a direction of almost no variance, which must not turn
/// rounding into distance.
const MIN_VARIANCE: f64 = 1e-2;

/// A forest over whitened rows. Isolation trees split one feature at a time, so two
/// metrics that always move together (a narrow diagonal) are poorly isolated when they
/// part; rotating rows onto the principal axes of the fitted rows and scaling each to unit
/// variance turns "the pair parted" into one large coordinate, which a split finds at once.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    mean: Vec<f64>,
    /// Rows of the whitening matrix: one per principal axis, divided by its deviation.
    axes: Vec<Vec<f64>>,
    forest: IsolationForest,
}

impl Model {
    fn fit(data: &[f64], d: usize, params: ForestParams) -> Self {
        let n = data.len() / d;
        let mut mean = vec![0.0; d];
        for r in data.chunks(d) {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / n as f64);
        }
        let mut cov = vec![vec![0.0; d]; d];
        for r in data.chunks(d) {
            for i in 0..d {
                for j in 0..d {
                    cov[i][j] += (r[i] - mean[i]) * (r[j] - mean[j]) / n as f64;
                }
            }
        }
        let (values, vectors) = symmetric_eigen(cov);
        let axes: Vec<Vec<f64>> = values
            .iter()
            .zip(vectors)
            .map(|(l, v)| {
                let scale = l.max(MIN_VARIANCE).sqrt();
                v.into_iter().map(|x| x / scale).collect()
            })
            .collect();
        let white: Vec<f64> = data
            .chunks(d)
            .flat_map(|r| whiten(&axes, &mean, r))
            .collect();
        let forest = IsolationForest::fit(Rows::new(&white, d), params);
        Model { mean, axes, forest }
    }

    fn whiten(&self, x: &[f64]) -> Vec<f64> {
        whiten(&self.axes, &self.mean, x)
    }

    fn score(&self, x: &[f64]) -> f64 {
        self.forest.score(&self.whiten(x))
    }

    /// The length of the whitened row (a Mahalanobis distance from the fitted rows' mean):
    /// how far the row is, where the forest only says how isolated.
    fn distance(&self, x: &[f64]) -> f64 {
        self.whiten(x).iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    /// Each member's share of `measure` (the forest score or the distance, whichever found
    /// the row): its drop when that member alone is put back at its typical value. Shares
    /// sum to 1 (all zero when no single member explains it).
    fn contributions(&self, x: &[f64], measure: impl Fn(&Self, &[f64]) -> f64) -> Vec<f64> {
        drop_shares(x, &self.mean, |probe| measure(self, probe))
    }
}

/// `x` − `mean` in the coordinates of `axes`.
fn whiten(axes: &[Vec<f64>], mean: &[f64], x: &[f64]) -> Vec<f64> {
    axes.iter()
        .map(|a| {
            a.iter()
                .zip(x)
                .zip(mean)
                .map(|((a, x), m)| a * (x - m))
                .sum()
        })
        .collect()
}

/// Rows p and q (p < q) of `m` become c·p − s·q and s·p + c·q.
fn rotate_rows(m: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (head, tail) = m.split_at_mut(q);
    for (x, y) in head[p].iter_mut().zip(tail[0].iter_mut()) {
        (*x, *y) = (c * *x - s * *y, s * *x + c * *y);
    }
}

/// Eigenvalues and unit eigenvectors of a symmetric matrix by cyclic Jacobi rotations:
/// exact to rounding for the few dozen dimensions of an entity, with no dependency.
fn symmetric_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let d = a.len();
    // v[k] is the k-th eigenvector (kept as rows).
    let mut v: Vec<Vec<f64>> = (0..d)
        .map(|i| (0..d).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for _sweep in 0..64 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..d).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-24 * diag.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub and Van Loan, 8.4).
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← AJ (columns p and q), then A ← JᵀA (rows p and q), then V ← VJ
                // (V kept transposed: v[k] is the k-th column).
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                rotate_rows(&mut a, p, q, c, s);
                rotate_rows(&mut v, p, q, c, s);
            }
        }
    }
    ((0..d).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// Approximately standard normal (a sum of six uniforms, rescaled).
    fn normal(rng: &mut Rng) -> f64 {
        (0..6).map(|_| rng.f64()).sum::<f64>() * 1.414 - 4.243
    }

    /// The default `detect.entity_threshold`.
    const THRESHOLD: f64 = 6.0;

    fn entity(names: &[&str]) -> EntityState {
        let mut e = EntityState::new(42);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(e.member(i as u64 + 1, name, &BTreeMap::new()), Some(i));
        }
        e
    }

    /// Feeds rows (one value per member per bucket) and returns the findings.
    fn run(e: &mut EntityState, rows: &[Vec<f64>], threshold: f64) -> Vec<Finding> {
        let mut out = Vec::new();
        for (b, row) in rows.iter().enumerate() {
            for (i, v) in row.iter().enumerate() {
                out.extend(e.observe(i, b as i64, *v, 0.0, threshold, &StreamConfig::default()));
            }
        }
        out
    }

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let m = vec![
            vec![4.0, 1.0, 0.5],
            vec![1.0, 3.0, -0.2],
            vec![0.5, -0.2, 1.0],
        ];
        let (values, vectors) = symmetric_eigen(m.clone());
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3)
                    .map(|k| values[k] * vectors[k][i] * vectors[k][j])
                    .sum();
                assert!((r - m[i][j]).abs() < 1e-9, "({i},{j}): {r} vs {}", m[i][j]);
            }
        }
        // The trace is kept and the vectors are orthonormal.
        assert!((values.iter().sum::<f64>() - 8.0).abs() < 1e-9);
        let dot: f64 = (0..3).map(|k| vectors[0][k] * vectors[1][k]).sum();
        assert!(dot.abs() < 1e-9);
    }

    #[test]
    fn the_tail_model_is_ordered_and_reaches_beyond_the_sample() {
        let mut rng = Rng::new(5);
        let recent: VecDeque<f32> = (0..500).map(|_| 0.4 + 0.05 * rng.f64() as f32).collect();
        let tail = Tail::fit(&recent);
        let at = |s: f64| tail.point(s);
        // The middle of the sample is unremarkable; beyond its maximum the tail keeps
        // growing instead of stopping at 1/(n+1).
        assert!(at(0.425) < 0.5);
        assert!(at(0.46) > at(0.44));
        assert!(at(0.5) > 3.0, "{}", at(0.5));
        assert!(at(0.6) > at(0.5));
    }

    #[test]
    fn a_broken_co_movement_is_noticed_once_and_noise_stays_quiet() {
        // Two metrics that move together (a shared driver plus a little of their own noise)
        // and one independent metric, on a daily wave the forecasts absorb. For ten rows
        // from 4500 (past the host's calibration warm-up) the pair splits: one 2.5 sd up, the other 2.5 sd down. Neither is
        // remarkable alone; together they break a relation the host always kept.
        let mut rng = Rng::new(11);
        let rows: Vec<Vec<f64>> = (0..5000)
            .map(|b| {
                let wave = 100.0 * (b as f64 * std::f64::consts::TAU / 1440.0).sin();
                let shared = normal(&mut rng);
                let (mut a, mut c) = (
                    shared + 0.2 * normal(&mut rng),
                    shared + 0.2 * normal(&mut rng),
                );
                if (4500..4510).contains(&b) {
                    (a, c) = (a + 2.5, c - 2.5);
                }
                vec![
                    500.0 + wave + a,
                    800.0 + 2.0 * wave + c,
                    50.0 + normal(&mut rng),
                ]
            })
            .collect();
        let mut e = entity(&["requests", "cpu", "disk"]);
        let findings = run(&mut e, &rows, THRESHOLD);
        let at: Vec<(i64, f64)> = findings.iter().map(|f| (f.bucket, f.surprisal)).collect();
        let hit = findings.iter().find(|f| (4500..4510).contains(&f.bucket));
        assert!(hit.is_some(), "findings {at:?}");
        assert!(at.len() <= 2, "too many findings {at:?}");
        // The split pair carries the score, not the independent metric.
        let w = &hit.unwrap().contributions;
        assert!(w[2] < w[0] + w[1], "{w:?}");
    }

    #[test]
    fn a_joint_rise_is_noticed_and_a_restore_grows_the_same_forest() {
        // Three metrics with independent noise; for ten rows from 4200 all three are 3 sd
        // high at once: unremarkable for one series (each member's own surprisal is its
        // two-sided normal tail, about 2.6 there), rare for the three together.
        let mut rng = Rng::new(1);
        let rows: Vec<Vec<(f64, f64)>> = (0..4400)
            .map(|b| {
                let up = if (4200..4210).contains(&b) { 3.0 } else { 0.0 };
                (0..3)
                    .map(|_| {
                        let x = up + normal(&mut rng);
                        (x, -(2.0 * crate::stream::normal_tail(x.abs())).log10())
                    })
                    .collect()
            })
            .collect();
        let mut e = entity(&["cpu", "load", "disk"]);
        let (head, tail) = rows.split_at(3700);
        let mut findings: Vec<Finding> = run_with(&mut e, head).into_iter().map(|f| f.1).collect();
        // A checkpoint taken mid-stream, restored into a fresh process.
        let mut restored: EntityState =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        let resume = |e: &mut EntityState| {
            let mut out = Vec::new();
            for (b, row) in tail.iter().enumerate() {
                for (i, (v, own)) in row.iter().enumerate() {
                    out.extend(e.observe(
                        i,
                        3700 + b as i64,
                        *v,
                        *own,
                        THRESHOLD,
                        &StreamConfig::default(),
                    ));
                }
            }
            out
        };
        findings.extend(resume(&mut e));
        let again = resume(&mut restored);
        let buckets = |v: &[Finding]| {
            v.iter()
                .filter(|f| f.bucket >= 3700)
                .map(|f| (f.bucket, f.surprisal))
                .collect::<Vec<_>>()
        };
        assert!(
            findings.iter().any(|f| (4200..4210).contains(&f.bucket)),
            "{:?}",
            buckets(&findings)
        );
        assert!(findings.len() <= 2, "{:?}", buckets(&findings));
        assert_eq!(buckets(&findings), buckets(&again));
        assert_eq!(
            e.model.as_ref(),
            restored.model.as_ref(),
            "a restored entity grew another model"
        );
    }

    #[test]
    fn noise_rarely_raises_even_when_it_is_autocorrelated() {
        // 20,000 rows of four metrics, independent of each other; the second run's noise
        // is autocorrelated (AR(1), 0.8), which Holt forecasts only partly remove, so its
        // high rows cluster. At a threshold of 1e-6 a calibrated tail raises about one in a
        // million rows; onset damping only lowers that.
        for phi in [0.0, 0.8] {
            let mut rng = Rng::new(7);
            let mut state = [0.0; 4];
            let rows: Vec<Vec<f64>> = (0..20_000)
                .map(|_| {
                    state
                        .iter_mut()
                        .map(|s| {
                            *s = phi * *s + normal(&mut rng);
                            *s
                        })
                        .collect()
                })
                .collect();
            let mut e = entity(&["a", "b", "c", "d"]);
            let findings = run(&mut e, &rows, THRESHOLD);
            let at: Vec<(i64, f64)> = findings.iter().map(|f| (f.bucket, f.surprisal)).collect();
            assert!(findings.len() <= 3, "phi {phi}: {at:?}");
        }
    }

    /// Feeds rows of (value, own surprisal) per member; returns each finding with the
    /// bucket whose observe call returned it.
    fn run_with(e: &mut EntityState, rows: &[Vec<(f64, f64)>]) -> Vec<(i64, Finding)> {
        let mut out = Vec::new();
        for (b, row) in rows.iter().enumerate() {
            for (i, (v, s)) in row.iter().enumerate() {
                for f in e.observe(i, b as i64, *v, *s, THRESHOLD, &StreamConfig::default()) {
                    out.push((b as i64, f));
                }
            }
        }
        out
    }

    #[test]
    fn several_metrics_a_little_unusual_for_a_few_rows_are_caught_and_ranked() {
        // Eight metrics whose own surprisals are nominal (−log10 of a uniform) but shared
        // in part (a common factor, so Fisher's formula alone would overstate joint rows).
        // For three rows from 6000, metrics 1, 3, 4 and 6 are each about 1e-3 unusual: no
        // series would alarm, the host should, and it should name those four first.
        let mut rng = Rng::new(21);
        let marked = [1, 3, 4, 6];
        let rows: Vec<Vec<(f64, f64)>> = (0..6400)
            .map(|b| {
                let common = rng.f64();
                (0..8)
                    .map(|m| {
                        let u = if rng.f64() < 0.3 { common } else { rng.f64() };
                        let mut s = -(u.max(1e-12)).log10();
                        if (6000..6003).contains(&b) && marked.contains(&m) {
                            s = 3.0 + 0.3 * rng.f64();
                        }
                        (10.0 + normal(&mut rng), s)
                    })
                    .collect()
            })
            .collect();
        let mut e = entity(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        let found = run_with(&mut e, &rows);
        let at: Vec<(i64, f64)> = found.iter().map(|(_, f)| (f.bucket, f.surprisal)).collect();
        let hit = found
            .iter()
            .find(|(_, f)| (6000..6003).contains(&f.bucket))
            .unwrap_or_else(|| panic!("missed; findings {at:?}"));
        // Noise raised little before the rise (and nothing during the calibration).
        assert!(at.iter().filter(|(b, _)| *b < 6000).count() <= 2, "{at:?}");
        let mut order: Vec<usize> = (0..8).collect();
        let w = &hit.1.contributions;
        order.sort_by(|a, b| w[*b].total_cmp(&w[*a]));
        let mut top: Vec<usize> = order[..4].to_vec();
        top.sort_unstable();
        assert_eq!(top, marked, "contributions {w:?}");
    }

    #[test]
    fn a_row_is_scored_when_its_members_have_reported_or_its_time_is_over() {
        // Three members; at bucket 4500 all three jump. The row is scored by the observe
        // call that brings its last member's bucket, not when a later bucket begins.
        let mut rng = Rng::new(4);
        let rows: Vec<Vec<(f64, f64)>> = (0..4600)
            .map(|b| {
                let up = if b == 4500 { 12.0 } else { 0.0 };
                (0..3).map(|_| (up + normal(&mut rng), 0.0)).collect()
            })
            .collect();
        let mut e = entity(&["a", "b", "c"]);
        let found = run_with(&mut e, &rows);
        let hit = found.iter().find(|(_, f)| f.bucket == 4500);
        assert!(
            matches!(hit, Some((4500, _))),
            "{:?}",
            found
                .iter()
                .map(|(at, f)| (*at, f.bucket))
                .collect::<Vec<_>>()
        );

        // With a member silent, the row waits for its time: finish_due scores it with the
        // members that reported.
        let mut e = entity(&["a", "b", "c"]);
        run_with(&mut e, &rows[..4500]);
        let cfg = StreamConfig::default();
        let mut got = Vec::new();
        for i in 0..2 {
            got.extend(e.observe(i, 4500, 12.0 + normal(&mut rng), 0.0, THRESHOLD, &cfg));
        }
        assert!(got.is_empty(), "scored before its time");
        assert!(
            e.finish_due(4500, THRESHOLD, &cfg).is_empty(),
            "bucket 4500 is not over yet"
        );
        let due = e.finish_due(4501, THRESHOLD, &cfg);
        assert_eq!(due.iter().map(|f| f.bucket).collect::<Vec<_>>(), vec![4500]);
        assert!(due[0].cells[2].is_none());
        // Scored once: the late member's bucket is learned, not placed again.
        assert!(e.observe(2, 4500, 12.0, 0.0, THRESHOLD, &cfg).is_empty());
        assert!(e.finish_due(4502, THRESHOLD, &cfg).is_empty());
    }

    #[test]
    fn every_metric_of_a_large_host_takes_part_up_to_the_cap() {
        let names: Vec<String> = (0..MAX_MEMBERS + 2).map(|i| format!("m{i}")).collect();
        let mut e = EntityState::new(1);
        for (i, n) in names.iter().enumerate() {
            let got = e.member(i as u64, n, &BTreeMap::new());
            assert_eq!(got, (i < MAX_MEMBERS).then_some(i), "{n}");
        }
        assert_eq!(e.left_out(), 2);
        // A second call for a left-out series does not count it twice.
        e.member(MAX_MEMBERS as u64, "again", &BTreeMap::new());
        assert_eq!(e.left_out(), 2);
        const { assert!(MAX_MEMBERS >= 38, "an SMD host has 38 metrics") };
    }

    #[test]
    fn fisher_matches_the_chi_square_tail() {
        // n = 1: P(χ²₂ ≥ 2 ln10 s) = 10^−s exactly.
        assert!((fisher_surprisal(3.0, 1) - 3.0).abs() < 1e-9);
        // n = 2, sum 2: P = e^−h (1 + h), h = 2 ln 10.
        let h = 2.0 * std::f64::consts::LN_10;
        let want = -((-h).exp() * (1.0 + h)).log10();
        assert!((fisher_surprisal(2.0, 2) - want).abs() < 1e-9);
        // More tests with the same total are less surprising; nothing is negative.
        assert!(fisher_surprisal(5.0, 10) < fisher_surprisal(5.0, 2));
        assert_eq!(fisher_surprisal(0.0, 5), 0.0);
    }
}
