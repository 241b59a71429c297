//! Row-by-row streaming scorer for one series: the detector behind every alarm the pipeline raises on a series, `seismo detect` and `seismo eval nab`.
//!
//! An ensemble of five causal detectors, each stating its surprise as a raw surprisal
//! (−log10 of a tail probability under its own model):
//! - **global**: the value against the long-run, exponentially weighted mean and variance;
//! - **novelty**: how many of the recent value patterns (contexts of quantised levels, at a
//!   fine and a coarse resolution) were not seen recently, against how novel the series
//!   usually is; an exact, bounded table remembers the contexts seen;
//! - **time of day**: the value against its hour-of-day profile, so a daily pattern that
//!   breaks is noticed even when the value itself is ordinary;
//! - **burst**: how many surprising points the last few held, against the series'
//!   long-run rate of such points (a Poisson tail), which catches changes that no single
//!   point reveals;
//! - **seasonal**: the value against a seasonal baseline whose periods are detected and
//!   decomposed by augurs (see `seasonal.rs`); silent until a clear season is found.
//!
//! Each raw surprisal is then calibrated against the series' own history of it (see
//! `calibrate.rs`), so a heavy-tailed or bursty series does not cry wolf and one number
//! means the same false-alarm rate on every series. The point's surprisal is the largest
//! calibrated one, less log10 of the number of detectors; a score that does not exceed
//! the recent ones is damped, so an episode reads as one event at its onset. Strictly
//! causal: each point is scored before any part of the state learns from it. Nothing is
//! random or salted: the same input always gives the same scores.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::calibrate::Tail;
use crate::prefetch::{prefetch, prefetch_ring};
use crate::seasonal::{SeasonalBaseline, SeasonalView};

/// Settings of the streaming scorer; one configuration for every series (`[detect.stream]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Memory of the global mean and variance, in observations.
    pub global_memory: usize,
    /// Smallest standard deviation, relative to the range seen so far; keeps flat series
    /// from alarming on rounding noise.
    pub min_relative_sd: f64,
    /// Levels of the fine and the coarse quantiser over the range of the first
    /// `quantiser_warmup` values (values outside continue the grid for two levels).
    pub levels_fine: u32,
    pub levels_coarse: u32,
    /// Longest context of quantised levels (at most 3).
    pub context_len: usize,
    /// Values that fix the quantiser grids; no novelty is scored before.
    pub quantiser_warmup: usize,
    /// Memory of the novelty counts, in observations.
    pub novelty_memory: usize,
    /// Slots of the seen-context table (4 bytes each): a context is remembered until
    /// about seven-eighths of this many others have been recorded, longer if it recurs.
    pub novelty_capacity: usize,
    /// Bins of the time-of-day profile.
    pub day_bins: usize,
    /// Memory of each bin's mean, in visits; and visits before a bin is trusted (for an
    /// hourly series, four days).
    pub bin_memory: usize,
    pub bin_min_visits: u32,
    /// A value more than this many time-of-day residual deviations from its bin's level,
    /// right after one that was not, is taken for a spike until the next value says
    /// otherwise: the bin learns it clipped to this distance. A second such value in a
    /// row is a change and is learned in full. Without it one spike dragged the hour's
    /// level (by a fifth of the spike, `bin_memory` 5), the ordinary minutes after it
    /// read as far below, and one spike paged twice. 0 learns every value in full.
    pub bin_clip: f64,
    /// Memory of the pooled time-of-day residual variance.
    pub residual_memory: usize,
    /// Points in the burst window; the (calibrated) surprisal that counts a point as an
    /// event; the memory of the long-run event rate.
    pub burst_window: usize,
    pub burst_event_surprisal: f64,
    pub burst_rate_memory: usize,
    /// Scores that do not exceed the previous `onset_window` are multiplied by `damping`.
    pub onset_window: usize,
    pub damping: f64,
    /// Seasonal baseline (see `seasonal.rs`): slots of history; most values merged into
    /// one slot while no season is found; slots between refits while searching (a season
    /// in use is refitted every `seasonal_slots`); smallest seasonal
    /// strength a period needs; rate at which the level follows residuals; memory of the
    /// residual variance.
    pub seasonal_slots: usize,
    pub seasonal_max_agg: u32,
    pub seasonal_refit_slots: u32,
    pub seasonal_min_strength: f64,
    pub seasonal_level_rate: f64,
    pub seasonal_residual_memory: usize,
    /// Calibration of every detector's tail (see `calibrate.rs`): memory of the rate of
    /// nominal 1 % exceedances, in points; memory of the excess distribution, in
    /// exceedances; and the weight, in exceedances, of the nominal tail a series starts
    /// from.
    pub tail_rate_memory: usize,
    pub tail_excess_memory: usize,
    pub tail_prior: u64,
    /// Largest shape ξ of the fitted generalised Pareto tail (0: exponential). Heavier
    /// shapes trust large raw surprisals less.
    pub tail_max_shape: f64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            global_memory: 6400,
            min_relative_sd: 1e-3,
            levels_fine: 12,
            levels_coarse: 4,
            context_len: 2,
            quantiser_warmup: 200,
            novelty_memory: 3000,
            novelty_capacity: 1024,
            day_bins: 24,
            bin_memory: 5,
            bin_min_visits: 4,
            bin_clip: 4.0,
            residual_memory: 2000,
            burst_window: 20,
            burst_event_surprisal: 2.0,
            burst_rate_memory: 2000,
            onset_window: 25,
            damping: 0.1,
            seasonal_slots: 256,
            seasonal_max_agg: 64,
            seasonal_refit_slots: 64,
            seasonal_min_strength: 0.8,
            seasonal_level_rate: 0.05,
            seasonal_residual_memory: 1000,
            tail_rate_memory: 5000,
            tail_excess_memory: 1000,
            tail_prior: 30,
            tail_max_shape: 0.0,
        }
    }
}

impl StreamConfig {
    /// Checks the values the scorer cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.context_len == 0 || self.context_len > 3 {
            return Err(format!(
                "detect.stream.context_len is {}: it must be 1..=3 (a context is packed a byte a level into 32 bits)",
                self.context_len
            ));
        }
        if self.levels_fine == 0 || self.levels_coarse == 0 || self.levels_fine > 50 {
            return Err("detect.stream: levels_fine and levels_coarse must be 1..=50".into());
        }
        Ok(())
    }
}

/// Standard normal upper tail Q(z) = P(Z > z), from erfc (Numerical Recipes' Chebyshev
/// fit, relative error below 1.2e-7 everywhere, so deep tails keep their order).
pub fn normal_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let y = t * poly.exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    erfc / 2.0
}

/// Decimal digits of surprise the score scale spans: a tail of 1e-300 is 1.0.
const MAX_SURPRISAL: f64 = 300.0;

fn surprisal(p: f64) -> f64 {
    (-p.max(1e-300).log10()).min(MAX_SURPRISAL)
}

/// −log10 of the two-sided normal tail of z.
fn two_sided(z: f64) -> f64 {
    surprisal(2.0 * normal_tail(z.abs()))
}

/// −log10 P(X ≥ c) for X ~ Poisson(λ); 0 when c ≤ λ.
pub(crate) fn poisson_upper(c: u32, lambda: f64) -> f64 {
    if f64::from(c) <= lambda {
        return 0.0;
    }
    let mut term = (-lambda).exp();
    let mut cdf = 0.0;
    for k in 0..c {
        cdf += term;
        term *= lambda / f64::from(k + 1);
    }
    // P(X = c) bounds the tail from below where 1 − cdf cancels to nothing.
    surprisal((1.0 - cdf).max(term))
}

/// Exponentially weighted mean and variance (West), a plain mean while young.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Ew {
    pub(crate) n: u64,
    pub(crate) mean: f64,
    pub(crate) var: f64,
}

impl Ew {
    pub(crate) fn weight(&self, memory: usize) -> f64 {
        (1.0 / memory.max(1) as f64).max(1.0 / (self.n + 1) as f64)
    }

    pub(crate) fn add(&mut self, memory: usize, x: f64) {
        let a = self.weight(memory);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        self.n += 1;
    }

    /// Variance around a fixed mean of zero (residuals).
    pub(crate) fn add_zero_mean(&mut self, memory: usize, r: f64) {
        let a = self.weight(memory);
        self.var = (1.0 - a) * (self.var + a * r * r);
        self.n += 1;
    }
}

/// Contexts seen recently, exactly: an open-addressed table of packed contexts (linear
/// probing), each tagged with the epoch in which it was last seen. A context found is
/// moved to the current epoch; when the table is seven-eighths full, the entries not seen
/// in the current epoch are dropped and a new epoch begins. So what is remembered is what
/// recurs, and membership never depends on a hash: there are no collisions to be lucky or
/// unlucky with. (The bit sets this replaced made NAB's standard score move by 2.5 points
/// with their salt.)
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContextSet {
    slots: Vec<u32>,
    /// Entries in `slots`.
    len: u32,
    /// The current epoch (bit [`EPOCH_BIT`] of an entry).
    epoch: bool,
}

/// The bit of an entry that holds its epoch; the bits below are the packed context.
const EPOCH_BIT: u32 = 1 << 27;

impl ContextSet {
    /// A table of `capacity` slots (a power of two, at least 16).
    fn new(capacity: usize) -> Self {
        ContextSet {
            slots: vec![0; capacity.next_power_of_two().max(16)],
            len: 0,
            epoch: false,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 4
    }

    /// The first probe of `key` (Fibonacci hashing: only where to look, not what is found).
    fn home(&self, key: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (key.wrapping_mul(0x9E37_79B9) >> (32 - bits)) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: u32) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.slots[i] {
                0 => return Err(i),
                e if e & !EPOCH_BIT == key => return Ok(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn prefetch(&self, key: u32) {
        prefetch(&self.slots[self.home(key)]);
    }

    fn tagged(&self, key: u32) -> u32 {
        if self.epoch { key | EPOCH_BIT } else { key }
    }

    /// Whether `key` (non-zero, below [`EPOCH_BIT`]) was seen; records it either way.
    fn test_set(&mut self, key: u32) -> bool {
        let tagged = self.tagged(key);
        match self.find(key) {
            Ok(i) => {
                self.slots[i] = tagged;
                true
            }
            Err(i) => {
                self.slots[i] = tagged;
                self.len += 1;
                if self.len as usize * 8 >= self.slots.len() * 7 {
                    self.new_epoch();
                }
                false
            }
        }
    }

    /// Drops the entries not seen in the current epoch and starts the next one. Should
    /// the survivors still fill three-quarters of the table, everything is dropped.
    fn new_epoch(&mut self) {
        let current = self.tagged(0);
        let keep: Vec<u32> = self
            .slots
            .iter()
            .copied()
            .filter(|e| *e != 0 && e & EPOCH_BIT == current)
            .collect();
        self.slots.fill(0);
        self.len = 0;
        self.epoch = !self.epoch;
        if keep.len() * 4 >= self.slots.len() * 3 {
            return;
        }
        for e in keep {
            let key = e & !EPOCH_BIT;
            if let Err(i) = self.find(key) {
                self.slots[i] = self.tagged(key);
                self.len += 1;
            }
        }
    }
}

/// Levels below the warm-up range that keep their own level; below that they share one.
/// With 8 bits a level, a series can wander about ten times its warm-up range either way
/// before its contexts lose detail.
const LEVEL_OFFSET: i64 = 100;

/// Context novelty at one resolution.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quantiser {
    levels: u32,
    /// Which resolution this is (the top bit of its packed contexts).
    coarse: bool,
    /// Grid origin and step, fixed once `quantiser_warmup` values have been seen.
    grid: Option<(f64, f64)>,
    warm: Vec<f64>,
    /// The last `context_len` levels, oldest first, offset by [`LEVEL_OFFSET`].
    history: VecDeque<u8>,
}

impl Quantiser {
    fn new(levels: u32, coarse: bool) -> Self {
        Quantiser {
            levels,
            coarse,
            grid: None,
            warm: Vec::new(),
            history: VecDeque::new(),
        }
    }

    /// The level of `x` on the fixed grid, offset by [`LEVEL_OFFSET`] into a byte.
    fn level(&self, x: f64) -> Option<u8> {
        let (lo, step) = self.grid?;
        let q = ((x - lo) / step)
            .floor()
            .clamp(-(LEVEL_OFFSET as f64), 255.0 - LEVEL_OFFSET as f64);
        Some((q as i64 + LEVEL_OFFSET) as u8)
    }

    /// Calls `f` with every context that ends at level `q`, shortest first (the newest
    /// `context_len - 1` levels of the history, then `q`), packed exactly into a `u32`:
    /// the resolution in bit 26, the length in bits 24..26, a byte per level below.
    fn each_context(&self, cfg: &StreamConfig, q: u8, mut f: impl FnMut(u32)) {
        let keep = self.history.len().min(cfg.context_len.saturating_sub(1));
        let mut key = u32::from(q);
        let tag = u32::from(self.coarse) << 26;
        f(tag | (1 << 24) | key);
        for (k, level) in self.history.iter().rev().take(keep).enumerate() {
            key |= u32::from(*level) << (8 * (k as u32 + 1));
            f(tag | ((k as u32 + 2) << 24) | key);
        }
    }

    /// How many of the contexts ending at `x` are new. Contexts are learned the way
    /// LZ78 grows its dictionary: those seen are refreshed, the shortest new one is
    /// recorded, and longer ones (new too, since their suffix is) wait until it recurs.
    /// So a noisy series adds about one context a point instead of one per length, and
    /// the table keeps the patterns that recur.
    fn learn(&mut self, cfg: &StreamConfig, seen: &mut ContextSet, x: f64) -> u32 {
        let q = self.level(x).expect("grid fixed");
        let mut new = 0;
        self.each_context(cfg, q, |key| {
            if new > 0 || !seen.test_set(key) {
                new += 1;
            }
        });
        self.history.push_back(q);
        if self.history.len() > cfg.context_len.max(1) {
            self.history.pop_front();
        }
        new
    }

    /// Prefetches the table slots that `learn(x)` will probe first (nothing while the
    /// grid is being fixed).
    fn prefetch(&self, cfg: &StreamConfig, seen: &ContextSet, x: f64) {
        if let Some(q) = self.level(x) {
            self.each_context(cfg, q, |key| seen.prefetch(key));
        }
    }

    /// The novelty of `x`, or `None` while the grid is being fixed.
    fn update(&mut self, cfg: &StreamConfig, seen: &mut ContextSet, x: f64) -> Option<u32> {
        if self.grid.is_some() {
            return Some(self.learn(cfg, seen, x));
        }
        self.warm.push(x);
        if self.warm.len() < cfg.quantiser_warmup.max(1) {
            return None;
        }
        let wlo = self.warm.iter().copied().fold(f64::INFINITY, f64::min);
        let whi = self.warm.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let step = ((whi - wlo) / f64::from(self.levels.max(1)))
            .max(1e-9 * whi.abs().max(wlo.abs()).max(1.0));
        self.grid = Some((wlo, step));
        for y in std::mem::take(&mut self.warm) {
            self.learn(cfg, seen, y);
        }
        None
    }
}

/// Values the novelty count takes: 0 to 2 × the longest `context_len` (3).
const NOVELTY_VALUES: usize = 7;

/// Detectors of the ensemble, in [`StreamScore::parts`] order.
pub const PARTS: usize = 5;

/// Streaming state of one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamScorer {
    n: u64,
    min: f64,
    max: f64,
    global: Ew,
    seen: ContextSet,
    fine: Quantiser,
    coarse: Quantiser,
    /// Exponentially weighted counts of how many contexts were new (0 to
    /// 2 × `context_len`), per point since the grids were fixed.
    novelty: [f32; NOVELTY_VALUES],
    /// Whether the last value was beyond `bin_clip` of its bin's level.
    outlier: bool,
    bin_mean: Vec<f64>,
    /// Visits per bin, saturating: past `bin_min_visits` and `bin_memory` only "many"
    /// matters, so 16 bits do.
    bin_visits: Vec<u16>,
    residual: Ew,
    /// Event flags of the burst window, newest last, and how many are set.
    events: VecDeque<bool>,
    event_count: u32,
    event_rate: Ew,
    /// Surprisals of the last points, rounded up to `f32` (half the bytes; rounding up
    /// keeps a repeat of the same surprisal from counting as an onset).
    recent: VecDeque<f32>,
    seasonal: SeasonalBaseline,
    /// The calibrated tail of each detector's raw surprisal.
    tails: [Tail; PARTS],
}

/// One observation's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamScore {
    /// z-score against the long-run mean and deviation.
    pub z: f64,
    /// Calibrated surprisals (−log10 of the tail probability against the series' own
    /// history) of the five detectors: global, novelty, time of day, burst, seasonal.
    pub parts: [f64; PARTS],
    /// The seasonal baseline's view of this value, once it has found a season.
    pub seasonal: Option<SeasonalView>,
    /// The point's surprisal: the largest part, less log10 of the number of detectors
    /// (Bonferroni), so that a surprisal of s has a false-alarm probability of at most
    /// 10^−s per point on a series that behaves as it has so far.
    pub surprisal: f64,
    /// The anomaly score in 0..1: surprisal / 300, damped unless it is an onset.
    pub score: f64,
}

impl StreamScorer {
    pub fn new(cfg: &StreamConfig) -> Self {
        Self::staggered(cfg, 0)
    }

    /// Like [`StreamScorer::new`], with the seasonal baseline's refits offset by `stagger`
    /// (the pipeline passes the series id, so thousands of series that start together
    /// spread their refits instead of pausing the stream at once).
    pub fn staggered(cfg: &StreamConfig, stagger: u64) -> Self {
        StreamScorer {
            n: 0,
            min: 0.0,
            max: 0.0,
            global: Ew::default(),
            seen: ContextSet::new(cfg.novelty_capacity),
            fine: Quantiser::new(cfg.levels_fine, false),
            coarse: Quantiser::new(cfg.levels_coarse, true),
            novelty: [0.0; NOVELTY_VALUES],
            outlier: false,
            bin_mean: vec![0.0; cfg.day_bins.max(1)],
            bin_visits: vec![0; cfg.day_bins.max(1)],
            residual: Ew::default(),
            events: VecDeque::new(),
            event_count: 0,
            event_rate: Ew::default(),
            recent: VecDeque::new(),
            seasonal: SeasonalBaseline::staggered(stagger),
            tails: std::array::from_fn(|_| Tail::new(cfg.tail_prior)),
        }
    }

    /// Bytes this series' state occupies (struct and heap), for capacity planning.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.seen.heap_bytes()
            + self.bin_mean.capacity() * 8
            + self.bin_visits.capacity() * 2
            + self.fine.history.capacity()
            + self.coarse.history.capacity()
            + (self.fine.warm.capacity() + self.coarse.warm.capacity()) * 8
            + self.events.capacity()
            + self.recent.capacity() * 4
            + self.seasonal.heap_bytes()
    }

    /// Observations scored so far.
    pub fn observations(&self) -> u64 {
        self.n
    }

    /// The time-of-day bin of `ts_ms`.
    fn day_bin(&self, ts_ms: i64) -> usize {
        let bins = self.bin_mean.len();
        let sec = ts_ms.div_euclid(1000).rem_euclid(86_400) as usize;
        (sec * bins / 86_400).min(bins - 1)
    }

    /// Asks for every cold part of the state that `update(ts_ms, x)` will read (see
    /// `crate::prefetch`): with thousands of series none of it is still cached, and
    /// loading it all at once instead of where each part is needed took the ensemble
    /// bench (10,000 series) from about 415 k to about 555 k points/s.
    fn prefetch(&self, cfg: &StreamConfig, ts_ms: i64, x: f64) {
        let b = self.day_bin(ts_ms);
        prefetch(&self.bin_mean[b]);
        prefetch(&self.bin_visits[b]);
        prefetch_ring(&self.fine.history);
        prefetch_ring(&self.coarse.history);
        prefetch_ring(&self.events);
        prefetch_ring(&self.recent);
        self.fine.prefetch(cfg, &self.seen, x);
        self.coarse.prefetch(cfg, &self.seen, x);
        self.seasonal.prefetch();
    }

    /// Calibrated surprisal of detector `k`'s raw surprisal, which it then learns.
    fn calibrated(&mut self, cfg: &StreamConfig, k: usize, raw: f64) -> f64 {
        let c = self.tails[k].surprisal(raw, cfg.tail_max_shape);
        self.tails[k].learn(raw, cfg.tail_rate_memory, cfg.tail_excess_memory);
        c
    }

    /// Scores `x` at `ts_ms` against everything before it, then learns from it.
    pub fn update(&mut self, cfg: &StreamConfig, ts_ms: i64, x: f64) -> StreamScore {
        self.prefetch(cfg, ts_ms, x);
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.n += 1;
        let floor = cfg.min_relative_sd * (self.max - self.min) + 1e-12;

        // Global.
        let z = if self.global.n >= 10 {
            (x - self.global.mean) / self.global.var.sqrt().max(floor)
        } else {
            0.0
        };
        let s_global = self.calibrated(cfg, 0, two_sided(z));
        self.global.add(cfg.global_memory, x);

        // Novelty: how many contexts at both resolutions were new, against how often
        // that many (or more) were before: the empirical tail of a count with a few
        // values, add-half smoothed (Krichevsky–Trofimov), so a series that has been
        // watched for n points can be surprised by at most about log10(2n), and never by
        // a collapsed scale.
        let fine = self.fine.update(cfg, &mut self.seen, x);
        let coarse = self.coarse.update(cfg, &mut self.seen, x);
        let raw_novelty = match (fine, coarse) {
            (Some(f), Some(c)) => {
                let k = ((f + c) as usize).min(NOVELTY_VALUES - 1);
                let total: f64 = self.novelty.iter().map(|c| f64::from(*c)).sum();
                let tail: f64 = self.novelty[k..].iter().map(|c| f64::from(*c)).sum();
                let values = (2 * cfg.context_len + 1) as f64;
                let p = (tail + 0.5) / (total + 0.5 * values);
                let decay = 1.0 - 1.0 / cfg.novelty_memory.max(1) as f32;
                self.novelty.iter_mut().for_each(|c| *c *= decay);
                self.novelty[k] += 1.0;
                if k > 0 { surprisal(p.min(1.0)) } else { 0.0 }
            }
            _ => 0.0,
        };
        let s_novelty = self.calibrated(cfg, 1, raw_novelty);

        // Time of day.
        let b = self.day_bin(ts_ms);
        let trusted = u32::from(self.bin_visits[b]) >= cfg.bin_min_visits;
        let mut has_level = self.bin_visits[b] > 0;
        if !has_level {
            // An hour starts where the hour before it ended: a first visit is measured
            // against that, so a spike that happens to open an hour is seen as one.
            let prev = (b + self.bin_mean.len() - 1) % self.bin_mean.len();
            if self.bin_visits[prev] > 0 {
                self.bin_mean[b] = self.bin_mean[prev];
                has_level = true;
            }
        }
        let r = x - self.bin_mean[b];
        let sd = (self.residual.n >= 20).then(|| self.residual.var.sqrt().max(floor));
        // A value beyond `bin_clip` deviations right after one within it is a spike until
        // the next value says otherwise: the bin learns it clipped. A second such value
        // in a row is a change, learned in full.
        let mut step = r;
        if let Some(sd) = sd.filter(|_| has_level && cfg.bin_clip > 0.0) {
            let lim = cfg.bin_clip * sd;
            let beyond = r.abs() > lim;
            if beyond && !self.outlier {
                step = r.clamp(-lim, lim);
            }
            self.outlier = beyond;
        }
        let raw_day = if trusted {
            let z = sd.map_or(0.0, |sd| r / sd);
            self.residual.add_zero_mean(cfg.residual_memory, r);
            two_sided(z)
        } else {
            0.0
        };
        let s_day = self.calibrated(cfg, 2, raw_day);
        let a =
            (1.0 / cfg.bin_memory.max(1) as f64).max(1.0 / (f64::from(self.bin_visits[b]) + 1.0));
        self.bin_mean[b] += a * step;
        self.bin_visits[b] = self.bin_visits[b].saturating_add(1);

        // Seasonal baseline (detected periods, MSTL).
        let seasonal = self.seasonal.update(cfg, x, floor);
        let s_seasonal = self.calibrated(cfg, 4, seasonal.map_or(0.0, |v| two_sided(v.z)));

        let mut s = s_global.max(s_novelty).max(s_day).max(s_seasonal);

        // Burst of events against the long-run event rate.
        let event = s >= cfg.burst_event_surprisal;
        self.events.push_back(event);
        self.event_count += u32::from(event);
        if self.events.len() > cfg.burst_window.max(1) {
            let gone = self.events.pop_front().unwrap_or(false);
            self.event_count -= u32::from(gone);
        }
        let raw_burst = if self.event_rate.n >= 200 && self.events.len() == cfg.burst_window.max(1)
        {
            let lambda = self
                .event_rate
                .mean
                .max(1.0 / cfg.burst_rate_memory.max(1) as f64)
                * cfg.burst_window as f64;
            poisson_upper(self.event_count, lambda)
        } else {
            0.0
        };
        let s_burst = self.calibrated(cfg, 3, raw_burst);
        s = s.max(s_burst);
        self.event_rate
            .add(cfg.burst_rate_memory, if event { 1.0 } else { 0.0 });
        let s = (s - (PARTS as f64).log10()).max(0.0);

        // Onset damping.
        let onset = self.recent.iter().all(|r| f64::from(*r) < s);
        let up = s as f32;
        self.recent
            .push_back(if f64::from(up) < s { up.next_up() } else { up });
        if self.recent.len() > cfg.onset_window.max(1) {
            self.recent.pop_front();
        }
        let raw = s / MAX_SURPRISAL;
        let score = if onset { raw } else { raw * cfg.damping }.clamp(0.0, 1.0);
        StreamScore {
            z,
            parts: [s_global, s_novelty, s_day, s_burst, s_seasonal],
            seasonal,
            surprisal: s,
            score,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_known_values() {
        for (z, q) in [
            (0.0, 0.5),
            (1.0, 0.158_655_25),
            (1.959_964, 0.025),
            (5.0, 2.866_515_7e-7),
            (10.0, 7.619_853e-24),
        ] {
            assert!(
                (normal_tail(z) - q).abs() / q < 1e-6,
                "Q({z}) = {} not {q}",
                normal_tail(z)
            );
        }
    }

    #[test]
    fn poisson_tail_matches_direct_sums() {
        // P(X >= 3), λ = 1: 1 − e^-1 (1 + 1 + 1/2) = 0.080301.
        assert!((poisson_upper(3, 1.0) - -(0.080_301_4_f64).log10()).abs() < 1e-5);
        assert_eq!(poisson_upper(1, 2.0), 0.0);
        // Deep tails stay finite and ordered.
        assert!(poisson_upper(20, 0.01) > poisson_upper(10, 0.01));
    }

    #[test]
    fn a_spike_is_scored_once_at_its_onset() {
        let cfg = StreamConfig::default();
        let mut s = StreamScorer::new(&cfg);
        let mut scores = Vec::new();
        for i in 0..2000 {
            let x = (i as f64 * 0.7).sin() + if (1500..1510).contains(&i) { 20.0 } else { 0.0 };
            scores.push(s.update(&cfg, i * 300_000, x).score);
        }
        let top = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(top, 1500);
        // The rest of the episode is damped below the onset.
        assert!(scores[1501..1510].iter().all(|v| *v < scores[1500] * 0.5));
        assert!(scores[..1500].iter().all(|v| *v < scores[1500] * 0.2));
    }

    #[test]
    fn a_broken_daily_pattern_is_noticed_without_an_extreme_value() {
        // Ten days of a daily wave, then one day where the wave stops at its mean: no value
        // leaves the usual range, but every hour of that day is off its profile.
        let cfg = StreamConfig::default();
        let mut s = StreamScorer::new(&cfg);
        let step = 300_000;
        let per_day = 86_400_000 / step;
        let mut best_before = 0.0_f64;
        let mut best_flat = 0.0_f64;
        for i in 0..(11 * per_day) {
            let phase = (i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU;
            let flat = i >= 10 * per_day;
            let x = if flat { 0.0 } else { phase.sin() } + ((i * 7919) % 17) as f64 * 0.002;
            let sc = s.update(&cfg, i * step, x).surprisal;
            if flat {
                best_flat = best_flat.max(sc);
            } else if i > 3 * per_day {
                best_before = best_before.max(sc);
            }
        }
        assert!(
            best_flat > 2.0 * best_before,
            "flat day {best_flat} vs before {best_before}"
        );
    }

    #[test]
    fn the_context_table_is_exact_and_keeps_what_recurs() {
        // 64 slots: a new epoch begins at 56 entries.
        let mut set = ContextSet::new(64);
        let keys: Vec<u32> = (1..=40u32).map(|k| k << 20).collect();
        assert!(keys.iter().all(|k| !set.test_set(*k)), "nothing seen yet");
        assert!(keys.iter().all(|k| set.test_set(*k)), "all remembered");
        // 16 more fill the table: a new epoch keeps everything seen in the old one.
        for k in 1000..1016 {
            assert!(!set.test_set(k));
        }
        // Now only key 1 << 20 and the last batch recur; the next epoch forgets the rest.
        for round in 0..3 {
            set.test_set(1 << 20);
            for k in 2000 + round * 30..2030 + round * 30 {
                set.test_set(k);
            }
        }
        assert!(set.test_set(1 << 20), "what recurs is kept");
        assert!(!set.test_set(2 << 20), "what does not is forgotten");
    }

    #[test]
    fn the_context_table_answers_exactly_what_it_holds() {
        // On a long stream of keys with heavy reuse and many epochs: a key is reported
        // seen exactly when the table holds it (no hash can make two keys one), and the
        // count of entries is right.
        let mut set = ContextSet::new(256);
        let mut rng = crate::Rng::new(5);
        for i in 0..50_000 {
            let key = 1 + (rng.f64() * if i % 3 == 0 { 2000.0 } else { 60.0 }) as u32;
            let held = set.slots.iter().any(|e| *e != 0 && e & !EPOCH_BIT == key);
            assert_eq!(set.test_set(key), held, "key {key} at {i}");
            let entries = set.slots.iter().filter(|e| **e != 0).count();
            assert_eq!(entries, set.len as usize);
        }
    }

    #[test]
    fn contexts_pack_every_level_and_length_apart() {
        let cfg = StreamConfig {
            context_len: 3,
            ..StreamConfig::default()
        };
        let mut q = Quantiser::new(cfg.levels_fine, false);
        q.grid = Some((0.0, 1.0));
        let mut seen = std::collections::HashSet::new();
        for a in 0..16u8 {
            for b in 0..16u8 {
                q.history = [a, b].into_iter().collect();
                let mut keys = Vec::new();
                q.each_context(&cfg, 5, |k| keys.push(k));
                assert_eq!(keys.len(), 3);
                seen.extend(keys);
            }
        }
        // One length-1 key, 16 of length 2, 256 of length 3.
        assert_eq!(seen.len(), 1 + 16 + 256);
    }

    #[test]
    fn a_restored_scorer_continues_exactly() {
        // A small context table, so the checkpoint at 2,200 falls after many generations.
        let cfg = StreamConfig {
            novelty_capacity: 64,
            ..StreamConfig::default()
        };
        let value = |i: i64| (i as f64 * 0.3).sin() * 5.0 + ((i * 7919) % 13) as f64 * 0.1;
        let mut whole = StreamScorer::new(&cfg);
        let mut first = StreamScorer::new(&cfg);
        let mut expected = Vec::new();
        for i in 0..4000 {
            expected.push(whole.update(&cfg, i * 60_000, value(i)).score);
            if i < 2200 {
                first.update(&cfg, i * 60_000, value(i));
            }
        }
        let bytes = postcard::to_stdvec(&first).unwrap();
        let mut restored: StreamScorer = postcard::from_bytes(&bytes).unwrap();
        for i in 2200..4000 {
            let got = restored.update(&cfg, i * 60_000, value(i)).score;
            assert_eq!(got, expected[i as usize], "point {i}");
        }
    }

    #[test]
    fn one_threshold_is_one_false_alarm_rate_on_every_kind_of_noise() {
        // Five series of pure noise of very different shapes, 40,000 points each: normal,
        // Student-t(3) (heavy tails), mostly-zero counts (an error counter), a coarsely
        // quantised gauge, and volatility bursts. None holds an anomaly, so every bucket
        // at or above the alarm threshold is a false alarm. Calibrated, each rate is near
        // 10^-threshold; uncalibrated, a normal z-test cries wolf on the heavy and the
        // zero-inflated ones by orders of magnitude.
        let cfg = StreamConfig::default();
        let n = 40_000;
        let mut rng = crate::Rng::new(42);
        let normal = move |r: &mut crate::Rng| (0..12).map(|_| r.f64()).sum::<f64>() - 6.0;
        type Noise = Box<dyn FnMut(&mut crate::Rng, i64) -> f64>;
        let kinds: [(&str, Noise); 5] = [
            ("normal", Box::new(move |r, _| normal(r))),
            (
                "student-t(3)",
                Box::new(move |r, _| {
                    let z = (0..12).map(|_| r.f64()).sum::<f64>() - 6.0;
                    let chi: f64 = (0..3)
                        .map(|_| ((0..12).map(|_| r.f64()).sum::<f64>() - 6.0).powi(2))
                        .sum();
                    z / (chi / 3.0).sqrt()
                }),
            ),
            (
                "zero-inflated counts",
                Box::new(|r, _| {
                    if r.f64() < 0.97 {
                        0.0
                    } else {
                        (1.0 + r.f64() * 5.0).floor()
                    }
                }),
            ),
            (
                "quantised gauge",
                Box::new(|r, _| ((r.f64() + r.f64()) * 3.0).round()),
            ),
            (
                "volatility bursts",
                Box::new(|r, i| {
                    let calm = (i / 500) % 4 != 0;
                    ((0..12).map(|_| r.f64()).sum::<f64>() - 6.0) * if calm { 1.0 } else { 4.0 }
                }),
            ),
        ];
        for (name, mut noise) in kinds {
            let mut s = StreamScorer::new(&cfg);
            let mut alarms = 0;
            let mut scored = 0;
            for i in 0..n {
                let sc = s.update(&cfg, i * 60_000, noise(&mut rng, i));
                if i >= 2000 {
                    scored += 1;
                    alarms += u32::from(sc.surprisal >= 3.0);
                }
            }
            let rate = f64::from(alarms) / f64::from(scored);
            assert!(
                rate <= 5e-3,
                "{name}: {alarms} of {scored} points at 1e-3 ({rate:.1e})"
            );
        }
    }

    #[test]
    fn an_isolated_spike_alarms_once() {
        // A flat minutely series (0.30 ± 0.01) with one tenfold one-minute spike at 03:00
        // on its first, second or third day. The spike is one alarm; the ordinary minutes
        // after it are not. (A bin that learned the spike in full read them as far below
        // "this hour's level" and paged again: at once on the first day, where the spike
        // opened the hour's bin; through the burst detector on the third.)
        let cfg = crate::DetectConfig::default();
        for day in 0..3 {
            let spike = day * 1440 + 180;
            let mut s = StreamScorer::new(&cfg.stream);
            let mut run = crate::AlarmRun::default();
            let mut alarms = Vec::new();
            for i in 0..4 * 1440 {
                let wobble = 0.01 * (((i * 7919) % 13) as f64 / 6.0 - 1.0);
                let x = if i == spike { 3.0 } else { 0.30 + wobble };
                let sc = s.update(&cfg.stream, i * 60_000, x);
                if run.step(&cfg, (i + 1) as u64, &sc) {
                    alarms.push((i, sc.parts));
                }
            }
            let at: Vec<i64> = alarms.iter().map(|a| a.0).collect();
            assert_eq!(
                at,
                vec![spike],
                "day {day}: alarms (minute, parts): {alarms:?}"
            );
        }
        // A lasting step is not a spike: it alarms at its onset, the bins follow it, and
        // the hours after it (each bin meeting the new level for the first time) are quiet.
        let step = 1440 + 180;
        let mut s = StreamScorer::new(&cfg.stream);
        let mut run = crate::AlarmRun::default();
        let mut alarms = Vec::new();
        for i in 0..4 * 1440 {
            let wobble = 0.01 * (((i * 7919) % 13) as f64 / 6.0 - 1.0);
            let x = if i >= step { 0.60 } else { 0.30 } + wobble;
            let sc = s.update(&cfg.stream, i * 60_000, x);
            if run.step(&cfg, (i + 1) as u64, &sc) {
                alarms.push((i, sc.parts));
            }
        }
        assert!(
            !alarms.is_empty() && alarms.iter().all(|a| (step..step + 15).contains(&a.0)),
            "step: alarms (minute, parts): {alarms:?}"
        );
    }

    #[test]
    fn state_stays_small() {
        let cfg = StreamConfig::default();
        let mut s = StreamScorer::new(&cfg);
        for i in 0..5000 {
            s.update(&cfg, i * 60_000, (i as f64).sin());
        }
        let total = s.state_bytes();
        assert!(total <= 8 * 1024, "{total} bytes per series");
    }
}
