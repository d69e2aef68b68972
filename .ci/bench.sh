#!/usr/bin/env bash
# The load benchmark in one command (docs/benchmark.md explains it and shows the last results).
#
#   .ci/bench.sh                      full run (~12 min on 2 cores): 7 scenarios x 2 interleaved
#                                     rounds of 10 s, a one-CPU concurrency sweep, then
#                                     1,000,000 unique inputs through the bounded cache
#   BENCH_QUICK=1 .ci/bench.sh        ~1 minute smoke run (2 s per scenario, one round,
#                                     100,000 inputs) that CI can afford
#
# Installs wrk (Debian) when missing, builds shout-proxy, the fake shoutcloud and the bare
# reference handler (bench/reference, its own cargo package) in release mode, runs
# bench/run.py, and writes target/bench/results.json, results.md and benchmark.svg.
#
# Environment: BENCH_SECONDS (10), BENCH_ROUNDS (2), BENCH_QUICK, BENCH_WARMUP (2 s),
# BENCH_CONNECTIONS (32), BENCH_THREADS (1), BENCH_MEMORY_INPUTS (1000000), BENCH_CACHE_BYTES
# (67108864), BENCH_LOG_FORMAT (json, as deployed), BENCH_ONLY=scenario,... ,
# BENCH_SKIP_MEMORY=1, BENCH_SWEEP=0|1 (default 1, 0 in quick mode), BENCH_PROFILE=1 (perf profiles of
# the cache-hit and breaker-open paths into target/bench/perf-*.txt), BENCH_STRICT=1 (exit 1
# when a target is missed; off by default because a shared machine's noise is not a
# regression), BENCH_UPDATE_DOCS=1 (copy the table and chart into docs/benchmark.md and
# docs/benchmark.svg).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${BENCH_OUT:-target/bench}"
mkdir -p "$out"
export BENCH_OUT="$out"

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk" >&2
  sudo_=""
  if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq wrk >/dev/null
fi
if [ "${BENCH_PROFILE:-0}" != 0 ] && ! command -v perf >/dev/null 2>&1; then
  echo "bench: installing linux-perf" >&2
  sudo_=""
  if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq linux-perf >/dev/null
fi

echo "bench: building release binaries" >&2
cargo build --release --locked --bin shout-proxy --example fake_shoutcloud
cargo build --release --locked --manifest-path bench/reference/Cargo.toml
target_dir="${CARGO_TARGET_DIR:-target}"
export BENCH_BIN_DIR="${BENCH_BIN_DIR:-$target_dir/release}"
export BENCH_REFERENCE_BIN="${BENCH_REFERENCE_BIN:-${CARGO_TARGET_DIR:-bench/reference/target}/release/bench-reference}"

# The exact command, for the report: the settings that were given, then this script.
settings="$(env | grep -E '^BENCH_(QUICK|SECONDS|ROUNDS|WARMUP|CONNECTIONS|THREADS|MEMORY_INPUTS|CACHE_BYTES|LOG_FORMAT|ONLY|SKIP_MEMORY|SWEEP|SWEEP_CONNECTIONS|SWEEP_SECONDS|PROFILE)=' | sort | tr '\n' ' ' || true)"
export BENCH_COMMAND="${settings}.ci/bench.sh"

runner=""
cleanup() {
  # bench/run.py stops what it started; this is the net for when it is killed itself.
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    kill -TERM "$runner" 2>/dev/null || true
    sleep 1
  fi
  if [ -f "$out/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done <"$out/pids"
    rm -f "$out/pids"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "bench: nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 bench/run.py &
runner=$!
wait "$runner"
