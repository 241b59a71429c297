#!/usr/bin/env bash
# Runs Seismo's whole test suite: unit, integration, API, end-to-end and doc tests.
#
# The PostgreSQL and Kafka-protocol tests need real servers: this starts a throwaway
# PostgreSQL and a tansu broker with scripts/services.sh (installing tansu on first use)
# and leaves them running for the next run; `scripts/services.sh stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh start | grep '^export ')"
cargo test --workspace --locked "$@"
