//! Logging and tracing: `tracing` to stderr, as text or JSON (`log.format`), level from
//! `RUST_LOG`; and, when `[telemetry] otlp_endpoint` is set, the worker's spans exported over
//! OTLP ([`otlp`]), continuing the W3C trace context that messages carry ([`context`]).
//!
//! JSON lines are flat: `timestamp`, `level`, `target`, `message`, then the event's own fields and
//! the fields of every span it happened in (`event_id`, `account_id`, `webhook_id`, `attempt`)
//! as top-level keys, so a log pipeline can filter on `event_id` without knowing which span set
//! it. tracing-subscriber's JSON formatter nests span fields under `span`/`spans` and has no
//! option to lift them, hence the small formatter below.

pub mod context;
pub mod otlp;

use crate::config::{LogFormat, Settings};
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The log filter: `RUST_LOG`, else INFO.
fn log_filter() -> EnvFilter {
    // lapin logs a channel the broker closed (e.g. NOT_FOUND for an exchange that was never
    // declared) at ERROR on `lapin::channel`, while the operation that met it returns the same
    // error to hookrelay, which reports it once in its own words: one line, not two.
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,lapin::channel=off"))
}

/// Installs the global subscriber, logs only; later calls (tests) are ignored.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .try_init(),
    };
}

/// What a process must shut down on exit: the trace exporter, if one was started.
#[must_use = "call `shutdown` on exit, or the last batch of spans is lost"]
pub struct Telemetry {
    exporter: Option<otlp::Exporter>,
}

impl Telemetry {
    /// Sends the spans still batched; a no-op without an exporter.
    pub fn shutdown(self) {
        if let Some(exporter) = &self.exporter {
            exporter.shutdown();
        }
    }
}

/// Installs logging, and the OTLP exporter when `telemetry.otlp_endpoint` is set. Without an
/// endpoint this is [`init`] exactly: the same subscriber, so telemetry off costs nothing.
pub fn start(settings: &Settings) -> Telemetry {
    let exporter = match otlp::Exporter::new(&settings.telemetry) {
        Ok(Some(exporter)) => exporter,
        Ok(None) => {
            init(settings.log.format);
            return Telemetry { exporter: None };
        }
        Err(e) => {
            init(settings.log.format);
            tracing::error!(error = %e, "traces will not be exported (telemetry.otlp_endpoint)");
            return Telemetry { exporter: None };
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // The log filter is the log layer's own, so that spans kept for export are not logged.
    let logs = match settings.log.format {
        LogFormat::Text => logs.with_filter(log_filter()).boxed(),
        LogFormat::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_filter(log_filter())
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(exporter.layer())
        .try_init();
    if installed.is_err() {
        // A subscriber was installed before (tests): nothing would reach this exporter.
        exporter.shutdown();
        return Telemetry { exporter: None };
    }
    Telemetry {
        exporter: Some(exporter),
    }
}

/// One JSON object per line, span fields lifted to the top level. Keys are never duplicated:
/// an event's own field wins over a span's, an inner span's over an outer one's.
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Line::default();
        line.push(
            "timestamp",
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.push("level", meta.level().as_str().into());
        line.push("target", meta.target().into());
        let mut own = FieldMap(Map::new());
        event.record(&mut own);
        // `message` right after the fixed keys, for people reading the raw line.
        if let Some(message) = own.0.remove("message") {
            line.push("message", message);
        }
        for (key, value) in own.0 {
            line.push(&key, value);
        }
        // Innermost span first, so that the innermost value of a repeated key is kept.
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let extensions = span.extensions();
                // JsonFields renders a span's fields as one JSON object; an empty span has "".
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                    for (key, value) in map {
                        line.push(&key, value);
                    }
                }
            }
        }
        writeln!(writer, "{}", line.to_json())
    }
}

/// A JSON object in insertion order, first value of a key wins. (`serde_json::Map` sorts its
/// keys unless the crate-wide `preserve_order` feature is on.)
#[derive(Default)]
struct Line(Vec<(String, Value)>);

impl Line {
    fn push(&mut self, key: &str, value: Value) {
        if !self.0.iter().any(|(k, _)| k == key) {
            self.0.push((key.to_owned(), value));
        }
    }

    fn to_json(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            // A string key and a Value always serialize.
            .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

/// An event's fields as JSON values: numbers and booleans stay typed, the rest are strings.
struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.0.insert(field.name().to_owned(), value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Each line as emitted, and parsed.
    fn json_lines(emit: impl FnOnce()) -> Vec<(String, Value)> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| (l.to_owned(), serde_json::from_str(l).unwrap()))
            .collect()
    }

    #[test]
    fn span_fields_of_a_delivery_are_top_level_keys_of_each_json_line() {
        let lines = json_lines(|| {
            let outer = tracing::info_span!("event", event_id = "evt_1", account_id = "68");
            let _outer = outer.enter();
            let inner = tracing::info_span!("delivery", webhook_id = "wh_1", attempt = 2u32);
            let _inner = inner.enter();
            tracing::info!(reason = "exhausted", "delivery dead-lettered");
        });
        assert_eq!(lines.len(), 1);
        let (raw, line) = (&lines[0].0, lines[0].1.as_object().unwrap());
        assert_eq!(line["message"], "delivery dead-lettered");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["event_id"], "evt_1");
        assert_eq!(line["account_id"], "68");
        assert_eq!(line["webhook_id"], "wh_1");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["reason"], "exhausted");
        // The fixed keys lead, in this order, for people reading raw lines.
        let at = |key: &str| raw.find(&format!("\"{key}\":")).unwrap();
        assert!(raw.starts_with("{\"timestamp\":"), "{raw}");
        assert!(
            at("level") < at("target") && at("target") < at("message"),
            "{raw}"
        );
        assert!(
            !line.contains_key("fields") && !line.contains_key("span"),
            "{line:?}"
        );
    }

    #[test]
    fn an_events_own_field_wins_over_a_span_field_of_the_same_name() {
        let lines = json_lines(|| {
            let span = tracing::info_span!("delivery", attempt = 1u32);
            let _span = span.enter();
            tracing::info!(attempt = 3u32, "retried");
        });
        assert_eq!(lines[0].1["attempt"], 3);
    }
}
