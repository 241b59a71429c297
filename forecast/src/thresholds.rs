//! Predictive thresholds: which series a `[[forecast.thresholds]]` rule watches, and where a forecast crosses it.

use std::collections::BTreeMap;

use seismo_schemas::{BreachDirection, Labels, Severity};
use serde::{Deserialize, Serialize};

use crate::select::Step;

/// What must cross the limit for a breach to be predicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The interval's far bound (upper for `above`): the breach is plausible at the
    /// interval's level. The default: capacity is planned on the bad case.
    #[default]
    Interval,
    /// The point forecast: the breach is expected.
    Forecast,
}

/// A capacity or SLO limit the forecasts are checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Names the rule in anomalies and incidents.
    pub name: String,
    /// The metric it watches (any metric when absent).
    #[serde(default)]
    pub metric: Option<String>,
    /// Labels a series must carry with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A breach is the series rising to this value or beyond.
    #[serde(default)]
    pub above: Option<f64>,
    /// A breach is the series falling to this value or below.
    #[serde(default)]
    pub below: Option<f64>,
    #[serde(default)]
    pub trigger: Trigger,
    #[serde(default = "warning")]
    pub severity: Severity,
}

fn warning() -> Severity {
    Severity::Warning
}

impl Threshold {
    /// The tests' capacity rule: `disk_used_percent` above 90 % over the interval is critical.
    #[cfg(test)]
    pub(crate) fn disk_full() -> Self {
        Threshold {
            name: "disk-full".into(),
            metric: Some("disk_used_percent".into()),
            labels: BTreeMap::new(),
            above: Some(90.0),
            below: None,
            trigger: Trigger::Interval,
            severity: Severity::Critical,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("forecast.thresholds: every threshold needs a name".into());
        }
        match (self.above, self.below) {
            (Some(v), None) | (None, Some(v)) if v.is_finite() => Ok(()),
            (Some(_), Some(_)) => Err(format!(
                "forecast.thresholds {:?}: set above or below, not both (write two thresholds)",
                self.name
            )),
            _ => Err(format!(
                "forecast.thresholds {:?}: needs a finite `above` or `below`",
                self.name
            )),
        }
    }

    /// Whether the rule watches the series `name{labels}`.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        self.metric.as_deref().is_none_or(|m| m == name)
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }

    pub fn direction(&self) -> BreachDirection {
        if self.above.is_some() {
            BreachDirection::Above
        } else {
            BreachDirection::Below
        }
    }

    pub fn limit(&self) -> f64 {
        self.above.or(self.below).unwrap_or(f64::NAN)
    }

    fn beyond(&self, v: f64) -> bool {
        match self.direction() {
            BreachDirection::Above => v >= self.limit(),
            BreachDirection::Below => v <= self.limit(),
        }
    }

    /// Where `steps` cross the limit: the first step whose trigger crosses (`None`: no
    /// breach predicted), the first step whose far bound crosses, and the first whose
    /// point forecast does.
    pub fn crossing(&self, steps: &[Step]) -> Option<Crossing> {
        let far = |s: &Step| match self.direction() {
            BreachDirection::Above => s.upper,
            BreachDirection::Below => s.lower,
        };
        let earliest = steps.iter().position(|s| self.beyond(far(s)));
        let eta = steps.iter().position(|s| self.beyond(s.yhat));
        let fires = match self.trigger {
            Trigger::Interval => earliest,
            Trigger::Forecast => eta,
        };
        fires.map(|_| Crossing {
            earliest: earliest.unwrap_or(0),
            eta,
        })
    }
}

/// Steps (from the forecast's start) at which a breach is plausible and expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    pub earliest: usize,
    pub eta: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(above: Option<f64>, below: Option<f64>, trigger: Trigger) -> Threshold {
        Threshold {
            name: "disk".into(),
            metric: Some("disk_used".into()),
            labels: [("host".to_string(), "db1".to_string())].into(),
            above,
            below,
            trigger,
            severity: Severity::Warning,
        }
    }

    fn steps(yhat: &[f64], half: f64) -> Vec<Step> {
        yhat.iter()
            .map(|y| Step {
                yhat: *y,
                lower: y - half,
                upper: y + half,
            })
            .collect()
    }

    #[test]
    fn a_rule_watches_its_metric_and_labels() {
        let r = rule(Some(90.0), None, Trigger::Interval);
        let db1: Labels = [("host".to_string(), "db1".to_string())].into();
        let db2: Labels = [("host".to_string(), "db2".to_string())].into();
        assert!(r.matches("disk_used", &db1));
        assert!(!r.matches("disk_used", &db2));
        assert!(!r.matches("cpu", &db1));
        assert!(r.validate().is_ok());
        assert!(rule(None, None, Trigger::Interval).validate().is_err());
        assert!(
            rule(Some(1.0), Some(0.0), Trigger::Interval)
                .validate()
                .is_err()
        );
        assert!(
            rule(Some(f64::NAN), None, Trigger::Interval)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_interval_fires_before_the_forecast_and_both_are_reported() {
        let s = steps(&[80.0, 84.0, 88.0, 92.0, 96.0], 5.0);
        // Upper bounds 85, 89, 93, ...: plausible from step 2, expected at step 3.
        let c = rule(Some(90.0), None, Trigger::Interval)
            .crossing(&s)
            .unwrap();
        assert_eq!(
            c,
            Crossing {
                earliest: 2,
                eta: Some(3)
            }
        );
        let c = rule(Some(90.0), None, Trigger::Forecast)
            .crossing(&s)
            .unwrap();
        assert_eq!(c.eta, Some(3));
        // Only the bound crosses: the interval trigger fires without an ETA; the forecast
        // trigger does not fire.
        let s = steps(&[80.0, 84.0, 86.0], 5.0);
        assert_eq!(
            rule(Some(90.0), None, Trigger::Interval).crossing(&s),
            Some(Crossing {
                earliest: 2,
                eta: None
            })
        );
        assert_eq!(rule(Some(90.0), None, Trigger::Forecast).crossing(&s), None);
        // Below: the lower bound.
        let s = steps(&[20.0, 15.0, 11.0, 8.0], 2.0);
        let c = rule(None, Some(10.0), Trigger::Interval)
            .crossing(&s)
            .unwrap();
        assert_eq!(
            c,
            Crossing {
                earliest: 2,
                eta: Some(3)
            }
        );
    }
}
