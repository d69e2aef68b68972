#!/usr/bin/env bash
# The load benchmark (docs/benchmark.md): installs wrk when missing, then `cargo xtask bench`.
#   .ci/bench.sh                 full run (~12 min on 2 cores)
#   BENCH_QUICK=1 .ci/bench.sh   ~1 minute smoke run for CI
# `cargo xtask bench --help` lists the settings (each also a BENCH_* variable).
# shellcheck source=.ci/lib.sh
source "$(dirname "$0")/lib.sh"
need wrk:wrk
cargo build --release --locked --bin shout-proxy
exec cargo xtask bench "$@"
