//! Row-by-row streaming scorer for one series (`seismo detect`, `seismo eval nab`).
//!
//! An ensemble of six causal detectors, each turned into a surprisal (−log10 of a tail
//! probability) so they share one scale:
//! - **global**: the value against the long-run, exponentially weighted mean and variance;
//! - **novelty**: how many of the recent value patterns (contexts of quantised levels, at a
//!   fine and a coarse resolution) were never seen before, against how novel the series
//!   usually is; a bounded, forgetting bit set remembers the contexts seen;
//! - **time of day**: the value against its hour-of-day profile, so a daily pattern that
//!   breaks is noticed even when the value itself is ordinary;
//! - **burst**: how many moderately surprising points the last few held, against the
//!   series' long-run rate of such points (a Poisson tail), which catches changes that no
//!   single point reveals;
//! - **seasonal**: the value against a seasonal baseline whose periods are detected and
//!   decomposed by augurs (see `seasonal.rs`); silent until a clear season is found;
//! - **windowed forest**: an isolation forest over features of the last few values (level,
//!   step, shift, range; see `window.rs`), its score against its own usual level.
//!
//! The largest surprisal is the point's; a score that does not exceed the recent ones is
//! damped, so an episode reads as one event at its onset. Strictly causal: each point is
//! scored before any part of the state learns from it. About 7.9 KiB per series.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::prefetch::{prefetch, prefetch_ring};
use crate::seasonal::{SeasonalBaseline, SeasonalView};
use crate::window::WindowForest;

/// Settings of the streaming scorer; one configuration for every series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Memory of the global mean and variance, in observations.
    pub global_memory: usize,
    /// Smallest standard deviation, relative to the range seen so far; keeps flat series
    /// from alarming on rounding noise.
    pub min_relative_sd: f64,
    /// Levels of the fine and the coarse quantiser over the range of the first
    /// `quantiser_warmup` values (values outside continue the grid).
    pub levels_fine: u32,
    pub levels_coarse: u32,
    /// Longest context of quantised levels.
    pub context_len: usize,
    /// Values that fix the quantiser grids; no novelty is scored before.
    pub quantiser_warmup: usize,
    /// Memory of the novelty statistics, in observations.
    pub novelty_memory: usize,
    /// Points after the warm-up before novelty may score.
    pub novelty_mute: usize,
    /// log2 of the bits of each of the two seen-context sets.
    pub seen_bits: u32,
    /// Every this many points the older seen-set is forgotten.
    pub seen_rotation: u64,
    /// Bins of the time-of-day profile.
    pub day_bins: usize,
    /// Memory of each bin's mean, in visits; and visits before a bin is trusted.
    pub bin_memory: usize,
    pub bin_min_visits: u32,
    /// Memory of the pooled time-of-day residual variance.
    pub residual_memory: usize,
    /// Points in the burst window; the surprisal that counts a point as an event; the
    /// memory of the long-run event rate; the weight of the burst surprisal.
    pub burst_window: usize,
    pub burst_event_surprisal: f64,
    pub burst_rate_memory: usize,
    pub burst_weight: f64,
    /// Scores that do not exceed the previous `onset_window` are multiplied by `damping`.
    pub onset_window: usize,
    pub damping: f64,
    /// Salt of the context hash.
    pub seed: u64,
    /// Seasonal baseline (see `seasonal.rs`): slots of history; most values merged into
    /// one slot while no season is found; slots between refits while searching (a season
    /// in use is refitted every `seasonal_slots`); smallest seasonal
    /// strength a period needs; rate at which the level follows residuals; memory of the
    /// residual variance; weight of its surprisal.
    pub seasonal_slots: usize,
    pub seasonal_max_agg: u32,
    pub seasonal_refit_slots: u32,
    pub seasonal_min_strength: f64,
    pub seasonal_level_rate: f64,
    pub seasonal_residual_memory: usize,
    pub seasonal_weight: f64,
    /// Windowed isolation forest (see `window.rs`): memory of its score statistics,
    /// scores before it may count, and the weight of its surprisal. The weight was swept
    /// on NAB's 31 files: at 0.5 and below it changes nothing, at 0.7 it adds 0.1 points,
    /// at 0.9 and above it costs a point (its tail is a normal approximation of a bounded
    /// score, so it is trusted less than the others).
    pub window_memory: usize,
    pub window_min_scores: u64,
    pub window_weight: f64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            global_memory: 6400,
            min_relative_sd: 1e-3,
            levels_fine: 12,
            levels_coarse: 4,
            context_len: 7,
            quantiser_warmup: 200,
            novelty_memory: 3000,
            novelty_mute: 20,
            seen_bits: 14,
            seen_rotation: 8000,
            day_bins: 24,
            bin_memory: 5,
            bin_min_visits: 3,
            residual_memory: 2000,
            burst_window: 20,
            burst_event_surprisal: 3.0,
            burst_rate_memory: 2000,
            burst_weight: 0.7,
            onset_window: 25,
            damping: 0.1,
            seed: 0,
            seasonal_slots: 256,
            seasonal_max_agg: 64,
            seasonal_refit_slots: 64,
            seasonal_min_strength: 0.8,
            seasonal_level_rate: 0.05,
            seasonal_residual_memory: 1000,
            seasonal_weight: 1.0,
            window_memory: 2000,
            window_min_scores: 200,
            window_weight: 0.7,
        }
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

/// −log10 of the upper normal tail of z; 0 for z ≤ 0.
fn upper(z: f64) -> f64 {
    if z > 0.0 {
        surprisal(normal_tail(z))
    } else {
        0.0
    }
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

/// Two bit sets of seen contexts, old and current: a context is seen if it is in either;
/// it is recorded in the current one; every `rotation` points the current becomes the old
/// one and a fresh one starts, so memory is bounded and old patterns are eventually
/// forgotten.
///
/// Bit `i` of both sets lives in the same 64-byte line (`i / 256`): words 0..4 of a line
/// hold 256 bits of one set and words 4..8 the same 256 bits of the other. A test then
/// misses the cache once, not once per set; with thousands of series every set is cold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "SeenSetRepr", into = "SeenSetRepr")]
struct SeenSet {
    lines: Vec<SeenLine>,
    /// Whether the current set is the high half (words 4..8) of each line.
    cur_high: bool,
    ticks: u64,
}

/// One cache line: 256 bits of each of the two sets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(64))]
struct SeenLine([u64; 8]);

/// Checkpoint form of [`SeenSet`]: each set as its plain words, bit `i` in word `i / 64`,
/// the form checkpoints had before the sets shared lines, so those still load.
#[derive(Serialize, Deserialize)]
struct SeenSetRepr {
    cur: Vec<u64>,
    old: Vec<u64>,
    ticks: u64,
}

impl From<SeenSetRepr> for SeenSet {
    fn from(r: SeenSetRepr) -> Self {
        // Sets of fewer than 256 bits (`seen_bits` < 8) are widened to one line.
        let words = r.cur.len().max(r.old.len()).max(4);
        let mut lines = vec![SeenLine::default(); words.div_ceil(4)];
        for (j, (c, o)) in r.cur.iter().zip(&r.old).enumerate() {
            lines[j / 4].0[j % 4] = *c;
            lines[j / 4].0[4 + j % 4] = *o;
        }
        SeenSet {
            lines,
            cur_high: false,
            ticks: r.ticks,
        }
    }
}

impl From<SeenSet> for SeenSetRepr {
    fn from(s: SeenSet) -> Self {
        let (cur, old) = if s.cur_high { (4, 0) } else { (0, 4) };
        let half = |at: usize| -> Vec<u64> {
            s.lines
                .iter()
                .flat_map(|l| l.0[at..at + 4].iter().copied())
                .collect()
        };
        SeenSetRepr {
            cur: half(cur),
            old: half(old),
            ticks: s.ticks,
        }
    }
}

impl SeenSet {
    /// Two sets of `2^bits` bits each (at least one line).
    fn new(bits: u32) -> Self {
        SeenSet {
            lines: vec![SeenLine::default(); (1usize << bits).div_ceil(256)],
            cur_high: false,
            ticks: 0,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.lines.capacity() * std::mem::size_of::<SeenLine>()
    }

    fn tick(&mut self, rotation: u64) {
        self.ticks += 1;
        if rotation > 0 && self.ticks.is_multiple_of(rotation) {
            self.cur_high = !self.cur_high;
            let cur = if self.cur_high { 4 } else { 0 };
            for line in &mut self.lines {
                line.0[cur..cur + 4].fill(0);
            }
        }
    }

    /// Line, word within a half, and bit of `h`.
    fn slot(&self, h: u64) -> (usize, usize, u64) {
        let bits = (self.lines.len() * 256) as u64;
        let i = (h & (bits - 1)) as usize;
        (i / 256, (i / 64) % 4, 1u64 << (i % 64))
    }

    /// Prefetches the line `test_set(h)` will read.
    fn prefetch(&self, h: u64) {
        prefetch(&self.lines[self.slot(h).0]);
    }

    /// Whether `h` was seen; records it either way.
    fn test_set(&mut self, h: u64) -> bool {
        let (l, w, b) = self.slot(h);
        let (cur, old) = if self.cur_high {
            (4 + w, w)
        } else {
            (w, 4 + w)
        };
        let line = &mut self.lines[l].0;
        let seen = (line[cur] | line[old]) & b != 0;
        line[cur] |= b;
        seen
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over the context's levels, its length and a salt, finished with murmur3's
/// fmix64 so that the low bits used as the index are well mixed.
fn context_hash(ctx: impl Iterator<Item = i64>, len: usize, salt: u64) -> u64 {
    let mut h = FNV_OFFSET;
    for q in ctx {
        h ^= (q as u64) & 0xffff_ffff;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= len as u64;
    h = h.wrapping_mul(FNV_PRIME);
    h ^= salt;
    h = h.wrapping_mul(FNV_PRIME);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Context novelty at one resolution.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quantiser {
    levels: u32,
    /// Grid origin and step, fixed once `quantiser_warmup` values have been seen.
    grid: Option<(f64, f64)>,
    warm: Vec<f64>,
    /// The last `context_len` levels, oldest first.
    history: VecDeque<i64>,
}

impl Quantiser {
    fn new(levels: u32) -> Self {
        Quantiser {
            levels,
            grid: None,
            warm: Vec::new(),
            history: VecDeque::new(),
        }
    }

    fn salt(&self, seed: u64) -> u64 {
        u64::from(self.levels) + (seed << 8)
    }

    /// The level of `x` on the fixed grid.
    fn level(&self, x: f64) -> Option<i64> {
        let (lo, step) = self.grid?;
        Some(((x - lo) / step).floor() as i64)
    }

    /// Calls `f` with the hash of every context that ends at level `q`, shortest first:
    /// the newest `context_len - 1` levels of the history, then `q`.
    fn each_context(&self, cfg: &StreamConfig, q: i64, mut f: impl FnMut(u64)) {
        let keep = self.history.len().min(cfg.context_len.saturating_sub(1));
        let past = self.history.range(self.history.len() - keep..);
        let n = keep + 1;
        let salt = self.salt(cfg.seed);
        for k in 1..=n {
            f(context_hash(
                past.clone().copied().chain([q]).skip(n - k),
                k,
                salt,
            ));
        }
    }

    /// Fraction of the contexts ending at `x` that are new.
    fn learn(&mut self, cfg: &StreamConfig, seen: &mut SeenSet, x: f64) -> f64 {
        let q = self.level(x).expect("grid fixed");
        let (mut new, mut n) = (0, 0);
        self.each_context(cfg, q, |h| {
            n += 1;
            new += u32::from(!seen.test_set(h));
        });
        self.history.push_back(q);
        if self.history.len() > cfg.context_len.max(1) {
            self.history.pop_front();
        }
        f64::from(new) / f64::from(n)
    }

    /// Prefetches the seen-set words that `learn(x)` will test (nothing while the grid is
    /// being fixed).
    fn prefetch(&self, cfg: &StreamConfig, seen: &SeenSet, x: f64) {
        if let Some(q) = self.level(x) {
            self.each_context(cfg, q, |h| seen.prefetch(h));
        }
    }

    /// The novelty of `x`, or `None` while the grid is being fixed.
    fn update(&mut self, cfg: &StreamConfig, seen: &mut SeenSet, x: f64) -> Option<f64> {
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

/// Reads visit counts of any width, saturating at `u16::MAX`.
fn saturating_u16s<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let wide: Vec<u64> = Deserialize::deserialize(d)?;
    Ok(wide
        .into_iter()
        .map(|v| v.min(u64::from(u16::MAX)) as u16)
        .collect())
}

/// Streaming state of one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamScorer {
    n: u64,
    min: f64,
    max: f64,
    global: Ew,
    seen: SeenSet,
    fine: Quantiser,
    coarse: Quantiser,
    novelty: Ew,
    bin_mean: Vec<f64>,
    /// Visits per bin, saturating: past `bin_min_visits` and `bin_memory` only "many"
    /// matters, so 16 bits do (checkpoints with 32-bit counts still load).
    #[serde(deserialize_with = "saturating_u16s")]
    bin_visits: Vec<u16>,
    residual: Ew,
    /// Event flags of the burst window, newest last, and how many are set.
    events: VecDeque<bool>,
    event_count: u32,
    event_rate: Ew,
    /// Surprisals of the last points, rounded up to `f32` (half the bytes; rounding up
    /// keeps a repeat of the same surprisal from counting as an onset).
    recent: VecDeque<f32>,
    /// Absent from checkpoints written before it existed: it then starts afresh.
    #[serde(default)]
    seasonal: SeasonalBaseline,
    /// Absent from checkpoints written before it existed: it then starts afresh.
    #[serde(default)]
    window: WindowForest,
}

/// One observation's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamScore {
    /// z-score against the long-run mean and deviation.
    pub z: f64,
    /// Surprisals (−log10 tail probability) of the six detectors: global, novelty,
    /// time of day, burst, seasonal, windowed forest (weights already applied).
    pub parts: [f64; 6],
    /// The seasonal baseline's view of this value, once it has found a season.
    pub seasonal: Option<SeasonalView>,
    /// The largest of `parts`: the point's surprisal.
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
            seen: SeenSet::new(cfg.seen_bits),
            fine: Quantiser::new(cfg.levels_fine),
            coarse: Quantiser::new(cfg.levels_coarse),
            novelty: Ew::default(),
            bin_mean: vec![0.0; cfg.day_bins.max(1)],
            bin_visits: vec![0; cfg.day_bins.max(1)],
            residual: Ew::default(),
            events: VecDeque::new(),
            event_count: 0,
            event_rate: Ew::default(),
            recent: VecDeque::new(),
            seasonal: SeasonalBaseline::staggered(stagger),
            window: WindowForest::new(stagger),
        }
    }

    /// Bytes this series' state occupies (struct and heap), for capacity planning.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.seen.heap_bytes()
            + self.bin_mean.capacity() * 8
            + self.bin_visits.capacity() * 2
            + (self.fine.history.capacity() + self.coarse.history.capacity()) * 8
            + (self.fine.warm.capacity() + self.coarse.warm.capacity()) * 8
            + self.events.capacity()
            + self.recent.capacity() * 4
            + self.seasonal.heap_bytes()
            + self.window.heap_bytes()
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
        // `learn` hashes the contexts again when it tests them: a few dozen
        // multiplications each, where carrying them would need room for `context_len`.
        self.fine.prefetch(cfg, &self.seen, x);
        self.coarse.prefetch(cfg, &self.seen, x);
        self.window.prefetch();
        self.seasonal.prefetch();
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
        let long_run = (self.global.mean, self.global.var.sqrt().max(floor));
        let z = if self.global.n >= 10 {
            (x - self.global.mean) / self.global.var.sqrt().max(floor)
        } else {
            0.0
        };
        let s_global = two_sided(z);
        self.global.add(cfg.global_memory, x);

        // Novelty: the mean of both resolutions, against its own usual level.
        self.seen.tick(cfg.seen_rotation);
        let fine = self.fine.update(cfg, &mut self.seen, x);
        let coarse = self.coarse.update(cfg, &mut self.seen, x);
        let nov = match (fine, coarse) {
            (Some(f), Some(c)) => 0.5 * (f + c),
            _ => 0.0,
        };
        let s_novelty = if self.novelty.n >= (cfg.quantiser_warmup + cfg.novelty_mute) as u64 {
            upper((nov - self.novelty.mean) / self.novelty.var.sqrt().max(1e-3))
        } else {
            0.0
        };
        // Warm-up zeros are learned too: they make early novelty stand out, which is when
        // a series' first change after its warm-up is most likely to be missed otherwise.
        self.novelty.add(cfg.novelty_memory, nov);

        // Time of day.
        let b = self.day_bin(ts_ms);
        let s_day = if u32::from(self.bin_visits[b]) >= cfg.bin_min_visits {
            let r = x - self.bin_mean[b];
            let z = if self.residual.n >= 20 {
                r / self.residual.var.sqrt().max(floor)
            } else {
                0.0
            };
            self.residual.add_zero_mean(cfg.residual_memory, r);
            two_sided(z)
        } else {
            0.0
        };
        let a =
            (1.0 / cfg.bin_memory.max(1) as f64).max(1.0 / (f64::from(self.bin_visits[b]) + 1.0));
        self.bin_mean[b] += a * (x - self.bin_mean[b]);
        self.bin_visits[b] = self.bin_visits[b].saturating_add(1);

        // Seasonal baseline (detected periods, MSTL).
        let seasonal = self.seasonal.update(cfg, x, floor);
        let s_seasonal = seasonal.map_or(0.0, |v| cfg.seasonal_weight * two_sided(v.z));

        // Windowed isolation forest: its score against its own usual level.
        let mut s_window = 0.0;
        if self.global.n > 10
            && let Some(score) = self.window.update(x, long_run.0, long_run.1)
        {
            let stats = &mut self.window.scores;
            if stats.n >= cfg.window_min_scores {
                s_window =
                    cfg.window_weight * upper((score - stats.mean) / stats.var.sqrt().max(1e-3));
            }
            stats.add(cfg.window_memory, score);
        }

        let mut s = s_global
            .max(s_novelty)
            .max(s_day)
            .max(s_seasonal)
            .max(s_window);

        // Burst of events against the long-run event rate.
        let event = s >= cfg.burst_event_surprisal;
        self.events.push_back(event);
        self.event_count += u32::from(event);
        if self.events.len() > cfg.burst_window.max(1) {
            let gone = self.events.pop_front().unwrap_or(false);
            self.event_count -= u32::from(gone);
        }
        let mut s_burst = 0.0;
        if self.event_rate.n >= 200 && self.events.len() == cfg.burst_window.max(1) {
            let lambda = self
                .event_rate
                .mean
                .max(1.0 / cfg.burst_rate_memory.max(1) as f64)
                * cfg.burst_window as f64;
            s_burst = cfg.burst_weight * poisson_upper(self.event_count, lambda);
            s = s.max(s_burst);
        }
        self.event_rate
            .add(cfg.burst_rate_memory, if event { 1.0 } else { 0.0 });

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
            parts: [s_global, s_novelty, s_day, s_burst, s_seasonal, s_window],
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
    fn wide_visit_counts_from_older_checkpoints_saturate() {
        let cfg = StreamConfig::default();
        let mut s = StreamScorer::new(&cfg);
        s.update(&cfg, 0, 1.0);
        let mut json = serde_json::to_value(&s).unwrap();
        json["bin_visits"][0] = serde_json::json!(100_000u32);
        let back: StreamScorer = serde_json::from_value(json).unwrap();
        assert_eq!(back.bin_visits[0], u16::MAX);
    }

    #[test]
    fn seen_sets_travel_as_plain_words_either_way_round() {
        // Checkpoints keep the form they had before the two sets shared cache lines: bit
        // `i` of a set in word `i / 64`. So a checkpoint from before loads, and one made
        // after a rotation (the current set then in the high halves) reads the same.
        let mut set = SeenSet::new(10);
        let before: Vec<u64> = (0..40u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let after: Vec<u64> = (40..70u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        before.iter().for_each(|h| assert!(!set.test_set(*h)));
        set.tick(1);
        assert!(set.cur_high);
        after.iter().for_each(|h| {
            set.test_set(*h);
        });
        let json = serde_json::to_value(&set).unwrap();
        let words =
            |name: &str| -> Vec<u64> { serde_json::from_value(json[name].clone()).unwrap() };
        let (cur, old) = (words("cur"), words("old"));
        assert_eq!((cur.len(), old.len()), (16, 16));
        let has = |w: &[u64], h: u64| w[(h as usize & 1023) / 64] & (1 << (h % 64)) != 0;
        assert!(before.iter().all(|h| has(&old, *h)));
        assert!(after.iter().all(|h| has(&cur, *h)));
        assert_eq!(cur.iter().map(|w| w.count_ones()).sum::<u32>(), {
            let mut distinct: Vec<u64> = after.iter().map(|h| h & 1023).collect();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.len() as u32
        });
        let mut back: SeenSet = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        for h in before.iter().chain(&after) {
            assert!(back.test_set(*h), "{h} forgotten");
        }
        // The next rotation forgets the old set and keeps the current one as old.
        back.tick(1);
        assert!(after.iter().all(|h| back.test_set(*h)));
    }

    #[test]
    fn a_restored_scorer_continues_exactly() {
        // Rotations every 700 points, so the checkpoint at 2,200 falls with the current
        // set in the high halves of the lines.
        let cfg = StreamConfig {
            seen_rotation: 700,
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
        assert!(first.seen.cur_high);
        let mut restored: StreamScorer =
            serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
        for i in 2200..4000 {
            let got = restored.update(&cfg, i * 60_000, value(i)).score;
            assert_eq!(got, expected[i as usize], "point {i}");
        }
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
