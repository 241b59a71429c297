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
//! Memory is bounded: at most [`MAX_SCOPES`] scopes, each with at most [`MAX_SERVICES`]
//! services and [`MAX_PAIRS`] pairs (the least-seen are forgotten first), and a tick with
//! more than [`MAX_TICK_SERVICES`] anomalous services counts towards each service but adds
//! no pairs (a fleet-wide event says nothing about which two services belong together, and
//! would cost n² pairs).

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
/// Expected chance coincidences below which two services going wrong together is taken
/// as one fault: the conventional 5 % level, for one pair. It is applied to each pair a
/// new anomaly is weighed against, not to the family: with `m` candidate services the
/// chance of a false join is up to `m` times larger. That is the price of grouping a
/// fault's first occurrence at all; the learned relation ([`ALPHA`]) is the strict test.
/// Sharing the level among the candidates (Bonferroni) was tried and measured worse: on
/// the demo without its graph (seeds 1-8) grouping F1 fell from a mean of 0.97 to 0.93,
/// and streamed Train Ticket resource faults from 0.38 to 0.25 AC@1, because the other
/// services waiting beside a symptom are mostly the same fault's other symptoms, not
/// independent chances.
pub const RARE: f64 = 0.05;
/// Most services remembered per scope.
pub const MAX_SERVICES: usize = 5_000;
/// Most pairs remembered per scope.
pub const MAX_PAIRS: usize = 20_000;
/// Most scopes remembered; the one quiet longest is forgotten first.
pub const MAX_SCOPES: usize = 100;
/// A tick with more anomalous services than this adds no pairs.
pub const MAX_TICK_SERVICES: usize = 64;
/// Ticks an anomaly may arrive late and still count in its own tick: the previous tick
/// stays open until one two ticks newer arrives, so anomalies of one moment that reach
/// the correlator a little out of order (two detect partitions) still meet.
const LATE_TICKS: i64 = 1;

/// What is learned in one scope.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Scope {
    /// The newest tick with an anomaly (`None` before the first one).
    newest: Option<i64>,
    /// Ticks still open (at most `LATE_TICKS` older than `newest`), with their anomalous
    /// services.
    open: BTreeMap<i64, BTreeSet<String>>,
    /// Ticks in which each service had an anomaly.
    seen: BTreeMap<String, u32>,
    /// Ticks in which both services had one, keyed by the smaller name, then the larger,
    /// so a lookup borrows both names.
    together: BTreeMap<String, BTreeMap<String, u32>>,
    /// Entries in `together`.
    pairs: usize,
    /// The tick this scope was created in, when it was created after another was evicted
    /// for room: it may be one evicted before, whose counts are lost, so its time seen
    /// starts here rather than at the stream's start (which would make its services look
    /// quieter than they are).
    #[serde(default)]
    since: Option<i64>,
    /// The most ticks any forgotten service had: a service not remembered (or counted
    /// afresh since) may be one of them, so none is taken for quieter than that.
    #[serde(default)]
    forgotten: u32,
}

impl Scope {
    /// Notes `service` anomalous in `tick`; an anomaly older than the open ticks is
    /// dropped (it cannot be told apart from one already counted).
    fn observe(&mut self, service: &str, tick: i64) {
        let newest = self.newest.map_or(tick, |n| n.max(tick));
        self.newest = Some(newest);
        if tick < newest - LATE_TICKS {
            return;
        }
        let set = self.open.entry(tick).or_default();
        if !set.contains(service) {
            set.insert(service.to_string());
        }
        while let Some(first) = self.open.first_entry() {
            if *first.key() >= newest - LATE_TICKS {
                break;
            }
            let services = first.remove();
            self.close(services);
        }
    }

    fn close(&mut self, services: BTreeSet<String>) {
        for s in &services {
            *self.seen.entry(s.clone()).or_default() += 1;
        }
        if services.len() <= MAX_TICK_SERVICES {
            // BTreeSet iterates in order, so `a < b` in every pair.
            let v: Vec<&String> = services.iter().collect();
            // The last service has no larger partner, so no row of its own.
            for (i, a) in v.iter().enumerate().take(v.len().saturating_sub(1)) {
                if !self.together.contains_key(a.as_str()) {
                    self.together.insert((*a).clone(), BTreeMap::new());
                }
                let Some(row) = self.together.get_mut(a.as_str()) else {
                    continue;
                };
                for b in &v[i + 1..] {
                    match row.get_mut(b.as_str()) {
                        Some(c) => *c += 1,
                        None => {
                            row.insert((*b).clone(), 1);
                            self.pairs += 1;
                        }
                    }
                }
            }
        }
        if self.seen.len() > MAX_SERVICES {
            self.forget_services();
        }
        if self.pairs > MAX_PAIRS {
            self.forget_pairs();
        }
    }

    /// Keeps the `MAX_SERVICES / 2` services seen most, and drops the pairs of the rest,
    /// so a forgotten service is not taken for a quiet one beside its remembered pairs.
    fn forget_services(&mut self) {
        let keep = top(
            self.seen.iter().map(|(s, &c)| (c, s.clone())),
            MAX_SERVICES / 2,
        );
        let lost = self
            .seen
            .iter()
            .filter(|(s, _)| !keep.contains(*s))
            .map(|(_, &c)| c)
            .max()
            .unwrap_or(0);
        self.forgotten = self.forgotten.max(lost);
        self.seen.retain(|s, _| keep.contains(s));
        self.together.retain(|a, row| {
            if !keep.contains(a) {
                return false;
            }
            row.retain(|b, _| keep.contains(b));
            !row.is_empty()
        });
        self.pairs = self.together.values().map(BTreeMap::len).sum();
    }

    /// Keeps the `MAX_PAIRS / 2` pairs seen together most, with their counts halved
    /// (rounded up): a count learned long ago then weighs less than a new pair's, so a new
    /// relation can still be learned once the table is full. Halving only lowers joint
    /// counts, so it can lose a relation but never invent one.
    fn forget_pairs(&mut self) {
        let all = self
            .together
            .iter()
            .flat_map(|(a, row)| row.iter().map(move |(b, &c)| (c, (a, b))));
        let keep: BTreeSet<(String, String)> = top(all, MAX_PAIRS / 2)
            .into_iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        for (a, row) in self.together.iter_mut() {
            row.retain(|b, c| {
                *c = c.div_ceil(2);
                keep.contains(&(a.clone(), b.clone()))
            });
        }
        self.together.retain(|_, row| !row.is_empty());
        self.pairs = keep.len();
    }
}

/// The keys of the `n` largest counts; ties go to the smaller key, so what is kept never
/// depends on the order entries arrived in.
fn top<K: Ord + Clone>(entries: impl Iterator<Item = (u32, K)>, n: usize) -> BTreeSet<K> {
    let mut v: Vec<(u32, K)> = entries.collect();
    if v.len() > n {
        let by_rank = |x: &(u32, K), y: &(u32, K)| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1));
        v.select_nth_unstable_by(n, by_rank);
        v.truncate(n);
    }
    v.into_iter().map(|(_, k)| k).collect()
}

/// ln(n!), exact below 20 and by Stirling's series above (error below 1e-12).
fn ln_factorial(n: u32) -> f64 {
    if n < 20 {
        return (2..=n).map(|i| f64::from(i).ln()).sum();
    }
    let x = f64::from(n);
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x.powi(3))
        + 1.0 / (1260.0 * x.powi(5))
}

/// P(X ≥ k) for X ~ Poisson(λ). Terms are taken from the pmf at the boundary, computed in
/// the log domain (so a large λ does not underflow `e^{−λ}`), and summed outwards, over
/// whichever side of the mode is the tail, until they no longer change the sum.
fn poisson_tail(k: u32, lambda: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lambda <= 0.0 {
        return 0.0;
    }
    let pmf = |i: u32| (f64::from(i) * lambda.ln() - lambda - ln_factorial(i)).exp();
    let mut sum = 0.0;
    if f64::from(k) > lambda {
        // The upper tail itself: terms shrink by λ / (i + 1) < 1.
        let mut term = pmf(k);
        let mut i = k;
        while term > sum * 1e-17 && term > 0.0 {
            sum += term;
            i += 1;
            term *= lambda / f64::from(i);
        }
        sum.min(1.0)
    } else {
        // 1 − P(X ≤ k − 1), the lower side summed downwards: terms shrink by i / λ ≤ 1.
        let mut term = pmf(k - 1);
        let mut i = k - 1;
        loop {
            sum += term;
            if i == 0 || term <= sum * 1e-17 {
                break;
            }
            term *= f64::from(i) / lambda;
            i -= 1;
        }
        (1.0 - sum).max(0.0)
    }
}

/// Learned co-occurrence of services, per scope (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoOccurrence {
    tick_ms: i64,
    /// The first tick the stream showed (an anomaly or a watermark): N counts from it, so
    /// the quiet time before a scope's first anomaly counts as quiet. It is fixed at the
    /// first observation, so one late timestamp cannot stretch the time seen.
    start: Option<i64>,
    /// The latest tick the stream showed. Event time is bounded ahead by ingest
    /// (`ingest.max_future_secs`); it is not clamped here, since a legitimate jump (a
    /// stream resuming after an outage) looks the same.
    now: i64,
    scopes: BTreeMap<String, Scope>,
    /// Whether a scope was ever evicted for room (see [`Scope::since`]).
    #[serde(default)]
    evicted: bool,
}

impl CoOccurrence {
    /// Counts in ticks of `tick_secs` (at least a second).
    pub fn new(tick_secs: u64) -> CoOccurrence {
        CoOccurrence {
            tick_ms: (tick_secs.max(1) * 1000) as i64,
            start: None,
            now: i64::MIN,
            scopes: BTreeMap::new(),
            evicted: false,
        }
    }

    /// This state, if it was counted in ticks of `tick_secs`; else a fresh one, since
    /// counts of ticks of another length mean nothing under the new one.
    pub fn with_tick(self, tick_secs: u64) -> CoOccurrence {
        let fresh = CoOccurrence::new(tick_secs);
        if fresh.tick_ms == self.tick_ms {
            self
        } else if self.start.is_none() {
            // Nothing learned yet: nothing to lose.
            fresh
        } else {
            tracing::warn!(
                from_secs = self.tick_ms / 1000,
                to_secs = tick_secs,
                "correlate.group_wait_secs changed: learned co-occurrence starts over"
            );
            fresh
        }
    }

    fn tick_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.tick_ms.max(1))
    }

    /// Notes that the stream began by `ts_ms` (its first watermark): ticks count from
    /// there, so a quiet fleet's first fault is weighed against the quiet it followed.
    pub fn begin(&mut self, ts_ms: i64) {
        let tick = self.tick_of(ts_ms);
        self.start = Some(self.start.map_or(tick, |s| s.min(tick)));
    }

    /// Notes that the stream's event time reached `ts_ms`. Only anomalies move it (see
    /// [`CoOccurrence::observe`]), never watermarks: when a watermark arrives depends on
    /// the run, and a decision weighed against more elapsed ticks may come out otherwise.
    fn clock(&mut self, ts_ms: i64) {
        let tick = self.tick_of(ts_ms);
        self.start.get_or_insert(tick);
        self.now = self.now.max(tick);
    }

    /// Notes that `service` had an anomaly at `ts_ms` (event time; one more than a tick
    /// older than the scope's newest anomaly is dropped).
    pub fn observe(&mut self, scope: &str, service: &str, ts_ms: i64) {
        self.clock(ts_ms);
        let tick = self.tick_of(ts_ms);
        if !self.scopes.contains_key(scope) {
            if self.scopes.len() >= MAX_SCOPES {
                let quietest = self
                    .scopes
                    .iter()
                    .min_by_key(|(_, s)| s.newest)
                    .map(|(k, _)| k.clone());
                if let Some(k) = quietest {
                    self.scopes.remove(&k);
                    self.evicted = true;
                }
            }
            let fresh = Scope {
                since: self.evicted.then_some(tick),
                ..Scope::default()
            };
            self.scopes.insert(scope.to_string(), fresh);
        }
        if let Some(sc) = self.scopes.get_mut(scope) {
            sc.observe(service, tick);
        }
    }

    /// Ticks before the current one that `sc` has counted (empty ones included): since
    /// the stream began, or since the scope was created if it may have been evicted.
    fn elapsed(&self, sc: Option<&Scope>) -> f64 {
        let from = match (self.start, sc.and_then(|s| s.since)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // Before any anomaly `now` is i64::MIN: nothing counted yet.
        from.map_or(0.0, |s| self.now.saturating_sub(s).max(0) as f64)
    }

    /// Whether `a` and `b` have gone wrong together in `scope` more often than chance allows.
    pub fn related(&self, scope: &str, a: &str, b: &str) -> bool {
        let Some(sc) = self.scopes.get(scope) else {
            return false;
        };
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let Some(&k) = sc.together.get(lo).and_then(|row| row.get(hi)) else {
            return false;
        };
        let n = self.elapsed(Some(sc));
        if k < MIN_TOGETHER || n == 0.0 {
            return false;
        }
        // A service went wrong in at least the ticks it shared; the floor matters only
        // where halving or forgetting left the counts out of step.
        let seen = |s: &str| f64::from(sc.seen.get(s).copied().unwrap_or(0).max(k));
        let lambda = seen(a) * seen(b) / n;
        // No more than expected: far from rare, and the tail need not be summed.
        if f64::from(k) <= lambda {
            return false;
        }
        poisson_tail(k, lambda) < ALPHA
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
        let n = self.elapsed(sc);
        // A service not remembered may be a forgotten one, and one remembered may have been
        // forgotten before and counted afresh since: none is taken for quieter than the
        // forgotten ones were. (Zero until a scope overflows.)
        let seen = |s: &str| {
            f64::from(sc.map_or(0, |sc| {
                sc.seen.get(s).copied().unwrap_or(0).max(sc.forgotten)
            }))
        };
        let w = (span_ms.max(0) / self.tick_ms.max(1) + 1) as f64;
        (seen(a) + 1.0) * (seen(b) + 1.0) * w / (n + 1.0) < RARE
    }

    /// Pairs remembered over all scopes, for sizing.
    pub fn pairs(&self) -> usize {
        self.scopes.values().map(|s| s.pairs).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_poisson_tail_matches_its_closed_form_and_reference_values() {
        // P(X ≥ 1) = 1 − e^{−λ}; P(X ≥ 2) = 1 − e^{−λ}(1 + λ): both sides of the mode.
        for l in [0.01f64, 0.5, 3.0] {
            assert!((poisson_tail(1, l) - (1.0 - (-l).exp())).abs() < 1e-12);
            assert!((poisson_tail(2, l) - (1.0 - (-l).exp() * (1.0 + l))).abs() < 1e-12);
        }
        // Reference values summed independently (Python, math.lgamma), including a λ
        // whose e^{−λ} underflows a double.
        for (k, l, want) in [
            (1100, 1000.0, 9.626304058662804e-4),
            (900, 1000.0, 0.9993774022154737),
            (3, 0.05, 2.00674936243979e-5),
            (10, 3.0, 1.1024881301154817e-3),
        ] {
            let got = poisson_tail(k, l);
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1e-3),
                "{k} {l}: {got} vs {want}"
            );
        }
        assert_eq!(poisson_tail(0, 5.0), 1.0);
        assert_eq!(poisson_tail(3, 0.0), 0.0);
        assert!(poisson_tail(5, 800.0) > 0.999_999);
    }

    #[test]
    fn services_that_fail_together_become_related_and_others_do_not() {
        let mut c = CoOccurrence::new(60);
        // A day of minutes; api and db fail together in three separate minutes, cache
        // with them in two of those; a flapping service is anomalous every other minute.
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
            if m == 100 || m == 400 {
                c.observe("t", "cache", t + 10_000);
            }
        }
        assert_eq!(c.scopes["t"].together["api"]["cache"], 2);
        assert!(c.related("t", "api", "db"));
        assert!(c.related("t", "db", "api"));
        // Two shared minutes are not enough.
        assert!(!c.related("t", "api", "cache"));
        assert!(!c.related("t", "cache", "db"));
        // The flapping service met api and db in their (even) minutes by chance only.
        assert_eq!(c.scopes["t"].together["api"]["flappy"], 3);
        assert!(!c.related("t", "flappy", "api"));
        assert!(!c.related("t", "flappy", "db"));
        // Learned per scope.
        assert!(!c.related("other", "api", "db"));
    }

    #[test]
    fn a_shared_tick_counts_once_it_is_past_the_late_allowance() {
        let mut c = CoOccurrence::new(60);
        for m in [100, 600] {
            c.observe("t", "a", m * MIN);
            c.observe("t", "b", m * MIN);
        }
        c.observe("t", "a", 1_200 * MIN);
        c.observe("t", "b", 1_200 * MIN);
        // The third shared minute is still open, and stays open for one more tick so a
        // late anomaly of that minute can join it.
        c.observe("t", "z", 1_201 * MIN);
        assert!(!c.related("t", "a", "b"));
        c.observe("t", "z", 1_202 * MIN);
        assert!(c.related("t", "a", "b"));
    }

    #[test]
    fn late_anomalies_join_their_own_tick_or_are_dropped() {
        let mut c = CoOccurrence::new(60);
        c.observe("t", "a", 10 * MIN);
        c.observe("t", "b", 11 * MIN);
        // One tick late: still meets a in tick 10, not b in tick 11.
        c.observe("t", "c", 10 * MIN + 30_000);
        // Two ticks late: dropped, rather than counted as if it were now.
        c.observe("t", "d", 9 * MIN);
        c.observe("t", "z", 20 * MIN);
        let sc = &c.scopes["t"];
        assert_eq!(sc.together["a"]["c"], 1);
        assert!(!sc.together.get("b").is_some_and(|r| r.contains_key("c")));
        assert!(!sc.seen.contains_key("d"));
        // The time seen counts from the first tick the stream showed, not the oldest.
        assert_eq!(c.start, Some(10));
        c.clock(0);
        assert_eq!(c.start, Some(10));
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
    fn memory_stays_bounded_and_keeps_what_was_seen_most() {
        let mut c = CoOccurrence::new(60);
        for m in 0..1_500i64 {
            // api and db fail every minute beside 40 services drawn from a pool of
            // 100,000: many distinct, rarely repeated pairs and services.
            c.observe("t", "api", m * MIN);
            c.observe("t", "db", m * MIN);
            for j in 0..40 {
                let s = format!("svc-{}", (m * 7_919 + j * 104_729) % 100_000);
                c.observe("t", &s, m * MIN);
            }
        }
        let sc = &c.scopes["t"];
        assert!(c.pairs() <= MAX_PAIRS);
        assert_eq!(
            c.pairs(),
            sc.together.values().map(BTreeMap::len).sum::<usize>()
        );
        assert!(sc.seen.len() <= MAX_SERVICES);
        // The pair and services seen most survive every pruning...
        assert!(sc.together["api"].contains_key("db"));
        assert!(sc.seen["api"] >= 1_490 && sc.seen["db"] >= 1_490);
        // ...and no pair outlives a forgotten service.
        for (a, row) in &sc.together {
            assert!(sc.seen.contains_key(a), "{a}");
            for b in row.keys() {
                assert!(sc.seen.contains_key(b), "{b}");
            }
        }
        // A fleet-wide tick adds no pairs.
        let mut wide = CoOccurrence::new(60);
        for j in 0..(MAX_TICK_SERVICES + 1) {
            wide.observe("t", &format!("s{j}"), 0);
        }
        wide.observe("t", "s0", 2 * MIN);
        assert_eq!(wide.pairs(), 0);
        assert_eq!(wide.scopes["t"].seen.len(), MAX_TICK_SERVICES + 1);
    }

    #[test]
    fn the_scope_quiet_longest_is_forgotten_first() {
        let mut c = CoOccurrence::new(60);
        for i in 0..MAX_SCOPES as i64 {
            c.observe(&format!("scope-{i}"), "api", (i + 1) * MIN);
        }
        // scope-0 was quiet longest, until it spoke again.
        c.observe("scope-0", "api", 500 * MIN);
        c.observe("new", "api", 501 * MIN);
        assert_eq!(c.scopes.len(), MAX_SCOPES);
        assert!(c.scopes.contains_key("scope-0") && c.scopes.contains_key("new"));
        assert!(!c.scopes.contains_key("scope-1"));
        // Scopes created before any eviction count from the stream's start; "new" may be
        // an evicted scope come back, so it counts only from its own first tick.
        assert_eq!(c.scopes["scope-0"].since, None);
        assert_eq!(c.scopes["new"].since, Some(501));
        c.clock(511 * MIN);
        assert_eq!(c.elapsed(c.scopes.get("scope-0")), 510.0);
        assert_eq!(c.elapsed(c.scopes.get("new")), 10.0);
        // scope-1 comes back after its eviction: had its lost history been read as 511
        // quiet minutes, api going wrong beside db would look rare. Over the ten minutes
        // its new counts cover, api anomalous in each of them, it is not.
        for m in 512..522 {
            c.observe("scope-1", "api", m * MIN);
        }
        c.observe("scope-1", "db", 522 * MIN);
        assert!(!c.coincidence_is_rare("scope-1", "api", "db", 0));
    }

    #[test]
    fn a_service_not_remembered_is_never_quieter_than_the_forgotten_ones() {
        let mut c = CoOccurrence::new(60);
        // A full table of services anomalous in each of 20 ticks, then a tick that brings
        // 600 new ones: half the table is forgotten, old and noisy services among them.
        for m in 0..20i64 {
            for j in 0..MAX_SERVICES {
                c.observe("t", &format!("noisy-{j:05}"), m * MIN);
            }
        }
        for j in 0..600 {
            c.observe("t", &format!("new-{j}"), 20 * MIN);
        }
        // A later anomaly closes tick 20.
        c.observe("t", "later", 22 * MIN);
        let sc = &c.scopes["t"];
        assert!(sc.seen.len() <= MAX_SERVICES / 2 + 1);
        assert_eq!(sc.forgotten, 20);
        let lost = (0..MAX_SERVICES)
            .map(|j| format!("noisy-{j:05}"))
            .find(|s| !sc.seen.contains_key(s))
            .unwrap();
        // Read as never seen, it would be a quiet service, and its first anomaly beside
        // another unknown service a rare coincidence over 21 ticks ((0+1)(0+1)/22 < 0.05).
        assert!(!c.coincidence_is_rare("t", &lost, "unknown", 0));
        // A scope that forgot nothing still reads unknown services as quiet.
        let mut quiet = CoOccurrence::new(60);
        quiet.observe("t", "api", 0);
        quiet.clock(22 * MIN);
        assert!(quiet.coincidence_is_rare("t", "new-a", "new-b", 0));
    }

    #[test]
    fn a_stream_that_began_but_saw_no_anomaly_has_counted_nothing() {
        let mut c = CoOccurrence::new(60);
        c.begin(10 * MIN);
        assert!(!c.related("s", "a", "b"));
        assert!(!c.coincidence_is_rare("s", "a", "b", 0));
        c.observe("s", "a", 40 * MIN);
        assert!(
            c.coincidence_is_rare("s", "a", "b", 0),
            "30 quiet ticks counted"
        );
    }

    #[test]
    fn a_changed_tick_length_starts_over() {
        let mut c = CoOccurrence::new(60);
        c.observe("t", "api", 0);
        c.observe("t", "api", 5 * MIN);
        let kept = c.clone().with_tick(60);
        assert!(kept.scopes.contains_key("t"));
        let fresh = c.with_tick(120);
        assert!(fresh.scopes.is_empty() && fresh.start.is_none());
    }
}
