//! The autoscaling simulation: real `shout-proxy` processes as the replicas, each in a cgroup
//! whose CPU quota stands for the pod's CPU limit, a real Prometheus scraping them, the
//! prometheus-adapter's own query (read from `k8s/prometheus-adapter/values.yaml`) and the
//! HPA's documented algorithm with the behaviour read from `k8s/base/hpa.yaml`, so the
//! simulation and the manifests cannot drift.
//!
//! Time is compressed by one factor (`--compress`, 10): the HPA's sync period, stabilization
//! windows, policy periods and the adapter's `rate()` window are all divided by it. CPU is
//! scaled by another (`--pod-cpu` cores stand for the manifest's CPU limit): the CPU request and
//! the request-rate target scale with it. The CPU metric, which metrics-server serves in a
//! cluster, is each process's CPU time over the last 4 sync periods, from `/proc`
//! (`process_cpu_seconds_total` counts whole seconds, too coarse for a 0.05-core replica; and
//! one period's 10-ms ticks, or one breaker probe's fixed cost, weigh 20 times more at 0.05
//! cores than at the manifest's 1 CPU).
//!
//! Phases: shoutcloud slow (300 ms) at moderate load, where replicas must not grow; a CPU-bound
//! ramp up, plateau and down, where pods must be added before p99 degrades; idle, where
//! replicas must come back to `minReplicas`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use serde_yaml::Value;

use crate::Targets;
use crate::bench::{machine, update_docs};
use crate::client::{Outcome, Shouter, percentile};
use crate::fake::Fake;
use crate::proc::{External, Proxy, cpu_seconds, out_dir, root};
use crate::prom::scale_ranges;

#[derive(clap::Args)]
pub struct Args {
    /// Every HPA and adapter duration is divided by this.
    #[arg(long, default_value_t = 10.0)]
    compress: f64,
    /// CPU quota of one replica, in cores: stands for the Deployment's CPU limit.
    #[arg(long, default_value_t = 0.05)]
    pod_cpu: f64,
    /// Replicas this machine hosts; the manifest's maxReplicas is capped to it.
    #[arg(long, default_value_t = 4)]
    max_pods: usize,
    /// Offered load at the plateau (req/s; about twice what minReplicas serve at --pod-cpu 0.05).
    #[arg(long, default_value_t = 4000.0)]
    peak: f64,
    /// Offered load while shoutcloud is slow (req/s).
    #[arg(long, default_value_t = 300.0)]
    slow: f64,
    /// p99 above this (ms) counts as degraded.
    #[arg(long, default_value_t = 250.0)]
    p99_ms: f64,
    /// Write docs/autoscaling.svg and the results into docs/autoscaling.md.
    #[arg(long)]
    update_docs: bool,
}

/// The HPA controller: the manifest's replica bounds and `behavior` (read at every sync),
/// past recommendations and scale events. It runs on the manifest's time (the simulation's
/// seconds times `--compress`), so the manifest's durations apply as they are.
#[derive(Default)]
struct Hpa {
    min: usize,
    max: usize,
    behavior: Value,
    recommendations: Vec<(f64, usize)>,
    events: Vec<(f64, i64)>,
}

/// A number or a Kubernetes quantity (`"500m"`, `"5000"`).
fn num(v: &Value) -> f64 {
    match v.as_str() {
        Some(s) if s.ends_with('m') => s.trim_end_matches('m').parse::<f64>().unwrap_or(f64::NAN) / 1000.0,
        Some(s) => s.parse().unwrap_or(f64::NAN),
        None => v.as_f64().unwrap_or(f64::NAN),
    }
}

/// Replicas one metric asks for (`values` per pod, `None` while a pod has no value yet):
/// ceil(pods x average / target) within a 10 % tolerance; missing pods count as 0 when scaling
/// up and as the target when scaling down, as the controller does.
fn proposal(current: usize, values: &[Option<f64>], target: f64) -> usize {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    if known.is_empty() {
        return current;
    }
    let sum = known.iter().sum::<f64>();
    let fill = if sum > known.len() as f64 * target { 0.0 } else { target };
    let ratio = (sum + fill * (values.len() - known.len()) as f64) / (values.len() as f64 * target);
    if (ratio - 1.0).abs() <= 0.1 { current } else { (ratio * values.len() as f64).ceil() as usize }
}

impl Hpa {
    /// One sync at `t` (manifest seconds): the largest proposal, stabilized, then limited by the policies.
    fn step(&mut self, t: f64, current: usize, desired: usize) -> usize {
        let seconds = |v: &Value| v.as_f64().unwrap_or(0.0);
        let (up_rules, down_rules) = (&self.behavior["scaleUp"], &self.behavior["scaleDown"]);
        let within = |w: f64| self.recommendations.iter().filter(move |r| r.0 > t - w).map(|r| r.1);
        let up = within(seconds(&up_rules["stabilizationWindowSeconds"])).chain([desired]).min().unwrap_or(desired);
        let down = within(seconds(&down_rules["stabilizationWindowSeconds"])).chain([desired]).max().unwrap_or(desired);
        self.recommendations.push((t, desired));
        let next = current.max(up).min(down);
        let moved = |period: f64, sign: i64| -> i64 {
            self.events.iter().filter(|e| e.0 > t - period && e.1.signum() == sign).map(|e| e.1.abs()).sum()
        };
        let (rules, sign) = if next > current { (up_rules, 1.0) } else { (down_rules, -1.0) };
        let limits = rules["policies"].as_sequence().into_iter().flatten().map(|policy| {
            let period = seconds(&policy["periodSeconds"]);
            let start = (current as i64 - moved(period, 1) + moved(period, -1)) as f64;
            let value = num(&policy["value"]);
            let proposed =
                if policy["type"] == "Pods" { start + sign * value } else { start * (1.0 + sign * value / 100.0) };
            if sign > 0.0 { proposed.ceil() as i64 } else { proposed.trunc() as i64 }
        });
        let pick_max = (rules["selectPolicy"] != "Min") == (sign > 0.0);
        let limit = if pick_max { limits.max() } else { limits.min() }.unwrap_or(current as i64);
        // A limit never reverses the direction: up to at least `current`, down to at most it.
        let limit = (if sign > 0.0 { limit.max(current as i64) } else { limit.clamp(0, current as i64) }) as usize;
        let next = if sign > 0.0 { next.min(limit) } else { next.max(limit) }.clamp(self.min, self.max);
        if next != current {
            self.events.push((t, next as i64 - current as i64));
        }
        next
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cgroup (v1 `cpu` or v2) limited to `cores`, with `pid` in it.
fn cgroup(name: &str, cores: f64, pid: u32) -> Result<PathBuf> {
    let (v1, quota) = (Path::new("/sys/fs/cgroup/cpu"), (cores * 100_000.0) as u64);
    let (dir, file, value) = if v1.join("cpu.cfs_quota_us").exists() {
        (v1.join(name), "cpu.cfs_quota_us", quota.to_string())
    } else {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
        (Path::new("/sys/fs/cgroup").join(name), "cpu.max", format!("{quota} 100000"))
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {} (needs root)", dir.display()))?;
    std::fs::write(dir.join(file), value)?;
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
    Ok(dir)
}

struct Pod {
    proxy: Proxy,
    cgroup: PathBuf,
    shouter: Shouter,
    /// (time, CPU seconds) at the last syncs, for the CPU metric.
    cpu: Vec<(f64, f64)>,
}

/// `(offered req/s, shoutcloud slow)` at `t` seconds: slow phase, ramp up, plateau, down, idle.
fn plan(a: &Args, t: f64) -> (f64, bool) {
    match t {
        t if t < 25.0 => (a.slow, true),
        t if t < 65.0 => (a.peak * (0.1 + 0.9 * (t - 25.0) / 40.0), false),
        t if t < 95.0 => (a.peak, false),
        t if t < 105.0 => (a.peak * (105.0 - t) / 10.0, false),
        _ => (0.0, false),
    }
}
const END: f64 = 150.0;

pub async fn run(a: Args) -> Result<()> {
    let yaml = |p: &str| -> Result<Value> { Ok(serde_yaml::from_str(&std::fs::read_to_string(root().join(p))?)?) };
    let (spec, dep, adapter) = (
        yaml("k8s/base/hpa.yaml")?["spec"].clone(),
        yaml("k8s/base/deployment.yaml")?,
        yaml("k8s/prometheus-adapter/values.yaml")?,
    );
    let resources = &dep["spec"]["template"]["spec"]["containers"][0]["resources"];
    let scale = a.pod_cpu / num(&resources["limits"]["cpu"]);
    let request = num(&resources["requests"]["cpu"]) * scale;
    let metrics: Vec<&Value> = spec["metrics"].as_sequence().into_iter().flatten().collect();
    let find = |kind: &str| metrics.iter().find(|m| m["type"].as_str() == Some(kind)).context(kind.to_owned());
    let (pods_metric, cpu_metric) = (&find("Pods")?["pods"], &find("Resource")?["resource"]);
    let (rate_target, cpu_target) =
        (num(&pods_metric["target"]["averageValue"]) * scale, num(&cpu_metric["target"]["averageUtilization"]) / 100.0);
    let mut rules = adapter["rules"]["custom"].as_sequence().into_iter().flatten();
    let rule = rules.find(|r| r["name"]["as"] == pods_metric["metric"]["name"]);
    let rule = rule.context("no adapter rule serves the HPA's Pods metric")?;
    let series = rule["name"]["matches"].as_str().unwrap_or_default().trim_matches(|c| c == '^' || c == '$');
    let template =
        rule["metricsQuery"].as_str().unwrap_or_default().replace("<<.Series>>", series).replace("<<.GroupBy>>", "pod");
    let f = a.compress;
    let mut hpa = Hpa {
        min: (num(&spec["minReplicas"]) as usize).max(1), // 1 when absent, as in Kubernetes
        max: (num(&spec["maxReplicas"]) as usize).min(a.max_pods),
        behavior: spec["behavior"].clone(),
        ..Hpa::default()
    };
    eprintln!(
        "[autoscale] per replica: {} cores, request {request:.3}, targets {rate_target:.0} req/s and {:.0} % CPU; time / {f}",
        a.pod_cpu,
        cpu_target * 100.0
    );

    // Slow from the start: the phase is shoutcloud being slow, not the second it became so
    // (that transient lasts until the breakers open, about a second of real time, which a
    // 15-s CPU window dilutes in a cluster and the compressed 1.5-s window would not).
    let fake = Fake::start("autoscale-fake", &["--latency-ms", "300"]).await?;
    let prom_dir = out_dir("autoscale-prometheus")?;
    std::fs::write(prom_dir.join("targets.json"), "[]")?;
    let config = "global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n  - job_name: shout-proxy\n    file_sd_configs: [{files: ['@DIR@/targets.json'], refresh_interval: 1s}]\n";
    let prometheus = External::prometheus("autoscale-prometheus", config, &[]).await?;
    let (prom, http) = (format!("{}/api/v1/query", prometheus.url()), reqwest::Client::new());

    // What the load generator offers (req/s, shoutcloud slow, the replicas in rotation), and what it got.
    let offered = Arc::new(Mutex::new(((0.0, false), Vec::<Shouter>::new())));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let (o, p) = (outcomes.clone(), offered.clone());
    let load = tokio::spawn(async move {
        let (mut tick, mut due, mut i) = (tokio::time::interval(Duration::from_millis(10)), 0.0, 0usize);
        loop {
            tick.tick().await;
            let ((rate, slow), targets) = lock(&p).clone();
            due += rate / 100.0;
            while due >= 1.0 && !targets.is_empty() {
                (due, i) = (due - 1.0, i + 1);
                let (s, o) = (targets[i % targets.len()].clone(), o.clone());
                let text = if slow { format!("slow {i}") } else { format!("ramp {}", i % 500) };
                tokio::spawn(async move {
                    let outcome = s.shout(i, &text).await;
                    lock(&o).push(outcome)
                });
            }
        }
    });

    let (mut pods, mut retiring, mut rows) = (Vec::<Pod>::new(), Vec::<(Instant, Pod)>::new(), vec![]);
    let (start, mut started) = (Instant::now(), 0);
    let mut sync = tokio::time::interval(Duration::from_secs_f64(15.0 / f));
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sync.tick().await;
    let mut want = hpa.min;
    loop {
        while pods.len() < want {
            let name = format!("autoscale-pod-{started}");
            let proxy = Proxy::start(&name, &fake.shout_url(), &["--log-format", "json"]).await?;
            let shouter = Shouter::new(&proxy.url)?;
            // Warmed before its quota: start-up work (and, while shoutcloud is slow, the first
            // timeouts that open its breaker) would take 1 / --pod-cpu times longer than in a
            // pod with the manifest's limit, a distortion of the scaling, not of the pod.
            shouter.all(&(0..20).map(|i| format!("warm {started} {i}")).collect::<Vec<_>>(), 20).await;
            let cgroup =
                cgroup(&format!("shout-autoscale-{}-{started}", std::process::id()), a.pod_cpu, proxy.proc.pid())?;
            pods.push(Pod { proxy, cgroup, shouter, cpu: vec![] });
            started += 1;
        }
        while pods.len() > want {
            retiring.extend(pods.pop().map(|p| (Instant::now(), p)));
        }
        let targets: Vec<_> = pods.iter().map(|p| json!({"targets": [p.proxy.admin.trim_start_matches("http://")], "labels": {"namespace": "sim", "pod": p.proxy.proc.name}})).collect();
        std::fs::write(prom_dir.join("targets.tmp"), serde_json::to_string(&targets)?)?;
        std::fs::rename(prom_dir.join("targets.tmp"), prom_dir.join("targets.json"))?;
        for (_, old) in retiring.extract_if(.., |(at, _)| at.elapsed() > Duration::from_secs(2)) {
            old.proxy.proc.stop().await;
            std::fs::remove_dir(&old.cgroup).with_context(|| format!("removing {}", old.cgroup.display()))?;
        }
        lock(&offered).1 = pods.iter().map(|p| p.shouter.clone()).collect();
        sync.tick().await;
        let t = start.elapsed().as_secs_f64();
        if t > END {
            break;
        }
        // The answers in `done` were offered under the plan set at the previous sync: the row
        // records that plan (else the slow phase's last answers count against the ramp), then
        // the next one is set.
        let (rate, slow) = lock(&offered).0;
        let next = plan(&a, t);
        fake.set(json!({"latency_ms": if next.1 { 300 } else { 0 }})).await?;
        lock(&offered).0 = next;
        let done = std::mem::take(&mut *lock(&outcomes));
        let p99 = percentile(&done.iter().map(|o| o.latency_ms).collect::<Vec<_>>(), 0.99);
        let names: Vec<&str> = pods.iter().map(|p| p.proxy.proc.name.as_str()).collect();
        let matchers = format!("namespace=\"sim\",pod=~\"{}\"", names.join("|"));
        let q = scale_ranges(&template.replace("<<.LabelMatchers>>", &matchers), f, 0.0)?;
        let body: serde_json::Value = http.get(&prom).query(&[("query", &q)]).send().await?.json().await?;
        if body["status"] != "success" {
            bail!("Prometheus rejects {q}: {}", body["error"]);
        }
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        let (mut rates, mut cpus) = (vec![], vec![]);
        for pod in &mut pods {
            let series = result.iter().find(|s| s["metric"]["pod"] == pod.proxy.proc.name.as_str());
            rates.push(series.and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()));
            // Over 4 sync periods: /proc counts 10-ms ticks, 27 % of the request in one period.
            let now = cpu_seconds(pod.proxy.proc.pid());
            cpus.push(pod.cpu.first().map(|(then, cpu)| (now - cpu) / (t - then) / request));
            pod.cpu = [&pod.cpu[pod.cpu.len().saturating_sub(3)..], &[(t, now)]].concat();
        }
        let desired = proposal(pods.len(), &rates, rate_target).max(proposal(pods.len(), &cpus, cpu_target));
        want = hpa.step(t * f, pods.len(), desired);
        let errors = done.iter().filter(|o| !o.correct).count();
        let fallbacks = done.iter().filter(|o| o.source == "fallback").count();
        if let Some(wrong) = done.iter().find(|o| !o.correct) {
            eprintln!("[autoscale] t {t:5.1} s: {errors} wrong or failed, the first: {}", wrong.error);
        }
        let (answered, replicas) = (done.len(), pods.len());
        eprintln!(
            "[autoscale] t {t:5.1} s offered {rate:5.0} req/s answered {answered} p99 {p99:6.1} ms replicas {replicas} -> {want} (rate {rates:?}, cpu {cpus:?})"
        );
        rows.push((t, rate, pods.len(), p99, slow, errors, fallbacks, done.len()));
    }
    load.abort();
    for pod in pods.into_iter().chain(retiring.into_iter().map(|r| r.1)) {
        pod.proxy.proc.assert_no_panic()?;
        pod.proxy.proc.stop().await;
        std::fs::remove_dir(&pod.cgroup).with_context(|| format!("removing {}", pod.cgroup.display()))?;
    }
    report(&a, &rows, hpa.min, want)
}

type Row = (f64, f64, usize, f64, bool, usize, usize, usize);

/// `last`: the HPA's decision at the last sync, which the rows (replicas before it) do not show.
fn report(a: &Args, rows: &[Row], min: usize, last: usize) -> Result<()> {
    let slow: Vec<&Row> = rows.iter().filter(|r| r.4).collect();
    let max_slow = slow.iter().map(|r| r.2).max().unwrap_or(0);
    let (answers, fallbacks) = slow.iter().fold((0, 0), |(a, f), r| (a + r.7, f + r.6));
    let first_up = rows.iter().find(|r| r.2 > min).map(|r| r.0);
    let first_bad = rows.iter().find(|r| !r.4 && r.3 > a.p99_ms).map(|r| r.0);
    let plateau = rows.iter().filter(|r| r.1 >= a.peak).map(|r| r.3).fold(0.0, f64::max);
    let errors: usize = rows.iter().map(|r| r.5).sum();
    let at = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:.1} s"));
    let mut targets = Targets::new("autoscale");
    targets.check(
        format!("shoutcloud at 300 ms, {} req/s: replicas stay at minReplicas {min}", a.slow),
        max_slow == min,
        format!("max {max_slow}, {fallbacks} of {answers} answers were fallbacks"),
    );
    targets.check(
        format!("CPU-bound ramp: a pod is added before p99 exceeds {} ms", a.p99_ms),
        first_up.is_some_and(|u| first_bad.is_none_or(|b| u < b)),
        format!("first scale-out at {}, first p99 over it at {}", at(first_up), at(first_bad)),
    );
    let plateau_target = format!("plateau {} req/s: p99 under {} ms", a.peak, a.p99_ms);
    targets.check(plateau_target, plateau < a.p99_ms, format!("worst p99 {plateau:.1} ms"));
    targets.check(format!("load ended: back to minReplicas {min}"), last == min, format!("{last} replicas at the end"));
    targets.check("every answer correct", errors == 0, format!("{errors} wrong or failed"));
    let svg = out_dir("autoscale")?.join("autoscaling.svg");
    let head =
        format!("`cargo xtask autoscale`: time / {}, one replica = {} CPU, {}.", a.compress, a.pod_cpu, machine());
    let report = targets.report(&head, "autoscale/results.md")?;
    let series = |f: fn(&Row) -> f64| rows.iter().map(|r| (r.0, f(r))).collect::<Vec<_>>();
    let panels = [
        ("offered req/s", series(|r| r.1)),
        ("replicas", series(|r| r.2 as f64)),
        ("p99 ms", series(|r| if r.3.is_nan() { 0.0 } else { r.3 })),
    ];
    crate::chart::lines(&svg, &format!("cargo xtask autoscale (time / {})", a.compress), "seconds", &panels)?;
    if a.update_docs {
        update_docs("autoscaling.md", "autoscale", &report, &svg)?;
    }
    targets.verdict()
}
