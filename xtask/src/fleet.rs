//! `cargo xtask fleet`: three release instances share one real `redis-server` and the fake.
//!
//! Targets: one upstream call per input across the three; Redis paused (SIGSTOP), every answer
//! right and p99 < 0.5 s, then (SIGCONT) sharing resumes by itself; Redis killed and restarted
//! empty on its port, sharing resumes; the fake with a knee of 8 and 48 concurrent clients of
//! unique inputs: mean calls in flight at the fake <= 16 for one instance and for three, the
//! breaker never opened, the upstream answered a fair share, every answer right.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::client::{Outcome, Shouter, percentile};
use crate::fake::Fake;
use crate::proc::{External, Proc, Proxy};
use crate::verdict;

const KNEE_LATENCY_MS: f64 = 20.0;

/// Shouts `inputs` at `proxies` in turn from the `shift`th, `concurrency` at once.
async fn shout_all(proxies: &[Proxy], shift: usize, inputs: &[String], concurrency: usize) -> Result<Vec<Outcome>> {
    let shouters: Vec<Shouter> = proxies.iter().map(|p| Shouter::new(&p.url)).collect::<Result<_>>()?;
    let mut outcomes = Vec::new();
    for (c, chunk) in inputs.chunks(concurrency).enumerate() {
        let calls = chunk.iter().enumerate().map(|(i, text)| shouters[(shift + c + i) % shouters.len()].shout(i, text));
        outcomes.extend(futures_util::future::join_all(calls).await);
    }
    Ok(outcomes)
}

/// One sharing round on fresh inputs: each asked of one instance, then (once written) of the
/// other two. Passes with one upstream call per input, every answer right, the others' cached.
async fn share(fake: &Fake, proxies: &[Proxy], tag: &str) -> Result<(bool, String)> {
    let inputs: Vec<String> = (0..30).map(|i| format!("fleet-{tag}-{i}-é")).collect();
    let (calls, written) = (fake.calls().await?, set_hits(proxies).await?);
    let mut outcomes = shout_all(proxies, 0, &inputs, 3).await?;
    let start = Instant::now();
    while set_hits(proxies).await? < written + inputs.len() as f64 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut others = Vec::new();
    for shift in 1..proxies.len() {
        others.extend(shout_all(proxies, shift, &inputs, 3).await?);
    }
    let from_cache = others.iter().filter(|o| o.source == "cache").count();
    outcomes.extend(others);
    let (calls, wrong) = (fake.calls().await? - calls, outcomes.iter().filter(|o| !o.correct).count());
    let m = format!("{calls} calls for 30 inputs, {from_cache}/60 shared, {wrong} wrong");
    Ok((calls == 30 && from_cache == 60 && wrong == 0, m))
}

async fn set_hits(proxies: &[Proxy]) -> Result<f64> {
    let mut sum = 0.0;
    for proxy in proxies {
        sum += proxy.metrics().await?.sample("shout_shared_cache_requests_total", &[("op", "set"), ("result", "hit")]);
    }
    Ok(sum)
}

/// Sharing resumes: a round within `within` where the two others answered every input from cache.
async fn resumes(fake: &Fake, proxies: &[Proxy], tag: &str, within: Duration) -> Result<(bool, String)> {
    let start = Instant::now();
    loop {
        let (ok, m) = share(fake, proxies, &format!("{tag}{}", start.elapsed().as_millis())).await?;
        if ok || start.elapsed() > within {
            return Ok((ok, format!("after {:.1} s: {m}", start.elapsed().as_secs_f64())));
        }
    }
}

/// 48 clients of unique inputs for `secs` against `n` fresh instances, the fake's knee at 8.
async fn knee(fake: &Fake, n: usize, tag: &str, secs: u64) -> Result<Vec<(String, bool, String)>> {
    let mut proxies = Vec::new();
    for i in 0..n {
        proxies.push(Proxy::start(&format!("fleet-knee-{n}-{i}"), &fake.shout_url(), &[]).await?);
    }
    fake.set(json!({"knee": 8, "latency_ms": KNEE_LATENCY_MS as u64})).await?;
    let stop = Instant::now() + Duration::from_secs(secs);
    let clients = (0..48).map(|c| {
        let shouter = Shouter::new(&proxies[c % proxies.len()].url);
        async move {
            let (shouter, mut outcomes) = (shouter?, Vec::new());
            while Instant::now() < stop {
                // At most one request per client every 20 ms: 2,400/s offered, 12x what the knee
                // serves, without fast fallbacks spinning the CPU that the timings share.
                let pace = tokio::time::sleep(Duration::from_millis(20));
                outcomes.push(shouter.shout(outcomes.len(), &format!("knee-{tag}-{c}-{}", outcomes.len())).await);
                pace.await;
            }
            anyhow::Ok(outcomes)
        }
    });
    let outcomes: Vec<Outcome> = futures_util::future::try_join_all(clients).await?.concat();
    let mean = fake.control().await?["in_flight"]["mean"].as_f64().unwrap_or(f64::NAN);
    let mut opened = 0.0;
    for proxy in proxies {
        opened += proxy.metrics().await?.sample("shout_breaker_transitions_total", &[("state", "open")]);
        proxy.proc.assert_no_panic()?;
    }
    let upstream = outcomes.iter().filter(|o| o.source == "upstream").count();
    let (wrong, fair) = (outcomes.iter().filter(|o| !o.correct).count(), upstream as f64 / secs as f64);
    let floor = 0.25 * 8.0 * 1000.0 / KNEE_LATENCY_MS; // a quarter of what the knee can serve
    let m = format!("{opened} openings, {wrong} wrong of {}", outcomes.len());
    Ok(vec![
        (format!("{tag}: mean in flight at the fake <= 16"), mean <= 16.0, format!("{mean:.1}")),
        (format!("{tag}: breaker never opened, every answer right"), opened == 0.0 && wrong == 0, m),
        (format!("{tag}: upstream answers >= {floor:.0}/s"), fair >= floor, format!("{fair:.0}/s, {upstream} answers")),
    ])
}

pub async fn run() -> Result<()> {
    let redis_args = ["--port", "@PORT@", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    let redis = External::start("fleet-redis", "redis-server", &redis_args, "", None).await?;
    let port = redis.port.to_string();
    let url = format!("redis://127.0.0.1:{port}/");
    let fake = Fake::start("fleet-fake", &["--latency-ms", "5"]).await?;
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(Proxy::start(&format!("fleet-{i}"), &fake.shout_url(), &["--redis-url", &url]).await?);
    }
    let (ok, m) = share(&fake, &proxies, "a").await?;
    let mut targets = vec![("3 instances: one upstream call per input".to_owned(), ok, m)];
    let signal = |s: &str| std::process::Command::new("kill").args([s, &redis.proc.pid().to_string()]).status();
    signal("-STOP")?;
    let inputs: Vec<String> = (0..300).map(|i| format!("paused-{i}")).collect();
    let paused = shout_all(&proxies, 0, &inputs, 12).await?;
    let p99 = percentile(&paused.iter().map(|o| o.latency_ms).collect::<Vec<_>>(), 0.99);
    let wrong = paused.iter().filter(|o| !o.correct).count();
    let m = format!("{wrong} wrong of 300, p99 {p99:.0} ms");
    targets.push(("Redis paused: every answer right, p99 < 0.5 s".into(), wrong == 0 && p99 < 500.0, m));
    signal("-CONT")?;
    let (ok, m) = resumes(&fake, &proxies, "cont", Duration::from_secs(10)).await?;
    targets.push(("Redis resumed: sharing resumes by itself".into(), ok, m));
    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let args: Vec<String> = redis_args.iter().map(|a| a.replace("@PORT@", &port)).collect();
    let _redis = Proc::spawn("fleet-redis-restarted", Path::new("redis-server"), &args)?;
    let (ok, m) = resumes(&fake, &proxies, "restart", Duration::from_secs(15)).await?;
    targets.push(("Redis killed, restarted empty: sharing resumes".into(), ok, m));
    targets.extend(knee(&fake, 1, "1 instance", 8).await?);
    targets.extend(knee(&fake, 3, "3 instances", 8).await?);
    proxies.iter().try_for_each(|p| p.proc.assert_no_panic())?;
    let (report, result) = verdict(&targets);
    println!("{report}");
    result.map_err(Into::into)
}
