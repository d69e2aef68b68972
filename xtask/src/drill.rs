//! The fault drill: the resilience targets measured from outside, a fresh `shout-proxy` per
//! fault mode against the fake upstream (or a refused port, or a server that resets).
//!
//! Targets: every valid request gets 200 and the crate's answer in every mode; p99 < 1.5 x the
//! deadline; hard down, upstream calls < 0.5 x requests; flaky 30 %, calls <= 1.3 x misses;
//! recovery within the open period + 500 ms; and slow clients: 500 stalled half-sent heads do
//! not slow 1000 normal requests (p99 < 50 ms) and every one is closed by the server.
//! Request-level behaviour (statuses, headers, single faults) is `tests/api/`'s job; this is the
//! same binary under load, counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::Missed;
use crate::client::{Outcome, RawClient, Shouter, percentile};
use crate::fake::Fake;
use crate::proc::{Proxy, free_port, out_dir, root};

const DEADLINE_MS: f64 = 1000.0;
const OPEN_MS: u64 = 2000;
const RECOVERY_MARGIN_MS: f64 = 500.0;

#[derive(clap::Args)]
pub struct Args {
    /// Modes to run (comma-separated names); all when empty.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Unique requests per mode.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Hard-down modes are spread over this many seconds so probes happen under load.
    #[arg(long, default_value_t = 8.0)]
    hard_down_secs: f64,
    /// Runs of the flaky mode (whether its breaker trips is random).
    #[arg(long, default_value_t = 3)]
    flaky_runs: usize,
    /// Extra flags for every proxy (an experiment, e.g. --proxy-arg=--retry-max=1).
    #[arg(long)]
    proxy_arg: Vec<String>,
    /// Skip the recovery measurement.
    #[arg(long)]
    no_recovery: bool,
}

/// Where a mode points the proxy.
#[derive(Clone, Copy, PartialEq)]
enum Upstream {
    Fake,
    Refused,
    Reset,
}

struct Mode {
    name: &'static str,
    upstream: Upstream,
    knobs: Value,
    hard_down: bool,
    burst: bool,
    flaky: bool,
}

fn modes() -> Vec<Mode> {
    let m = |name, upstream, knobs, hard_down, burst| Mode {
        name,
        upstream,
        knobs,
        hard_down,
        burst,
        flaky: false,
    };
    vec![
        m("healthy", Upstream::Fake, json!({}), false, false),
        m("refused", Upstream::Refused, json!({}), true, false),
        m("hang", Upstream::Fake, json!({"mode": "hang"}), true, false),
        m("slow-150ms", Upstream::Fake, json!({"latency_ms": 150}), false, false),
        m("5xx-503", Upstream::Fake, json!({"mode": "fail", "failure_status": 503}), true, false),
        m("429", Upstream::Fake, json!({"mode": "fail", "failure_status": 429}), true, false),
        m("malformed", Upstream::Fake, json!({"mode": "malformed"}), true, false),
        m("wrong-output", Upstream::Fake, json!({"mode": "wrong"}), true, false),
        Mode {
            flaky: true,
            ..m("flaky-30%", Upstream::Fake, json!({"failure_rate": 0.3}), false, false)
        },
        m("reset", Upstream::Reset, json!({}), true, false),
        m("hang-burst", Upstream::Fake, json!({"mode": "hang"}), true, true),
        m(
            "5xx-503-burst",
            Upstream::Fake,
            json!({"mode": "fail", "failure_status": 503}),
            true,
            true,
        ),
    ]
}

/// Words mixed into the inputs: ASCII, full case mapping, precomposed and combining accents,
/// Greek, a flag and a ZWJ emoji (whole graphemes the crate's reversal keeps together).
const WORDS: [&str; 16] = [
    "hello",
    "straße",
    "ñandú",
    "Ωmega",
    "fiancé",
    "größe",
    "e\u{301}cole",
    "cafe\u{301}",
    "shout",
    "Ärger",
    "🇫🇷 çava",
    "a\u{308}pfel",
    "proxy",
    "👩\u{200d}👩\u{200d}👧 jump",
    "résumé",
    "día",
];

/// Accepts connections, reads the request, and closes with SO_LINGER 0: a TCP reset.
async fn reset_server() -> Result<(u16, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            #[allow(deprecated)] // a reset on purpose: dropping with linger 0 sends RST
            let _ = stream.set_linger(Some(Duration::ZERO));
            let mut buf = [0u8; 65536];
            let _ = tokio::time::timeout(Duration::from_millis(50), stream.readable()).await;
            let _ = stream.try_read(&mut buf);
        }
    });
    Ok((port, accepted))
}

/// Sends every input once from `concurrency` workers; with `spread` request i does not start
/// before i x spread / n.
async fn load(
    shouter: &Shouter,
    inputs: Arc<Vec<String>>,
    concurrency: usize,
    spread: f64,
) -> (Vec<Outcome>, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let interval = spread / inputs.len().max(1) as f64;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (shouter, inputs, next) = (shouter.clone(), inputs.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(text) = inputs.get(i) else { break };
                    let at = started + Duration::from_secs_f64(i as f64 * interval);
                    tokio::time::sleep_until(at.into()).await;
                    out.push((i, shouter.shout(i, text).await));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap_or_default());
    }
    all.sort_by_key(|(i, _)| *i);
    (all.into_iter().map(|(_, o)| o).collect(), started.elapsed().as_secs_f64())
}

struct Drill {
    args: Args,
    fake: Fake,
    reset: (u16, Arc<AtomicU64>),
    run_id: u128,
    rows: Vec<Value>,
    checks: Vec<(String, bool, String)>,
}

impl Drill {
    fn check(&mut self, target: String, ok: bool, measured: String) {
        eprintln!("[drill] {} {target}: {measured}", if ok { "PASS" } else { "FAIL" });
        self.checks.push((target, ok, measured));
    }

    async fn proxy(&self, upstream: &str, name: &str) -> Result<Proxy> {
        let mut extra = vec!["--breaker-open-ms".to_owned(), OPEN_MS.to_string()];
        extra.extend(self.args.proxy_arg.iter().cloned());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Proxy::start(&format!("drill-{name}"), upstream, &extra).await
    }

    async fn upstream_count(&self, kind: Upstream) -> Result<Option<u64>> {
        Ok(match kind {
            Upstream::Fake => Some(self.fake.calls().await?),
            Upstream::Reset => Some(self.reset.1.load(Ordering::Relaxed)),
            Upstream::Refused => None,
        })
    }

    async fn run_mode(&mut self, mode: &Mode, label: &str) -> Result<()> {
        self.fake.set(mode.knobs.clone()).await?;
        let url = match mode.upstream {
            Upstream::Fake => self.fake.shout_url(),
            Upstream::Refused => format!("http://127.0.0.1:{}/V1/SHOUT", free_port()?),
            Upstream::Reset => format!("http://127.0.0.1:{}/V1/SHOUT", self.reset.0),
        };
        let proxy = self.proxy(&url, label).await?;
        let before = self.upstream_count(mode.upstream).await?;
        let spread = if mode.hard_down && !mode.burst { self.args.hard_down_secs } else { 0.0 };
        let inputs: Vec<String> = (0..self.args.requests)
            .map(|i| format!("{} {label} {} #{i}", WORDS[i % WORDS.len()], self.run_id))
            .collect();
        let (outcomes, secs) =
            load(&Shouter::new(&proxy.url)?, Arc::new(inputs), self.args.concurrency, spread).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = self.upstream_count(mode.upstream).await?;
        let (metrics, status) = (proxy.metrics().await?, proxy.status().await?);
        proxy.proc.assert_no_panic()?;
        let attempts = metrics.sum("shout_upstream_attempts_total");
        let calls = match (before, after) {
            (Some(b), Some(a)) => (a - b) as f64,
            _ => attempts,
        };
        let n = outcomes.len() as f64;
        let correct = outcomes.iter().filter(|o| o.correct).count();
        let latencies: Vec<f64> = outcomes.iter().map(|o| o.latency_ms).collect();
        let source = |s: &str| outcomes.iter().filter(|o| o.source == s).count();
        let misses = metrics.sum("shout_cache_misses_total");
        let per_period = calls / (secs * 1000.0 / OPEN_MS as f64).max(1.0);
        let breaker = &status["pipeline"]["breaker"];
        let row = json!({
            "mode": label, "requests": n, "correct": correct, "sources": [source("upstream"), source("cache"), source("fallback")],
            "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99),
            "max_ms": latencies.iter().copied().fold(0.0, f64::max), "seconds": secs,
            "upstream_calls": calls, "calls_counted_by": if before.is_some() { "upstream" } else { "proxy attempts" },
            "misses": misses, "calls_per_period": per_period, "breaker": breaker,
            "probes": metrics.sample("shout_breaker_transitions_total", &[("state", "half_open")]),
            "fallbacks": metrics.by_label("shout_fallbacks_total", "reason"),
            "attempts": metrics.by_label("shout_upstream_attempts_total", "outcome"),
            "retries": metrics.sum("shout_upstream_retries_total"),
            "budget_exhausted": metrics.sum("shout_upstream_retry_budget_exhausted_total"),
            "first_errors": outcomes.iter().filter(|o| !o.correct).take(5).map(|o| o.error.clone()).collect::<Vec<_>>(),
        });
        self.rows.push(row);
        // N sent -> N counted: every answer in the service's own answer and request counters.
        let zero = crate::prom::Metrics::default();
        for (name, labels) in [
            ("shout_answers_total", &[][..]),
            (
                "http_server_request_duration_seconds_count",
                &[("http_response_status_code", "200")][..],
            ),
        ] {
            let counted = crate::prom::assert_delta(&zero, &metrics, name, labels, n);
            self.check(
                format!("{label}: {name} counts every request"),
                counted.is_ok(),
                counted.err().map_or(format!("{n}"), |e| e.to_string()),
            );
        }
        self.check(
            format!("{label}: 100% correct"),
            correct == outcomes.len(),
            format!("{correct}/{n} correct"),
        );
        let p99 = percentile(&latencies, 0.99);
        self.check(
            format!("{label}: p99 < {:.0} ms", DEADLINE_MS * 1.5),
            p99 < DEADLINE_MS * 1.5,
            format!("p99 {p99:.0} ms"),
        );
        if misses != n {
            self.check(
                format!("{label}: every request a cache miss"),
                false,
                format!("misses {misses} != requests {n}"),
            );
        }
        if mode.hard_down {
            self.check(
                format!("{label}: upstream calls < 0.5 x requests"),
                calls < 0.5 * n,
                format!("{calls} calls for {n} requests; {per_period:.1} per {OPEN_MS} ms period"),
            );
        }
        if mode.flaky {
            self.check(
                format!("{label}: upstream calls <= 1.3 x misses"),
                calls <= 1.3 * misses,
                format!("{calls} calls for {misses} misses = {:.2}x", calls / misses.max(1.0)),
            );
        }
        Ok(())
    }

    /// Trips the breaker on 503s, heals the fake at once, then one request every 100 ms until
    /// one is answered by the upstream again.
    async fn recovery(&mut self) -> Result<()> {
        self.fake.set(json!({"mode": "fail"})).await?;
        let proxy = self.proxy(&self.fake.shout_url(), "recovery").await?;
        let shouter = Shouter::new(&proxy.url)?;
        let mut tripped_at = None;
        for i in 0..50 {
            let started = Instant::now();
            shouter.shout(i, &format!("trip {} #{i}", self.run_id)).await;
            if proxy.status().await?["pipeline"]["breaker"]["state"] == "open" {
                tripped_at = Some((started, i + 1));
                break;
            }
        }
        let Some((tripped, trip_requests)) = tripped_at else {
            bail!("recovery: the breaker did not open on 503s")
        };
        self.fake.set(json!({})).await?;
        let healed = Instant::now();
        let mut back = None;
        let mut polls = 0;
        while healed.elapsed() < Duration::from_secs(15) {
            let t = Instant::now();
            let o = shouter.shout(polls, &format!("recover {} #{polls}", self.run_id)).await;
            polls += 1;
            if !o.correct {
                self.check("recovery: every poll answered correctly".into(), false, o.error);
            }
            if o.source == "upstream" {
                back = Some(Instant::now());
                break;
            }
            tokio::time::sleep_until((t + Duration::from_millis(100)).into()).await;
        }
        proxy.proc.assert_no_panic()?;
        let limit = OPEN_MS as f64 + RECOVERY_MARGIN_MS;
        let Some(back) = back else {
            self.check(
                "recovery within open period + 500 ms".into(),
                false,
                "no upstream answer within 15 s".into(),
            );
            return Ok(());
        };
        let since_trip = (back - tripped).as_secs_f64() * 1000.0;
        let since_heal = (back - healed).as_secs_f64() * 1000.0;
        self.check(
            "recovery within open period + 500 ms".into(),
            since_trip <= limit,
            format!("{since_trip:.0} ms after the trip ({since_heal:.0} ms after healing; {trip_requests} requests to trip, {polls} polls; limit {limit:.0} ms)"),
        );
        Ok(())
    }

    /// 500 connections send half a request head and stall; 1000 normal requests beside them
    /// must keep p99 < 50 ms, and the server must close every stalled one after its header
    /// read timeout (2 s here).
    async fn slow_clients(&mut self) -> Result<()> {
        let upstream = format!("http://127.0.0.1:{}/V1/SHOUT", free_port()?);
        let proxy =
            Proxy::start("drill-slow-clients", &upstream, &["--header-read-timeout-ms", "2000"])
                .await?;
        let addr = proxy.url.trim_start_matches("http://").to_owned();
        let mut stalled = Vec::new();
        for _ in 0..500 {
            let mut c = RawClient::connect(&addr).await?;
            c.send(
                &[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"],
                Duration::ZERO,
            )
            .await?;
            stalled.push(c);
        }
        let stalled_at = Instant::now();
        let shouter = Shouter::new(&proxy.url)?;
        let mut latencies = Vec::new();
        let mut wrong = 0;
        for i in 0..1000 {
            let o = shouter.shout(i, &format!("normal {i}")).await;
            latencies.push(o.latency_ms);
            wrong += usize::from(!o.correct);
        }
        let measured_in = stalled_at.elapsed().as_secs_f64();
        let wait = Duration::from_millis(2500).saturating_sub(stalled_at.elapsed());
        let closed = futures_util::future::join_all(
            stalled.iter_mut().map(|c| c.closed_within(wait + Duration::from_secs(1))),
        )
        .await;
        let closed = closed.iter().filter(|c| c.is_some()).count();
        proxy.proc.assert_no_panic()?;
        let p99 = percentile(&latencies, 0.99);
        self.check("slow clients: p99 < 50 ms beside 500 stalled connections, no failures".into(), p99 < 50.0 && wrong == 0,
            format!("p50 {:.2} ms, p99 {p99:.2} ms over 1000 requests in {measured_in:.1} s, {wrong} wrong", percentile(&latencies, 0.5)));
        self.check(
            "slow clients: every stalled connection closed by the server".into(),
            closed == 500,
            format!("{closed}/500 closed"),
        );
        Ok(())
    }
}

pub async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let fake = Fake::start("drill-fake", &[]).await?;
    let run_id =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 100_000;
    let mut drill =
        Drill { fake, reset: reset_server().await?, run_id, rows: vec![], checks: vec![], args };
    let wanted =
        |name: &str, args: &Args| args.modes.is_empty() || args.modes.iter().any(|m| m == name);
    for mode in modes() {
        if !wanted(mode.name, &drill.args) {
            continue;
        }
        let runs = if mode.flaky { drill.args.flaky_runs } else { 1 };
        for run in 1..=runs {
            let label =
                if runs > 1 { format!("{}#{run}", mode.name) } else { mode.name.to_owned() };
            drill.run_mode(&mode, &label).await?;
        }
        if mode.name == "5xx-503" && !drill.args.no_recovery {
            drill.recovery().await?;
        }
    }
    if wanted("slow-clients", &drill.args) {
        drill.slow_clients().await?;
    }
    drill.fake.proc.assert_no_panic()?;
    let report = report(&drill, started.elapsed().as_secs_f64());
    println!("{report}");
    let dir = out_dir("")?;
    std::fs::write(dir.join("fault-drill.md"), &report)?;
    std::fs::write(
        dir.join("fault-drill.json"),
        serde_json::to_string_pretty(&json!({"modes": drill.rows, "checks": drill.checks}))?,
    )?;
    let missed: Vec<String> =
        drill.checks.iter().filter(|c| !c.1).map(|c| format!("{}: {}", c.0, c.2)).collect();
    if missed.is_empty() { Ok(()) } else { Err(Missed(missed).into()) }
}

fn report(d: &Drill, secs: f64) -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output();
    let commit =
        commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "`cargo xtask drill`, commit {commit}, {cores} cores; the drill took {secs:.0} s. {} unique requests per mode, {} concurrent; hard-down modes spread over {} s. Proxy defaults with `--breaker-open-ms {OPEN_MS}`{}; a fresh proxy per mode.\n\n",
        d.args.requests,
        d.args.concurrency,
        d.args.hard_down_secs,
        if d.args.proxy_arg.is_empty() {
            String::new()
        } else {
            format!(" and **{}**", d.args.proxy_arg.join(" "))
        },
    );
    out += "| mode | correct | upstream/cache/fallback | p50 / p99 / max ms | upstream calls | calls per 2 s period | breaker at end (trips, probes) | fallbacks by reason | attempts by outcome | retries |\n| --- | ---: | --- | --- | ---: | ---: | --- | --- | --- | ---: |\n";
    let pairs = |v: &Value| {
        v.as_array().map_or(String::new(), |a| {
            a.iter()
                .filter(|p| p[1].as_f64() > Some(0.0))
                .map(|p| format!("{} {}", p[0].as_str().unwrap_or(""), p[1]))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    for r in &d.rows {
        let s = &r["sources"];
        out += &format!(
            "| {} | {}/{} | {}/{}/{} | {:.0} / {:.0} / {:.0} | {}{} | {:.1} ({:.1} s) | {} ({}, {}) | {} | {} | {} |\n",
            r["mode"].as_str().unwrap_or(""),
            r["correct"],
            r["requests"],
            s[0],
            s[1],
            s[2],
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["max_ms"].as_f64().unwrap_or(0.0),
            r["upstream_calls"],
            if r["calls_counted_by"] == "upstream" { "" } else { "¹" },
            r["calls_per_period"].as_f64().unwrap_or(0.0),
            r["seconds"].as_f64().unwrap_or(0.0),
            r["breaker"]["state"].as_str().unwrap_or("?"),
            r["breaker"]["trips"],
            r["probes"],
            pairs(&r["fallbacks"]),
            pairs(&r["attempts"]),
            r["retries"],
        );
    }
    out += "\nUpstream calls: the fake's `GET /control` count, or the connections the reset server accepted; ¹ nothing listens on a refused port, so the proxy's `shout_upstream_attempts_total`.\n\n| target | result | measured |\n| --- | --- | --- |\n";
    for (target, ok, measured) in &d.checks {
        out += &format!("| {target} | {} | {measured} |\n", if *ok { "PASS" } else { "**FAIL**" });
    }
    let failed = d.checks.iter().filter(|c| !c.1).count();
    out += &if failed == 0 {
        "\n**ALL TARGETS MET**\n".to_owned()
    } else {
        format!("\n**{failed} TARGETS MISSED**\n")
    };
    out
}
