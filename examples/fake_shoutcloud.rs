//! A fake shoutcloud for demos, benchmarks and the Prometheus check.
//!
//! `POST /V1/SHOUT {"INPUT": s}` answers `{"INPUT": s, "OUTPUT": S}` like shoutcloud, with knobs
//! to make it slow or sick, set at start or changed at run time:
//!
//! ```text
//! cargo run --release --example fake_shoutcloud -- --listen 127.0.0.1:9000 --failure-rate 0.3
//! curl -X POST localhost:9000/control -d '{"mode": "fail"}'   # now every call fails
//! curl localhost:9000/control                                 # current knobs and call count
//! ```
//!
//! Modes: `ok`, `fail` (answer `--failure-status`), `hang` (never answer), `malformed` (not JSON),
//! `wrong` (valid JSON whose OUTPUT is another string). `--failure-rate` makes a share of the
//! calls in `ok` mode fail with `--failure-status`.
//!
//! Knobs for the hostile-upstream checks (each off by default, all settable by `POST /control`):
//! `knee` (with more than `knee` calls in flight, latency grows as
//! `latency_ms * (in_flight/knee)^2`; `GET /control` reports the mean and max in flight seen per
//! call since the last `{"reset": true}`), `old_unicode` (`ɤ` stays as is, as a Unicode version
//! before U+A7CB would), `lookalike` (`K` answered as U+212A KELVIN SIGN, `ß` as `ẞ`),
//! `retry_after` (sent as `Retry-After` with every failure), `reject_containing` (inputs holding
//! it get 400 echoing the input), `disagree_containing` (inputs holding it get a wrong OUTPUT),
//! `echo_errors` (failure bodies echo the input, up to 1 MiB).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::{Data, Json};
use poem::{EndpointExt, IntoResponse, Response, Route, Server, get, handler, post};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ok,
    Fail,
    Hang,
    Malformed,
    Wrong,
}

/// The knobs; every one can be changed at run time with `POST /control`.
#[derive(Debug, Clone, Serialize, Deserialize, Parser)]
struct Knobs {
    /// How it behaves.
    #[arg(long, value_enum, default_value = "ok")]
    mode: Mode,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of calls (0..1) that fail with `--failure-status` in `ok` mode.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Status of failed calls.
    #[arg(long, default_value_t = 503)]
    failure_status: u16,
    /// In-flight calls beyond which latency grows quadratically (0: off).
    #[arg(long, default_value_t = 0)]
    knee: u64,
    /// Leave `ɤ` unchanged, as an upstream on an old Unicode version does.
    #[arg(long)]
    old_unicode: bool,
    /// Answer `K` as U+212A KELVIN SIGN and `ß` as U+1E9E.
    #[arg(long)]
    lookalike: bool,
    /// `Retry-After` value sent with failures.
    #[arg(long)]
    retry_after: Option<String>,
    /// Inputs containing this get 400 with a body echoing the input.
    #[arg(long)]
    reject_containing: Option<String>,
    /// Inputs containing this get a wrong OUTPUT.
    #[arg(long)]
    disagree_containing: Option<String>,
    /// Failure bodies echo the input (up to 1 MiB).
    #[arg(long)]
    echo_errors: bool,
}

#[derive(Debug, Parser)]
#[command(about = "A fake shoutcloud with knobs for latency and failures.")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    #[command(flatten)]
    knobs: Knobs,
}

struct State {
    knobs: RwLock<Knobs>,
    calls: AtomicU64,
    in_flight: AtomicU64,
    /// In flight seen per call since the last reset: sum, samples, max.
    seen: std::sync::Mutex<(u64, u64, u64)>,
}

/// Decrements the in-flight count however the call ends (a hung call is dropped).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct ShoutIn {
    #[serde(rename = "INPUT")]
    input: String,
}

/// shoutcloud's answer: the input and an output.
fn answer(input: &str, output: &str) -> Response {
    Json(serde_json::json!({"INPUT": input, "OUTPUT": output})).into_response()
}

#[handler]
async fn shout(state: Data<&Arc<State>>, body: Json<ShoutIn>) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let in_flight = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = InFlight(&state.in_flight);
    if let Ok(mut seen) = state.seen.lock() {
        *seen = (seen.0 + in_flight, seen.1 + 1, seen.2.max(in_flight));
    }
    let knobs = state.knobs.read().await.clone();
    let mut latency = knobs.latency_ms as f64;
    if knobs.knee > 0 && in_flight > knobs.knee {
        latency *= (in_flight as f64 / knobs.knee as f64).powi(2);
    }
    if latency > 0.0 {
        tokio::time::sleep(Duration::from_millis(latency.min(3_600_000.0) as u64)).await;
    }
    let input = body.0.input;
    let has = |n: &Option<String>| {
        n.as_deref()
            .is_some_and(|n| !n.is_empty() && input.contains(n))
    };
    let echo: String = input.chars().take(1 << 20).collect();
    let fail = |code: u16| {
        let body = if knobs.echo_errors {
            echo.as_str()
        } else {
            "shoutcloud is sick"
        };
        let mut response = body
            .to_owned()
            .with_status(StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
            .into_response();
        if let Some(value) = knobs.retry_after.as_deref().and_then(|v| v.parse().ok()) {
            response.headers_mut().insert("retry-after", value);
        }
        response
    };
    if has(&knobs.reject_containing) {
        return echo.with_status(StatusCode::BAD_REQUEST).into_response();
    }
    match knobs.mode {
        Mode::Hang => std::future::pending::<Response>().await,
        Mode::Fail => fail(knobs.failure_status),
        Mode::Malformed => "<html>not json</html>".into_response(),
        Mode::Wrong => answer(&input, "SOMETHING ELSE"),
        Mode::Ok if knobs.failure_rate > 0.0 && rand::random::<f64>() < knobs.failure_rate => {
            fail(knobs.failure_status)
        }
        Mode::Ok if has(&knobs.disagree_containing) => {
            answer(&input, &format!("{} DISAGREES", input.to_uppercase()))
        }
        Mode::Ok => {
            let output = input
                .chars()
                .map(|c| match c {
                    'ɤ' if knobs.old_unicode => "ɤ".to_owned(),
                    'k' | 'K' if knobs.lookalike => "\u{212A}".to_owned(),
                    'ß' if knobs.lookalike => "\u{1E9E}".to_owned(),
                    c => c.to_uppercase().collect(),
                })
                .collect::<String>();
            answer(&input, &output)
        }
    }
}

/// Knobs, calls and the in-flight statistics, as `GET /control` and `POST /control` answer.
async fn report(state: &State) -> Json<serde_json::Value> {
    let knobs = state.knobs.read().await.clone();
    let (sum, samples, max) = state.seen.lock().map(|s| *s).unwrap_or_default();
    let (calls, now) = (
        state.calls.load(Ordering::Relaxed),
        state.in_flight.load(Ordering::Relaxed),
    );
    let mean = sum as f64 / samples.max(1) as f64;
    let in_flight = serde_json::json!({"now": now, "mean": mean, "max": max, "samples": samples});
    Json(serde_json::json!({"knobs": knobs, "calls": calls, "in_flight": in_flight}))
}

#[handler]
async fn show(state: Data<&Arc<State>>) -> Json<serde_json::Value> {
    report(&state).await
}

/// Applies the fields given (the others keep their values); `"reset": true` also zeroes the
/// in-flight statistics. Merging into the serialized knobs keeps one list of knobs.
#[handler]
async fn control(state: Data<&Arc<State>>, update: Json<serde_json::Value>) -> Response {
    {
        let mut knobs = state.knobs.write().await;
        let mut merged = serde_json::to_value(&*knobs).unwrap_or_default();
        if let (Some(merged), Some(update)) = (merged.as_object_mut(), update.as_object()) {
            merged.extend(update.clone().into_iter().filter(|(k, _)| k != "reset"));
        }
        match serde_json::from_value::<Knobs>(merged) {
            Ok(new) => {
                *knobs = Knobs {
                    failure_rate: new.failure_rate.clamp(0.0, 1.0),
                    ..new
                }
            }
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
        if let (true, Ok(mut seen)) = (update["reset"] == true, state.seen.lock()) {
            *seen = (0, 0, 0);
        }
        eprintln!("fake shoutcloud knobs now {knobs:?}");
    }
    report(&state).await.into_response()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    eprintln!("fake shoutcloud on {} with {:?}", cli.listen, cli.knobs);
    let state = Arc::new(State {
        knobs: RwLock::new(cli.knobs),
        calls: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        seen: std::sync::Mutex::new((0, 0, 0)),
    });
    let app = Route::new()
        .at("/V1/SHOUT", post(shout))
        .at("/control", get(show).post(control))
        .data(state);
    Server::new(TcpListener::bind(cli.listen)).run(app).await
}
