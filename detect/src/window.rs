//! Isolation forest on windowed features of one series, small enough to keep per series.
//!
//! Each value becomes a row of four features of the last [`WINDOW`] values, in units of the
//! series' long-run deviation: the value against the long-run mean, the step from the
//! previous value, the shift between the last two half-windows, and the window's range. So
//! a shape the series does not make (a sudden step, a burst of volatility, a value that is
//! ordinary but arrived by an unusual jump) is isolated quickly even when the value alone
//! is not extreme.
//!
//! The forest follows Liu, Ting and Zhou (2008) at a reduced size: ψ = [`SAMPLE`] rows,
//! height limit ⌈log₂ ψ⌉ = [`HEIGHT`], [`TREES`] trees, a split attribute drawn at random
//! among those that vary in the node and a split drawn uniformly in its range, path length
//! = depth + c(leaf size), score 2^(−E[h]/c(ψ)). What makes it fit beside the other
//! detectors (under 700 bytes for trees and sample together) is the encoding: features are
//! quantised to a quarter of a deviation in an `i8`, each tree is a complete binary tree of
//! one-byte thresholds with its attributes packed two bits a node in one `u64`, and leaves
//! hold their path length in sixteenths in a `u8`. A node that stops splitting early sends
//! every row left, down to a leaf that holds its path length, so every row takes exactly
//! [`HEIGHT`] steps with no tests for leaves.
//!
//! The sample is a reservoir of recent rows: one row in [`KEEP_EVERY`] replaces a
//! pseudo-random slot, and the forest is regrown every [`REFIT_EVERY`] values. Everything is
//! derived from the series' own values and counters, so a restored state scores exactly
//! as the uninterrupted one.

use serde::{Deserialize, Serialize};

use crate::iforest::{Rng, c};
use crate::prefetch::prefetch_slice;
use crate::stream::Ew;

/// Values a row looks back over (the current one included).
pub(crate) const WINDOW: usize = 8;
const FEATURES: usize = 4;
/// Subsample size ψ and the height limit ⌈log₂ ψ⌉.
const SAMPLE: usize = 32;
const HEIGHT: usize = 5;
const INTERNAL: usize = (1 << HEIGHT) - 1;
const LEAVES: usize = 1 << HEIGHT;
const TREES: usize = 8;
/// One value in this many enters the sample; the forest is regrown every this many values.
const KEEP_EVERY: u64 = 8;
const REFIT_EVERY: u64 = 256;
/// Quantisation step of the features, in long-run deviations (range ±31.75).
const STEP: f64 = 0.25;
/// Path lengths are stored in sixteenths.
const PATH_SCALE: f64 = 16.0;
/// Bytes of one encoded tree.
const TREE_BYTES: usize = INTERNAL + LEAVES + 8;

/// The windowed forest of one series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WindowForest {
    /// The last [`WINDOW`] values, as a ring indexed by `seen`.
    window: [f32; WINDOW],
    seen: u64,
    /// Rows kept for the next fit (up to [`SAMPLE`]).
    sample: Vec<[i8; FEATURES]>,
    /// Per tree, [`TREE_BYTES`] bytes: [`INTERNAL`] thresholds (`i8` as bytes), then
    /// [`LEAVES`] path lengths, then the node attributes packed two bits a node into 8
    /// bytes (little-endian). One vector, so a series pays for one heap header. Empty
    /// until the first fit.
    trees: Vec<u8>,
    /// Long-run mean and variance of the forest's scores.
    pub(crate) scores: Ew,
    salt: u64,
}

impl WindowForest {
    pub(crate) fn new(salt: u64) -> Self {
        WindowForest {
            salt,
            ..Self::default()
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.sample.capacity() * FEATURES + self.trees.capacity()
    }

    /// Prefetches every cache line of the trees, whose misses otherwise stall scoring
    /// (see `crate::prefetch`).
    pub(crate) fn prefetch(&self) {
        prefetch_slice(&self.trees);
    }

    /// The row of `x` (already in the window) against the long-run `mean` and `sd`.
    fn row(&self, mean: f64, sd: f64) -> [i8; FEATURES] {
        // Oldest first.
        let w: [f64; WINDOW] =
            std::array::from_fn(|k| f64::from(self.window[(self.seen as usize + k) % WINDOW]));
        let x = w[WINDOW - 1];
        let half = WINDOW / 2;
        let recent = w[half..].iter().sum::<f64>() / half as f64;
        let before = w[..half].iter().sum::<f64>() / half as f64;
        let (lo, hi) = w
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(*v), h.max(*v))
            });
        let q = |v: f64| (v / (sd * STEP)).round().clamp(-127.0, 127.0) as i8;
        [
            q(x - mean),
            q(x - w[WINDOW - 2]),
            q(recent - before),
            q(hi - lo),
        ]
    }

    /// Scores `x` against the forest (`None` before the first fit), then learns from it.
    /// `mean` and `sd` are the series' long-run mean and deviation before `x`.
    pub(crate) fn update(&mut self, x: f64, mean: f64, sd: f64) -> Option<f64> {
        self.window[self.seen as usize % WINDOW] = x as f32;
        self.seen += 1;
        if self.seen < WINDOW as u64 || sd.is_nan() || sd <= 0.0 {
            return None;
        }
        let row = self.row(mean, sd);
        let score = (!self.trees.is_empty()).then(|| self.score(&row));
        if self.seen.is_multiple_of(KEEP_EVERY) {
            if self.sample.len() < SAMPLE {
                self.sample.push(row);
            } else {
                let slot = Rng::new(self.salt ^ self.seen).below(SAMPLE);
                self.sample[slot] = row;
            }
        }
        if self.sample.len() == SAMPLE
            && (self.trees.is_empty() || self.seen.is_multiple_of(REFIT_EVERY))
        {
            self.fit();
        }
        score
    }

    /// s = 2^(−E[h]/c(ψ)) of a row.
    fn score(&self, row: &[i8; FEATURES]) -> f64 {
        let mut total = 0u32;
        for tree in self.trees.chunks_exact(TREE_BYTES) {
            let (thresholds, rest) = tree.split_at(INTERNAL);
            let (paths, attributes) = rest.split_at(LEAVES);
            let attributes = u64::from_le_bytes(attributes.try_into().expect("8 bytes"));
            let mut i = 0usize;
            for _ in 0..HEIGHT {
                let f = ((attributes >> (2 * i)) & 3) as usize;
                i = 2 * i + 1 + usize::from(row[f] > thresholds[i] as i8);
            }
            total += u32::from(paths[i - INTERNAL]);
        }
        let mean_path = f64::from(total) / PATH_SCALE / TREES as f64;
        (-mean_path / c(SAMPLE)).exp2()
    }

    /// Regrows every tree on the sample, seeded by the series' salt and value count.
    fn fit(&mut self) {
        let mut trees = Vec::with_capacity(TREES * TREE_BYTES);
        let mut rng = Rng::new(self.salt ^ self.seen.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for _ in 0..TREES {
            let (thresholds, paths, attributes) = self.grow(&mut rng);
            trees.extend(thresholds.map(|t| t as u8));
            trees.extend(paths);
            trees.extend(attributes.to_le_bytes());
        }
        self.trees = trees;
    }

    /// Grows a tree on all [`SAMPLE`] rows (the sample is the subsample): its thresholds,
    /// leaf path lengths and packed attributes.
    fn grow(&self, rng: &mut Rng) -> ([i8; INTERNAL], [u8; LEAVES], u64) {
        let mut thresholds = [i8::MAX; INTERNAL];
        let mut paths = [0u8; LEAVES];
        let mut attributes = 0u64;
        let mut rows: [u8; SAMPLE] = std::array::from_fn(|k| k as u8);
        // (node, range of `rows`, depth); a node's children are 2n+1 and 2n+2.
        let mut stack = vec![(0usize, 0usize, SAMPLE, 0usize)];
        while let Some((node, lo, hi, depth)) = stack.pop() {
            let part = &mut rows[lo..hi];
            let mut chosen = None;
            if depth < HEIGHT && part.len() > 1 {
                // A random attribute among those that vary in this node, as in iforest.rs.
                let mut order: [usize; FEATURES] = std::array::from_fn(|k| k);
                for k in 0..FEATURES {
                    let j = k + rng.below(FEATURES - k);
                    order.swap(k, j);
                    let f = order[k];
                    let (min, max) = part.iter().fold((i8::MAX, i8::MIN), |(l, h), r| {
                        let v = self.sample[*r as usize][f];
                        (l.min(v), h.max(v))
                    });
                    if max > min {
                        chosen = Some((f, min, max));
                        break;
                    }
                }
            }
            let Some((f, min, max)) = chosen else {
                // A leaf: every row from here goes left down to the bottom level, where
                // the leaf's path length waits.
                let mut bottom = node;
                for _ in depth..HEIGHT {
                    bottom = 2 * bottom + 1;
                }
                let path = depth as f64 + c(part.len());
                paths[bottom - INTERNAL] = (path * PATH_SCALE).round().min(255.0) as u8;
                continue;
            };
            // Integer features: a split in [min, max) sends values above it right, so
            // both sides keep rows.
            let split = min as i16 + rng.below((max as i16 - min as i16) as usize) as i16;
            thresholds[node] = split as i8;
            attributes |= (f as u64) << (2 * node);
            let mut mid = 0;
            for k in 0..part.len() {
                if self.sample[part[k] as usize][f] as i16 <= split {
                    part.swap(k, mid);
                    mid += 1;
                }
            }
            stack.push((2 * node + 1, lo, lo + mid, depth + 1));
            stack.push((2 * node + 2, lo + mid, hi, depth + 1));
        }
        (thresholds, paths, attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(values: impl Iterator<Item = f64>) -> (WindowForest, Vec<Option<f64>>) {
        let mut w = WindowForest::new(1);
        let scores = values.map(|x| w.update(x, 0.0, 1.0)).collect();
        (w, scores)
    }

    #[test]
    fn path_lengths_follow_the_paper() {
        // A sample of 32 identical rows cannot be split: every tree is one leaf at depth
        // 0 holding all 32, so E[h] = c(32) and the score is exactly 1/2.
        let (w, scores) = fed(std::iter::repeat_n(0.0, 600));
        assert_eq!(w.sample.len(), SAMPLE);
        let last = scores.last().unwrap().unwrap();
        let expected = (-(c(32) * PATH_SCALE).round() / PATH_SCALE / c(32)).exp2();
        assert!((last - expected).abs() < 1e-12, "{last} vs {expected}");
        assert!((last - 0.5).abs() < 0.01);
    }

    #[test]
    fn a_step_is_isolated_and_a_restore_scores_the_same() {
        // Noise around 0, then a jump of 6 sd: the jump's row (a large step, a large
        // shift, a wide range) is isolated in a step or two, far quicker than noise.
        let mut rng = Rng::new(9);
        let values: Vec<f64> = (0..3000)
            .map(|i| (rng.f64() - 0.5) * 2.0 + if i >= 2500 { 6.0 } else { 0.0 })
            .collect();
        let (_, scores) = fed(values.iter().copied());
        let mut noise: Vec<f64> = scores[1000..2500].iter().flatten().copied().collect();
        noise.sort_by(f64::total_cmp);
        let p99 = noise[noise.len() * 99 / 100];
        let step = scores[2500].unwrap();
        assert!(step > p99, "step {step} vs noise p99 {p99}");

        // Half-way state through JSON, resumed: identical scores after.
        let (mut a, _) = fed(values[..1700].iter().copied());
        let mut b: WindowForest =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        for x in &values[1700..] {
            assert_eq!(a.update(*x, 0.0, 1.0), b.update(*x, 0.0, 1.0));
        }
    }

    #[test]
    fn the_encoded_forest_stays_small() {
        let mut rng = Rng::new(2);
        let (w, _) = fed((0..2000).map(|_| rng.f64()));
        assert!(w.heap_bytes() <= 700, "{} bytes", w.heap_bytes());
    }
}
