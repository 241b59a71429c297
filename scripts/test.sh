#!/usr/bin/env bash
# Runs Seismo's whole test suite: unit, integration, API, end-to-end and doc tests.
#
# The PostgreSQL, Kafka-protocol and local-model tests need real servers: this starts a
# throwaway PostgreSQL, a tansu broker and llama.cpp's server with a small model with
# scripts/services.sh (building tansu and llama-server on first use, into caches outside
# the clone) and leaves them running for the next run; `scripts/services.sh stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh start | grep '^export ')"
cargo test --workspace --locked --all-features "$@"
