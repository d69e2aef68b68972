//! `cargo xtask alerts`: the shipped alert rules end to end. A real Prometheus evaluates
//! `prometheus/alerts.yaml` against the release `shout-proxy` and the fake upstream, and a real
//! Alertmanager delivers to a webhook served here: an idle and a healthy fleet raise nothing (not
//! even a pending alert); a failing upstream makes exactly `ShoutBreakerOpen` and
//! `ShoutFallbackRatioHigh` arrive as firing, and a healed one makes them arrive resolved.
//!
//! The rules are never edited for the run: [`transform`] divides every `for:` and range window by
//! [`SCALE`] (`for: 5m` -> 10 s, `[5m]` -> 10 s, `[1m]` -> 4 s), so the 100-answer floor per
//! window holds at more than 10 requests a second, which the load sends. The promtool cases
//! (`prometheus/alerts_test.yaml`, a firing and a silent one per alert) run in
//! `.ci/prometheus-check.sh`.

use std::{collections::BTreeSet, sync::Arc, sync::Mutex, time::Duration, time::Instant};

use anyhow::{Context, Result};
use poem::{EndpointExt, Route, handler, listener::Acceptor as _, post, web::Data, web::Json};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

use crate::{Missed, client::Shouter, fake::Fake, proc::External, proc::Proxy, proc::out_dir, proc::root};

/// What the failing upstream must raise, and nothing else.
const EXPECTED: [&str; 2] = ["ShoutBreakerOpen", "ShoutFallbackRatioHigh"];

/// A Prometheus duration (`30s`, `5m`, `1h`) divided by 30, at least `min` seconds; an
/// error for anything else (a subquery's `5m:1m`), which must not stay unscaled.
fn scaled(d: &str, min: u64) -> Result<String> {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).with_context(|| format!("duration {d:?}"))?);
    let unit = [("s", 1), ("m", 60), ("h", 3600)].iter().find(|u| u.0 == unit).with_context(|| format!("{d:?}"))?;
    Ok(format!("{}s", (n.parse::<u64>()? * unit.1 / 30).max(min)))
}

/// The rules with every `for:` (at least 2 s) and `[window]` (at least 4 s) scaled.
pub fn transform(yaml: &str) -> Result<String> {
    let mut doc: Yaml = serde_yaml::from_str(yaml)?;
    for group in doc.get_mut("groups").and_then(Yaml::as_sequence_mut).context("no groups")? {
        for rule in group.get_mut("rules").and_then(Yaml::as_sequence_mut).context("no rules")? {
            if let Some(f) = rule.get_mut("for") {
                *f = scaled(f.as_str().context("for: is not a string")?, 2)?.into();
            }
            let expr = rule.get_mut("expr").context("a rule without expr")?;
            let (mut out, mut rest) = (String::new(), expr.as_str().context("expr")?.to_owned());
            while let Some((head, tail)) = rest.split_once('[') {
                let (window, after) = tail.split_once(']').context("[ without ]")?;
                out += &format!("{head}[{}]", scaled(window, 4)?);
                rest = after.to_owned();
            }
            *expr = (out + &rest).into();
        }
    }
    Ok(serde_yaml::to_string(&doc)?)
}

/// (alertname, status) in the order Alertmanager delivered them.
type Delivered = Arc<Mutex<Vec<(String, String)>>>;

#[handler]
fn webhook(Json(body): Json<Value>, got: Data<&Delivered>) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let alerts = body["alerts"].as_array().into_iter().flatten();
    got.lock().map(|mut g| g.extend(alerts.map(|a| (text(&a["labels"]["alertname"]), text(&a["status"]))))).ok();
}

/// Alert names delivered with `status` (`None`: any).
fn names(got: &Delivered, status: Option<&str>) -> BTreeSet<String> {
    let got = got.lock().map(|g| g.clone()).unwrap_or_default();
    got.into_iter().filter(|(_, s)| status.is_none_or(|w| s == w)).map(|(n, _)| n).collect()
}

pub async fn run() -> Result<()> {
    let (started, mut missed, got) = (Instant::now(), vec![], Delivered::default());
    let rules = out_dir("alerts")?.join("rules.yaml");
    std::fs::write(&rules, transform(&std::fs::read_to_string(root().join("prometheus/alerts.yaml"))?)?)?;
    let _ = ["alerts-prometheus", "alerts-alertmanager"]
        .map(|d| out_dir(d).map(|d| std::fs::remove_dir_all(d.join("data"))));
    let acceptor = poem::listener::TcpAcceptor::from_tokio(tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    let hook = acceptor.local_addr()[0].as_socket_addr().copied().context("webhook address")?;
    let app = Route::new().at("/alerts", post(webhook)).data(got.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    let am = format!(
        "route: {{receiver: hook, group_by: [alertname], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}}\n\
         receivers: [{{name: hook, webhook_configs: [{{url: 'http://{hook}/alerts', send_resolved: true}}]}}]\n"
    );
    let args = |a: &[&'static str]| [a, &["--web.listen-address=127.0.0.1:@PORT@", "--log.level=warn"]].concat();
    let am_args = args(&["--config.file=@DIR@/config", "--storage.path=@DIR@/data", "--cluster.listen-address="]);
    let am = External::start("alerts-alertmanager", "prometheus-alertmanager", &am_args, &am, Some("/-/ready")).await?;
    let fake = Fake::start("alerts-fake", &[]).await?;
    let proxy_args = ["--breaker-open-ms", "1000", "--breaker-max-open-ms", "2000"];
    let proxy = Proxy::start("alerts-proxy", &fake.shout_url(), &proxy_args).await?;
    let config = std::fs::read_to_string(root().join("prometheus/prometheus-check.yml"))?
        .replace("@ADMIN_TARGET@", proxy.admin.trim_start_matches("http://"))
        .replace("@RULES_FILE@", &rules.display().to_string())
        + &format!("alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{}']}}]}}]}}\n", am.port);
    let prom_args = ["--config.file=@DIR@/config", "--storage.tsdb.path=@DIR@/data", "--rules.alert.resend-delay=1s"];
    let prom = External::start("alerts-prometheus", "prometheus", &args(&prom_args), &config, Some("/-/ready")).await?;
    let query = async |q: &str| -> Result<usize> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", prom.port);
        let body: Value = reqwest::Client::new().get(url).query(&[("query", q)]).send().await?.json().await?;
        body["data"]["result"].as_array().map(Vec::len).with_context(|| format!("{q}: {body}"))
    };
    let (mut load, expected) = (None, BTreeSet::from(EXPECTED.map(String::from)));
    // Silent phases: nothing delivered, nothing even pending (a target down would raise
    // ShoutNoTargetsUp), and under load the answers clear the alerts' 100-answer floor.
    for (phase, secs) in [("idle", 25), ("healthy", 30)] {
        if phase == "healthy" {
            let shouter = Shouter::new(&proxy.url)?;
            load = Some(tokio::spawn(async move {
                let mut i = 0;
                while shouter.shout(i, &format!("alert drill {i}")).await.correct {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await; // about 50 requests a second
                }
                i
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let alerts = query(&format!("max_over_time(ALERTS[{secs}s])")).await?;
        let floor = query("sum(increase(shout_answers_total[10s])) >= 100").await?;
        let seen = format!("{phase}: {alerts} alerts, delivered {:?}, floor met {floor}", names(&got, None));
        eprintln!("[alerts] {seen}");
        missed.extend(
            (alerts > 0 || !names(&got, None).is_empty() || floor != usize::from(phase == "healthy")).then_some(seen),
        );
    }
    for (knobs, status) in [(json!({"mode": "fail"}), "firing"), (json!({}), "resolved")] {
        fake.set(knobs).await?;
        let phase = Instant::now();
        while names(&got, Some(status)) != expected && phase.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("[alerts] {:?} delivered {status} at {} s", names(&got, Some(status)), started.elapsed().as_secs());
    }
    if [Some("firing"), Some("resolved"), None].iter().any(|s| names(&got, *s) != expected) {
        missed.push(format!("delivered {:?}; expected exactly {EXPECTED:?}, firing then resolved", got.lock()));
    }
    if let Some(load) = load.filter(|l| l.is_finished()) {
        missed.push(format!("request {} got a wrong answer", load.await?));
    }
    for p in [&proxy.proc, &fake.proc, &prom.proc, &am.proc] {
        p.assert_no_panic()?;
    }
    println!("alerts: {} s; delivered {:?}", started.elapsed().as_secs(), got.lock());
    if missed.is_empty() { Ok(()) } else { Err(Missed(missed).into()) }
}
