#!/usr/bin/env python3
"""Runs every dashboard and alert query against a live Prometheus that scrapes shout-proxy.

Called by .ci/prometheus-check.sh once the service has been under load; stdlib only.

What it proves, and why each part is here:
- every metric of the contract is exported (a dashboard cannot show what is not there);
- the dashboard is importable by the Grafana sidecar (no __inputs, datasource variable,
  unique panel ids, no overlapping panels) and uses every contract metric at least once;
- every query (dashboard targets, template variables, alert rules as loaded by Prometheus)
  parses, and every dashboard query on our own metrics returns data. Only queries made
  solely of kube-state-metrics series may come back empty, since no kube-state-metrics runs
  here (KSM_METRICS below);
- the names a query uses exist: metric names in the scraped exposition, label names on the
  metric they filter or group, `=` label values among the values seen. A query padded with
  `or vector(0)` returns data even when its metric is misspelled; this catches that;
- every alert is healthy in Prometheus and its runbook_url points at a heading of
  docs/runbook.md, whose panel references (**Row › Panel**) and /status fields exist.

Exit status 1 on any failure, after printing the whole table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

# The contract's metric families (see the service's /metrics), with the series names a
# query may use for each.
CONTRACT_METRICS = {
    "http_server_request_duration_seconds": "histogram",
    "http_server_active_requests": "gauge",
    "shout_upstream_attempts_total": "counter",
    "shout_upstream_attempt_duration_seconds": "histogram",
    "shout_upstream_retries_total": "counter",
    "shout_upstream_retry_budget_exhausted_total": "counter",
    "shout_breaker_state": "gauge",
    "shout_breaker_transitions_total": "counter",
    "shout_breaker_rejected_total": "counter",
    "shout_answers_total": "counter",
    "shout_fallbacks_total": "counter",
    "shout_upstream_disagreements_total": "counter",
    "shout_cache_entries": "gauge",
    "shout_cache_weighted_bytes": "gauge",
    "shout_upstream_in_flight": "gauge",
    "shout_upstream_concurrency_limit": "gauge",
    "shout_upstream_limit_rejected_total": "counter",
    "shout_deadline_seconds": "gauge",
    "shout_build_info": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
}

# Series from kube-state-metrics, which this check does not run. A query made only of
# these may return nothing; it must still parse.
KSM_METRICS = {
    "kube_deployment_status_replicas": "kube-state-metrics (Deployment replicas) is not running in this check",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics (HPA) is not running in this check",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics (HPA) is not running in this check",
}

# Series Prometheus makes itself for every target.
PROMETHEUS_METRICS = {"up"}

# Labels the scrape adds (prometheus-operator: namespace, pod, service, job, ...; the
# check's static config: namespace, pod), so they are on every series but not in /metrics.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
    # aggregation operators, which may be followed by `by (...)` before their parenthesis
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group",
}

FAILURES: list[str] = []


def fail(message: str) -> None:
    FAILURES.append(message)


# ------------------------------------------------------------------ exposition


def parse_exposition(text: str) -> dict[str, dict[str, set[str]]]:
    """Series name -> label name -> values seen, from the Prometheus text format."""
    series: dict[str, dict[str, set[str]]] = {}
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        if not m:
            fail(f"unparsable exposition line: {line!r}")
            continue
        labels = series.setdefault(m.group(1), {})
        for name, value in label_re.findall(m.group(2) or ""):
            labels.setdefault(name, set()).add(value)
    return series


def family_series(name: str, kind: str) -> list[str]:
    if kind == "histogram":
        return [f"{name}_bucket", f"{name}_count", f"{name}_sum"]
    return [name]


# ------------------------------------------------------------------ PromQL scanning


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) for every `name{...}` selector."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        matchers = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', m.group(2))
        out.append((m.group(1), matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", strip_strings(expr)):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    return labels


def metric_names(expr: str) -> set[str]:
    s = strip_strings(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        start, end = m.span()
        if start > 0 and (s[start - 1].isdigit() or s[start - 1] == "."):
            continue  # the tail of a number or duration: 1m, 1e3
        if re.match(r"\s*\(", s[end:]):
            continue  # a function call
        if m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def check_names(qid: str, expr: str, exposition: dict[str, dict[str, set[str]]]) -> set[str]:
    """Fails on names the service does not export; returns the query's metric names."""
    names = metric_names(expr)
    if not names:
        fail(f"{qid}: no metric name found in {expr!r}")
    known = set(exposition) | set(KSM_METRICS) | PROMETHEUS_METRICS
    for name in sorted(names - known):
        fail(f"{qid}: metric {name} is not exported by the service (nor kube-state-metrics/Prometheus)")
    own = [n for n in names if n in exposition]
    for name, matchers in selectors(expr):
        if name not in exposition:
            continue
        labels = exposition[name]
        for label, op, value in matchers:
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                fail(f"{qid}: label {label} is not on {name} (has: {', '.join(sorted(labels)) or 'none'})")
            elif op == "=" and value not in labels[label]:
                fail(f"{qid}: {name}{{{label}=\"{value}\"}} never seen (values: {', '.join(sorted(labels[label]))})")
    if own:
        available = set(TARGET_LABELS) | {"le"}
        for n in own:
            available |= set(exposition[n])
        for label in sorted(grouping_labels(expr) - available):
            fail(f"{qid}: grouping label {label} is on none of {', '.join(sorted(own))}")
    return names


# ------------------------------------------------------------------ Prometheus API


def api(prom: str, path: str, **params: str) -> dict:
    url = f"{prom}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:  # 400 on a parse error carries a JSON body
        return json.load(e)


def run_query(prom: str, expr: str) -> tuple[bool, list, str]:
    """(parsed, results, error); a scalar or string result counts as one result."""
    body = api(prom, "/api/v1/query", query=expr)
    if body.get("status") != "success":
        return False, [], f"{body.get('errorType')}: {body.get('error')}"
    data = body["data"]
    if data["resultType"] in ("vector", "matrix"):
        return True, data["result"], ""
    return True, [data["result"]], ""


# ------------------------------------------------------------------ dashboard


def promql_regex_literal(value: str) -> str:
    """`value` as a regex matching only itself, inside a PromQL double-quoted string.

    Not re.escape: it escapes `-`, which PromQL strings reject as an unknown escape.
    """
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\\\1", value)


def substitute(expr: str, variables: dict[str, str]) -> str:
    out = expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
    for name, value in variables.items():
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in out:
        fail(f"unknown template variable left in {out!r}")
    return out


def walk_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(dash: dict) -> None:
    if "__inputs" in dash:
        fail("dashboard has __inputs: the Grafana sidecar cannot fill them")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        fail(f"dashboard schemaVersion {dash.get('schemaVersion')} is older than 36")
    if not dash.get("uid"):
        fail("dashboard has no uid")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard lacks a `datasource` variable of type datasource/prometheus")
    for name in ("namespace", "pod"):
        if variables.get(name, {}).get("type") != "query":
            fail(f"dashboard lacks a query variable `{name}`")
    ids, boxes = set(), []
    for p in walk_panels(dash.get("panels", [])):
        if p["id"] in ids:
            fail(f"panel id {p['id']} is used twice")
        ids.add(p["id"])
        g = p["gridPos"]
        for other_id, o in boxes:
            if g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]:
                fail(f"panel {p['id']} overlaps panel {other_id}")
        boxes.append((p["id"], g))
        if p.get("type") == "row":
            continue
        sources = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]
        for s in sources:
            if not s or s.get("uid") != "${datasource}":
                fail(f"panel {p['id']} ({p.get('title')}): datasource is {s}, not ${{datasource}}")
        if not p.get("targets"):
            fail(f"panel {p['id']} ({p.get('title')}) has no query")


def dashboard_queries(dash: dict) -> list[tuple[str, str, str]]:
    """(id, title, expr) for every panel target."""
    out = []
    for p in walk_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"panel{p['id']}/{t['refId']}", p.get("title", ""), t["expr"]))
    return out


def variable_queries(dash: dict) -> list[tuple[str, str, str]]:
    out = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        out.append((f"var:{v['name']}", v.get("label", v["name"]), q))
    return out


# ------------------------------------------------------------------ runbook


def check_runbook(markdown: str, dash: dict, status: dict) -> None:
    """The runbook's **Row › Panel** references and `/status` field names must exist."""
    text = " ".join(markdown.split())
    panels, row = set(), ""
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            row = p["title"]
            panels |= {(row, c["title"]) for c in p.get("panels", [])}
        else:
            panels.add((row, p["title"]))
    refs = [tuple(span.split(" › ", 1)) for span in re.findall(r"\*\*(.+?)\*\*", text) if " › " in span]
    if not refs:
        fail("the runbook names no dashboard panel (**Row › Panel**)")
    for ref in refs:
        if ref not in panels:
            fail(f"the runbook names panel **{ref[0]} › {ref[1]}**, which the dashboard does not have")
    paths = set(re.findall(r"`(pipeline(?:\.[a-z_]+)+|ready|version)`", text))
    if not paths:
        fail("the runbook names no /status field")
    for path in sorted(paths):
        node = status
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                fail(f"the runbook names /status field {path}, which /status does not have")
                break
            node = node[key]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the markdown headings."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", required=True, help="base URL of the Prometheus that scrapes the service")
    ap.add_argument("--metrics", required=True, help="file holding one scrape of the service's /metrics")
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--runbook", required=True)
    ap.add_argument("--status", required=True, help="file holding the service's /status JSON")
    ap.add_argument("--alerts", required=True, help="the rule file Prometheus loaded (to count its alerts)")
    ap.add_argument("--namespace", required=True, help="value of the scrape's static namespace label")
    ap.add_argument("--pod", required=True, help="value of the scrape's static pod label")
    args = ap.parse_args()

    exposition = parse_exposition(open(args.metrics, encoding="utf-8").read())
    for family, kind in CONTRACT_METRICS.items():
        for s in family_series(family, kind):
            if s not in exposition:
                fail(f"contract metric {s} is missing from /metrics")

    dash = json.load(open(args.dashboard, encoding="utf-8"))
    check_dashboard(dash)
    check_runbook(open(args.runbook, encoding="utf-8").read(), dash,
                  json.load(open(args.status, encoding="utf-8")))
    variables = {"namespace": promql_regex_literal(args.namespace), "pod": promql_regex_literal(args.pod)}

    rows = []  # (id, kind, parsed, result count, verdict, title)
    used: set[str] = set()

    for qid, title, q in variable_queries(dash):
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q or "")
        if not m:
            fail(f"{qid}: not a label_values(expr, label) query: {q!r}")
            continue
        expr = substitute(m.group(1), variables)
        used |= check_names(qid, expr, exposition)
        label = m.group(2)
        ok, result, err = run_query(args.prometheus, f"count by ({label}) ({expr})")
        values = sorted(r["metric"].get(label, "") for r in result if r["metric"].get(label))
        verdict = "ok" if ok and values else "FAIL"
        if verdict == "FAIL":
            fail(f"{qid}: {err or f'label {label} resolves to no value'}")
        rows.append((qid, "variable", ok, len(values), verdict, f"{title} = {', '.join(values)}"))

    for qid, title, raw in dashboard_queries(dash):
        expr = substitute(raw, variables)
        names = check_names(qid, expr, exposition)
        used |= names
        ok, result, err = run_query(args.prometheus, expr)
        n = len(result)
        ksm_only = names and names <= set(KSM_METRICS)
        if not ok:
            verdict = "FAIL"
            fail(f"{qid} ({title}): {err}")
        elif n > 0:
            verdict = "ok"
        elif ksm_only:
            verdict = "empty-ok"
            title = f"{title} [exempt: {KSM_METRICS[sorted(names)[0]]}]"
        else:
            verdict = "FAIL"
            fail(f"{qid} ({title}): no data for {expr!r}")
        rows.append((qid, "panel", ok, n, verdict, title))

    for family, kind in CONTRACT_METRICS.items():
        if not set(family_series(family, kind)) & used:
            fail(f"contract metric {family} is not shown by any dashboard query")

    # Alerts, as Prometheus loaded and evaluated them.
    expected = len(re.findall(r"^\s*-\s*alert:", open(args.alerts, encoding="utf-8").read(), re.M))
    anchors = heading_anchors(open(args.runbook, encoding="utf-8").read())
    rules = [r for g in api(args.prometheus, "/api/v1/rules")["data"]["groups"] for r in g["rules"]
             if r["type"] == "alerting"]
    if len(rules) != expected:
        fail(f"Prometheus loaded {len(rules)} alerting rules, {args.alerts} has {expected}")
    for r in rules:
        qid = f"alert:{r['name']}"
        if r.get("health") != "ok":
            fail(f"{qid}: rule health {r.get('health')}: {r.get('lastError')}")
        url = r.get("annotations", {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        if not url.split("#")[0].endswith("docs/runbook.md") or anchor not in anchors:
            fail(f"{qid}: runbook_url {url!r} does not point at a heading of {args.runbook}")
        for key in ("summary", "description"):
            if not r.get("annotations", {}).get(key):
                fail(f"{qid}: no {key} annotation")
        if r.get("labels", {}).get("severity") not in ("critical", "warning"):
            fail(f"{qid}: severity label is {r.get('labels', {}).get('severity')!r}")
        check_names(qid, r["query"], exposition)
        ok, result, err = run_query(args.prometheus, r["query"])
        if not ok:
            fail(f"{qid}: {err}")
        rows.append((qid, f"alert ({r.get('state')})", ok, len(result), "ok" if ok else "FAIL",
                     r["labels"].get("severity", "")))

    width = max(len(r[0]) for r in rows)
    print(f"{'query id':<{width}}  {'kind':<18} {'results':>7}  verdict   title")
    for qid, kind, _, n, verdict, title in rows:
        print(f"{qid:<{width}}  {kind:<18} {n:>7}  {verdict:<8}  {title}")
    parsed = sum(1 for r in rows if r[2])
    with_data = sum(1 for r in rows if r[3] > 0)
    alerts = sum(1 for r in rows if r[0].startswith("alert:"))
    print(f"\n{len(rows)} queries ({len(rows) - alerts} dashboard incl. variables, {alerts} alerts): "
          f"{parsed} parsed, {with_data} returned data, "
          f"{sum(1 for r in rows if r[4] == 'empty-ok')} empty by exemption (kube-state-metrics only); "
          f"alerts need only parse (they are silent while the service is healthy)")
    if FAILURES:
        print(f"\n{len(FAILURES)} failure(s):", file=sys.stderr)
        for f in FAILURES:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("all queries parse; every dashboard query on our own metrics returned data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
