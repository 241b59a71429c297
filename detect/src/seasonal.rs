//! Seasonal baseline of one series: periods found and decomposed by augurs, refitted now and then.
//!
//! The series is kept as a bounded history of slots, each the mean of `agg` consecutive
//! values. While no seasonality has been found the history doubles its span (pairs of slots
//! merge) until a daily or weekly cycle fits in it; once one is found its resolution stays.
//! Every `seasonal_refit_slots` new slots while searching, and once per history turnover
//! when a season is in use, the history is refitted: augurs' Welch
//! periodogram proposes periods, an autocorrelation search refines each within the
//! periodogram's resolution, and augurs' MSTL decomposes the history with them. Periods
//! whose seasonal strength (Wang, Smith & Hyndman) is too low are dropped. Between refits
//! the expectation is the level plus the last cycle of each seasonal component; the level
//! and the residual scale are updated online, so a level shift is absorbed into the
//! baseline within a few dozen points instead of alarming forever.

use std::collections::VecDeque;

use augurs::Fit;
use augurs::mstl::MSTLModel;
use augurs::seasons::PeriodogramDetector;
use serde::{Deserialize, Serialize};

use crate::prefetch::prefetch;
use crate::stream::{Ew, StreamConfig};

/// Shortest period considered, in slots: shorter cycles are noise at this resolution.
const MIN_PERIOD: u32 = 4;
/// Most periods kept (MSTL handles several; two cover daily and weekly).
const MAX_PERIODS: usize = 2;

/// What the baseline says about one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeasonalView {
    /// Level plus seasonal components at this value's position.
    pub expected: f64,
    /// Residual standard deviation around `expected`.
    pub sd: f64,
    /// Residual z-score of the value.
    pub z: f64,
    /// Detected periods in values (0 where unused).
    pub periods: [u32; MAX_PERIODS],
}

/// A decomposition in use between refits.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decomposition {
    /// Periods in slots; 0 where unused. Inline, like `phase`: with thousands of series
    /// every separate allocation touched per value is another cache miss.
    periods: [u32; MAX_PERIODS],
    /// Phase of the slot being filled, per period (kept by counting, which is cheaper
    /// than a division per value).
    phase: [u32; MAX_PERIODS],
    /// The seasonal value at each phase of each period, the periods one after another.
    profiles: Vec<f32>,
    level: f64,
}

impl Decomposition {
    /// Where in `profiles` each period in use has its current phase.
    fn current(&self) -> impl Iterator<Item = usize> + '_ {
        let mut offset = 0;
        self.periods
            .iter()
            .zip(&self.phase)
            .filter(|(p, _)| **p > 0)
            .map(move |(p, phase)| {
                let at = offset + *phase as usize;
                offset += *p as usize;
                at
            })
    }
}

/// The seasonal baseline's state for one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeasonalBaseline {
    /// Completed slots, oldest first.
    slots: VecDeque<f32>,
    /// Absolute index of `slots[0]` at the current resolution.
    first_slot: u64,
    part_sum: f64,
    part_n: u32,
    /// Values per slot.
    agg: u32,
    /// Offsets this series' refits from other series' (see `learn`).
    #[serde(default)]
    stagger: u64,
    fit: Option<Decomposition>,
    residual: Ew,
}

impl Default for SeasonalBaseline {
    fn default() -> Self {
        SeasonalBaseline {
            slots: VecDeque::new(),
            first_slot: 0,
            part_sum: 0.0,
            part_n: 0,
            agg: 1,
            stagger: 0,
            fit: None,
            residual: Ew::default(),
        }
    }
}

impl SeasonalBaseline {
    /// A baseline whose refits are offset by `stagger` slots (any number, e.g. a hash of
    /// the series id); the default has none.
    pub fn staggered(stagger: u64) -> Self {
        SeasonalBaseline {
            stagger: stagger % (1 << 32),
            ..Self::default()
        }
    }

    /// Heap bytes held, for capacity planning.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 4 + self.fit.as_ref().map_or(0, |f| f.profiles.capacity() * 4)
    }

    /// Prefetches the profile values this value will be compared with and the newest
    /// slot (see `crate::prefetch`).
    pub(crate) fn prefetch(&self) {
        if let Some(slot) = self.slots.back() {
            prefetch(slot);
        }
        if let Some(f) = &self.fit {
            for i in f.current() {
                if let Some(v) = f.profiles.get(i) {
                    prefetch(v);
                }
            }
        }
    }

    /// Scores `x` against the baseline (`None` while no seasonality is known), then learns
    /// from it.
    pub fn update(&mut self, cfg: &StreamConfig, x: f64, floor: f64) -> Option<SeasonalView> {
        let view = self.fit.as_mut().map(|f| {
            let season: f64 = f.current().map(|i| f64::from(f.profiles[i])).sum();
            let expected = f.level + season;
            let r = x - expected;
            let sd = self.residual.var.sqrt().max(floor);
            let z = if self.residual.n >= 20 { r / sd } else { 0.0 };
            self.residual.add_zero_mean(cfg.seasonal_residual_memory, r);
            f.level += cfg.seasonal_level_rate * r;
            let periods = f.periods.map(|p| p * self.agg);
            SeasonalView {
                expected,
                sd,
                z,
                periods,
            }
        });
        self.learn(cfg, x);
        view
    }

    fn learn(&mut self, cfg: &StreamConfig, x: f64) {
        self.part_sum += x;
        self.part_n += 1;
        if self.part_n < self.agg {
            return;
        }
        self.slots
            .push_back((self.part_sum / f64::from(self.part_n)) as f32);
        if let Some(f) = &mut self.fit {
            for (p, phase) in f.periods.iter().zip(&mut f.phase).filter(|(p, _)| **p > 0) {
                *phase += 1;
                if *phase == *p {
                    *phase = 0;
                }
            }
        }
        (self.part_sum, self.part_n) = (0.0, 0);
        let cap = cfg.seasonal_slots.max(4 * MIN_PERIOD as usize);
        if self.slots.len() > cap {
            if self.fit.is_none() && self.agg < cfg.seasonal_max_agg {
                self.coarsen();
            } else {
                self.slots.pop_front();
                self.first_slot += 1;
            }
        }
        // Searching refits often; a season in use is refreshed once per history turnover,
        // as MSTL costs about 140 µs per 256 slots. Refits fall on slot indices shifted by
        // the series' stagger, so series that started together do not all refit in the
        // same instant and stall the stream.
        let every = if self.fit.is_some() {
            cfg.seasonal_slots as u64
        } else {
            u64::from(cfg.seasonal_refit_slots)
        }
        .max(1);
        let slot = self.first_slot + self.slots.len() as u64;
        if (slot + self.stagger).is_multiple_of(every) && self.slots.len() >= cap / 2 {
            self.refit(cfg);
        }
    }

    /// Halves the resolution: absolute slots 2k and 2k+1 become slot k.
    fn coarsen(&mut self) {
        if self.first_slot % 2 == 1 {
            self.slots.pop_front();
            self.first_slot += 1;
        }
        let old: Vec<f32> = self.slots.drain(..).collect();
        let mut pairs = old.chunks_exact(2);
        self.slots
            .extend((&mut pairs).map(|p| (f64::from(p[0]) + f64::from(p[1])) as f32 / 2.0));
        if let [last] = pairs.remainder() {
            // Its partner is still accumulating: carry it into the partial slot.
            self.part_sum += f64::from(*last) * f64::from(self.agg);
            self.part_n += self.agg;
        }
        self.first_slot /= 2;
        self.agg *= 2;
        self.fit = None;
    }

    /// Finds periods and decomposes the history with them; keeps the seasonal ones.
    fn refit(&mut self, cfg: &StreamConfig) {
        let y: Vec<f64> = self.slots.iter().map(|v| f64::from(*v)).collect();
        let n = y.len();
        let max_period = (n / 3) as u32;
        if max_period <= MIN_PERIOD || y.iter().any(|v| !v.is_finite()) {
            self.fit = None;
            return;
        }
        // Welch's method removes neither the mean nor a trend, and a level shift in the
        // history would leak into every long period; so periods are sought in the
        // deviations from a centred moving average as long as the longest period.
        let centred = detrend(&y, max_period as usize);
        if centred.iter().all(|v| v.abs() < 1e-12) {
            self.fit = None;
            return;
        }
        let detector = PeriodogramDetector::builder()
            .min_period(MIN_PERIOD)
            .max_period(max_period)
            .build();
        // Periods in use stay candidates: a level shift in the history can hide them
        // from the periodogram, while MSTL's trend absorbs the shift and keeps them.
        let mut periods: Vec<u32> = self
            .fit
            .as_ref()
            .map(|f| f.periods.iter().copied().filter(|p| *p > 0).collect())
            .unwrap_or_default();
        let known = periods.len();
        // Strongest peaks first; each refined by autocorrelation within the neighbouring
        // periodogram bins, since Welch's bins are coarse at long periods.
        let mut peaks: Vec<_> = detector.periodogram(&centred).peaks(0.3).collect();
        peaks.reverse();
        for peak in peaks.into_iter().take(4) {
            // Neighbours are the next longer (prev) and shorter (next) candidate periods;
            // 0 marks the end of the list, beyond which the search runs to the limit.
            let hi = match peak.prev_period {
                0 => max_period,
                p => p.min(max_period),
            };
            let lo = peak.next_period.max(MIN_PERIOD);
            let (p, acf) = best_lag(&centred, lo.min(peak.period), hi.max(peak.period));
            let related = periods
                .iter()
                .any(|q| p.max(*q) % p.min(*q) <= 1 || p.max(*q) % p.min(*q) + 1 >= p.min(*q));
            if acf >= 0.2 && !related {
                periods.push(p);
            }
            if periods.len() == known + MAX_PERIODS {
                break;
            }
        }
        periods.sort_unstable();
        if periods.is_empty() {
            self.fit = None;
            return;
        }
        let model = MSTLModel::naive(periods.iter().map(|p| *p as usize).collect());
        let Ok(fitted) = model.fit(&y) else {
            self.fit = None;
            return;
        };
        let mstl = fitted.fit();
        // Seasonal strength (Wang, Smith & Hyndman) with robust scales: a level shift in
        // the history lands in the remainder for a few slots, and must not make a clear
        // season look weak.
        let remainder = mstl.remainder();
        let strength: Vec<f64> = mstl
            .seasonal()
            .iter()
            .map(|comp| {
                let r = mad(remainder.iter().map(|v| f64::from(*v)));
                let sr = mad(comp.iter().zip(remainder).map(|(a, b)| f64::from(a + b)));
                if sr > 0.0 {
                    (1.0 - (r * r) / (sr * sr)).max(0.0)
                } else {
                    0.0
                }
            })
            .collect();
        let mut kept = Decomposition {
            periods: [0; MAX_PERIODS],
            phase: [0; MAX_PERIODS],
            profiles: Vec::new(),
            level: f64::from(*mstl.trend().last().expect("history is not empty")),
        };
        // The strongest periods that are seasonal enough, at most MAX_PERIODS. (Keeping a
        // weakened period in use, with a lower bar, was tried: it kept poor fits after a
        // shift and raised false alarms.)
        let mut ranked: Vec<usize> = (0..periods.len())
            .filter(|i| strength[*i] >= cfg.seasonal_min_strength)
            .collect();
        ranked.sort_by(|a, b| strength[*b].total_cmp(&strength[*a]));
        ranked.truncate(MAX_PERIODS);
        ranked.sort_unstable();
        for (k, i) in ranked.into_iter().enumerate() {
            let (p, comp) = (periods[i], &mstl.seasonal()[i]);
            // The last cycle, by phase = absolute slot index mod p.
            let p = p as usize;
            let at = kept.profiles.len();
            kept.profiles.resize(at + p, 0.0);
            for (i, v) in comp.iter().enumerate().skip(n - p) {
                kept.profiles[at + ((self.first_slot + i as u64) % p as u64) as usize] = *v;
            }
            kept.periods[k] = p as u32;
            kept.phase[k] = ((self.first_slot + n as u64) % p as u64) as u32;
        }
        if kept.periods[0] == 0 {
            self.fit = None;
            return;
        }
        if self.fit.is_none() {
            self.residual = Ew::default();
        }
        self.fit = Some(kept);
    }
}

/// Median absolute deviation from the median.
fn mad(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    let med = *v.select_nth_unstable_by(mid, f64::total_cmp).1;
    v.iter_mut().for_each(|x| *x = (*x - med).abs());
    *v.select_nth_unstable_by(mid, f64::total_cmp).1
}

/// `y` minus its centred moving average over `w` values (truncated at the ends).
fn detrend(y: &[f64], w: usize) -> Vec<f64> {
    let n = y.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in y {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    let half = w.max(1) / 2;
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(n));
            y[i] - (prefix[b] - prefix[a]) / (b - a) as f64
        })
        .collect()
}

/// The lag in `lo..=hi` with the highest autocorrelation of `y` (mean zero), and that
/// autocorrelation.
fn best_lag(y: &[f64], lo: u32, hi: u32) -> (u32, f64) {
    let n = y.len();
    let var: f64 = y.iter().map(|v| v * v).sum();
    if var <= 0.0 {
        return (lo, 0.0);
    }
    let mut best = (lo, f64::NEG_INFINITY);
    for lag in lo..=hi.min(n as u32 / 2) {
        let l = lag as usize;
        let c: f64 = (l..n).map(|i| y[i] * y[i - l]).sum::<f64>() / var;
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(i: usize, period: f64) -> f64 {
        (i as f64 / period * std::f64::consts::TAU).sin()
    }

    #[test]
    fn finds_a_daily_period_and_follows_it() {
        // 5-minute data: a day is 288 values, which needs slots of 4 values to fit the
        // history; the baseline must coarsen to find it and then predict the cycle.
        let cfg = StreamConfig::default();
        let mut b = SeasonalBaseline::default();
        let noise = |i: usize| ((i * 7919) % 101) as f64 * 0.002 - 0.1;
        let mut last = None;
        for i in 0..4000 {
            last = b.update(&cfg, 10.0 + 3.0 * wave(i, 288.0) + noise(i), 1e-9);
        }
        let v = last.expect("a seasonal fit after 4000 values");
        let found = v.periods[0].max(v.periods[1]);
        assert!((280..=296).contains(&found), "periods {:?}", v.periods);
        // In-cycle values are expected within a small residual; a value off its phase is
        // not, though it is well within the series' range.
        let mut worst = 0.0f64;
        for i in 4000..4300 {
            let v = b.update(&cfg, 10.0 + 3.0 * wave(i, 288.0) + noise(i), 1e-9);
            worst = worst.max(v.unwrap().z.abs());
        }
        assert!(worst < 6.0, "in-cycle |z| up to {worst}");
        // 4392 is a crest of the cycle (4392 mod 288 = 72); a trough value there is off.
        for i in 4300..4392 {
            b.update(&cfg, 10.0 + 3.0 * wave(i, 288.0) + noise(i), 1e-9);
        }
        let off = b.update(&cfg, 10.0 - 3.0, 1e-9).unwrap();
        assert!(off.z < -10.0, "off-phase z {}", off.z);
    }

    #[test]
    fn noise_has_no_season_and_a_level_shift_is_absorbed() {
        let cfg = StreamConfig::default();
        let mut b = SeasonalBaseline::default();
        let mut r = crate::Rng::new(7);
        for _ in 0..6000 {
            assert!(b.update(&cfg, r.f64(), 1e-9).is_none());
        }
        // A seasonal series that shifts level: the residual returns to normal.
        let mut b = SeasonalBaseline::default();
        for i in 0..3000 {
            b.update(&cfg, wave(i, 48.0) + r.f64() * 0.1, 1e-9);
        }
        // The shift is noticed at once; after it the baseline either follows the new level
        // or, while the shift inside its history blurs the season, stays silent; it never
        // keeps alarming, and once the history has turned over the season is back.
        let mut z = Vec::new();
        for i in 3000..3600 {
            z.push(
                b.update(&cfg, 5.0 + wave(i, 48.0) + r.f64() * 0.1, 1e-9)
                    .map(|v| v.z),
            );
        }
        assert!(z[0].unwrap() > 10.0, "shift not noticed: {:?}", z[0]);
        assert!(
            z[100..].iter().flatten().all(|v| v.abs() < 5.0),
            "shift never absorbed"
        );
        assert!(
            z[500..].iter().all(Option::is_some),
            "season not found again"
        );
    }
}
