#!/usr/bin/env bash
# The real-Prometheus check of shout-proxy's observability artefacts.
#
#  1. installs promtool/prometheus, Alertmanager and redis-server (Debian) if missing;
#  2. static checks: promtool check/test rules, the k8s/monitoring copies are in sync with
#     their sources (prometheus/sync-k8s.sh --check). How the k8s/monitoring Component
#     renders, alone, in a minimal overlay and in the real ones, is checked with the other
#     manifests by .ci/validate-delivery.sh;
#  3. `cargo xtask promcheck`: the service scraped by a real Prometheus wired to a real
#     Alertmanager: the shipped alert rules (time-compressed) silent when idle and healthy,
#     firing and resolved around an upstream failure; then under load promtool check metrics,
#     every dashboard and alert query parses and returns data
#     (xtask/src/promcheck.rs says what it proves); the harness stops what it started.
#
# Every step prints PASS or FAIL; a summary ends the run (.ci/lib.sh). Idempotent: free ports,
# nothing left behind. About 2.5 minutes after the build.
# Usage: .ci/prometheus-check.sh   (from anywhere; apt-get as root or via sudo)
# shellcheck source=.ci/lib.sh
source "$(dirname "$0")/lib.sh"

section "tools"
need promtool:prometheus prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager redis-server:redis-server
promtool --version | head -1

section "static checks"
judge "promtool check rules prometheus/alerts.yaml" promtool check rules prometheus/alerts.yaml
judge "promtool test rules prometheus/alerts_test.yaml" promtool test rules prometheus/alerts_test.yaml
judge "k8s/monitoring copies in sync with prometheus/alerts.yaml and grafana/shout-proxy.json" prometheus/sync-k8s.sh --check

# shout-proxy and the fake upstream on loopback, a private Prometheus scraping them every second
# and sending alerts to a private Alertmanager, the alerts' phases, a scripted load through every path the dashboard shows, then promtool check metrics and every
# dashboard and alert query (xtask/src/promcheck.rs).
section "cargo xtask promcheck"
cargo build --release --locked --bin shout-proxy
judge "cargo xtask promcheck (alerts delivered and resolved; the service's metrics, dashboard and alert queries on a real Prometheus)" cargo xtask promcheck
summary prometheus-check
