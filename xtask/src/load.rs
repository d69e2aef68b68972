//! Load from a real tool: wrk (Debian's `wrk`, installed by `.ci/run`), driven by
//! `bench/lua/shout.lua`, whose `done()` prints one `BENCH_JSON {...}` line this module reads.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// What to send.
#[derive(Debug, Clone)]
pub struct Wrk<'a> {
    pub url: &'a str,
    pub duration: Duration,
    pub connections: u32,
    /// `same` (one fixed body) or `unique` (a new input per request).
    pub inputs: &'a str,
    /// JSON field: `data` for the proxy, `INPUT` for the fake upstream.
    pub field: &'a str,
    /// Put into every input, so inputs differ between runs.
    pub run: &'a str,
}

/// wrk's summary as the Lua `done()` prints it (the benchmark's results carry it as is).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Requests per second over the run.
    pub rps: f64,
    #[serde(skip_serializing)]
    pub duration_us: u64,
    /// Non-2xx answers plus socket errors (the benchmark adds the proxy's own non-2xx).
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
}

impl Wrk<'_> {
    /// Runs wrk to the end and returns its summary.
    pub async fn run(&self) -> Result<Summary> {
        Self::finish(self.spawn()?).await
    }

    /// Starts wrk; [`Wrk::finish`] reads its summary (interrupt it first with `kill -INT` to
    /// end it early: wrk prints its summary on SIGINT).
    pub fn spawn(&self) -> Result<tokio::process::Child> {
        let lua = crate::proc::root().join("bench/lua/shout.lua");
        let mut cmd = Command::new("wrk");
        let duration = format!("-d{}s", self.duration.as_secs_f64().round().max(1.0)); // wrk takes whole seconds
        cmd.args(["-t1", &format!("-c{}", self.connections), &duration, "--timeout", "10s", "-s"])
            .arg(Path::new(&lua))
            .arg(self.url)
            .env("BENCH_INPUTS", self.inputs)
            .env("BENCH_FIELD", self.field)
            .env("BENCH_RUN", self.run)
            .kill_on_drop(true);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.spawn().context("running wrk (apt-get install wrk)")
    }

    pub async fn finish(child: tokio::process::Child) -> Result<Summary> {
        let out = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("BENCH_JSON ")) else {
            bail!("wrk printed no summary ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        };
        Ok(serde_json::from_str(line)?)
    }
}
