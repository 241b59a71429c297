//! A simulated fleet: services with a dependency graph, hosts, daily load, and injected faults.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seismo_schemas::{Labels, MetricPoint};

/// One service of the fleet.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    /// Services it calls, with the share of its requests that call each.
    pub calls: Vec<(&'static str, f64)>,
    /// Requests per second per host at the daily peak.
    pub peak_rps: f64,
    /// Own p99 latency in seconds, before dependencies.
    pub own_latency: f64,
    /// Own error ratio.
    pub own_errors: f64,
    pub hosts: usize,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Multiplies the service's own latency.
    Latency(f64),
    /// Sets the service's own error ratio.
    Errors(f64),
    /// Grows memory of one host by this fraction per hour.
    MemoryLeak { host: usize, per_hour: f64 },
}

/// An injected fault and its ground truth.
#[derive(Debug, Clone)]
pub struct Fault {
    pub name: &'static str,
    pub service: &'static str,
    pub effect: Effect,
    /// Minutes since the start of the simulation.
    pub onset_min: u64,
    pub end_min: u64,
    /// Services whose metrics the fault changes: the faulty one and, where the fault
    /// spreads through calls, everything that calls it.
    pub affected: Vec<&'static str>,
    /// Fingerprints of alerts the fault fires.
    pub alert: Option<&'static str>,
}

/// The simulated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub services: Vec<Service>,
    pub faults: Vec<Fault>,
    pub start_ms: i64,
    pub minutes: u64,
    pub tenant: String,
}

/// Metric names every host reports.
pub const METRICS: [&str; 5] = [
    "http_requests_per_second",
    "http_request_duration_p99_seconds",
    "http_errors_ratio",
    "cpu_utilization",
    "memory_used_bytes",
];

const DAY_MIN: u64 = 1440;

fn svc(
    name: &'static str,
    calls: &[(&'static str, f64)],
    peak_rps: f64,
    own_latency: f64,
    own_errors: f64,
) -> Service {
    Service {
        name,
        calls: calls.to_vec(),
        peak_rps,
        own_latency,
        own_errors,
        hosts: 3,
    }
}

impl Fleet {
    /// The demo fleet: 12 services, 3 hosts each, `days` days of minutes starting on a
    /// Monday. Faults fall on the last day, so earlier days teach the baselines.
    pub fn demo(days: u64) -> Fleet {
        let services = vec![
            svc("frontend", &[("gateway", 1.0)], 400.0, 0.030, 0.001),
            svc(
                "gateway",
                &[
                    ("auth", 0.9),
                    ("catalog", 0.5),
                    ("search", 0.2),
                    ("cart", 0.3),
                    ("checkout", 0.1),
                    ("recommendations", 0.4),
                ],
                500.0,
                0.010,
                0.001,
            ),
            svc("auth", &[("cache", 1.0)], 450.0, 0.008, 0.0005),
            svc(
                "catalog",
                &[("db", 0.8), ("cache", 1.0)],
                300.0,
                0.015,
                0.001,
            ),
            svc("search", &[("catalog", 0.6)], 120.0, 0.040, 0.002),
            svc("cart", &[("cache", 1.0), ("db", 0.3)], 150.0, 0.012, 0.001),
            svc(
                "checkout",
                &[("cart", 1.0), ("payments", 1.0), ("inventory", 1.0)],
                60.0,
                0.020,
                0.003,
            ),
            svc("payments", &[("db", 1.0)], 60.0, 0.080, 0.002),
            svc("inventory", &[("db", 1.0)], 80.0, 0.015, 0.001),
            svc(
                "recommendations",
                &[("catalog", 0.7), ("cache", 1.0)],
                200.0,
                0.035,
                0.001,
            ),
            svc("db", &[], 900.0, 0.004, 0.0002),
            svc("cache", &[], 2000.0, 0.001, 0.0001),
        ];
        let last_day = (days.max(2) - 1) * DAY_MIN;
        let mut fleet = Fleet {
            services,
            faults: Vec::new(),
            start_ms: 1_767_571_200_000, // 2026-01-05T00:00:00Z, a Monday
            minutes: days.max(2) * DAY_MIN,
            tenant: "default".into(),
        };
        let callers_of_db = fleet.callers("db");
        let callers_of_checkout = fleet.callers("checkout");
        fleet.faults = vec![
            Fault {
                name: "db-latency-spike",
                service: "db",
                effect: Effect::Latency(8.0),
                onset_min: last_day + 3 * 60,
                end_min: last_day + 3 * 60 + 25,
                affected: [vec!["db"], callers_of_db].concat(),
                alert: None,
            },
            Fault {
                name: "checkout-deploy-error-burst",
                service: "checkout",
                effect: Effect::Errors(0.08),
                onset_min: last_day + 10 * 60,
                end_min: last_day + 10 * 60 + 20,
                affected: [vec!["checkout"], callers_of_checkout].concat(),
                alert: Some("HighErrorRate/checkout"),
            },
            Fault {
                name: "recommendations-memory-leak",
                service: "recommendations",
                effect: Effect::MemoryLeak {
                    host: 1,
                    per_hour: 0.03,
                },
                onset_min: last_day + 13 * 60,
                end_min: fleet.minutes,
                affected: vec!["recommendations"],
                alert: None,
            },
        ];
        fleet
    }

    /// Every service that calls `name`, directly or through others.
    pub fn callers(&self, name: &str) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        let mut stack = vec![name.to_string()];
        while let Some(x) = stack.pop() {
            for s in &self.services {
                if s.calls.iter().any(|(c, _)| *c == x) && !out.contains(&s.name) {
                    out.push(s.name);
                    stack.push(s.name.to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// The dependency graph in the correlate configuration's shape.
    pub fn dependencies(&self) -> BTreeMap<String, Vec<String>> {
        self.services
            .iter()
            .filter(|s| !s.calls.is_empty())
            .map(|s| {
                (
                    s.name.to_string(),
                    s.calls.iter().map(|(c, _)| c.to_string()).collect(),
                )
            })
            .collect()
    }

    /// Number of series the fleet reports.
    pub fn series(&self) -> usize {
        self.services.iter().map(|s| s.hosts).sum::<usize>() * METRICS.len()
    }

    /// Callees before callers, so latencies and errors can be summed up the graph.
    fn topo_order(&self) -> Vec<usize> {
        let mut order = Vec::new();
        let mut done = vec![false; self.services.len()];
        while order.len() < self.services.len() {
            for (i, s) in self.services.iter().enumerate() {
                if !done[i]
                    && s.calls.iter().all(|(c, _)| {
                        done[self
                            .services
                            .iter()
                            .position(|t| t.name == *c)
                            .expect("known")]
                    })
                {
                    done[i] = true;
                    order.push(i);
                }
            }
        }
        order
    }
}

/// Generates the fleet's telemetry minute by minute, deterministically from a seed.
#[derive(Debug)]
pub struct Simulator {
    fleet: Fleet,
    rng: SmallRng,
    order: Vec<usize>,
    minute: u64,
    /// Per service and host: memory baseline in bytes.
    memory: Vec<Vec<f64>>,
    labels: Vec<Vec<[Labels; 5]>>,
}

/// One minute of telemetry.
#[derive(Debug, Clone)]
pub struct Tick {
    pub minute: u64,
    pub ts_ms: i64,
    pub points: Vec<MetricPoint>,
    /// Mean error ratio per service this minute (what an alerting rule would evaluate).
    pub error_ratio: BTreeMap<&'static str, f64>,
}

fn gauss(rng: &mut SmallRng) -> f64 {
    // Box-Muller: exact normal noise, so detection thresholds mean what they say.
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Simulator {
    pub fn new(fleet: Fleet, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let order = fleet.topo_order();
        let memory = fleet
            .services
            .iter()
            .map(|s| {
                (0..s.hosts)
                    .map(|_| 2.0e9 * (0.8 + 0.4 * rng.random::<f64>()))
                    .collect()
            })
            .collect();
        let labels = fleet
            .services
            .iter()
            .map(|s| {
                (0..s.hosts)
                    .map(|h| {
                        let l: Labels = [
                            ("service".to_string(), s.name.to_string()),
                            ("host".to_string(), format!("{}-{}", s.name, h + 1)),
                            ("env".to_string(), "demo".to_string()),
                        ]
                        .into();
                        [l.clone(), l.clone(), l.clone(), l.clone(), l]
                    })
                    .collect()
            })
            .collect();
        Simulator {
            fleet,
            rng,
            order,
            minute: 0,
            memory,
            labels,
        }
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Daily load shape in 0.25..1: low at night, peak in the afternoon (UTC).
    fn load(minute: u64) -> f64 {
        let day_pos = (minute % DAY_MIN) as f64 / DAY_MIN as f64;
        0.625 - 0.375 * (std::f64::consts::TAU * (day_pos - 0.125)).cos()
    }

    fn effect(&self, service: &str, minute: u64) -> Option<Effect> {
        self.fleet
            .faults
            .iter()
            .find(|f| f.service == service && (f.onset_min..f.end_min).contains(&minute))
            .map(|f| f.effect)
    }

    fn onset(&self, service: &str, minute: u64) -> u64 {
        self.fleet
            .faults
            .iter()
            .find(|f| f.service == service && f.onset_min <= minute)
            .map(|f| f.onset_min)
            .unwrap_or(minute)
    }
}

impl Iterator for Simulator {
    type Item = Tick;

    fn next(&mut self) -> Option<Tick> {
        if self.minute >= self.fleet.minutes {
            return None;
        }
        let m = self.minute;
        self.minute += 1;
        let ts_ms = self.fleet.start_ms + m as i64 * 60_000;
        let load = Self::load(m);
        let n = self.fleet.services.len();
        // Latency and errors accumulate up the call graph: a caller waits for its callees
        // and fails with them, weighted by the share of requests that call them.
        let mut latency = vec![0.0; n];
        let mut errors = vec![0.0; n];
        for &i in &self.order {
            let s = &self.fleet.services[i];
            let mut lat = s.own_latency * (1.0 + 0.3 * load);
            let mut err = s.own_errors;
            match self.effect(s.name, m) {
                Some(Effect::Latency(f)) => lat *= f,
                Some(Effect::Errors(e)) => err = e,
                _ => {}
            }
            for (callee, share) in &s.calls {
                let j = self
                    .fleet
                    .services
                    .iter()
                    .position(|t| t.name == *callee)
                    .expect("known");
                lat += 0.5 * share * latency[j];
                err += 0.5 * share * errors[j];
            }
            latency[i] = lat;
            errors[i] = err.min(1.0);
        }
        let mut points = Vec::with_capacity(self.fleet.series());
        let mut error_ratio = BTreeMap::new();
        for (i, s) in self.fleet.services.iter().enumerate() {
            let mut err_sum = 0.0;
            for h in 0..s.hosts {
                let rps = (s.peak_rps * load * (1.0 + 0.03 * gauss(&mut self.rng))).max(0.0);
                let lat = latency[i] * (0.05 * gauss(&mut self.rng)).exp();
                // Binomial noise of an error ratio measured over a minute of requests.
                let reqs = (rps * 60.0).max(1.0);
                let p = errors[i];
                let err =
                    (p + (p * (1.0 - p) / reqs).sqrt() * gauss(&mut self.rng)).clamp(0.0, 1.0);
                err_sum += err;
                let cpu = (0.15 + 0.6 * load * (1.0 + 0.03 * gauss(&mut self.rng))).clamp(0.0, 1.0);
                let mut mem = self.memory[i][h] * (1.0 + 0.005 * gauss(&mut self.rng));
                if let Some(Effect::MemoryLeak { host, per_hour }) = self.effect(s.name, m)
                    && host == h
                {
                    let hours = (m - self.onset(s.name, m)) as f64 / 60.0;
                    mem *= 1.0 + per_hour * hours;
                }
                for (k, v) in [rps, lat, err, cpu, mem].into_iter().enumerate() {
                    points.push(MetricPoint {
                        tenant: self.fleet.tenant.clone(),
                        name: METRICS[k].to_string(),
                        labels: self.labels[i][h][k].clone(),
                        ts: ts_ms,
                        value: v,
                    });
                }
            }
            error_ratio.insert(s.name, err_sum / s.hosts as f64);
        }
        Some(Tick {
            minute: m,
            ts_ms,
            points,
            error_ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_is_deterministic_and_faults_show() {
        let fleet = Fleet::demo(3);
        assert!(fleet.services.len() >= 10);
        let a: Vec<Tick> = Simulator::new(fleet.clone(), 1).take(5).collect();
        let b: Vec<Tick> = Simulator::new(fleet.clone(), 1).take(5).collect();
        assert_eq!(a[4].points, b[4].points);
        assert_eq!(a[0].points.len(), fleet.series());
        let db = fleet
            .faults
            .iter()
            .find(|f| f.name == "db-latency-spike")
            .unwrap();
        assert!(db.affected.contains(&"catalog") && db.affected.contains(&"frontend"));
        let sim = Simulator::new(fleet.clone(), 1);
        let ticks: Vec<Tick> = sim.skip(db.onset_min as usize - 1).take(2).collect();
        let lat = |t: &Tick| {
            t.points
                .iter()
                .filter(|p| p.name == METRICS[1] && p.labels["service"] == "db")
                .map(|p| p.value)
                .sum::<f64>()
        };
        assert!(lat(&ticks[1]) > 4.0 * lat(&ticks[0]));
    }
}
