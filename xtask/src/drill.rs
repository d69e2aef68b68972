//! The fault drill: the resilience targets measured from outside, a fresh `shout-proxy` per
//! fault mode against the fake upstream (or a refused port, or a server that resets).
//!
//! Targets: every valid request gets 200 and the crate's answer in every mode, and is counted
//! once by the service; p99 < 1.5 x the deadline; no request active at rest; hard down, upstream
//! calls < 0.5 x requests; flaky 30 %, calls <= 1.3 x misses; recovery within the open period +
//! 500 ms, with `shout_breaker_state` closed, open after the trip and closed again after it;
//! `shout_build_info` and `--version` carry HEAD's revision. Slow and hostile clients are
//! `cargo xtask hostile`'s. Single faults request by request are `tests/api/`'s job; this is the
//! release binary under load, counted.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::json;

use crate::client::{Outcome, Shouter, percentile};
use crate::fake::Fake;
use crate::proc::{Proxy, free_port, release_bin, root};
use crate::prom::Metrics;
use crate::{Targets, table};

const P99_LIMIT_MS: f64 = 1500.0; // 1.5 x the default 1 s deadline
const OPEN_MS: f64 = 2000.0;
/// Unique requests per mode, sent by this many concurrent clients.
const REQUESTS: usize = 200;
const CONCURRENCY: usize = 16;
/// Hard-down modes are spread over this many seconds, so that several open periods (and their
/// probes) pass under load.
const HARD_DOWN_SECS: f64 = 8.0;

#[derive(clap::Args)]
pub struct Args {
    /// Modes to run: those whose names start with one of these (comma-separated); all when
    /// empty. Recovery and the build revision's check run after `5xx-503`.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
}

/// Name, upstream (`fake`, `refused`: a closed port, `reset`: a server that resets), the fake's
/// knobs, and the kind: `hard` (every call fails: paced over [`HARD_DOWN_SECS`]), `burst` (hard,
/// unpaced), `flaky` (a failure rate: run three times, as whether the breaker trips is random),
/// or `` (no extra target).
type Mode = (&'static str, &'static str, &'static str, &'static str);

/// Fault modes in the order they run.
const MODES: [Mode; 14] = [
    ("healthy", "fake", "{}", ""),
    ("refused", "refused", "{}", "hard"),
    ("hang", "fake", r#"{"mode": "hang"}"#, "hard"),
    ("slow-150ms", "fake", r#"{"latency_ms": 150}"#, ""),
    ("5xx-503", "fake", r#"{"mode": "fail", "failure_status": 503}"#, "hard"),
    ("429", "fake", r#"{"mode": "fail", "failure_status": 429}"#, "hard"),
    ("malformed", "fake", r#"{"mode": "malformed"}"#, "hard"),
    ("wrong-output", "fake", r#"{"mode": "wrong"}"#, "hard"),
    ("flaky-30%#1", "fake", r#"{"failure_rate": 0.3}"#, "flaky"),
    ("flaky-30%#2", "fake", r#"{"failure_rate": 0.3}"#, "flaky"),
    ("flaky-30%#3", "fake", r#"{"failure_rate": 0.3}"#, "flaky"),
    ("reset", "reset", "{}", "hard"),
    ("hang-burst", "fake", r#"{"mode": "hang"}"#, "burst"),
    ("5xx-503-burst", "fake", r#"{"mode": "fail", "failure_status": 503}"#, "burst"),
];

/// Words mixed into the inputs: full case mapping, precomposed and combining accents, Greek, a
/// flag and a ZWJ family (whole graphemes that a code-point reversal would tear apart).
const WORDS: &str = "hello|straße|ñandú|Ωmega|e\u{301}cole|cafe\u{301}|Ärger|🇫🇷 çava|a\u{308}pfel|\
    👩\u{200d}👩\u{200d}👧 jump|résumé|día";

/// The columns of the modes table; one row per run of a mode.
const HEADER: &str = "mode|correct|answers upstream/cache/fallback|p50 / p99 ms|upstream calls|duration|\
    breaker at end (transitions by state)|fallbacks by reason|attempts by outcome|retries";

/// Accepts connections, reads the request, and closes with SO_LINGER 0: a TCP reset. Returns
/// its port and the count of connections it accepted.
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

/// A fresh proxy: the defaults, with the breaker's open period at [`OPEN_MS`].
async fn proxy(name: &str, upstream: &str) -> Result<Proxy> {
    Proxy::start(&format!("drill-{name}"), upstream, &["--breaker-open-ms", &OPEN_MS.to_string()]).await
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

/// The state `shout_breaker_state` reads 1 for.
fn breaker_gauge(metrics: &Metrics) -> String {
    metrics.by_label("shout_breaker_state", "state").into_iter().find(|s| s.1 == 1.0).unwrap_or_default().0
}

/// One run of a mode on a fresh proxy: its targets checked, its row of the modes table returned.
async fn run_mode(t: &mut Targets, fake: &Fake, (label, kind, knobs, class): Mode) -> Result<String> {
    let calls_before = fake.set(serde_json::from_str(knobs)?).await?["calls"].as_u64().unwrap_or(0);
    let (port, accepted) = if kind == "reset" { reset_server().await? } else { (free_port()?, Arc::default()) };
    let url = if kind == "fake" { fake.shout_url() } else { format!("http://127.0.0.1:{port}/V1/SHOUT") };
    let proxy = proxy(label, &url).await?;
    let spread = if class == "hard" { HARD_DOWN_SECS } else { 0.0 };
    let inputs: Vec<String> =
        WORDS.split('|').cycle().zip(0..REQUESTS).map(|(w, i)| format!("{w} {label} #{i}")).collect();
    let (outcomes, seconds) = load(&Shouter::new(&proxy.url)?, &inputs, CONCURRENCY, spread).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = proxy.metrics().await?;
    proxy.proc.assert_no_panic()?;
    // Counted at the upstream when something listens there, else the proxy's own attempts.
    let upstream_calls = match kind {
        "fake" => (fake.calls().await? - calls_before) as f64,
        "reset" => accepted.load(Ordering::Relaxed) as f64,
        _ => metrics.sum("shout_upstream_attempts_total"),
    };
    let (n, correct) = (outcomes.len(), outcomes.iter().filter(|o| o.correct).count());
    let latencies: Vec<f64> = outcomes.iter().map(|o| o.latency_ms).collect();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    // Answers by source, as the service counted them; misses: those not from the cache.
    let [up, cache, fallback] =
        ["upstream", "cache", "fallback"].map(|s| metrics.sample("shout_answers_total", &[("source", s)]));
    let misses = up + fallback;
    let pairs = |name: &str, label: &str| {
        let pairs = metrics.by_label(name, label).into_iter().filter(|p| p.1 > 0.0);
        pairs.map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    let calls = format!("{upstream_calls}{}", if kind == "refused" { "¹" } else { "" });
    let row = [
        format!("{label}|{correct}/{n}|{up}/{cache}/{fallback}|{p50:.0} / {p99:.0}|{calls}|{seconds:.1} s"),
        format!("{} ({})", breaker_gauge(&metrics), pairs("shout_breaker_transitions_total", "state")),
        pairs("shout_fallbacks_total", "reason"),
        pairs("shout_upstream_attempts_total", "outcome"),
        metrics.sum("shout_upstream_retries_total").to_string(),
    ];

    let first_wrong =
        outcomes.iter().find(|o| !o.correct).map_or(String::new(), |o| format!("; first wrong: {}", o.error));
    t.check(format!("{label}: 100% correct"), correct == n, format!("{correct}/{n} correct{first_wrong}"));
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
    let active = metrics.has("http_server_active_requests").then(|| metrics.sum("http_server_active_requests"));
    t.check(format!("{label}: no request active at rest"), active == Some(0.0), format!("{active:?} active"));
    if class == "hard" || class == "burst" {
        let per_period = upstream_calls / (seconds * 1000.0 / OPEN_MS).max(1.0);
        let measured = format!("{upstream_calls} calls for {n} requests; {per_period:.1} per {OPEN_MS} ms period");
        t.check(format!("{label}: upstream calls < 0.5 x requests"), upstream_calls < 0.5 * n as f64, measured);
    }
    if class == "flaky" {
        let measured = format!("{upstream_calls} calls for {misses} misses = {:.2}x", upstream_calls / misses.max(1.0));
        t.check(format!("{label}: upstream calls <= 1.3 x misses"), upstream_calls <= 1.3 * misses, measured);
    }
    Ok(row.join("|"))
}

/// One request answered by the healthy upstream; the breaker tripped on 503s, the fake healed
/// at once, then one request every 100 ms until one is answered by the upstream again; timed
/// from the start of the request that tripped it. The breaker's gauge is read after each step.
async fn recovery(t: &mut Targets, fake: &Fake) -> Result<()> {
    fake.set(json!({})).await?;
    let proxy = proxy("recovery", &fake.shout_url()).await?;
    let shouter = Shouter::new(&proxy.url)?;
    let first = shouter.shout(0, "before").await;
    let mut gauge = vec![breaker_gauge(&proxy.metrics().await?)];
    fake.set(json!({"mode": "fail"})).await?;
    let tripped = proxy.trip_breaker("recovery").await.context("recovery: on 503s")?;
    gauge.push(breaker_gauge(&proxy.metrics().await?));
    fake.set(json!({})).await?;
    let healed = Instant::now();
    let upstream = |o: &[Outcome]| o.last().is_some_and(|o| o.source == "upstream");
    let give_up = healed + Duration::from_secs(15);
    let polls = shouter.paced("recover", Duration::from_millis(100), |o| upstream(o) || Instant::now() > give_up).await;
    let back = upstream(&polls).then(Instant::now);
    let metrics = proxy.metrics().await?;
    gauge.push(breaker_gauge(&metrics));
    proxy.proc.assert_no_panic()?;
    let wrong: Vec<&Outcome> = polls.iter().filter(|o| !o.correct).collect();
    let measured =
        format!("{} wrong of {} polls, the first: {:?}", wrong.len(), polls.len(), wrong.first().map(|o| &o.error));
    t.check("recovery: every poll answered correctly", wrong.is_empty(), measured);
    // Infinite when no poll was answered by the upstream within 15 s.
    let ms = |since: Instant| back.map_or(f64::INFINITY, |b| (b - since).as_secs_f64() * 1e3);
    let measured = format!("{:.0} ms after the trip ({:.0} ms after healing)", ms(tripped), ms(healed));
    t.check("recovery within open period + 500 ms", ms(tripped) <= OPEN_MS + 500.0, measured);
    let target = "shout_breaker_state: closed after an upstream answer, open after the trip, closed after recovery";
    let ok = first.source == "upstream" && gauge == ["closed", "open", "closed"];
    t.check(target, ok, format!("first answer from {:?}; {}", first.source, gauge.join(", ")));
    revision(t, &metrics)
}

/// `shout_build_info` and `--version` against HEAD.
fn revision(t: &mut Targets, metrics: &Metrics) -> Result<()> {
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(root()).output()?.stdout;
    let version = Command::new(release_bin("shout-proxy")?).arg("--version").output()?.stdout;
    let [head, version] = [head, version].map(|out| String::from_utf8_lossy(&out).trim().to_owned());
    let revision = metrics.by_label("shout_build_info", "revision").into_iter().next().unwrap_or_default().0;
    let ok = !head.is_empty() && revision == head && version.contains(&head);
    let measured = format!("HEAD {head}, build_info {revision}, --version {version}");
    t.check("build revision is HEAD's", ok, measured);
    Ok(())
}

pub async fn run(Args { modes }: Args) -> Result<()> {
    let (started, fake, mut t) = (Instant::now(), Fake::start("drill-fake", &[]).await?, Targets::new("drill"));
    let mut rows = Vec::new();
    for mode in MODES.into_iter().filter(|m| modes.is_empty() || modes.iter().any(|w| m.0.starts_with(w))) {
        rows.push(run_mode(&mut t, &fake, mode).await?);
        if mode.0 == "5xx-503" {
            recovery(&mut t, &fake).await?;
        }
    }
    fake.assert_no_panic()?;
    let secs = started.elapsed().as_secs_f64();
    let head = format!(
        "`cargo xtask drill`: {REQUESTS} unique requests per mode, {CONCURRENCY} concurrent, hard-down modes over {HARD_DOWN_SECS} s; proxy defaults with `--breaker-open-ms 2000`; a fresh proxy per mode; {secs:.0} s.\n\n{}\n\
         Upstream calls: the fake's call count, or the connections the reset server accepted; ¹ nothing listens on a refused port, so the proxy's `shout_upstream_attempts_total`.",
        table(HEADER, &rows)
    );
    t.report(&head, "fault-drill.md")?;
    t.verdict()
}
