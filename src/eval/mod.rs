//! Quality harnesses: `seismo eval odds|nab|multivariate|rca|m4 DIR` and `seismo eval explain`, and the shared helpers they use.

pub mod explain;
pub mod host;
pub mod m4;
pub mod multivariate;
pub mod nab;
pub mod odds;
pub mod rca;
pub mod series;

use std::path::Path;

use anyhow::{Context, bail};

/// Area under the ROC curve of `scores` against binary `labels` (higher score = more
/// anomalous), by the rank-sum (Mann–Whitney) formula with ties given their mean rank,
/// which is what scikit-learn's `roc_auc_score` computes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(scores.len(), labels.len());
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        rank_sum_pos += mean_rank * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// A numeric CSV: header names and row-major values.
#[derive(Debug, Clone)]
pub struct Table {
    pub header: Vec<String>,
    pub data: Vec<f64>,
}

impl Table {
    pub fn width(&self) -> usize {
        self.header.len()
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.width().max(1)
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The values of every column but `skip` (a label column), row-major, and how many
    /// columns that leaves.
    pub fn features_without(&self, skip: Option<usize>) -> (Vec<f64>, usize) {
        let w = self.width();
        let values = self
            .data
            .chunks(w)
            .flat_map(|r| {
                r.iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != skip)
                    .map(|(_, v)| *v)
            })
            .collect();
        (values, w - usize::from(skip.is_some_and(|c| c < w)))
    }
}

/// Reads a CSV whose every cell below the header is a number.
pub fn read_numeric_csv(path: &Path) -> anyhow::Result<Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .with_context(|| format!("{} is empty", path.display()))?
        .split(',')
        .map(|h| h.trim().to_string())
        .collect();
    let mut data = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let before = data.len();
        for cell in line.split(',') {
            let v: f64 = cell.trim().parse().with_context(|| {
                format!(
                    "{} line {}: {cell:?} is not a number",
                    path.display(),
                    i + 2
                )
            })?;
            data.push(v);
        }
        if data.len() - before != header.len() {
            bail!(
                "{} line {}: {} cells, header has {}",
                path.display(),
                i + 2,
                data.len() - before,
                header.len()
            );
        }
    }
    Ok(Table { header, data })
}

/// Candidate configurations: the base one with every combination of `choices`
/// (`key=v1,v2,...`, a key of the `[section]` of `base`, such as `stream.context_len`),
/// labelled.
pub fn candidates_of<T: serde::Serialize + serde::de::DeserializeOwned>(
    base: &T,
    choices: &[String],
    section: &str,
) -> anyhow::Result<Vec<(String, T)>> {
    let mut out = vec![(String::new(), toml::Value::try_from(base)?)];
    for choice in choices {
        let (key, values) = choice
            .split_once('=')
            .with_context(|| format!("--choose {choice:?}: expected KEY=V1,V2,..."))?;
        let mut next = Vec::new();
        for (label, doc) in &out {
            for v in values.split(',') {
                let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .or_else(|_| toml::from_str::<toml::Table>(&format!("v = {v:?}")))?
                    .remove("v")
                    .context("a value")?;
                let mut doc = doc.clone();
                let mut at = &mut doc;
                let path: Vec<&str> = key.trim().split('.').collect();
                for (i, part) in path.iter().enumerate() {
                    let table = at
                        .as_table_mut()
                        .with_context(|| format!("--choose {key}: {part} is not in a table"))?;
                    anyhow::ensure!(
                        table.contains_key(*part),
                        "--choose: {section} has no setting {key}"
                    );
                    if i + 1 == path.len() {
                        table.insert((*part).to_string(), value.clone());
                        break;
                    }
                    at = table.get_mut(*part).expect("checked");
                }
                let sep = if label.is_empty() { "" } else { " " };
                next.push((format!("{label}{sep}{}={v}", key.trim()), doc));
            }
        }
        out = next;
    }
    out.into_iter()
        .map(|(label, doc)| {
            let cfg: T = doc
                .try_into()
                .with_context(|| format!("candidate {label}"))?;
            Ok((
                if label.is_empty() {
                    "as configured".into()
                } else {
                    label
                },
                cfg,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_computed_values() {
        assert_eq!(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            0.75
        );
        assert_eq!(roc_auc(&[1.0, 2.0], &[false, true]), 1.0);
        assert_eq!(roc_auc(&[2.0, 1.0], &[false, true]), 0.0);
        // All tied: chance.
        assert_eq!(roc_auc(&[1.0; 4], &[false, true, false, true]), 0.5);
    }
}
