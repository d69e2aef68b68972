#!/usr/bin/env bash
# The real-Prometheus check of shout-proxy's observability artefacts.
#
#  1. installs promtool/prometheus (Debian) if missing;
#  2. static checks: promtool check/test rules, the k8s/monitoring copies are in sync with
#     their sources, the kustomize Component fails alone and builds inside an overlay with
#     the same rules and dashboard;
#  3. builds shout-proxy and fake_shoutcloud, runs them on loopback with a private
#     Prometheus scraping the admin port every second, and drives traffic through every
#     path the dashboard shows: cache hits, upstream errors and retries, timeouts, the
#     breaker opening and closing, 400s and 404s;
#  4. `promtool check metrics` on the service's /metrics must print nothing;
#  5. prometheus/check_queries.py runs every dashboard and alert query through the HTTP API:
#     all must parse, every dashboard query on our own metrics must return data;
#  6. stops everything it started (trap EXIT).
#
# Idempotent: free ports, a temporary directory, nothing left behind. About 1 to 2 minutes
# after the build. Usage: .ci/prometheus-check.sh   (from anywhere; apt-get as root or via sudo)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'prometheus-check: FAIL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. tools
step "tools"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  as_root=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "promtool/prometheus missing: run as root, or install Debian's prometheus"
    as_root=(sudo)
  fi
  "${as_root[@]}" apt-get update -qq
  # --no-install-recommends: leaves out node-exporter and friends, which we do not use.
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start its own service on :9090 where systemd runs; we use our own
  # instance on a free port, so stop the one our install started.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${as_root[@]}" systemctl stop prometheus || true
  fi
fi
command -v kubectl >/dev/null || die "kubectl (with its built-in kustomize) is needed for the k8s/monitoring checks"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
promtool --version | head -1
kubectl version --client 2>/dev/null | grep -i kustomize || true

# ---------------------------------------------------------------- 2. static checks
step "promtool check rules"
promtool check rules prometheus/alerts.yaml
step "promtool test rules"
promtool test rules prometheus/alerts_test.yaml

step "k8s/monitoring copies in sync with prometheus/alerts.yaml and grafana/shout-proxy.json"
prometheus/sync-k8s.sh --check
echo "in sync"

work="$(mktemp -d -t shout-prom-check.XXXXXX)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ $status -ne 0 ]]; then
    for log in fake proxy prometheus; do
      if [[ -s "$work/$log.log" ]]; then
        echo "--- last lines of $log.log" >&2
        tail -n 20 "$work/$log.log" >&2
      fi
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

step "kustomize: k8s/monitoring is a Component that only builds inside an overlay"
if kubectl kustomize k8s/monitoring >"$work/alone.yaml" 2>"$work/alone.err"; then
  die "kubectl kustomize k8s/monitoring built on its own; it must need the app's Service"
fi
echo "alone: fails as it must ($(grep -o 'no matches for Id [^;]*' "$work/alone.err" | head -1))"
mkdir -p "$work/kustomize/base" "$work/kustomize/overlay"
cat >"$work/kustomize/base/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [app.yaml]
EOF
cat >"$work/kustomize/base/app.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: shout-proxy
  labels: {app.kubernetes.io/name: shout-proxy}
spec:
  selector: {app.kubernetes.io/name: shout-proxy}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: admin, port: 8081, targetPort: 8081}
EOF
cat >"$work/kustomize/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: shout-ci
resources: [../base]
components: [$(realpath --relative-to="$work/kustomize/overlay" k8s/monitoring)]
EOF
kubectl kustomize "$work/kustomize/overlay" >"$work/kustomize/out.yaml"
check_monitoring_build() { # $1 = kustomize output, $2 = what it is
  python3 - "$1" "$2" <<'EOF'
import json, sys, yaml
out, what = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(out)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
errors = []
sms = by_kind.get("ServiceMonitor", [])
if len(sms) != 1:
    errors.append(f"{len(sms)} ServiceMonitors")
else:
    sm = sms[0]["spec"]
    if sm["selector"].get("matchLabels", {}).get("app.kubernetes.io/name") != "shout-proxy":
        errors.append("ServiceMonitor does not select app.kubernetes.io/name: shout-proxy")
    eps = sm.get("endpoints", [])
    if [(e.get("port"), e.get("path"), e.get("interval")) for e in eps] != [("admin", "/metrics", "15s")]:
        errors.append(f"ServiceMonitor endpoints are {eps}")
    svcs = [s for s in by_kind.get("Service", [])
            if s["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "shout-proxy"]
    if not any(p.get("name") == "admin" for s in svcs for p in s["spec"].get("ports", [])):
        errors.append("no Service labelled app.kubernetes.io/name: shout-proxy has a port named admin")
rules = by_kind.get("PrometheusRule", [])
if len(rules) != 1 or rules[0]["spec"] != yaml.safe_load(open("prometheus/alerts.yaml")):
    errors.append("the PrometheusRule's spec differs from prometheus/alerts.yaml")
cms = [c for c in by_kind.get("ConfigMap", [])
       if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
if len(cms) != 1:
    errors.append(f"{len(cms)} ConfigMaps labelled grafana_dashboard: \"1\"")
elif json.loads(cms[0]["data"]["shout-proxy.json"]) != json.load(open("grafana/shout-proxy.json")):
    errors.append("the dashboard ConfigMap differs from grafana/shout-proxy.json")
if errors:
    sys.exit(f"{what}: " + "; ".join(errors))
print(f"{what}: ServiceMonitor (admin /metrics 15s), PrometheusRule == prometheus/alerts.yaml, "
      f"dashboard ConfigMap == grafana/shout-proxy.json")
EOF
}
check_monitoring_build "$work/kustomize/out.yaml" "temporary overlay"
# The real overlays belong to the k8s owner; check the ones that include this component.
for kz in k8s/overlays/*/kustomization.yaml; do
  [[ -e "$kz" ]] || continue
  overlay="$(dirname "$kz")"
  if grep -q 'monitoring' "$kz"; then
    kubectl kustomize "$overlay" >"$work/kustomize/$(basename "$overlay").yaml"
    check_monitoring_build "$work/kustomize/$(basename "$overlay").yaml" "$overlay"
  else
    echo "$overlay: does not include k8s/monitoring (not checked)"
  fi
done

# ---------------------------------------------------------------- 3. build and run
step "cargo build --release --bin shout-proxy --example fake_shoutcloud"
cargo build --release --bin shout-proxy --example fake_shoutcloud
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
proxy_bin="$target_dir/release/shout-proxy"
fake_bin="$target_dir/release/examples/fake_shoutcloud"
started=$SECONDS

read -r up_port pub_port admin_port prom_port < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
EOF
)
fake="http://127.0.0.1:$up_port"
pub="http://127.0.0.1:$pub_port"
admin="http://127.0.0.1:$admin_port"
prom="http://127.0.0.1:$prom_port"

wait_for() { # $1 = URL, $2 = what; up to 30 s
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$2 did not answer on $1"
}

step "start fake shoutcloud (flaky), shout-proxy and Prometheus"
"$fake_bin" --listen "127.0.0.1:$up_port" --failure-rate 0.3 --latency-ms 5 >"$work/fake.log" 2>&1 &
pids+=($!)
wait_for "$fake/control" "fake_shoutcloud"
# Short breaker open periods so the run sees open -> half_open -> closed within seconds.
# A short drain so stopping it at the end does not wait the default 5 s.
SHOUT_BREAKER_OPEN_MS=1000 SHOUT_BREAKER_MAX_OPEN_MS=4000 SHOUT_DRAIN_MS=100 \
  "$proxy_bin" --upstream-url "$fake/V1/SHOUT" \
  --listen "127.0.0.1:$pub_port" --admin-listen "127.0.0.1:$admin_port" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_for "$admin/readyz" "shout-proxy admin port"
wait_for "$pub/health" "shout-proxy public port"
sed -e "s|@ADMIN_TARGET@|127.0.0.1:$admin_port|" -e "s|@RULES_FILE@|$root/prometheus/alerts.yaml|" \
  prometheus/prometheus-check.yml >"$work/prometheus.yml"
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_for "$prom/-/ready" "Prometheus"
echo "fake :$up_port  public :$pub_port  admin :$admin_port  prometheus :$prom_port"

# One client: for each round, requests through every public path, on one connection.
client() { # $1 = client id, $2 = stop at this $SECONDS
  local id=$1 until=$2 i=0
  while ((SECONDS < until && i < 100000)); do
    i=$((i + 1))
    local args=(
      -s --max-time 5 -o /dev/null -w '%{http_code}\n'
      -H 'content-type: application/json' -d "{\"data\": \"json $id $i $RANDOM\"}" "$pub/v1"
      --next -s --max-time 5 -o /dev/null -w '%{http_code}\n'
      -H 'content-type: application/json' -d "{\"data\": \"hello cache $((i % 7))\"}" "$pub/"
      --next -s --max-time 5 -o /dev/null -w '%{http_code}\n'
      --data-urlencode "data=form $id $i $RANDOM" "$pub/v1/"
      --next -s --max-time 5 -o /dev/null -w '%{http_code}\n'
      --data-urlencode "data=form repeated $((i % 5))" "$pub/v1"
    )
    if ((i % 5 == 0)); then
      args+=(
        --next -s --max-time 5 -o /dev/null -w '%{http_code}\n'
        -H 'content-type: application/json' -d '{"data": ' "$pub/v1"
        --next -s --max-time 5 -o /dev/null -w '%{http_code}\n'
        -H 'content-type: application/json' -d '{"other": "x"}' "$pub/v1"
        --next -s --max-time 5 -o /dev/null -w '%{http_code}\n' "$pub/no/such/path"
        --next -s --max-time 5 -o /dev/null -w '%{http_code}\n' "$pub/health"
      )
    fi
    curl "${args[@]}" >>"$work/codes.$id" 2>/dev/null || true
  done
}
load() { # $1 = seconds; 4 clients in parallel
  local until=$((SECONDS + $1)) c
  local load_pids=()
  for c in 1 2 3 4; do
    client "$c" "$until" &
    load_pids+=($!)
    pids+=($!)
  done
  wait "${load_pids[@]}"
}
control() { # $1 = JSON for the fake's POST /control
  curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d "$1" "$fake/control"
  echo "fake upstream: $1"
}
breaker_is() { # $1 = state; true if /metrics says the breaker is in it
  # Not `curl | grep -q`: grep quits at the match, curl fails writing the rest, and with
  # pipefail the match would read as a miss.
  local metrics
  metrics="$(curl -fsS "$admin/metrics")" || return 1
  grep -Eq "^shout_breaker_state\{state=\"$1\"\} 1$" <<<"$metrics"
}
load_until_breaker() { # $1 = state, $2 = max seconds; loads in 5 s slices until the breaker is in it
  local deadline=$((SECONDS + $2))
  until breaker_is "$1"; do
    ((SECONDS < deadline)) || die "the breaker did not reach $1 within $2 s"
    load 5
  done
  echo "breaker: $1"
}

step "load: flaky upstream (30% failures), 20 s"
load 20
step "load: slow upstream (400 ms > per-attempt timeout), 10 s"
control '{"mode": "ok", "latency_ms": 400, "failure_rate": 0}'
load 10
step "load: failing upstream until the breaker opens, then 5 s more"
control '{"mode": "fail", "latency_ms": 5}'
load_until_breaker open 40
load 5
step "load: healthy-but-flaky upstream again until the breaker closes, then 10 s more"
control '{"mode": "ok", "latency_ms": 5, "failure_rate": 0.3}'
load_until_breaker closed 60
load 10
sleep 3 # a few more scrapes

codes="$(cat "$work"/codes.* | sort | uniq -c | sort -rn)"
echo "responses by status:" $codes
for want in 200 400 404; do
  n="$(cat "$work"/codes.* | grep -c "^$want$" || true)"
  ((n > 0)) || die "the load produced no $want"
done

# The run must have exercised what the panels show, or their data proves nothing.
step "scenario: the run went through every state the dashboard shows"
scenario=(
  'sum(shout_answers_total{source="upstream"})'
  'sum(shout_answers_total{source="cache"})'
  'sum(shout_answers_total{source="fallback"})'
  'sum(shout_fallbacks_total{reason="breaker_open"})'
  'sum(shout_upstream_attempts_total{outcome="server_error"})'
  'sum(shout_upstream_attempts_total{outcome="timeout"})'
  'sum(shout_upstream_retries_total)'
  'sum(shout_breaker_transitions_total{state="open"})'
  'sum(shout_breaker_transitions_total{state="half_open"})'
  'sum(shout_breaker_transitions_total{state="closed"})'
  'sum(http_server_request_duration_seconds_count{http_response_status_code="400"})'
  'sum(http_server_request_duration_seconds_count{http_response_status_code="404"})'
)
for q in "${scenario[@]}"; do
  v="$(curl -fsS --get "$prom/api/v1/query" --data-urlencode "query=$q" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')"
  printf '  %-80s %s\n' "$q" "$v"
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$v" || die "the run never produced $q"
done

# ---------------------------------------------------------------- 4. promtool check metrics
step "promtool check metrics (must print nothing)"
curl -fsS "$admin/metrics" >"$work/metrics.txt"
curl -fsS "$admin/status" >"$work/status.json"
lint="$(promtool check metrics <"$work/metrics.txt" 2>&1)" || true
if [[ -n "$lint" ]]; then
  printf '%s\n' "$lint" >&2
  die "promtool check metrics complained about /metrics"
fi
echo "clean ($(grep -vc '^#' "$work/metrics.txt") series)"

# ---------------------------------------------------------------- 5. every query
step "every dashboard and alert query against Prometheus"
python3 prometheus/check_queries.py --prometheus "$prom" --metrics "$work/metrics.txt" \
  --status "$work/status.json" --dashboard grafana/shout-proxy.json --runbook docs/runbook.md \
  --alerts prometheus/alerts.yaml \
  --namespace shout-ci --pod shout-proxy-ci-0

echo
echo "prometheus-check: OK ($((SECONDS - started)) s after the build)"
