//! Configuration: every setting is a `clap` flag that can also come from a `SHOUT_*` environment
//! variable, so `shout-proxy --help` is the configuration reference.
//!
//! Units are in the names (`--deadline-ms`). Defaults are embedded so that `cargo run --release`
//! starts a working service with no configuration at all. Cross-field rules (an attempt timeout
//! no longer than the deadline, backoff bounds in order) are checked once in
//! [`Settings::validate`], so a bad deployment fails at start with a message naming the flag.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// `--version`: the crate version and the git revision it was built from (set by `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SHOUT_GIT_REVISION"),
    ")"
);

/// Command line of the `shout-proxy` binary.
#[derive(Debug, Parser)]
#[command(
    name = "shout-proxy",
    version = VERSION,
    about = "Reverses strings and has shoutcloud capitalize them, resiliently."
)]
pub struct Cli {
    /// What to do; without a subcommand the service runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The service's settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// Subcommands besides running the service.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Probe the admin listener's `/livez` and exit 0 when it answers 200 (for container
    /// HEALTHCHECKs in images without a shell).
    Healthcheck,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// All settings of the service.
#[derive(Debug, Clone, Parser)]
pub struct Settings {
    /// Address of the public API listener.
    #[arg(long, env = "SHOUT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the operators' listener (/livez, /readyz, /metrics, /status); never public.
    /// Loopback by default; Kubernetes sets `0.0.0.0:8081` so that probes and scrapes reach it.
    #[arg(long, env = "SHOUT_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// The shoutcloud endpoint: POST {"INPUT": s} answers {"INPUT": s, "OUTPUT": S}.
    #[arg(
        long,
        env = "SHOUT_UPSTREAM_URL",
        default_value = "http://api.shoutcloud.io/V1/SHOUT"
    )]
    pub upstream_url: String,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "SHOUT_MAX_BODY_BYTES", value_parser = positive_usize(), default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Overall deadline for getting an answer from shoutcloud, retries included; when it passes
    /// the local fallback answers.
    #[arg(long, env = "SHOUT_DEADLINE_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 1000)]
    pub deadline_ms: u64,

    /// Timeout of one upstream attempt (connect, send, read the answer).
    #[arg(long, env = "SHOUT_UPSTREAM_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 300)]
    pub upstream_timeout_ms: u64,

    /// Timeout for establishing a TCP connection to the upstream.
    #[arg(long, env = "SHOUT_UPSTREAM_CONNECT_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 200)]
    pub upstream_connect_timeout_ms: u64,

    /// Most retries after the first attempt of one request (each also needs the retry budget).
    #[arg(long, env = "SHOUT_RETRY_MAX", default_value_t = 2)]
    pub retry_max: u32,

    /// Smallest backoff before a retry (exponential, full jitter).
    #[arg(long, env = "SHOUT_RETRY_MIN_BACKOFF_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10)]
    pub retry_min_backoff_ms: u64,

    /// Largest backoff before a retry.
    #[arg(long, env = "SHOUT_RETRY_MAX_BACKOFF_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 200)]
    pub retry_max_backoff_ms: u64,

    /// Retries may add at most this fraction to upstream traffic over the budget window.
    #[arg(long, env = "SHOUT_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,

    /// Retries allowed in any one second whatever the traffic (the budget's floor, a rate).
    #[arg(long, env = "SHOUT_RETRY_BUDGET_MIN_PER_SEC", default_value_t = 10)]
    pub retry_budget_min_per_sec: u32,

    /// Sliding window of the retry budget, in seconds.
    #[arg(long, env = "SHOUT_RETRY_BUDGET_WINDOW_SECS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10)]
    pub retry_budget_window_secs: u64,

    /// The breaker opens after this many consecutive failed attempts (retries count). Ten keeps
    /// a 30%-flaky upstream from tripping it by chance; sustained trouble trips the rate rule.
    #[arg(long, env = "SHOUT_BREAKER_CONSECUTIVE_FAILURES", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 10)]
    pub breaker_consecutive_failures: u32,

    /// The breaker also opens when the success rate over its window falls below this.
    #[arg(long, env = "SHOUT_BREAKER_MIN_SUCCESS_RATE", default_value_t = 0.5)]
    pub breaker_min_success_rate: f64,

    /// Calls needed in the window before the success rate can open the breaker.
    #[arg(long, env = "SHOUT_BREAKER_MIN_CALLS", default_value_t = 20)]
    pub breaker_min_calls: u32,

    /// Window of the breaker's success rate, in whole seconds.
    #[arg(long, env = "SHOUT_BREAKER_WINDOW_SECS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10)]
    pub breaker_window_secs: u64,

    /// How long the breaker stays open after its first trip; doubles with each repeated trip.
    #[arg(long, env = "SHOUT_BREAKER_OPEN_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 5000)]
    pub breaker_open_ms: u64,

    /// Longest open period of the breaker.
    #[arg(long, env = "SHOUT_BREAKER_MAX_OPEN_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 60_000)]
    pub breaker_max_open_ms: u64,

    /// Ceiling of the adaptive concurrency limit (alias `--upstream-limit-max`): never more
    /// concurrent upstream calls than this; beyond the limit the fallback answers at once.
    #[arg(long, alias = "upstream-limit-max", env = "SHOUT_BULKHEAD", value_parser = positive_usize(), default_value_t = 128)]
    pub bulkhead: usize,

    /// Byte bound of the answer cache (keys and values weighed).
    #[arg(long, env = "SHOUT_CACHE_MAX_BYTES", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 64 * 1024 * 1024)]
    pub cache_max_bytes: u64,

    /// How long a confirmed answer stays cached, in seconds.
    #[arg(long, env = "SHOUT_CACHE_TTL_SECS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 600)]
    pub cache_ttl_secs: u64,

    /// After SIGTERM/SIGINT, keep serving this long while /readyz says 503 so load balancers
    /// move away; then stop accepting and finish in-flight requests.
    #[arg(long, env = "SHOUT_DRAIN_MS", default_value_t = 5000)]
    pub drain_ms: u64,

    /// Longest wait for in-flight requests once the listener stopped accepting.
    #[arg(long, env = "SHOUT_SHUTDOWN_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Close connections with no request in flight this long. hyper also times the wait for
    /// the next request head with --header-read-timeout-ms, so an idle keep-alive connection
    /// lives at most the shorter of the two.
    #[arg(long, env = "SHOUT_IDLE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Time allowed for a complete request head (enforced by hyper, including the wait for the
    /// next request on a kept-alive connection); slower connections are closed.
    #[arg(long, env = "SHOUT_HEADER_READ_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 5000)]
    pub header_read_timeout_ms: u64,

    /// Time allowed for reading a request body once its head arrived; slower bodies get 408.
    #[arg(long, env = "SHOUT_BODY_READ_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// Most open connections on the public port. At the cap, idle keep-alive connections are
    /// closed first; when every connection is busy, new ones wait in the backlog.
    #[arg(long, env = "SHOUT_MAX_CONNECTIONS", value_parser = positive_usize(), default_value_t = 4096)]
    pub max_connections: usize,

    /// Export traces over OTLP/HTTP to this collector (`/v1/traces` is appended), e.g.
    /// `http://otel-collector:4318`. Unset: no traces are exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Log format.
    #[arg(long, env = "SHOUT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` env-filter syntax (e.g. `info,shout_proxy=debug`). reqwest-retry
    /// logs every retry at WARN; retries are counted in metrics and traced, so the default
    /// keeps only its errors.
    #[arg(long, env = "SHOUT_LOG", default_value = "info,reqwest_retry=error")]
    pub log: String,

    /// PEM file of extra root certificates trusted for an `https://` upstream (besides the
    /// system's).
    #[arg(long, env = "SHOUT_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<std::path::PathBuf>,

    /// Send our own client span's W3C `traceparent` to the upstream (never `tracestate` or
    /// baggage). Off by default: the upstream is a third party.
    #[arg(
        long,
        env = "SHOUT_UPSTREAM_TRACE_PROPAGATION",
        default_value_t = false
    )]
    pub upstream_trace_propagation: bool,

    /// Floor of the adaptive concurrency limit; shoutcloud's unloaded latency is measured at it.
    /// Small, because every pod of a fleet keeps this many calls in flight.
    #[arg(long, env = "SHOUT_UPSTREAM_LIMIT_MIN", value_parser = positive_usize(), default_value_t = 2)]
    pub upstream_limit_min: usize,

    /// The adaptive limit after its first measurement (clamped to floor and ceiling); it grows
    /// from there within a few round trips. Small, because a fleet starting together adds up:
    /// three pods at 20 put 60 calls on a shoutcloud whose knee is 8 and timed out into their
    /// breakers (`cargo xtask fleet`); at 4 none opened.
    #[arg(long, env = "SHOUT_UPSTREAM_LIMIT_INITIAL", value_parser = positive_usize(), default_value_t = 4)]
    pub upstream_limit_initial: usize,

    /// Shared cache (L2) behind the in-process one, e.g. `redis://redis:6379/0`. Unset: none.
    /// Redis may be down at start: the pod connects lazily and is ready without it.
    #[arg(long, env = "SHOUT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Longest wait for a Redis `GET`; a slower answer is a miss (and counts towards its breaker).
    #[arg(long, env = "SHOUT_REDIS_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 20)]
    pub redis_timeout_ms: u64,

    /// Time to live of an answer written to Redis, in seconds (jittered by 10% either way).
    #[arg(long, env = "SHOUT_REDIS_TTL_SECS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 3600)]
    pub redis_ttl_secs: u64,
}

/// A parser for counts that must be at least 1.
fn positive_usize() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// A setting that cannot work, named by its flag.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value outside its allowed range.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag's name without dashes.
        flag: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        flag,
        reason: reason.into(),
    }
}

impl Settings {
    /// Parses settings from defaults only (no command line, no environment), for tests and
    /// embedding.
    pub fn defaults() -> Self {
        // Parsing an empty command line only applies the embedded defaults.
        Settings::parse_from(["shout-proxy"])
    }

    /// Checks the rules that span fields; the service refuses to start when one fails.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.deadline_ms == 0 {
            return Err(invalid("deadline-ms", "must be above 0"));
        }
        if self.upstream_timeout_ms == 0 || self.upstream_timeout_ms > self.deadline_ms {
            return Err(invalid(
                "upstream-timeout-ms",
                "must be above 0 and at most --deadline-ms",
            ));
        }
        if self.upstream_connect_timeout_ms == 0
            || self.upstream_connect_timeout_ms > self.upstream_timeout_ms
        {
            return Err(invalid(
                "upstream-connect-timeout-ms",
                "must be above 0 and at most --upstream-timeout-ms",
            ));
        }
        if self.retry_min_backoff_ms == 0 || self.retry_min_backoff_ms > self.retry_max_backoff_ms {
            return Err(invalid(
                "retry-min-backoff-ms",
                "must be above 0 and at most --retry-max-backoff-ms",
            ));
        }
        if !(0.0..=10.0).contains(&self.retry_budget_ratio) {
            return Err(invalid("retry-budget-ratio", "must be between 0 and 10"));
        }
        if self.retry_budget_window_secs == 0 {
            return Err(invalid("retry-budget-window-secs", "must be above 0"));
        }
        if self.breaker_consecutive_failures == 0 {
            return Err(invalid("breaker-consecutive-failures", "must be above 0"));
        }
        if !(0.0..=1.0).contains(&self.breaker_min_success_rate) {
            return Err(invalid(
                "breaker-min-success-rate",
                "must be between 0 and 1",
            ));
        }
        if self.breaker_window_secs == 0 {
            return Err(invalid(
                "breaker-window-secs",
                "must be at least 1 (whole seconds)",
            ));
        }
        if self.breaker_open_ms == 0 || self.breaker_open_ms > self.breaker_max_open_ms {
            return Err(invalid(
                "breaker-open-ms",
                "must be above 0 and at most --breaker-max-open-ms",
            ));
        }
        if self.breaker_open_ms < self.upstream_timeout_ms {
            return Err(invalid(
                "breaker-open-ms",
                "must be at least --upstream-timeout-ms: a shorter open period lets a probe go \
                 out before the attempts that tripped the breaker have timed out",
            ));
        }
        if self.bulkhead == 0 {
            return Err(invalid("bulkhead", "must be above 0"));
        }
        if self.upstream_limit_min == 0 || self.upstream_limit_min > self.bulkhead {
            return Err(invalid(
                "upstream-limit-min",
                "must be above 0 and at most --bulkhead (the limit's ceiling)",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max-connections", "must be above 0"));
        }
        if self.header_read_timeout_ms == 0 {
            return Err(invalid("header-read-timeout-ms", "must be above 0"));
        }
        if self.body_read_timeout_ms == 0 {
            return Err(invalid("body-read-timeout-ms", "must be above 0"));
        }
        if self.shutdown_timeout_ms == 0 {
            return Err(invalid("shutdown-timeout-ms", "must be above 0"));
        }
        if self.idle_timeout_ms == 0 {
            return Err(invalid("idle-timeout-ms", "must be above 0"));
        }
        if self.cache_ttl_secs == 0 {
            return Err(invalid("cache-ttl-secs", "must be above 0"));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max-body-bytes", "must be above 0"));
        }
        let url = reqwest::Url::parse(&self.upstream_url)
            .map_err(|e| invalid("upstream-url", format!("not a URL: {e}")))?;
        if let Some(endpoint) = &self.otlp_endpoint {
            reqwest::Url::parse(endpoint)
                .map_err(|e| invalid("otlp-endpoint", format!("not a URL: {e}")))?;
        }
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid("upstream-url", "must be http:// or https://"));
        }
        if let Some(path) = &self.upstream_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                invalid(
                    "upstream-ca-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |certs| certs.is_empty()) {
                return Err(invalid(
                    "upstream-ca-file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
        }
        Ok(())
    }

    /// The overall upstream deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// The drain period after a stop signal.
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let settings = Settings::defaults();
        settings.validate().expect("defaults must validate");
        assert_eq!(settings.listen.port(), 8080);
        assert_eq!(settings.admin_listen.port(), 8081);
    }

    #[test]
    fn the_admin_listener_is_loopback_by_default() {
        assert!(Settings::defaults().admin_listen.ip().is_loopback());
    }

    #[test]
    fn zero_timeouts_and_counts_are_refused_by_flag_name() {
        for flag in [
            "--deadline-ms",
            "--upstream-timeout-ms",
            "--header-read-timeout-ms",
            "--body-read-timeout-ms",
            "--idle-timeout-ms",
            "--shutdown-timeout-ms",
            "--breaker-open-ms",
            "--max-connections",
            "--max-body-bytes",
            "--bulkhead",
            "--breaker-consecutive-failures",
            "--upstream-limit-min",
            "--redis-timeout-ms",
        ] {
            let err = Cli::try_parse_from(["shout-proxy", flag, "0"])
                .expect_err(flag)
                .to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
        assert!(Cli::try_parse_from(["shout-proxy", "--deadline-ms", "1"]).is_ok());
    }

    #[test]
    fn an_open_period_shorter_than_one_attempt_is_refused_by_flag_name() {
        let mut settings = Settings::defaults();
        settings.upstream_timeout_ms = 300;
        settings.breaker_open_ms = 299;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("--breaker-open-ms"), "{err}");
        settings.breaker_open_ms = 300;
        settings.validate().expect("equal is allowed");
    }

    #[test]
    fn a_connect_timeout_beyond_the_attempt_timeout_is_refused_by_flag_name() {
        let mut settings = Settings::defaults();
        settings.upstream_connect_timeout_ms = settings.upstream_timeout_ms + 1;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("--upstream-connect-timeout-ms"), "{err}");
    }

    #[test]
    fn an_attempt_timeout_beyond_the_deadline_is_refused_by_flag_name() {
        let mut settings = Settings::defaults();
        settings.upstream_timeout_ms = settings.deadline_ms + 1;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("--upstream-timeout-ms"), "{err}");
    }
}
