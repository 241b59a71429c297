//! Throughput and state size of the streaming ensemble (`StreamScorer`) over 10,000 series.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seismo_detect::{StreamConfig, StreamScorer};

const SERIES: usize = 10_000;
/// Points per series per iteration, after a warm-up past every component's start-up.
const STEPS: i64 = 50;
const WARM: i64 = 2000;

fn value(s: usize, i: i64) -> f64 {
    let phase = (i as f64 / 288.0 + s as f64 * 0.01) * std::f64::consts::TAU;
    10.0 + s as f64 % 7.0 + phase.sin() + ((i * 7919 + s as i64 * 104_729) % 101) as f64 * 0.003
}

fn ensemble(c: &mut Criterion) {
    let cfg = StreamConfig::default();
    let mut scorers: Vec<StreamScorer> = (0..SERIES)
        .map(|s| StreamScorer::staggered(&cfg, s as u64 * 0x9E37_79B9))
        .collect();
    // Time-major, as a stream delivers them: every series' point of a minute, then the next.
    for i in 0..WARM {
        for (s, sc) in scorers.iter_mut().enumerate() {
            sc.update(&cfg, i * 300_000, value(s, i));
        }
    }
    let bytes: usize = scorers.iter().map(StreamScorer::state_bytes).sum();
    println!(
        "state: {} series, {:.0} bytes per series ({:.1} MiB in all)",
        SERIES,
        bytes as f64 / SERIES as f64,
        bytes as f64 / (1 << 20) as f64
    );
    let mut g = c.benchmark_group("ensemble");
    g.throughput(Throughput::Elements(SERIES as u64 * STEPS as u64));
    g.sample_size(10);
    let mut t = WARM;
    g.bench_function("10k_series", |b| {
        b.iter(|| {
            let mut total = 0.0;
            for i in t..t + STEPS {
                for (s, sc) in scorers.iter_mut().enumerate() {
                    total += sc.update(&cfg, i * 300_000, value(s, i)).score;
                }
            }
            t += STEPS;
            total
        })
    });
    g.finish();
}

criterion_group!(benches, ensemble);
criterion_main!(benches);
