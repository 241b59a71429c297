//! `seismo eval odds DIR`: isolation-forest ROC AUC on ODDS-style CSVs, as the paper measures it.
#![expect(
    clippy::disallowed_methods,
    reason = "evaluations report their wall time"
)]

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use seismo_detect::{ForestParams, IsolationForest, Rows};
use serde::Serialize;

use super::{read_numeric_csv, roc_auc};

/// Result on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct OddsResult {
    pub dataset: String,
    pub rows: usize,
    pub features: usize,
    pub anomalies: usize,
    /// ROC AUC per seed.
    pub auc: Vec<f64>,
    pub mean_auc: f64,
    /// Reference figures from the folder's README table, when it has one.
    pub paper_auc: Option<f64>,
    pub sklearn_auc: Option<f64>,
    pub fit_s: f64,
    pub score_s: f64,
}

/// Reads `| name | rows | cols | anomalies | paper | sklearn |` rows from a README table.
fn reference(dir: &Path, dataset: &str) -> (Option<f64>, Option<f64>) {
    let Ok(text) = std::fs::read_to_string(dir.join("README.md")) else {
        return (None, None);
    };
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 7 && cells[1] == dataset {
            return (cells[5].parse().ok(), cells[6].parse().ok());
        }
    }
    (None, None)
}

/// Fits on the whole file without labels and scores every row, for each seed.
pub fn run(dir: &Path, seeds: &[u64], params: ForestParams) -> anyhow::Result<Vec<OddsResult>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .csv files in {}", dir.display());
    let mut out = Vec::new();
    for path in files {
        let table = read_numeric_csv(&path)?;
        let label_col = table
            .column("label")
            .with_context(|| format!("{} has no label column", path.display()))?;
        let w = table.width();
        let (features, nf) = table.features_without(Some(label_col));
        let labels: Vec<bool> = table.data.chunks(w).map(|r| r[label_col] != 0.0).collect();
        let rows = Rows::new(&features, nf);
        let (mut auc, mut fit_s, mut score_s) = (Vec::new(), 0.0, 0.0);
        for &seed in seeds {
            let t = Instant::now();
            let forest = IsolationForest::fit(rows, ForestParams { seed, ..params });
            fit_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let scores = forest.score_rows(rows);
            score_s += t.elapsed().as_secs_f64();
            auc.push(roc_auc(&scores, &labels));
        }
        let dataset = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let (paper_auc, sklearn_auc) = reference(dir, &dataset);
        out.push(OddsResult {
            mean_auc: auc.iter().sum::<f64>() / auc.len() as f64,
            rows: rows.len(),
            features: w - 1,
            anomalies: labels.iter().filter(|l| **l).count(),
            auc,
            paper_auc,
            sklearn_auc,
            fit_s: fit_s / seeds.len() as f64,
            score_s: score_s / seeds.len() as f64,
            dataset,
        });
    }
    Ok(out)
}

/// The results as a table.
pub fn render(results: &[OddsResult]) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{:<14} {:>7} {:>4} {:>6}  {:>8} {:>7} {:>7} {:>8}  {:>8} {:>8}\n",
        "dataset", "rows", "cols", "anom", "AUC", "paper", "sklearn", "vs skl", "fit s", "score s"
    );
    for r in results {
        let delta = r
            .sklearn_auc
            .map(|k| format!("{:+.3}", r.mean_auc - k))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<14} {:>7} {:>4} {:>6}  {:>8.3} {:>7} {:>7} {:>8}  {:>8.4} {:>8.4}\n",
            r.dataset,
            r.rows,
            r.features,
            r.anomalies,
            r.mean_auc,
            f(r.paper_auc),
            f(r.sklearn_auc),
            delta,
            r.fit_s,
            r.score_s
        ));
    }
    s
}
