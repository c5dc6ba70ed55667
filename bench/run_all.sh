#!/usr/bin/env bash
# Runs every benchmark of docs/benchmarks.md in one go, on this machine, and keeps the tables and JSON.
#
#   bash bench/run_all.sh                 # tables and JSON in /tmp/spactor_bench/<date>/
#   OUT=/tmp/bench bash bench/run_all.sh
#
# Needs the project's .venv (make env) and, for the peer, a separate venv with torch and transformers:
#   python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install torch==2.13.0 transformers
# (or SPACTOR_BENCH_PYTHON=/path/to/python). Timings on a shared machine are noisy: the load average is
# recorded before and after each script; ratios measured inside one script are the robust figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/spactor_bench/$(date +%F)}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
unset JAX_COMPILATION_CACHE_DIR  # compile times and memory as a first run sees them

run() {
  local name=$1; shift
  echo "== $name: $* (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  "$PY" "bench/$name.py" --json="$OUT/$name.json" "$@" 2>>"$OUT/$name.stderr" | tee "$OUT/$name.txt"
  echo "== $name done in $((SECONDS - start)) s (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/log.txt"
}

run hybrid_overhead
run peer_torch
run data_pipeline
run ssr_generation
run memory
run remat
echo "tables: $OUT/*.txt"
