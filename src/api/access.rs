//! The API's access log and request metrics: one `info` line per request with method, route
//! template, status, latency and the account the path names, and the same as
//! `hookrelay_api_requests_total` / `hookrelay_api_request_duration_seconds`.
//!
//! Only the route template and the path's `account_id` are taken from the request: never the
//! headers (the bearer token), the query string or the body (a webhook's secret on create).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The axum middleware; `Router::layer(from_fn(access::observe))`.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Unmatched paths share one label, so scanners cannot grow the series without bound.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let account = account_in(&route, request.uri().path()).map(str::to_owned);
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    crate::metrics::api_request(method.as_str(), &route, status, took);
    tracing::info!(
        method = %method,
        route = %route,
        status,
        latency_ms = took.as_secs_f64() * 1000.0,
        account_id = account.as_deref().unwrap_or("-"),
        "request"
    );
    response
}

/// The path segment that stands where the route template has `{account_id}`.
fn account_in<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let at = route.split('/').position(|s| s == "{account_id}")?;
    path.split('/').nth(at).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::account_in;

    #[test]
    fn the_account_is_the_path_segment_under_the_templates_account_id() {
        let route = "/v1/accounts/{account_id}/webhooks/{webhook_id}";
        assert_eq!(
            account_in(route, "/v1/accounts/68/webhooks/wh_1"),
            Some("68")
        );
        assert_eq!(account_in("/v1/event-types", "/v1/event-types"), None);
        assert_eq!(account_in("unmatched", "/v1/accounts/68"), None);
    }
}
