//! `cargo xtask fleet`: three release instances share one real `redis-server` and the fake.
//!
//! Targets: one upstream call per input across the three; Redis paused (SIGSTOP), every answer
//! right and p99 < 0.5 s, then (SIGCONT) sharing resumes by itself; Redis killed and restarted
//! empty on its port, sharing resumes; the fake with a knee of 8 and 48 concurrent clients of
//! unique inputs: mean calls in flight at the fake <= 16 for one instance and for three, the
//! breaker never opened, the upstream answered a fair share, every answer right.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use serde_json::json;

use crate::Targets;
use crate::client::{Outcome, Shouter, percentile};
use crate::fake::Fake;
use crate::proc::{External, Proxy};

const KNEE_LATENCY_MS: f64 = 20.0;

/// Shouts `inputs` at `proxies`, input i at the `(shift + i)`th in turn, `concurrency` at once.
async fn shout_all(proxies: &[Proxy], shift: usize, inputs: &[String], concurrency: usize) -> Result<Vec<Outcome>> {
    let shouters: Vec<Shouter> = proxies.iter().map(|p| Shouter::new(&p.url)).collect::<Result<_>>()?;
    let calls = inputs.iter().enumerate().map(|(i, text)| shouters[(shift + i) % shouters.len()].shout(i, text));
    Ok(futures_util::stream::iter(calls).buffer_unordered(concurrency).collect().await)
}

/// `n` instances named `name-i`, started at once.
async fn start(n: usize, name: &str, upstream: &str, flags: &[&str]) -> Result<Vec<Proxy>> {
    try_join_all((0..n).map(|i| async move { Proxy::start(&format!("{name}-{i}"), upstream, flags).await })).await
}

/// One sample summed over the instances.
async fn sum(proxies: &[Proxy], name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let scrapes = try_join_all(proxies.iter().map(Proxy::metrics)).await?;
    Ok(scrapes.iter().map(|m| m.sample(name, labels)).sum())
}

/// Sharing rounds on fresh inputs until one passes or `within` has passed (one round at least):
/// each input asked of one instance, then (once written) of the other two. A round passes with
/// one upstream call per input, every answer right, the others' answers from the shared cache.
async fn sharing(t: &mut Targets, target: &str, fake: &Fake, proxies: &[Proxy], within: Duration) -> Result<()> {
    let written = || sum(proxies, "shout_shared_cache_requests_total", &[("op", "set"), ("result", "hit")]);
    let start = Instant::now();
    loop {
        let round = format!("fleet {target} {}", start.elapsed().as_millis());
        let inputs: Vec<String> = (0..30).map(|i| format!("{round} #{i} é")).collect();
        let (calls, before) = (fake.calls().await?, written().await?);
        let mut outcomes = shout_all(proxies, 0, &inputs, 3).await?;
        let wait = Instant::now();
        while written().await? < before + inputs.len() as f64 && wait.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let others = [shout_all(proxies, 1, &inputs, 3).await?, shout_all(proxies, 2, &inputs, 3).await?].concat();
        let from_cache = others.iter().filter(|o| o.source == "cache").count();
        outcomes.extend(others);
        let (calls, wrong) = (fake.calls().await? - calls, outcomes.iter().filter(|o| !o.correct).count());
        let ok = calls == 30 && from_cache == 60 && wrong == 0;
        if ok || start.elapsed() > within {
            let took = start.elapsed().as_secs_f64();
            let measured =
                format!("after {took:.1} s: {calls} calls for 30 inputs, {from_cache}/60 shared, {wrong} wrong");
            t.check(target, ok, measured);
            return Ok(());
        }
    }
}

/// 48 clients of unique inputs for `secs` against `n` fresh instances, the fake's knee at 8.
async fn knee(t: &mut Targets, fake: &Fake, n: usize, tag: &str, secs: u64) -> Result<()> {
    let proxies = start(n, &format!("fleet-knee-{n}"), &fake.shout_url(), &[]).await?;
    fake.set(json!({"knee": 8, "latency_ms": KNEE_LATENCY_MS as u64})).await?;
    let stop = Instant::now() + Duration::from_secs(secs);
    // At most one request per client every 20 ms: 2,400/s offered, 12x what the knee serves,
    // without fast fallbacks spinning the CPU that the timings share.
    let clients = (0..48).map(|c| {
        let (shouter, tag) = (Shouter::new(&proxies[c % proxies.len()].url), format!("knee-{tag}-{c}"));
        async move { anyhow::Ok(shouter?.paced(&tag, Duration::from_millis(20), |_| Instant::now() >= stop).await) }
    });
    let outcomes: Vec<Outcome> = try_join_all(clients).await?.concat();
    let mean = fake.control().await?["in_flight"]["mean"].as_f64().unwrap_or(f64::NAN);
    let opened = sum(&proxies, "shout_breaker_transitions_total", &[("state", "open")]).await?;
    proxies.iter().try_for_each(|p| p.proc.assert_no_panic())?;
    let upstream = outcomes.iter().filter(|o| o.source == "upstream").count();
    let (wrong, fair) = (outcomes.iter().filter(|o| !o.correct).count(), upstream as f64 / secs as f64);
    let floor = 0.25 * 8.0 * 1000.0 / KNEE_LATENCY_MS; // a quarter of what the knee can serve
    let m = format!("{opened} openings, {wrong} wrong of {}", outcomes.len());
    t.check(format!("{tag}: mean in flight at the fake <= 16"), mean <= 16.0, format!("{mean:.1}"));
    t.check(format!("{tag}: breaker never opened, every answer right"), opened == 0.0 && wrong == 0, m);
    let measured = format!("{fair:.0}/s, {upstream} answers");
    t.check(format!("{tag}: upstream answers >= {floor:.0}/s"), fair >= floor, measured);
    Ok(())
}

pub async fn run() -> Result<()> {
    let (redis, mut t) = (External::redis("fleet-redis").await?, Targets::new("fleet"));
    let fake = Fake::start("fleet-fake", &["--latency-ms", "5"]).await?;
    let proxies = start(3, "fleet", &fake.shout_url(), &["--redis-url", &redis.url()]).await?;
    sharing(&mut t, "3 instances: one upstream call per input", &fake, &proxies, Duration::ZERO).await?;
    let signal = |s: &str| std::process::Command::new("kill").args([s, &redis.proc.pid().to_string()]).status();
    signal("-STOP")?;
    let inputs: Vec<String> = (0..300).map(|i| format!("paused-{i}")).collect();
    let paused = shout_all(&proxies, 0, &inputs, 12).await?;
    let p99 = percentile(&paused.iter().map(|o| o.latency_ms).collect::<Vec<_>>(), 0.99);
    let wrong = paused.iter().filter(|o| !o.correct).count();
    let m = format!("{wrong} wrong of 300, p99 {p99:.0} ms");
    t.check("Redis paused: every answer right, p99 < 0.5 s", wrong == 0 && p99 < 500.0, m);
    signal("-CONT")?;
    sharing(&mut t, "Redis resumed: sharing resumes by itself", &fake, &proxies, Duration::from_secs(10)).await?;
    let port = redis.port;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _redis = External::redis_on("fleet-redis-restarted", port).await?;
    let target = "Redis killed, restarted empty: sharing resumes";
    sharing(&mut t, target, &fake, &proxies, Duration::from_secs(15)).await?;
    knee(&mut t, &fake, 1, "1 instance", 8).await?;
    knee(&mut t, &fake, 3, "3 instances", 8).await?;
    proxies.iter().try_for_each(|p| p.proc.assert_no_panic())?;
    t.report("`cargo xtask fleet`: three instances share a redis-server; the limit at a knee.", "fleet.md")?;
    t.verdict()
}
