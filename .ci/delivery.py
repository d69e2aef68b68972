#!/usr/bin/env python3
# The checks of .ci/validate-delivery.sh that read YAML or JSON: the one place where rendered
# Kubernetes manifests are judged. Each command prints what is wrong and exits 1 if anything is.
#
#   policy RENDERED         what schemas and checkov cannot know: the contract between the manifests
#                           and the service (ports, probes, drain timing), the deployment rules, and
#                           where the monitoring component is included, what `monitoring` checks.
#                           Container hardening, resources, probes' presence and image tags are
#                           checkov's (CKV_K8S_8-43), which fails on any failed or unexplained skip
#   monitoring RENDERED     k8s/monitoring inside an overlay: the release label on its custom resources,
#                           the read-only Role Prometheus is bound to, one ServiceMonitor scraping the
#                           admin port, the PrometheusRule and dashboard ConfigMap equal to their sources
#   schemas RENDERED VERSION  every object against the Kubernetes VERSION's strict JSON schema
#                           (kubernetes-validate); custom resources are named and left aside (no
#                           schema validates them); a kind without a schema fails
#   checkov ARGS...         runs checkov with ARGS and judges its JSON report: failures, parsing
#                           errors, a skip without a written reason, or nothing checked fail
#   adapter VALUES DIR      the prometheus-adapter rule rendered as the adapter renders it for the HPA,
#                           into DIR/rules.yaml for promtool
import json
import re
import subprocess
import sys

import kubernetes_validate
import yaml

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


ERRORS = []  # what each command found wrong, printed at the end; any makes the exit status 1


def need(ok, message):
    if not ok:
        ERRORS.append(message)


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def kind(docs, wanted, name=None):
    return [d for d in docs if d["kind"] == wanted and name in (None, d["metadata"]["name"])]


def labels(obj):
    return obj["metadata"].get("labels") or {}


# The only custom resources here are prometheus-operator's.
def custom(obj):
    return obj["apiVersion"].startswith("monitoring.coreos.com/")


def policy(path):
    docs = load(path)
    redis = kind(docs, "Deployment", "shout-redis")
    deps = kind(docs, "Deployment", "shout-proxy")
    need(len(deps) == 1, "exactly one Deployment shout-proxy")
    for d in deps:
        spec, pod = d["spec"], d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        need("replicas" not in spec, "Deployment must not set replicas (the HPA owns them)")
        need(spec["strategy"]["rollingUpdate"]["maxUnavailable"] in (0, "0", "0%"), "rollingUpdate.maxUnavailable must be 0")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        need(ports == {"http": 8080, "admin": 8081}, f"container ports must be http 8080 and admin 8081, got {ports}")
        for probe, probe_path in (("startupProbe", "/livez"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
            get = c.get(probe, {}).get("httpGet", {})
            need(get.get("path") == probe_path and get.get("port") in ("admin", 8081), f"{probe} must GET {probe_path} on the admin port")
        image = c["image"]
        if "overlays" in path:
            # Pinned by digest (make pin-image), or the placeholder before the first release.
            need(DIGEST.search(image) or image.endswith(":unreleased"), f"an overlay's image must be pinned by digest (make pin-image): {image}")
        sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
        need(isinstance(sleep, int) and sleep > 0, "preStop must be the native sleep handler")
        cms = {x["metadata"]["name"]: x.get("data", {}) for x in kind(docs, "ConfigMap")}
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        need(len(refs) == 1 and refs[0] in cms, "envFrom must reference the generated ConfigMap")
        env = cms.get(refs[0], {}) if refs else {}
        need(all(k.startswith("SHOUT_") for k in env), "the ConfigMap holds SHOUT_* variables only")
        # Defaults as in src/config.rs when the ConfigMap does not set them. Worst case: the public
        # listener, then the admin one, each get the full shutdown timeout.
        drain_s = int(env.get("SHOUT_DRAIN_MS", "5000")) / 1000
        shutdown_s = int(env.get("SHOUT_SHUTDOWN_TIMEOUT_MS", "10000")) / 1000
        grace, worst = pod.get("terminationGracePeriodSeconds", 30), (sleep or 0) + drain_s + 2 * shutdown_s
        need(grace >= worst + 10, f"terminationGracePeriodSeconds {grace} must be >= preStop {sleep}s + drain {drain_s}s"
             f" + 2 x shutdown timeout {shutdown_s}s + 10s margin = {worst + 10}s")
        need(env.get("SHOUT_LISTEN", "0.0.0.0:8080").endswith(":8080"), "SHOUT_LISTEN must match the container port")
        # The service's default admin address is loopback, unreachable for probes and Prometheus.
        need(env.get("SHOUT_ADMIN_LISTEN") == "0.0.0.0:8081", "SHOUT_ADMIN_LISTEN must be set to 0.0.0.0:8081")
        if redis:
            need(env.get("SHOUT_REDIS_URL") == "redis://shout-redis:6379", "with the redis component, SHOUT_REDIS_URL names its Service")
        if "overlays_prod" in path:
            need(redis or "SHOUT_REDIS_URL" in env, "prod uses a shared cache (the redis component or SHOUT_REDIS_URL)")
        if "prod" in path:
            need(env.get("SHOUT_LOG_FORMAT") == "json", "prod logs must be JSON")
        need(pod["securityContext"].get("runAsUser") == 65532, "pod runs as 65532, the image's user")
        spread = pod.get("topologySpreadConstraints", [])
        need({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= {t["topologyKey"] for t in spread},
             "topology spread across nodes and zones")
        need(all(t.get("nodeTaintsPolicy") == "Honor" for t in spread),
             "topology spread honours taints (nodeTaintsPolicy: Honor), or pods stay Pending next to tainted nodes")

    for h in kind(docs, "HorizontalPodAutoscaler"):
        s = h["spec"]
        need(s.get("minReplicas", 1) >= 2, "HPA minReplicas >= 2")
        names = [m["pods"]["metric"]["name"] for m in s["metrics"] if m["type"] == "Pods"]
        need(names == ["http_server_requests_per_second"], "HPA scales on the Pods metric http_server_requests_per_second")
        need(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in s["metrics"]), "HPA has a CPU metric")
        need({"scaleUp", "scaleDown"} <= set(s.get("behavior", {})), "HPA has scaleUp/scaleDown behavior")

    for s in kind(docs, "Service", "shout-proxy"):
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in s["spec"]["ports"]}
        need(ports == {"http": (80, "http"), "admin": (8081, "admin")}, f"Service ports http 80->http, admin 8081->admin, got {ports}")

    for i in kind(docs, "Ingress"):
        need(i["spec"].get("ingressClassName") == "traefik", "Ingress class traefik")
        need(bool(i["spec"].get("tls")), "Ingress has TLS")
        annotations = " ".join(f"{k}={v}" for k, v in (i["metadata"].get("annotations") or {}).items())
        need("retry" not in annotations.lower() and "middlewares" not in annotations,
             "no ingress-level retries (the service retries within a budget; retries multiply)")
        backends = {p["backend"]["service"]["port"].get("name") for rule in i["spec"]["rules"] for p in rule["http"]["paths"]}
        need(backends == {"http"}, "the Ingress routes to the public port only")

    need(len(kind(docs, "PodDisruptionBudget")) >= 1, "a PodDisruptionBudget")
    need(len(kind(docs, "NetworkPolicy")) >= 1, "a NetworkPolicy")
    for n in kind(docs, "NetworkPolicy"):
        need(set(n["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}, "NetworkPolicy restricts ingress and egress")
        need(all(rule.get("ports") for rule in n["spec"].get("ingress", [])), "every ingress rule names its port")
        egress = n["spec"].get("egress", [])
        if n["metadata"]["name"] == "shout-proxy":
            to_redis = [e for e in egress if any(t.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "shout-redis"} for t in e.get("to", []))]
            ports = sorted({(p["protocol"], p["port"]) for e in egress if e not in to_redis for p in e.get("ports", [])})
            need(ports == [("TCP", 53), ("TCP", 80), ("TCP", 443), ("UDP", 53)], f"egress only DNS and 80/443, got {ports}")
            need(all(e["ports"] == [{"protocol": "TCP", "port": 6379}] and len(e["to"]) == 1 for e in to_redis),
                 "egress to the shared cache is TCP 6379 to its pods only")
            need(bool(to_redis) == bool(redis), "egress to shout-redis exactly when the redis component is included")
        elif n["metadata"]["name"] == "shout-redis":
            need(egress == [], "the shared cache sends nothing anywhere")
            need(n["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "shout-proxy"}}}], "ports": [{"protocol": "TCP", "port": "redis"}]}],
                 "the shared cache admits the app's pods on its port, nothing else")

    for d in redis:
        args = d["spec"]["template"]["spec"]["containers"][0].get("args", [])
        opt = {a: v for a, v in zip(args, args[1:]) if a.startswith("--") and a != "--rename-command"}
        need(opt.get("--maxmemory-policy") == "allkeys-lru" and opt.get("--maxmemory", "0") not in ("0", ""), "valkey: maxmemory with allkeys-lru")
        need(opt.get("--save") == "" and opt.get("--appendonly") == "no", "valkey: no persistence")

    # The monitoring component labels all it adds; where it is included, it must be whole.
    if any(custom(x) or labels(x).get("app.kubernetes.io/component") == "monitoring" for x in docs):
        check_monitoring(docs)


# What the monitoring component must render to, inside whichever overlay includes it.
def check_monitoring(docs):
    for x in filter(custom, docs):
        need(labels(x).get("release"), f"{x['kind']} carries the release label kube-prometheus-stack selects")
    roles = kind(docs, "Role", "shout-proxy-prometheus")
    need(len(roles) == 1 and all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in roles[0]["rules"])
         and {res for rule in roles[0]["rules"] for res in rule["resources"]} >= {"endpoints", "services", "pods"},
         "a read-only Role lets Prometheus list endpoints, services and pods")
    need(any(b["roleRef"]["name"] == "shout-proxy-prometheus" for b in kind(docs, "RoleBinding")), "a RoleBinding grants it to Prometheus")
    sms, rules = kind(docs, "ServiceMonitor"), kind(docs, "PrometheusRule")
    dashboards = [c for c in kind(docs, "ConfigMap") if labels(c).get("grafana_dashboard") == "1"]
    selectors = [sm["spec"]["selector"] for sm in sms]
    endpoints = [(e.get("port"), e.get("path"), e.get("interval")) for sm in sms for e in sm["spec"].get("endpoints", [])]
    need(selectors == [{"matchLabels": {"app.kubernetes.io/name": "shout-proxy"}}], f"ServiceMonitor selectors {selectors}, not one selecting app.kubernetes.io/name: shout-proxy")
    need(endpoints == [("admin", "/metrics", "15s")], f"ServiceMonitor endpoints are {endpoints}, not admin /metrics 15s")
    admin_ports = [p for s in kind(docs, "Service") if labels(s).get("app.kubernetes.io/name") == "shout-proxy"
                   for p in s["spec"].get("ports", []) if p.get("name") == "admin"]
    need(admin_ports, "no Service labelled app.kubernetes.io/name: shout-proxy has a port named admin")
    need(len(rules) == 1 and rules[0]["spec"] == yaml.safe_load(open("prometheus/alerts.yaml")),
           "the PrometheusRule's spec differs from prometheus/alerts.yaml")
    need(len(dashboards) == 1 and json.loads(dashboards[0]["data"]["shout-proxy.json"]) == json.load(open("grafana/shout-proxy.json")),
           f"{len(dashboards)} ConfigMaps labelled grafana_dashboard: \"1\", or the dashboard differs from grafana/shout-proxy.json")


def schemas(path, version):
    docs = load(path)
    for d in docs:
        name = f"{d['kind']} {d['metadata']['name']}"
        if custom(d):
            print(f"  {name} ({d['apiVersion']}) is a custom resource: not schema-validated")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except Exception as e:  # invalid, a kind without a schema, or a version it does not know
            where = "".join(f".{p}" for p in getattr(e, "path", []))
            need(False, f"{name}{where} against k8s {version}: {getattr(e, 'message', e)}")
    print(f"  {sum(not custom(d) for d in docs)} objects validated")


# No --quiet: it drops the skipped checks (and their reasons) from the report. --skip-download:
# no calls to the vendor's platform (there is no network here).
# What the manifests promise and checkov alone enforces, so no annotation may skip it, whatever its
# reason: probes (8, 9), requests and limits (10-13), no :latest (14), no privilege escalation (20),
# read-only root filesystem (22), non-root (23), capabilities dropped (37), no token mounted (38).
UNSKIPPABLE = {f"CKV_K8S_{n}" for n in (8, 9, 10, 11, 12, 13, 14, 20, 22, 23, 37, 38)}


def checkov(*args):
    run = subprocess.run(["checkov", *args, "--skip-download", "--compact", "-o", "json"], capture_output=True, text=True)
    reports = json.loads(run.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    total = {k: sum(r.get("summary", {}).get(k, 0) for r in reports) for k in ("passed", "failed", "skipped", "parsing_errors")}
    print("  " + ", ".join(f"{k} {v}" for k, v in total.items()))
    need(total["passed"], f"checkov checked nothing: {run.stderr[-2000:]}")
    need(not total["parsing_errors"], f"{total['parsing_errors']} files checkov could not parse")
    for results in (r.get("results", {}) for r in reports):
        for c in results.get("failed_checks", []):
            need(False, f"FAILED {c['check_id']} {c['check_name']} :: {c.get('resource')} ({c.get('file_path')})")
        for c in results.get("skipped_checks", []):
            # checkov writes this text in place of a missing reason.
            reason = (c.get("check_result") or {}).get("suppress_comment", "").replace("No comment provided", "").strip()
            print(f"  skipped {c['check_id']} :: {c.get('resource')} :: {reason or 'NO WRITTEN REASON: a failure'}")
            need(reason, f"skipped {c['check_id']} without a written reason")
            need(c["check_id"] not in UNSKIPPABLE, f"skipped {c['check_id']}: the manifests' hardening may not be skipped")


def adapter(values, out):
    series = "http_server_request_duration_seconds_count"
    rules = [r for r in yaml.safe_load(open(values))["rules"]["custom"] if r["name"]["as"] == "http_server_requests_per_second"]
    need(len(rules) == 1, f"{len(rules)} custom rules named http_server_requests_per_second in {values}, not 1")
    for rule in rules:
        overrides = {k: v["resource"] for k, v in rule["resources"]["overrides"].items()}
        need(rule["seriesQuery"].startswith(series), f"the rule must read {series}: {rule['seriesQuery']}")
        need(overrides == {"pod": "pod", "namespace": "namespace"}, f"the rule must map pod and namespace: {overrides}")
        query = (rule["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'namespace="shout-proxy",pod=~"shout-proxy-a|shout-proxy-b"')
                 .replace("<<.GroupBy>>", "namespace, pod"))
        print(f"  query: {query}")
        rule_file = {"groups": [{"name": "adapter", "rules": [{"record": "adapter:http_server_requests_per_second", "expr": query}]}]}
        yaml.safe_dump(rule_file, open(f"{out}/rules.yaml", "w"), sort_keys=False)


COMMANDS = {"policy": policy, "monitoring": lambda path: check_monitoring(load(path)), "schemas": schemas, "checkov": checkov, "adapter": adapter}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
    for error in ERRORS:
        print(f"  {error}", file=sys.stderr)
    sys.exit(1 if ERRORS else 0)
