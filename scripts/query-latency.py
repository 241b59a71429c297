#!/usr/bin/env python3
"""Latency of `seismo query` over a million anomaly rows, beside psql and sqlite3 asked the
same question directly; both sides run as a command, start to finish (process start and
connection included). Needs a build with `--features sql` and SEISMO_TEST_PG_URL
(`scripts/services.sh start` prints it).

    cargo build --release --features sql
    scripts/query-latency.py [--rows 1000000] [--runs 5]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

QUERIES = [
    ("count all",
     "SELECT count(*) FROM anomalies",
     "SELECT count(*) FROM anomalies WHERE tenant = 'acme'",
     "SELECT count(*) FROM anomalies WHERE tenant = 'acme'"),
    ("by service and severity",
     "SELECT service, severity, count(*) AS n, avg(score) FROM anomalies GROUP BY 1, 2 ORDER BY n DESC",
     "SELECT labels->>'service', severity, count(*) AS n, avg(score) FROM anomalies WHERE tenant = 'acme' GROUP BY 1, 2 ORDER BY n DESC",
     "SELECT json_extract(labels, '$.service'), severity, count(*) AS n, avg(score) FROM anomalies WHERE tenant = 'acme' GROUP BY 1, 2 ORDER BY n DESC"),
    ("top 20 of the last day",
     "SELECT id, service, score FROM anomalies WHERE ts >= TIMESTAMP '2026-01-23T00:00:00Z' ORDER BY score DESC LIMIT 20",
     "SELECT id, labels->>'service', score FROM anomalies WHERE tenant = 'acme' AND time >= '2026-01-23T00:00:00Z' ORDER BY score DESC LIMIT 20",
     "SELECT id, json_extract(labels, '$.service'), score FROM anomalies WHERE tenant = 'acme' AND time >= 1769126400000 ORDER BY score DESC LIMIT 20"),
    ("incidents by members (3-way join)",
     "SELECT i.id, count(*) AS n, max(a.score) FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id JOIN anomalies a ON a.id = m.anomaly_id GROUP BY i.id ORDER BY n DESC, i.id LIMIT 10",
     "SELECT i.id, count(*) AS n, max(a.score) FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id JOIN anomalies a ON a.id = m.anomaly_id WHERE i.tenant = 'acme' AND a.tenant = 'acme' GROUP BY i.id ORDER BY n DESC, i.id LIMIT 10",
     "SELECT i.id, count(*) AS n, max(a.score) FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id JOIN anomalies a ON a.id = m.anomaly_id WHERE i.tenant = 'acme' AND a.tenant = 'acme' GROUP BY i.id ORDER BY n DESC, i.id LIMIT 10"),
]

# The tenant asked about gets ROWS anomalies two seconds apart from 2026-01-01 (23 days);
# another tenant a tenth as many beside them; 10,000 incidents of ten anomalies each.
FILL_PG = [
    "SELECT seismo_ensure_partitions('anomalies', '2026-01-01', '2026-01-25')",
    "INSERT INTO anomalies SELECT 'a' || g, 'acme', g % 1000, 'latency', jsonb_build_object('service', 'svc' || (g % 20), 'host', 'h' || (g % 1000)), timestamptz '2026-01-01' + g * interval '2 seconds', 50 + g % 50, 1, 0, 2, (g % 997) / 997.0, (ARRAY['info', 'warning', 'critical'])[1 + g % 3], 'point', 'iforest', '{{}}'::jsonb FROM generate_series(1, {rows}) g",
    "INSERT INTO anomalies SELECT 'r' || g, 'rival', g % 1000, 'latency', jsonb_build_object('service', 'rsvc' || (g % 20)), timestamptz '2026-01-01' + g * interval '20 seconds', 1, 1, 0, 2, 0.5, 'info', 'point', 'iforest', '{{}}'::jsonb FROM generate_series(1, {rows} / 10) g",
    "INSERT INTO incidents SELECT 'i' || k, 'acme', 'incident ' || k, 'DETECTED', 'warning', timestamptz '2026-01-01' + k * interval '3 minutes', timestamptz '2026-01-01' + k * interval '3 minutes', NULL, '{{}}'::jsonb, '[]'::jsonb FROM generate_series(0, 9999) k",
    "INSERT INTO incident_anomalies SELECT 'i' || (g / 10), 'a' || g FROM generate_series(1, 99999) g",
    "VACUUM ANALYZE",
]
FILL_SQLITE = [
    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {rows}) INSERT INTO anomalies SELECT 'a' || x, 'acme', x % 1000, 'latency', json_object('service', 'svc' || (x % 20), 'host', 'h' || (x % 1000)), 1767225600000 + x * 2000, 50 + x % 50, 1, 0, 2, (x % 997) / 997.0, CASE x % 3 WHEN 0 THEN 'info' WHEN 1 THEN 'warning' ELSE 'critical' END, 'point', 'iforest', '{{}}' FROM g",
    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {rows} / 10) INSERT INTO anomalies SELECT 'r' || x, 'rival', x % 1000, 'latency', json_object('service', 'rsvc' || (x % 20)), 1767225600000 + x * 20000, 1, 1, 0, 2, 0.5, 'info', 'point', 'iforest', '{{}}' FROM g",
    "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < 9999) INSERT INTO incidents SELECT 'i' || x, 'acme', 'incident ' || x, 'DETECTED', 'warning', 1767225600000 + x * 180000, 1767225600000 + x * 180000, NULL, '{{}}', '[]' FROM g",
    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 99999) INSERT INTO incident_anomalies SELECT 'i' || (x / 10), 'a' || x FROM g",
    "ANALYZE",
]


def run(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[:2]} failed: {p.stderr[-2000:]}")
    return took, p.stdout


def median_of(cmd, runs, env=None):
    run(cmd, env)  # warm: the database's cache
    return statistics.median(run(cmd, env)[0] for _ in range(runs))


def compare(name, seismo, env, direct, which, runs, rows):
    print(f"\n{name}: {rows} anomaly rows for the tenant (and {rows // 10} for another), median of {runs} runs, ms")
    print("(command: start to finish; engine: the answer's elapsed_ms, planning and running)")
    print(f"{'query':<36} {'seismo':>8} {'engine':>8} {'direct':>8} {'ratio':>7}")
    for q in QUERIES:
        cmd = [seismo, "query", q[1], "--tenant", "acme", "--format", "json"]
        run(cmd, env)
        took, engine = [], []
        for _ in range(runs):
            t, out = run(cmd, env)
            took.append(t)
            engine.append(json.loads(out)["elapsed_ms"])
        ours = statistics.median(took)
        peer = median_of(direct(q[which]), runs)
        print(f"{q[0]:<36} {ours * 1000:>8.0f} {statistics.median(engine):>8.0f} {peer * 1000:>8.0f} {ours / peer:>7.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seismo", default="target/release/seismo")
    a = ap.parse_args()
    base = os.environ.get("SEISMO_TEST_PG_URL") or sys.exit("SEISMO_TEST_PG_URL is not set: run scripts/services.sh start")
    db = f"seismo_qlat_{os.getpid()}"
    run(["psql", base, "-qc", f"CREATE DATABASE {db}"])
    url = base.rsplit("/", 1)[0] + "/" + db
    env = dict(os.environ, SEISMO_STORAGE__URL=url, SEISMO_STORAGE__TIMESCALEDB="off")
    run([a.seismo, "migrate"], env)
    t = time.perf_counter()
    for s in FILL_PG:
        run(["psql", url, "-qc", s.format(rows=a.rows)])
    print(f"PostgreSQL filled in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    try:
        compare("PostgreSQL 15", a.seismo, env, lambda sql: ["psql", url, "-qAtc", sql], 2, a.runs, a.rows)
    finally:
        run(["psql", base, "-qc", f"DROP DATABASE {db}"])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "q.db")
        env = dict(os.environ, SEISMO_STORAGE__URL=f"sqlite://{path}")
        run([a.seismo, "migrate"], env)
        t = time.perf_counter()
        for s in FILL_SQLITE:
            run(["sqlite3", path, s.format(rows=a.rows)])
        print(f"SQLite filled in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        compare("SQLite", a.seismo, env, lambda sql: ["sqlite3", path, sql], 3, a.runs, a.rows)


if __name__ == "__main__":
    main()
