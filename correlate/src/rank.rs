//! Root-cause ranking: a pure function from per-metric change evidence and the service graph to ranked candidates.
//!
//! Two questions are kept apart. [`change`] asks of one series "how unusual is what happened
//! around time T, compared with this series' own recent behaviour?"; [`rank`] asks "given
//! how much each service's metrics changed, which service best explains the rest?".
//!
//! **Change size.** Anomaly scores saturate near 1 during a real fault, so they cannot rank.
//! Instead each series is measured on a log scale (a latency going from 5 ms to 50 ms and
//! from 0.5 s to 5 s are the same-sized event) against the median and MAD of its baseline,
//! with a floor of 0.1 on the scale (a ±10 % wobble is never a big event). A fault lasts
//! minutes, so the statistic is the second-largest deviation in the window after the onset:
//! one odd sample (histogram-bucket outliers, a scrape glitch) cannot win. Series differ in
//! how jumpy they are, so the statistic is then divided by the 90th percentile of the same
//! statistic over equally long windows of the baseline: a series that routinely jumps must
//! jump further to count. The result is unit-free and comparable across metrics and
//! services; 1 means "as unusual as this series' ordinary bad minutes".
//!
//! **Explaining away along the graph** (in the spirit of the propagation-based methods
//! MicroRCA, RCD and BARO's ranking stage). A service's server latency includes the time its
//! callees take, so a rise that a callee's own rise (in server latency or resource use), or
//! the service's own client latency, matches is not counted against the caller. A rise in a caller's *client* latency that no
//! callee's server latency explains is delay on the way to a callee (a network fault shows
//! in the callers' latencies, not in the faulty pod's own), so it is credited to the
//! callees. A server latency that *falls* (a service failing fast or returning early)
//! counts for its own service at [`FALL_WEIGHT`], less any fall of its callees'.
//! Resource use and error or success rates count for their own service. When a
//! symptom service is named, only it and the services it (transitively) calls can be the
//! cause.

use std::collections::{BTreeMap, BTreeSet};

use seismo_schemas::RootCauseCandidate;
use serde::{Deserialize, Serialize};

/// How a metric reads, from its name: what kind of quantity it is and which direction is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricRole {
    /// CPU, memory, disk, saturation: counts for its own service.
    Resource,
    /// Time to serve requests: includes the time of the services called.
    ServerLatency,
    /// Time waiting on called services (client side).
    ClientLatency,
    /// Errors or failures: higher is worse.
    Errors,
    /// Success rate or availability: lower is worse.
    Success,
    /// Anything else: a change either way counts.
    Other,
}

impl MetricRole {
    /// The role a metric's name suggests. Matching is on lowercase words, so
    /// `PodServerLatencyP90(s)`, `http_request_duration_seconds` and `cpu_usage` all read as
    /// expected; `[correlate.metric_roles]` overrides it for names that mislead.
    pub fn of(name: &str) -> MetricRole {
        let n = name.to_ascii_lowercase();
        let has = |w: &[&str]| w.iter().any(|w| n.contains(w));
        if has(&["success", "availability", "apdex", "uptime"]) {
            MetricRole::Success
        } else if has(&["error", "fail", "5xx", "reject", "timeout"]) {
            MetricRole::Errors
        } else if has(&["latency", "duration", "response_time", "rtt", "wait"]) {
            if has(&["client", "outbound", "upstream"]) {
                MetricRole::ClientLatency
            } else {
                MetricRole::ServerLatency
            }
        } else if has(&[
            "cpu",
            "mem",
            "disk",
            "iowait",
            "load",
            "saturation",
            "throttl",
            "gc_",
            "heap",
        ]) {
            MetricRole::Resource
        } else {
            MetricRole::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricRole::Resource => "resource",
            MetricRole::ServerLatency => "server_latency",
            MetricRole::ClientLatency => "client_latency",
            MetricRole::Errors => "errors",
            MetricRole::Success => "success",
            MetricRole::Other => "other",
        }
    }
}

/// Where to look: the onset and the data's resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// The suspected onset, epoch milliseconds.
    pub at_ms: i64,
    /// The data's sampling interval, milliseconds.
    pub bucket_ms: i64,
    /// Buckets of baseline before the onset.
    pub before: i64,
    /// Buckets after the onset in which the change is sought.
    pub after: i64,
}

impl Window {
    /// An hour of baseline and five buckets after, at `bucket_ms` resolution: long enough to
    /// know a series' ordinary behaviour, short enough that yesterday's traffic shape does
    /// not matter, and a fault of a few minutes fills most of the after window.
    pub fn around(at_ms: i64, bucket_ms: i64) -> Window {
        let bucket_ms = bucket_ms.max(1);
        Window {
            at_ms,
            bucket_ms,
            before: (3_600_000 / bucket_ms).clamp(12, 720),
            after: 5,
        }
    }

    /// The span of data the window reads, [from, to).
    pub fn span(&self) -> (i64, i64) {
        (
            self.at_ms - self.before * self.bucket_ms,
            self.at_ms + (self.after + 1) * self.bucket_ms,
        )
    }
}

/// How much one series changed around the onset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Unit-free size of the change; 1 is as unusual as the series' ordinary bad minutes,
    /// 0 or less is nothing.
    pub size: f64,
    /// Median of the baseline, in the metric's unit.
    pub before: f64,
    /// The value that made the change (second-most extreme after the onset).
    pub after: f64,
    /// When the series first went past its ordinary range, epoch ms.
    pub onset_ms: Option<i64>,
}

/// Fewer baseline samples than this and a change is not measured: a median and MAD of a
/// handful of points say little.
const MIN_BASELINE: usize = 8;
/// A fault shows in at least this many samples; the k-th largest deviation is the statistic.
const SUSTAINED: usize = 2;
/// Smallest scale on the log axis: a 10 % change is one unit of deviation at most.
const LOG_FLOOR: f64 = 0.1;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn kth_largest(v: &[f64], k: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[(k.min(s.len()) - 1).min(s.len() - 1)]
}

/// The change of one series (points sorted by time, epoch ms) around `w.at_ms`, read as
/// `role` says. `None` when there is too little data before or after.
pub fn change(points: &[(i64, f64)], w: &Window, role: MetricRole) -> Option<Change> {
    let from = w.at_ms - w.before * w.bucket_ms;
    // The bucket just before the onset belongs to the after window: stated onsets are
    // often a sample late.
    let cut = w.at_ms - w.bucket_ms;
    let end = w.at_ms + w.after * w.bucket_ms;
    let before: Vec<f64> = points
        .iter()
        .filter(|(t, v)| *t >= from && *t < cut && v.is_finite())
        .map(|p| p.1)
        .collect();
    let after: Vec<(i64, f64)> = points
        .iter()
        .filter(|(t, v)| *t >= cut && *t <= end && v.is_finite())
        .copied()
        .collect();
    if before.len() < MIN_BASELINE || after.len() < SUSTAINED {
        return None;
    }
    let level = median(&mut before.iter().map(|v| v.abs()).collect::<Vec<_>>());
    // A unit-free offset keeps log() finite at zero and stops changes among tiny values
    // (0.001 → 0.004) from reading as huge.
    let eps = 0.1 * level + 1e-9;
    let directions: &[f64] = match role {
        MetricRole::Success => &[-1.0],
        MetricRole::Other => &[1.0, -1.0],
        _ => &[1.0],
    };
    let mut best: Option<Change> = None;
    for &sign in directions {
        let f = |v: f64| sign * (v.max(0.0) + eps).ln();
        let lb: Vec<f64> = before.iter().map(|&v| f(v)).collect();
        let m = median(&mut lb.clone());
        let mad = median(&mut lb.iter().map(|x| (x - m).abs()).collect::<Vec<_>>());
        let scale = (1.4826 * mad).max(LOG_FLOOR);
        let z = |x: f64| (x - m) / scale;
        let za: Vec<f64> = after.iter().map(|&(_, v)| z(f(v))).collect();
        let stat = kth_largest(&za, SUSTAINED);
        // The same statistic over the baseline's own windows: how jumpy is this series?
        let wlen = after.len().min(lb.len());
        let mut nulls: Vec<f64> = lb
            .windows(wlen)
            .map(|win| kth_largest(&win.iter().map(|&x| z(x)).collect::<Vec<_>>(), SUSTAINED))
            .collect();
        nulls.sort_by(f64::total_cmp);
        let q90 = nulls[((nulls.len() - 1) as f64 * 0.9) as usize];
        let size = stat / q90.max(1.0);
        let norm = q90.max(1.0);
        let onset_ms = after
            .iter()
            .zip(&za)
            .find(|(_, z)| **z > norm)
            .map(|((t, _), _)| *t);
        let after_value = {
            let mut idx: Vec<usize> = (0..za.len()).collect();
            idx.sort_by(|&a, &b| za[b].total_cmp(&za[a]));
            after[idx[(SUSTAINED - 1).min(idx.len() - 1)]].1
        };
        let c = Change {
            size,
            before: median(&mut before.clone()),
            after: after_value,
            onset_ms,
        };
        if best.as_ref().is_none_or(|b| c.size > b.size) {
            best = Some(c);
        }
    }
    best
}

/// One measured series of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub service: String,
    pub metric: String,
    pub role: MetricRole,
    pub change: Change,
    /// A server latency that fell: the service answers faster than its ordinary range
    /// (see [`FALL_WEIGHT`]). Every other evidence is a change in the bad direction.
    #[serde(default)]
    pub falling: bool,
}

/// How much a fall in a service's server latency counts, against a rise of the same size.
/// A service that suddenly answers faster than it ever does while what it calls did not
/// (returning early, failing fast, dropping work: code faults, and some network faults
/// whose callers give up) has changed, so it is evidence against it; but less traffic
/// also looks like that, and most faults slow things down, so a fall counts half. On the
/// shared microservice cases, a weight of 0.25, 0.5, 0.75 or 1 each beat leaving falls
/// out on both systems (Online Boutique AC@1 on all cases 0.52 → 0.54–0.55, Train Ticket
/// 0.13 → 0.13–0.16), and 0.5 was best or tied on each system alone.
pub const FALL_WEIGHT: f64 = 0.5;

/// The service dependency graph: who calls whom.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    callees: BTreeMap<String, BTreeSet<String>>,
    callers: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    /// From `{service: [services it calls]}`, as `[correlate.dependencies]` holds it.
    pub fn new(calls: &BTreeMap<String, Vec<String>>) -> Graph {
        let mut g = Graph::default();
        for (from, tos) in calls {
            g.callees.entry(from.clone()).or_default();
            for to in tos {
                g.callees
                    .entry(from.clone())
                    .or_default()
                    .insert(to.clone());
                g.callers
                    .entry(to.clone())
                    .or_default()
                    .insert(from.clone());
            }
        }
        g
    }

    pub fn is_empty(&self) -> bool {
        self.callees.values().all(BTreeSet::is_empty)
    }

    pub fn callees(&self, s: &str) -> impl Iterator<Item = &String> {
        self.callees.get(s).into_iter().flatten()
    }

    pub fn callers(&self, s: &str) -> impl Iterator<Item = &String> {
        self.callers.get(s).into_iter().flatten()
    }

    /// `s` and every service it calls, directly or not.
    pub fn reachable_from(&self, s: &str) -> BTreeSet<String> {
        let mut seen: BTreeSet<String> = [s.to_string()].into();
        let mut stack = vec![s.to_string()];
        while let Some(x) = stack.pop() {
            for c in self.callees(&x) {
                if seen.insert(c.clone()) {
                    stack.push(c.clone());
                }
            }
        }
        seen
    }

    /// Services nobody calls that call someone: the user-facing entry points.
    pub fn entry_points(&self) -> Vec<String> {
        self.callees
            .iter()
            .filter(|(s, c)| !c.is_empty() && !self.callers.contains_key(*s))
            .map(|(s, _)| s.clone())
            .collect()
    }
}

/// The strongest change of each role (and direction) on each service.
type Strongest<'a> = BTreeMap<&'a str, BTreeMap<(MetricRole, bool), &'a Evidence>>;

fn strongest(evidence: &[Evidence]) -> Strongest<'_> {
    let mut out: Strongest<'_> = BTreeMap::new();
    for e in evidence {
        let slot = out
            .entry(&e.service)
            .or_default()
            .entry((e.role, e.falling))
            .or_insert(e);
        if e.change.size > slot.change.size {
            *slot = e;
        }
    }
    out
}

fn describe(e: &Evidence) -> String {
    let times = if e.change.before.abs() > 1e-12 {
        format!(" ({:.3}×)", e.change.after / e.change.before)
    } else {
        String::new()
    };
    format!(
        "{} went from {} to {}{times}, change size {:.1}",
        e.metric,
        short(e.change.before),
        short(e.change.after),
        e.change.size
    )
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3e}")
    }
}

type Scored<'a> = BTreeMap<&'a str, (f64, Vec<String>)>;

/// Raises service `s`'s score to `v` (never lowers it), keeping why.
fn raise<'a>(score: &mut Scored<'a>, by: &Strongest<'a>, s: &str, v: f64, why: String) {
    // Only services with measured series are candidates.
    let Some(key) = by.get_key_value(s).map(|(k, _)| *k) else {
        return;
    };
    let slot = score.entry(key).or_insert((0.0, Vec::new()));
    if v > slot.0 {
        slot.0 = v;
    }
    if v > 0.0 {
        slot.1.push(why);
    }
}

/// Ranks services as the cause of the changes in `evidence` (see the module docs). With
/// `symptom`, only it and what it calls are candidates. Every service with evidence gets a
/// candidate; the caller truncates.
pub fn rank(
    graph: &Graph,
    evidence: &[Evidence],
    symptom: Option<&str>,
) -> Vec<RootCauseCandidate> {
    let by = strongest(evidence);
    let size_of = |s: &str, r: MetricRole, falling: bool| -> f64 {
        by.get(s)
            .and_then(|m| m.get(&(r, falling)))
            .map(|e| e.change.size.max(0.0))
            .unwrap_or(0.0)
    };
    let size = |s: &str, r: MetricRole| size_of(s, r, false);
    let mut score: Scored<'_> = BTreeMap::new();
    for (&s, roles) in &by {
        score.entry(s).or_insert((0.0, Vec::new()));
        // What the callees' own rises account for.
        let down = graph
            .callees(s)
            .map(|d| size(d, MetricRole::ServerLatency).max(size(d, MetricRole::Resource)))
            .fold(0.0, f64::max);
        // Server latency is the service's own time plus its waiting on calls (its client
        // latency): the part its client latency matches is not its own either.
        let waiting = down.max(size(s, MetricRole::ClientLatency));
        for (&(role, falling), e) in roles {
            let v = e.change.size.max(0.0);
            if falling {
                // Faster answers that no callee's own fall accounts for.
                let callees_fell = graph
                    .callees(s)
                    .map(|d| size_of(d, MetricRole::ServerLatency, true))
                    .fold(0.0, f64::max);
                let own = FALL_WEIGHT * (v - callees_fell).max(0.0);
                raise(
                    &mut score,
                    &by,
                    s,
                    own,
                    format!("{}: it answers faster than usual", describe(e)),
                );
                continue;
            }
            match role {
                MetricRole::Resource
                | MetricRole::Errors
                | MetricRole::Success
                | MetricRole::Other => raise(&mut score, &by, s, v, describe(e)),
                MetricRole::ServerLatency => {
                    let own = (v - waiting).max(0.0);
                    let why = if waiting > 0.0 {
                        format!(
                            "{}; {:.1} of it not explained by what it calls",
                            describe(e),
                            own
                        )
                    } else {
                        describe(e)
                    };
                    raise(&mut score, &by, s, own, why);
                }
                MetricRole::ClientLatency => {
                    // Slower calls that no callee's own latency explains: the delay is on the
                    // way to a callee. Slightly below a callee's own evidence of equal size.
                    let net = 0.99 * (v - down).max(0.0);
                    for d in graph.callees(s) {
                        raise(
                            &mut score,
                            &by,
                            d,
                            net,
                            format!(
                                "its caller {s}: {} while {d}'s own latency did not rise as much",
                                describe(e)
                            ),
                        );
                    }
                }
            }
        }
    }
    let allowed = symptom
        .filter(|_| !graph.is_empty())
        .map(|s| graph.reachable_from(s));
    let mut out: Vec<RootCauseCandidate> = score
        .into_iter()
        .filter(|(s, _)| allowed.as_ref().is_none_or(|a| a.contains(*s)))
        .map(|(s, (v, mut why))| {
            why.sort();
            why.dedup();
            if why.is_empty() {
                why.push("no metric of it changed beyond its ordinary range".into());
            }
            RootCauseCandidate {
                target: s.to_string(),
                // Map [0, ∞) onto [0, 1): 1 (an ordinary bad minute) is 0.5.
                score: v / (1.0 + v),
                evidence: why,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.target.cmp(&b.target))
    });
    out
}

/// One series to investigate: its service, metric name and points (epoch ms, sorted).
#[derive(Debug, Clone)]
pub struct SeriesData {
    pub service: String,
    pub metric: String,
    pub points: Vec<(i64, f64)>,
}

/// The sampling interval of `series`: the median spacing of consecutive samples, to the
/// second (a minute when nothing tells).
pub fn sampling_interval(series: &[SeriesData]) -> i64 {
    let mut gaps: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.windows(2).map(|w| w[1].0 - w[0].0))
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return 60_000;
    }
    gaps.sort_unstable();
    ((gaps[gaps.len() / 2] + 500) / 1000 * 1000).max(1000)
}

/// Measures every series around the window and ranks the services.
pub fn investigate(
    graph: &Graph,
    series: &[SeriesData],
    w: &Window,
    symptom: Option<&str>,
    roles: &BTreeMap<String, MetricRole>,
) -> Vec<RootCauseCandidate> {
    let evidence: Vec<Evidence> = series
        .iter()
        .flat_map(|s| {
            let role = roles
                .get(&s.metric)
                .copied()
                .unwrap_or_else(|| MetricRole::of(&s.metric));
            let rise = change(&s.points, w, role).map(|c| Evidence {
                service: s.service.clone(),
                metric: s.metric.clone(),
                role,
                change: c,
                falling: false,
            });
            // A server latency is also measured falling (Success reads "lower is worse").
            let fall = (role == MetricRole::ServerLatency)
                .then(|| change(&s.points, w, MetricRole::Success))
                .flatten()
                .map(|c| Evidence {
                    service: s.service.clone(),
                    metric: s.metric.clone(),
                    role,
                    change: c,
                    falling: true,
                });
            rise.into_iter().chain(fall)
        })
        .collect();
    rank(graph, &evidence, symptom)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// A noisy baseline around `level` with a step to `level * factor` from minute 60 for
    /// `len` minutes; deterministic wobble.
    fn series(level: f64, factor: f64, len: i64) -> Vec<(i64, f64)> {
        (0..75)
            .map(|i| {
                let wobble = 1.0 + 0.05 * (((i * 7919) % 13) as f64 / 13.0 - 0.5);
                let f = if (60..60 + len).contains(&i) {
                    factor
                } else {
                    1.0
                };
                (i * MIN, level * wobble * f)
            })
            .collect()
    }

    fn w() -> Window {
        Window::around(60 * MIN, MIN)
    }

    #[test]
    fn roles_come_from_names() {
        assert_eq!(MetricRole::of("CpuUsageRate(%)"), MetricRole::Resource);
        assert_eq!(
            MetricRole::of("PodServerLatencyP90(s)"),
            MetricRole::ServerLatency
        );
        assert_eq!(
            MetricRole::of("PodClientLatencyP90(s)"),
            MetricRole::ClientLatency
        );
        assert_eq!(MetricRole::of("SuccessRate(%)"), MetricRole::Success);
        assert_eq!(MetricRole::of("http_errors_total"), MetricRole::Errors);
        assert_eq!(MetricRole::of("queue_length"), MetricRole::Other);
    }

    #[test]
    fn a_sustained_step_is_a_change_and_one_spike_is_not() {
        let step = change(&series(5.0, 10.0, 3), &w(), MetricRole::Resource).unwrap();
        assert!(step.size > 5.0, "{step:?}");
        assert_eq!(step.onset_ms, Some(60 * MIN));
        let spike = change(&series(5.0, 10.0, 1), &w(), MetricRole::Resource).unwrap();
        assert!(spike.size < 1.0, "{spike:?}");
        let drop = change(&series(100.0, 0.5, 3), &w(), MetricRole::Success).unwrap();
        assert!(drop.size > 1.0, "{drop:?}");
        let up = change(&series(100.0, 0.5, 3), &w(), MetricRole::Resource).unwrap();
        assert!(up.size < 0.5, "a fall is no rise: {up:?}");
    }

    #[test]
    fn a_series_that_always_jumps_must_jump_further() {
        // Every seventh minute doubles: a doubling after the onset is ordinary for it.
        let mut jumpy: Vec<(i64, f64)> = (0..75)
            .map(|i| (i * MIN, if i % 7 < 2 { 10.0 } else { 5.0 }))
            .collect();
        for p in &mut jumpy[60..63] {
            p.1 = 10.0;
        }
        let calm = change(&series(5.0, 2.0, 3), &w(), MetricRole::Resource).unwrap();
        let j = change(&jumpy, &w(), MetricRole::Resource).unwrap();
        assert!(j.size < calm.size / 2.0, "jumpy {j:?} calm {calm:?}");
    }

    fn graph() -> Graph {
        Graph::new(&BTreeMap::from([
            (
                "front".to_string(),
                vec!["cart".to_string(), "ads".to_string()],
            ),
            ("cart".to_string(), vec!["db".to_string()]),
            ("ads".to_string(), vec![]),
            ("db".to_string(), vec![]),
            ("batch".to_string(), vec![]),
        ]))
    }

    fn ev(service: &str, metric: &str, factor: f64) -> SeriesData {
        SeriesData {
            service: service.into(),
            metric: metric.into(),
            points: series(1.0, factor, 4),
        }
    }

    #[test]
    fn latency_that_a_callee_explains_goes_to_the_callee() {
        // db is CPU-starved; cart and front are slow because they wait on it.
        let data = vec![
            ev("db", "cpu", 20.0),
            ev("db", "server_latency", 8.0),
            ev("cart", "server_latency", 8.0),
            ev("front", "server_latency", 8.0),
            ev("ads", "cpu", 1.0),
            ev("ads", "server_latency", 1.0),
        ];
        let r = investigate(&graph(), &data, &w(), Some("front"), &BTreeMap::new());
        assert_eq!(r[0].target, "db", "{r:#?}");
        assert!(r[0].evidence.iter().any(|e| e.contains("cpu")), "{r:#?}");
    }

    #[test]
    fn unexplained_client_latency_points_at_the_callee() {
        // A network delay on db: its own series are calm; cart waits on it.
        let data = vec![
            ev("db", "cpu", 1.0),
            ev("db", "server_latency", 1.0),
            ev("cart", "server_latency", 6.0),
            ev("cart", "client_latency", 6.0),
            ev("front", "server_latency", 1.5),
        ];
        let r = investigate(&graph(), &data, &w(), None, &BTreeMap::new());
        assert_eq!(r[0].target, "db", "{r:#?}");
    }

    #[test]
    fn a_service_that_answers_faster_than_ever_is_a_suspect() {
        // cart returns early (a code fault): its latency falls to a fifth, db's does not,
        // front's falls less. Without falls nothing here is evidence at all.
        let data = vec![
            ev("db", "server_latency", 1.0),
            ev("cart", "server_latency", 0.2),
            ev("front", "server_latency", 0.7),
            ev("ads", "server_latency", 1.0),
        ];
        let r = investigate(&graph(), &data, &w(), Some("front"), &BTreeMap::new());
        assert_eq!(r[0].target, "cart", "{r:#?}");
        assert!(r[0].score > 0.0, "{r:#?}");
        assert!(r[0].evidence.iter().any(|e| e.contains("faster")), "{r:#?}");
        // A fall its callee shares is the callee's: db falls as much as cart.
        let data = vec![
            ev("db", "server_latency", 0.2),
            ev("cart", "server_latency", 0.2),
            ev("front", "server_latency", 1.0),
        ];
        let r = investigate(&graph(), &data, &w(), Some("front"), &BTreeMap::new());
        assert_eq!(r[0].target, "db", "{r:#?}");
    }

    #[test]
    fn only_what_the_symptom_calls_can_cause_it() {
        let data = vec![ev("batch", "cpu", 50.0), ev("ads", "cpu", 5.0)];
        let with = investigate(&graph(), &data, &w(), Some("front"), &BTreeMap::new());
        assert_eq!(with[0].target, "ads");
        assert!(with.iter().all(|c| c.target != "batch"));
        let without = investigate(&graph(), &data, &w(), None, &BTreeMap::new());
        assert_eq!(without[0].target, "batch");
    }
}
