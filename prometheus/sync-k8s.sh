#!/usr/bin/env bash
# Regenerates the copies that k8s/monitoring ships, from their single sources:
#   prometheus/alerts.yaml      -> k8s/monitoring/prometheusrule.yaml (the `spec` of a PrometheusRule)
#   grafana/shout-proxy.json    -> k8s/monitoring/dashboards/shout-proxy.json (verbatim)
# Kustomize refuses to read files outside the kustomization root, hence copies.
#
# Usage: prometheus/sync-k8s.sh          rewrite the copies
#        prometheus/sync-k8s.sh --check  exit 1 if a copy differs from what it would write
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The PrometheusRule, on stdout: the copy's own head (what it is, its metadata) down to `spec:`,
# kept as written there, then every non-empty line of the rule file indented by two spaces: the
# whole rule file, `groups:` included, becomes `spec`. Block scalars keep their relative
# indentation.
rule() {
  grep -q '^spec:$' k8s/monitoring/prometheusrule.yaml || { echo "k8s/monitoring/prometheusrule.yaml has no 'spec:' line" >&2; exit 1; }
  sed '/^spec:$/q' k8s/monitoring/prometheusrule.yaml
  sed -e 's/^\(.\)/  \1/' prometheus/alerts.yaml
}

if [[ "${1:-}" == "--check" ]]; then
  status=0
  diff -u k8s/monitoring/prometheusrule.yaml <(rule) >&2 || status=1
  diff -u k8s/monitoring/dashboards/shout-proxy.json grafana/shout-proxy.json >&2 || status=1
  [ "$status" -eq 0 ] || echo "the k8s/monitoring copies above are out of date: run prometheus/sync-k8s.sh" >&2
  exit "$status"
fi
# Through a temporary file: `rule` reads the copy's head.
rule >k8s/monitoring/prometheusrule.yaml.new
mv k8s/monitoring/prometheusrule.yaml.new k8s/monitoring/prometheusrule.yaml
cp grafana/shout-proxy.json k8s/monitoring/dashboards/shout-proxy.json
echo "wrote k8s/monitoring/prometheusrule.yaml and k8s/monitoring/dashboards/shout-proxy.json"
