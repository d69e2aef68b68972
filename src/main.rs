//! The `shout-proxy` binary: parse settings, start telemetry, build, run until a stop signal.
//!
//! The first SIGTERM/SIGINT starts the drain; a second one, during the drain, exits at once
//! (status 130) without waiting for in-flight requests: an operator who asks twice means it.

use clap::Parser;
use shout_proxy::config::{Cli, Command};
use shout_proxy::{Application, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shout_proxy::install_tls_provider();
    if let Some(Command::Healthcheck) = cli.command {
        return healthcheck(&cli.settings).await;
    }
    let _telemetry = telemetry::init(&cli.settings)?;
    let application = Application::build(cli.settings).await?;
    let stop = CancellationToken::new();
    let mut signals = StopSignals::new();
    let signals = tokio::spawn({
        let stop = stop.clone();
        async move {
            signals.next().await;
            stop.cancel();
            signals.next().await;
            tracing::warn!("second stop signal: exiting without finishing in-flight requests");
            std::process::exit(130);
        }
    });
    let result = application
        .run_until_stopped(async move { stop.cancelled().await })
        .await;
    signals.abort();
    result
}

/// SIGTERM and SIGINT, listened to from start to exit so that no signal falls between two
/// waits.
struct StopSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::error!(error = %e, signal = name, "listening for a stop signal failed");
                    None
                }
            };
            Self {
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(self.terminate.as_mut()) => {}
                () = recv(self.interrupt.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "listening for SIGINT failed");
            std::future::pending::<()>().await;
        }
    }
}

/// `shout-proxy healthcheck`: GET the admin port's `/livez` on loopback.
async fn healthcheck(settings: &shout_proxy::Settings) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}/livez", settings.admin_listen.port());
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?
        .get(&url)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(())
}
