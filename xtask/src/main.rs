//! The harness: every check that drives shout-proxy's release binaries from outside.
//!
//! # Layout
//!
//! - `proc`: processes (service, external servers), free ports, readiness, logs;
//! - `prom`: the Prometheus text reader, Prometheus durations compressed;
//! - `fake`: the fake upstream, served in-process, and its knobs;
//! - `client`: HTTP shouts checked against the crate's transform, raw TCP clients;
//! - `load`: wrk; `chart`: plotters;
//! - the commands: `drill` (fault drill), `hostile` (hostile clients and upstream), `bench`
//!   (benchmark), `promcheck` (the alerts firing and resolved on a
//!   real Prometheus and Alertmanager, every dashboard and alert query), `fleet` (instances
//!   sharing a real Redis), `autoscale` (the HPA simulated), `with` (outside tools);
//! - `Targets`: every command's targets, printed as judged, reported as a table.
//!
//! Each command exits 0 when every target is met, 1 when one is missed, 2 when it broke; `bench`
//! reports misses and exits 0 unless `--strict` (a shared machine's noise is not a regression).

mod autoscale;
mod bench;
mod chart;
mod client;
mod drill;
mod fake;
mod fleet;
mod hostile;
mod load;
mod proc;
mod prom;
mod promcheck;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Checks that drive shout-proxy's release binaries from outside")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The fault drill: every fault mode, recovery; writes target/xtask/fault-drill.md.
    Drill(drill::Args),
    /// Hostile clients and upstream: floods, trickles, odd bodies and answers; writes target/xtask/hostile-drill.md.
    Hostile,
    /// The load benchmark with wrk; writes target/xtask/bench/results.{json,md} and the chart.
    Bench(bench::Args),
    /// The alerts silent, firing, resolved on real Prometheus and Alertmanager; every dashboard and alert query.
    Promcheck(promcheck::Args),
    /// Runs an outside tool against a fresh shout-proxy (`BASE_URL`) and fake upstream (`FAKE_URL`);
    /// fails when the tool does, a process panics or a first shout is wrong.
    With {
        /// No fake: the upstream is a closed port, so the fallback answers.
        #[arg(long)]
        no_fake: bool,
        /// The tool and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Three instances share a real redis-server; Redis paused, killed, restarted; the adaptive limit at a knee.
    Fleet,
    /// The HPA simulated on real replicas and a real Prometheus (docs/autoscaling.md).
    Autoscale(autoscale::Args),
    /// The fake shoutcloud alone, for demos and developers; `GET/POST /control` read and set its knobs.
    Fake {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        #[command(flatten)]
        knobs: fake::Knobs,
    },
}

/// A missed target (exit 1), as opposed to a broken check (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("targets missed:\n  {}", .0.join("\n  "))]
pub struct Missed(pub Vec<String>);

/// A markdown table; the header and every row are cells joined by `|`.
pub fn table(header: &str, rows: &[String]) -> String {
    let rule = header.split('|').map(|_| "---").collect::<Vec<_>>().join("|");
    std::iter::once(header)
        .chain([rule.as_str()])
        .chain(rows.iter().map(String::as_str))
        .map(|r| format!("| {} |\n", r.replace('|', " | ")))
        .collect()
}

/// The targets of one command, each printed as it is judged; [`Targets::report`] writes them as
/// a table and [`Targets::verdict`] fails with [`Missed`] when one was missed.
pub struct Targets {
    tag: &'static str,
    list: Vec<(String, bool, String)>,
}

impl Targets {
    pub fn new(tag: &'static str) -> Targets {
        Targets { tag, list: Vec::new() }
    }

    pub fn check(&mut self, target: impl Into<String>, ok: bool, measured: impl Into<String>) {
        let (target, measured) = (target.into(), measured.into());
        eprintln!("[{}] {} {target}: {measured}", self.tag, if ok { "PASS" } else { "FAIL" });
        self.list.push((target, ok, measured));
    }

    /// `head`, a blank line and the targets' table: printed, written to `target/xtask/<file>`.
    pub fn report(&self, head: &str, file: &str) -> anyhow::Result<String> {
        let rows: Vec<String> =
            self.list.iter().map(|(t, ok, m)| format!("{t}|{}|{m}", if *ok { "PASS" } else { "**FAIL**" })).collect();
        let report = format!("{head}\n\n{}", table("target|result|measured", &rows));
        println!("{report}");
        std::fs::write(proc::out_dir("")?.join(file), &report)?;
        Ok(report)
    }

    pub fn verdict(&self) -> anyhow::Result<()> {
        let missed: Vec<String> = self.list.iter().filter(|t| !t.1).map(|(t, _, m)| format!("{t}: {m}")).collect();
        if missed.is_empty() { Ok(()) } else { Err(Missed(missed).into()) }
    }
}

/// The one process manager for outside tools (schemathesis, Chromium): they get the URLs, the
/// harness starts, checks and stops the binaries.
async fn with(no_fake: bool, command: &[String]) -> anyhow::Result<()> {
    let fake = if no_fake { None } else { Some(fake::Fake::start("with-fake", &[]).await?) };
    let closed = format!("http://127.0.0.1:{}/V1/SHOUT", proc::free_port()?);
    let proxy = proc::Proxy::start("with-proxy", &fake.as_ref().map_or(closed, fake::Fake::shout_url), &[]).await?;
    let first = client::Shouter::new(&proxy.url)?.shout(0, "first shout").await;
    if !first.correct || first.source != if no_fake { "fallback" } else { "upstream" } {
        anyhow::bail!("a first shout answered by {:?}: {}", first.source, first.error);
    }
    eprintln!("[with] shout-proxy on {}, the first shout answered by {}", proxy.url, first.source);
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).env("BASE_URL", &proxy.url).envs(fake.as_ref().map(|f| ("FAKE_URL", &f.base)));
    let status = cmd.status().await?;
    proxy.proc.assert_no_panic()?;
    if let Some(f) = &fake {
        f.assert_no_panic()?;
        eprintln!("[with] the fake shoutcloud saw: {}", f.control().await?);
    }
    if status.success() { Ok(()) } else { Err(Missed(vec![format!("{} exited with {status}", command[0])]).into()) }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shout_proxy::install_tls_provider(); // reqwest is built without a provider of its own
    let result = match Cli::parse().command {
        Cmd::Drill(args) => drill::run(args).await,
        Cmd::Hostile => hostile::run().await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Promcheck(args) => promcheck::run(args).await,
        Cmd::With { no_fake, command } => with(no_fake, &command).await,
        Cmd::Fleet => fleet::run().await,
        Cmd::Autoscale(args) => autoscale::run(args).await,
        Cmd::Fake { listen, knobs } => fake::run(&listen, knobs).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<Missed>() => {
            eprintln!("FAIL: {e}");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("the check broke: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
