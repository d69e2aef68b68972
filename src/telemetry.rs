//! Logs and traces: `tracing` for both, with OpenTelemetry export when an operator asks for it.
//!
//! Logs go to stdout as JSON or text. Traces are exported over OTLP/HTTP only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; without it no exporter runs and no per-request events
//! below the log level are even built. When it is set, the OpenTelemetry layer gets its own
//! filter (`shout_proxy=debug`) so request-level events (cache hit, breaker rejection, fallback
//! reason) land on the spans without flooding the logs. W3C `traceparent` is read from incoming
//! requests; nothing of it goes to the upstream, which gets our own client span's `traceparent`
//! only with `--upstream-trace-propagation`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, Settings};

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

/// Installs the global subscriber and the W3C propagator.
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    install_propagator();
    let filter = EnvFilter::try_new(&settings.log)
        .map_err(|e| anyhow::anyhow!("--log {:?} is not a valid filter: {e}", settings.log))?;
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(TraceIdFields)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    }
    .with_filter(filter);

    let provider = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| anyhow::anyhow!("building the OTLP span exporter: {e}"))?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("shout-proxy")
                        .build(),
                )
                .build(),
        )
    } else {
        None
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
