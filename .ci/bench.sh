#!/usr/bin/env bash
# The load benchmark (docs/benchmark.md): installs wrk when missing, then `cargo xtask bench`.
#   .ci/bench.sh                 full run (~12 min on 2 cores)
#   BENCH_QUICK=1 .ci/bench.sh   ~1 minute smoke run for CI
# `cargo xtask bench --help` lists the settings (each also a BENCH_* variable).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bin shout-proxy --example fake_shoutcloud
exec cargo xtask bench "$@"
