//! Online tail calibration: a detector's raw surprisal becomes a tail probability measured against the series' own history.
//!
//! Every detector of the ensemble states its surprise as −log10 of a tail probability
//! under its own model (a normal residual, a Poisson count). On a series that fits the
//! model those numbers are right; on a heavy-tailed, bursty or quantised series they are
//! far too confident, and that is where a detector cries wolf. [`Tail`] checks the claim
//! against what the series actually did, peaks-over-threshold style (Pickands; Siffer et
//! al., "Anomaly detection in streams with extreme value theory", KDD 2017):
//!
//! - how often the raw surprisal exceeds [`EXCEED`] (a nominal 1 % tail) is counted, an
//!   exponentially weighted rate;
//! - the excesses over it are fitted with a generalised Pareto distribution, by the method
//!   of moments on exponentially weighted first and second moments (a few numbers, no
//!   stored sample), its shape held to ξ ∈ [0, `max_shape`] (below 1, where the mean the moments
//!   estimate exists): never a bounded tail, so a value beyond every excess seen is
//!   surprising, not impossible; `max_shape` = 0 makes the tail exponential;
//! - the calibrated tail of a raw surprisal r > EXCEED is rate · (1 + ξ y / σ)^(−1/ξ),
//!   y = r − EXCEED (exp(−y/σ) at ξ = 0), returned as −log10 of that.
//!
//! Before the series has shown anything, its detectors are taken at their word: the rate
//! and the moments start at what an exactly calibrated detector would produce (a rate of
//! 10^−EXCEED and excesses exponential with mean 1/ln 10), with the weight of
//! `prior_exceedances` excesses, so a short or quiet series is judged by the nominal tail
//! and a long one by its own. Each value is scored before it is learned (causal).

use serde::{Deserialize, Serialize};

use crate::stream::Ew;

/// Raw surprisal above which excesses are modelled: a nominal tail of 1 %.
pub(crate) const EXCEED: f64 = 2.0;
/// Mean excess of an exactly calibrated detector: excesses of −log10 p over a level are
/// exponential with rate ln 10.
const NOMINAL_MEAN_EXCESS: f64 = std::f64::consts::LOG10_E;

/// The calibrated tail of one detector's raw surprisal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Tail {
    /// Fraction of values whose raw surprisal exceeds [`EXCEED`].
    rate: Ew,
    /// Excesses over [`EXCEED`]: mean and variance.
    excess: Ew,
}

impl Tail {
    /// A tail that starts at the nominal one, weighted as `prior` excesses (and the points
    /// that would have produced them).
    pub(crate) fn new(prior: u64) -> Self {
        let nominal_rate = 10f64.powf(-EXCEED);
        Tail {
            rate: Ew {
                n: (prior as f64 / nominal_rate) as u64,
                mean: nominal_rate,
                var: 0.0,
            },
            excess: Ew {
                n: prior,
                mean: NOMINAL_MEAN_EXCESS,
                var: NOMINAL_MEAN_EXCESS * NOMINAL_MEAN_EXCESS,
            },
        }
    }

    /// −log10 of the calibrated probability of a raw surprisal at least `raw`. Below
    /// [`EXCEED`] there is no tail model, only the bound the exceedance rate gives: the
    /// claim is kept, but never above what an exceedance is worth on this series (a
    /// detector that never exceeds its 1 % claim is not thereby 1e-4 sure at 1.9).
    pub(crate) fn surprisal(&self, raw: f64, max_shape: f64) -> f64 {
        let at_exceed = -self.rate.mean.clamp(1e-300, 1.0).log10();
        if raw <= EXCEED {
            return raw.max(0.0).min(at_exceed);
        }
        let y = raw - EXCEED;
        let m = self.excess.mean.max(1e-9);
        let v = self.excess.var.max(1e-18);
        let shape = (0.5 * (1.0 - m * m / v)).clamp(0.0, max_shape.clamp(0.0, 0.95));
        // Method of moments: σ = m (1 − ξ); at ξ = 0, the exponential's mean.
        let scale = m * (1.0 - shape);
        let tail_log10 = if shape < 1e-6 {
            -y / scale * std::f64::consts::LOG10_E
        } else {
            -(1.0 / shape) * (1.0 + shape * y / scale).log10()
        };
        (at_exceed - tail_log10).min(300.0)
    }

    /// Learns one raw surprisal.
    pub(crate) fn learn(&mut self, raw: f64, rate_memory: usize, excess_memory: usize) {
        let over = raw > EXCEED;
        self.rate.add(rate_memory, if over { 1.0 } else { 0.0 });
        if over {
            self.excess.add(excess_memory, raw - EXCEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::normal_tail;

    /// Raw surprisals of an exactly calibrated detector: −log10 of a uniform p-value.
    fn nominal(rng: &mut crate::Rng) -> f64 {
        -(rng.f64().max(1e-300)).log10()
    }

    #[test]
    fn an_untouched_tail_is_the_nominal_one() {
        let t = Tail::new(20);
        for raw in [2.5, 4.0, 8.0] {
            assert!(
                (t.surprisal(raw, 0.5) - raw).abs() < 1e-9,
                "{raw}: {}",
                t.surprisal(raw, 0.5)
            );
        }
    }

    #[test]
    fn a_calibrated_detector_stays_calibrated() {
        let mut t = Tail::new(20);
        let mut rng = crate::Rng::new(7);
        for _ in 0..200_000 {
            let r = nominal(&mut rng);
            t.learn(r, 20_000, 500);
        }
        for raw in [3.0, 5.0] {
            let got = t.surprisal(raw, 0.5);
            assert!((got - raw).abs() < 0.35, "{raw}: {got}");
        }
    }

    #[test]
    fn an_overconfident_detector_is_brought_down_to_its_real_false_alarm_rate() {
        // A normal z-test on Student-t(3) noise: |z| > 6 claims 1e-9, but happens about
        // once in 300 points here. After calibration a claim of 1e-9 is worth about 1e-2.5.
        let mut t = Tail::new(20);
        let mut rng = crate::Rng::new(11);
        let mut student = move || {
            let n = |r: &mut crate::Rng| (0..12).map(|_| r.f64()).sum::<f64>() - 6.0;
            let z = n(&mut rng);
            let chi: f64 = (0..3).map(|_| n(&mut rng).powi(2)).sum();
            z / (chi / 3.0).sqrt()
        };
        let raw_of = |z: f64| -(2.0 * normal_tail(z.abs())).max(1e-300).log10();
        let mut exceed6 = 0;
        let n = 100_000;
        for _ in 0..n {
            let z = student();
            exceed6 += u32::from(z.abs() > 6.0);
            t.learn(raw_of(z), 20_000, 500);
        }
        let claimed = raw_of(6.0);
        let real = -(f64::from(exceed6) / f64::from(n)).log10();
        let calibrated = t.surprisal(claimed, 0.5);
        assert!(claimed > 8.5, "{claimed}");
        assert!(
            (calibrated - real).abs() < 0.6,
            "claimed {claimed:.2}, calibrated {calibrated:.2}, observed {real:.2}"
        );
    }

    #[test]
    fn the_scale_is_monotone_and_finite() {
        let mut t = Tail::new(20);
        let mut rng = crate::Rng::new(3);
        for _ in 0..5000 {
            t.learn(nominal(&mut rng) * 3.0, 2000, 200);
        }
        let mut prev = -1.0;
        for i in 0..400 {
            let s = t.surprisal(f64::from(i) * 0.75, 0.5);
            assert!(s.is_finite() && s >= prev, "{i}: {s} after {prev}");
            prev = s;
        }
    }
}
