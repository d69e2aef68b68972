//! The `shout-proxy` binary: parse settings, start telemetry, build, run until a stop signal.

use clap::Parser;
use shout_proxy::config::{Cli, Command};
use shout_proxy::{Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck) = cli.command {
        return healthcheck(&cli.settings).await;
    }
    let _telemetry = telemetry::init(&cli.settings)?;
    let application = Application::build(cli.settings).await?;
    application.run_until_stopped(stop_signal()).await
}

/// Resolves at the first SIGTERM or SIGINT.
async fn stop_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "listening for SIGINT failed");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "listening for SIGTERM failed");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
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
