//! The harness: every check that drives shout-proxy's release binaries from outside.
//!
//! # Layout
//!
//! - `proc`: processes (service, fake upstream, external servers), free ports, readiness, logs;
//! - `prom`: the Prometheus text reader and metric-value assertions;
//! - `fake`: the fake upstream (`examples/fake_shoutcloud.rs`) and its `/control` API;
//! - `client`: HTTP shouts checked against the crate's transform, raw TCP clients;
//! - `load`: wrk; `chart`: plotters;
//! - the commands: `drill` (fault drill and slow clients), `bench` (benchmark and `reference`,
//!   its ceiling), `promcheck` (every dashboard and alert query on a real Prometheus).
//!
//! Each command exits 0 when every target is met, 1 when one is missed, 2 when it broke.

mod autoscale;
mod bench;
mod chart;
mod client;
mod drill;
mod fake;
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
    /// The fault drill: every fault mode, recovery, slow clients; writes target/xtask/fault-drill.md.
    Drill(drill::Args),
    /// The load benchmark with wrk; writes target/xtask/bench/results.{json,md} and the chart.
    Bench(bench::Args),
    /// The bare reference handler, the benchmark's ceiling (poem + the crate's transform).
    Reference {
        /// Address to listen on.
        #[arg(default_value = "127.0.0.1:18090")]
        listen: String,
    },
    /// Every dashboard and alert query parses and returns data on a real Prometheus.
    Promcheck(promcheck::Args),
    /// The HPA simulated on real replicas and a real Prometheus (docs/autoscaling.md).
    Autoscale(autoscale::Args),
}

/// A missed target (exit 1), as opposed to a broken check (exit 2).
#[derive(Debug)]
pub struct Missed(pub Vec<String>);

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "targets missed:\n  {}", self.0.join("\n  "))
    }
}

impl std::error::Error for Missed {}

/// A markdown table; the header and every row are cells joined by `|`.
pub fn table(header: &str, rows: &[String]) -> String {
    let rule = header.split('|').map(|_| "---").collect::<Vec<_>>().join("|");
    std::iter::once(header)
        .chain([rule.as_str()])
        .chain(rows.iter().map(String::as_str))
        .map(|r| format!("| {} |\n", r.replace('|', " | ")))
        .collect()
}

/// Targets as a table, and the missed ones as an error.
pub fn verdict(targets: &[(String, bool, String)]) -> (String, Result<(), Missed>) {
    let rows: Vec<String> =
        targets.iter().map(|(t, ok, m)| format!("{t}|{}|{m}", if *ok { "PASS" } else { "**FAIL**" })).collect();
    let missed: Vec<String> = targets.iter().filter(|t| !t.1).map(|(t, _, m)| format!("{t}: {m}")).collect();
    (table("target|result|measured", &rows), if missed.is_empty() { Ok(()) } else { Err(Missed(missed)) })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::Drill(args) => drill::run(args).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Reference { listen } => bench::reference(&listen).await,
        Cmd::Promcheck(args) => promcheck::run(args).await,
        Cmd::Autoscale(args) => autoscale::run(args).await,
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
