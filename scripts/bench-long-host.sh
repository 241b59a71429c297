#!/usr/bin/env bash
# What correlation costs over weeks of one server: streams a server-metric entity (train
# then test rows, ../shared/data/multivariate layout) through the embedded pipeline twice,
# as separate processes, with correlation and without, and prints both runs and the ratio
# of their drain times. Usage: scripts/bench-long-host.sh DIR [ENTITY]
# (e.g. ../shared/data/multivariate/smd machine-2-2; default: the first entity of DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/bench-long-host.sh DIR [ENTITY]}
entity=${2:+--entity $2}
cargo build --release --locked --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# shellcheck disable=SC2086
target/release/seismo eval host "$dir" $entity --no-correlate --json "$out/off.json"
# shellcheck disable=SC2086
target/release/seismo eval host "$dir" $entity --json "$out/on.json"
python3 scripts/check-long-host.py "$out/off.json" "$out/on.json"
