//! The `seismo detect` and `seismo forecast` commands on generated files: detect gives one causal score per row with its parts; forecast continues a series with intervals.

use std::process::Command;

fn detect(path: &std::path::Path) -> Vec<Vec<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .arg("detect")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn series_csv(rows: usize) -> String {
    // A seeded daily cycle with noise and a spike; xorshift keeps it dependency-free.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut out = String::from("timestamp,value\n");
    for i in 0..rows {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 1000) as f64 / 1000.0;
        let spike = if i == rows - 50 { 40.0 } else { 0.0 };
        let v = 50.0 + 10.0 * (i as f64 / 288.0 * std::f64::consts::TAU).sin() + noise + spike;
        let t = chrono::DateTime::from_timestamp(1_400_000_000 + i as i64 * 300, 0).unwrap();
        out.push_str(&format!("{},{v}\n", t.format("%Y-%m-%d %H:%M:%S")));
    }
    out
}

#[test]
fn scores_are_one_per_row_bounded_and_causal() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.csv");
    let text = series_csv(2000);
    std::fs::write(&full, &text).unwrap();
    let k = 1234;
    let cut = dir.path().join("cut.csv");
    std::fs::write(
        &cut,
        text.lines().take(k + 1).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();

    let a = detect(&full);
    // The score, then the surprisal it came from and each detector's part of it.
    assert_eq!(
        a[0],
        [
            "timestamp",
            "value",
            "anomaly_score",
            "surprisal",
            "global",
            "novelty",
            "time_of_day",
            "burst",
            "seasonal"
        ]
    );
    assert_eq!(a.len(), 2001);
    let scores: Vec<f64> = a[1..].iter().map(|r| r[2].parse().unwrap()).collect();
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    // The spike is the most anomalous row.
    let top = scores
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .unwrap()
        .0;
    assert_eq!(top, 2000 - 50);
    // Truncating the input after row k changes none of the first k scores.
    let b = detect(&cut);
    assert_eq!(b.len(), k + 1);
    assert_eq!(a[..=k], b[..]);
}

#[test]
fn multi_column_files_are_scored_by_an_isolation_forest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.csv");
    let mut text = String::from("f0,f1,label\n");
    for i in 0..500 {
        let (x, y) = ((i % 17) as f64 / 17.0, (i % 23) as f64 / 23.0);
        text.push_str(&format!("{x},{y},0\n"));
    }
    text.push_str("9,9,1\n");
    std::fs::write(&path, text).unwrap();
    let rows = detect(&path);
    assert_eq!(rows[0], ["f0", "f1", "label", "anomaly_score"]);
    assert_eq!(rows.len(), 502);
    let scores: Vec<f64> = rows[1..].iter().map(|r| r[3].parse().unwrap()).collect();
    let top = scores
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .unwrap()
        .0;
    assert_eq!(top, 500);
}

/// `seismo forecast`: an hourly daily cycle with a gap it must bridge, continued for the
/// asked horizon on the series' own grid, with intervals around the truth.
#[test]
fn forecast_continues_an_hourly_cycle_with_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hourly.csv");
    let truth = |h: i64| 100.0 + 20.0 * (h as f64 / 24.0 * std::f64::consts::TAU).sin();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut csv = String::from("timestamp,value\n");
    for h in 0..24 * 21 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Two missing hours (a short gap), bridged rather than cutting the history.
        if h == 300 || h == 301 {
            continue;
        }
        let t = chrono::DateTime::from_timestamp(1_767_225_600 + h * 3600, 0).unwrap();
        csv.push_str(&format!(
            "{},{}\n",
            t.to_rfc3339(),
            truth(h) + (state % 100) as f64 / 100.0
        ));
    }
    std::fs::write(&path, csv).unwrap();
    let out_path = dir.path().join("fc.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .args(["forecast", path.to_str().unwrap(), "--horizon", "2d", "-o"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,yhat,lower,upper"));
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 48);
    for (k, r) in rows.iter().enumerate() {
        let h = 24 * 21 + k as i64;
        let t = chrono::DateTime::from_timestamp(1_767_225_600 + h * 3600, 0).unwrap();
        assert_eq!(chrono::DateTime::parse_from_rfc3339(&r[0]).unwrap(), t);
        let v: Vec<f64> = r[1..].iter().map(|x| x.parse().unwrap()).collect();
        assert!(v[1] <= v[0] && v[0] <= v[2], "{r:?}");
        assert!((v[0] - truth(h) - 0.5).abs() < 2.0, "hour {h}: {r:?}");
    }
    // Bad input is refused with the reason.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "time,v\n1,2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .args(["forecast", bad.to_str().unwrap(), "--horizon", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timestamp,value"));
    let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .args(["forecast", path.to_str().unwrap(), "--horizon", "3w"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit"));
}
