//! Scoring a `timestamp,value` file with the streaming detector, row by row.

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDateTime};
use seismo_detect::{DetectConfig, StreamScore, StreamScorer};

/// Parses the timestamp formats files use: `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), RFC 3339,
/// or an epoch integer: seconds below 10^11 (until the year 5138), milliseconds from
/// there (ms below it would be 1970–1973), the rule most tools follow. Read as ms, a
/// file of epoch seconds would put a day into 86 s: no time-of-day profile, no daily
/// season found.
pub fn parse_ts(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(if n.unsigned_abs() < 100_000_000_000 {
            n * 1000
        } else {
            n
        });
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    bail!("{s:?} is not a timestamp (YYYY-MM-DD HH:MM:SS, RFC 3339, or epoch seconds or ms)")
}

/// A univariate series as read from a file.
#[derive(Debug, Clone)]
pub struct Series {
    pub timestamps: Vec<String>,
    pub ts_ms: Vec<i64>,
    pub values: Vec<f64>,
}

/// Reads a `timestamp,value` CSV, keeping every row in file order (duplicates included).
pub fn read_series(text: &str, name: &str) -> anyhow::Result<Series> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty file")?
        .split(',')
        .map(str::trim)
        .collect();
    let (ti, vi) = match (
        header.iter().position(|h| *h == "timestamp"),
        header.iter().position(|h| *h == "value"),
    ) {
        (Some(t), Some(v)) => (t, v),
        _ => bail!("{name}: expected columns timestamp,value, found {header:?}"),
    };
    let mut s = Series {
        timestamps: Vec::new(),
        ts_ms: Vec::new(),
        values: Vec::new(),
    };
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').collect();
        let (Some(t), Some(v)) = (cells.get(ti), cells.get(vi)) else {
            bail!("{name} line {}: expected {} cells", i + 2, header.len());
        };
        s.ts_ms
            .push(parse_ts(t).with_context(|| format!("{name} line {}", i + 2))?);
        s.values.push(
            v.trim()
                .parse()
                .with_context(|| format!("{name} line {}: value {v:?}", i + 2))?,
        );
        s.timestamps.push(t.trim().to_string());
    }
    Ok(s)
}

/// Every observation's full score (each detector's calibrated surprisal), in order; the
/// score is gated by `detect.warmup` as the pipeline gates it.
pub fn score_series_parts(cfg: &DetectConfig, ts_ms: &[i64], values: &[f64]) -> Vec<StreamScore> {
    let scfg = &cfg.stream;
    let mut s = StreamScorer::new(scfg);
    ts_ms
        .iter()
        .zip(values)
        .map(|(t, v)| {
            let mut sc = s.update(scfg, *t, *v);
            sc.score = cfg.gated_score(s.observations(), sc.score);
            sc
        })
        .collect()
}

/// Scores every observation in order with one streaming model, exactly as the pipeline
/// scores a series' buckets (an alarm is a score at or above `alarm_surprisal / 300`):
/// causal by construction, since each score is computed before the model learns from
/// its observation.
pub fn score_series(cfg: &DetectConfig, ts_ms: &[i64], values: &[f64]) -> Vec<f64> {
    score_series_parts(cfg, ts_ms, values)
        .into_iter()
        .map(|s| s.score)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_ts;

    #[test]
    fn every_timestamp_form_reads_as_the_same_instant() {
        let want = 1_767_582_000_000;
        for s in [
            "2026-01-05T03:00:00Z",
            "2026-01-05 03:00:00",
            "2026-01-05T03:00:00.000",
            "1767582000",
            "1767582000000",
        ] {
            assert_eq!(parse_ts(s).unwrap(), want, "{s}");
        }
        assert!(parse_ts("yesterday").is_err());
    }
}
