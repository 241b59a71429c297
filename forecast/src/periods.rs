//! Automatic seasonal periods: the calendar cycles of the sampling step that the history shows.

use crate::models::{centred_average, seasonal_test};

/// The calendar cycles (a day, a week) at a sampling step of `step_secs`, in steps; those
/// shorter than two steps or not whole are left out.
pub fn calendar_candidates(step_secs: u64) -> Vec<usize> {
    [86_400u64, 7 * 86_400]
        .into_iter()
        .filter(|c| step_secs > 0 && c % step_secs == 0 && c / step_secs >= 2)
        .map(|c| (c / step_secs) as usize)
        .collect()
}

/// `y` minus its centred moving average over `p` values (the 2×p average for even `p`),
/// where the window fits: what is left of a cycle of length `p` once the trend is gone.
fn detrended(y: &[f64], p: usize) -> Vec<f64> {
    let half = p / 2;
    if y.len() <= 2 * half + 1 {
        return Vec::new();
    }
    (half..y.len() - half)
        .map(|t| y[t] - centred_average(y, p, t))
        .collect()
}

/// The candidates (ascending) the history `y` shows. The shortest must pass the M4
/// seasonality test on the series less its moving average over the period (a steady
/// trend alone makes every lag look correlated, and the test's bound grows with that
/// correlation until it hides the cycle); each longer one on the series differenced at
/// the last period kept, so a week is kept only when it adds something a day does not
/// (every daily cycle also repeats weekly).
pub fn find_periods(y: &[f64], candidates: &[usize]) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    let mut cands = candidates.to_vec();
    cands.sort_unstable();
    for p in cands {
        let ok = match kept.last() {
            None => seasonal_test(&detrended(y, p), p),
            Some(&q) if p % q == 0 => {
                let d: Vec<f64> = (q..y.len()).map(|i| y[i] - y[i - q]).collect();
                seasonal_test(&d, p)
            }
            Some(_) => seasonal_test(&detrended(y, p), p),
        };
        if ok {
            kept.push(p);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize, weekly: f64, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (s >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
                let day = (i as f64 * std::f64::consts::TAU / 24.0).sin() * 10.0;
                let week = if (i / 24) % 7 >= 5 { -weekly } else { 0.0 };
                100.0 + day + week + noise
            })
            .collect()
    }

    #[test]
    fn a_cycle_on_a_steep_trend_is_found() {
        let y: Vec<f64> = (0..190)
            .map(|t| 40.0 + 0.25 * t as f64 + 2.0 * (t as f64 * std::f64::consts::TAU / 24.0).sin())
            .collect();
        assert_eq!(find_periods(&y, &[24, 168]), vec![24]);
        let ramp: Vec<f64> = (0..190).map(|t| 0.25 * t as f64).collect();
        assert_eq!(find_periods(&ramp, &[24, 168]), Vec::<usize>::new());
    }

    #[test]
    fn hourly_steps_have_a_day_and_a_week() {
        assert_eq!(calendar_candidates(3600), vec![24, 168]);
        assert_eq!(calendar_candidates(600), vec![144, 1008]);
        assert_eq!(calendar_candidates(7 * 86_400), Vec::<usize>::new());
    }

    #[test]
    fn a_week_is_kept_only_when_weekends_differ() {
        assert_eq!(
            find_periods(&series(24 * 35, 8.0, 1), &[24, 168]),
            vec![24, 168]
        );
        assert_eq!(find_periods(&series(24 * 35, 0.0, 2), &[24, 168]), vec![24]);
    }
}
