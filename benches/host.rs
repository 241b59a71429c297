//! Cost of the per-host model: the same points through detect with and without host labels.
//!
//! 20 hosts of 38 metrics (an SMD server's width), one point a minute each. `with_hosts`
//! labels every series with its host, so each host's metrics are also scored together
//! (whitened residual rows, a 50-tree forest refitted every 128 rows, the joint tests);
//! `series_only` sends the same points without the label, so only the per-series
//! detectors run. An iteration is 128 minutes, one refit period, so a refit's cost is
//! spread over exactly the rows it serves. The host model's cost per host and bucket is
//! the difference of the two per host-minute; its state per host is the difference in the
//! size of the checkpoint entries (resident memory is not compared here: two detectors in
//! one process share an allocator, and the difference of two RSS readings came out
//! negative).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seismo_detect::{DetectConfig, Detector};
use seismo_schemas::MetricPoint;

const HOSTS: usize = 20;
const METRICS: usize = 38;
/// Minutes before measuring: past the members' warm-up and the forests' first fits.
const WARM: i64 = 1000;
const PERIOD: i64 = 128;
const START_MS: i64 = 1_767_571_200_000;

/// The minute's points of every host: a shared daily load, each metric's own weight on it,
/// and noise, so the host's metrics move together as a server's do.
fn minute(m: i64, hosts: bool, rng: &mut SmallRng) -> Vec<MetricPoint> {
    let day = (m as f64 / 1440.0 * std::f64::consts::TAU).sin();
    let mut out = Vec::with_capacity(HOSTS * METRICS);
    for h in 0..HOSTS {
        let load = 1.0 + 0.5 * day + 0.05 * rng.random::<f64>();
        for k in 0..METRICS {
            let weight = (k % 5) as f64 * 0.3;
            let mut labels: seismo_schemas::Labels =
                [("metric".to_string(), format!("m{k}"))].into();
            if hosts {
                labels.insert("host".to_string(), format!("host{h}"));
            } else {
                labels.insert("node".to_string(), format!("host{h}"));
            }
            out.push(MetricPoint {
                tenant: "default".into(),
                name: "server_metric".into(),
                labels,
                ts: START_MS + m * 60_000,
                value: 10.0 + k as f64 + weight * load + 0.1 * rng.random::<f64>(),
            });
        }
    }
    out
}

/// A detector warmed up on `WARM` minutes, with the size of its checkpoint.
fn warmed(hosts: bool) -> (Detector, SmallRng, usize) {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut det = Detector::new(DetectConfig::default());
    for m in 0..WARM {
        for p in minute(m, hosts, &mut rng) {
            det.process(0, &p);
        }
    }
    let checkpoint: usize = det
        .take_dirty(0)
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    (det, rng, checkpoint)
}

fn host_model(c: &mut Criterion) {
    let (mut series, mut series_rng, series_ckpt) = warmed(false);
    let (mut hosts, mut hosts_rng, hosts_ckpt) = warmed(true);
    println!(
        "after {WARM} minutes of {HOSTS} hosts x {METRICS} metrics: checkpoint {:.0} KiB a host \
         with hosts, {:.0} KiB without ({:.0} KiB a host for its model)",
        hosts_ckpt as f64 / HOSTS as f64 / 1024.0,
        series_ckpt as f64 / HOSTS as f64 / 1024.0,
        (hosts_ckpt as f64 - series_ckpt as f64) / HOSTS as f64 / 1024.0,
    );
    let mut g = c.benchmark_group("host_model");
    g.throughput(Throughput::Elements(HOSTS as u64 * PERIOD as u64));
    g.sample_size(10);
    for (name, det, rng, hosts) in [
        ("with_hosts", &mut hosts, &mut hosts_rng, true),
        ("series_only", &mut series, &mut series_rng, false),
    ] {
        let mut m = WARM;
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut raised = 0;
                for _ in 0..PERIOD {
                    for p in minute(m, hosts, rng) {
                        raised += det.process(0, &p).len();
                    }
                    m += 1;
                }
                raised
            })
        });
    }
    g.finish();
}

criterion_group!(benches, host_model);
criterion_main!(benches);
