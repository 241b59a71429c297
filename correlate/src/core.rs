//! Incident grouping by time window, shared labels and the service dependency graph.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use seismo_schemas::{
    Alert, AlertStatus, Anomaly, Incident, IncidentEvent, IncidentEventKind, IncidentStatus,
    Labels, RootCauseCandidate, Severity, correlation_key, stable_hash,
};
use seismo_store::IncidentWrite;

use crate::cooccur::CoOccurrence;
use crate::rank::{self, Change, Evidence, Graph, MetricRole};
use serde::{Deserialize, Serialize};

/// Correlation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelateConfig {
    /// A signal joins an incident whose last activity is at most this old, in seconds.
    pub window_secs: u64,
    /// An incident with no new signal for this long stops collecting; later signals open
    /// a new incident. In seconds.
    pub quiet_secs: u64,
    /// Related anomalies needed within the window to open an incident. A single critical
    /// anomaly or a firing alert opens one on its own.
    pub min_anomalies: usize,
    /// How long anomalies outside any incident wait, in seconds of event time, for related
    /// ones before an incident opens, so that one fault's simultaneous symptoms become one
    /// incident rather than several.
    pub group_wait_secs: u64,
    /// Label naming the service a series or alert belongs to.
    pub service_label: String,
    /// Label naming the host.
    pub host_label: String,
    /// Label refining the correlation scope beyond the tenant (e.g. `service_group`).
    pub scope_label: Option<String>,
    /// The service dependency graph: each service and the services it calls.
    pub dependencies: BTreeMap<String, Vec<String>>,
    /// How root-cause ranking reads a metric, by exact name, where the name misleads:
    /// `resource`, `server_latency`, `client_latency`, `errors`, `success` or `other`
    /// (see `rank::MetricRole::of` for what names say on their own).
    pub metric_roles: BTreeMap<String, crate::rank::MetricRole>,
    /// An incident whose signals stay quiet for `quiet_secs` of event time, with none of
    /// its alerts still firing, resolves itself, unless people moved it beyond DETECTED
    /// or ACKNOWLEDGED (then it is theirs to close).
    pub auto_resolve: bool,
    /// A related signal within this long after an incident resolved itself reopens it
    /// (DETECTED again, so it pages again) instead of opening a new one. In seconds.
    pub reopen_secs: u64,
    /// With no `dependencies`, learn which services go wrong together from the anomalies
    /// themselves and group those as if the graph linked them (see `cooccur`).
    pub learn_cooccurrence: bool,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        CorrelateConfig {
            window_secs: 900,
            quiet_secs: 1800,
            min_anomalies: 2,
            group_wait_secs: 60,
            service_label: "service".into(),
            host_label: "host".into(),
            scope_label: None,
            dependencies: BTreeMap::new(),
            metric_roles: BTreeMap::new(),
            auto_resolve: true,
            reopen_secs: 900,
            learn_cooccurrence: true,
        }
    }
}

/// An input of the correlator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Signal {
    Anomaly(Anomaly),
    Alert(Alert),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServiceFacts {
    first: DateTime<Utc>,
    max_score: f64,
    strongest: String,
    count: usize,
    /// The largest change of each kind of metric, of the incident's current run of changes
    /// for the worse where it has one there (see `Open::episode`); ranking weighs these.
    changes: BTreeMap<MetricRole, Strongest>,
}

/// The largest change of one kind seen on a service (see `ServiceFacts::changes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Strongest {
    metric: String,
    size: f64,
    expected: f64,
    observed: f64,
    /// When the anomaly behind it happened.
    at: DateTime<Utc>,
}

/// How far outside its expected band an anomaly lies, in half-band widths, in the direction
/// its role calls bad: unlike the score, it does not saturate, so it can rank. 1 is the band
/// edge.
fn magnitude(a: &Anomaly, role: MetricRole) -> f64 {
    let half = ((a.upper - a.lower) / 2.0)
        .abs()
        .max(1e-9 * a.expected.abs().max(1e-9));
    let d = (a.observed - a.expected) / half;
    let sized = match role {
        MetricRole::Success => -d,
        MetricRole::Other => d.abs(),
        _ => d,
    };
    if sized.is_finite() {
        sized.max(0.0)
    } else {
        0.0
    }
}

/// What an incident learns from one signal.
struct Noted<'a> {
    service: Option<&'a str>,
    host: Option<&'a str>,
    at: DateTime<Utc>,
    score: f64,
    what: &'a str,
    severity: Severity,
    /// The kind of metric and the change's size, expected and observed values.
    change: Option<(MetricRole, f64, f64, f64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Open {
    scope_key: String,
    incident: Incident,
    services: BTreeMap<String, ServiceFacts>,
    hosts: BTreeSet<String>,
    last: DateTime<Utc>,
    /// The severity last written, so a rise is announced once.
    announced: Severity,
    /// Signals taken in. Members are not listed here: each write carries only the new
    /// ones and the store keeps the membership, so a long degradation costs the same per
    /// signal as a short one and its state stays small.
    signals: u64,
    /// Fingerprints of its alerts still firing: it does not resolve itself while any is.
    firing: BTreeSet<String>,
    /// Its standing predicted breaches, by fingerprint, each until the time it predicts
    /// (the ETA, or the earliest plausible time): it does not resolve itself while one
    /// stands. A prediction lapses at that time even if nothing withdraws it (its series
    /// went silent, or its rule was removed): by then the breach has happened or not.
    predicted: BTreeMap<String, DateTime<Utc>>,
    /// When it last resolved itself (event time), while it may still reopen.
    resolved_at: Option<DateTime<Utc>>,
    /// Its latest change for the worse (at or beyond the edge of the expected band, size
    /// 1 or more), and when the run of such changes it belongs to began (a run ends when
    /// none comes for `window_secs`): ranking weighs the changes of the current run, so an
    /// incident open through several faults names the cause of the one going on, while one
    /// fault's tail and settling keep its cause.
    worse: DateTime<Utc>,
    episode: DateTime<Utc>,
}

impl Open {
    /// Whether it is ongoing at `now` however quiet it has been: an alert of it still
    /// fires, or a predicted breach of it still stands.
    fn held_open(&self, now: DateTime<Utc>) -> bool {
        !self.firing.is_empty() || self.predicted.values().any(|until| *until > now)
    }
}

/// A status step the engine takes on its own; the store applies it only from `from`
/// (see `Store::engine_transition`).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusStep {
    pub tenant: String,
    pub incident_id: String,
    pub from: &'static [IncidentStatus],
    pub to: IncidentStatus,
    pub event: IncidentEvent,
    /// The incident as the correlator saw it at the step. The store's copy may already
    /// hold later writes of the same batch, so what is announced for this step takes its
    /// title, severity, scope and ranking from here.
    pub seen: Incident,
}

/// Statuses an incident resolves itself from: nobody has said they are working on it.
const AUTO_RESOLVE_FROM: &[IncidentStatus] =
    &[IncidentStatus::Detected, IncidentStatus::Acknowledged];
/// An incident reopens itself only from RESOLVED (a person's LEARNED or INCONCLUSIVE stays).
const REOPEN_FROM: &[IncidentStatus] = &[IncidentStatus::Resolved];

/// The correlate core. Its learned part (open incidents, waiting anomalies, alert
/// membership, clocks) serialises for checkpoints; the configuration and the graph derived
/// from it are not stored but given again on restore ([`Correlator::restored`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Correlator {
    #[serde(skip)]
    cfg: CorrelateConfig,
    /// Undirected adjacency, for "related".
    #[serde(skip)]
    adjacent: HashMap<String, HashSet<String>>,
    /// The dependency graph, for ranking.
    #[serde(skip)]
    graph: Graph,
    open: Vec<Open>,
    /// Incidents that resolved themselves within `reopen_secs`, which may reopen.
    resolved: Vec<Open>,
    /// Status steps taken and not yet handed out.
    #[serde(skip)]
    steps: Vec<StatusStep>,
    pending: Vec<Anomaly>,
    /// Pending anomalies that waited `window_secs` without earning an incident, kept
    /// `reopen_secs` longer (at most `MAX_AGED`): a signal merged late (an alert stamped
    /// in the past, a prediction before its forecast partition's first watermark) may
    /// still complete their group, as it would have had it come on time.
    aged: Vec<Anomaly>,
    /// Which incident each alert (tenant, fingerprint) joined.
    alerts: HashMap<(String, String), String>,
    /// Newest event time seen on each input: grouping waits by the anomaly clock, and
    /// incidents go quiet by the later of the two.
    anomaly_time: Option<DateTime<Utc>>,
    alert_time: Option<DateTime<Utc>>,
    /// Which services went wrong together, when no graph says which are related.
    learned: CoOccurrence,
}

/// Most hosts an incident's scope names.
const MAX_SCOPE_HOSTS: usize = 50;
/// Most aged-out pending anomalies kept for late signals; the oldest go first.
const MAX_AGED: usize = 10_000;

fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The engine's status step of `o` at event time `at`; the event id is deterministic, so a
/// replay repeats the step harmlessly.
fn step(
    o: &Open,
    from: &'static [IncidentStatus],
    to: IncidentStatus,
    at: DateTime<Utc>,
    why: String,
) -> StatusStep {
    let id = &o.incident.id;
    let verb = if to == IncidentStatus::Resolved {
        "resolved"
    } else {
        "reopened"
    };
    StatusStep {
        tenant: o.incident.tenant.clone(),
        incident_id: id.clone(),
        from,
        to,
        event: IncidentEvent {
            id: format!("{id}-{verb}-{}", at.timestamp_millis()),
            incident_id: id.clone(),
            ts: at,
            kind: IncidentEventKind::StatusChanged,
            actor: "seismo".into(),
            message: why,
            from_status: None,
            to_status: Some(to),
        },
        seen: o.incident.clone(),
    }
}

impl Correlator {
    pub fn new(cfg: CorrelateConfig) -> Self {
        let mut adjacent: HashMap<String, HashSet<String>> = HashMap::new();
        for (from, tos) in &cfg.dependencies {
            for to in tos {
                adjacent.entry(from.clone()).or_default().insert(to.clone());
                adjacent.entry(to.clone()).or_default().insert(from.clone());
            }
        }
        let graph = Graph::new(&cfg.dependencies);
        let cfg_group_wait = cfg.group_wait_secs;
        Correlator {
            cfg,
            adjacent,
            graph,
            open: Vec::new(),
            resolved: Vec::new(),
            steps: Vec::new(),
            pending: Vec::new(),
            aged: Vec::new(),
            alerts: HashMap::new(),
            anomaly_time: None,
            alert_time: None,
            learned: CoOccurrence::new(cfg_group_wait),
        }
    }

    /// A correlator with `cfg` that continues from a checkpointed one's learned state.
    pub fn restored(cfg: CorrelateConfig, state: Correlator) -> Self {
        let learned = state.learned.with_tick(cfg.group_wait_secs);
        Correlator {
            open: state.open,
            resolved: state.resolved,
            pending: state.pending,
            aged: state.aged,
            alerts: state.alerts,
            anomaly_time: state.anomaly_time,
            alert_time: state.alert_time,
            learned,
            ..Correlator::new(cfg)
        }
    }

    /// Signals held: anomalies waiting for company and incidents collecting.
    pub fn held(&self) -> usize {
        self.pending.len() + self.open.len()
    }

    /// Anomalies waiting for related ones before an incident opens.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The status steps taken since the last call, in order.
    pub fn take_steps(&mut self) -> Vec<StatusStep> {
        std::mem::take(&mut self.steps)
    }

    /// The service and host a signal's labels name, if any.
    fn service_and_host(&self, labels: &Labels) -> (Option<String>, Option<String>) {
        let get = |name: &str| labels.get(name).cloned();
        (get(&self.cfg.service_label), get(&self.cfg.host_label))
    }

    /// Whether signals of services `a` and `b` belong together: the same service, linked
    /// by the graph, or (with no graph) learned to go wrong together in `scope`.
    fn related(&self, scope: &str, a: &str, b: &str) -> bool {
        a == b
            || self.adjacent.get(a).is_some_and(|n| n.contains(b))
            || (self.learns() && self.learned.related(scope, a, b))
    }

    /// [`Self::related`], or (with no graph) `b` went wrong while `a` was going wrong, over
    /// a span of `span` (from `a`'s first signal to `b`'s), and by chance that would be rare
    /// for them (see `cooccur`).
    fn related_over(&self, scope: &str, a: &str, b: &str, span: Duration) -> bool {
        self.related(scope, a, b)
            || (self.learns()
                && self
                    .learned
                    .coincidence_is_rare(scope, a, b, span.num_milliseconds().abs()))
    }

    fn learns(&self) -> bool {
        self.cfg.learn_cooccurrence && self.adjacent.is_empty()
    }

    fn scope(&self, tenant: &str, labels: &Labels) -> String {
        correlation_key(tenant, labels, self.cfg.scope_label.as_deref())
    }

    /// Ids of the incidents still collecting signals.
    pub fn open_ids(&self) -> Vec<String> {
        self.open.iter().map(|o| o.incident.id.clone()).collect()
    }

    /// Stops collecting into an incident that people closed through the API.
    pub fn mark_closed(&mut self, id: &str) {
        self.open.retain(|o| o.incident.id != id);
        self.resolved.retain(|o| o.incident.id != id);
    }

    /// Forgets incidents that no input can still add to: an incident stops collecting once
    /// the streams' clock is `quiet_secs` past its last signal (and resolves itself, see
    /// `auto_resolve`). Pending anomalies expire by the anomaly clock.
    fn expire(&mut self) {
        let quiet = Duration::seconds(self.cfg.quiet_secs as i64);
        let window = Duration::seconds(self.cfg.window_secs as i64);
        // The stage merges both inputs into one event-time order (alerts wait for detect's
        // watermarks), so the later clock is the time: a stream that is merely quiet (an
        // alert a day) must not hold every incident open.
        let watermark = self.anomaly_time.max(self.alert_time).unwrap_or_default();
        let (live, quieted): (Vec<Open>, Vec<Open>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|o| watermark - o.last <= quiet || o.held_open(watermark));
        self.open = live;
        for mut o in quieted {
            // Quiet since its last signal: resolved as of then plus the quiet period.
            if self.cfg.auto_resolve && o.firing.is_empty() {
                let at = o.last + quiet;
                self.steps.push(step(
                    &o,
                    AUTO_RESOLVE_FROM,
                    IncidentStatus::Resolved,
                    at,
                    format!("its signals cleared: none for {} s", self.cfg.quiet_secs),
                ));
                o.resolved_at = Some(at);
                self.resolved.push(o);
            }
        }
        let reopen = Duration::seconds(self.cfg.reopen_secs as i64);
        self.resolved
            .retain(|o| o.resolved_at.is_some_and(|r| watermark - r <= reopen));
        if let Some(now) = self.anomaly_time {
            let (pending, aged): (Vec<Anomaly>, Vec<Anomaly>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|a| now - a.ts <= window);
            self.pending = pending;
            self.aged.extend(aged);
            self.aged.retain(|a| now - a.ts <= window + reopen);
            if self.aged.len() > MAX_AGED {
                // Down to nine-tenths, oldest first: at the cap that is one sort per
                // thousand anomalies aged, not one per signal.
                self.aged.sort_by(|x, y| (x.ts, &x.id).cmp(&(y.ts, &y.id)));
                self.aged.drain(..self.aged.len() - MAX_AGED * 9 / 10);
            }
        }
    }

    /// Moves the clock to `now_ms`, the merged inputs' watermark: no signal before it is
    /// still to come. Groups that have waited `group_wait_secs` open and incidents quiet
    /// for `quiet_secs` resolve now, not when some later signal happens to arrive: on a
    /// quiet stream the page for the last fault goes out on time. Returns what must be
    /// written; false in the second place when the clock did not move.
    pub fn advance(&mut self, now_ms: i64) -> (Vec<IncidentWrite>, bool) {
        let Some(now) = DateTime::from_timestamp_millis(now_ms) else {
            return (Vec::new(), false);
        };
        if self.anomaly_time.is_some_and(|t| t >= now) {
            return (Vec::new(), false);
        }
        // The watermark covers both inputs (alerts are merged by event time too), so
        // the anomaly clock, which grouping waits by, may take it.
        self.anomaly_time = Some(now);
        // Learned co-occurrence keeps its own clock, moved by the anomalies alone: a group
        // that ripens here is then weighed against the same count of elapsed ticks as had
        // the next signal noticed it, whichever watermarks this run happened to see.
        if self.learns() {
            self.learned.begin(now_ms);
        }
        let writes = self.ripen(false);
        self.expire();
        (writes, true)
    }

    /// Feeds one signal; returns what must be written.
    pub fn process(&mut self, signal: Signal) -> Vec<IncidentWrite> {
        match signal {
            Signal::Anomaly(a) => self.anomaly(a),
            Signal::Alert(a) => self.alert(a),
        }
    }

    /// An open incident the signal belongs to, else one that resolved itself within
    /// `reopen_secs` before `now` and is related, which is taken back among the open ones
    /// still marked resolved: once the signal is in, [`Correlator::settle`] reopens it or
    /// puts it back.
    fn find_or_reopen(
        &mut self,
        scope: &str,
        service: Option<&str>,
        host: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<usize> {
        if let Some(i) = self.find_open(scope, service, host, now) {
            return Some(i);
        }
        let reopen = Duration::seconds(self.cfg.reopen_secs as i64);
        let window = Duration::seconds(self.cfg.window_secs as i64);
        // A signal stamped before the incident resolved belongs to it too: only a source
        // the merge does not hold back (forecast's predictions) is merged that late, and
        // had it been merged on time it would have joined. Reopening gives the same
        // incidents whichever came first.
        let j = self
            .resolved
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                o.scope_key == scope
                    && now >= o.incident.started_at - window
                    && o.resolved_at.is_some_and(|r| now - r <= reopen)
            })
            .filter(|(_, o)| {
                service.is_some_and(|s| o.services.keys().any(|t| self.related(scope, s, t)))
                    || host.is_some_and(|h| o.hosts.contains(h))
            })
            .max_by_key(|(_, o)| o.last)
            .map(|(j, _)| j)?;
        let mut o = self.resolved.remove(j);
        o.last = o.last.max(now);
        self.open.push(o);
        Some(self.open.len() - 1)
    }

    /// Decides the status of incident `i` once a signal stamped `at` has joined it, if it
    /// had resolved itself: a signal that leaves it ongoing now (recent, or an alert still
    /// firing, or a prediction still standing) reopens it; one of its quiet past (merged
    /// late) only joins, and it stays resolved as it was. Reopening it then would resolve
    /// it again at the same moment, a step the store has already taken.
    fn settle(&mut self, i: usize, at: DateTime<Utc>) {
        let Some(r) = self.open[i].resolved_at else {
            return;
        };
        let quiet = Duration::seconds(self.cfg.quiet_secs as i64);
        let watermark = self.anomaly_time.max(self.alert_time).unwrap_or_default();
        let o = &self.open[i];
        if watermark - o.last > quiet && !o.held_open(watermark) {
            let o = self.open.remove(i);
            self.resolved.push(o);
            return;
        }
        self.open[i].resolved_at = None;
        // A late signal reopens as of the resolution: a status cannot go back before it.
        self.steps.push(step(
            &self.open[i],
            REOPEN_FROM,
            IncidentStatus::Detected,
            r.max(at),
            "its signals recurred".into(),
        ));
    }

    fn find_open(
        &self,
        scope: &str,
        service: Option<&str>,
        host: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<usize> {
        // Up to `window_secs` before its start, so a signal that arrives late (its stream
        // lagging the other) still finds the incident it belongs to; and for as long as it
        // collects after its last signal (`quiet_secs`): a degradation that detect re-raises
        // every `repeat_every` buckets stays one incident. One that `expire` holds open (an
        // alert still firing, a predicted breach still standing) collects too: otherwise a
        // signal of its own service would open a second incident beside it, or join it,
        // depending on whether the prediction's re-report happened to be merged first.
        let window = Duration::seconds(self.cfg.window_secs as i64);
        let collects = Duration::seconds(self.cfg.quiet_secs.max(self.cfg.window_secs) as i64);
        self.open
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                o.scope_key == scope
                    && now >= o.incident.started_at - window
                    && (now <= o.last + collects || o.held_open(now))
            })
            .filter(|(_, o)| {
                service.is_some_and(|s| {
                    o.services
                        .iter()
                        .any(|(t, f)| self.related_over(scope, t, s, now - f.first))
                }) || host.is_some_and(|h| o.hosts.contains(h))
            })
            .max_by_key(|(_, o)| o.last)
            .map(|(i, _)| i)
    }

    fn anomaly(&mut self, a: Anomaly) -> Vec<IncidentWrite> {
        if let Some(b) = a.explanation.breach.as_ref() {
            let fp = b.fingerprint(a.series_id);
            if b.withdrawn {
                return self.withdraw(&a, fp);
            }
            // A prediction reported again (its ETA moved) joins the incident that holds
            // it, however long ago that incident last heard anything.
            let key = (a.tenant.clone(), fp);
            if let Some(i) = self
                .alerts
                .get(&key)
                .and_then(|id| self.open.iter().position(|o| &o.incident.id == id))
            {
                self.anomaly_time = self.anomaly_time.max(Some(a.ts));
                let event = self.attach_event(&self.open[i].incident.id, &a);
                self.absorb(i, &a);
                self.open[i].last = self.open[i].last.max(a.ts);
                return vec![self.write(i, vec![a.id.clone()], vec![], vec![event])];
            }
        }
        let scope = self.scope(&a.tenant, &a.labels);
        self.anomaly_time = self.anomaly_time.max(Some(a.ts));
        // Groups that have waited long enough open first, so this anomaly can join them.
        let mut writes = self.ripen(false);
        self.expire();
        let (service, host) = self.service_and_host(&a.labels);
        if let Some(s) = service.as_deref().filter(|_| self.learns()) {
            self.learned.observe(&scope, s, a.ts.timestamp_millis());
        }
        if let Some(i) = self.find_or_reopen(&scope, service.as_deref(), host.as_deref(), a.ts) {
            let event = self.attach_event(&self.open[i].incident.id, &a);
            self.absorb(i, &a);
            writes.push(self.write(i, vec![a.id.clone()], vec![], vec![event]));
            self.settle(i, a.ts);
            return writes;
        }
        // Not part of a live incident: wait `group_wait_secs` for related anomalies, so
        // that everything one fault sets off in the same moment lands in one incident.
        // A signal merged late takes back the anomalies of its time that aged out waiting
        // (only a late one can be within the window of those), so they can still form the
        // group they would have formed with it, at once, as they would have on time; what
        // does not ripen ages out again.
        let window = Duration::seconds(self.cfg.window_secs as i64);
        if self.anomaly_time.is_some_and(|now| a.ts < now) && !self.aged.is_empty() {
            let (back, stay): (Vec<Anomaly>, Vec<Anomaly>) =
                std::mem::take(&mut self.aged).into_iter().partition(|p| {
                    (p.ts - a.ts).abs() <= window && self.scope(&p.tenant, &p.labels) == scope
                });
            self.aged = stay;
            let took_back = !back.is_empty();
            self.pending.extend(back);
            self.pending.push(a);
            if took_back {
                writes.extend(self.ripen(false));
            }
            return writes;
        }
        self.pending.push(a);
        writes
    }

    /// A forecast no longer predicts a breach: a prediction still pending is dropped (it
    /// never opens an incident), and an incident holding it notes the withdrawal and no
    /// longer counts the breach as ongoing.
    fn withdraw(&mut self, a: &Anomaly, fingerprint: String) -> Vec<IncidentWrite> {
        let same = |p: &Anomaly| {
            p.tenant == a.tenant
                && p.explanation
                    .breach
                    .as_ref()
                    .is_some_and(|b| b.fingerprint(p.series_id) == fingerprint)
        };
        self.pending.retain(|p| !same(p));
        self.aged.retain(|p| !same(p));
        let key = (a.tenant.clone(), fingerprint.clone());
        let Some(id) = self.alerts.remove(&key) else {
            return Vec::new();
        };
        let Some(i) = self.open.iter().position(|o| o.incident.id == id) else {
            return Vec::new();
        };
        self.open[i].predicted.remove(&fingerprint);
        self.open[i].last = self.open[i].last.max(a.ts);
        let event = IncidentEvent {
            id: format!("{id}-w-{}", a.id),
            incident_id: id.clone(),
            ts: a.ts,
            kind: IncidentEventKind::Note,
            actor: "seismo".into(),
            message: a.explanation.summary.clone(),
            from_status: None,
            to_status: None,
        };
        vec![self.write(i, vec![], vec![], vec![event])]
    }

    /// Opens the incidents that pending anomalies have earned once the end of the streams
    /// is reached (shutdown or the end of a file).
    pub fn flush(&mut self) -> Vec<IncidentWrite> {
        self.ripen(true)
    }

    /// Splits the pending anomalies into groups of related ones and opens an incident for
    /// each group that has waited `group_wait_secs` (every group when `all`) and holds
    /// `min_anomalies` anomalies or a critical one. Other groups keep waiting until they
    /// grow or expire.
    fn ripen(&mut self, all: bool) -> Vec<IncidentWrite> {
        let Some(now) = self.anomaly_time else {
            return Vec::new();
        };
        let wait = Duration::seconds(self.cfg.group_wait_secs as i64);
        let mut groups = Vec::new();
        let mut seen = vec![false; self.pending.len()];
        for start in 0..self.pending.len() {
            if seen[start] {
                continue;
            }
            let group = self.cluster(start);
            for &i in &group {
                seen[i] = true;
            }
            let ripe = all
                || group
                    .iter()
                    .map(|&i| self.pending[i].ts)
                    .min()
                    .is_some_and(|t| now - t >= wait);
            let earned = group.len() >= self.cfg.min_anomalies
                || group
                    .iter()
                    .any(|&i| self.pending[i].severity == Severity::Critical);
            if ripe && earned {
                groups.push(group);
            }
        }
        if groups.is_empty() {
            return Vec::new();
        }
        let take: HashSet<usize> = groups.iter().flatten().copied().collect();
        let mut slots: Vec<Option<Anomaly>> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(Some)
            .collect();
        self.pending = slots
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !take.contains(i))
            .filter_map(|(_, a)| a.take())
            .collect();
        groups
            .into_iter()
            .map(|g| {
                let mut members: Vec<Anomaly> =
                    g.into_iter().filter_map(|i| slots[i].take()).collect();
                members.sort_by(|x, y| (x.ts, &x.id).cmp(&(y.ts, &y.id)));
                // Opened when the wait ran out, whichever signal or watermark noticed it
                // first, so a replay that sees the watermarks at other moments writes the
                // same creation time.
                let at = now.min(members[0].ts + wait);
                self.open_incident(members, at)
            })
            .collect()
    }

    fn open_incident(&mut self, members: Vec<Anomaly>, now: DateTime<Utc>) -> IncidentWrite {
        let first = &members[0];
        let scope = self.scope(&first.tenant, &first.labels);
        let id = format!(
            "{:016x}",
            stable_hash(&[first.tenant.as_bytes(), b"incident", first.id.as_bytes()])
        );
        let idx = self.create(id.clone(), scope, &first.tenant, first.ts, first.severity);
        let mut events = vec![IncidentEvent {
            id: format!("{id}-created"),
            incident_id: id.clone(),
            ts: now,
            kind: IncidentEventKind::Created,
            actor: "seismo".into(),
            message: format!("opened from {} related anomalies", members.len()),
            from_status: None,
            to_status: Some(IncidentStatus::Detected),
        }];
        for m in &members {
            events.push(self.attach_event(&id, m));
            self.absorb(idx, m);
        }
        let ids = members.iter().map(|m| m.id.clone()).collect();
        self.write(idx, ids, vec![], events)
    }

    /// Indices of pending anomalies connected to pending[start] through related services
    /// or shared hosts, all in its scope.
    fn cluster(&self, start: usize) -> Vec<usize> {
        let scope_of = |a: &Anomaly| self.scope(&a.tenant, &a.labels);
        let key = scope_of(&self.pending[start]);
        // Spans run onset to onset: from each service's earliest waiting anomaly, as
        // `find_open` measures from a member's first signal, so a service's later
        // anomalies cannot shorten the span and make a coincidence look rarer.
        // Only learned co-occurrence weighs spans; a graph does not.
        let mut onset: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        if self.learns() {
            for a in self.pending.iter().filter(|a| scope_of(a) == key) {
                if let (Some(s), _) = self.service_and_host(&a.labels) {
                    let t = onset.entry(s).or_insert(a.ts);
                    *t = (*t).min(a.ts);
                }
            }
        }
        // Links reach `window_secs` at most. Anomalies merged on time are all that close
        // to the clock, so this only keeps one merged late from linking to ones far from
        // its own time, which it could not have met had it come on time.
        let window = Duration::seconds(self.cfg.window_secs as i64);
        let mut inside = vec![start];
        let mut seen: BTreeSet<usize> = [start].into();
        let mut i = 0;
        while i < inside.len() {
            let cur = &self.pending[inside[i]];
            let (cs, ch) = self.service_and_host(&cur.labels);
            for (j, other) in self.pending.iter().enumerate() {
                if seen.contains(&j) || scope_of(other) != key || (other.ts - cur.ts).abs() > window
                {
                    continue;
                }
                let (os, oh) = self.service_and_host(&other.labels);
                let linked = match (&cs, os) {
                    (Some(a), Some(b)) => {
                        let span = match (onset.get(a), onset.get(&b)) {
                            (Some(x), Some(y)) => *y - *x,
                            _ => Duration::zero(),
                        };
                        self.related_over(&key, a, &b, span)
                    }
                    _ => false,
                } || (ch.is_some() && ch == oh);
                if linked {
                    seen.insert(j);
                    inside.push(j);
                }
            }
            i += 1;
        }
        inside
    }

    fn create(
        &mut self,
        id: String,
        scope_key: String,
        tenant: &str,
        at: DateTime<Utc>,
        severity: Severity,
    ) -> usize {
        self.open.push(Open {
            scope_key,
            incident: Incident {
                id,
                tenant: tenant.to_string(),
                title: String::new(),
                status: IncidentStatus::Detected,
                severity,
                started_at: at,
                updated_at: at,
                resolved_at: None,
                scope: Labels::new(),
                root_cause_candidates: Vec::new(),
                anomaly_ids: Vec::new(),
                alert_fingerprints: Vec::new(),
            },
            services: BTreeMap::new(),
            hosts: BTreeSet::new(),
            last: at,
            announced: severity,
            signals: 0,
            firing: BTreeSet::new(),
            predicted: BTreeMap::new(),
            resolved_at: None,
            worse: at,
            episode: at,
        });
        self.open.len() - 1
    }

    fn attach_event(&self, incident: &str, a: &Anomaly) -> IncidentEvent {
        IncidentEvent {
            id: format!("{incident}-a-{}", a.id),
            incident_id: incident.to_string(),
            ts: a.ts,
            kind: IncidentEventKind::AnomalyAttached,
            actor: "seismo".into(),
            message: a.explanation.summary.clone(),
            from_status: None,
            to_status: None,
        }
    }

    /// Records one signal's facts on open incident `i`.
    fn note(&mut self, i: usize, sig: Noted<'_>) {
        let Noted {
            service,
            host,
            at,
            score,
            what,
            severity,
            change,
        } = sig;
        let window = Duration::seconds(self.cfg.window_secs as i64);
        let o = &mut self.open[i];
        if let Some(s) = service {
            let f = o.services.entry(s.to_string()).or_insert(ServiceFacts {
                first: at,
                max_score: score,
                strongest: what.to_string(),
                count: 0,
                changes: BTreeMap::new(),
            });
            if let Some((role, size, expected, observed)) = change {
                // For the worse: at or beyond the edge of the expected band. A reading
                // inside it (a fault's settling, flagged for its shape) is not.
                let worse = size >= 1.0;
                if worse {
                    if at - o.worse > window {
                        o.episode = at;
                    } else if at < o.episode && o.episode - at <= window {
                        // Merged late, but within a window of the run's start: the run
                        // began with it, as it would have had it come on time.
                        o.episode = at;
                    }
                    o.worse = o.worse.max(at);
                }
                let fresh = Strongest {
                    metric: what.to_string(),
                    size,
                    expected,
                    observed,
                    at,
                };
                let slot = f.changes.entry(role).or_insert(fresh.clone());
                // Within one run the larger change wins; a change for the worse of the
                // current run replaces one of an earlier run, never the other way round.
                let (now, then) = (at >= o.episode, slot.at >= o.episode);
                if (now == then && size > slot.size) || (now && !then && worse) {
                    *slot = fresh;
                }
            }
            f.count += 1;
            if at < f.first {
                f.first = at;
            }
            if score > f.max_score {
                f.max_score = score;
                f.strongest = what.to_string();
            }
        }
        if let Some(h) = host {
            o.hosts.insert(h.to_string());
        }
        o.last = o.last.max(at);
        o.incident.updated_at = o.incident.updated_at.max(at);
        o.incident.started_at = o.incident.started_at.min(at);
        o.incident.severity = o.incident.severity.max(severity);
    }

    fn absorb(&mut self, i: usize, a: &Anomaly) {
        // A standing prediction keeps its incident ongoing, as a firing alert does, until
        // a later forecast withdraws it.
        if let Some(b) = a.explanation.breach.as_ref().filter(|b| !b.withdrawn) {
            let fp = b.fingerprint(a.series_id);
            let until = b.eta.unwrap_or(b.earliest).max(b.generated_at);
            self.open[i].predicted.insert(fp.clone(), until);
            self.alerts
                .insert((a.tenant.clone(), fp), self.open[i].incident.id.clone());
        }
        let (service, host) = self.service_and_host(&a.labels);
        let role = self
            .cfg
            .metric_roles
            .get(&a.name)
            .copied()
            .unwrap_or_else(|| MetricRole::of(&a.name));
        self.note(
            i,
            Noted {
                service: service.as_deref(),
                host: host.as_deref(),
                at: a.ts,
                score: a.score,
                what: &a.name,
                severity: a.severity,
                change: Some((role, magnitude(a, role), a.expected, a.observed)),
            },
        );
        self.open[i].signals += 1;
    }

    fn alert(&mut self, a: Alert) -> Vec<IncidentWrite> {
        let scope = self.scope(&a.tenant, &a.labels);
        let at = if a.status == AlertStatus::Resolved {
            a.ends_at.unwrap_or(a.starts_at)
        } else {
            a.starts_at
        };
        self.alert_time = self.alert_time.max(Some(at));
        self.expire();
        let key = (a.tenant.clone(), a.fingerprint.clone());
        let known = self
            .alerts
            .get(&key)
            .and_then(|id| self.open.iter().position(|o| &o.incident.id == id));
        let name = a
            .labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| "alert".into());
        let severity = match a.labels.get("severity").map(String::as_str) {
            Some("critical" | "page") => Severity::Critical,
            Some("info") => Severity::Info,
            _ => Severity::Warning,
        };
        let (service, host) = self.service_and_host(&a.labels);
        let event = |incident: &str, kind: IncidentEventKind, verb: &str| IncidentEvent {
            id: format!(
                "{incident}-{verb}-{}-{}",
                a.fingerprint,
                a.starts_at.timestamp_millis()
            ),
            incident_id: incident.to_string(),
            ts: at,
            kind,
            actor: a.source.clone(),
            message: format!(
                "{name} {verb}{}",
                a.annotations
                    .get("summary")
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ),
            from_status: None,
            to_status: None,
        };
        if a.status == AlertStatus::Resolved {
            let Some(i) = known else { return Vec::new() };
            let e = event(
                &self.open[i].incident.id,
                IncidentEventKind::AlertResolved,
                "resolved",
            );
            self.open[i].last = self.open[i].last.max(at);
            self.open[i].firing.remove(&a.fingerprint);
            return vec![self.write(i, vec![], vec![], vec![e])];
        }
        if let Some(i) = known {
            // A repeated notification of an alert the incident already has.
            self.open[i].last = self.open[i].last.max(at);
            return Vec::new();
        }
        let (i, mut events) =
            match self.find_or_reopen(&scope, service.as_deref(), host.as_deref(), at) {
                Some(i) => (i, Vec::new()),
                None => {
                    let id = format!(
                        "{:016x}",
                        stable_hash(&[
                            a.tenant.as_bytes(),
                            b"incident-alert",
                            a.fingerprint.as_bytes(),
                            &a.starts_at.timestamp_millis().to_le_bytes()
                        ])
                    );
                    let i = self.create(id.clone(), scope, &a.tenant, at, severity);
                    let created = IncidentEvent {
                        id: format!("{id}-created"),
                        incident_id: id,
                        ts: at,
                        kind: IncidentEventKind::Created,
                        actor: "seismo".into(),
                        message: format!("opened by alert {name}"),
                        from_status: None,
                        to_status: Some(IncidentStatus::Detected),
                    };
                    (i, vec![created])
                }
            };
        events.push(event(
            &self.open[i].incident.id,
            IncidentEventKind::AlertFiring,
            "firing",
        ));
        self.note(
            i,
            Noted {
                service: service.as_deref(),
                host: host.as_deref(),
                at,
                score: 1.0,
                what: &name,
                severity,
                // A firing alert is as strong as a change at the edge of normal.
                change: Some((MetricRole::Other, 1.0, 0.0, 1.0)),
            },
        );
        self.open[i].signals += 1;
        self.open[i].firing.insert(a.fingerprint.clone());
        self.alerts.insert(key, self.open[i].incident.id.clone());
        let w = self.write(i, vec![], vec![a.fingerprint], events);
        self.settle(i, at);
        vec![w]
    }

    /// Ranks the incident's services as root-cause candidates with [`rank::rank`], the
    /// function `investigate` uses, fed with each service's largest change of each kind;
    /// among equal scores the service that went wrong first ranks first.
    fn rank(&self, o: &Open) -> Vec<RootCauseCandidate> {
        // The changes of the current run of changes for the worse (see `Open`) rank first;
        // the services of earlier runs follow, below them, as those runs ranked them.
        let run = o.episode;
        let evidence: Vec<(bool, Evidence)> = o
            .services
            .iter()
            .flat_map(|(s, f)| {
                f.changes.iter().map(move |(role, c)| {
                    (
                        c.at >= run,
                        Evidence {
                            service: s.clone(),
                            metric: c.metric.clone(),
                            role: *role,
                            change: Change {
                                size: c.size,
                                before: c.expected,
                                after: c.observed,
                                onset_ms: Some(f.first.timestamp_millis()),
                            },
                            // An anomaly below its expected value on a server latency is a fall.
                            falling: *role == MetricRole::ServerLatency && c.observed < c.expected,
                        },
                    )
                })
            })
            .collect();
        let first_all = o.services.values().map(|f| f.first).min();
        let first = |c: &RootCauseCandidate| o.services.get(&c.target).map(|f| f.first);
        let ranked = |e: Vec<Evidence>| {
            let mut out = rank::rank(&self.graph, &e, None);
            out.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| first(a).cmp(&first(b)))
                    .then_with(|| a.target.cmp(&b.target))
            });
            out
        };
        let mut out = ranked(
            evidence
                .iter()
                .filter(|(now, _)| *now)
                .map(|(_, e)| e.clone())
                .collect(),
        );
        let floor = out.last().map(|c| c.score).unwrap_or(1.0);
        let current: BTreeSet<String> = out.iter().map(|c| c.target.clone()).collect();
        for mut c in ranked(evidence.into_iter().map(|(_, e)| e).collect()) {
            if out.len() >= 5 {
                break;
            }
            if current.contains(&c.target) {
                continue;
            }
            // Never above a candidate of the run going on.
            c.score = c.score.min(floor);
            c.evidence
                .insert(0, "from an earlier run of changes in this incident".into());
            out.push(c);
        }
        out.truncate(5);
        for c in &mut out {
            if let Some(f) = o.services.get(&c.target) {
                let lead = first_all.map(|t| (f.first - t).num_seconds()).unwrap_or(0);
                c.evidence.insert(
                    0,
                    format!(
                        "first signal at {}{}; {} signals, strongest {} (score {:.2})",
                        short_time(f.first),
                        if lead > 0 {
                            format!(" ({lead} s after the earliest)")
                        } else {
                            String::new()
                        },
                        f.count,
                        f.strongest,
                        f.max_score
                    ),
                );
            }
            c.target = format!("{}={}", self.cfg.service_label, c.target);
        }
        out
    }

    fn write(
        &mut self,
        i: usize,
        anomaly_ids: Vec<String>,
        fingerprints: Vec<String>,
        mut events: Vec<IncidentEvent>,
    ) -> IncidentWrite {
        let ranked = self.rank(&self.open[i]);
        let o = &mut self.open[i];
        let created = events.iter().any(|e| e.kind == IncidentEventKind::Created);
        if !created && o.incident.severity > o.announced {
            // Severity only rises, so one event per level: its id is stable on replay.
            events.push(IncidentEvent {
                id: format!(
                    "{}-escalated-{}",
                    o.incident.id,
                    o.incident.severity.as_str()
                ),
                incident_id: o.incident.id.clone(),
                ts: o.last,
                kind: IncidentEventKind::Escalated,
                actor: "seismo".into(),
                message: format!(
                    "severity rose from {} to {}",
                    o.announced.as_str(),
                    o.incident.severity.as_str()
                ),
                from_status: None,
                to_status: None,
            });
        }
        o.announced = o.incident.severity;
        let services: Vec<&String> = o.services.keys().collect();
        o.incident.scope = Labels::new();
        if !services.is_empty() {
            o.incident.scope.insert(
                self.cfg.service_label.clone(),
                services
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if !o.hosts.is_empty() {
            // The first MAX_SCOPE_HOSTS by name: enough to find an incident by host, and
            // bounded for a fleet-wide one.
            o.incident.scope.insert(
                self.cfg.host_label.clone(),
                o.hosts
                    .iter()
                    .take(MAX_SCOPE_HOSTS)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if let Some(top) = ranked.first() {
            let svc = top
                .target
                .split_once('=')
                .map(|(_, s)| s)
                .unwrap_or(&top.target);
            let what = o
                .services
                .get(svc)
                .map(|f| f.strongest.clone())
                .unwrap_or_default();
            let more = o.services.len() - 1;
            o.incident.title = if more == 0 {
                format!("{what} anomalous on {svc}")
            } else {
                format!(
                    "{what} anomalous on {svc}, with {more} related service{}",
                    if more == 1 { "" } else { "s" }
                )
            };
        } else {
            let shown: Vec<&str> = o.hosts.iter().take(5).map(String::as_str).collect();
            let more = o.hosts.len().saturating_sub(shown.len());
            o.incident.title = format!(
                "{} signals on host{} {}{}",
                o.signals,
                if o.hosts.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        o.incident.root_cause_candidates = ranked;
        IncidentWrite {
            incident: o.incident.clone(),
            new_anomaly_ids: anomaly_ids,
            new_alert_fingerprints: fingerprints,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use seismo_schemas::{AnomalyKind, Explanation};

    fn cfg() -> CorrelateConfig {
        let mut deps = BTreeMap::new();
        deps.insert(
            "gateway".to_string(),
            vec!["catalog".to_string(), "checkout".to_string()],
        );
        deps.insert("catalog".to_string(), vec!["db".to_string()]);
        deps.insert("checkout".to_string(), vec!["payments".to_string()]);
        CorrelateConfig {
            dependencies: deps,
            ..Default::default()
        }
    }

    fn anomaly(service: &str, host: &str, minute: i64, severity: Severity) -> Anomaly {
        let labels: Labels = [
            ("service".to_string(), service.to_string()),
            ("host".to_string(), host.to_string()),
        ]
        .into();
        let ts = Utc.timestamp_opt(1_700_000_000 + minute * 60, 0).unwrap();
        Anomaly {
            id: format!("{service}-{host}-{minute}"),
            tenant: "t".into(),
            series_id: 1,
            name: "latency".into(),
            labels,
            ts,
            observed: 2.0,
            expected: 1.0,
            lower: 0.5,
            upper: 1.5,
            score: 0.9,
            severity,
            kind: AnomalyKind::Point,
            detector: "test".into(),
            explanation: Explanation {
                summary: "s".into(),
                ..Default::default()
            },
        }
    }

    /// Feeds warning anomalies (service, host, minute) in order; returns the writes.
    fn warnings(c: &mut Correlator, signals: &[(&str, &str, i64)]) -> Vec<IncidentWrite> {
        signals
            .iter()
            .flat_map(|&(s, h, m)| c.process(Signal::Anomaly(anomaly(s, h, m, Severity::Warning))))
            .collect()
    }

    #[test]
    fn an_incident_open_through_two_faults_names_the_cause_of_the_one_going_on() {
        let mut c = Correlator::new(cfg());
        let mut writes = warnings(
            &mut c,
            &[
                ("db", "db-1", 0),
                ("db", "db-2", 1),
                ("catalog", "cat-1", 1),
                ("gateway", "gw-1", 2),
            ],
        );
        let first = writes.last().unwrap().incident.clone();
        assert_eq!(first.root_cause_candidates[0].target, "service=db");
        // Twenty minutes on, still within the quiet period: payments slows checkout, and
        // the same incident takes it in. db's changes are more than a window old.
        writes.extend(warnings(
            &mut c,
            &[("checkout", "co-1", 20), ("payments", "pay-1", 21)],
        ));
        let last = &writes.last().unwrap().incident;
        assert_eq!(last.id, first.id, "one incident");
        let ranked = &last.root_cause_candidates;
        assert_eq!(ranked[0].target, "service=payments");
        // The first fault's cause is still shown, below, and said to be of the earlier run.
        let db = ranked.iter().find(|c| c.target == "service=db").unwrap();
        assert!(db.score <= ranked[0].score);
        assert!(
            db.evidence.iter().any(|e| e.contains("earlier run")),
            "{db:?}"
        );
    }

    #[test]
    fn a_signal_merged_late_belongs_to_the_run_it_would_have_joined_on_time() {
        let mut c = Correlator::new(cfg());
        let mut writes = warnings(
            &mut c,
            &[
                ("db", "db-1", 5),
                ("db", "db-2", 6),
                ("catalog", "cat-1", 6),
                ("gateway", "gw-1", 7),
                // Two minutes before the incident's first signal, merged late.
                ("checkout", "co-1", 3),
            ],
        );
        let last = writes.pop().unwrap().incident;
        assert!(
            last.root_cause_candidates
                .iter()
                .any(|c| c.target == "service=checkout"),
            "{:?}",
            last.root_cause_candidates
        );
        assert!(
            last.root_cause_candidates
                .iter()
                .all(|c| c.evidence.iter().all(|e| !e.contains("earlier run"))),
            "one fault, one run: {:?}",
            last.root_cause_candidates
        );
    }

    #[test]
    fn a_faults_lingering_tail_keeps_its_cause() {
        let mut c = Correlator::new(cfg());
        let writes = warnings(
            &mut c,
            &[
                ("db", "db-1", 0),
                ("db", "db-2", 1),
                ("catalog", "cat-1", 1),
                ("gateway", "gw-1", 2),
                // The symptoms linger, each within a window of the last, for longer than
                // a window after db's own changes.
                ("catalog", "cat-2", 12),
                ("gateway", "gw-2", 24),
            ],
        );
        let ids: BTreeSet<_> = writes.iter().map(|w| w.incident.id.clone()).collect();
        assert_eq!(ids.len(), 1);
        let last = &writes.last().unwrap().incident;
        assert_eq!(last.root_cause_candidates[0].target, "service=db");
    }

    #[test]
    fn spreading_latency_becomes_one_incident_rooted_at_the_callee() {
        let mut c = Correlator::new(cfg());
        let mut writes = Vec::new();
        writes.extend(c.process(Signal::Anomaly(anomaly("db", "db-1", 0, Severity::Warning))));
        assert!(writes.is_empty(), "one warning waits for company");
        writes.extend(c.process(Signal::Anomaly(anomaly("db", "db-2", 1, Severity::Warning))));
        writes.extend(c.process(Signal::Anomaly(anomaly(
            "catalog",
            "cat-1",
            2,
            Severity::Warning,
        ))));
        writes.extend(c.process(Signal::Anomaly(anomaly(
            "gateway",
            "gw-1",
            3,
            Severity::Warning,
        ))));
        // payments is not related to any member: it waits in pending.
        writes.extend(c.process(Signal::Anomaly(anomaly(
            "payments",
            "pay-1",
            3,
            Severity::Warning,
        ))));
        let ids: BTreeSet<_> = writes.iter().map(|w| w.incident.id.clone()).collect();
        assert_eq!(ids.len(), 1);
        let last = &writes.last().unwrap().incident;
        let members: usize = writes.iter().map(|w| w.new_anomaly_ids.len()).sum();
        assert_eq!(members, 4);
        assert_eq!(last.root_cause_candidates[0].target, "service=db");
        assert_eq!(last.scope["service"], "catalog,db,gateway");
        assert_eq!(last.scope["host"], "cat-1,db-1,db-2,gw-1");
        assert!(last.title.contains("on db"), "{}", last.title);
    }

    #[test]
    fn quiet_incidents_stop_collecting_and_closed_ones_are_left_alone() {
        let mut c = Correlator::new(cfg());
        let crit = |m| Signal::Anomaly(anomaly("db", "db-1", m, Severity::Critical));
        assert!(
            c.process(crit(0)).is_empty(),
            "it waits group_wait for company first"
        );
        // The next anomaly moves the clock past the wait: the critical one opens alone,
        // and this one, 100 minutes later, is too late to join it.
        let w = c.process(crit(100));
        assert_eq!(w.len(), 1);
        let first = w[0].incident.id.clone();
        // Two minutes on, the 100th-minute anomaly has waited enough: it opens an incident
        // that this one joins at once.
        let w = c.process(crit(102));
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].incident.id, w[1].incident.id);
        let later = w[0].incident.id.clone();
        assert_ne!(later, first);
        // Once people close it, new anomalies do not join it.
        c.mark_closed(&later);
        assert!(c.process(crit(103)).is_empty());
        let w = c.flush();
        assert_eq!(w.len(), 1);
        assert!(w[0].incident.id != later && w[0].incident.id != first);
    }

    #[test]
    fn the_watermark_opens_and_resolves_without_a_later_signal() {
        let mut c = Correlator::new(cfg());
        let t0 = 1_700_000_000_000;
        let min = 60_000;
        assert!(
            c.process(Signal::Anomaly(anomaly(
                "db",
                "db-1",
                0,
                Severity::Critical
            )))
            .is_empty()
        );
        // The merge promises nothing more before half a minute: the group still waits.
        let (w, moved) = c.advance(t0 + min / 2);
        assert!(moved && w.is_empty());
        assert_eq!(c.pending(), 1);
        // Past group_wait (60 s) the incident opens, with no other signal arriving, and
        // its creation time is when the wait ran out, not when the clock was read.
        let (w, _) = c.advance(t0 + 5 * min);
        assert_eq!(w.len(), 1, "{w:?}");
        let created = w[0]
            .events
            .iter()
            .find(|e| e.kind == IncidentEventKind::Created)
            .unwrap();
        assert_eq!(created.ts.timestamp_millis(), t0 + min);
        assert_eq!(c.pending(), 0);
        // The same watermark again changes nothing.
        assert!(!c.advance(t0 + 5 * min).1);
        // Half an hour (quiet_secs) after its last signal it resolves, as the clock passes.
        c.advance(t0 + 29 * min);
        assert!(c.take_steps().is_empty(), "not quiet long enough yet");
        c.advance(t0 + 31 * min);
        let steps = c.take_steps();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].to, IncidentStatus::Resolved);
        assert_eq!(steps[0].event.ts.timestamp_millis(), t0 + 30 * min);
    }

    #[test]
    fn a_quiet_incident_resolves_itself_and_reopens_when_its_signals_recur() {
        let mut c = Correlator::new(cfg());
        let db = |m| Signal::Anomaly(anomaly("db", "db-1", m, Severity::Critical));
        let elsewhere = |m| Signal::Anomaly(anomaly("search", "s-1", m, Severity::Warning));
        assert!(c.process(db(0)).is_empty());
        let w = c.process(db(2));
        let id = w[0].incident.id.clone();
        assert!(w.iter().all(|w| w.incident.id == id));
        // Half an hour (quiet_secs) after its last signal, as the clock passes it.
        c.process(elsewhere(20));
        assert!(c.take_steps().is_empty(), "not quiet long enough yet");
        c.process(elsewhere(35));
        let steps = c.take_steps();
        assert_eq!(steps.len(), 1, "{steps:#?}");
        assert_eq!(
            (steps[0].incident_id.as_str(), steps[0].to),
            (id.as_str(), IncidentStatus::Resolved)
        );
        assert_eq!(steps[0].from, AUTO_RESOLVE_FROM);
        assert_eq!(
            steps[0].event.ts,
            Utc.timestamp_opt(1_700_000_000 + 2 * 60 + 1800, 0).unwrap()
        );
        // db again within reopen_secs (13 min after it resolved): the same incident
        // reopens and takes the signal.
        let w = c.process(db(45));
        let steps = c.take_steps();
        assert_eq!(steps.len(), 1, "{steps:#?}");
        assert_eq!(steps[0].to, IncidentStatus::Detected);
        assert_eq!(steps[0].from, REOPEN_FROM);
        // (The other write opens the two `search` warnings' own incident.)
        let mine: Vec<_> = w.iter().filter(|w| w.incident.id == id).collect();
        assert_eq!(mine.len(), 1, "{w:#?}");
        assert_eq!(mine[0].new_anomaly_ids, ["db-db-1-45"]);
        // Quiet again, resolved again (at minute 75); this recurrence comes long after
        // reopen_secs: a new incident.
        c.process(elsewhere(100));
        let steps: Vec<StatusStep> = c
            .take_steps()
            .into_iter()
            .filter(|s| s.incident_id == id)
            .collect();
        assert_eq!(steps.len(), 1, "{steps:#?}");
        assert_eq!(steps[0].to, IncidentStatus::Resolved);
        // Each cycle's step has its own id (the event time), so replays repeat none.
        let at_ms = (1_700_000_000i64 + 75 * 60) * 1000;
        assert_eq!(steps[0].event.id, format!("{id}-resolved-{at_ms}"));
        assert!(c.process(db(200)).is_empty(), "waits as a new group");
        let w = c.process(db(203));
        assert!(!w.is_empty());
        assert_ne!(w[0].incident.id, id);
        assert!(c.take_steps().is_empty());
    }

    #[test]
    fn an_incident_with_a_firing_alert_does_not_resolve_itself() {
        let mut c = Correlator::new(cfg());
        let t = |m: i64| Utc.timestamp_opt(1_700_000_000 + m * 60, 0).unwrap();
        let alert = |fp: &str, service: &str, status, start: i64, end: i64| Alert {
            tenant: "default".into(),
            fingerprint: fp.into(),
            status,
            labels: [
                ("alertname".to_string(), format!("{service}Down")),
                ("service".to_string(), service.to_string()),
            ]
            .into(),
            annotations: Default::default(),
            starts_at: t(start),
            ends_at: (status == AlertStatus::Resolved).then(|| t(end)),
            source: "alertmanager".into(),
        };
        let firing = AlertStatus::Firing;
        let w = c.process(Signal::Alert(alert("f1", "db", firing, 0, 0)));
        assert_eq!(w.len(), 1);
        let id = w[0].incident.id.clone();
        let elsewhere = |m| Signal::Anomaly(anomaly("search", "s-1", m, Severity::Warning));
        // Both clocks move far past the quiet period; the alert still fires: it stays.
        c.process(Signal::Alert(alert("f2", "mail", firing, 45, 0)));
        c.process(elsewhere(45));
        c.process(elsewhere(90));
        assert!(c.take_steps().is_empty());
        // It resolves at minute 50; half an hour on, the incident resolves itself.
        c.process(Signal::Alert(alert(
            "f1",
            "db",
            AlertStatus::Resolved,
            0,
            50,
        )));
        c.process(Signal::Alert(alert("f3", "queue", firing, 85, 0)));
        c.process(elsewhere(100));
        let steps = c.take_steps();
        assert_eq!(steps.len(), 1, "{steps:#?}");
        assert_eq!(
            (steps[0].incident_id.as_str(), steps[0].to),
            (id.as_str(), IncidentStatus::Resolved)
        );
    }

    /// A predicted breach at `minute`, expected at minute `eta`.
    fn predicted(minute: i64, eta: i64, withdrawn: bool) -> Signal {
        let mut a = anomaly("db", "db-1", minute, Severity::Critical);
        a.id = format!("p-{minute}-{withdrawn}");
        a.kind = AnomalyKind::Predicted;
        let at = |m: i64| Utc.timestamp_opt(1_700_000_000 + m * 60, 0).unwrap();
        a.explanation.breach = Some(Box::new(seismo_schemas::PredictedBreach {
            threshold: "disk-full".into(),
            limit: 90.0,
            direction: seismo_schemas::BreachDirection::Above,
            eta: Some(at(eta)),
            earliest: at(eta),
            generated_at: a.ts,
            model: "mstl".into(),
            withdrawn,
            forecast: Vec::new(),
        }));
        Signal::Anomaly(a)
    }

    #[test]
    fn a_predicted_breach_holds_its_incident_until_withdrawn() {
        let mut c = Correlator::new(cfg());
        let elsewhere = |m| Signal::Anomaly(anomaly("search", "s-1", m, Severity::Warning));
        // A critical prediction (breach expected at minute 600) opens an incident after
        // the group wait.
        let mut w = c.process(predicted(0, 600, false));
        w.extend(c.process(elsewhere(5)));
        let id = w
            .iter()
            .find(|w| w.new_anomaly_ids.contains(&"p-0-false".to_string()))
            .map(|w| w.incident.id.clone())
            .expect("an incident for the prediction");
        // Far past the quiet period, the standing prediction keeps it from resolving; a
        // report with a moved ETA joins the same incident.
        c.process(elsewhere(60));
        c.process(elsewhere(120));
        let w = c.process(predicted(121, 500, false));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].incident.id, id);
        assert_eq!(w[0].new_anomaly_ids, vec!["p-121-false".to_string()]);
        assert!(c.take_steps().iter().all(|s| s.incident_id != id));
        // Withdrawn: a note on the incident, which then resolves itself once quiet.
        let w = c.process(predicted(130, 500, true));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].incident.id, id);
        assert!(
            w[0].new_anomaly_ids.is_empty(),
            "a withdrawal is not a new signal"
        );
        c.process(elsewhere(200));
        let steps = c.take_steps();
        assert!(
            steps
                .iter()
                .any(|s| s.incident_id == id && s.to == IncidentStatus::Resolved),
            "{steps:#?}"
        );
        // A prediction withdrawn before any incident opened never opens one.
        let mut d = Correlator::new(cfg());
        assert!(d.process(predicted(0, 600, false)).is_empty());
        assert!(d.process(predicted(1, 600, true)).is_empty());
        assert!(d.flush().is_empty());
    }

    #[test]
    fn a_signal_of_an_incident_held_open_joins_it_in_any_order() {
        // The prediction holds its incident open past the quiet period. At minute 90 the
        // same series is anomalous again and its prediction is re-reported: whichever of
        // the two the merge takes first, both join the standing incident.
        for prediction_first in [true, false] {
            let mut c = Correlator::new(cfg());
            let elsewhere = |m| Signal::Anomaly(anomaly("search", "s-1", m, Severity::Warning));
            let mut w = c.process(predicted(0, 600, false));
            w.extend(c.process(elsewhere(5)));
            let id = w[0].incident.id.clone();
            c.process(elsewhere(80));
            let mut again = anomaly("db", "db-1", 90, Severity::Critical);
            again.id = "db-90".into();
            let mut signals = vec![predicted(90, 500, false), Signal::Anomaly(again)];
            if !prediction_first {
                signals.reverse();
            }
            let mut w = Vec::new();
            for s in signals {
                w.extend(c.process(s));
            }
            w.extend(c.flush());
            let joined: Vec<&str> = w
                .iter()
                .filter(|w| w.incident.id == id)
                .flat_map(|w| w.new_anomaly_ids.iter().map(String::as_str))
                .collect();
            assert!(
                joined.contains(&"db-90") && joined.contains(&"p-90-false"),
                "prediction first: {prediction_first}: {w:#?}"
            );
            assert!(
                w.iter().all(|w| w.incident.id == id),
                "a second incident opened: {w:#?}"
            );
        }
    }

    #[test]
    fn a_prediction_merged_after_its_incident_resolved_gives_the_same_incidents() {
        // Predictions carry no watermark, so the merge may take one stamped before its
        // incident resolved itself after the resolution. It must still hold that incident
        // open, so the same series going wrong again later joins it in either order.
        let t = |m: i64| (1_700_000_000 + m * 60) * 1000;
        for on_time in [true, false] {
            let mut c = Correlator::new(cfg());
            let mut w = c.process(Signal::Anomaly(anomaly(
                "db",
                "db-1",
                0,
                Severity::Critical,
            )));
            w.extend(c.advance(t(2)).0);
            let id = w[0].incident.id.clone();
            if on_time {
                w.extend(c.process(predicted(20, 600, false)));
                w.extend(c.advance(t(40)).0);
            } else {
                // Quiet since minute 0: resolved at minute 30, before the prediction.
                w.extend(c.advance(t(40)).0);
                assert!(
                    c.take_steps()
                        .iter()
                        .any(|s| s.incident_id == id && s.to == IncidentStatus::Resolved),
                    "the late order must resolve first, or it tests nothing"
                );
                w.extend(c.process(predicted(20, 600, false)));
                let steps = c.take_steps();
                let reopened = steps
                    .iter()
                    .find(|s| s.incident_id == id && s.to == IncidentStatus::Detected)
                    .expect("the late prediction reopens its incident");
                assert!(
                    reopened.event.ts >= Utc.timestamp_opt(1_700_000_000 + 30 * 60, 0).unwrap()
                );
            }
            // 30 minutes past the resolution, beyond reopen_secs.
            let mut again = anomaly("db", "db-1", 60, Severity::Critical);
            again.id = "db-60".into();
            w.extend(c.process(Signal::Anomaly(again)));
            w.extend(c.flush());
            let joined: Vec<&str> = w
                .iter()
                .filter(|w| w.incident.id == id)
                .flat_map(|w| w.new_anomaly_ids.iter().map(String::as_str))
                .collect();
            assert!(
                joined.contains(&"p-20-false") && joined.contains(&"db-60"),
                "on time: {on_time}: {w:#?}"
            );
            assert!(
                w.iter().all(|w| w.incident.id == id),
                "on time: {on_time}: a second incident opened: {w:#?}"
            );
        }
    }

    #[test]
    fn a_prediction_merged_after_its_companion_aged_out_still_opens_their_incident() {
        // One warning anomaly alone opens nothing; with a warning prediction of the same
        // moment it does. Merged after the anomaly left the group window, the prediction
        // must still open the same incident, and hold it for what follows.
        let t = |m: i64| (1_700_000_000 + m * 60) * 1000;
        let warning_prediction = || match predicted(0, 600, false) {
            Signal::Anomaly(mut a) => {
                a.severity = Severity::Warning;
                Signal::Anomaly(a)
            }
            other => other,
        };
        let mut runs = Vec::new();
        for on_time in [true, false] {
            let mut c = Correlator::new(cfg());
            let mut w = c.process(Signal::Anomaly(anomaly("db", "db-1", 0, Severity::Warning)));
            if on_time {
                w.extend(c.process(warning_prediction()));
                w.extend(c.advance(t(20)).0);
            } else {
                w.extend(c.advance(t(20)).0);
                assert!(w.is_empty(), "one warning alone opens nothing: {w:#?}");
                assert_eq!(c.pending(), 0, "the anomaly left the group window");
                w.extend(c.process(warning_prediction()));
                w.extend(c.advance(t(21)).0);
            }
            let mut again = anomaly("db", "db-1", 60, Severity::Warning);
            again.id = "db-60".into();
            w.extend(c.process(Signal::Anomaly(again)));
            w.extend(c.flush());
            let mut members: Vec<(String, String)> = w
                .iter()
                .flat_map(|w| {
                    w.new_anomaly_ids
                        .iter()
                        .map(|a| (w.incident.id.clone(), a.clone()))
                })
                .collect();
            members.sort();
            runs.push(members);
        }
        assert_eq!(runs[0].len(), 3, "{:#?}", runs[0]);
        assert!(
            runs[0].iter().all(|(id, _)| *id == runs[0][0].0),
            "{:#?}",
            runs[0]
        );
        assert_eq!(runs[0], runs[1], "on time, then late");
    }

    #[test]
    fn a_signal_of_a_resolved_incidents_quiet_past_joins_it_without_reopening_it() {
        // Critical db anomalies at minutes 0 and 10; quiet since, so resolved at minute 40.
        // A db anomaly of minute 5 merged after that belongs to the incident, but the
        // incident stays resolved: reopening it would resolve it again at minute 40, a
        // step the store has already taken (and would skip, leaving it DETECTED).
        let t = |m: i64| (1_700_000_000 + m * 60) * 1000;
        let mut c = Correlator::new(cfg());
        let mut w = c.process(Signal::Anomaly(anomaly(
            "db",
            "db-1",
            0,
            Severity::Critical,
        )));
        let mut ten = anomaly("db", "db-1", 10, Severity::Critical);
        ten.id = "db-10".into();
        w.extend(c.process(Signal::Anomaly(ten)));
        w.extend(c.advance(t(45)).0);
        let id = w[0].incident.id.clone();
        assert!(
            c.take_steps()
                .iter()
                .any(|s| s.incident_id == id && s.to == IncidentStatus::Resolved),
            "resolved at minute 40, or this tests nothing"
        );
        let mut late = anomaly("db", "db-1", 5, Severity::Critical);
        late.id = "db-5".into();
        let w = c.process(Signal::Anomaly(late));
        assert!(
            w.iter()
                .any(|w| w.incident.id == id && w.new_anomaly_ids == ["db-5"]),
            "{w:#?}"
        );
        c.advance(t(46));
        c.advance(t(80));
        assert_eq!(c.take_steps(), Vec::new(), "no status step");
        assert!(c.open_ids().is_empty());
    }

    #[test]
    fn a_signal_less_than_a_window_late_still_completes_its_group() {
        // A warning at minute 0 waits alone and ages out of the group window at minute 16.
        // A warning prediction of minute 2 merged then (14 minutes late) would have made a
        // pair with it on time: it must still, and the incident opens at once.
        let t = |m: i64| (1_700_000_000 + m * 60) * 1000;
        let mut c = Correlator::new(cfg());
        let mut w = c.process(Signal::Anomaly(anomaly("db", "db-1", 0, Severity::Warning)));
        w.extend(c.advance(t(16)).0);
        assert!(w.is_empty(), "one warning alone opens nothing: {w:#?}");
        assert_eq!(c.pending(), 0, "the anomaly left the group window");
        let Signal::Anomaly(mut p) = predicted(2, 600, false) else {
            unreachable!()
        };
        p.severity = Severity::Warning;
        let w = c.process(Signal::Anomaly(p));
        let mut members: Vec<&str> = w
            .iter()
            .flat_map(|w| w.new_anomaly_ids.iter().map(String::as_str))
            .collect();
        members.sort();
        assert_eq!(members, ["db-db-1-0", "p-2-false"], "{w:#?}");
    }

    #[test]
    fn a_signal_merged_late_does_not_group_with_anomalies_far_from_its_time() {
        // A warning prediction of minute 0 and a warning anomaly of minute 40, the same
        // service: on time, each waits alone and opens nothing. Merged late, beside the
        // anomaly, the prediction must not make a pair with it.
        let t = |m: i64| (1_700_000_000 + m * 60) * 1000;
        let mut c = Correlator::new(cfg());
        let mut w = c.process(Signal::Anomaly(anomaly(
            "db",
            "db-1",
            40,
            Severity::Warning,
        )));
        let Signal::Anomaly(mut p) = predicted(0, 600, false) else {
            unreachable!()
        };
        p.severity = Severity::Warning;
        w.extend(c.process(Signal::Anomaly(p)));
        w.extend(c.advance(t(42)).0);
        w.extend(c.flush());
        assert!(w.is_empty(), "{w:#?}");
    }

    #[test]
    fn a_prediction_nobody_withdraws_lapses_at_its_eta() {
        let mut c = Correlator::new(cfg());
        let elsewhere = |m| Signal::Anomaly(anomaly("search", "s-1", m, Severity::Warning));
        let mut w = c.process(predicted(0, 240, false));
        w.extend(c.process(elsewhere(5)));
        let id = w[0].incident.id.clone();
        // Its series went silent: no withdrawal ever comes. Held until minute 240...
        c.process(elsewhere(200));
        assert!(c.take_steps().iter().all(|s| s.incident_id != id));
        // ...and resolved once the predicted time has passed.
        c.process(elsewhere(260));
        assert!(
            c.take_steps()
                .iter()
                .any(|s| s.incident_id == id && s.to == IncidentStatus::Resolved)
        );
    }

    #[test]
    fn simultaneous_symptoms_wait_and_become_one_incident() {
        // A fault shows on several services in the same minute, in no useful order: the
        // critical caller first, then the database it depends on, then another caller.
        let mut c = Correlator::new(cfg());
        let mut writes = Vec::new();
        for (svc, host, sev) in [
            ("catalog", "cat-1", Severity::Critical),
            ("gateway", "gw-1", Severity::Warning),
            ("db", "db-1", Severity::Critical),
            ("db", "db-2", Severity::Warning),
        ] {
            writes.extend(c.process(Signal::Anomaly(anomaly(svc, host, 0, sev))));
        }
        assert!(writes.is_empty());
        writes.extend(c.process(Signal::Anomaly(anomaly(
            "catalog",
            "cat-2",
            2,
            Severity::Warning,
        ))));
        let ids: BTreeSet<_> = writes.iter().map(|w| w.incident.id.clone()).collect();
        assert_eq!(ids.len(), 1, "{writes:#?}");
        let inc = &writes.last().unwrap().incident;
        let members: usize = writes.iter().map(|w| w.new_anomaly_ids.len()).sum();
        assert_eq!(members, 5);
        assert_eq!(inc.root_cause_candidates[0].target, "service=db");
        let created = writes[0]
            .events
            .iter()
            .find(|e| e.kind == IncidentEventKind::Created)
            .unwrap();
        // Opened when group_wait ran out (a minute after the first symptom), though the
        // signal that noticed it came a minute later.
        assert_eq!(
            created.ts,
            Utc.timestamp_opt(1_700_000_000 + 60, 0).unwrap()
        );
    }

    /// Which anomalies each incident took, by incident id.
    fn members(writes: &[IncidentWrite]) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for w in writes {
            out.entry(w.incident.id.clone())
                .or_default()
                .extend(w.new_anomaly_ids.iter().cloned());
        }
        out
    }

    #[test]
    fn without_a_graph_a_group_is_weighed_the_same_whichever_watermarks_came() {
        // A critical api anomaly and a warning db anomaly in the same minute, after 15
        // quiet minutes. Whether that is a rare coincidence depends on how many ticks have
        // elapsed; a watermark that happens to arrive after the group wait must not change
        // the count its ripening is weighed against.
        let at = |m: i64| (1_700_000_000 + m * 60) * 1000;
        let run = |watermarks: &[i64]| {
            let mut c = Correlator::new(CorrelateConfig {
                learn_cooccurrence: true,
                ..Default::default()
            });
            let mut w = c.advance(at(0)).0;
            w.extend(c.process(Signal::Anomaly(anomaly(
                "api",
                "a-1",
                15,
                Severity::Critical,
            ))));
            w.extend(c.process(Signal::Anomaly(anomaly("db", "d-1", 15, Severity::Warning))));
            for &m in watermarks {
                w.extend(c.advance(at(m)).0);
            }
            w.extend(c.flush());
            members(&w)
        };
        let soon = run(&[16, 40]);
        assert!(!soon.is_empty(), "the critical anomaly opens an incident");
        assert_eq!(soon, run(&[40]));
        assert_eq!(soon, run(&[17, 25, 40]));
    }

    #[test]
    fn without_a_graph_services_that_start_failing_together_become_one_incident() {
        let run = |learn: bool, flapped: bool| {
            let mut c = Correlator::new(CorrelateConfig {
                learn_cooccurrence: learn,
                ..Default::default()
            });
            let at = |m: i64| (1_700_000_000 + m * 60) * 1000;
            let mut writes = c.advance(at(0)).0;
            // A flapping service, anomalous every other minute for two hours; its incident
            // resolves itself and is past reopening long before the fault.
            if flapped {
                for m in (60..180).step_by(2) {
                    writes.extend(c.process(Signal::Anomaly(anomaly(
                        "noisy",
                        "n-1",
                        m,
                        Severity::Warning,
                    ))));
                }
            }
            // A fault: api and db go wrong in the same minute, on their own hosts, and
            // noisy happens to flap in that minute too, so all three wait together.
            for (svc, host, m) in [
                ("api", "a-1", 300),
                ("db", "d-1", 300),
                ("noisy", "n-1", 300),
                ("api", "a-2", 302),
            ] {
                writes.extend(c.process(Signal::Anomaly(anomaly(svc, host, m, Severity::Warning))));
            }
            writes.extend(c.advance(at(340)).0);
            let m = members(&writes);
            m.values()
                .find(|m| m.contains("api-a-1-300"))
                .expect("the fault opens an incident")
                .clone()
        };
        let fault = run(true, true);
        assert!(fault.contains("db-d-1-300"), "{fault:?}");
        assert!(fault.contains("api-a-2-302"), "{fault:?}");
        // noisy waited beside them, but a service that flaps meets anything by chance.
        assert!(!fault.contains("noisy-n-1-300"), "{fault:?}");
        // Had noisy been quiet until then, the same minute would have taken it in.
        let quiet = run(true, false);
        assert!(quiet.contains("noisy-n-1-300"), "{quiet:?}");
        // Without learning, api and db stay apart.
        let apart = run(false, true);
        assert!(!apart.contains("db-d-1-300"), "{apart:?}");
    }

    #[test]
    fn alerts_open_join_and_resolve() {
        let mut c = Correlator::new(cfg());
        let labels: Labels = [
            ("alertname".to_string(), "HighErrorRate".to_string()),
            ("service".to_string(), "checkout".to_string()),
        ]
        .into();
        let starts = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let mut alert = Alert {
            tenant: "t".into(),
            fingerprint: "fp".into(),
            status: AlertStatus::Firing,
            labels,
            annotations: Labels::new(),
            starts_at: starts,
            ends_at: None,
            source: "alertmanager".into(),
        };
        let w = c.process(Signal::Alert(alert.clone()));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].events[0].kind, IncidentEventKind::Created);
        let id = w[0].incident.id.clone();
        // A related anomaly joins the alert's incident.
        let j = c.process(Signal::Anomaly(anomaly(
            "payments",
            "p1",
            1,
            Severity::Warning,
        )));
        assert_eq!(j[0].incident.id, id);
        assert!(
            c.process(Signal::Alert(alert.clone())).is_empty(),
            "repeats are absorbed"
        );
        alert.status = AlertStatus::Resolved;
        alert.ends_at = Some(starts + Duration::minutes(5));
        let r = c.process(Signal::Alert(alert));
        assert_eq!(r[0].events[0].kind, IncidentEventKind::AlertResolved);
    }

    #[test]
    fn changes_announce_opening_growth_escalation_and_alert_resolution() {
        use seismo_schemas::ChangeKind;
        let mut c = Correlator::new(cfg());
        let mut writes = Vec::new();
        for (svc, m, sev) in [
            ("db", 0, Severity::Warning),
            ("catalog", 0, Severity::Warning),
            ("db", 2, Severity::Warning),
            ("db", 3, Severity::Critical),
        ] {
            writes.extend(c.process(Signal::Anomaly(anomaly(svc, "h", m, sev))));
        }
        let kinds: Vec<Vec<ChangeKind>> = writes
            .iter()
            .map(|w| {
                crate::changes::changes_of(w)
                    .iter()
                    .map(|c| c.kind)
                    .collect()
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                vec![ChangeKind::Opened],
                vec![ChangeKind::SignalAdded],
                vec![ChangeKind::Escalated, ChangeKind::SignalAdded],
            ],
            "{writes:#?}"
        );
        let last = crate::changes::changes_of(writes.last().unwrap());
        assert_eq!(last[0].incident.severity, Severity::Critical);
        assert!(
            last[0].incident.anomaly_ids.is_empty(),
            "member lists stay out"
        );
        assert_eq!(last[0].incident.id, writes[0].incident.id);
        // A replay announces the same change ids.
        let mut again = Correlator::new(cfg());
        let mut replayed = Vec::new();
        for (svc, m, sev) in [
            ("db", 0, Severity::Warning),
            ("catalog", 0, Severity::Warning),
            ("db", 2, Severity::Warning),
            ("db", 3, Severity::Critical),
        ] {
            replayed.extend(again.process(Signal::Anomaly(anomaly(svc, "h", m, sev))));
        }
        let ids = |w: &[IncidentWrite]| -> Vec<String> {
            w.iter()
                .flat_map(crate::changes::changes_of)
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(ids(&writes), ids(&replayed));
    }

    #[test]
    fn a_long_degradation_stays_one_small_incident() {
        // 30,000 anomalies on one host over three weeks of minutes: one incident, whose
        // state and writes do not grow with the number of signals.
        let mut c = Correlator::new(cfg());
        let mut sizes = Vec::new();
        let mut ids = BTreeSet::new();
        for m in 0..30_000 {
            let svc = ["db", "catalog", "gateway"][m % 3];
            for w in c.process(Signal::Anomaly(anomaly(
                svc,
                "h1",
                m as i64,
                Severity::Warning,
            ))) {
                ids.insert(w.incident.id.clone());
                assert!(
                    w.new_anomaly_ids.len() <= 2,
                    "writes carry only new members"
                );
            }
            if m % 10_000 == 9_999 {
                sizes.push(postcard::to_stdvec(&c).unwrap().len());
            }
        }
        assert_eq!(ids.len(), 1);
        assert!(
            sizes.iter().all(|&s| s < 4096),
            "state stays small: {sizes:?}"
        );
        // Flat, but for the varint-encoded counters growing by a byte or two.
        assert!(sizes[2] - sizes[0] < 32, "and flat: {sizes:?}");
    }

    #[test]
    fn replay_gives_the_same_incidents() {
        let inputs: Vec<_> = (0..6)
            .map(|m| {
                anomaly(
                    if m % 2 == 0 { "db" } else { "catalog" },
                    "h",
                    m,
                    Severity::Warning,
                )
            })
            .collect();
        let run = || {
            let mut c = Correlator::new(cfg());
            inputs
                .iter()
                .flat_map(|a| c.process(Signal::Anomaly(a.clone())))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
