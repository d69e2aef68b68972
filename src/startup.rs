//! Building and running the application: both listeners bound up front (port 0 works, and the
//! real ports are reported), the pipeline assembled from settings, and the stop sequence.
//!
//! # Stopping without losing requests
//!
//! When the shutdown future resolves: `/readyz` turns 503 at once; the public port keeps
//! serving for the drain period so load balancers see the 503 and move away; then it stops
//! accepting, lets in-flight requests finish (up to the shutdown timeout) and the admin port
//! closes last, so probes and scrapes work to the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use poem::Server;
use poem::listener::{Acceptor, TcpAcceptor};
use tokio::sync::watch;

use crate::admin::{Readiness, admin_endpoint};
use crate::api::input::BodyLimits;
use crate::api::public_endpoint;
use crate::cache::AnswerCache;
use crate::config::Settings;
use crate::connections::GuardedAcceptor;
use crate::metrics::Metrics;
use crate::shout::Resolver;
use crate::upstream::breaker::{Breaker, BreakerConfig};
use crate::upstream::budget::RetryBudget;
use crate::upstream::client::{ClientConfig, UpstreamClient};
use crate::upstream::limit::ConcurrencyLimit;

/// A built, bound, not yet running service.
pub struct Application {
    /// The public listener, bound.
    public: TcpAcceptor,
    /// The admin listener, bound.
    admin: TcpAcceptor,
    /// The public address actually bound.
    public_addr: SocketAddr,
    /// The admin address actually bound.
    admin_addr: SocketAddr,
    /// The resolve pipeline.
    resolver: Resolver,
    /// Every metric.
    metrics: Arc<Metrics>,
    /// The `/readyz` switch.
    readiness: Readiness,
    /// The settings it was built from.
    settings: Settings,
}

fn local_addr(acceptor: &TcpAcceptor) -> anyhow::Result<SocketAddr> {
    acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .context("the listener has no socket address")
}

/// Builds the resolve pipeline from settings; each component registers its metrics on
/// `metrics`' registry.
pub fn build_resolver(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Resolver> {
    let registry = metrics.registry();
    let breaker = Breaker::new(
        &BreakerConfig {
            consecutive_failures: settings.breaker_consecutive_failures,
            min_success_rate: settings.breaker_min_success_rate,
            min_calls: settings.breaker_min_calls,
            window: Duration::from_secs(settings.breaker_window_secs),
            open: Duration::from_millis(settings.breaker_open_ms),
            max_open: Duration::from_millis(settings.breaker_max_open_ms),
        },
        registry,
    )?;
    let budget = RetryBudget::new(
        settings.retry_budget_ratio,
        settings.retry_budget_min_per_sec,
        Duration::from_secs(settings.retry_budget_window_secs),
    );
    let ca_pem = settings
        .upstream_ca_file
        .as_ref()
        .map(std::fs::read)
        .transpose()
        .context("--upstream-ca-file")?;
    let client = UpstreamClient::new(
        &ClientConfig {
            url: settings.upstream_url.parse().context("--upstream-url")?,
            attempt_timeout: Duration::from_millis(settings.upstream_timeout_ms),
            connect_timeout: Duration::from_millis(settings.upstream_connect_timeout_ms),
            retry_max: settings.retry_max,
            min_backoff: Duration::from_millis(settings.retry_min_backoff_ms),
            max_backoff: Duration::from_millis(settings.retry_max_backoff_ms),
            ca_pem,
            trace_propagation: settings.upstream_trace_propagation,
        },
        breaker,
        budget,
        registry,
    )
    .context("building the upstream client")?;
    let cache = AnswerCache::new(
        settings.cache_max_bytes,
        Duration::from_secs(settings.cache_ttl_secs),
        registry,
    )?;
    let limit = ConcurrencyLimit::new(settings.bulkhead, registry)?;
    Ok(Resolver::new(
        cache,
        limit,
        client,
        settings.deadline(),
        registry,
    )?)
}

impl Application {
    /// Validates settings, assembles the pipeline and binds both listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        crate::telemetry::install_propagator();
        let metrics = Arc::new(Metrics::new());
        let resolver = build_resolver(&settings, &metrics)?;
        let public = bind(settings.listen).await.context("binding --listen")?;
        let admin = bind(settings.admin_listen)
            .await
            .context("binding --admin-listen")?;
        Ok(Self {
            public_addr: local_addr(&public)?,
            admin_addr: local_addr(&admin)?,
            public,
            admin,
            resolver,
            metrics,
            readiness: Readiness::default(),
            settings,
        })
    }

    /// The public port actually bound.
    pub fn port(&self) -> u16 {
        self.public_addr.port()
    }

    /// The admin port actually bound.
    pub fn admin_port(&self) -> u16 {
        self.admin_addr.port()
    }

    /// Serves until `shutdown` resolves, then drains and stops (see the module docs).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Application {
            public,
            admin,
            resolver,
            metrics,
            readiness,
            settings,
            public_addr,
            admin_addr,
        } = self;
        tracing::info!(%public_addr, %admin_addr, upstream = %settings.upstream_url, "shout-proxy started");

        let (stop_public, public_stopping) = watch::channel(false);
        let (stop_admin, admin_stopping) = watch::channel(false);
        let idle = Duration::from_millis(settings.idle_timeout_ms);
        let grace = Some(Duration::from_millis(settings.shutdown_timeout_ms));

        let public = GuardedAcceptor::new(
            public,
            settings.max_connections,
            Duration::from_millis(settings.header_read_timeout_ms),
        );
        let public_server = Server::new_with_acceptor(public)
            .name("public")
            .idle_timeout(idle)
            .run_with_graceful_shutdown(
                public_endpoint(
                    resolver.clone(),
                    metrics.clone(),
                    BodyLimits {
                        max_bytes: settings.max_body_bytes,
                        read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
                    },
                ),
                wait_for(public_stopping),
                grace,
            );
        let admin_server = Server::new_with_acceptor(admin)
            .name("admin")
            .idle_timeout(idle)
            .run_with_graceful_shutdown(
                admin_endpoint(resolver, metrics, readiness.clone()),
                wait_for(admin_stopping),
                grace,
            );
        let public_task = tokio::spawn(public_server);
        let admin_task = tokio::spawn(admin_server);

        shutdown.await;
        readiness.drain();
        tracing::info!(
            drain_ms = settings.drain_ms,
            "stop signal received: /readyz is 503, draining"
        );
        tokio::time::sleep(settings.drain()).await;
        tracing::info!("drain period over: no new connections, finishing in-flight requests");
        let _ = stop_public.send(true);
        public_task
            .await
            .context("the public server task")?
            .context("the public server")?;
        let _ = stop_admin.send(true);
        admin_task
            .await
            .context("the admin server task")?
            .context("the admin server")?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpAcceptor> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    Ok(TcpAcceptor::from_tokio(listener)?)
}

async fn wait_for(mut stopping: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens when the service stops anyway.
    let _ = stopping.wait_for(|stop| *stop).await;
}
