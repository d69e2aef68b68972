#!/usr/bin/env bash
# The real-Prometheus check of shout-proxy's observability artefacts.
#
#  1. installs promtool/prometheus (Debian) if missing;
#  2. static checks: promtool check/test rules, the k8s/monitoring copies are in sync with
#     their sources, the kustomize Component fails alone and builds inside an overlay with
#     the same rules and dashboard;
#  3. `cargo xtask promcheck`: the service under load scraped by a real Prometheus, promtool
#     check metrics, every dashboard and alert query parses and returns data
#     (xtask/src/promcheck.rs says what it proves);
#  4. removes its temporary directory (trap EXIT); the harness stops what it started.
#
# Idempotent: free ports, a temporary directory, nothing left behind. About 1 to 2 minutes
# after the build. Usage: .ci/prometheus-check.sh   (from anywhere; apt-get as root or via sudo)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'prometheus-check: FAIL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. tools
step "tools"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  # --no-install-recommends: leaves out node-exporter and friends, which we do not use. Where
  # systemd runs, the package starts its own daemon on :9090: stop it (we run our own).
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  ! systemctl is-active --quiet prometheus 2>/dev/null || as_root systemctl stop prometheus || true
fi
command -v kubectl >/dev/null || die "kubectl (with its built-in kustomize) is needed for the k8s/monitoring checks"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
promtool --version | head -1

# ---------------------------------------------------------------- 2. static checks
step "promtool check rules"
promtool check rules prometheus/alerts.yaml
step "promtool test rules"
promtool test rules prometheus/alerts_test.yaml

step "k8s/monitoring copies in sync with prometheus/alerts.yaml and grafana/shout-proxy.json"
prometheus/sync-k8s.sh --check
echo "in sync"

work="$(mktemp -d -t shout-prom-check.XXXXXX)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

step "kustomize: k8s/monitoring is a Component that only builds inside an overlay"
if kubectl kustomize k8s/monitoring >"$work/alone.yaml" 2>"$work/alone.err"; then
  die "kubectl kustomize k8s/monitoring built on its own; it must need the app's Service"
fi
echo "alone: fails as it must ($(grep -o 'no matches for Id [^;]*' "$work/alone.err" | head -1))"
mkdir -p "$work/kustomize/base" "$work/kustomize/overlay"
echo '{apiVersion: kustomize.config.k8s.io/v1beta1, kind: Kustomization, resources: [app.yaml]}' \
  >"$work/kustomize/base/kustomization.yaml"
echo '{apiVersion: v1, kind: Service, metadata: {name: shout-proxy, labels: {app.kubernetes.io/name: shout-proxy}},
  spec: {selector: {app.kubernetes.io/name: shout-proxy}, ports: [{name: http, port: 80, targetPort: 8080},
  {name: admin, port: 8081, targetPort: 8081}]}}' >"$work/kustomize/base/app.yaml"
echo "{apiVersion: kustomize.config.k8s.io/v1beta1, kind: Kustomization, namespace: shout-ci, resources: [../base],
  components: [$(realpath --relative-to="$work/kustomize/overlay" k8s/monitoring)]}" >"$work/kustomize/overlay/kustomization.yaml"
kubectl kustomize "$work/kustomize/overlay" >"$work/kustomize/out.yaml"
check_monitoring_build() { # $1 = kustomize output, $2 = what it is
  python3 - "$1" "$2" <<'EOF'
import json, sys, yaml
out, what = sys.argv[1], sys.argv[2]
kind = lambda k: [d for d in yaml.safe_load_all(open(out)) if d and d["kind"] == k]
named = lambda d: d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "shout-proxy"
errors, sms, rules = [], kind("ServiceMonitor"), kind("PrometheusRule")
cms = [c for c in kind("ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
if len(sms) != 1:
    errors.append(f"{len(sms)} ServiceMonitors")
elif sms[0]["spec"]["selector"].get("matchLabels", {}).get("app.kubernetes.io/name") != "shout-proxy":
    errors.append("ServiceMonitor does not select app.kubernetes.io/name: shout-proxy")
elif [(e.get("port"), e.get("path"), e.get("interval")) for e in sms[0]["spec"].get("endpoints", [])] != [("admin", "/metrics", "15s")]:
    errors.append(f"ServiceMonitor endpoints are {sms[0]['spec'].get('endpoints')}")
elif not any(p.get("name") == "admin" for s in kind("Service") if named(s) for p in s["spec"].get("ports", [])):
    errors.append("no Service labelled app.kubernetes.io/name: shout-proxy has a port named admin")
if len(rules) != 1 or rules[0]["spec"] != yaml.safe_load(open("prometheus/alerts.yaml")):
    errors.append("the PrometheusRule's spec differs from prometheus/alerts.yaml")
if len(cms) != 1 or json.loads(cms[0]["data"]["shout-proxy.json"]) != json.load(open("grafana/shout-proxy.json")):
    errors.append(f"{len(cms)} ConfigMaps labelled grafana_dashboard: \"1\", or the dashboard differs from grafana/shout-proxy.json")
if errors:
    sys.exit(f"{what}: " + "; ".join(errors))
print(f"{what}: ServiceMonitor (admin /metrics 15s), PrometheusRule == prometheus/alerts.yaml, "
      f"dashboard ConfigMap == grafana/shout-proxy.json")
EOF
}
check_monitoring_build "$work/kustomize/out.yaml" "temporary overlay"
# The real overlays belong to the k8s owner; check the ones that include this component.
for overlay in k8s/overlays/*/; do
  overlay=${overlay%/}
  if grep -q 'monitoring' "$overlay/kustomization.yaml"; then
    kubectl kustomize "$overlay" >"$work/kustomize/${overlay##*/}.yaml"
    check_monitoring_build "$work/kustomize/${overlay##*/}.yaml" "$overlay"
  else
    echo "$overlay: does not include k8s/monitoring (not checked)"
  fi
done

# ---------------------------------------------------------------- 3. the service under load
# `cargo xtask promcheck`: shout-proxy and the fake upstream on loopback, a private Prometheus
# scraping them every second, a scripted load through every path the dashboard shows, then
# promtool check metrics and every dashboard and alert query (xtask/src/promcheck.rs).
step "cargo xtask promcheck"
cargo build --release --locked --bin shout-proxy --example fake_shoutcloud
cargo xtask promcheck
