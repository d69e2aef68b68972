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

#[derive(Debug, Default, Deserialize)]
struct KnobsUpdate {
    mode: Option<Mode>,
    latency_ms: Option<u64>,
    failure_rate: Option<f64>,
    failure_status: Option<u16>,
}

struct State {
    knobs: RwLock<Knobs>,
    calls: AtomicU64,
}

#[derive(Deserialize)]
struct ShoutIn {
    #[serde(rename = "INPUT")]
    input: String,
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

#[handler]
async fn shout(state: Data<&Arc<State>>, body: Json<ShoutIn>) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let knobs = state.knobs.read().await.clone();
    if knobs.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.latency_ms)).await;
    }
    let input = body.0.input;
    match knobs.mode {
        Mode::Hang => std::future::pending::<Response>().await,
        Mode::Fail => "shoutcloud is sick"
            .with_status(status(knobs.failure_status))
            .into_response(),
        Mode::Malformed => "<html>not json</html>".into_response(),
        Mode::Wrong => {
            Json(serde_json::json!({"INPUT": input, "OUTPUT": "SOMETHING ELSE"})).into_response()
        }
        Mode::Ok if knobs.failure_rate > 0.0 && rand::random::<f64>() < knobs.failure_rate => {
            "shoutcloud is sick"
                .with_status(status(knobs.failure_status))
                .into_response()
        }
        Mode::Ok => {
            let output = input.to_uppercase();
            Json(serde_json::json!({"INPUT": input, "OUTPUT": output})).into_response()
        }
    }
}

#[handler]
async fn show(state: Data<&Arc<State>>) -> Json<serde_json::Value> {
    let knobs = state.knobs.read().await.clone();
    Json(serde_json::json!({"knobs": knobs, "calls": state.calls.load(Ordering::Relaxed)}))
}

#[handler]
async fn control(state: Data<&Arc<State>>, update: Json<KnobsUpdate>) -> Json<serde_json::Value> {
    {
        let mut knobs = state.knobs.write().await;
        if let Some(mode) = update.mode {
            knobs.mode = mode;
        }
        if let Some(latency) = update.latency_ms {
            knobs.latency_ms = latency;
        }
        if let Some(rate) = update.failure_rate {
            knobs.failure_rate = rate.clamp(0.0, 1.0);
        }
        if let Some(code) = update.failure_status {
            knobs.failure_status = code;
        }
        eprintln!("fake shoutcloud knobs now {knobs:?}");
    }
    let knobs = state.knobs.read().await.clone();
    Json(serde_json::json!({"knobs": knobs, "calls": state.calls.load(Ordering::Relaxed)}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    eprintln!("fake shoutcloud on {} with {:?}", cli.listen, cli.knobs);
    let state = Arc::new(State {
        knobs: RwLock::new(cli.knobs),
        calls: AtomicU64::new(0),
    });
    let app = Route::new()
        .at("/V1/SHOUT", post(shout))
        .at("/control", get(show).post(control))
        .data(state);
    Server::new(TcpListener::bind(cli.listen)).run(app).await
}
