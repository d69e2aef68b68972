//! Processes the harness starts: the release `shout-proxy` and any external server
//! (redis-server, prometheus, alertmanager) on a free loopback port with a generated config file.
//!
//! Every process logs to a file under `target/xtask/` and is killed when its handle drops, so
//! nothing outlives a failed check. Readiness is "a URL answers 2xx before a deadline", and
//! [`Proc::assert_no_panic`] reads the log afterwards: a panic is a failure even when every
//! answer was right.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// The repository root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/xtask/<sub>`, created.
pub fn out_dir(sub: &str) -> Result<PathBuf> {
    let dir = root().join("target/xtask").join(sub);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A loopback port nothing listens on right now. The listener is dropped before the child binds,
/// a small race the children's own bind error would report.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A release binary of this workspace (`shout-proxy`): next to the running xtask, which
/// `cargo xtask` builds in release into the same target directory.
pub fn release_bin(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!("{} is missing: cargo build --release --bin shout-proxy", path.display());
    }
    Ok(path)
}

/// A running child process, killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program args` with stdout and stderr appended to `target/xtask/logs/<name>.log`
    /// and the `SHOUT_*` / `OTEL_*` variables removed, so only the given flags configure it.
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        let log = out_dir("logs")?.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).kill_on_drop(true);
        let inherited = std::env::vars_os().map(|(key, _)| key.to_string_lossy().into_owned());
        for key in inherited.filter(|key| key.starts_with("SHOUT_") || key.starts_with("OTEL_")) {
            cmd.env_remove(key);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc { name: name.to_owned(), log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Kills the process and waits until it is gone (a drop only sends the signal).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Fails when the log shows a panic.
    pub fn assert_no_panic(&self) -> Result<()> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        match log.lines().find(|line| line.contains("panicked")) {
            Some(line) => bail!("{} panicked: {line}", self.name),
            None => Ok(()),
        }
    }

    /// Resident and peak resident memory (VmRSS, VmHWM) in MiB, from /proc; zeros once it is gone.
    pub fn rss_mib(&self) -> (f64, f64) {
        rss_mib(self.pid())
    }
}

/// Resident and peak resident memory (VmRSS, VmHWM) of `pid` in MiB, from /proc; zeros once it is gone.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = procfs::process::Process::new(pid as i32).and_then(|p| p.status());
    status.map_or((0.0, 0.0), |s| (s.vmrss.unwrap_or(0) as f64 / 1024.0, s.vmhwm.unwrap_or(0) as f64 / 1024.0))
}

/// User + system CPU seconds of `pid`, from /proc; zero once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = procfs::process::Process::new(pid as i32).and_then(|p| p.stat());
    stat.map_or(0.0, |s| (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// The service under test, with its ports.
pub struct Proxy {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` of the public API.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin port (`/readyz`, `/metrics`, `/status`).
    pub admin: String,
}

impl Proxy {
    /// Starts the release `shout-proxy` against `upstream_url` with `extra` flags, ready.
    pub async fn start(name: &str, upstream_url: &str, extra: &[&str]) -> Result<Proxy> {
        Self::start_on(name, upstream_url, extra, None).await
    }

    /// As [`Proxy::start`], pinned to `cpus` (`taskset -c`, which execs: the pid is the proxy's).
    pub async fn start_on(name: &str, upstream_url: &str, extra: &[&str], cpus: Option<&str>) -> Result<Proxy> {
        let bin = release_bin("shout-proxy")?.display().to_string();
        let listen = format!("127.0.0.1:{}", free_port()?);
        let flags =
            ["--listen", &listen, "--admin-listen=127.0.0.1:@PORT@", "--upstream-url", upstream_url, "--drain-ms", "0"];
        let pin = cpus.map_or(vec![], |cpus| vec!["taskset", "-c", cpus]);
        let command = [&pin[..], &[bin.as_str()], &flags, extra].concat();
        let admin = External::start(name, command[0], &command[1..], "", Some("/readyz"), None).await?;
        Ok(Proxy { url: format!("http://{listen}"), admin: admin.url(), proc: admin.proc })
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> Result<crate::prom::Metrics> {
        crate::prom::scrape(&format!("{}/metrics", self.admin)).await
    }

    /// Shouts unique inputs until `/status` reads the breaker open (at most 50); returns when the
    /// request that tripped it started.
    pub async fn trip_breaker(&self, tag: &str) -> Result<Instant> {
        let shouter = crate::client::Shouter::new(&self.url)?;
        for i in 0..50 {
            let started = Instant::now();
            shouter.shout(i, &format!("trip {tag} #{i}")).await;
            if self.status().await?["pipeline"]["breaker"]["state"] == "open" {
                return Ok(started);
            }
        }
        bail!("{}: the breaker did not open after 50 requests", self.proc.name)
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        Ok(reqwest::get(format!("{}/status", self.admin)).await?.error_for_status()?.json().await?)
    }
}

/// An external server (or the service itself: [`Proxy::start_on`] passes its admin port) on a
/// loopback port (a free one unless given): `config` is written to
/// `target/xtask/<name>/config` with `@PORT@` and `@DIR@` replaced, `args` get the same
/// replacements, and the server is ready when `ready_path` answers 2xx over HTTP (pass `None`
/// for a non-HTTP server such as redis-server: then ready is "the port accepts").
pub struct External {
    pub proc: Proc,
    pub port: u16,
    /// `http://127.0.0.1:PORT`, or `redis://127.0.0.1:PORT/` for redis-server.
    url: String,
}

impl External {
    /// `port`: `None` for a free one.
    pub async fn start(
        name: &str,
        program: &str,
        args: &[&str],
        config: &str,
        ready_path: Option<&str>,
        port: Option<u16>,
    ) -> Result<External> {
        let port = port.map_or_else(free_port, Ok)?;
        let dir = out_dir(name)?;
        let fill = |s: &str| s.replace("@PORT@", &port.to_string()).replace("@DIR@", &dir.display().to_string());
        std::fs::write(dir.join("config"), fill(config))?;
        let args: Vec<String> = args.iter().map(|a| fill(a)).collect();
        let mut proc = Proc::spawn(name, Path::new(program), &args)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
        let url = format!("http://127.0.0.1:{port}{}", ready_path.unwrap_or_default());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = proc.child.try_wait()? {
                bail!("{name} exited ({status}) before it was ready; see {}", proc.log.display());
            }
            let ready = match ready_path {
                Some(_) => http.get(&url).send().await.is_ok_and(|r| r.status().is_success()),
                None => tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
            };
            if ready {
                return Ok(External { proc, port, url: format!("http://127.0.0.1:{port}") });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{name} not ready at {url} after 30 s; see {}", proc.log.display())
    }

    /// Debian's `redis-server` on a free port, no persistence.
    pub async fn redis(name: &str) -> Result<External> {
        External::redis_on(name, free_port()?).await
    }

    /// As [`External::redis`], on `port`: a restart where its clients already point.
    pub async fn redis_on(name: &str, port: u16) -> Result<External> {
        let args = ["--port", "@PORT@", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let redis = External::start(name, "redis-server", &args, "", None, Some(port)).await?;
        Ok(External { url: format!("redis://127.0.0.1:{port}/"), ..redis })
    }

    /// Debian's `prometheus` with `config` (see [`External::start`] for `@DIR@`), `extra` flags.
    pub async fn prometheus(name: &str, config: &str, extra: &[&str]) -> Result<External> {
        let flags = ["--config.file=@DIR@/config", "--storage.tsdb.path=@DIR@/data", "--log.level=warn"];
        let flags = [&flags[..], &["--web.listen-address=127.0.0.1:@PORT@"], extra].concat();
        External::start(name, "prometheus", &flags, config, Some("/-/ready"), None).await
    }

    /// `http://127.0.0.1:PORT`, or `redis://127.0.0.1:PORT/` for redis-server (the scheme is
    /// set by the starter, never guessed from a name: a proxy may be named after its Redis).
    pub fn url(&self) -> String {
        self.url.clone()
    }
}
