//! The fake shoutcloud: a poem app the harness serves on its own runtime, steered by direct calls
//! ([`Fake::set`], [`Fake::control`]) instead of a second process and an HTTP control API.
//!
//! `POST /V1/SHOUT {"INPUT": s}` answers `{"INPUT": s, "OUTPUT": S}` like shoutcloud. Modes: `ok`,
//! `fail` (answer `failure_status`), `hang` (never answer), `malformed` (not JSON), `wrong` (valid
//! JSON whose OUTPUT is another string); `failure_rate` makes a share of the calls in `ok` mode fail.
//! Knobs for the hostile-upstream checks (each off by default): `knee` (with more than `knee` calls
//! in flight, latency grows as `latency_ms * (in_flight/knee)^2`; [`Fake::control`] reports the mean
//! and max in flight seen per call since the last [`Fake::set`]), `old_unicode` (`ɤ` stays as is,
//! as a Unicode version before U+A7CB would), `lookalike` (`K` answered as U+212A KELVIN SIGN, `ß`
//! as `ẞ`), `retry_after` (sent as `Retry-After` with every failure), `reject_containing` (inputs
//! holding it get 400 echoing the input), `disagree_containing` (inputs holding it get a wrong
//! OUTPUT), `echo_errors` (failure bodies echo the input, up to 1 MiB).
//!
//! The knobs' defaults are written once, in their `#[arg]` attributes: `Knobs::default()` parses
//! an empty command line, and serde fills missing fields from it. A standalone fake for demos
//! serves the same app, with `/control` over HTTP (a POST sets the knobs as [`Fake::set`] does):
//!
//! ```text
//! cargo xtask fake --listen 127.0.0.1:9000 --failure-rate 0.3
//! curl -X POST -H 'Content-Type: application/json' localhost:9000/control -d '{"mode": "fail"}'
//! curl localhost:9000/control   # knobs, calls, in-flight statistics
//! ```
//!
//! A panic in a handler answers 500 and is counted ([`Fake::assert_no_panic`]), so it still fails
//! the check that ran the fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::middleware::CatchPanic;
use poem::web::{Data, Json};
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, Server, get, handler, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{RwLock, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ok,
    Fail,
    Hang,
    Malformed,
    Wrong,
}

/// The knobs: start-up flags, and the JSON fields of [`Fake::set`] and `POST /control`.
#[derive(Debug, Clone, Serialize, Deserialize, Parser)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
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

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs::parse_from(["fake"])
    }
}

#[derive(Default)]
struct State {
    knobs: RwLock<Knobs>,
    /// Calls received since start (never reset: the checks count differences).
    calls: AtomicU64,
    in_flight: AtomicU64,
    /// In flight seen per call since the last [`Fake::set`].
    seen: Seen,
    /// Handler panics caught by `CatchPanic`.
    panics: AtomicU64,
}

/// Calls in flight as each call saw them on arrival.
#[derive(Default)]
struct Seen {
    sum: AtomicU64,
    samples: AtomicU64,
    max: AtomicU64,
}

impl Seen {
    fn all(&self) -> [&AtomicU64; 3] {
        [&self.sum, &self.samples, &self.max]
    }
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
    Json(json!({"INPUT": input, "OUTPUT": output})).into_response()
}

#[handler]
async fn shout(state: Data<&Arc<State>>, body: Json<ShoutIn>) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let in_flight = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = InFlight(&state.in_flight);
    state.seen.sum.fetch_add(in_flight, Ordering::Relaxed);
    state.seen.samples.fetch_add(1, Ordering::Relaxed);
    state.seen.max.fetch_max(in_flight, Ordering::Relaxed);
    let knobs = state.knobs.read().await.clone();
    let mut latency = knobs.latency_ms as f64;
    if knobs.knee > 0 && in_flight > knobs.knee {
        latency *= (in_flight as f64 / knobs.knee as f64).powi(2);
    }
    if latency > 0.0 {
        tokio::time::sleep(Duration::from_millis(latency.min(3_600_000.0) as u64)).await;
    }
    let input = body.0.input;
    let has = |n: &Option<String>| n.as_deref().is_some_and(|n| !n.is_empty() && input.contains(n));
    let echo: String = input.chars().take(1 << 20).collect();
    let fail = |code: u16| {
        let body = if knobs.echo_errors { echo.as_str() } else { "shoutcloud is sick" };
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = body.to_owned().with_status(status).into_response();
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
        Mode::Ok if knobs.failure_rate > 0.0 && fastrand::f64() < knobs.failure_rate => fail(knobs.failure_status),
        Mode::Ok if has(&knobs.disagree_containing) => answer(&input, &format!("{} DISAGREES", input.to_uppercase())),
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

impl State {
    /// Every knob at its default, then the fields of `knobs`; the in-flight statistics reset.
    async fn set(&self, knobs: Value) -> Result<Value> {
        let knobs: Knobs = serde_json::from_value(knobs)?;
        *self.knobs.write().await = Knobs { failure_rate: knobs.failure_rate.clamp(0.0, 1.0), ..knobs };
        self.seen.all().iter().for_each(|n| n.store(0, Ordering::Relaxed));
        Ok(self.report().await)
    }

    /// Knobs, calls and the in-flight statistics.
    async fn report(&self) -> Value {
        let knobs = self.knobs.read().await.clone();
        let [sum, samples, max] = self.seen.all().map(|n| n.load(Ordering::Relaxed));
        let now = self.in_flight.load(Ordering::Relaxed);
        let in_flight = json!({"now": now, "mean": sum as f64 / samples.max(1) as f64, "max": max, "samples": samples});
        json!({"knobs": knobs, "calls": self.calls.load(Ordering::Relaxed), "in_flight": in_flight})
    }
}

#[handler]
async fn show(state: Data<&Arc<State>>) -> Json<Value> {
    Json(state.report().await)
}

#[handler]
async fn control(state: Data<&Arc<State>>, knobs: Json<Value>) -> poem::Result<Json<Value>> {
    let report = state.set(knobs.0).await.map_err(|e| poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST));
    Ok(Json(report?))
}

pub struct Fake {
    name: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<State>,
    /// Dropping it stops the server and ends its connections, hung calls included.
    _stop: oneshot::Sender<()>,
}

impl Fake {
    /// Serves the fake on a free loopback port with start-up flags (`--latency-ms 5`, ...).
    pub async fn start(name: &str, args: &[&str]) -> Result<Fake> {
        let knobs = Knobs::try_parse_from(std::iter::once("fake").chain(args.iter().copied()))?;
        Fake::serve(name, "127.0.0.1:0", knobs).await
    }

    async fn serve(name: &str, listen: &str, knobs: Knobs) -> Result<Fake> {
        let state = Arc::new(State { knobs: RwLock::new(knobs), ..Default::default() });
        let counted = state.clone();
        let app =
            Route::new().at("/V1/SHOUT", post(shout)).at("/control", get(show).post(control)).data(state.clone()).with(
                CatchPanic::new().with_handler(move |_| {
                    counted.panics.fetch_add(1, Ordering::Relaxed);
                    StatusCode::INTERNAL_SERVER_ERROR
                }),
            );
        let (base, stop) = serve(listen, app).await?;
        Ok(Fake { name: name.to_owned(), base, state, _stop: stop })
    }

    /// The URL the proxy's `--upstream-url` takes.
    pub fn shout_url(&self) -> String {
        format!("{}/V1/SHOUT", self.base)
    }

    /// Every knob at its default, then the fields of `knobs` (`{"mode": "fail"}`, ...); returns
    /// what [`Fake::control`] does.
    pub async fn set(&self, knobs: Value) -> Result<Value> {
        self.state.set(knobs).await
    }

    /// Knobs, `calls`, `in_flight {now, mean, max, samples}`.
    pub async fn control(&self) -> Result<Value> {
        Ok(self.state.report().await)
    }

    /// Calls received since start.
    pub async fn calls(&self) -> Result<u64> {
        Ok(self.state.calls.load(Ordering::Relaxed))
    }

    /// Fails when a handler panicked.
    pub fn assert_no_panic(&self) -> Result<()> {
        match self.state.panics.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => bail!("{}: {n} handler panic(s)", self.name),
        }
    }
}

/// Serves `app` on `listen` (port 0: a free one) on the harness's runtime; returns its
/// `http://ADDR` and a sender whose drop stops the server and ends its connections.
pub async fn serve(listen: &str, app: impl Endpoint + 'static) -> Result<(String, oneshot::Sender<()>)> {
    let acceptor = TcpListener::bind(listen).into_acceptor().await?;
    let Some(addr) = acceptor.local_addr().first().and_then(|a| a.as_socket_addr().copied()) else {
        bail!("no address bound on {listen}");
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async { stopped.await.unwrap_or(()) };
    tokio::spawn(Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app, stopped, Some(Duration::ZERO)));
    Ok((format!("http://{addr}"), stop))
}

/// `cargo xtask fake`: the fake alone on `listen` until interrupted.
pub async fn run(listen: &str, knobs: Knobs) -> Result<()> {
    eprintln!("fake shoutcloud on {listen} with {knobs:?}");
    let _fake = Fake::serve("fake", listen, knobs).await?;
    std::future::pending().await
}
