#!/usr/bin/env bash
# Distributed-mode benchmark: ingest points/s from Kafka into PostgreSQL, and latency from
# produce to anomaly row. Starts the local services (scripts/services.sh) if needed.
# BENCH_STEPS (default 1000) time steps of 1000 series are ingested.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh start | grep '^export ')"
cargo bench --locked --bench distributed
