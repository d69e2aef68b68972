//! The fault drill: the resilience targets measured from outside, a fresh `shout-proxy` per
//! fault mode against the fake upstream (or a refused port, or a server that resets).
//!
//! Targets: every valid request gets 200 and the crate's answer in every mode, and is counted
//! once by the service; p99 < 1.5 x the deadline; hard down, upstream calls < 0.5 x requests;
//! flaky 30 %, calls <= 1.3 x misses; recovery within the open period + 500 ms. Slow and hostile clients are
//! `cargo xtask hostile`'s. Single faults request by request are `tests/api/`'s job; this is the
//! release binary under load, counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::client::{Outcome, Shouter, percentile};
use crate::fake::Fake;
use crate::proc::{Proxy, free_port, out_dir, release_bin, root};
use crate::{Targets, table};

const P99_LIMIT_MS: f64 = 1500.0; // 1.5 x the default 1 s deadline
const OPEN_MS: f64 = 2000.0;

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
    /// Extra flags for every proxy (an experiment: --proxy-arg=--retry-max=1).
    #[arg(long)]
    proxy_arg: Vec<String>,
    /// Skip the recovery measurement.
    #[arg(long)]
    no_recovery: bool,
}

/// Name, upstream (`fake`, `refused`: a closed port, `reset`: a server that resets), the fake's
/// knobs, and the kind: `hard` (every call fails: paced over --hard-down-secs so several open
/// periods pass under load), `burst` (hard, unpaced), `flaky` (run --flaky-runs times), or ``
/// (no extra target).
type Mode = (&'static str, &'static str, &'static str, &'static str);

/// Fault modes in the order they run.
const MODES: [Mode; 12] = [
    ("healthy", "fake", "{}", ""),
    ("refused", "refused", "{}", "hard"),
    ("hang", "fake", r#"{"mode": "hang"}"#, "hard"),
    ("slow-150ms", "fake", r#"{"latency_ms": 150}"#, ""),
    ("5xx-503", "fake", r#"{"mode": "fail", "failure_status": 503}"#, "hard"),
    ("429", "fake", r#"{"mode": "fail", "failure_status": 429}"#, "hard"),
    ("malformed", "fake", r#"{"mode": "malformed"}"#, "hard"),
    ("wrong-output", "fake", r#"{"mode": "wrong"}"#, "hard"),
    ("flaky-30%", "fake", r#"{"failure_rate": 0.3}"#, "flaky"),
    ("reset", "reset", "{}", "hard"),
    ("hang-burst", "fake", r#"{"mode": "hang"}"#, "burst"),
    ("5xx-503-burst", "fake", r#"{"mode": "fail", "failure_status": 503}"#, "burst"),
];

/// Words mixed into the inputs: full case mapping, precomposed and combining accents, Greek, a
/// flag and a ZWJ family (whole graphemes that a code-point reversal would tear apart).
const WORDS: &str = "hello|straße|ñandú|Ωmega|e\u{301}cole|cafe\u{301}|Ärger|🇫🇷 çava|a\u{308}pfel|\
    👩\u{200d}👩\u{200d}👧 jump|résumé|día";

/// The columns of the modes table; one row per run of a mode.
const HEADER: &str = "mode|correct|upstream/cache/fallback|p50 / p99 ms|upstream calls|duration|\
    breaker at end (trips, probes)|fallbacks by reason|attempts by outcome|retries";

/// Accepts connections, reads the request, and closes with SO_LINGER 0: a TCP reset.
async fn reset_server() -> Result<(u16, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (port, accepted) = (listener.local_addr()?.port(), Arc::new(AtomicU64::new(0)));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            #[allow(deprecated)] // the blocking close that deprecation warns of is the point: an RST
            let _ = stream.set_linger(Some(Duration::ZERO));
            let _ = tokio::time::timeout(Duration::from_millis(50), stream.readable()).await;
            let _ = stream.try_read(&mut [0u8; 65536]);
        }
    });
    Ok((port, accepted))
}

/// Sends every input once, `concurrency` at a time; request i starts no sooner than
/// i x spread / n seconds in. Returns the outcomes and the seconds it took.
async fn load(shouter: &Shouter, inputs: &[String], concurrency: usize, spread: f64) -> (Vec<Outcome>, f64) {
    let (started, interval) = (Instant::now(), spread / inputs.len().max(1) as f64);
    let calls = inputs.iter().enumerate().map(|(i, text)| async move {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 * interval)).into()).await;
        shouter.shout(i, text).await
    });
    let outcomes = futures_util::stream::iter(calls).buffer_unordered(concurrency).collect().await;
    (outcomes, started.elapsed().as_secs_f64())
}

struct Drill {
    args: Args,
    fake: Fake,
    reset: (u16, Arc<AtomicU64>),
    run_id: u128,
    /// The modes table's rows (target/xtask/fault-drill.md).
    rows: Vec<String>,
    /// One mode's numbers each, the first wrong answers among them (target/xtask/fault-drill.json).
    numbers: Vec<Value>,
    targets: Targets,
}

impl Drill {
    async fn proxy(&self, upstream: &str, name: &str) -> Result<Proxy> {
        let open_ms = OPEN_MS.to_string();
        let mut extra = vec!["--breaker-open-ms", &open_ms];
        extra.extend(self.args.proxy_arg.iter().map(String::as_str));
        Proxy::start(&format!("drill-{name}"), upstream, &extra).await
    }

    /// The fake's count or the reset server's accepted connections; `None`: nothing to count.
    async fn upstream_count(&self, kind: &str) -> Result<Option<u64>> {
        Ok(match kind {
            "fake" => Some(self.fake.calls().await?),
            "reset" => Some(self.reset.1.load(Ordering::Relaxed)),
            _ => None,
        })
    }

    async fn run_mode(&mut self, (name, kind, knobs, class): Mode, label: &str) -> Result<()> {
        self.fake.set(serde_json::from_str(knobs)?).await?;
        let port = if kind == "reset" { self.reset.0 } else { free_port()? };
        let url = if kind == "fake" { self.fake.shout_url() } else { format!("http://127.0.0.1:{port}/V1/SHOUT") };
        let proxy = self.proxy(&url, label).await?;
        let before = self.upstream_count(kind).await?;
        let spread = if class == "hard" { self.args.hard_down_secs } else { 0.0 };
        let words: Vec<&str> = WORDS.split('|').collect();
        let inputs: Vec<String> = (0..self.args.requests)
            .map(|i| format!("{} {name} {} #{i}", words[i % words.len()], self.run_id))
            .collect();
        let (outcomes, seconds) = load(&Shouter::new(&proxy.url)?, &inputs, self.args.concurrency, spread).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = self.upstream_count(kind).await?;
        let (metrics, status) = (proxy.metrics().await?, proxy.status().await?);
        proxy.proc.assert_no_panic()?;
        // Counted at the upstream when something listens there, else the proxy's own attempts.
        let upstream_calls = match (before, after) {
            (Some(b), Some(a)) => (a - b) as f64,
            _ => metrics.sum("shout_upstream_attempts_total"),
        };
        let (n, correct) = (outcomes.len(), outcomes.iter().filter(|o| o.correct).count());
        let latencies: Vec<f64> = outcomes.iter().map(|o| o.latency_ms).collect();
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        let sources = ["upstream", "cache", "fallback"].map(|s| outcomes.iter().filter(|o| o.source == s).count());
        // Misses: answers not from the cache.
        let answers = |s: &str| metrics.sample("shout_answers_total", &[("source", s)]);
        let misses = answers("upstream") + answers("fallback");
        let transitions = |s: &str| metrics.sample("shout_breaker_transitions_total", &[("state", s)]);
        let (trips, probes) = (transitions("open"), transitions("half_open"));
        let fallbacks = metrics.by_label("shout_fallbacks_total", "reason");
        let attempts = metrics.by_label("shout_upstream_attempts_total", "outcome");
        let (retries, breaker) = (metrics.sum("shout_upstream_retries_total"), &status["pipeline"]["breaker"]);
        let first_errors: Vec<&str> =
            outcomes.iter().filter(|o| !o.correct).take(5).map(|o| o.error.as_str()).collect();
        self.numbers.push(json!({"mode": label, "correct": correct, "requests": n, "sources": sources,
            "p50_ms": p50, "p99_ms": p99, "seconds": seconds, "upstream_calls": upstream_calls,
            "counted_upstream": before.is_some(), "breaker": breaker, "trips": trips, "probes": probes,
            "fallbacks": fallbacks, "attempts": attempts, "retries": retries, "first_errors": first_errors}));
        let pairs = |v: &[(String, f64)]| {
            v.iter().filter(|p| p.1 > 0.0).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        let ([up, cache, fallback], state) = (sources, breaker["state"].as_str().unwrap_or("?"));
        let calls = format!("{upstream_calls}{}", if before.is_some() { "" } else { "¹" });
        let (fallbacks, attempts) = (pairs(&fallbacks), pairs(&attempts));
        self.rows.push(format!(
            "{label}|{correct}/{n}|{up}/{cache}/{fallback}|{p50:.0} / {p99:.0}|{calls}|{seconds:.1} s|\
             {state} ({trips}, {probes})|{fallbacks}|{attempts}|{retries}"
        ));

        let t = &mut self.targets;
        t.check(format!("{label}: 100% correct"), correct == n, format!("{correct}/{n} correct"));
        t.check(format!("{label}: p99 < {P99_LIMIT_MS} ms"), p99 < P99_LIMIT_MS, format!("p99 {p99:.0} ms"));
        // N sent -> N counted, by the service's own counters.
        let status_200 = [("http_response_status_code", "200")];
        for (metric, labels) in
            [("shout_answers_total", &[][..]), ("http_server_request_duration_seconds_count", &status_200)]
        {
            let counted = metrics.sample(metric, labels);
            let measured = format!("{counted} counted of {n}");
            t.check(format!("{label}: {metric} counts every request"), counted == n as f64, measured);
        }
        t.check(format!("{label}: every request a cache miss"), misses == n as f64, format!("{misses} misses"));
        if class == "hard" || class == "burst" {
            let per_period = upstream_calls / (seconds * 1000.0 / OPEN_MS).max(1.0);
            let measured = format!("{upstream_calls} calls for {n} requests; {per_period:.1} per {OPEN_MS} ms period");
            t.check(format!("{label}: upstream calls < 0.5 x requests"), upstream_calls < 0.5 * n as f64, measured);
        }
        if class == "flaky" {
            let measured =
                format!("{upstream_calls} calls for {misses} misses = {:.2}x", upstream_calls / misses.max(1.0));
            t.check(format!("{label}: upstream calls <= 1.3 x misses"), upstream_calls <= 1.3 * misses, measured);
        }
        Ok(())
    }

    /// Trips the breaker on 503s, heals the fake at once, then one request every 100 ms until
    /// one is answered by the upstream again; timed from the start of the request that tripped it.
    async fn recovery(&mut self) -> Result<()> {
        self.fake.set(json!({"mode": "fail"})).await?;
        let proxy = self.proxy(&self.fake.shout_url(), "recovery").await?;
        let shouter = Shouter::new(&proxy.url)?;
        let tripped = proxy.trip_breaker(&self.run_id.to_string()).await.context("recovery: on 503s")?;
        self.fake.set(json!({})).await?;
        let (healed, mut polls, mut back) = (Instant::now(), 0, None);
        while back.is_none() && healed.elapsed() < Duration::from_secs(15) {
            let t = Instant::now();
            let o = shouter.shout(polls, &format!("recover {} #{polls}", self.run_id)).await;
            polls += 1;
            if !o.correct {
                self.targets.check("recovery: every poll answered correctly", false, o.error);
            }
            back = (o.source == "upstream").then(Instant::now);
            tokio::time::sleep_until((t + Duration::from_millis(100)).into()).await;
        }
        proxy.proc.assert_no_panic()?;
        let ms = |since: Instant| back.map_or(f64::INFINITY, |b| (b - since).as_secs_f64() * 1e3);
        let measured = match back {
            Some(_) => {
                format!("{:.0} ms after the trip ({:.0} ms after healing, {polls} polls)", ms(tripped), ms(healed))
            }
            None => "no upstream answer within 15 s".into(),
        };
        self.targets.check("recovery within open period + 500 ms", ms(tripped) <= OPEN_MS + 500.0, measured);
        Ok(())
    }
}

pub async fn run(args: Args) -> Result<()> {
    let (started, fake, reset) = (Instant::now(), Fake::start("drill-fake", &[]).await?, reset_server().await?);
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 100_000;
    let targets = Targets::new("drill");
    let mut d = Drill { fake, reset, run_id, rows: vec![], numbers: vec![], targets, args };
    let wanted = |name: &str, args: &Args| args.modes.is_empty() || args.modes.iter().any(|m| m == name);
    let modes: Vec<Mode> = MODES.into_iter().filter(|m| wanted(m.0, &d.args)).collect();
    for mode in modes {
        let runs = if mode.3 == "flaky" { d.args.flaky_runs } else { 1 };
        for run in 1..=runs {
            d.run_mode(mode, &if runs > 1 { format!("{}#{run}", mode.0) } else { mode.0.into() }).await?;
        }
        if mode.0 == "5xx-503" && !d.args.no_recovery {
            d.recovery().await?;
        }
    }
    if wanted("metric-values", &d.args) {
        metric_values(&mut d).await?;
    }
    d.fake.assert_no_panic()?;
    let Args { requests, concurrency, hard_down_secs, .. } = d.args;
    let (extra, secs) = (d.args.proxy_arg.join(" "), started.elapsed().as_secs_f64());
    let head = format!(
        "`cargo xtask drill`: {requests} unique requests per mode, {concurrency} concurrent, hard-down modes over {hard_down_secs} s; proxy defaults with `--breaker-open-ms 2000` {extra}; a fresh proxy per mode; {secs:.0} s.\n\n{}\n\
         Upstream calls: the fake's `GET /control` count, or the connections the reset server accepted; ¹ nothing listens on a refused port, so the proxy's `shout_upstream_attempts_total`.",
        table(HEADER, &d.rows)
    );
    d.targets.report(&head, "fault-drill.md")?;
    let json = serde_json::to_string_pretty(&json!({"modes": d.numbers}))?;
    std::fs::write(out_dir("")?.join("fault-drill.json"), json)?;
    d.targets.verdict()
}

/// Metric values against a scripted fault timeline, apart from the modes above: after each phase
/// (healthy, failing, healed after the open period) the answers by source sum to the requests
/// sent, no request is active, and the breaker state is the phase's; `shout_build_info` and
/// `--version` carry HEAD's revision.
async fn metric_values(d: &mut Drill) -> Result<()> {
    let (proxy, mut sent) = (d.proxy(&d.fake.shout_url(), "metric-values").await?, 0);
    let shouter = Shouter::new(&proxy.url)?;
    for (phase, knobs, want) in
        [("ok", "{}", "closed"), ("fail", r#"{"mode":"fail"}"#, "open"), ("heal", "{}", "closed")]
    {
        d.fake.set(serde_json::from_str(knobs)?).await?;
        let open_ms = proxy.status().await?["pipeline"]["breaker"]["open_ms_left"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(open_ms + 100)).await;
        let texts: Vec<String> = (0..30).map(|i| format!("{phase} {} #{i}", d.run_id)).collect();
        sent += shouter.all(&texts, 1).await.len();
        let m = proxy.metrics().await?;
        let answers = m.by_label("shout_answers_total", "source");
        let active = m.has("http_server_active_requests").then(|| m.sum("http_server_active_requests"));
        let state = m.by_label("shout_breaker_state", "state").into_iter().find(|s| s.1 == 1.0).unwrap_or_default().0;
        let ok = answers.iter().map(|a| a.1).sum::<f64>() == sent as f64 && active == Some(0.0) && state == want;
        let target = format!("metric values, {phase}: answers = {sent} sent, 0 active, breaker {want}");
        d.targets.check(target, ok, format!("answers {answers:?}, active {active:?}, breaker {state}"));
    }
    let run = |cmd: &str, args: &[&str]| std::process::Command::new(cmd).args(args).current_dir(root()).output();
    let head = String::from_utf8_lossy(&run("git", &["rev-parse", "--short=12", "HEAD"])?.stdout).trim().to_owned();
    let version = run(&release_bin("shout-proxy")?.display().to_string(), &["--version"])?.stdout;
    let version = String::from_utf8_lossy(&version).trim().to_owned();
    let info = proxy.metrics().await?.0.into_iter().find(|s| s.name == "shout_build_info").map(|s| s.labels);
    let revision = info.unwrap_or_default().into_iter().find(|l| l.0 == "revision").unwrap_or_default().1;
    let ok = !head.is_empty() && revision == head && version.contains(&head);
    d.targets.check("build revision is HEAD's", ok, format!("HEAD {head}, build_info {revision}, --version {version}"));
    proxy.proc.assert_no_panic()
}
