//! Throughput of the forecast stage's core: series forecast per second on one core, each with two weeks of hourly history.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seismo_forecast::forecaster::Produced;
use seismo_forecast::{ForecastConfig, Forecaster};
use seismo_schemas::MetricPoint;

const SERIES: usize = 200;
const HOUR: i64 = 3_600_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
/// Two weeks of hourly history before the timed rounds.
const HISTORY_HOURS: i64 = 14 * 24;

fn value(s: usize, hour: i64) -> f64 {
    let day = (hour as f64 / 24.0 * std::f64::consts::TAU + s as f64).sin();
    let weekend = if (hour / 24) % 7 >= 5 { -3.0 } else { 0.0 };
    50.0 + (s % 9) as f64
        + 0.01 * hour as f64
        + 8.0 * day
        + weekend
        + ((hour * 7919 + s as i64 * 104_729) % 101) as f64 * 0.02
}

fn point(s: usize, hour: i64) -> MetricPoint {
    MetricPoint {
        tenant: "bench".into(),
        name: "requests".into(),
        labels: [("host".to_string(), format!("h{s}"))].into(),
        ts: T0 + hour * HOUR,
        value: value(s, hour),
    }
}

fn forecast(c: &mut Criterion) {
    // Every series due at every bucket, no CPU budget: each timed round forecasts all of
    // them, 12 hours ahead, with the default models and backtest.
    let cfg = ForecastConfig {
        every_secs: 3600,
        budget_ms_per_sec: 0,
        ..ForecastConfig::default()
    };
    let mut f = Forecaster::new(cfg);
    let mut out = Produced::default();
    for hour in 0..HISTORY_HOURS {
        for s in 0..SERIES {
            f.process(0, &point(s, hour), &mut out);
        }
        out.forecasts.clear();
    }
    let mut g = c.benchmark_group("forecast");
    g.throughput(Throughput::Elements(SERIES as u64));
    g.sample_size(10);
    let mut hour = HISTORY_HOURS;
    g.bench_function("200_series_2_weeks_hourly", |b| {
        b.iter(|| {
            let before = f.stats.forecasts;
            for s in 0..SERIES {
                f.process(0, &point(s, hour), &mut out);
            }
            hour += 1;
            assert_eq!(f.stats.forecasts - before, SERIES as u64);
            out.forecasts.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, forecast);
criterion_main!(benches);
