//! The real `shout-proxy` binary as a child process, for the tests that need what only a process
//! has: stop signals and exit codes (`tests/api/rollout.rs`) and its own global telemetry
//! (`tests/traces/otlp.rs`). Every other test runs the app in-process (`helpers::spawn_app`).
//!
//! One place owns the child's life: its ports, its flags, an environment cleared of `SHOUT_*` and
//! `OTEL_*` (only the test's flags configure it), readiness on `/readyz`, SIGTERM, and waiting for
//! the exit with what it wrote. Output is either discarded (shown instead with `TEST_LOG=1`) or
//! read as it comes by a task per stream, so a chatty child never blocks on a full pipe, and kept
//! up to [`OUTPUT_LIMIT`] bytes a stream.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use wiremock::MockServer;

/// Bytes of each output stream kept; the rest is read and counted, so the child never blocks.
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// How long the binary may take to answer 200 on `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A loopback port nothing listens on right now. The probe listener is dropped before the child
/// binds, so another process could take the port in between: the child then exits on its bind
/// error and [`Launch::start`] reports that exit at once rather than timing out. (The binary
/// reports no port it chose, which is what binding port 0 in the child would need.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What becomes of the child's stdout and stderr.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Thrown away, or inherited when `TEST_LOG` is set so a failing test shows the logs.
    Discard,
    /// Read as it comes and returned by [`Proxy::exit_within`].
    Capture,
}

/// How to start the binary: the upstream, extra flags and environment, and its output.
pub struct Launch {
    /// `--upstream-url`.
    upstream_url: String,
    /// Flags after the listeners and the upstream.
    flags: Vec<String>,
    /// Variables set for the child only, after the `SHOUT_*` / `OTEL_*` ones are removed.
    env: Vec<(String, String)>,
    /// Where stdout and stderr go.
    output: Output,
}

impl Launch {
    /// The binary against the fake shoutcloud `upstream`, output discarded.
    pub fn new(upstream: &MockServer) -> Self {
        Self {
            upstream_url: format!("{}/V1/SHOUT", upstream.uri()),
            flags: Vec::new(),
            env: Vec::new(),
            output: Output::Discard,
        }
    }

    /// Adds command-line flags, e.g. `["--drain-ms", "1500"]`.
    pub fn flags<const N: usize>(mut self, flags: [&str; N]) -> Self {
        self.flags.extend(flags.map(str::to_owned));
        self
    }

    /// Sets an environment variable for the child only.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Discards or captures stdout and stderr.
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// Spawns the binary on two free ports and returns once `/readyz` answers 200; panics when
    /// the child exits first or is not ready within 10 s.
    pub async fn start(self) -> Proxy {
        shout_proxy::install_tls_provider();
        let (port, admin) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_shout-proxy"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--upstream-url", &self.upstream_url])
            .args(&self.flags)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("SHOUT_") || key.starts_with("OTEL_") {
                command.env_remove(key.as_ref());
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let (stdout, stderr) = match self.output {
            Output::Capture => (Stdio::piped(), Stdio::piped()),
            Output::Discard if std::env::var_os("TEST_LOG").is_some() => {
                (Stdio::inherit(), Stdio::inherit())
            }
            Output::Discard => (Stdio::null(), Stdio::null()),
        };
        let mut child = command.stdout(stdout).stderr(stderr).spawn().unwrap();
        let captured = match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => Some((collect(stdout), collect(stderr))),
            _ => None,
        };
        let mut proxy = Proxy {
            child,
            public: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin}"),
            captured,
        };
        proxy.wait_ready().await;
        proxy
    }
}

/// The running binary, killed if dropped before it exits.
pub struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT` of the public listener.
    pub public: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// The readers of stdout and stderr, when captured.
    captured: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

/// How the binary ended.
pub struct Exit {
    pub status: ExitStatus,
    /// Its stdout then its stderr; empty unless captured.
    pub output: String,
}

impl Proxy {
    /// The status `/readyz` answers, `None` when nothing answers.
    pub async fn readyz(&self, client: &reqwest::Client) -> Option<u16> {
        client
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let started = Instant::now();
        while self.readyz(&client).await != Some(200) {
            if let Some(status) = self.child.try_wait().unwrap() {
                let output = self.collect_output().await;
                panic!("the binary exited before it was ready: {status:?}\n{output}");
            }
            assert!(started.elapsed() < READY_WITHIN, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (a stop signal; the second one during the drain exits at once).
    pub async fn sigterm(&self) {
        let pid = self.child.id().expect("the child runs").to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(kill.success());
    }

    /// Waits for the exit and the end of its output; `None` when that takes longer than `limit`
    /// (the child is then killed as the handle drops).
    pub async fn exit_within(mut self, limit: Duration) -> Option<Exit> {
        tokio::time::timeout(limit, async {
            let status = self.child.wait().await.unwrap();
            let output = self.collect_output().await;
            Exit { status, output }
        })
        .await
        .ok()
    }

    /// SIGTERM, then a clean exit within 15 s; returns what it wrote.
    pub async fn stop(self) -> String {
        self.sigterm().await;
        let exit = self
            .exit_within(Duration::from_secs(15))
            .await
            .expect("exits within 15 s of SIGTERM");
        assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.output);
        exit.output
    }

    /// Stdout then stderr as read so far; the readers end when the child closes its pipes.
    async fn collect_output(&mut self) -> String {
        let Some((stdout, stderr)) = self.captured.take() else {
            return String::new();
        };
        stdout.await.unwrap() + &stderr.await.unwrap()
    }
}

/// Reads `stream` to its end on a task, keeping the first [`OUTPUT_LIMIT`] bytes.
fn collect(mut stream: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<String> {
    tokio::spawn(async move {
        let (mut kept, mut dropped) = (Vec::new(), 0usize);
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_LIMIT.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&buffer[..room]);
                    dropped += n - room;
                }
            }
        }
        let mut text = String::from_utf8_lossy(&kept).into_owned();
        if dropped > 0 {
            text.push_str(&format!("\n[{dropped} more bytes not kept]\n"));
        }
        text
    })
}
