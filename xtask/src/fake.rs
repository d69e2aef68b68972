//! The fake upstream of the harness: the release `fake_shoutcloud` example and its `/control`
//! API (modes and knobs are documented in `examples/fake_shoutcloud.rs`).

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::proc::{Proc, free_port, release_bin};

pub struct Fake {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    http: reqwest::Client,
}

impl Fake {
    /// Starts the fake with start-up flags (`--latency-ms 5`, ...), ready.
    pub async fn start(name: &str, args: &[&str]) -> Result<Fake> {
        let port = free_port()?;
        let mut argv = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut proc = Proc::spawn(name, &release_bin("examples/fake_shoutcloud")?, &argv)?;
        let base = format!("http://127.0.0.1:{port}");
        proc.wait_ready(&format!("{base}/control"), Duration::from_secs(15), false).await?;
        Ok(Fake { proc, base, http: reqwest::Client::new() })
    }

    /// The URL the proxy's `--upstream-url` takes.
    pub fn shout_url(&self) -> String {
        format!("{}/V1/SHOUT", self.base)
    }

    /// Resets every knob to its default, then applies `knobs` (`{"mode": "fail"}`, ...).
    pub async fn set(&self, knobs: Value) -> Result<Value> {
        let mut all = json!({"mode": "ok", "latency_ms": 0, "failure_rate": 0.0, "failure_status": 503, "knee": 0,
            "old_unicode": false, "lookalike": false, "retry_after": null, "reject_containing": null,
            "disagree_containing": null, "echo_errors": false, "reset": true});
        if let (Some(all), Some(knobs)) = (all.as_object_mut(), knobs.as_object()) {
            all.extend(knobs.clone());
        }
        let response = self.http.post(format!("{}/control", self.base)).json(&all).send().await?;
        if !response.status().is_success() {
            bail!("fake POST /control {all} answered {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// `GET /control`: knobs, `calls`, in-flight statistics.
    pub async fn control(&self) -> Result<Value> {
        Ok(self.http.get(format!("{}/control", self.base)).send().await?.error_for_status()?.json().await?)
    }

    /// Calls received since start.
    pub async fn calls(&self) -> Result<u64> {
        Ok(self.control().await?["calls"].as_u64().unwrap_or(0))
    }
}
