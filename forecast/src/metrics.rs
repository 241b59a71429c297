//! Forecast accuracy as the M4 organisers define it: sMAPE, MASE, MSIS and OWA against Naive2.

/// Symmetric MAPE in percent: mean of 200·|y − f| / (|y| + |f|).
pub fn smape(truth: &[f64], f: &[f64]) -> f64 {
    let s: f64 = truth
        .iter()
        .zip(f)
        .map(|(y, f)| {
            let d = y.abs() + f.abs();
            if d == 0.0 {
                0.0
            } else {
                200.0 * (y - f).abs() / d
            }
        })
        .sum();
    s / truth.len() as f64
}

/// Mean absolute seasonal difference of the history at period `m`: MASE's and MSIS's
/// scale. (`m` falls back to 1 when the history is not longer than a cycle.)
pub fn seasonal_scale(history: &[f64], m: usize) -> f64 {
    let m = if history.len() > m { m } else { 1 };
    let n = history.len().saturating_sub(m).max(1);
    (m..history.len())
        .map(|i| (history[i] - history[i - m]).abs())
        .sum::<f64>()
        / n as f64
}

/// Mean absolute scaled error against the in-sample seasonal naive at period `m`.
pub fn mase(history: &[f64], truth: &[f64], f: &[f64], m: usize) -> f64 {
    let mae = truth.iter().zip(f).map(|(y, f)| (y - f).abs()).sum::<f64>() / truth.len() as f64;
    mae / seasonal_scale(history, m)
}

/// Mean scaled interval score of a (1 − alpha) interval (Gneiting & Raftery; M4's MSIS).
pub fn msis(
    history: &[f64],
    truth: &[f64],
    lower: &[f64],
    upper: &[f64],
    m: usize,
    alpha: f64,
) -> f64 {
    let s: f64 = truth
        .iter()
        .zip(lower.iter().zip(upper))
        .map(|(y, (l, u))| (u - l) + 2.0 / alpha * ((l - y).max(0.0) + (y - u).max(0.0)))
        .sum();
    s / truth.len() as f64 / seasonal_scale(history, m)
}

/// Overall weighted average: the mean of sMAPE and MASE, each relative to Naive2's.
pub fn owa(smape: f64, mase: f64, smape_naive2: f64, mase_naive2: f64) -> f64 {
    0.5 * (smape / smape_naive2 + mase / mase_naive2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let hist = [1.0, 2.0, 3.0, 5.0];
        // Seasonal differences at m = 2: |3−1|, |5−2| → scale 2.5.
        assert!((seasonal_scale(&hist, 2) - 2.5).abs() < 1e-12);
        let truth = [4.0, 6.0];
        let f = [5.0, 6.0];
        assert!((smape(&truth, &f) - 200.0 / 9.0 / 2.0).abs() < 1e-12);
        assert!((mase(&hist, &truth, &f, 2) - 0.5 / 2.5).abs() < 1e-12);
        // [3, 5] holds 4 (width 2) and misses 6 by 1 at alpha 0.05 (width 2 + 40·1).
        let m = msis(&hist, &truth, &[3.0, 3.0], &[5.0, 5.0], 2, 0.05);
        assert!((m - (2.0 + 42.0) / 2.0 / 2.5).abs() < 1e-12, "{m}");
        assert!((owa(9.0, 1.0, 18.0, 2.0) - 0.5).abs() < 1e-12);
    }
}
