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

/// Every file's sweep under `cost`, window ids unique across the corpus.
fn sweep_files(files: &[FileScores], cost: Cost) -> Vec<Swept> {
    let mut base = 0;
    files
        .iter()
        .map(|f| {
            let s = sweep(&f.scores, &f.windows, base, cost);
            base += f.windows.len();
            s
        })
        .collect()
}

/// The threshold NAB picks for a set of files: the first (highest) of the best.
fn best_threshold(swept: &[&Swept], cost: Cost) -> f64 {
    score_by_threshold(swept.iter().flat_map(|s| s.iter()), cost)
        .iter()
        .fold((f64::NAN, f64::NEG_INFINITY), |acc, &(t, s)| {
            if s > acc.1 { (t, s) } else { acc }
        })
        .0
}

/// Raw, null and perfect scores of a set of files at `threshold`.
fn score_at(swept: &[&Swept], windows: usize, cost: Cost, threshold: f64) -> (f64, f64, f64) {
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
                .filter_map(|r| match r.2 {
                    Place::Window(id) => Some(id),
                    _ => None,
                })
                .collect();
            -cost.fn_weight * ids.len() as f64
        })
        .sum();
    (raw, null, windows as f64 * cost.tp_weight)
}

/// Scores a corpus NAB's way for every profile in `profiles`.
pub fn score_corpus(
    files: &[FileScores],
    profiles: &BTreeMap<String, Cost>,
) -> BTreeMap<String, ProfileScore> {
    let windows_total: usize = files.iter().map(|f| f.windows.len()).sum();
    let mut out = BTreeMap::new();
    for (name, &cost) in profiles {
        let swept = sweep_files(files, cost);
        let all: Vec<&Swept> = swept.iter().collect();
        let threshold = best_threshold(&all, cost);
        let (raw, null, perfect) = score_at(&all, windows_total, cost, threshold);
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

/// The category of a corpus file (`category/file.csv`).
fn category(rel: &str) -> &str {
    rel.split_once('/').map_or(rel, |(c, _)| c)
}

/// One held-out category: its scores at the configuration and threshold chosen on the
/// other categories.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    pub category: String,
    pub files: usize,
    pub windows: usize,
    /// Which candidate configuration the other categories chose (an index into
    /// [`Report::candidates`]).
    pub choice: usize,
    pub profiles: BTreeMap<String, ProfileScore>,
}

/// The profile candidates are chosen by.
const SELECT_BY: &str = "standard";

/// NAB's normalised score of the files `idx` of one run, at the threshold chosen on
/// `fit` (NAB's normalisation, extended to a set without windows as described at
/// [`leave_one_category_out`]).
fn normalized_on(
    files: &[FileScores],
    swept: &[Swept],
    idx: &[usize],
    threshold: f64,
    cost: Cost,
    fit: &[usize],
) -> ProfileScore {
    let windows = |idx: &[usize]| idx.iter().map(|i| files[*i].windows.len()).sum::<usize>();
    let pick = |idx: &[usize]| idx.iter().map(|i| &swept[*i]).collect::<Vec<_>>();
    let (raw, null, perfect) = score_at(&pick(idx), windows(idx), cost, threshold);
    let span = if perfect > null {
        perfect - null
    } else {
        let (_, tn, tp) = score_at(&pick(fit), windows(fit), cost, threshold);
        (tp - tn) / fit.len().max(1) as f64 * idx.len() as f64
    };
    ProfileScore {
        threshold,
        raw,
        null,
        perfect,
        normalized: 100.0 + 100.0 * (raw - perfect) / span,
    }
}

/// Leave-one-category-out over one or more candidate configurations (`runs[c]` holds
/// candidate c's scored files, in the same order for every candidate). For each category,
/// the candidate with the best standard score on the other categories is chosen, NAB's
/// threshold is chosen on them too (per profile), and the held-out category is scored at
/// both, normalised as NAB does (0 = null, 100 = perfect). A category without windows
/// (artificialNoAnomaly) can only lose points to false positives, and NAB's
/// normalisation is 0/0 there: it is scored 100 + 100·raw / d, where d is what a file is
/// worth on average among the training files ((perfect − null) per file) times its
/// files; for a category with windows that formula is NAB's own.
pub fn leave_one_category_out(
    runs: &[Vec<FileScores>],
    profiles: &BTreeMap<String, Cost>,
) -> Vec<Fold> {
    let Some(files) = runs.first() else {
        return Vec::new();
    };
    let mut cats: Vec<&str> = files.iter().map(|f| category(&f.rel)).collect();
    cats.dedup();
    // Every candidate's sweeps, per profile.
    let swept: Vec<BTreeMap<&String, Vec<Swept>>> = runs
        .iter()
        .map(|run| {
            profiles
                .iter()
                .map(|(n, c)| (n, sweep_files(run, *c)))
                .collect()
        })
        .collect();
    let mut folds = Vec::new();
    for cat in cats {
        let held: Vec<usize> = (0..files.len())
            .filter(|i| category(&files[*i].rel) == cat)
            .collect();
        let train: Vec<usize> = (0..files.len()).filter(|i| !held.contains(i)).collect();
        let choice = choose(runs, &swept, profiles, &train);
        let run = &runs[choice];
        let mut fold = Fold {
            category: cat.to_string(),
            files: held.len(),
            windows: held.iter().map(|i| files[*i].windows.len()).sum(),
            choice,
            profiles: BTreeMap::new(),
        };
        for (name, &cost) in profiles {
            let sw = &swept[choice][name];
            let threshold =
                best_threshold(&train.iter().map(|i| &sw[*i]).collect::<Vec<_>>(), cost);
            fold.profiles.insert(
                name.clone(),
                normalized_on(run, sw, &held, threshold, cost, &train),
            );
        }
        folds.push(fold);
    }
    folds
}

/// The candidate with the best standard score on the files `fit` (the first of equals).
fn choose(
    runs: &[Vec<FileScores>],
    swept: &[BTreeMap<&String, Vec<Swept>>],
    profiles: &BTreeMap<String, Cost>,
    fit: &[usize],
) -> usize {
    let Some((name, &cost)) = profiles.get_key_value(SELECT_BY).or(profiles.iter().next()) else {
        return 0;
    };
    let mut best = (0, f64::NEG_INFINITY);
    for (c, run) in runs.iter().enumerate() {
        let sw = &swept[c][name];
        let threshold = best_threshold(&fit.iter().map(|i| &sw[*i]).collect::<Vec<_>>(), cost);
        let score = normalized_on(run, sw, fit, threshold, cost, fit).normalized;
        if score > best.1 {
            best = (c, score);
        }
    }
    best.0
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

/// What `seismo eval nab` reports: the candidate configurations, the one chosen on the
/// whole corpus with its scores, and the leave-one-category-out folds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: usize,
    pub rows: usize,
    /// Each candidate's settings (`key=value` over the base configuration).
    pub candidates: Vec<String>,
    /// The candidate chosen on the whole corpus, and its scores.
    pub chosen: usize,
    pub whole: BTreeMap<String, ProfileScore>,
    pub folds: Vec<Fold>,
}

impl Report {
    /// NAB's normalised score of every held-out fold's outcome together, as if they were
    /// one corpus: comparable with the whole-corpus score, which saw every category.
    pub fn pooled(&self, profile: &str) -> f64 {
        let (mut raw, mut null, mut perfect) = (0.0, 0.0, 0.0);
        for p in self.folds.iter().filter_map(|f| f.profiles.get(profile)) {
            raw += p.raw;
            null += p.null;
            perfect += p.perfect;
        }
        100.0 * (raw - null) / (perfect - null)
    }

    /// Mean of the held-out folds' normalised scores for `profile`.
    pub fn fold_mean(&self, profile: &str) -> f64 {
        let v: Vec<f64> = self
            .folds
            .iter()
            .filter_map(|f| f.profiles.get(profile).map(|p| p.normalized))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

/// Candidate configurations: the base one with every combination of `choices`
/// (`key=v1,v2,...`, a key of `[detect]` such as `stream.context_len`), labelled.
pub fn candidates(
    base: &DetectConfig,
    choices: &[String],
) -> anyhow::Result<Vec<(String, DetectConfig)>> {
    let out = super::candidates_of(base, choices, "detect")?;
    for (_, cfg) in &out {
        cfg.stream.validate().map_err(anyhow::Error::msg)?;
    }
    Ok(out)
}

/// Scores the corpus with every candidate; the whole-corpus figures are the chosen
/// candidate's (result files, if asked for, too).
pub fn report(
    corpus: &Corpus,
    candidates: &[(String, DetectConfig)],
    results: Option<(&Path, &str)>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!candidates.is_empty(), "no configuration to score");
    let mut runs = Vec::new();
    for (_, cfg) in candidates {
        runs.push(run(corpus, cfg, None)?.0);
    }
    let swept: Vec<BTreeMap<&String, Vec<Swept>>> = runs
        .iter()
        .map(|run| {
            corpus
                .profiles
                .iter()
                .map(|(n, c)| (n, sweep_files(run, *c)))
                .collect()
        })
        .collect();
    let all: Vec<usize> = (0..runs[0].len()).collect();
    let chosen = choose(&runs, &swept, &corpus.profiles, &all);
    let (files, whole) = run(corpus, &candidates[chosen].1, results)?;
    Ok(Report {
        files: files.len(),
        rows: files.iter().map(|f| f.scores.len()).sum(),
        candidates: candidates.iter().map(|c| c.0.clone()).collect(),
        chosen,
        folds: leave_one_category_out(&runs, &corpus.profiles),
        whole,
    })
}

const PROFILES: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut out = format!("NAB, {} files, {} rows\n", r.files, r.rows);
    let several = r.candidates.len() > 1;
    if several {
        out.push_str(&format!(
            "  {} candidate configurations; chosen on the whole corpus: {}\n",
            r.candidates.len(),
            r.candidates[r.chosen]
        ));
    }
    out.push_str(&format!(
        "  {:<40}{:>10}{:>10}{:>10}\n",
        "", "standard", "low FP", "low FN"
    ));
    let line = |label: &str, f: &dyn Fn(&str) -> f64| {
        let cells: String = PROFILES.iter().map(|p| format!("{:>10.2}", f(p))).collect();
        format!("  {label:<40}{cells}\n")
    };
    out.push_str(&line("whole corpus", &|p| r.whole[p].normalized));
    out.push_str(if several {
        "  held out, at the configuration and threshold chosen on the other categories:\n"
    } else {
        "  held out, at the threshold chosen on the other categories:\n"
    });
    for fold in &r.folds {
        let mut l = line(
            &format!("  {} ({} windows)", fold.category, fold.windows),
            &|p| fold.profiles[p].normalized,
        );
        if several {
            l.insert_str(l.len() - 1, &format!("   {}", r.candidates[fold.choice]));
        }
        out.push_str(&l);
    }
    out.push_str(&line("mean of the held-out folds", &|p| r.fold_mean(p)));
    out.push_str(&line("held-out folds pooled", &|p| r.pooled(p)));
    out.push_str(&line("whole corpus minus fold mean", &|p| {
        r.whole[p].normalized - r.fold_mean(p)
    }));
    out.push_str(&line("whole corpus minus pooled folds", &|p| {
        r.whole[p].normalized - r.pooled(p)
    }));
    out
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
