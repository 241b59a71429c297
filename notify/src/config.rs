//! The `[notify]` section: receivers, routes by label matchers, and timing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where PagerDuty's Events API v2 takes events.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Notification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Base URL of the API as people reach it; pages link to
    /// `{external_url}/api/v1/incidents/{id}`.
    pub external_url: String,
    /// How long a new incident waits before its first page, in seconds, so that the
    /// signals of one fault arriving together page once with the settled root cause.
    pub group_wait_secs: u64,
    /// Least time between two pages about one incident to one receiver for updates
    /// (escalations), in seconds. Acknowledgements and resolutions go at once.
    pub group_interval_secs: u64,
    /// A still-open, unacknowledged incident is paged again after this long, in seconds;
    /// 0 never repeats.
    pub repeat_interval_secs: u64,
    /// Longest wait for one HTTP answer, in milliseconds.
    pub timeout_ms: u64,
    /// How long one notification is retried (429, 5xx, no answer) before it is recorded
    /// as failed, in seconds. Retry-After is honoured within it.
    pub retry_for_secs: u64,
    /// The receivers, by name.
    pub receivers: Vec<ReceiverConfig>,
    /// Routes, tried in order: an incident goes to the receivers of the first route whose
    /// matchers all hold (and of later ones while a matching route says `continue`).
    pub routes: Vec<RouteConfig>,
    /// Receivers of incidents no route matches.
    pub default_receivers: Vec<String>,
    /// Inhibition: while an open incident matches a rule's source, new pages about
    /// incidents matching its target (with equal values of the `equal` labels) are held.
    pub inhibit_rules: Vec<InhibitRule>,
}

/// One inhibition rule, as Alertmanager has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    pub source_matchers: Vec<String>,
    pub target_matchers: Vec<String>,
    /// Labels that must have the same value on both (e.g. `tenant`, `service`).
    #[serde(default)]
    pub equal: Vec<String>,
}

/// Whether every matcher holds on `labels` (matchers that do not parse never hold).
pub fn all_match(matchers: &[String], labels: &BTreeMap<String, String>) -> bool {
    matchers
        .iter()
        .all(|m| Matcher::parse(m).is_ok_and(|m| m.matches(labels)))
}

impl InhibitRule {
    /// Whether `source` (an open incident's labels) inhibits `target`. An incident never
    /// inhibits itself: the caller leaves it out of the sources.
    pub fn inhibits(
        &self,
        source: &BTreeMap<String, String>,
        target: &BTreeMap<String, String>,
    ) -> bool {
        all_match(&self.source_matchers, source)
            && all_match(&self.target_matchers, target)
            && self.equal.iter().all(|l| source.get(l) == target.get(l))
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            external_url: "http://127.0.0.1:8080".into(),
            group_wait_secs: 30,
            group_interval_secs: 300,
            repeat_interval_secs: 4 * 3600,
            timeout_ms: 10_000,
            retry_for_secs: 120,
            receivers: Vec::new(),
            routes: Vec::new(),
            default_receivers: Vec::new(),
            inhibit_rules: Vec::new(),
        }
    }
}

/// What kind of endpoint a receiver is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// PagerDuty Events API v2: trigger, acknowledge and resolve keyed by incident id.
    Pagerduty,
    /// A Slack incoming webhook: one Block Kit message per page.
    Slack,
    /// Any HTTP endpoint: the change as JSON, signed with HMAC-SHA256.
    Webhook,
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ReceiverKind,
    /// Endpoint; PagerDuty's defaults to its Events API.
    #[serde(default)]
    pub url: Option<String>,
    /// PagerDuty integration (routing) key, or the environment variable holding it.
    #[serde(default)]
    pub routing_key: Option<String>,
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Webhook signing secret, or the environment variable holding it.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `name=value` or `name!=value`, all of which must hold. Names: `tenant`,
    /// `severity`, `root_cause` (the top candidate's service) and the incident's scope
    /// labels (`service` matches any of the incident's services).
    #[serde(default)]
    pub matchers: Vec<String>,
    pub receivers: Vec<String>,
    /// Go on to later routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

/// A parsed matcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    pub negate: bool,
}

impl Matcher {
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let (name, value, negate) = if let Some((n, v)) = s.split_once("!=") {
            (n, v, true)
        } else if let Some((n, v)) = s.split_once('=') {
            (n, v, false)
        } else {
            return Err(format!("matcher {s:?} is not name=value or name!=value"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("matcher {s:?} has no label name"));
        }
        Ok(Matcher {
            name: name.to_string(),
            value: value.trim().trim_matches('"').to_string(),
            negate,
        })
    }

    /// Whether the labels satisfy it. A label's value may list several, comma-separated
    /// (an incident's services); `=` holds when any is the value, `!=` when none is.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let any = labels
            .get(&self.name)
            .is_some_and(|v| v.split(',').any(|x| x.trim() == self.value));
        any != self.negate
    }
}

/// A receiver's secrets resolved from the configuration and the environment.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub kind: ReceiverKind,
    pub url: String,
    pub routing_key: Option<String>,
    pub secret: Option<String>,
}

fn from_env(
    direct: &Option<String>,
    env: &Option<String>,
    what: &str,
) -> Result<Option<String>, String> {
    match (direct, env) {
        (Some(v), _) => Ok(Some(v.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("{what}: environment variable {var} is not set")),
        (None, None) => Ok(None),
    }
}

impl NotifyConfig {
    /// Checks names, references and secrets; returns the receivers ready to use.
    pub fn resolve(&self) -> Result<Vec<Resolved>, String> {
        let mut out: Vec<Resolved> = Vec::new();
        for r in &self.receivers {
            if out.iter().any(|o| o.name == r.name) {
                return Err(format!("notify: receiver {:?} is defined twice", r.name));
            }
            let what = format!("notify receiver {:?}", r.name);
            let url = match (r.kind, &r.url) {
                (_, Some(u)) => u.clone(),
                (ReceiverKind::Pagerduty, None) => PAGERDUTY_EVENTS_URL.into(),
                (_, None) => return Err(format!("{what} needs a url")),
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{what}: url {url:?} is not http(s)"));
            }
            let routing_key = from_env(&r.routing_key, &r.routing_key_env, &what)?;
            if r.kind == ReceiverKind::Pagerduty && routing_key.is_none() {
                return Err(format!("{what} needs routing_key or routing_key_env"));
            }
            let secret = from_env(&r.secret, &r.secret_env, &what)?;
            out.push(Resolved {
                name: r.name.clone(),
                kind: r.kind,
                url,
                routing_key,
                secret,
            });
        }
        let known = |n: &String| out.iter().any(|o| &o.name == n);
        for (i, route) in self.routes.iter().enumerate() {
            for m in &route.matchers {
                Matcher::parse(m).map_err(|e| format!("notify route {}: {e}", i + 1))?;
            }
            if let Some(n) = route.receivers.iter().find(|n| !known(n)) {
                return Err(format!("notify route {}: no receiver named {n:?}", i + 1));
            }
        }
        for (i, rule) in self.inhibit_rules.iter().enumerate() {
            for m in rule.source_matchers.iter().chain(&rule.target_matchers) {
                Matcher::parse(m).map_err(|e| format!("notify inhibit rule {}: {e}", i + 1))?;
            }
        }
        if let Some(n) = self.default_receivers.iter().find(|n| !known(n)) {
            return Err(format!("notify default_receivers: no receiver named {n:?}"));
        }
        Ok(out)
    }

    /// The receivers an incident with `labels` goes to.
    pub fn route(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut matched = false;
        for route in &self.routes {
            if all_match(&route.matchers, labels) {
                matched = true;
                for r in &route.receivers {
                    if !out.contains(r) {
                        out.push(r.clone());
                    }
                }
                if !route.continue_matching {
                    break;
                }
            }
        }
        if !matched {
            out = self.default_receivers.clone();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cfg() -> NotifyConfig {
        let recv = |name: &str, kind| ReceiverConfig {
            name: name.into(),
            kind,
            url: Some("http://127.0.0.1:1/x".into()),
            routing_key: (kind == ReceiverKind::Pagerduty).then(|| "k".to_string()),
            routing_key_env: None,
            secret: None,
            secret_env: None,
        };
        NotifyConfig {
            receivers: vec![
                recv("pd", ReceiverKind::Pagerduty),
                recv("slack", ReceiverKind::Slack),
                recv("hook", ReceiverKind::Webhook),
            ],
            routes: vec![
                RouteConfig {
                    matchers: vec!["severity=critical".into(), "service=checkout".into()],
                    receivers: vec!["pd".into()],
                    continue_matching: true,
                },
                RouteConfig {
                    matchers: vec!["tenant!=sandbox".into()],
                    receivers: vec!["slack".into()],
                    continue_matching: false,
                },
            ],
            default_receivers: vec!["hook".into()],
            ..Default::default()
        }
    }

    #[test]
    fn routes_match_in_order_with_continue_and_a_default() {
        let c = cfg();
        c.resolve().unwrap();
        let crit = labels(&[
            ("tenant", "t"),
            ("severity", "critical"),
            ("service", "cart,checkout"),
        ]);
        assert_eq!(c.route(&crit), vec!["pd", "slack"]);
        let warn = labels(&[
            ("tenant", "t"),
            ("severity", "warning"),
            ("service", "checkout"),
        ]);
        assert_eq!(c.route(&warn), vec!["slack"]);
        let sandbox = labels(&[("tenant", "sandbox"), ("severity", "warning")]);
        assert_eq!(c.route(&sandbox), vec!["hook"]);
    }

    #[test]
    fn inhibition_needs_source_target_and_equal_labels() {
        let rule = InhibitRule {
            source_matchers: vec!["severity=critical".into()],
            target_matchers: vec!["severity=warning".into()],
            equal: vec!["tenant".into()],
        };
        let crit = labels(&[("tenant", "t"), ("severity", "critical")]);
        let warn = labels(&[("tenant", "t"), ("severity", "warning")]);
        let other = labels(&[("tenant", "u"), ("severity", "warning")]);
        assert!(rule.inhibits(&crit, &warn));
        assert!(!rule.inhibits(&crit, &other), "equal labels differ");
        assert!(!rule.inhibits(&warn, &warn), "not a source");
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let mut c = cfg();
        c.routes[0].receivers.push("nobody".into());
        assert!(
            c.resolve()
                .unwrap_err()
                .contains("no receiver named \"nobody\"")
        );
        let mut c = cfg();
        c.receivers[0].routing_key = None;
        assert!(c.resolve().unwrap_err().contains("routing_key"));
        let mut c = cfg();
        c.receivers[1].url = Some("ftp://x".into());
        assert!(c.resolve().unwrap_err().contains("not http"));
        let mut c = cfg();
        c.routes[1].matchers = vec!["severity".into()];
        assert!(c.resolve().unwrap_err().contains("not name=value"));
        let mut c = cfg();
        c.receivers[2].secret_env = Some("SEISMO_TEST_SURELY_UNSET_VAR".into());
        assert!(c.resolve().unwrap_err().contains("is not set"));
    }
}
