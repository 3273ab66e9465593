//! `[telemetry]`: where traces go (OTLP over HTTP) and which share of them is kept. Unset
//! endpoint: no exporter, no span is built for it, and the worker only passes trace context on
//! (DESIGN §7 "Trace context").

use super::ConfigError;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP traces URL (`…/v1/traces`); `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces kept (0.0 to 1.0); a trace context that arrives keeps its own
    /// sampled flag (parent-based sampling).
    pub sampling_ratio: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: String,
    sampling_ratio: f64,
}

impl RawTelemetry {
    pub(super) fn settle(self) -> Result<TelemetrySettings, ConfigError> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.sampling_ratio",
                format!("{} is not between 0.0 and 1.0", self.sampling_ratio),
            ));
        }
        let endpoint = self.otlp_endpoint.trim();
        let otlp_endpoint = match endpoint {
            "" => None,
            text => Some(traces_url(&http_url("telemetry.otlp_endpoint", text)?)),
        };
        Ok(TelemetrySettings {
            otlp_endpoint,
            sampling_ratio: self.sampling_ratio,
        })
    }
}

/// `text` as an `http` or `https` URL.
fn http_url(key: &'static str, text: &str) -> Result<String, ConfigError> {
    let url =
        url::Url::parse(text).map_err(|e| ConfigError::invalid(key, format!("not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(text.to_owned()),
        _ => Err(ConfigError::invalid(
            key,
            "scheme must be one of http, https",
        )),
    }
}

/// A collector's base URL (`http://collector:4318`) gets OTLP's traces path, as the
/// `OTEL_EXPORTER_OTLP_ENDPOINT` convention does; a URL with a path is used as it is.
fn traces_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if parsed.path() == "/" || parsed.path().is_empty() => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: &str, ratio: f64) -> Result<TelemetrySettings, ConfigError> {
        RawTelemetry {
            otlp_endpoint: endpoint.into(),
            sampling_ratio: ratio,
        }
        .settle()
    }

    #[test]
    fn an_empty_endpoint_turns_export_off() {
        assert_eq!(parse("", 1.0).unwrap().otlp_endpoint, None);
    }

    #[test]
    fn a_collector_base_url_gets_the_traces_path_and_a_full_url_is_kept() {
        let base = parse("http://collector:4318", 1.0).unwrap();
        assert_eq!(
            base.otlp_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let full = parse("https://otel.example.com/custom/traces", 0.5).unwrap();
        assert_eq!(
            full.otlp_endpoint.as_deref(),
            Some("https://otel.example.com/custom/traces")
        );
    }

    #[test]
    fn a_bad_endpoint_or_ratio_names_its_key() {
        let err = parse("grpc://collector:4317", 1.0).unwrap_err();
        assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
        let err = parse("", 1.5).unwrap_err();
        assert!(
            err.to_string().contains("telemetry.sampling_ratio"),
            "{err}"
        );
    }
}
