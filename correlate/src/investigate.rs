//! On-demand investigation: "why is checkout slow at 10:42?" answered from the stored points.
//!
//! Reads every series of the tenant that carries the service label (at most
//! [`MAX_SERIES`]), two hours of points around the moment, estimates the sampling interval
//! and hands them to [`rank::investigate`], the same function `seismo eval rca` scores.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use seismo_schemas::RootCauseCandidate;
use seismo_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::CorrelateConfig;
use crate::rank::{self, Graph, SeriesData, Window};

/// Most series one investigation reads: bounds its memory (two hours of points each) and
/// its time.
pub const MAX_SERIES: usize = 5_000;
/// Points are read this far either side of the moment; the window used is cut from them.
const READ_SPAN_MS: i64 = 3_600_000;

/// What the SRE names.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "InvestigateRequest")]
pub struct Question {
    /// The service showing the symptom (a value of `correlate.service_label`). With a
    /// dependency graph, only it and what it calls can be the cause.
    #[serde(default)]
    pub service: Option<String>,
    /// Or a series matcher: labels the symptom series carries; its service is the symptom.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the symptom began.
    pub at: DateTime<Utc>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "InvestigateAnswer")]
pub struct Answer {
    pub symptom: Option<String>,
    pub at: DateTime<Utc>,
    pub bucket_secs: f64,
    pub series_examined: usize,
    /// Best first, at most ten.
    pub candidates: Vec<RootCauseCandidate>,
}

/// Why an investigation could not run.
#[derive(Debug, thiserror::Error)]
pub enum InvestigateError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Ranks the likely causes of the symptom in `q` for `tenant`.
pub async fn investigate(
    store: &dyn Store,
    cfg: &CorrelateConfig,
    tenant: &str,
    q: &Question,
) -> Result<Answer, InvestigateError> {
    let label = &cfg.service_label;
    let all = store
        .list_series(&seismo_store::SeriesQuery {
            tenant: tenant.to_string(),
            limit: MAX_SERIES + 1,
            ..Default::default()
        })
        .await?;
    if all.len() > MAX_SERIES {
        return Err(InvestigateError::Invalid(format!(
            "the tenant has more than {MAX_SERIES} series; investigations read at most that many"
        )));
    }
    let symptom = match (&q.service, q.labels.is_empty()) {
        (Some(s), _) => Some(s.clone()),
        (None, false) => {
            let matched = all
                .iter()
                .find(|s| q.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                .ok_or_else(|| {
                    InvestigateError::Invalid(format!("no series matches {:?}", q.labels))
                })?;
            matched.labels.get(label).cloned()
        }
        (None, true) => None,
    };
    let at = q.at.timestamp_millis();
    let mut series = Vec::new();
    for s in all.iter().filter(|s| s.labels.contains_key(label)) {
        let points = store
            .points(s.series_id, at - READ_SPAN_MS, at + READ_SPAN_MS)
            .await?;
        if points.is_empty() {
            continue;
        }
        series.push(SeriesData {
            service: s.labels[label].clone(),
            metric: s.name.clone(),
            points,
        });
    }
    let bucket = rank::sampling_interval(&series);
    let graph = Graph::new(&cfg.dependencies);
    let mut candidates = rank::investigate(
        &graph,
        &series,
        &Window::around(at, bucket),
        symptom.as_deref(),
        &cfg.metric_roles,
    );
    candidates.truncate(10);
    for c in &mut candidates {
        c.target = format!("{label}={}", c.target);
    }
    Ok(Answer {
        symptom,
        at: q.at,
        bucket_secs: bucket as f64 / 1000.0,
        series_examined: series.len(),
        candidates,
    })
}
