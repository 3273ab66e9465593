//! Trace export over OTLP/HTTP (protobuf), only when `[telemetry] otlp_endpoint` is set.
//!
//! hookrelay's spans are ordinary `tracing` spans at DEBUG (`consume`, `lookup`, `attempt`,
//! `publish`). Without an exporter the default log filter (INFO) disables them at their call
//! site, so a worker with telemetry off builds no span at all; with one, the OpenTelemetry layer
//! gets hookrelay's spans through a filter of its own, whatever `RUST_LOG` says, and turns them
//! into OpenTelemetry spans ([`tracing_opentelemetry`]), batched on a thread of the SDK's and
//! sent with a blocking HTTP client (so no export ever runs on the worker's runtime).
//!
//! Sampling is parent-based: a trace context that arrives with a message keeps its sampled flag;
//! a new trace is kept with `telemetry.sampling_ratio`.
//!
//! The bridge between a span and the W3C context on the wire is [`continue_from`] (a message's
//! context becomes a span's parent) and [`outgoing`] (what to write on what a span sends). With
//! no exporter both fall back to passing the arriving context on unchanged, as W3C asks of a
//! participant that records nothing.

use super::context::{TraceContext, TraceParent};
use crate::config::TelemetrySettings;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::time::Duration;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// How long one export request may take; also what a shutdown waits for the last batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter of a process, kept to be flushed and shut down on exit.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// The exporter `settings` ask for; `None` when `otlp_endpoint` is unset.
    pub fn new(
        settings: &TelemetrySettings,
    ) -> Result<Option<Exporter>, opentelemetry_otlp::ExporterBuildError> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sampling_ratio,
        )));
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("hookrelay")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Some(Exporter { provider }))
    }

    /// The `tracing` layer that feeds this exporter: hookrelay's spans at DEBUG and above, and
    /// its events at INFO and above (as span events), whatever the log filter lets through.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("hookrelay");
        let ours = FilterFn::new(|meta| {
            let level = if meta.is_span() {
                tracing::Level::DEBUG
            } else {
                tracing::Level::INFO
            };
            meta.target().starts_with("hookrelay") && *meta.level() <= level
        })
        .with_max_level_hint(LevelFilter::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Parents come from the span tree; nothing here reads OpenTelemetry's own
            // thread-local context, so it is not set on every poll.
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(ours)
    }

    /// Sends what is still batched and stops the exporter's thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::warn!(error = %e, "flushing traces (telemetry.otlp_endpoint) failed");
        }
    }
}

/// Makes `span` continue `parent`, the context a message arrived with. Nothing to do when the
/// span is not exported (then it is disabled, or no exporter is installed).
pub fn continue_from(span: &Span, parent: Option<&TraceContext>) {
    let Some(parent) = parent else { return };
    if span.is_disabled() {
        return;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.parent.trace_id),
        SpanId::from_bytes(parent.parent.parent_id),
        TraceFlags::new(parent.parent.flags),
        true,
        parent
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default(),
    );
    // Fails only without an OpenTelemetry layer (a DEBUG log filter, no exporter): the span
    // is then a log span only, and `outgoing` passes `parent` on as it came.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The context to write on a message or request sent from inside `span`: the span itself when
/// it is exported, otherwise `parent` passed on unchanged (W3C: a participant that records
/// nothing forwards what it got). The `tracestate` is always the one that arrived.
pub fn outgoing(span: &Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
    if span.is_disabled() {
        return parent.cloned();
    }
    let cx = span.context();
    let own = cx.span().span_context().clone();
    if !own.is_valid() {
        return parent.cloned();
    }
    Some(TraceContext {
        parent: TraceParent {
            trace_id: own.trace_id().to_bytes(),
            parent_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        },
        state: parent.and_then(|p| p.state.clone()),
    })
}

/// The context a caller is in: its current `tracing` span's (when an OpenTelemetry layer of
/// this version exports it), else OpenTelemetry's current context; `None` outside any trace.
pub fn current() -> Option<TraceContext> {
    outgoing(&Span::current(), None).or_else(|| {
        let cx = opentelemetry::Context::current();
        let own = cx.span().span_context().clone();
        own.is_valid().then(|| {
            TraceContext::new(TraceParent {
                trace_id: own.trace_id().to_bytes(),
                parent_id: own.span_id().to_bytes(),
                flags: own.trace_flags().to_u8(),
            })
        })
    })
}
