//! The load benchmark: wrk against shout-proxy on each path (cache hit, miss, breaker open,
//! slow and flaky upstream), against the fake upstream directly, and against a bare reference
//! handler (the same poem stack and the crate's transform, nothing else) as the ceiling.
//!
//! Rounds are interleaved (every round runs every scenario) so a noisy machine's drift hits all
//! alike; every round is kept and the best one per scenario counts. Each scenario starts its own
//! shout-proxy, so its peak RSS is its own; the fake and the reference handler are served by the
//! harness itself, so theirs are the harness's CPU and peak RSS. Then a memory run pushes
//! unique inputs through the bounded cache, and last (it pins the harness to one CPU for good) a
//! one-CPU concurrency sweep gives the request rate one pod sustains within the p99 goal (the HPA
//! target).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::chart::{Bar, bars};
use crate::client::{Shouter, expected};
use crate::fake::{Fake, serve};
use crate::load::{Summary, Wrk};
use crate::proc::{External, Proxy, cpu_seconds, out_dir, root, rss_mib};
use crate::{Targets, table};

#[derive(clap::Args)]
pub struct Args {
    /// Smoke mode for CI: 2 s per scenario, one round, no sweep, 100,000 inputs in the memory run.
    #[arg(long, env = "BENCH_QUICK")]
    quick: bool,
    /// Seconds per measurement (default 10, quick 2).
    #[arg(long, env = "BENCH_SECONDS")]
    seconds: Option<f64>,
    /// Interleaved rounds (default 2, quick 1).
    #[arg(long, env = "BENCH_ROUNDS")]
    rounds: Option<usize>,
    /// Unique inputs of the memory run (default 1,000,000, quick 100,000; 0 skips it).
    #[arg(long, env = "BENCH_MEMORY_INPUTS")]
    memory_inputs: Option<u64>,
    /// Scenarios to run (comma-separated); all when empty.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',')]
    only: Vec<String>,
    /// Write the results into docs/benchmark.md and docs/benchmark.svg.
    #[arg(long, env = "BENCH_UPDATE_DOCS")]
    update_docs: bool,
    /// Exit 1 when a target is missed (off by default: a shared machine's noise is not a regression).
    #[arg(long, env = "BENCH_STRICT")]
    strict: bool,
}

/// The scenarios (docs/benchmark.md says what each runs): name, the fake upstream's flags,
/// shout-proxy's flags. `cache-hit-redis` is `cache-hit` with a real redis-server configured
/// (an L1 hit must not touch it); `shared-hit` answers every request from Redis (an in-process
/// cache too small to hold anything). `bare-*` and `upstream-direct` start no proxy.
const SCENARIOS: [(&str, &[&str], &[&str]); 9] = [
    ("bare-same", &[], &[]),
    ("bare-unique", &[], &[]),
    ("upstream-direct", &[], &[]),
    ("cache-hit", &[], &[]),
    ("cache-hit-redis", &[], &[]),
    ("shared-hit", &[], &["--cache-max-bytes", "1"]),
    ("miss", &[], &[]),
    ("breaker-open", &["--mode", "fail"], &["--breaker-open-ms", "600000", "--breaker-max-open-ms", "600000"]),
    ("slow-flaky", &["--latency-ms", "50", "--failure-rate", "0.3"], &[]),
];
const P99_GOAL_MS: f64 = 5.0;
/// wrk's connections, as the performance issue's reference (`wrk -t1 -c32`) and its targets have them.
const CONNECTIONS: u32 = 32;

#[poem::handler]
fn reference(poem::web::Json(body): poem::web::Json<Value>) -> poem::web::Json<Value> {
    poem::web::Json(json!({"data": expected(body["data"].as_str().unwrap_or_default())}))
}

/// One measurement (for a scenario's best round: every round's req/s, errors and peak RSS over all).
#[derive(Debug, Clone, Default, Serialize)]
struct Measure {
    scenario: String,
    connections: u32,
    /// wrk's numbers; its errors (non-2xx and socket errors) plus the proxy's own non-2xx.
    #[serde(flatten)]
    wrk: Summary,
    rounds: Vec<f64>,
    /// Answers by source (fallbacks by reason), from the proxy's counters.
    sources: String,
    cpu_cores: f64,
    peak_rss_mib: f64,
}

/// The scenarios whose shout-proxy is configured with a redis-server.
const REDIS: [&str; 2] = ["cache-hit-redis", "shared-hit"];
/// The paths of the one-pod concurrency sweep.
const SWEPT: [&str; 3] = ["cache-hit", "miss", "breaker-open"];

/// The servers of one scenario, and where wrk sends.
struct Stack {
    kind: &'static str,
    url: String,
    proxy: Option<Proxy>,
    // What else the scenario serves, held only to be stopped when the stack drops (fields drop in
    // this order: the proxy first, then its upstream and Redis).
    _fake: Option<Fake>,
    _redis: Option<External>,
    /// The bare reference handler's stop signal.
    _reference: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn expect(proxy: &Proxy, text: &str, source: &str) -> Result<()> {
    let o = Shouter::new(&proxy.url)?.shout(0, text).await;
    if !o.correct || o.source != source {
        bail!("sanity check: {text:?} answered by {:?} (wanted {source}): {}", o.source, o.error);
    }
    Ok(())
}

impl Stack {
    /// A stack that serves nothing yet.
    fn new(kind: &'static str, url: String) -> Stack {
        Stack { kind, url, proxy: None, _fake: None, _redis: None, _reference: None }
    }

    /// `kind`'s stack: the fake with start-up `knobs`, shout-proxy with `extra` flags (as needed).
    async fn start(kind: &'static str, knobs: &[&str], extra: &[&str], run: &str, cpus: Option<&str>) -> Result<Stack> {
        let tag = format!("bench-{kind}");
        if kind.starts_with("bare") {
            let (base, stop) = serve("127.0.0.1:0", poem::Route::new().at("/", poem::post(reference))).await?;
            return Ok(Stack { _reference: Some(stop), ..Stack::new(kind, format!("{base}/")) });
        }
        let fake = Fake::start(&format!("{tag}-fake"), knobs).await?;
        if kind == "upstream-direct" {
            let url = fake.shout_url();
            return Ok(Stack { _fake: Some(fake), ..Stack::new(kind, url) });
        }
        let redis = if REDIS.contains(&kind) { Some(External::redis(&format!("{tag}-redis")).await?) } else { None };
        let redis_url = redis.as_ref().map(External::url);
        let mut flags: Vec<&str> = redis_url.iter().flat_map(|url| ["--redis-url", url.as_str()]).collect();
        flags.extend(extra.iter().chain(&["--log-format", "json"]));
        let proxy = Proxy::start_on(&tag, &fake.shout_url(), &flags, cpus).await?;
        let same = format!("hello, shout-proxy bench {run}-1-000000000"); // the Lua script's fixed body
        match kind {
            "cache-hit" | "cache-hit-redis" | "shared-hit" => {
                expect(&proxy, &same, "upstream").await?;
                tokio::time::sleep(Duration::from_millis(300)).await; // the Redis write is in the background
                expect(&proxy, &same, "cache").await?;
            }
            "miss" => expect(&proxy, &format!("miss sanity {run}"), "upstream").await?,
            "breaker-open" => {
                proxy.trip_breaker(run).await?;
                expect(&proxy, &format!("breaker sanity {run}"), "fallback").await?;
            }
            _ => {}
        }
        let url = format!("{}/", proxy.url);
        Ok(Stack { proxy: Some(proxy), _fake: Some(fake), _redis: redis, ..Stack::new(kind, url) })
    }

    /// wrk against this stack: one fixed input on the hit paths, the fake's JSON field when it is the target.
    fn wrk<'a>(&'a self, run: &'a str, connections: u32, secs: f64) -> Wrk<'a> {
        let inputs = if self.kind.ends_with("same") || self.kind.contains("hit") { "same" } else { "unique" };
        let field = if self.kind == "upstream-direct" { "INPUT" } else { "data" };
        Wrk { url: &self.url, duration: Duration::from_secs_f64(secs), connections, inputs, field, run }
    }

    async fn measure(&self, run: &str, connections: u32, secs: f64) -> Result<Measure> {
        let kind = self.kind;
        let before = if let Some(p) = &self.proxy { p.metrics().await? } else { Default::default() };
        // The process under test: the proxy's, else the harness's own.
        let pid = self.proxy.as_ref().map_or(std::process::id(), |p| p.proc.pid());
        let cpu = cpu_seconds(pid);
        let wrk = self.wrk(run, connections, secs).run().await?;
        let cpu_cores = (cpu_seconds(pid) - cpu) / (wrk.duration_us as f64 / 1e6);
        let peak_rss_mib = rss_mib(pid).1;
        let mut m = Measure { scenario: kind.into(), connections, wrk, cpu_cores, peak_rss_mib, ..Default::default() };
        if let Some(proxy) = &self.proxy {
            let after = proxy.metrics().await?;
            // What grew during the run, by the value of `label`.
            let grown = |name: &str, label: &str| -> Vec<(String, f64)> {
                let mut counts = after.by_label(name, label);
                counts.iter_mut().for_each(|(value, n)| *n -= before.sample(name, &[(label, value)]));
                counts.into_iter().filter(|(_, n)| *n > 0.0).collect()
            };
            let list = |counts: Vec<(String, f64)>| counts.iter().map(|(v, n)| format!("{v} {n}")).collect::<Vec<_>>();
            let statuses = grown("http_server_request_duration_seconds_count", "http_response_status_code");
            m.wrk.errors +=
                statuses.iter().filter(|(code, _)| !code.starts_with('2')).map(|(_, n)| *n as u64).sum::<u64>();
            m.sources = list(grown("shout_answers_total", "source")).join(", ");
            let reasons = list(grown("shout_fallbacks_total", "reason")).join(", ");
            if !reasons.is_empty() {
                m.sources += &format!(" ({reasons})");
            }
            if REDIS.contains(&kind) {
                let redis = list(grown("shout_shared_cache_requests_total", "result")).join(", ");
                m.sources += &format!("; Redis: {}", if redis.is_empty() { "untouched" } else { &redis });
            }
            proxy.proc.assert_no_panic()?;
            if kind == "breaker-open" && proxy.status().await?["pipeline"]["breaker"]["state"] != "open" {
                bail!("the breaker closed during the breaker-open scenario");
            }
        }
        eprintln!(
            "[bench] {kind:<16} c{connections:<3} {:>9.0} req/s p99 {:.2} ms errors {} peak {:.1} MiB cpu {cpu_cores:.2}",
            m.wrk.rps, m.wrk.p99_ms, m.wrk.errors, m.peak_rss_mib
        );
        Ok(m)
    }
}

/// RSS after `inputs` unique misses through the bounded cache (64 MiB), against bound + 50 MiB.
async fn memory_run(inputs: u64) -> Result<Value> {
    let stack = Stack::start("memory", &[], &["--cache-max-bytes", "67108864"], "mem", None).await?;
    let proxy = stack.proxy.as_ref().context("the memory run's shout-proxy")?;
    let (started, wrk) = (std::time::Instant::now(), stack.wrk("mem", CONNECTIONS, (inputs / 300 + 60) as f64));
    let child = wrk.spawn()?;
    let misses = |m: &crate::prom::Metrics| {
        m.sum("shout_answers_total") - m.sample("shout_answers_total", &[("source", "cache")])
    };
    while misses(&proxy.metrics().await?) < inputs as f64 && started.elapsed() < wrk.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // wrk prints its summary on SIGINT; the inputs counted are the misses, overshoot included.
    tokio::process::Command::new("kill").args(["-INT", &child.id().unwrap_or(0).to_string()]).status().await?;
    let summary = Wrk::finish(child).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (m, cache) = (proxy.metrics().await?, proxy.status().await?["pipeline"]["cache"].clone());
    proxy.proc.assert_no_panic()?;
    let (rss, peak) = proxy.proc.rss_mib();
    let inputs = misses(&m) as u64;
    Ok(
        json!({"inputs": inputs, "errors": summary.errors, "seconds": started.elapsed().as_secs_f64(), "rss_mib": rss, "peak_rss_mib": peak, "cache": cache}),
    )
}

pub async fn run(args: Args) -> Result<()> {
    let secs = args.seconds.unwrap_or(if args.quick { 2.0 } else { 10.0 });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 2 });
    let memory_inputs = args.memory_inputs.unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let id = std::process::id() % 1000;
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for (kind, knobs, extra) in
            SCENARIOS.iter().filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.0))
        {
            let run = format!("r{round}{id}");
            let stack = Stack::start(kind, knobs, extra, &run, None).await?;
            // Warm-up on other unique inputs than the measured ones.
            stack.wrk(&format!("{run}w"), CONNECTIONS, secs / 4.0).run().await?;
            runs.push(stack.measure(&run, CONNECTIONS, secs).await?);
        }
    }
    let best = best_rounds(&runs);
    let full = args.only.is_empty();
    let memory = if memory_inputs > 0 && full { Some(memory_run(memory_inputs).await?) } else { None };
    let mut sweep = Vec::new();
    if full && !args.quick {
        // One pod's worth: shout-proxy pinned to CPU 1; the harness (so the fake) and wrk, its
        // child, to CPU 0 until exit (the sweep runs last).
        let pid = std::process::id().to_string();
        let pinned = std::process::Command::new("taskset").args(["-apc", "0", &pid]).output()?;
        if !pinned.status.success() {
            bail!("taskset -apc 0 {pid}: {}", String::from_utf8_lossy(&pinned.stderr));
        }
        for (kind, knobs, extra) in SCENARIOS.iter().filter(|s| SWEPT.contains(&s.0)) {
            let stack = Stack::start(kind, knobs, extra, &format!("s{id}"), Some("1")).await?;
            for c in [1, 2, 4, 8, 16, 32] {
                sweep.push(stack.measure(&format!("s{id}c{c}"), c, secs / 2.0).await?);
            }
        }
    }
    let dir = out_dir("bench")?;
    let results = json!({"scenarios": best, "sweep": sweep, "memory": memory});
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let chart: Vec<Bar> = best.iter().map(|b| Bar { label: b.scenario.clone(), value: b.wrk.rps }).collect();
    let title = format!("requests/s, wrk -t1 -c{CONNECTIONS}, best of {rounds}");
    bars(&dir.join("benchmark.svg"), &title, "requests per second", &chart)?;
    let targets = judge(&best, memory.as_ref());
    let report = targets.report(tables(&args, secs, rounds, &best, &sweep).trim_end(), "bench/results.md")?;
    if args.update_docs {
        update_docs("benchmark.md", "bench:results", &report, &dir.join("benchmark.svg"))?;
    }
    if args.strict { targets.verdict() } else { Ok(()) }
}

/// Each scenario's best round, with every round's req/s, the errors of all and the highest peak RSS.
fn best_rounds(runs: &[Measure]) -> Vec<Measure> {
    let mut best = Vec::new();
    for (kind, ..) in SCENARIOS {
        let of: Vec<&Measure> = runs.iter().filter(|m| m.scenario == kind).collect();
        if let Some(top) = of.iter().max_by(|a, b| a.wrk.rps.total_cmp(&b.wrk.rps)) {
            let errors = of.iter().map(|m| m.wrk.errors).sum();
            best.push(Measure {
                wrk: Summary { errors, ..top.wrk.clone() },
                rounds: of.iter().map(|m| m.wrk.rps).collect(),
                peak_rss_mib: of.iter().map(|m| m.peak_rss_mib).fold(0.0, f64::max),
                ..(*top).clone()
            });
        }
    }
    best
}

/// The benchmark's targets, judged on the best rounds and the memory run.
fn judge(best: &[Measure], memory: Option<&Value>) -> Targets {
    let mut targets = Targets::new("bench");
    let get = |k: &str| best.iter().find(|b| b.scenario == k);
    for (a, b, min) in [
        ("cache-hit", "bare-same", 0.9),
        ("breaker-open", "bare-unique", 0.9),
        ("miss", "upstream-direct", 0.45),
        ("cache-hit-redis", "cache-hit", 0.9),
    ] {
        if let (Some(x), Some(y)) = (get(a), get(b)) {
            targets.check(
                format!("{a} >= {min}x {b}"),
                x.wrk.rps / y.wrk.rps >= min,
                format!("{:.2}x", x.wrk.rps / y.wrk.rps),
            );
        }
    }
    if let Some(b) = get("cache-hit-redis") {
        let untouched = b.sources.contains("Redis: untouched");
        targets.check("an L1 hit never touches Redis (cache-hit-redis)", untouched, &b.sources);
    }
    let errors =
        best.iter().map(|b| b.wrk.errors).sum::<u64>() + memory.map_or(0, |m| m["errors"].as_u64().unwrap_or(0));
    targets.check("zero non-2xx (and socket errors) everywhere", errors == 0, errors.to_string());
    for b in best.iter().filter(|b| ["cache-hit", "breaker-open"].contains(&b.scenario.as_str())) {
        let target = format!("p99 < {P99_GOAL_MS} ms at {} connections: {}", b.connections, b.scenario);
        targets.check(target, b.wrk.p99_ms < P99_GOAL_MS, format!("{:.2} ms", b.wrk.p99_ms));
    }
    let proxied = best.iter().filter(|b| !b.scenario.starts_with("bare") && b.scenario != "upstream-direct");
    let peak = proxied.map(|b| b.peak_rss_mib).fold(0.0, f64::max);
    targets.check("peak RSS < 100 MiB in the proxy scenarios", peak < 100.0, format!("{peak:.1} MiB"));
    if let Some(m) = memory {
        let rss = m["rss_mib"].as_f64().unwrap_or(f64::NAN);
        let (cache, secs) = (&m["cache"], m["seconds"].as_f64().unwrap_or(0.0));
        let (entries, bytes) = (&cache["entries"], &cache["weighted_bytes"]);
        let measured = format!("{rss:.1} MiB (cache {entries} entries weighing {bytes} bytes, {secs:.0} s)");
        let target = format!("RSS after {} unique inputs <= 64 MiB cache bound + 50 MiB", m["inputs"]);
        targets.check(target, rss <= 114.0, measured);
    }
    targets
}

/// The results' tables: every scenario's best round, then the sweep and the HPA target it gives.
fn tables(args: &Args, secs: f64, rounds: usize, best: &[Measure], sweep: &[Measure]) -> String {
    let (quick, machine) = (if args.quick { " --quick" } else { "" }, machine());
    let mut out = format!(
        "`cargo xtask bench{quick}`: wrk -t1 -c{CONNECTIONS}, {secs} s per run, best of {rounds} interleaved round(s); {machine} after.\n\n"
    );
    let mut rows = Vec::new();
    for b in best {
        let rounds = b.rounds.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" / ");
        let Summary { rps, p50_ms, p99_ms, p99_9_ms, errors, .. } = b.wrk;
        let (scenario, per_core) = (&b.scenario, rps / b.cpu_cores.max(1e-9));
        let head = format!("{scenario}|{rps:.0}|{rounds}|{p50_ms:.2}|{p99_ms:.2}|{p99_9_ms:.2}|{errors}");
        rows.push(format!("{head}|{}|{:.2}|{per_core:.0}|{:.1}", b.sources, b.cpu_cores, b.peak_rss_mib));
    }
    let header = "scenario|req/s (best)|all rounds|p50 ms|p99 ms|p99.9 ms|errors|answers by source (fallbacks by reason)|server CPU cores|req/s per core|peak RSS MiB";
    out += &table(header, &rows);
    if sweep.is_empty() {
        return out;
    }
    out += "\nOne pod's worth (shout-proxy pinned to one CPU, wrk and the fake on the other): req/s / p99 ms / shout-proxy CPU by connections:\n\n";
    let (mut sustained, mut rows): (Vec<&Measure>, _) = (Vec::new(), Vec::new());
    for kind in SWEPT {
        let points: Vec<&Measure> = sweep.iter().filter(|p| p.scenario == kind).collect();
        let within = |p: &&&Measure| p.wrk.p99_ms < P99_GOAL_MS && p.wrk.errors == 0;
        let top = points.iter().filter(within).max_by(|a, b| a.wrk.rps.total_cmp(&b.wrk.rps));
        sustained.extend(top.copied());
        let cells: Vec<String> =
            points.iter().map(|p| format!("{:.0} / {:.1} / {:.2}", p.wrk.rps, p.wrk.p99_ms, p.cpu_cores)).collect();
        let top = top.map_or("-".into(), |p| format!("{:.0} req/s (c={})", p.wrk.rps, p.connections));
        rows.push(format!("{kind}|{}|{top}", cells.join("|")));
    }
    out += &table("path|c=1|c=2|c=4|c=8|c=16|c=32|sustained with p99 < 5 ms", &rows);
    // The binding path is the one that sustains the least.
    if let Some(binding) = sustained.iter().min_by(|a, b| a.wrk.rps.total_cmp(&b.wrk.rps)) {
        let (kind, rps) = (&binding.scenario, binding.wrk.rps);
        out += &format!(
            "\nHPA target: binding path `{kind}`, {rps:.0} req/s per pod within p99 < {P99_GOAL_MS} ms, x 0.6 headroom = **{:.0} req/s per pod**.\n",
            (rps * 0.6 / 50.0).floor() * 50.0
        );
    }
    out
}

/// The machine a report was measured on: its cores (all of them, whatever this process is pinned
/// to) and load average.
pub fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = procfs::Current::current().map_or(0, |c: procfs::CpuInfo| c.num_cores());
    format!("{cores} cores, load average {}", load.split(' ').take(3).collect::<Vec<_>>().join(" "))
}

/// Replaces the lines between `<!-- {marker}:start` and `<!-- {marker}:end -->` in `docs/{doc}`
/// with `text`, and copies the chart `svg` into `docs/`.
pub fn update_docs(doc: &str, marker: &str, text: &str, svg: &Path) -> Result<()> {
    let path = root().join("docs").join(doc);
    let old = std::fs::read_to_string(&path)?;
    let (start, end) = (format!("<!-- {marker}:start"), format!("<!-- {marker}:end -->"));
    let (Some(a), Some(b)) = (old.find(&start), old.find(&end)) else { bail!("docs/{doc} lacks {start} and {end}") };
    let a = a + old[a..].find('\n').map_or(0, |n| n + 1);
    std::fs::write(&path, format!("{}{text}{}", &old[..a], &old[b..]))?;
    std::fs::copy(svg, root().join("docs").join(svg.file_name().context("a chart file name")?))?;
    Ok(())
}
