//! `seismo forecast FILE.csv`: forecasts a `timestamp,value` file with the forecast stage's models.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use chrono::{SecondsFormat, TimeZone, Utc};
use seismo_forecast::ForecastConfig;
use seismo_forecast::periods::{calendar_candidates, find_periods};
use seismo_forecast::select::{predict, regular_tail};

/// The longest horizon, in steps (the stage's limit too).
const MAX_HORIZON: usize = 10_000;

/// A horizon as a number of steps of `step_ms`, from `48` (steps) or a duration (`90m`,
/// `48h`, `2d`, `30s`).
pub fn parse_horizon(s: &str, step_ms: i64) -> anyhow::Result<usize> {
    let s = s.trim();
    if let Ok(n) = s.parse::<usize>() {
        ensure!(n > 0, "--horizon must be at least one step");
        ensure!(
            n <= MAX_HORIZON,
            "--horizon {n} steps; at most {MAX_HORIZON}"
        );
        return Ok(n);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--horizon {s:?}: expected steps or a duration like 48h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--horizon {s:?}: unit must be s, m, h or d"),
    };
    let steps = n
        .checked_mul(secs * 1000)
        .map(|ms| ms / step_ms.max(1))
        .with_context(|| format!("--horizon {s:?} is too long"))?;
    ensure!(steps > 0, "--horizon {s:?} is shorter than one step");
    ensure!(
        steps <= MAX_HORIZON as i64,
        "--horizon {s:?} is {steps} steps; at most {MAX_HORIZON}"
    );
    Ok(steps as usize)
}

/// Reads, forecasts and writes; see the command's help.
pub fn run(
    cfg: &ForecastConfig,
    file: &Path,
    horizon: &str,
    level: f64,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    ensure!(
        (0.5..=0.995).contains(&level),
        "--level must be between 0.5 and 0.995"
    );
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    let s = crate::eval::series::read_series(&text, &name)?;
    ensure!(s.values.len() >= 3, "{name}: need at least 3 rows");
    let mut pts: Vec<(i64, f64)> = s
        .ts_ms
        .iter()
        .copied()
        .zip(s.values.iter().copied())
        .collect();
    pts.sort_by_key(|p| p.0);
    if let Some(p) = pts.iter().find(|p| !p.1.is_finite()) {
        bail!("{name}: value at {} is not finite", p.0);
    }
    // The step is the median spacing; each row goes to the nearest step of the grid from
    // the first row (jittered timestamps still land; two rows in one step keep the
    // later) and missing steps are gaps.
    let mut gaps: Vec<i64> = pts
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|d| *d > 0)
        .collect();
    ensure!(!gaps.is_empty(), "{name}: every row has the same timestamp");
    gaps.sort_unstable();
    let step = gaps[gaps.len() / 2];
    let t0 = pts[0].0;
    let last = pts[pts.len() - 1].0;
    let slots = ((last - t0) / step + 1) as usize;
    ensure!(
        slots <= 50_000_000,
        "{name}: {slots} steps of {step} ms between the first and last row; is the file sorted \
         and evenly spaced?"
    );
    let mut grid = vec![f64::NAN; slots];
    for (t, v) in &pts {
        let slot = ((t - t0 + step / 2) / step) as usize;
        grid[slot.min(slots - 1)] = *v;
    }
    // Daily and weekly cycles are looked for only at whole-second steps.
    let candidates = if step % 1000 == 0 {
        calendar_candidates((step / 1000) as u64)
    } else {
        Vec::new()
    };
    let (start, y) = regular_tail(&grid, (candidates.first().copied().unwrap_or(8) / 8).max(1));
    ensure!(
        y.len() >= 3,
        "{name}: fewer than 3 evenly spaced rows after the last long gap"
    );
    let h = parse_horizon(horizon, step)?;
    let periods = find_periods(&y, &candidates);
    let p = predict(&y, &periods, h, level, &cfg.models);
    let mut out = String::from("timestamp,yhat,lower,upper\n");
    let end = t0 + ((start + y.len()) as i64 - 1) * step;
    for (k, st) in p.steps.iter().enumerate() {
        let t = Utc
            .timestamp_millis_opt(end + (k as i64 + 1) * step)
            .single()
            .context("forecast time out of range")?;
        out.push_str(&format!(
            "{},{},{},{}\n",
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            st.yhat,
            st.lower,
            st.upper
        ));
    }
    eprintln!(
        "{name}: {} steps of {} s, periods {:?}, model {}",
        y.len(),
        step / 1000,
        periods,
        p.model
    );
    match output {
        Some(path) => {
            std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{out}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_parse_as_steps_or_durations() {
        assert_eq!(parse_horizon("48", 3_600_000).unwrap(), 48);
        assert_eq!(parse_horizon("2d", 3_600_000).unwrap(), 48);
        assert_eq!(parse_horizon("90m", 600_000).unwrap(), 9);
        assert!(parse_horizon("1m", 3_600_000).is_err());
        assert!(parse_horizon("3w", 3_600_000).is_err());
        assert!(parse_horizon("0", 3_600_000).is_err());
        assert!(parse_horizon("10001", 3_600_000).is_err());
        assert!(parse_horizon("9223372036854775807d", 1).is_err());
        assert!(parse_horizon("100000d", 60_000).is_err());
    }
}
