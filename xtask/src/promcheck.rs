//! `cargo xtask promcheck`: the shipped alert rules, dashboard and runbook against the release
//! `shout-proxy` (the fake upstream behind it, a real redis-server for the shared-cache panels),
//! a real Prometheus scraping it every second with the rules loaded, and a real Alertmanager
//! delivering to a webhook served here. One run, three parts:
//!
//! 1. Alerts. The rules are never edited for the run: every `for:` and range window is divided
//!    by [`SCALE`] (`prom::scale_duration`, `prom::scale_ranges`: `for: 5m` -> 10 s, `[5m]` ->
//!    10 s, `[1m]` -> 4 s), so the 100-answer floor per window holds at more than 10 requests a
//!    second, which the load sends. An idle and a healthy service raise nothing (not even a
//!    pending alert; under load the floor is met); a failing upstream makes exactly
//!    `ShoutBreakerOpen` and `ShoutFallbackRatioHigh` arrive as firing, a healed one makes them
//!    arrive resolved; every answer meanwhile is the crate's transform.
//! 2. Scripted load on every public path (unique and repeated inputs, JSON and form, malformed
//!    JSON, a missing field, an unknown path, /health): a flaky, slow, failing, healed upstream.
//! 3. Queries. Every metric family the service exports (its `# TYPE` lines) is shown by a
//!    dashboard query, but the few named in [`UNSHOWN`]; the dashboard shows nothing the service
//!    does not export (but kube-state-metrics' [`KSM`] series and `up`); the dashboard is
//!    importable by the Grafana sidecar (no `__inputs`, a datasource variable, unique panel ids,
//!    no overlaps); every query parses, and every dashboard query on our own metrics returns
//!    data; the names a query uses exist (metric names in the exposition, label names on the
//!    metric, `=` values among those seen; names come from `promql-parser`, so `or vector(0)`
//!    cannot hide a misspelt metric); every alert is healthy and its runbook link, the runbook's
//!    panel references and `/status` fields exist; `promtool check metrics` has nothing to say.
//!
//! The static checks (promtool rules and tests, k8s copies) stay in `.ci/prometheus-check.sh`,
//! which calls this; how `k8s/monitoring` renders is `.ci/validate-delivery.sh`'s.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use poem::{EndpointExt, Route, handler, post, web::Data, web::Json};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

use crate::Targets;
use crate::client::Shouter;
use crate::fake::Fake;
use crate::proc::{External, Proxy, out_dir, root};
use crate::prom::{Metrics, scale_duration, scale_ranges};

#[derive(clap::Args)]
pub struct Args {}

/// Every `for:` and range window of the rules is divided by this.
const SCALE: f64 = 30.0;
/// How long the alerts are watched on an idle service before the healthy load starts.
const IDLE_SECS: u64 = 25;
/// What the failing upstream must raise, and nothing else.
const EXPECTED: [&str; 2] = ["ShoutBreakerOpen", "ShoutFallbackRatioHigh"];

/// Families the service exports that no dashboard panel shows, deliberately: the process
/// collector's extras next to the CPU, memory and file-descriptor panels.
const UNSHOWN: [&str; 2] = ["process_threads", "process_virtual_memory_bytes"];
/// What the scripted load must have produced, or the panels' data proves nothing.
const SCENARIO: &str = r#"shout_answers_total{source="upstream"} shout_answers_total{source="cache"}
    shout_answers_total{source="fallback"} shout_fallbacks_total{reason="breaker_open"}
    shout_upstream_attempts_total{outcome="server_error"} shout_upstream_attempts_total{outcome="timeout"}
    shout_upstream_retries_total shout_breaker_transitions_total{state="open"} shout_breaker_transitions_total{state="half_open"}
    shout_breaker_transitions_total{state="closed"}
    http_server_request_duration_seconds_count{http_response_status_code="200"}
    http_server_request_duration_seconds_count{http_response_status_code="400"}
    http_server_request_duration_seconds_count{http_response_status_code="404"}"#;
/// kube-state-metrics series: no kube-state-metrics runs here, so a query made only of these
/// may come back empty (it must still parse).
const KSM: &str = "kube_deployment_status_replicas kube_deployment_spec_replicas
    kube_horizontalpodautoscaler_status_current_replicas kube_horizontalpodautoscaler_spec_max_replicas
    kube_horizontalpodautoscaler_status_target_metric kube_horizontalpodautoscaler_spec_target_metric
    kube_horizontalpodautoscaler_status_condition kube_pod_container_resource_requests
    kube_pod_container_resource_limits kube_pod_container_status_restarts_total
    kube_pod_container_status_last_terminated_reason container_cpu_usage_seconds_total
    container_cpu_cfs_throttled_periods_total container_cpu_cfs_periods_total";
fn is_ksm(name: &str) -> bool {
    KSM.split_whitespace().any(|k| k == name)
}

/// Labels the scrape adds, on every series but not in /metrics.
const TARGET_LABELS: [&str; 7] = ["job", "instance", "namespace", "pod", "service", "endpoint", "container"];

/// What a query uses (metric names, grouping labels), and what its selectors name that the
/// service's exposition does not have: a label not on one of its metrics, an `=` value never seen.
struct Names<'a> {
    exposition: &'a Metrics,
    metrics: BTreeSet<String>,
    grouping: BTreeSet<String>,
    problems: Vec<String>,
}

impl ExprVisitor for Names<'_> {
    type Error = String;

    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        let vs = match e {
            Expr::Aggregate(a) => {
                self.grouping.extend(a.modifier.iter().flat_map(|m| m.labels().labels.iter().cloned()));
                a.param.iter().try_for_each(|p| walk_expr(self, p).map(drop))?; // topk(k, ...) and the like
                return Ok(true);
            }
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    self.grouping.extend(m.matching.iter().flat_map(|l| l.labels().labels.iter().cloned()));
                    self.grouping.extend(m.card.labels().into_iter().flat_map(|l| l.labels.iter().cloned()));
                }
                return Ok(true);
            }
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let name = vs.name.clone().unwrap_or_default();
        let ours = |label: &str| self.exposition.has(&name) && label != "__name__" && !TARGET_LABELS.contains(&label);
        for m in vs.matchers.matchers.iter().filter(|m| ours(&m.name)) {
            let seen = self.exposition.by_label(&name, &m.name);
            if seen.is_empty() {
                self.problems.push(format!("label {} is not on {name}", m.name));
            } else if matches!(m.op, MatchOp::Equal) && !seen.iter().any(|(v, _)| *v == m.value) {
                self.problems.push(format!("{name}{{{}=\"{}\"}} never seen", m.name, m.value));
            }
        }
        self.metrics.insert(name);
        Ok(true)
    }
}

impl Names<'_> {
    /// The names `expr` uses and every problem with them, or promql-parser's error.
    fn of<'a>(exposition: &'a Metrics, expr: &str) -> Result<Names<'a>, String> {
        let mut n = Names { exposition, metrics: BTreeSet::new(), grouping: BTreeSet::new(), problems: Vec::new() };
        walk_expr(&mut n, &parser::parse(expr)?)?;
        n.metrics.remove("");
        let own: Vec<&String> = n.metrics.iter().filter(|m| exposition.has(m)).collect();
        if n.metrics.is_empty() {
            n.problems.push(format!("no metric name in {expr:?}"));
        }
        for name in n.metrics.iter().filter(|m| !own.contains(m) && !is_ksm(m) && *m != "up") {
            n.problems
                .push(format!("metric {name} is not exported by the service (nor kube-state-metrics/Prometheus)"));
        }
        // A grouping label is one of the scrape's, a histogram's `le` or on a metric of ours.
        let series = exposition.0.iter().filter(|s| own.contains(&&s.name));
        let on_own = series.flat_map(|s| s.labels.iter().map(|(k, _)| k.as_str()));
        let available: BTreeSet<&str> = TARGET_LABELS.into_iter().chain(["le"]).chain(on_own).collect();
        for label in n.grouping.iter().filter(|l| !own.is_empty() && !available.contains(l.as_str())) {
            n.problems.push(format!("grouping label {label} is on none of {own:?}"));
        }
        Ok(n)
    }
}

struct Check {
    /// Prometheus's URL.
    prom: String,
    t: Targets,
}

impl Check {
    fn fail(&mut self, msg: String) {
        self.t.check(msg, false, "");
    }

    /// The value of each series `expr` returns, or Prometheus's error.
    async fn query(&self, expr: &str) -> Result<Result<Vec<f64>, String>> {
        let url = format!("{}/api/v1/query", self.prom);
        let body: Value = reqwest::Client::new().get(url).query(&[("query", expr)]).send().await?.json().await?;
        if body["status"] != "success" {
            return Ok(Err(format!("{}: {}", body["errorType"], body["error"])));
        }
        let value = |s: &Value| text(&s["value"][1]).parse().unwrap_or(f64::NAN);
        Ok(Ok(items(&body["data"]["result"]).map(value).collect()))
    }
}

/// The elements of a JSON array (none when it is not one).
fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// A JSON string, empty when it is not one.
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Every panel, rows included, with the title of the row it sits in (a collapsed row holds
/// its panels, an open one is followed by them).
fn walk_panels(dash: &Value) -> Vec<(String, &Value)> {
    let (mut out, mut row) = (Vec::new(), String::new());
    for p in items(&dash["panels"]) {
        if p["type"] == "row" {
            row = text(&p["title"]).to_owned();
        }
        out.push((row.clone(), p));
        out.extend(items(&p["panels"]).map(|q| (row.clone(), q)));
    }
    out
}

/// Sidecar-importable: no __inputs, a datasource variable, namespace/pod query variables,
/// unique panel ids, no overlapping panels, every panel on `${datasource}` with a query.
fn check_dashboard(dash: &Value, panels: &[(String, &Value)], c: &mut Check) {
    let ok =
        dash.get("__inputs").is_none() && dash["schemaVersion"].as_u64() >= Some(36) && !text(&dash["uid"]).is_empty();
    c.t.check("dashboard: no __inputs, schemaVersion >= 36, a uid", ok, "");
    let var = |name: &str| items(&dash["templating"]["list"]).find(|v| v["name"] == name).unwrap_or(&Value::Null);
    let ok = var("datasource")["type"] == "datasource"
        && var("datasource")["query"] == "prometheus"
        && var("namespace")["type"] == "query"
        && var("pod")["type"] == "query";
    c.t.check("dashboard: a datasource/prometheus variable, namespace/pod query variables", ok, "");
    let mut boxes: Vec<(u64, [u64; 4])> = Vec::new();
    for (_, p) in panels {
        let id = p["id"].as_u64().unwrap_or(0);
        let g = ["x", "y", "w", "h"].map(|k| p["gridPos"][k].as_u64().unwrap_or(0));
        if boxes.iter().any(|(other, _)| *other == id) {
            c.fail(format!("panel id {id} is used twice"));
        }
        for (other, o) in &boxes {
            if g[0] < o[0] + o[2] && o[0] < g[0] + g[2] && g[1] < o[1] + o[3] && o[1] < g[1] + g[3] {
                c.fail(format!("panel {id} overlaps panel {other}"));
            }
        }
        boxes.push((id, g));
        if p["type"] == "row" {
            continue;
        }
        let targets: Vec<&Value> = items(&p["targets"]).collect();
        if targets.is_empty() || std::iter::once(*p).chain(targets).any(|t| t["datasource"]["uid"] != "${datasource}") {
            c.fail(format!("panel {id} ({}): no query, or a datasource other than ${{datasource}}", p["title"]));
        }
    }
}

/// GitHub's anchors of the runbook's headings; its `**Row › Panel**` references and `/status`
/// field names must exist.
fn check_runbook(runbook: &str, panels: &[(String, &Value)], status: &Value, c: &mut Check) -> BTreeSet<String> {
    let flat = runbook.split_whitespace().collect::<Vec<_>>().join(" ");
    let panels: BTreeSet<String> = panels
        .iter()
        .filter(|(_, p)| p["type"] != "row")
        .map(|(row, p)| format!("{row} › {}", text(&p["title"])))
        .collect();
    let refs: Vec<&str> = flat.split("**").skip(1).step_by(2).filter(|s| s.contains(" › ")).collect();
    c.t.check("the runbook names dashboard panels (**Row › Panel**)", !refs.is_empty(), refs.len().to_string());
    for r in refs.iter().filter(|r| !panels.contains(**r)) {
        c.fail(format!("the runbook names panel **{r}**, which the dashboard does not have"));
    }
    let is_field =
        |s: &&str| s.starts_with("pipeline.") && s.chars().all(|ch| ch.is_ascii_lowercase() || "_.".contains(ch));
    let fields: BTreeSet<&str> = flat.split('`').skip(1).step_by(2).filter(is_field).collect();
    c.t.check("the runbook names /status fields", !fields.is_empty(), fields.len().to_string());
    for f in fields {
        if f.split('.').try_fold(status, |node, key| node.get(key)).is_none() {
            c.fail(format!("the runbook names /status field {f}, which /status does not have"));
        }
    }
    let kept = |ch: &char| ch.is_alphanumeric() || "-_ ".contains(*ch);
    let anchor = |h: &str| h.trim().to_lowercase().chars().filter(kept).collect::<String>().replace(' ', "-");
    let headings = runbook.lines().filter_map(|l| l.strip_prefix('#')?.trim_start_matches('#').strip_prefix(' '));
    headings.map(anchor).collect()
}

/// `prometheus/alerts.yaml` with every `for:` (at least 2 s) and range window (at least 4 s)
/// divided by [`SCALE`].
fn scaled_rules() -> Result<String> {
    let mut doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(root().join("prometheus/alerts.yaml"))?)?;
    for group in doc.get_mut("groups").and_then(Yaml::as_sequence_mut).context("no groups")? {
        for rule in group.get_mut("rules").and_then(Yaml::as_sequence_mut).context("no rules")? {
            if let Some(f) = rule.get_mut("for") {
                *f = scale_duration(f.as_str().context("for: is not a string")?, SCALE, 2000.0)?.into();
            }
            let expr = rule.get_mut("expr").context("a rule without expr")?;
            *expr = scale_ranges(expr.as_str().context("expr is not a string")?, SCALE, 4000.0)?.into();
        }
    }
    Ok(serde_yaml::to_string(&doc)?)
}

/// (alertname, status) in the order Alertmanager delivered them.
type Delivered = Arc<Mutex<Vec<(String, String)>>>;

#[handler]
fn webhook(Json(body): Json<Value>, got: Data<&Delivered>) {
    let alerts =
        items(&body["alerts"]).map(|a| (text(&a["labels"]["alertname"]).to_owned(), text(&a["status"]).to_owned()));
    got.lock().map(|mut g| g.extend(alerts)).ok();
}

/// Alert names delivered with `status` (`None`: any).
fn delivered(got: &Delivered, status: Option<&str>) -> BTreeSet<String> {
    let got = got.lock().map(|g| g.clone()).unwrap_or_default();
    got.into_iter().filter(|(_, s)| status.is_none_or(|w| s == w)).map(|(n, _)| n).collect()
}

/// Part 1: silent while idle and healthy, then exactly [`EXPECTED`] firing and resolved.
async fn alert_phases(c: &mut Check, proxy: &Proxy, fake: &Fake, got: &Delivered) -> Result<()> {
    let (started, expected) = (Instant::now(), BTreeSet::from(EXPECTED.map(String::from)));
    let shouter = Shouter::new(&proxy.url)?;
    // The load starts as the idle phase ends (about 50 requests a second), until a wrong answer.
    let load = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
        let mut i = 0;
        while shouter.shout(i, &format!("alert drill {i}")).await.correct {
            i += 1;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        i
    });
    // Silent phases: nothing delivered, nothing even pending (a target down would raise
    // ShoutNoTargetsUp), and under load the answers clear the alerts' 100-answer floor.
    for (phase, secs) in [("idle", IDLE_SECS), ("healthy", 30)] {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let alerts = c.query(&format!("max_over_time(ALERTS[{secs}s])")).await?.map_err(anyhow::Error::msg)?.len();
        let floor = c.query("sum(increase(shout_answers_total[10s])) >= 100").await?.map_err(anyhow::Error::msg)?.len();
        let seen = format!("{alerts} alerts, delivered {:?}, floor met {floor}", delivered(got, None));
        let silent = alerts == 0 && delivered(got, None).is_empty() && floor == usize::from(phase == "healthy");
        c.t.check(format!("alerts: {phase} {secs} s: none, not even pending"), silent, seen);
    }
    for (knobs, status) in [(json!({"mode": "fail"}), "firing"), (json!({}), "resolved")] {
        fake.set(knobs).await?;
        let phase = Instant::now();
        while delivered(got, Some(status)) != expected && phase.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seen = format!("{:?} at {} s", delivered(got, Some(status)), started.elapsed().as_secs());
        c.t.check(format!("alerts: exactly the expected {status}"), delivered(got, Some(status)) == expected, seen);
    }
    let all = delivered(got, None);
    c.t.check(format!("alerts: nothing but {EXPECTED:?} delivered"), all == expected, format!("{all:?}"));
    // Still running means no wrong answer; finished, it returns the request that got one. A
    // panic in it is a broken check, not a pass.
    load.abort();
    let wrong = match load.await {
        Err(e) if e.is_cancelled() => None,
        finished => Some(finished?),
    };
    c.t.check("alerts: every answer is the transform", wrong.is_none(), format!("wrong answer: request {wrong:?}"));
    Ok(())
}

/// Four clients looping over every public path (unique and repeated inputs, JSON and form,
/// malformed JSON, a missing field, an unknown path, /health) until `secs` pass. The status
/// codes are judged on the service's own counts, through Prometheus ([`SCENARIO`]).
async fn load(url: &str, secs: u64) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(secs);
    let (shouter, http) = (&Shouter::new(url)?, &reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?);
    let client = |id: usize| async move {
        let mut i = 0;
        while Instant::now() < until {
            i += 1;
            shouter.shout(i, &format!("load {id} {i}")).await;
            shouter.shout(i, &format!("hello cache {}", i % 7)).await;
            if i.is_multiple_of(5) {
                let json = |body| http.post(format!("{url}/v1")).header("content-type", "application/json").body(body);
                let odd = [json(r#"{"data": "#), json(r#"{"other": "x"}"#), http.get(format!("{url}/no/such"))];
                for request in odd.into_iter().chain([http.get(format!("{url}/health"))]) {
                    let _ = request.send().await; // judged on the service's own counts
                }
            }
        }
    };
    futures_util::future::join_all((0..4).map(client)).await;
    Ok(())
}

/// Part 2: a flaky, slow, failing, then healed upstream under [`load`]; a phase with a breaker
/// state loads until the breaker reaches it (at most a minute), then for its seconds.
async fn load_phases(proxy: &Proxy, fake: &Fake) -> Result<()> {
    let flaky = json!({"latency_ms": 5, "failure_rate": 0.3});
    let phases = [
        ("flaky upstream (30 % failures)", flaky.clone(), None, 20),
        ("slow upstream (400 ms > attempt timeout)", json!({"latency_ms": 400}), None, 10),
        ("failing upstream until the breaker opens", json!({"mode": "fail", "latency_ms": 5}), Some("open"), 5),
        ("flaky again until the breaker closes", flaky, Some("closed"), 10),
    ];
    for (what, knobs, breaker, secs) in phases {
        eprintln!("[promcheck] load: {what}, then {secs} s");
        fake.set(knobs).await?;
        let start = Instant::now();
        while let Some(state) = breaker
            && proxy.metrics().await?.sample("shout_breaker_state", &[("state", state)]) != 1.0
        {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the breaker did not reach {state} within 60 s");
            }
            load(&proxy.url, 5).await?;
        }
        load(&proxy.url, secs).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// Part 3: the exposition, the dashboard, the runbook and every query.
async fn query_checks(c: &mut Check, proxy: &Proxy) -> Result<()> {
    let exposed = reqwest::get(format!("{}/metrics", proxy.admin)).await?.text().await?;
    // What the queries' names must match: the service's exposition at the end of the load.
    let exposition = Metrics::parse(&exposed)?;
    for q in SCENARIO.split_whitespace().map(|s| format!("sum({s})")) {
        let v = c.query(&q).await?.ok().and_then(|values| values.first().copied()).unwrap_or(0.0);
        c.t.check(format!("the run produced {q}"), v > 0.0, v.to_string());
    }
    let metrics_file = out_dir("promcheck-prometheus")?.join("metrics.txt");
    std::fs::write(&metrics_file, &exposed)?;
    let lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file)?)
        .output()?;
    let lint = format!("{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&lint.stderr));
    c.t.check("promtool check metrics: silent", lint.trim().is_empty(), lint.chars().take(2000).collect::<String>());
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(root().join("grafana/shout-proxy.json"))?)?;
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md"))?;
    let panels = walk_panels(&dash);
    check_dashboard(&dash, &panels, c);
    let anchors = check_runbook(&runbook, &panels, &proxy.status().await?, c);
    // Every query with the names it uses: the dashboard's variables and panels, then the rules.
    let mut queries = Vec::new();
    for v in items(&dash["templating"]["list"]).filter(|v| v["type"] == "query") {
        let id = format!("var:{}", text(&v["name"]));
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
        match q.trim().strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).and_then(|r| r.rsplit_once(','))
        {
            Some((expr, label)) => queries.push((id, format!("count by ({}) ({expr})", label.trim()), true)),
            None => c.fail(format!("{id}: not a label_values(expr, label) query: {q:?}")),
        }
    }
    for (_, p) in &panels {
        for t in items(&p["targets"]).filter(|t| t["expr"].is_string()) {
            let id = format!("panel{}/{} ({})", p["id"], text(&t["refId"]), text(&p["title"]));
            queries.push((id, text(&t["expr"]).to_owned(), true));
        }
    }
    let rules_file = std::fs::read_to_string(root().join("prometheus/alerts.yaml"))?;
    let expected = rules_file.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    let loaded: Value = reqwest::get(format!("{}/api/v1/rules", c.prom)).await?.json().await?;
    let rules: Vec<&Value> =
        items(&loaded["data"]["groups"]).flat_map(|g| items(&g["rules"])).filter(|r| r["type"] == "alerting").collect();
    c.t.check(format!("{expected} alerting rules loaded"), rules.len() == expected, rules.len().to_string());
    for r in &rules {
        let id = format!("alert:{}", text(&r["name"]));
        let url = text(&r["annotations"]["runbook_url"]);
        let anchor_ok = url
            .split_once('#')
            .is_some_and(|(page, anchor)| page.ends_with("docs/runbook.md") && anchors.contains(anchor));
        let ok = r["health"] == "ok"
            && anchor_ok
            && !r["annotations"]["summary"].is_null()
            && !r["annotations"]["description"].is_null()
            && ["critical", "warning"].contains(&text(&r["labels"]["severity"]));
        let seen = format!("health {}, runbook_url {url:?}, state {}", r["health"], r["state"]);
        // The runbook link names a heading of docs/runbook.md; severity is critical or warning.
        c.t.check(format!("{id}: healthy, runbook, summary, description, severity"), ok, seen);
        queries.push((id, text(&r["query"]).to_owned(), false));
    }
    // A dashboard query returns data, but one made only of kube-state-metrics series (none runs
    // here); an alert's may be empty (nothing firing) but parses.
    let vars = [("$__rate_interval", "1m"), ("$namespace", "shout-ci"), ("$pod", "shout-proxy-ci-0")];
    let mut used = BTreeSet::new();
    for (id, expr, on_dashboard) in queries {
        let expr = vars.iter().fold(expr, |e, (var, value)| e.replace(var, value));
        let (names, problems) = match Names::of(&exposition, &expr) {
            Ok(n) => (n.metrics, n.problems),
            Err(e) => (BTreeSet::new(), vec![format!("promql-parser rejects {expr:?}: {e}")]),
        };
        for problem in problems {
            c.fail(format!("{id}: {problem}"));
        }
        let ksm_only = !names.is_empty() && names.iter().all(|n| is_ksm(n));
        let series = c.query(&expr).await?.map(|v| v.len());
        let must_return = on_dashboard && !ksm_only;
        let ok = series.as_ref().is_ok_and(|n| *n > 0 || !must_return);
        let target = if must_return { "returns data" } else { "parses" };
        let only = if ksm_only { " (kube-state-metrics only)" } else { "" };
        c.t.check(format!("{id}: {target}{only}"), ok, format!("{series:?} for {expr:?}"));
        if on_dashboard {
            used.extend(names);
        }
    }
    // Every family the service exports (its `# TYPE` lines; a histogram's series fold into it)
    // is shown by a dashboard query, but the named unshown ones.
    let families = exposed.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next());
    let shows = |family: &str, name: &str| {
        name.strip_prefix(family).is_some_and(|suffix| ["", "_bucket", "_count", "_sum"].contains(&suffix))
    };
    let unshown: BTreeSet<&str> = families.filter(|f| !used.iter().any(|u| shows(f, u))).collect();
    let ok = unshown == BTreeSet::from(UNSHOWN);
    c.t.check(format!("every exported family is shown by the dashboard but {UNSHOWN:?}"), ok, format!("{unshown:?}"));
    Ok(())
}

pub async fn run(_: Args) -> Result<()> {
    let started = Instant::now();
    let got = Delivered::default();
    // A previous run's TSDB would hold old ALERTS, its notification log would hold back deliveries.
    let _ = ["promcheck-prometheus", "promcheck-alertmanager"]
        .map(|d| out_dir(d).map(|d| std::fs::remove_dir_all(d.join("data"))));
    std::fs::write(out_dir("promcheck-prometheus")?.join("rules.yaml"), scaled_rules()?)?;
    let app = Route::new().at("/alerts", post(webhook)).data(got.clone());
    let (hook, _hook_stop) = crate::fake::serve("127.0.0.1:0", app).await?;
    let am = std::fs::read_to_string(root().join("prometheus/alertmanager-check.yml"))?.replace("@WEBHOOK@", &hook);
    let flags = "--config.file=@DIR@/config --storage.path=@DIR@/data --cluster.listen-address= --log.level=warn";
    let flags: Vec<&str> = flags.split(' ').chain(["--web.listen-address=127.0.0.1:@PORT@"]).collect();
    let am = External::start("promcheck-alertmanager", "prometheus-alertmanager", &flags, &am, Some("/-/ready"), None)
        .await?;
    let fake = Fake::start("promcheck-fake", &[]).await?;
    let redis = External::redis("promcheck-redis").await?;
    let flags = ["--breaker-open-ms", "1000", "--breaker-max-open-ms", "2000", "--redis-url", &redis.url()];
    let proxy = Proxy::start("promcheck-proxy", &fake.shout_url(), &flags).await?;
    let config = std::fs::read_to_string(root().join("prometheus/prometheus-check.yml"))?
        .replace("@ADMIN_TARGET@", proxy.admin.trim_start_matches("http://"))
        .replace("@ALERTMANAGER@", &format!("127.0.0.1:{}", am.port));
    let prometheus = External::prometheus("promcheck-prometheus", &config, &["--rules.alert.resend-delay=1s"]).await?;
    let mut c = Check { prom: prometheus.url(), t: Targets::new("promcheck") };
    alert_phases(&mut c, &proxy, &fake, &got).await?;
    load_phases(&proxy, &fake).await?;
    query_checks(&mut c, &proxy).await?;
    for p in [&proxy.proc, &prometheus.proc, &am.proc, &redis.proc] {
        c.t.check(format!("{} did not panic", p.name), p.assert_no_panic().is_ok(), p.log.display().to_string());
    }
    c.t.check("promcheck-fake did not panic", fake.assert_no_panic().is_ok(), "its handler panics, counted in-process");
    println!("promcheck: {} s", started.elapsed().as_secs());
    c.t.verdict()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_parsed_query_not_from_its_text() -> Result<()> {
        let exposition = Metrics::parse("a_total{x=\"1\",pod=\"p\"} 1\nb 2\n")?;
        let query = r#"sum by (pod) (rate(a_total{x="2"}[1m])) / on (pod) b or c_total or vector(0)"#;
        let n = Names::of(&exposition, query).map_err(anyhow::Error::msg)?;
        assert_eq!(n.metrics, BTreeSet::from(["a_total", "b", "c_total"].map(String::from)));
        assert_eq!(n.grouping, BTreeSet::from(["pod".to_owned()]));
        let c_total = "metric c_total is not exported by the service (nor kube-state-metrics/Prometheus)";
        assert_eq!(n.problems, ["a_total{x=\"2\"} never seen", c_total]);
        Ok(())
    }
}
