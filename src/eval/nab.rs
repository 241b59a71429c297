//! `seismo eval nab DIR`: run the streaming detector over a NAB-layout folder and score it
//! the way NAB v1.1 does (sweep, corpus-wide threshold optimisation, normalisation).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use seismo_detect::DetectConfig;
use serde::Serialize;

use super::series::{parse_ts, read_series, score_series};

/// NAB's probationary share of each file.
const PROBATION_PERCENT: f64 = 0.15;

/// One profile's cost matrix.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub tp_weight: f64,
    pub fn_weight: f64,
    pub fp_weight: f64,
}

/// Where a row falls for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Outside,
    Probationary,
    Window(usize),
}

/// One scored file: per row (anomaly score, sweep weight, place).
type Swept = Vec<(f64, f64, Place)>;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn scaled_sigmoid(pos: f64) -> f64 {
    if pos > 3.0 {
        -1.0
    } else {
        2.0 * sigmoid(-5.0 * pos) - 1.0
    }
}

fn probationary_len(rows: usize) -> f64 {
    (PROBATION_PERCENT * rows as f64)
        .floor()
        .min(PROBATION_PERCENT * 5000.0)
}

/// NAB's sweeper: the weight each row would earn if detected. `windows` are (start, end)
/// row indices; window ids are offset by `window_base` so they are unique in the corpus.
fn sweep(scores: &[f64], windows: &[(usize, usize)], window_base: usize, cost: Cost) -> Swept {
    let max_tp = scaled_sigmoid(-1.0);
    let prob = probationary_len(scores.len());
    let mut out = Vec::with_capacity(scores.len());
    let mut next = 0;
    let mut cur: Option<(usize, usize, f64)> = None; // (id, right, width)
    let mut prev: Option<(usize, f64)> = None; // (right, width)
    for (i, &s) in scores.iter().enumerate() {
        if next < windows.len() && i == windows[next].0 {
            let (l, r) = windows[next];
            cur = Some((window_base + next, r, (r - l + 1) as f64));
            next += 1;
        }
        let weight = match cur {
            Some((_, right, width)) => {
                scaled_sigmoid(-((right as f64 - i as f64 + 1.0) / width)) * cost.tp_weight / max_tp
            }
            None => match prev {
                None => -cost.fp_weight,
                Some((right, width)) => {
                    scaled_sigmoid((right as f64 - i as f64).abs() / (width - 1.0)) * cost.fp_weight
                }
            },
        };
        let place = if (i as f64) < prob {
            Place::Probationary
        } else {
            cur.map(|(id, _, _)| Place::Window(id))
                .unwrap_or(Place::Outside)
        };
        out.push((s, weight, place));
        if let Some((_, right, width)) = cur
            && i == right
        {
            prev = Some((right, width));
            cur = None;
        }
    }
    out
}

/// (threshold, score) pairs with thresholds descending: the score when every row scoring
/// at least the threshold is a detection (NAB's calcScoreByThreshold).
fn score_by_threshold<'a>(
    rows: impl Iterator<Item = &'a (f64, f64, Place)>,
    cost: Cost,
) -> Vec<(f64, f64)> {
    let mut scorable: Vec<&(f64, f64, Place)> =
        rows.filter(|r| r.2 != Place::Probationary).collect();
    // Stable, like Python's sorted(reverse=True): equal scores keep their order.
    scorable.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best: BTreeMap<usize, f64> = BTreeMap::new();
    for r in &scorable {
        if let Place::Window(id) = r.2 {
            best.insert(id, -cost.fn_weight);
        }
    }
    let mut total: f64 = best.values().sum();
    let mut fp = 0.0;
    let mut out = Vec::new();
    let mut cur = 1.1;
    for &&(a, s, place) in &scorable {
        if a != cur {
            out.push((cur, total + fp));
            cur = a;
        }
        match place {
            Place::Window(id) => {
                let b = best.get_mut(&id).expect("window seen");
                if s > *b {
                    total += s - *b;
                    *b = s;
                }
            }
            _ => fp += s,
        }
    }
    out.push((cur, total + fp));
    out
}

fn at_threshold(by: &[(f64, f64)], threshold: f64) -> f64 {
    let mut prev = None;
    for &(t, s) in by {
        if t == threshold {
            return s;
        }
        if t < threshold {
            return prev.unwrap_or(s);
        }
        prev = Some(s);
    }
    by.last().map(|r| r.1).unwrap_or(0.0)
}

/// One profile's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileScore {
    pub threshold: f64,
    pub raw: f64,
    pub null: f64,
    pub perfect: f64,
    /// 0 = null detector, 100 = perfect.
    pub normalized: f64,
}

/// A scored corpus file.
#[derive(Debug, Clone)]
pub struct FileScores {
    /// `category/file.csv`
    pub rel: String,
    pub scores: Vec<f64>,
    pub windows: Vec<(usize, usize)>,
}

/// Scores a corpus NAB's way for every profile in `profiles`.
pub fn score_corpus(
    files: &[FileScores],
    profiles: &BTreeMap<String, Cost>,
) -> BTreeMap<String, ProfileScore> {
    let windows_total: usize = files.iter().map(|f| f.windows.len()).sum();
    let mut out = BTreeMap::new();
    for (name, &cost) in profiles {
        let mut base = 0;
        let swept: Vec<Swept> = files
            .iter()
            .map(|f| {
                let s = sweep(&f.scores, &f.windows, base, cost);
                base += f.windows.len();
                s
            })
            .collect();
        let corpus = score_by_threshold(swept.iter().flatten(), cost);
        // The first of the best, as NAB's stable sort picks it: the highest such threshold.
        let threshold = corpus
            .iter()
            .fold((f64::NAN, f64::NEG_INFINITY), |acc, &(t, s)| {
                if s > acc.1 { (t, s) } else { acc }
            })
            .0;
        let raw: f64 = swept
            .iter()
            .map(|s| at_threshold(&score_by_threshold(s.iter(), cost), threshold))
            .sum();
        // The null detector misses every window that has a scorable row.
        let null: f64 = swept
            .iter()
            .map(|s| {
                let ids: std::collections::BTreeSet<usize> = s
                    .iter()
                    .filter_map(|r| {
                        if let Place::Window(id) = r.2 {
                            Some(id)
                        } else {
                            None
                        }
                    })
                    .collect();
                -cost.fn_weight * ids.len() as f64
            })
            .sum();
        let perfect = windows_total as f64 * cost.tp_weight;
        out.insert(
            name.clone(),
            ProfileScore {
                threshold,
                raw,
                null,
                perfect,
                normalized: 100.0 * (raw - null) / (perfect - null),
            },
        );
    }
    out
}

/// The NAB corpus: data files, windows and profiles.
pub struct Corpus {
    pub root: PathBuf,
    pub windows: BTreeMap<String, Vec<(String, String)>>,
    pub profiles: BTreeMap<String, Cost>,
}

impl Corpus {
    pub fn open(root: &Path) -> anyhow::Result<Corpus> {
        let read = |p: &str| {
            std::fs::read_to_string(root.join(p))
                .with_context(|| format!("reading {}", root.join(p).display()))
        };
        let windows: BTreeMap<String, Vec<(String, String)>> =
            serde_json::from_str(&read("labels/combined_windows.json")?)?;
        #[derive(serde::Deserialize)]
        struct Profile {
            #[serde(rename = "CostMatrix")]
            cost: Cost,
        }
        let profiles: BTreeMap<String, Profile> =
            serde_json::from_str(&read("config/profiles.json")?)?;
        Ok(Corpus {
            root: root.to_path_buf(),
            windows,
            profiles: profiles.into_iter().map(|(k, v)| (k, v.cost)).collect(),
        })
    }
}

/// Runs `cfg`'s detector over every corpus file, optionally writing NAB result files under
/// `results/<name>/`, and scores the corpus.
pub fn run(
    corpus: &Corpus,
    cfg: &DetectConfig,
    results: Option<(&Path, &str)>,
) -> anyhow::Result<(Vec<FileScores>, BTreeMap<String, ProfileScore>)> {
    let mut files = Vec::new();
    for (rel, wins) in &corpus.windows {
        let path = corpus.root.join("data").join(rel);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let s = read_series(&text, rel)?;
        let scores = score_series(cfg, &s.ts_ms, &s.values);
        // Window edges name timestamps; NAB takes the first row with each.
        let index = |t: &str| -> anyhow::Result<usize> {
            let ms = parse_ts(t)?;
            s.ts_ms
                .iter()
                .position(|x| *x == ms)
                .with_context(|| format!("{rel}: window edge {t} is not a row"))
        };
        let mut windows = Vec::new();
        for (a, b) in wins {
            windows.push((index(a)?, index(b)?));
        }
        if windows.windows(2).any(|w| w[1].0 <= w[0].1) {
            bail!("{rel}: windows overlap or are out of order");
        }
        if let Some((dir, name)) = results {
            let (cat, file) = rel.split_once('/').context("window key is category/file")?;
            let out_dir = dir.join(name).join(cat);
            std::fs::create_dir_all(&out_dir)?;
            let mut csv = String::from("timestamp,value,anomaly_score,label\n");
            for (i, score) in scores.iter().enumerate() {
                let label = u8::from(windows.iter().any(|(l, r)| (*l..=*r).contains(&i)));
                csv.push_str(&format!(
                    "{},{},{score},{label}\n",
                    s.timestamps[i], s.values[i]
                ));
            }
            std::fs::write(out_dir.join(format!("{name}_{file}")), csv)?;
        }
        files.push(FileScores {
            rel: rel.clone(),
            scores,
            windows,
        });
    }
    let scores = score_corpus(&files, &corpus.profiles);
    Ok((files, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard() -> BTreeMap<String, Cost> {
        [(
            "standard".to_string(),
            Cost {
                tp_weight: 1.0,
                fn_weight: 1.0,
                fp_weight: 0.11,
            },
        )]
        .into()
    }

    fn file(n: usize, windows: Vec<(usize, usize)>, hits: &[usize]) -> FileScores {
        let mut scores = vec![0.0; n];
        for &h in hits {
            scores[h] = 1.0;
        }
        FileScores {
            rel: "c/f.csv".into(),
            scores,
            windows,
        }
    }

    #[test]
    fn perfect_early_detection_scores_near_100_and_nothing_scores_0() {
        // 1000 rows, probation 150; one window 500..=599 detected at its first row.
        let f = file(1000, vec![(500, 599)], &[500]);
        let s = &score_corpus(&[f], &standard())["standard"];
        // The earliest detection of a window earns ~ +1 (the scaled sigmoid's maximum).
        assert!(s.normalized > 99.0, "{s:?}");
        let none = file(1000, vec![(500, 599)], &[]);
        let s = &score_corpus(&[none], &standard())["standard"];
        assert!(s.normalized.abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn late_detections_and_false_positives_cost() {
        let early = &score_corpus(&[file(1000, vec![(500, 599)], &[505])], &standard())["standard"];
        let late = &score_corpus(&[file(1000, vec![(500, 599)], &[590])], &standard())["standard"];
        assert!(early.normalized > late.normalized && late.normalized > 0.0);
        let noisy = &score_corpus(
            &[file(1000, vec![(500, 599)], &[505, 200, 300, 800])],
            &standard(),
        )["standard"];
        assert!(noisy.normalized < early.normalized);
    }
}
