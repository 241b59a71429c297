//! One series' baseline (seasonal profile or level) and robust residual scoring.

use seismo_schemas::AnomalyKind;
use serde::{Deserialize, Serialize};

/// Detector settings; one configuration serves every series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Width of the time buckets points are averaged into before scoring, in seconds.
    pub bucket_secs: u64,
    /// Length of the seasonal cycle, in seconds (86400: daily).
    pub season_secs: u64,
    /// Number of slots the seasonal profile has per cycle; more slots follow sharper
    /// daily shapes but need more history per slot.
    pub season_slots: u32,
    /// Width of the band an anomaly reports (expected ± this many robust standard
    /// deviations); a bucket beyond twice it is critical. The band explains an alarm; it
    /// does not raise one.
    pub z_threshold: f64,
    /// Buckets a series needs before it may raise anomalies (every detector: the ensemble
    /// and the band alike).
    pub warmup: u32,
    /// While an alarm lasts (its buckets stay at or above `alarm_surprisal`), raise it
    /// again every this many buckets, so an incident hears that it goes on.
    pub repeat_every: u32,
    /// After this many consecutive buckets outside the band the series is taken to have
    /// moved to a new level: the band re-baselines, and an alarm raised then is a
    /// level shift.
    pub level_shift_after: u32,
    /// Smallest robust scale, relative to the expected value's magnitude; keeps perfectly
    /// flat series from alarming on rounding noise.
    pub min_relative_scale: f64,
    /// A bucket is an alarm when the streaming ensemble (the scorer of `seismo detect` and
    /// `seismo eval nab`, calibrated against each series' own history) finds it this
    /// improbable: −log10 of the false-alarm probability per bucket. At 6, a series that
    /// behaves as it has so far raises about one false alarm in a million buckets
    /// (two years of minutes); the ensemble damps the buckets after an onset, so an
    /// episode is one alarm (repeated every `repeat_every` buckets while it lasts).
    pub alarm_surprisal: f64,
    /// A host's row of metrics whose tail probability (its isolation-forest score, the
    /// persistence of high scores, or its whitened distance, against the host's recent
    /// rows) is below 10^−this is a `multivariate` anomaly. One row a bucket a host, and
    /// only onsets are raised: at 6, 20,000 rows of noise (two weeks of minutes) raise at
    /// most 3, also when the noise is autocorrelated (see the entity tests).
    pub entity_threshold: f64,
    /// How long after a bucket ends, in its partition's event time (the newest point's
    /// time), it still takes points. Then it is scored even if its series sent nothing
    /// newer; a point that arrives for it later is late: stored and counted
    /// (`seismo_detect_late_points_total`), but not scored.
    pub allowed_lateness_secs: u64,
    /// Every this many seconds of event time, each warm series' expected value and band
    /// are stored (the `bands` table), for dashboards and the series API to draw beside
    /// the observed values. 0 stores none. A multiple of `bucket_secs`: at the default
    /// 300 with minute buckets, one row per five points of a minutely series.
    pub band_every_secs: u64,
    /// The streaming ensemble (`[detect.stream]`): the scorer of `seismo detect` and
    /// `seismo eval nab`, run on every series' buckets.
    pub stream: crate::StreamConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            bucket_secs: 60,
            season_secs: 86_400,
            season_slots: 288,
            z_threshold: 6.0,
            warmup: 120,
            repeat_every: 15,
            level_shift_after: 60,
            min_relative_scale: 0.002,
            alarm_surprisal: 6.0,
            entity_threshold: 6.0,
            allowed_lateness_secs: 120,
            band_every_secs: 300,
            stream: crate::StreamConfig::default(),
        }
    }
}

impl DetectConfig {
    /// The ensemble's score of a bucket as alarms are decided on it: 0 during the
    /// warm-up, when no detector may raise anything. `seismo eval nab` scores this.
    pub fn gated_score(&self, observations: u64, score: f64) -> f64 {
        if self.warm(observations) { score } else { 0.0 }
    }

    /// Whether a series with this many observations is past the warm-up.
    pub fn warm(&self, observations: u64) -> bool {
        observations > u64::from(self.warmup)
    }

    /// Checks the values detection cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alarm_surprisal.is_finite() && self.alarm_surprisal > 0.0) {
            return Err(format!(
                "detect.alarm_surprisal is {}: it must be a positive number (6 = one false alarm in a million buckets)",
                self.alarm_surprisal
            ));
        }
        if !self.band_every_secs.is_multiple_of(self.bucket_secs.max(1)) {
            return Err(format!(
                "detect.band_every_secs is {}: it must be 0 (no bands) or a multiple of detect.bucket_secs ({})",
                self.band_every_secs, self.bucket_secs
            ));
        }
        self.stream.validate()
    }
}

/// Where a series stands in an alarm: how many buckets in a row were over the threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRun(u32);

impl AlarmRun {
    /// Whether the last bucket was over the threshold.
    pub fn active(&self) -> bool {
        self.0 > 0
    }

    /// Whether the bucket the ensemble scored `s` (after `observations` buckets of its
    /// series) raises an alarm: its gated score reaches the threshold (an onset, or a
    /// bucket far beyond it), or it is over the threshold and a run of such buckets has
    /// gone on for another `repeat_every`.
    pub fn step(&mut self, cfg: &DetectConfig, observations: u64, s: &crate::StreamScore) -> bool {
        let over = cfg.warm(observations) && s.surprisal >= cfg.alarm_surprisal;
        self.0 = if over { self.0.saturating_add(1) } else { 0 };
        over && (cfg.gated_score(observations, s.score) * 300.0 >= cfg.alarm_surprisal
            || (self.0 - 1).is_multiple_of(cfg.repeat_every.max(1)))
    }
}

/// The score of one observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub observed: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    /// Robust z-score of the residual.
    pub z: f64,
    /// 0..1; 0.5 at the z threshold.
    pub score: f64,
    /// Whether the seasonal profile (rather than the plain level) gave the expectation.
    pub seasonal: bool,
    /// Set when this observation should be reported as an anomaly.
    pub emit: Option<AnomalyKind>,
}

/// Baseline and residual statistics of one series: about 1.2 KiB with 288 slots.
///
/// Two baselines are scored side by side, each with its own robust scale:
/// - the *level*, a fast EWMA, catches sudden deviations (spikes, drops, bursts);
/// - the *seasonal profile*, learned only from earlier cycles, compares every observation
///   with the same time on previous days, so slow drifts that the level would follow
///   (a memory leak) still stand out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesModel {
    n: u32,
    first_ts: i64,
    level: f64,
    flat_mad: f64,
    /// EWMA of each slot's mean over previous cycles; NaN until a cycle has filled it.
    #[serde(with = "nan_as_null")]
    profile: Vec<f32>,
    /// The slot being accumulated; it is learned only once it is complete, so the
    /// profile never contains the current cycle's values.
    slot_cur: u32,
    slot_sum: f64,
    slot_cnt: u32,
    seas_mad: f64,
    seas_n: u32,
    /// EWMA of the signed seasonal z-score. A drift pushes it away from zero while a mere
    /// change of noise level does not, so the scale is frozen only for drifts.
    seas_bias: f64,
    flat_run: u32,
    seas_run: u32,
    run: u32,
}

const LEVEL_ALPHA: f64 = 0.05;
const FLAT_MAD_ALPHA: f64 = 0.02;
const SEAS_MAD_ALPHA: f64 = 0.01;
const PROFILE_ALPHA: f32 = 0.3;
/// E|X| = sqrt(2/pi)·σ for a normal X: the factor from mean absolute deviation to σ.
const MAD_TO_SIGMA: f64 = 1.253_314;
/// Residuals beyond this many σ are left out of the scale estimates, so outliers and
/// sustained drifts cannot inflate the scale that is supposed to reveal them.
const SCALE_CLIP: f64 = 3.0;
const BIAS_ALPHA: f64 = 0.05;
/// Mean seasonal z beyond which the residuals are taken to drift (stationary noise keeps
/// the EWMA within about ±0.5).
const MAX_BIAS: f64 = 1.0;
/// Values are learned clipped to the band at this many σ.
const LEARN_CLIP: f64 = 4.0;

impl SeriesModel {
    pub fn new(cfg: &DetectConfig) -> Self {
        SeriesModel {
            n: 0,
            first_ts: 0,
            level: 0.0,
            flat_mad: 0.0,
            profile: vec![f32::NAN; cfg.season_slots.max(1) as usize],
            slot_cur: u32::MAX,
            slot_sum: 0.0,
            slot_cnt: 0,
            seas_mad: 0.0,
            seas_n: 0,
            seas_bias: 0.0,
            flat_run: 0,
            seas_run: 0,
            run: 0,
        }
    }

    fn slot(&self, cfg: &DetectConfig, ts_ms: i64) -> u32 {
        let season_ms = (cfg.season_secs.max(1) * 1000) as i64;
        let pos = ts_ms.rem_euclid(season_ms);
        ((pos as i128 * self.profile.len() as i128) / season_ms as i128) as u32
    }

    fn scale(mad: f64, expected: f64, cfg: &DetectConfig) -> f64 {
        (mad * MAD_TO_SIGMA)
            .max(cfg.min_relative_scale * expected.abs())
            .max(1e-12)
    }

    /// Scores `value` at `ts_ms` against what was learned before it, then learns from it.
    pub fn update(&mut self, cfg: &DetectConfig, ts_ms: i64, value: f64) -> Scored {
        if self.n == 0 {
            self.first_ts = ts_ms;
            self.level = value;
        }
        let slot = self.slot(cfg, ts_ms);
        if slot != self.slot_cur {
            self.close_slot();
            self.slot_cur = slot;
        }
        let warm = self.n >= cfg.warmup;

        let e_f = self.level;
        let s_f = Self::scale(self.flat_mad, e_f, cfg);
        let z_f = (value - e_f) / s_f;

        let prof = self.profile[slot as usize];
        let cycle_seen = ts_ms - self.first_ts >= (cfg.season_secs * 1000) as i64;
        let has_profile = cycle_seen && !prof.is_nan();
        let e_s = f64::from(prof);
        let s_s = Self::scale(self.seas_mad, e_s, cfg);
        let z_s = if has_profile {
            (value - e_s) / s_s
        } else {
            0.0
        };
        // The seasonal test speaks only once its own scale has been learned.
        let seasonal_ok = has_profile && self.seas_n >= cfg.warmup.min(60);

        let flat_hit = warm && z_f.abs() >= cfg.z_threshold;
        let seas_hit = warm && seasonal_ok && z_s.abs() >= cfg.z_threshold;
        self.flat_run = if flat_hit { self.flat_run + 1 } else { 0 };
        self.seas_run = if seas_hit { self.seas_run + 1 } else { 0 };
        self.run = if flat_hit || seas_hit {
            self.run + 1
        } else {
            0
        };

        // Report the baseline that decided; when neither fired, the one that fits better.
        let use_seasonal = seasonal_ok && (self.seas_mad <= self.flat_mad || seas_hit && !flat_hit);
        let (expected, scale, z) = if use_seasonal {
            (e_s, s_s, z_s)
        } else {
            (e_f, s_f, z_f)
        };
        let score = logistic(z.abs() - cfg.z_threshold);

        let mut emit = None;
        if self.flat_run >= cfg.level_shift_after || self.seas_run >= cfg.level_shift_after {
            emit = Some(AnomalyKind::LevelShift);
        } else if self.run > 0 && (self.run - 1).is_multiple_of(cfg.repeat_every.max(1)) {
            // A deviation only the seasonal comparison sees is a slow drift.
            emit = Some(if flat_hit {
                AnomalyKind::Point
            } else {
                AnomalyKind::Trend
            });
        }

        if emit == Some(AnomalyKind::LevelShift) {
            // Re-baseline both views on the new level instead of alarming forever.
            self.level = value;
            if has_profile {
                let shift = (value - e_s) as f32;
                for p in self.profile.iter_mut().filter(|p| !p.is_nan()) {
                    *p += shift;
                }
            }
            self.flat_run = 0;
            self.seas_run = 0;
            self.run = 0;
        } else {
            let learn_f = if warm {
                value.clamp(e_f - LEARN_CLIP * s_f, e_f + LEARN_CLIP * s_f)
            } else {
                value
            };
            let r = (value - e_f).abs();
            if self.n > 0 && (!warm || r <= SCALE_CLIP * s_f) {
                self.flat_mad = ema(self.flat_mad, r, FLAT_MAD_ALPHA, self.n);
            }
            self.level += LEVEL_ALPHA.max(1.0 / f64::from(self.n + 1)) * (learn_f - self.level);
            let learn_s = if seasonal_ok {
                value.clamp(e_s - LEARN_CLIP * s_s, e_s + LEARN_CLIP * s_s)
            } else {
                value
            };
            let r = (value - e_s).abs();
            if has_profile {
                self.seas_bias +=
                    BIAS_ALPHA * (z_s.clamp(-SCALE_CLIP, SCALE_CLIP) - self.seas_bias);
            }
            let drifting = seasonal_ok && self.seas_bias.abs() > MAX_BIAS;
            if has_profile && (!seasonal_ok || r <= SCALE_CLIP * s_s && !drifting) {
                self.seas_mad = ema(self.seas_mad, r, SEAS_MAD_ALPHA, self.seas_n);
                self.seas_n = self.seas_n.saturating_add(1);
            }
            self.slot_sum += learn_s;
            self.slot_cnt += 1;
        }
        self.n = self.n.saturating_add(1);
        let band = cfg.z_threshold * scale;
        Scored {
            observed: value,
            expected,
            lower: expected - band,
            upper: expected + band,
            z,
            score,
            seasonal: use_seasonal,
            emit,
        }
    }

    fn close_slot(&mut self) {
        if self.slot_cnt == 0 || self.slot_cur == u32::MAX {
            return;
        }
        let mean = (self.slot_sum / f64::from(self.slot_cnt)) as f32;
        let p = &mut self.profile[self.slot_cur as usize];
        *p = if p.is_nan() {
            mean
        } else {
            *p + PROFILE_ALPHA * (mean - *p)
        };
        self.slot_sum = 0.0;
        self.slot_cnt = 0;
    }
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-1.5 * x).exp())
}

/// Exponential moving average that starts as a plain mean, so early values are not
/// dominated by the first observation.
fn ema(prev: f64, x: f64, alpha: f64, n: u32) -> f64 {
    let a = alpha.max(1.0 / f64::from(n + 1));
    prev + a * (x - prev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    fn noise(rng: &mut SmallRng) -> f64 {
        // Sum of uniforms: close enough to normal for these tests.
        (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0
    }

    #[test]
    fn seasonal_series_learns_its_cycle_and_flags_a_spike() {
        let cfg = DetectConfig::default();
        let mut m = SeriesModel::new(&cfg);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut flagged = Vec::new();
        let day = 1440;
        for i in 0..3 * day {
            let phase = (i % day) as f64 / day as f64 * std::f64::consts::TAU;
            let mut v = 100.0 + 50.0 * phase.sin() + noise(&mut rng);
            if i == 2 * day + 600 {
                v += 40.0;
            }
            let s = m.update(&cfg, i as i64 * 60_000, v);
            if s.emit.is_some() {
                flagged.push(i);
            }
            if i > 2 * day && i != 2 * day + 600 {
                assert!(s.seasonal, "the profile should win after a full cycle");
            }
        }
        assert_eq!(flagged, vec![2 * day + 600]);
    }

    #[test]
    fn slow_drift_is_caught_by_the_seasonal_comparison() {
        // Flat memory for two days, then a leak of 3% an hour: the fast level follows it,
        // the comparison with previous days does not.
        let cfg = DetectConfig::default();
        let mut m = SeriesModel::new(&cfg);
        let mut rng = SmallRng::seed_from_u64(5);
        let day = 1440;
        let mut first = None;
        for i in 0..3 * day {
            let leak = if i > 2 * day {
                (i - 2 * day) as f64 / 60.0 * 0.03
            } else {
                0.0
            };
            let v = 1000.0 * (1.0 + leak) + 5.0 * noise(&mut rng);
            if let Some(k) = m.update(&cfg, i as i64 * 60_000, v).emit {
                first.get_or_insert((i, k));
            }
        }
        let (at, kind) = first.expect("the leak is caught");
        assert_eq!(kind, AnomalyKind::Trend);
        assert!(
            at > 2 * day && at < 2 * day + 180,
            "caught after {} min",
            at - 2 * day
        );
    }

    #[test]
    fn level_shift_is_reported_once_then_rebaselined() {
        let cfg = DetectConfig::default();
        let mut m = SeriesModel::new(&cfg);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut kinds = Vec::new();
        for i in 0..2000 {
            let v = if i < 1000 { 10.0 } else { 30.0 } + noise(&mut rng) * 0.5;
            if let Some(k) = m.update(&cfg, i * 60_000, v).emit {
                kinds.push((i, k));
            }
        }
        assert_eq!(kinds.first(), Some(&(1000, AnomalyKind::Point)));
        let shifts: Vec<_> = kinds
            .iter()
            .filter(|(_, k)| *k == AnomalyKind::LevelShift)
            .collect();
        assert_eq!(shifts.len(), 1, "{kinds:?}");
        assert!(
            kinds.last().unwrap().0 < 1000 + 2 * i64::from(cfg.level_shift_after),
            "{kinds:?}"
        );
    }

    #[test]
    fn scores_are_causal() {
        // Scoring a prefix gives the same scores as the prefix of a longer run.
        let cfg = DetectConfig::default();
        let mut rng = SmallRng::seed_from_u64(11);
        let data: Vec<f64> = (0..3000).map(|_| 5.0 + noise(&mut rng)).collect();
        let run = |n: usize| {
            let mut m = SeriesModel::new(&cfg);
            data[..n]
                .iter()
                .enumerate()
                .map(|(i, v)| m.update(&cfg, i as i64 * 60_000, *v).score)
                .collect::<Vec<_>>()
        };
        let full = run(3000);
        assert_eq!(run(1234), full[..1234]);
    }
}

/// JSON has no NaN: checkpoints write unfilled profile slots as null.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| (!x.is_nan()).then_some(*x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let v: Vec<Option<f32>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f32::NAN)).collect())
    }
}
