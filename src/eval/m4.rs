//! `seismo eval m4 DIR`: the forecast models on the M4 competition's hourly series, scored as the M4 organisers score them.
//!
//! Every series is forecast from its training part with the periods found in it (an
//! hourly step: a day and a week are the candidates) and scored against its test part:
//! sMAPE, MASE (period 24) and OWA against Naive2, which is computed here the organisers'
//! way and checked against their published figures; and, for the intervals, coverage and
//! MSIS at the chosen level. Each model alone is scored too, and the series are split
//! into five folds (by position) so the spread of OWA across folds can be read.
#![expect(
    clippy::disallowed_methods,
    reason = "evaluations report their wall time"
)]

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use seismo_forecast::metrics::{mase, msis, owa, smape};
use seismo_forecast::models::Model;
use seismo_forecast::periods::{calendar_candidates, find_periods};
use seismo_forecast::select::{ModelSettings, predict};
use serde::Serialize;

/// M4 Hourly's horizon and MASE period.
pub const HORIZON: usize = 48;
pub const SEASON: usize = 24;
/// The M4 organisers' published Naive2 figures on Hourly, checked against ours.
pub const PUBLISHED_NAIVE2: (f64, f64) = (18.383, 2.395);
const FOLDS: usize = 5;

/// One series: its id, training values and test values.
#[derive(Debug, Clone)]
pub struct Series {
    pub id: String,
    pub train: Vec<f64>,
    pub test: Vec<f64>,
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut cells = line.split(',').map(|c| c.trim().trim_matches('"'));
        let Some(id) = cells.next().filter(|c| !c.is_empty()) else {
            continue;
        };
        let values = cells
            .filter(|c| !c.is_empty() && *c != "NA")
            .map(|c| {
                c.parse::<f64>()
                    .with_context(|| format!("{}:{}: not a number: {c:?}", path.display(), i + 1))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        rows.push((id.to_string(), values));
    }
    Ok(rows)
}

/// Reads `Hourly-train.csv` and `Hourly-test.csv` from `dir`.
pub fn open(dir: &Path) -> anyhow::Result<Vec<Series>> {
    let train = read_rows(&dir.join("Hourly-train.csv"))?;
    let test: std::collections::HashMap<String, Vec<f64>> =
        read_rows(&dir.join("Hourly-test.csv"))?
            .into_iter()
            .collect();
    let mut out = Vec::with_capacity(train.len());
    for (id, values) in train {
        let t = test
            .get(&id)
            .with_context(|| format!("series {id} has no test row"))?;
        if t.len() != HORIZON {
            bail!("series {id}: {} test values, expected {HORIZON}", t.len());
        }
        out.push(Series {
            id,
            train: values,
            test: t.clone(),
        });
    }
    if out.is_empty() {
        bail!("{}: no series", dir.display());
    }
    Ok(out)
}

/// Mean scores of a set of series' forecasts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub series: usize,
    pub smape: f64,
    pub mase: f64,
    /// Against Naive2 on the same series.
    pub owa: f64,
}

/// A fold of series scored with the candidate the other folds chose.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    pub chosen: String,
    pub scores: Scores,
    pub coverage: f64,
}

/// Every candidate's run, the chosen one's details, and the held-out folds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The candidate with the best OWA on all series among those whose coverage is within
    /// 90–98 %, and its run.
    pub chosen: String,
    pub run: Run,
    /// Each candidate's OWA and coverage on all series.
    pub candidates: Vec<(String, Scores, f64)>,
    /// Each fold scored with the candidate the other four chose.
    pub folds: Vec<Fold>,
    /// The held-out folds pooled.
    pub folds_pooled: Fold,
}

/// The results of one candidate on every series.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub settings: ModelSettings,
    pub level: f64,
    pub naive2: Scores,
    /// Seismo's forecast (each series' chosen models).
    pub seismo: Scores,
    /// Each candidate model alone on every series.
    pub models: Vec<(String, Scores)>,
    /// Share of test values inside the interval.
    pub coverage: f64,
    /// Mean scaled interval score at `level`.
    pub msis: f64,
    /// How often each model (combination) was chosen.
    pub chosen: Vec<(String, usize)>,
    /// How often each set of periods was found.
    pub periods: Vec<(String, usize)>,
    /// Mean wall time of the choice, fit and forecast per series, one thread, in ms.
    pub ms_per_series: f64,
}

struct Row {
    smape: f64,
    mase: f64,
    naive2: (f64, f64),
    models: Vec<(f64, f64)>,
    inside: usize,
    msis: f64,
    chosen: String,
    periods: Vec<usize>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

fn scores(rows: &[&Row], f: impl Fn(&Row) -> (f64, f64)) -> Scores {
    let smape_ = mean(rows.iter().map(|r| f(r).0));
    let mase_ = mean(rows.iter().map(|r| f(r).1));
    let n2s = mean(rows.iter().map(|r| r.naive2.0));
    let n2m = mean(rows.iter().map(|r| r.naive2.1));
    Scores {
        series: rows.len(),
        smape: smape_,
        mase: mase_,
        owa: owa(smape_, mase_, n2s, n2m),
    }
}

/// Runs every candidate, chooses one on all series and one per held-out fold (by OWA,
/// among candidates whose coverage is within 90–98 % where any is).
pub fn report(
    series: &[Series],
    candidates: &[(String, ModelSettings)],
    level: f64,
    progress: impl Fn(),
) -> anyhow::Result<Report> {
    anyhow::ensure!(!candidates.is_empty(), "no configuration to score");
    let runs: Vec<(Run, Vec<Row>)> = candidates
        .iter()
        .map(|(_, s)| run(series, s, level, &progress))
        .collect();
    let pick = |keep: &dyn Fn(usize) -> bool| -> usize {
        let stats: Vec<(f64, f64)> = runs
            .iter()
            .map(|(_, rows)| {
                let sel: Vec<&Row> = rows
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep(*i))
                    .map(|(_, r)| r)
                    .collect();
                (scores(&sel, |r| (r.smape, r.mase)).owa, coverage(&sel))
            })
            .collect();
        let ok = |c: f64| (0.90..=0.98).contains(&c);
        let any_ok = stats.iter().any(|s| ok(s.1));
        (0..stats.len())
            .filter(|i| !any_ok || ok(stats[*i].1))
            .min_by(|a, b| stats[*a].0.total_cmp(&stats[*b].0))
            .expect("at least one candidate")
    };
    let best = pick(&|_| true);
    let mut folds = Vec::new();
    let mut pooled: Vec<&Row> = Vec::new();
    for k in 0..FOLDS {
        let c = pick(&|i| i % FOLDS != k);
        let held: Vec<&Row> = runs[c].1.iter().skip(k).step_by(FOLDS).collect();
        folds.push(Fold {
            chosen: candidates[c].0.clone(),
            scores: scores(&held, |r| (r.smape, r.mase)),
            coverage: coverage(&held),
        });
        pooled.extend(held);
    }
    Ok(Report {
        chosen: candidates[best].0.clone(),
        run: runs[best].0.clone(),
        candidates: candidates
            .iter()
            .zip(&runs)
            .map(|((label, _), (run, _))| (label.clone(), run.seismo.clone(), run.coverage))
            .collect(),
        folds,
        folds_pooled: Fold {
            chosen: "each fold's".into(),
            scores: scores(&pooled, |r| (r.smape, r.mase)),
            coverage: coverage(&pooled),
        },
    })
}

fn coverage(rows: &[&Row]) -> f64 {
    rows.iter().map(|r| r.inside).sum::<usize>() as f64 / (rows.len() * HORIZON).max(1) as f64
}

/// Forecasts and scores every series with one configuration; `progress` is told after each.
fn run(
    series: &[Series],
    settings: &ModelSettings,
    level: f64,
    progress: impl Fn(),
) -> (Run, Vec<Row>) {
    let candidates = calendar_candidates(3600);
    let mut rows = Vec::with_capacity(series.len());
    let mut busy = std::time::Duration::ZERO;
    for s in series {
        let started = Instant::now();
        let periods = find_periods(&s.train, &candidates);
        let p = predict(&s.train, &periods, HORIZON, level, settings);
        busy += started.elapsed();
        let yhat: Vec<f64> = p.steps.iter().map(|s| s.yhat).collect();
        let lower: Vec<f64> = p.steps.iter().map(|s| s.lower).collect();
        let upper: Vec<f64> = p.steps.iter().map(|s| s.upper).collect();
        let naive2 = Model::Naive2
            .forecast(&s.train, &[SEASON], HORIZON)
            .expect("every M4 hourly series is long enough");
        let score = |f: &[f64]| (smape(&s.test, f), mase(&s.train, &s.test, f, SEASON));
        let models = settings
            .models
            .iter()
            .map(|m| {
                let f = m
                    .forecast(&s.train, &periods, HORIZON)
                    .unwrap_or_else(|| vec![s.train[s.train.len() - 1]; HORIZON]);
                score(&f)
            })
            .collect();
        let (sm, ma) = score(&yhat);
        rows.push(Row {
            smape: sm,
            mase: ma,
            naive2: score(&naive2),
            models,
            inside: s
                .test
                .iter()
                .zip(lower.iter().zip(&upper))
                .filter(|(y, (l, u))| *l <= *y && *y <= *u)
                .count(),
            msis: msis(&s.train, &s.test, &lower, &upper, SEASON, 1.0 - level),
            chosen: p.model,
            periods,
        });
        progress();
    }
    let all: Vec<&Row> = rows.iter().collect();
    let mut chosen = std::collections::BTreeMap::<String, usize>::new();
    let mut found = std::collections::BTreeMap::<String, usize>::new();
    for r in &rows {
        *chosen.entry(r.chosen.clone()).or_default() += 1;
        let key = r
            .periods
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("+");
        *found
            .entry(if key.is_empty() { "none".into() } else { key })
            .or_default() += 1;
    }
    let mut chosen: Vec<(String, usize)> = chosen.into_iter().collect();
    chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let run = Run {
        settings: settings.clone(),
        level,
        naive2: scores(&all, |r| r.naive2),
        seismo: scores(&all, |r| (r.smape, r.mase)),
        models: settings
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name().to_string(), scores(&all, |r| r.models[i])))
            .collect(),
        coverage: coverage(&all),
        msis: mean(rows.iter().map(|r| r.msis)),
        chosen,
        periods: found.into_iter().collect(),
        ms_per_series: busy.as_secs_f64() * 1000.0 / series.len().max(1) as f64,
    };
    (run, rows)
}

/// The report as a table.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let r = &report.run;
    let mut s = String::new();
    if report.candidates.len() > 1 {
        let _ = writeln!(s, "candidates (all series):");
        for (label, sc, cov) in &report.candidates {
            let _ = writeln!(
                s,
                "  {label:<40} OWA {:.3}  coverage {:.1} %",
                sc.owa,
                cov * 100.0
            );
        }
        let _ = writeln!(s, "chosen on all series: {}", report.chosen);
    }
    let _ = writeln!(
        s,
        "M4 Hourly: {} series, horizon {HORIZON}, {:.0} % intervals",
        r.seismo.series,
        r.level * 100.0
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>8} {:>8} {:>7}",
        "model", "sMAPE", "MASE", "OWA"
    );
    let line = |s: &mut String, name: &str, sc: &Scores| {
        let _ = writeln!(
            s,
            "  {:<22} {:>8.3} {:>8.3} {:>7.3}",
            name, sc.smape, sc.mase, sc.owa
        );
    };
    line(&mut s, "seismo (chosen)", &r.seismo);
    for (name, sc) in &r.models {
        line(&mut s, name, sc);
    }
    line(&mut s, "naive2", &r.naive2);
    let _ = writeln!(
        s,
        "  naive2 as published: sMAPE {:.3}, MASE {:.3}",
        PUBLISHED_NAIVE2.0, PUBLISHED_NAIVE2.1
    );
    let _ = writeln!(
        s,
        "  interval coverage {:.1} %, MSIS {:.2}",
        r.coverage * 100.0,
        r.msis
    );
    let _ = writeln!(
        s,
        "  held-out folds (series i in fold i mod {FOLDS}, each with the candidate the others chose):"
    );
    for (k, f) in report.folds.iter().enumerate() {
        let _ = writeln!(
            s,
            "    fold {k}: OWA {:.3}  sMAPE {:.3}  MASE {:.3}  coverage {:.1} %  ({})",
            f.scores.owa,
            f.scores.smape,
            f.scores.mase,
            f.coverage * 100.0,
            f.chosen
        );
    }
    let p = &report.folds_pooled;
    let _ = writeln!(
        s,
        "    pooled: OWA {:.3}  sMAPE {:.3}  MASE {:.3}  coverage {:.1} %",
        p.scores.owa,
        p.scores.smape,
        p.scores.mase,
        p.coverage * 100.0
    );
    let chosen: Vec<String> = r
        .chosen
        .iter()
        .take(6)
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    let _ = writeln!(s, "  chosen: {}", chosen.join(", "));
    let periods: Vec<String> = r.periods.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    let _ = writeln!(s, "  periods found: {}", periods.join(", "));
    let _ = writeln!(
        s,
        "  {:.2} ms per series (periods, backtest, fit and forecast; one thread)",
        r.ms_per_series
    );
    s
}
