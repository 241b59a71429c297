//! Model choice by a rolling-origin backtest on the series' own history, and intervals from that backtest's errors.
//!
//! For each candidate model the history is cut at a few origins before its end; the model
//! forecasts the horizon from each cut and its absolute errors are averaged. The forecast
//! is the mean of the `combine` models with the lowest backtest error, refitted on the
//! whole history. The interval comes from the same errors: their mean size per step ahead
//! is smoothed into a growth curve `a·(1+j)^b`, and the half-width is the split-conformal
//! quantile of the errors divided by that curve, times the curve. No normality is assumed,
//! and the intervals widen only as fast as this series' errors did.

use serde::{Deserialize, Serialize};

use crate::models::Model;

/// How a series is forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Candidate models (names as in the `model` column).
    pub models: Vec<Model>,
    /// Backtest origins: the history is cut this many times.
    pub origins: usize,
    /// Steps between consecutive origins (0: half the horizon).
    pub origin_stride: usize,
    /// The forecast is the mean of this many best models.
    pub combine: usize,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            models: vec![
                Model::SeasonalNaive,
                Model::SeasonalNaiveLong,
                Model::Damped,
                Model::Theta,
                Model::Mstl,
                Model::MstlLog,
            ],
            origins: 4,
            origin_stride: 0,
            combine: 2,
        }
    }
}

/// One forecast step: point forecast and interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub yhat: f64,
    pub lower: f64,
    pub upper: f64,
}

/// A series' forecast and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub steps: Vec<Step>,
    /// The models combined, best first, joined by '+'.
    pub model: String,
    /// Mean absolute backtest error of the forecast (NaN when no origin fitted).
    pub backtest_mae: f64,
}

/// Forecasts `h` steps after `y` (no gaps) with the periods in use, at interval coverage
/// `level`.
pub fn predict(
    y: &[f64],
    periods: &[usize],
    h: usize,
    level: f64,
    s: &ModelSettings,
) -> Prediction {
    let n = y.len();
    let stride = if s.origin_stride > 0 {
        s.origin_stride
    } else {
        h.div_ceil(2).max(1)
    };
    let usable: Vec<Model> = s
        .models
        .iter()
        .copied()
        .filter(|m| n >= m.min_len(periods).saturating_add(1))
        .collect();
    let usable = if usable.is_empty() {
        vec![Model::Ses]
    } else {
        usable
    };
    // errors[m][k] = the per-step errors of model m at origin k (truth − forecast).
    let mut errors: Vec<Vec<Vec<f64>>> = vec![Vec::new(); usable.len()];
    let mut cuts = Vec::new();
    for k in 0..s.origins {
        let Some(cut) = n.checked_sub(h + k * stride) else {
            break;
        };
        let ok = usable.iter().all(|m| cut >= m.min_len(periods).max(4));
        if !ok {
            break;
        }
        cuts.push(cut);
    }
    for (mi, m) in usable.iter().enumerate() {
        for &cut in &cuts {
            let f = m
                .forecast(&y[..cut], periods, h)
                .unwrap_or_else(|| vec![y[cut - 1]; h]);
            errors[mi].push((0..h).map(|j| y[cut + j] - f[j]).collect());
        }
    }
    let chosen = choose(&errors, None, s.combine);
    // The interval's errors are those of the choice itself, not of the chosen models: at
    // each origin, the models the other origins would have chosen, scored there. The
    // chosen models' own backtest errors are the smallest by construction, and intervals
    // built on them came out too narrow.
    let honest: Vec<Vec<f64>> = if cuts.len() >= 2 {
        (0..cuts.len())
            .map(|k| mean_errors(&errors, &choose(&errors, Some(k), s.combine))[k].clone())
            .collect()
    } else {
        mean_errors(&errors, &chosen)
    };
    let mut point = vec![0.0; h];
    let mut names = Vec::new();
    for mi in &chosen {
        // The backtest scored a model that could not forecast from a cut as the naive
        // forecast; the final forecast does the same, so what is published is what was
        // scored.
        let (f, name) = match usable[*mi].forecast(y, periods, h) {
            Some(f) => (f, usable[*mi].name()),
            None => (vec![y[n - 1]; h], "naive"),
        };
        point.iter_mut().zip(&f).for_each(|(p, v)| *p += v);
        names.push(name);
    }
    point.iter_mut().for_each(|p| *p /= chosen.len() as f64);
    let half = if cuts.is_empty() {
        fallback_widths(y, h, level)
    } else {
        conformal_widths(&honest, h, level)
    };
    Prediction {
        steps: point
            .into_iter()
            .zip(half)
            .map(|(yhat, w)| Step {
                yhat,
                lower: yhat - w,
                upper: yhat + w,
            })
            .collect(),
        model: names.join("+"),
        backtest_mae: mae(&mean_errors(&errors, &chosen), None),
    }
}

/// Mean absolute error over the origins, leaving out origin `skip`.
fn mae(e: &[Vec<f64>], skip: Option<usize>) -> f64 {
    let (s, c) = e
        .iter()
        .enumerate()
        .filter(|(k, _)| Some(*k) != skip)
        .flat_map(|(_, r)| r)
        .fold((0.0, 0usize), |(s, c), v| (s + v.abs(), c + 1));
    if c == 0 { f64::NAN } else { s / c as f64 }
}

/// Errors per origin and step of the mean forecast of the models `set`.
fn mean_errors(errors: &[Vec<Vec<f64>>], set: &[usize]) -> Vec<Vec<f64>> {
    let origins = errors.first().map_or(0, Vec::len);
    (0..origins)
        .map(|k| {
            let h = errors[set[0]][k].len();
            (0..h)
                .map(|j| set.iter().map(|mi| errors[*mi][k][j]).sum::<f64>() / set.len() as f64)
                .collect()
        })
        .collect()
}

/// The models to combine, by backtest error over the origins (leaving out `skip`): each
/// model alone, and the mean of every set of up to `combine` of the best `combine + 1`
/// models, so a series whose best model is clearly best keeps it alone.
fn choose(errors: &[Vec<Vec<f64>>], skip: Option<usize>, combine: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..errors.len()).collect();
    order.sort_by(|a, b| mae(&errors[*a], skip).total_cmp(&mae(&errors[*b], skip)));
    let pool: Vec<usize> = order.iter().copied().take(combine.max(1) + 1).collect();
    let mut chosen = vec![order[0]];
    let mut best = mae(&errors[order[0]], skip);
    for mask in 1u32..(1 << pool.len()) {
        let set: Vec<usize> = (0..pool.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| pool[i])
            .collect();
        if set.len() < 2 || set.len() > combine {
            continue;
        }
        let m = mae(&mean_errors(errors, &set), skip);
        if m < best {
            best = m;
            chosen = set;
        }
    }
    chosen
}

/// Half-widths from backtest errors `e[origin][step]`: a growth curve fitted to the mean
/// absolute error per step, scaled by the conformal quantile of the normalised errors.
pub fn conformal_widths(e: &[Vec<f64>], h: usize, level: f64) -> Vec<f64> {
    let k = e.len() as f64;
    let mean_abs: Vec<f64> = (0..h)
        .map(|j| e.iter().map(|r| r[j].abs()).sum::<f64>() / k)
        .collect();
    // Least squares of log(mean |e|) on log(1 + j), the floor keeping a perfect step from
    // pulling the curve to zero.
    let floor = mean_abs.iter().sum::<f64>() / h as f64 * 1e-3 + 1e-12;
    let pts: Vec<(f64, f64)> = mean_abs
        .iter()
        .enumerate()
        .map(|(j, m)| (((1 + j) as f64).ln(), m.max(floor).ln()))
        .collect();
    let xb = pts.iter().map(|p| p.0).sum::<f64>() / h as f64;
    let yb = pts.iter().map(|p| p.1).sum::<f64>() / h as f64;
    let sxx: f64 = pts.iter().map(|p| (p.0 - xb).powi(2)).sum();
    let b = if sxx > 0.0 {
        (pts.iter().map(|p| (p.0 - xb) * (p.1 - yb)).sum::<f64>() / sxx).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let a = (yb - b * xb).exp();
    let curve: Vec<f64> = (0..h).map(|j| a * ((1 + j) as f64).powf(b)).collect();
    let mut z: Vec<f64> = e
        .iter()
        .flat_map(|r| r.iter().zip(&curve).map(|(v, c)| v.abs() / c))
        .collect();
    z.sort_by(f64::total_cmp);
    // Split-conformal rank: the ⌈(n+1)·level⌉-th smallest.
    let n = z.len();
    let rank = (((n + 1) as f64 * level).ceil() as usize).clamp(1, n);
    let q = z[rank - 1];
    curve.into_iter().map(|c| q * c).collect()
}

/// The usable end of a history with gaps (NaN): the values after the last gap longer than
/// `max_gap` steps, shorter gaps filled by linear interpolation. Returns the index where
/// the tail starts and the tail. A model needs regular steps, but a long gap is not filled:
/// invented values would be learned as if seen.
pub fn regular_tail(values: &[f64], max_gap: usize) -> (usize, Vec<f64>) {
    let Some(end) = values.iter().rposition(|v| v.is_finite()) else {
        return (values.len(), Vec::new());
    };
    let mut start = end;
    let mut run = 0;
    for i in (0..end).rev() {
        if values[i].is_finite() {
            if run > max_gap {
                break;
            }
            start = i;
            run = 0;
        } else {
            run += 1;
        }
    }
    let mut out = values[start..=end].to_vec();
    let mut prev = 0;
    for i in 1..out.len() {
        if out[i].is_finite() {
            let (a, b) = (out[prev], out[i]);
            let span = (i - prev) as f64;
            for (k, v) in out[prev + 1..i].iter_mut().enumerate() {
                *v = a + (b - a) * (k + 1) as f64 / span;
            }
            prev = i;
        }
    }
    (start, out)
}

/// Half-widths when the history is too short to backtest: the spread of one-step changes,
/// growing with the square root of the steps ahead.
fn fallback_widths(y: &[f64], h: usize, level: f64) -> Vec<f64> {
    let mut d: Vec<f64> = y.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    if d.is_empty() {
        return vec![0.0; h];
    }
    d.sort_by(f64::total_cmp);
    let q = d[((d.len() as f64 * level) as usize).min(d.len() - 1)];
    (0..h).map(|j| q * ((1 + j) as f64).sqrt()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformal_widths_cover_the_backtest_errors_at_the_level() {
        // Errors growing linearly with the step, from three origins.
        let e: Vec<Vec<f64>> = (0..3)
            .map(|k| {
                (0..48)
                    .map(|j| (1.0 + j as f64) * if (j + k) % 2 == 0 { 1.0 } else { -0.5 })
                    .collect()
            })
            .collect();
        let w = conformal_widths(&e, 48, 0.9);
        let covered = e
            .iter()
            .flat_map(|r| r.iter().zip(&w).map(|(v, w)| v.abs() <= *w + 1e-9))
            .filter(|c| *c)
            .count();
        assert!(covered as f64 / 144.0 >= 0.9, "{covered}");
        assert!(w[47] > 10.0 * w[0], "{w:?}");
    }

    #[test]
    fn a_clean_cycle_is_forecast_by_a_seasonal_model_with_narrow_intervals() {
        let y: Vec<f64> = (0..24 * 20)
            .map(|i| 50.0 + 10.0 * ((i % 24) as f64 / 4.0).sin())
            .collect();
        let p = predict(&y, &[24], 48, 0.95, &ModelSettings::default());
        assert_eq!(p.steps.len(), 48);
        for (j, s) in p.steps.iter().enumerate() {
            let truth = 50.0 + 10.0 * (((24 * 20 + j) % 24) as f64 / 4.0).sin();
            assert!(
                (s.yhat - truth).abs() < 0.5,
                "{j}: {s:?} vs {truth} ({})",
                p.model
            );
            assert!(s.lower <= s.yhat && s.yhat <= s.upper);
        }
    }

    #[test]
    fn short_gaps_are_bridged_and_a_long_one_cuts_the_history() {
        let nan = f64::NAN;
        let v = [1.0, nan, nan, nan, 5.0, 6.0, nan, 8.0, nan];
        assert_eq!(regular_tail(&v, 1), (4, vec![5.0, 6.0, 7.0, 8.0]));
        assert_eq!(
            regular_tail(&v, 3),
            (0, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        );
        assert_eq!(regular_tail(&[nan, nan], 3).1, Vec::<f64>::new());
    }

    #[test]
    fn a_short_history_still_gets_a_forecast() {
        let p = predict(
            &[1.0, 2.0, 3.0, 2.0, 1.0],
            &[24],
            6,
            0.9,
            &ModelSettings::default(),
        );
        assert_eq!(p.steps.len(), 6);
        assert!(p.steps.iter().all(|s| s.upper > s.lower));
    }
}
