#!/usr/bin/env bash
# Runs Seismo's whole test suite: unit, integration, API, end-to-end and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
