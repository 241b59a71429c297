//! Learned co-occurrence: which services go wrong together, for grouping when no dependency graph is configured.
//!
//! Without `[correlate.dependencies]`, anomalies of different services only meet in one
//! incident when they share a host, so one fault that slows five services opens five
//! incidents. This module learns the missing relation from the anomaly stream itself. Time
//! is cut into ticks of `group_wait_secs`; for every scope it counts, over all ticks seen,
//! in how many ticks each service had an anomaly (`n_a`) and in how many two services had
//! one together (`n_ab`). If the two went wrong independently, `n_ab` would be Poisson with
//! mean `n_a · n_b / N` (N ticks elapsed); two services are related when their joint count
//! is at least [`MIN_TOGETHER`] and that Poisson tail is below [`ALPHA`]. The test weighs
//! base rates, so a flapping service that is anomalous every other tick does not become
//! related to everything it happens to overlap with, while two quiet services that fail
//! together three times are.
//!
//! The first time two services fail together there is no history to learn from, so a
//! second rule covers the moment itself: a service that goes wrong while another is going
//! wrong (in the same tick, or `w` ticks after the other's first anomaly) is taken as part
//! of the same fault when, had the two been independent, fewer than [`RARE`] such
//! coincidences were to be expected over the ticks seen: `(n_a + 1)(n_b + 1) · w / (N + 1)`,
//! counting this one. In a quiet fleet that is any two services that start failing
//! together or soon after one another; where either is often anomalous, or the other has
//! been going wrong for long, a coincidence proves nothing and only the learned relation
//! counts.
//!
//! It learns who fails *with* whom, not who calls whom, so it serves grouping only; root
//! cause ranking without a graph uses each service's own evidence and onset.
//!
//! Memory is bounded: at most [`MAX_SERVICES`] services and [`MAX_PAIRS`] pairs per scope
//! (the least-seen are forgotten first), and a tick with more than [`MAX_TICK_SERVICES`]
//! anomalous services counts towards each service but adds no pairs (a fleet-wide event says
//! nothing about which two services belong together, and would cost n² pairs).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Fewest ticks two services must have gone wrong together before they count as related.
/// Two coincidences in a row are common in a large fleet; three with a tail below
/// [`ALPHA`] are not.
pub const MIN_TOGETHER: u32 = 3;
/// The Poisson tail below which a joint count is no coincidence. With a thousand candidate
/// pairs in a scope this keeps the chance of even one false relation near 10 %
/// (Bonferroni).
pub const ALPHA: f64 = 1e-4;
/// Expected chance coincidences below which two services going wrong in the same tick
/// is taken as one fault: the conventional 5 % significance level for a single pair.
pub const RARE: f64 = 0.05;
/// Most services remembered per scope.
pub const MAX_SERVICES: usize = 10_000;
/// Most pairs remembered per scope.
pub const MAX_PAIRS: usize = 50_000;
/// A tick with more anomalous services than this adds no pairs.
pub const MAX_TICK_SERVICES: usize = 64;

/// What is learned in one scope.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Scope {
    /// The tick being filled (`None` before the scope's first anomaly), and its anomalous
    /// services.
    tick: Option<i64>,
    current: BTreeSet<String>,
    /// Ticks in which each service had an anomaly.
    seen: BTreeMap<String, u32>,
    /// Ticks in which both services (ordered pair) had one.
    together: BTreeMap<(String, String), u32>,
}

impl Scope {
    fn close(&mut self) {
        let current = std::mem::take(&mut self.current);
        for s in &current {
            *self.seen.entry(s.clone()).or_default() += 1;
        }
        if current.len() <= MAX_TICK_SERVICES {
            let v: Vec<&String> = current.iter().collect();
            for (i, a) in v.iter().enumerate() {
                for b in &v[i + 1..] {
                    *self
                        .together
                        .entry(((*a).clone(), (*b).clone()))
                        .or_default() += 1;
                }
            }
        }
        forget_least(&mut self.seen, MAX_SERVICES);
        forget_least(&mut self.together, MAX_PAIRS);
    }
}

/// Drops the least-counted half of `m` above `cap`: amortised O(1) per insertion, and what
/// is kept is what was seen most.
fn forget_least<K: Ord + Clone>(m: &mut BTreeMap<K, u32>, cap: usize) {
    if m.len() <= cap {
        return;
    }
    let mut counts: Vec<u32> = m.values().copied().collect();
    counts.sort_unstable();
    let bar = counts[counts.len() - cap / 2];
    m.retain(|_, c| *c >= bar);
    if m.len() > cap {
        // Many ties at the bar: keep the first ones in key order.
        let keep: Vec<K> = m.keys().take(cap / 2).cloned().collect();
        m.retain(|k, _| keep.binary_search(k).is_ok());
    }
}

/// P(X ≥ k) for X ~ Poisson(λ), k ≥ 1.
fn poisson_tail(k: u32, lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    // 1 − P(X ≤ k − 1), summed in the log domain for large λ.
    let mut term = (-lambda).exp();
    let mut below = term;
    for i in 1..k {
        term *= lambda / i as f64;
        below += term;
    }
    (1.0 - below).max(0.0)
}

/// Learned co-occurrence of services, per scope (see the module docs).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CoOccurrence {
    tick_ms: i64,
    /// The first tick the stream showed (an anomaly or a watermark): N counts from it, so
    /// the quiet time before a scope's first anomaly counts as quiet.
    start: Option<i64>,
    /// The latest tick the stream showed.
    now: i64,
    scopes: BTreeMap<String, Scope>,
}

impl CoOccurrence {
    /// Counts in ticks of `tick_secs` (at least a second).
    pub fn new(tick_secs: u64) -> CoOccurrence {
        CoOccurrence {
            tick_ms: (tick_secs.max(1) * 1000) as i64,
            start: None,
            now: i64::MIN,
            scopes: BTreeMap::new(),
        }
    }

    fn tick_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.tick_ms.max(1))
    }

    /// Notes that the stream's event time reached `ts_ms` (a watermark).
    pub fn clock(&mut self, ts_ms: i64) {
        let tick = self.tick_of(ts_ms);
        self.start = Some(self.start.map_or(tick, |s| s.min(tick)));
        self.now = self.now.max(tick);
    }

    /// Notes that `service` had an anomaly at `ts_ms` (event time, non-decreasing per scope
    /// up to a tick; an older one counts in the current tick).
    pub fn observe(&mut self, scope: &str, service: &str, ts_ms: i64) {
        self.clock(ts_ms);
        let tick = self.tick_of(ts_ms);
        let sc = self.scopes.entry(scope.to_string()).or_default();
        match sc.tick {
            None => sc.tick = Some(tick),
            Some(t) if tick > t => {
                sc.close();
                sc.tick = Some(tick);
            }
            Some(_) => {}
        }
        if !sc.current.contains(service) {
            sc.current.insert(service.to_string());
        }
    }

    /// Ticks before the current one since the stream began (empty ones included).
    fn elapsed(&self) -> f64 {
        self.start.map_or(0.0, |s| (self.now - s).max(0) as f64)
    }

    /// Whether `a` and `b` have gone wrong together in `scope` more often than chance allows.
    pub fn related(&self, scope: &str, a: &str, b: &str) -> bool {
        let Some(sc) = self.scopes.get(scope) else {
            return false;
        };
        let key = if a < b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        };
        let Some(&k) = sc.together.get(&key) else {
            return false;
        };
        let n = self.elapsed();
        if k < MIN_TOGETHER || n == 0.0 {
            return false;
        }
        let na = sc.seen.get(a).copied().unwrap_or(0) as f64;
        let nb = sc.seen.get(b).copied().unwrap_or(0) as f64;
        poisson_tail(k, na * nb / n) < ALPHA
    }

    /// Whether `b` going wrong while `a` is (over `span_ms`, from `a`'s first anomaly to
    /// `b`'s) would be a rare coincidence if they were independent: fewer than [`RARE`] such
    /// coincidences were to be expected over the ticks seen, counting this one:
    /// `(n_a + 1)(n_b + 1) · w / (N + 1)` with `w` the span in ticks (at least one). In a
    /// quiet fleet, services that start failing together or soon after one another belong
    /// together; where either fails often, where the span is long, or where too little
    /// time has been seen to tell, only the learned relation counts.
    pub fn coincidence_is_rare(&self, scope: &str, a: &str, b: &str, span_ms: i64) -> bool {
        let sc = self.scopes.get(scope);
        let n = self.elapsed();
        let seen = |s: &str| f64::from(sc.and_then(|sc| sc.seen.get(s).copied()).unwrap_or(0));
        let w = (span_ms.max(0) / self.tick_ms.max(1) + 1) as f64;
        (seen(a) + 1.0) * (seen(b) + 1.0) * w / (n + 1.0) < RARE
    }

    /// Pairs remembered over all scopes, for sizing.
    pub fn pairs(&self) -> usize {
        self.scopes.values().map(|s| s.together.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_poisson_tail_matches_its_closed_form() {
        // P(X ≥ 1) = 1 − e^{−λ}; P(X ≥ 2) = 1 − e^{−λ}(1 + λ).
        for l in [0.01f64, 0.5, 3.0] {
            assert!((poisson_tail(1, l) - (1.0 - (-l).exp())).abs() < 1e-12);
            assert!((poisson_tail(2, l) - (1.0 - (-l).exp() * (1.0 + l))).abs() < 1e-12);
        }
    }

    #[test]
    fn services_that_fail_together_become_related_and_others_do_not() {
        let mut c = CoOccurrence::new(60);
        // A day of minutes; api and db fail together in three separate minutes; cache fails
        // alone twice; a flapping service is anomalous every other minute.
        let together = [100, 400, 900];
        for m in 0..1440 {
            let t = m * MIN;
            if m % 2 == 0 {
                c.observe("t", "flappy", t);
            }
            if together.contains(&m) {
                c.observe("t", "api", t);
                c.observe("t", "db", t + 5_000);
            }
            if m == 200 || m == 700 {
                c.observe("t", "cache", t);
            }
        }
        assert!(c.related("t", "api", "db"));
        assert!(c.related("t", "db", "api"));
        // Two shared minutes are not enough.
        assert!(!c.related("t", "api", "cache"));
        // The flapping service met api and db in their (even) minutes by chance only.
        assert!(!c.related("t", "flappy", "api"));
        assert!(!c.related("t", "flappy", "db"));
        // Learned per scope.
        assert!(!c.related("other", "api", "db"));
    }

    #[test]
    fn before_three_shared_ticks_nothing_is_related() {
        let mut c = CoOccurrence::new(60);
        for m in [100, 600] {
            c.observe("t", "a", m * MIN);
            c.observe("t", "b", m * MIN);
        }
        c.observe("t", "a", 1_200 * MIN);
        c.observe("t", "b", 1_200 * MIN);
        // The third shared minute is still open: it counts once it closes.
        assert!(!c.related("t", "a", "b"));
        c.observe("t", "z", 1_201 * MIN);
        assert!(c.related("t", "a", "b"));
    }

    #[test]
    fn a_first_coincidence_counts_in_a_quiet_stream_and_not_beside_a_noisy_service() {
        let mut c = CoOccurrence::new(60);
        // Too little time seen to tell.
        c.clock(0);
        assert!(!c.coincidence_is_rare("t", "api", "db", 0));
        // A quiet hour: one shared tick is 1 / 61 expected by chance.
        c.clock(60 * MIN);
        assert!(c.coincidence_is_rare("t", "api", "db", 0));
        // A service anomalous every other minute meets anything by chance.
        for m in (60..400).step_by(2) {
            c.observe("t", "noisy", m * MIN);
        }
        assert!(!c.coincidence_is_rare("t", "api", "noisy", 0));
        assert!(c.coincidence_is_rare("t", "api", "db", 0));
        // Ten minutes apart is ten times as likely by chance: still rare after six quiet
        // hours, not after one.
        assert!(c.coincidence_is_rare("t", "api", "db", 10 * MIN));
        let mut young = CoOccurrence::new(60);
        young.clock(0);
        young.clock(60 * MIN);
        assert!(!young.coincidence_is_rare("t", "api", "db", 10 * MIN));
    }

    #[test]
    fn memory_stays_bounded_under_a_storm_of_services() {
        let mut c = CoOccurrence::new(60);
        for m in 0..1_500i64 {
            // 40 services a minute, drawn from a pool of 100,000: many distinct pairs.
            for j in 0..40 {
                let s = format!("svc-{}", (m * 7_919 + j * 104_729) % 100_000);
                c.observe("t", &s, m * MIN);
            }
        }
        assert!(c.pairs() <= MAX_PAIRS);
        assert!(c.scopes["t"].seen.len() <= MAX_SERVICES);
        // A fleet-wide tick adds no pairs.
        let mut wide = CoOccurrence::new(60);
        for j in 0..(MAX_TICK_SERVICES + 1) {
            wide.observe("t", &format!("s{j}"), 0);
        }
        wide.observe("t", "s0", MIN);
        assert_eq!(wide.pairs(), 0);
    }
}
