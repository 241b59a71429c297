//! Row-by-row streaming scorer for one series (`seismo detect`, `seismo eval nab`).
//!
//! Each value's surprisal is measured against the long-run distribution of the series
//! (exponentially weighted mean and variance), on a log scale so that extreme tails stay
//! ordered, and an alert is kept to its onset: a score that does not exceed the scores of
//! the recent past is damped, so an ongoing episode reads as one event. Strictly causal,
//! constant memory (a few hundred bytes per series).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Settings of the streaming scorer; one configuration for every series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Memory of the mean and variance, in observations (the EWMA weight is 1/memory).
    pub memory: usize,
    /// Observations during which a score must exceed every earlier one to count as an
    /// onset; later scores of the same episode are damped.
    pub onset_window: usize,
    /// Factor applied to scores that are not an onset.
    pub damping: f64,
    /// Smallest standard deviation, relative to the range seen so far; keeps flat series
    /// from alarming on rounding noise.
    pub min_relative_sd: f64,
    /// Observations before any score above 0 is given.
    pub warmup: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            memory: 6400,
            onset_window: 100,
            damping: 0.1,
            min_relative_sd: 1e-3,
            warmup: 10,
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

/// Decimal digits of surprise the score scale spans: a two-sided tail of 1e-300 is 1.0.
const MAX_SURPRISAL: f64 = 300.0;

/// Streaming state of one series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamScorer {
    n: u64,
    mean: f64,
    var: f64,
    min: f64,
    max: f64,
    recent: VecDeque<f32>,
}

/// One observation's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamScore {
    /// z-score against the long-run mean and deviation.
    pub z: f64,
    /// -log10 of the two-sided tail probability of `z`.
    pub surprisal: f64,
    /// The anomaly score in 0..1: surprisal / 300, damped unless it is an onset.
    pub score: f64,
}

impl StreamScorer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores `x` against everything before it, then learns from it.
    pub fn update(&mut self, cfg: &StreamConfig, x: f64) -> StreamScore {
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        let floor = cfg.min_relative_sd * (self.max - self.min) + 1e-12;
        let (z, surprisal) = if self.n >= cfg.warmup as u64 {
            let z = (x - self.mean) / self.var.sqrt().max(floor);
            let tail = (2.0 * normal_tail(z.abs())).max(1e-300);
            (z, -tail.log10())
        } else {
            (0.0, 0.0)
        };
        let raw = (surprisal / MAX_SURPRISAL).clamp(0.0, 1.0);
        let onset = self.recent.iter().all(|r| f64::from(*r) < raw);
        let score = if onset { raw } else { raw * cfg.damping };
        self.recent.push_back(raw as f32);
        if self.recent.len() > cfg.onset_window {
            self.recent.pop_front();
        }
        // West's exponentially weighted mean and variance; a plain mean while young.
        let a = (1.0 / cfg.memory.max(1) as f64).max(1.0 / (self.n + 1) as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        self.n += 1;
        StreamScore {
            z,
            surprisal,
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
    fn a_spike_is_scored_once_at_its_onset() {
        let cfg = StreamConfig::default();
        let mut s = StreamScorer::new();
        let mut scores = Vec::new();
        for i in 0..2000 {
            let x = (i as f64 * 0.7).sin() + if (1500..1510).contains(&i) { 20.0 } else { 0.0 };
            scores.push(s.update(&cfg, x).score);
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
        assert!(scores[..1500].iter().all(|v| *v < scores[1500] * 0.1));
    }
}
