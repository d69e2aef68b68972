//! Logs and traces: `tracing` for both, with OpenTelemetry export when an operator asks for it.
//!
//! Logs go to stdout as JSON or text, one line per event, each cut at [`MAX_LOG_LINE`] bytes
//! with a ` [truncated]` marker ([`BoundedWriter`]), so no event can write an unbounded line.
//! Logs never carry user text: request data goes into answers and 400 details, never into
//! log fields.
//!
//! Traces are exported over OTLP/HTTP only when `--otlp-endpoint` (or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) is set; without it no exporter runs and no per-request events
//! below the log level are even built. The batch span processor exports from its own thread, so
//! the exporter uses the blocking HTTP client (the async one needs a tokio reactor that thread
//! does not have). When the collector is down a request costs only a queued span: failed
//! exports are counted in `shout_trace_spans_dropped_total` and logged at most once a minute;
//! the SDK's own per-batch error logs are silenced. The OpenTelemetry layer gets its own
//! filter (`shout_proxy=debug`) so request-level events (cache hit, breaker rejection, fallback
//! reason) land on the spans without flooding the logs. W3C `traceparent` is read from incoming
//! requests; nothing of it goes to the upstream, which gets our own client span's `traceparent`
//! only with `--upstream-trace-propagation`.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, Settings};

/// Spans the exporter could not send, process-wide: the exporter is built before the registry.
fn spans_dropped() -> &'static prometheus::IntCounter {
    static DROPPED: std::sync::OnceLock<prometheus::IntCounter> = std::sync::OnceLock::new();
    DROPPED.get_or_init(|| {
        prometheus::IntCounter::new(
            "shout_trace_spans_dropped_total",
            "Spans the OTLP exporter could not send.",
        )
        .unwrap_or_else(|_| unreachable!("the name and help are valid"))
    })
}

/// Registers the trace export metrics on `registry`.
pub fn register_metrics(registry: &prometheus::Registry) -> prometheus::Result<()> {
    registry.register(Box::new(spans_dropped().clone()))
}

/// Keeps the tracer provider alive; flushes spans when dropped at shutdown.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    /// The OTLP provider, when exporting.
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces at shutdown failed: {e}");
        }
    }
}

/// Installs the W3C `traceparent` propagator (idempotent; `Application::build` calls it).
pub fn install_propagator() {
    global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Log targets of the OpenTelemetry crates' own diagnostics: they log every failed batch, which
/// [`CountingExporter`] counts and logs at a bounded rate instead.
const SDK_LOG_TARGETS: [&str; 4] = [
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry-otlp",
    "opentelemetry-http",
];

/// Installs the global subscriber and the W3C propagator.
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    install_propagator();
    let mut filter = EnvFilter::try_new(&settings.log)
        .map_err(|e| anyhow::anyhow!("--log {:?} is not a valid filter: {e}", settings.log))?;
    if !settings.log.contains("opentelemetry") {
        for target in SDK_LOG_TARGETS {
            let directive = format!("{target}=off")
                .parse()
                .map_err(|e| anyhow::anyhow!("the directive {target}=off: {e}"))?;
            filter = filter.add_directive(directive);
        }
    }
    let writer = BoundedWriter::new(std::io::stdout);
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(TraceIdFields)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    }
    .with_filter(filter);

    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("shout-proxy"))
            .with_filter(EnvFilter::new("info,shout_proxy=debug"))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))?;
    Ok(TelemetryGuard { provider })
}

/// A tracer provider exporting to the OTLP/HTTP collector at `endpoint` (its base URL;
/// `/v1/traces` is appended) from a batch span processor.
pub fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = {
        use opentelemetry_otlp::WithExportConfig as _;
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("building the OTLP span exporter: {e}"))?
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(CountingExporter::new(exporter))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("shout-proxy")
                .build(),
        )
        .build())
}

/// Longest wait for the collector per batch: a hung collector must not fill the span queue.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a failing export may be logged.
const EXPORT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Wraps the OTLP exporter: counts the spans of failed exports and logs failures at a bounded
/// rate.
#[derive(Debug)]
struct CountingExporter<E> {
    /// The OTLP exporter.
    inner: E,
    /// When a failure was last logged.
    last_warning: Mutex<Option<Instant>>,
}

impl<E> CountingExporter<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            last_warning: Mutex::new(None),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            spans_dropped().inc_by(spans);
            if let Ok(mut last) = self.last_warning.lock()
                && last.is_none_or(|at| at.elapsed() >= EXPORT_WARNING_INTERVAL)
            {
                *last = Some(Instant::now());
                tracing::warn!(
                    error = %e,
                    dropped_total = spans_dropped().get(),
                    "exporting spans failed; they are dropped (logged at most once a minute)"
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Longest log line in bytes; longer lines are cut and end with ` [truncated]`.
pub const MAX_LOG_LINE: usize = 4096;

/// The marker that ends a cut line.
const TRUNCATED: &[u8] = b" [truncated]\n";

/// A `MakeWriter` whose writers pass at most [`MAX_LOG_LINE`] bytes of one event on.
#[derive(Debug, Clone, Copy)]
pub struct BoundedWriter<M> {
    /// Makes the underlying writer (stdout).
    inner: M,
}

impl<M> BoundedWriter<M> {
    /// Bounds the lines `inner`'s writers receive.
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for BoundedWriter<M>
{
    type Writer = BoundedLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        BoundedLine {
            inner: self.inner.make_writer(),
            written: 0,
            cut: false,
        }
    }
}

/// The writer of one event: passes the first [`MAX_LOG_LINE`] bytes, then the marker.
#[derive(Debug)]
pub struct BoundedLine<W> {
    /// Where the line goes.
    inner: W,
    /// Bytes passed on so far.
    written: usize,
    /// Whether the line was cut (the rest is discarded).
    cut: bool,
}

impl<W: Write> Write for BoundedLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cut {
            return Ok(buf.len());
        }
        let room = MAX_LOG_LINE.saturating_sub(self.written);
        if buf.len() <= room {
            self.inner.write_all(buf)?;
            self.written += buf.len();
            return Ok(buf.len());
        }
        // Cut at a UTF-8 character boundary.
        let mut end = room;
        while end > 0 && buf.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
            end -= 1;
        }
        self.inner.write_all(&buf[..end])?;
        self.inner.write_all(TRUNCATED)?;
        self.cut = true;
        self.written = MAX_LOG_LINE;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Makes `span` a child of the W3C trace context in `headers`, if they carry one, records the
/// trace id in its `trace_id` field so that log lines inside the request carry it.
pub fn adopt_trace_context(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt;

    // Most requests carry no trace context: skip the propagator for them.
    let parent: Context = if headers.contains_key("traceparent") {
        global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
    } else {
        Context::new()
    };
    let remote = parent.span().span_context().trace_id();
    // An error only means no OpenTelemetry layer is installed; the caller's id is still logged.
    let _ = span.set_parent(parent);
    let own = span.context().span().span_context().trace_id();
    let trace_id = if own != opentelemetry::trace::TraceId::INVALID {
        own
    } else {
        remote
    };
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The W3C `traceparent` of `span` itself, when an OpenTelemetry layer traces it; nothing of a
/// caller's context (`tracestate`, baggage) is ever added. Only sent upstream when the operator
/// opted in (`--upstream-trace-propagation`).
pub(crate) fn inject_trace_context(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;

    let context = span.context();
    let own = context.span();
    let own = own.span_context();
    own.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        )
    })
}

/// Span fields for the JSON log format: only `trace_id`.
///
/// The fmt layer formats every field of every span when it is created and again on every
/// `record`, and the JSON formatter re-parses the span's JSON each time: about a sixth of the
/// CPU of a cache hit, for fields that no log line needs (the request's method, route and status
/// are in the metrics and the traces). Log lines inside a request still carry its `trace_id`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TraceIdFields;

/// Picks `trace_id` out of a span's fields.
#[derive(Default)]
struct TraceIdVisitor(Option<String>);

impl tracing::field::Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "trace_id" {
            self.0 = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "trace_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

fn trace_id_json(trace_id: &str) -> String {
    // Trace ids are hex digits, so no JSON escaping is needed; the filter keeps it that way.
    let hex: String = trace_id.chars().filter(char::is_ascii_hexdigit).collect();
    format!(r#"{{"trace_id":"{hex}"}}"#)
}

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for TraceIdFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TraceIdVisitor::default();
        fields.record(&mut visitor);
        match visitor.0 {
            Some(trace_id) => writer.write_str(&trace_id_json(&trace_id)),
            None => writer.write_str("{}"),
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut visitor = TraceIdVisitor::default();
        fields.record(&mut visitor);
        if let Some(trace_id) = visitor.0 {
            current.fields = trace_id_json(&trace_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_line(line: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = BoundedLine {
            inner: &mut out,
            written: 0,
            cut: false,
        };
        writer.write_all(line).expect("writing to a Vec");
        out
    }

    #[test]
    fn a_short_line_passes_unchanged() {
        assert_eq!(write_line(b"hello\n"), b"hello\n");
    }

    #[test]
    fn a_long_line_is_cut_at_the_bound_with_a_marker() {
        let line = vec![b'x'; 10 * MAX_LOG_LINE];
        let out = write_line(&line);
        assert_eq!(out.len(), MAX_LOG_LINE + TRUNCATED.len());
        assert!(out.ends_with(TRUNCATED));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // One ASCII byte first, so the bound falls inside a two-byte `é`: the cut moves back one.
        let line = format!("a{}", "é".repeat(MAX_LOG_LINE));
        let out = write_line(line.as_bytes());
        let text = std::str::from_utf8(&out).expect("still UTF-8");
        assert!(text.ends_with(" [truncated]\n"));
        assert_eq!(text.len(), MAX_LOG_LINE - 1 + TRUNCATED.len());
    }
}
