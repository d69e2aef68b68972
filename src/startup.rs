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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{Readiness, admin_endpoint};
use crate::api::input::BodyLimits;
use crate::api::observe::HttpMetrics;
use crate::api::public_endpoint;
use crate::cache::AnswerCache;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::server::{ConnectionMetricFamilies, ListenerConfig, ListenerName};
use crate::shared_cache::{SharedCache, SharedCacheConfig};
use crate::shout::Resolver;
use crate::upstream::breaker::{Breaker, BreakerConfig};
use crate::upstream::budget::RetryBudget;
use crate::upstream::client::{ClientConfig, UpstreamClient};
use crate::upstream::limit::{AdaptiveLimit, LimitConfig};

/// Connections the admin port accepts at once: probes and scrapes need a handful.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// A built, bound, not yet running service.
pub struct Application {
    /// The public listener, bound.
    public: TcpListener,
    /// The admin listener, bound.
    admin: TcpListener,
    /// The public address actually bound.
    public_addr: SocketAddr,
    /// The admin address actually bound.
    admin_addr: SocketAddr,
    /// The resolve pipeline.
    resolver: Resolver,
    /// The pipeline's metrics and the shared registry.
    metrics: Arc<Metrics>,
    /// The public port's HTTP metrics.
    http_metrics: HttpMetrics,
    /// Both listeners' connection metrics.
    connection_metrics: ConnectionMetricFamilies,
    /// The `/readyz` switch.
    readiness: Readiness,
    /// The settings it was built from.
    settings: Settings,
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
    let mut limit_config = LimitConfig::new(settings.upstream_limit_min, settings.bulkhead)
        .context("--upstream-limit-min, --bulkhead")?;
    limit_config.initial = settings
        .upstream_limit_initial
        .clamp(limit_config.floor, limit_config.ceiling);
    let limit = AdaptiveLimit::new(limit_config, registry)?;
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
        limit,
        registry,
    )
    .context("building the upstream client")?;
    let cache = AnswerCache::new(
        settings.cache_max_bytes,
        Duration::from_secs(settings.cache_ttl_secs),
        registry,
    )?;
    let shared = settings
        .redis_url
        .as_ref()
        .map(|url| {
            let config = SharedCacheConfig {
                get_timeout: Duration::from_millis(settings.redis_timeout_ms),
                ttl: Duration::from_secs(settings.redis_ttl_secs),
                ..SharedCacheConfig::new(url.as_str())
            };
            SharedCache::new(config, registry).context("--redis-url")
        })
        .transpose()?;
    Ok(Resolver::new(
        cache,
        shared,
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
        let registry = metrics.registry();
        let http_metrics =
            HttpMetrics::register(registry).context("registering the HTTP metrics")?;
        let connection_metrics = ConnectionMetricFamilies::register(registry)
            .context("registering the connection metrics")?;
        crate::telemetry::register_metrics(registry)
            .context("registering the trace export metrics")?;
        let resolver = build_resolver(&settings, &metrics)?;
        let public = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding --listen {}", settings.listen))?;
        let admin = TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| format!("binding --admin-listen {}", settings.admin_listen))?;
        Ok(Self {
            public_addr: public
                .local_addr()
                .context("the public listener's address")?,
            admin_addr: admin.local_addr().context("the admin listener's address")?,
            public,
            admin,
            resolver,
            metrics,
            http_metrics,
            connection_metrics,
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
            http_metrics,
            connection_metrics,
            readiness,
            settings,
            public_addr,
            admin_addr,
        } = self;
        tracing::info!(%public_addr, %admin_addr, upstream = %settings.upstream_url, "shout-proxy started");

        let header_read_timeout = Duration::from_millis(settings.header_read_timeout_ms);
        let idle_timeout = Duration::from_millis(settings.idle_timeout_ms);
        let shutdown_timeout = Duration::from_millis(settings.shutdown_timeout_ms);
        let stop_public = CancellationToken::new();
        let stop_admin = CancellationToken::new();

        let public_task = tokio::spawn(crate::server::run(
            public,
            public_endpoint(
                resolver.clone(),
                http_metrics,
                BodyLimits {
                    max_bytes: settings.max_body_bytes,
                    read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
                },
            ),
            ListenerConfig {
                name: ListenerName::Public,
                max_connections: settings.max_connections,
                header_read_timeout,
                idle_timeout,
                shutdown_timeout,
            },
            connection_metrics.listener(ListenerName::Public),
            stop_public.clone(),
        ));
        let admin_task = tokio::spawn(crate::server::run(
            admin,
            admin_endpoint(resolver, metrics, readiness.clone()),
            ListenerConfig {
                name: ListenerName::Admin,
                max_connections: ADMIN_MAX_CONNECTIONS,
                header_read_timeout,
                idle_timeout,
                shutdown_timeout,
            },
            connection_metrics.listener(ListenerName::Admin),
            stop_admin.clone(),
        ));

        shutdown.await;
        readiness.drain();
        tracing::info!(
            drain_ms = settings.drain_ms,
            "stop signal received: /readyz is 503, draining"
        );
        tokio::time::sleep(settings.drain()).await;
        tracing::info!("drain period over: no new connections, finishing in-flight requests");
        stop_public.cancel();
        public_task.await.context("the public listener task")?;
        stop_admin.cancel();
        admin_task.await.context("the admin listener task")?;
        tracing::info!("stopped");
        Ok(())
    }
}
