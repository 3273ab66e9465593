//! The merchants' Webhooks page at `/`: server-rendered HTML (the event types with their dashboard
//! descriptions are filled in here) and a little vanilla JavaScript that calls the JSON API with
//! the account token kept in sessionStorage. No cookies, so no CSRF surface; a strict
//! Content-Security-Policy allows only this page's own script and style.

use super::AppState;
use crate::config::DeliverySettings;
use crate::event::EventType;
use crate::subscription::MAX_WEBHOOKS_PER_ACCOUNT;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use std::sync::Arc;

const HTML: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's event-type sections, each a label prefix; every type falls in exactly one.
const GROUPS: &[(&str, &[&str])] = &[
    ("Payments", &["payment."]),
    ("Subscriptions", &["subscribe."]),
    ("External payments and subscriptions", &["external."]),
    ("Access", &["asset.", "freemium."]),
    ("Customers", &["customer."]),
];

/// `/`, `/assets/page.css` and `/assets/page.js`; none needs a token.
pub fn routes(settings: &DeliverySettings) -> Router<Arc<AppState>> {
    let html = Bytes::from(render(settings));
    Router::new()
        .route(
            "/",
            get(move || {
                let html = html.clone();
                async move { ([(CONTENT_SECURITY_POLICY, CSP)], Html(html)).into_response() }
            }),
        )
        .route(
            "/assets/page.css",
            get(|| async { ([(CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
        )
        .route(
            "/assets/page.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }),
        )
}

fn render(settings: &DeliverySettings) -> String {
    let url_hint = if settings.allow_http {
        "Where hookrelay POSTs the events. This server also accepts http:// (development only)."
    } else {
        "Where hookrelay POSTs the events: an https:// address reachable from the internet."
    };
    HTML.replace("{{event_types}}", &event_type_groups())
        .replace("{{url_hint}}", url_hint)
        .replace("{{max_webhooks}}", &MAX_WEBHOOKS_PER_ACCOUNT.to_string())
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
}

/// One checkbox per event type showing its description and label, in sections.
fn event_type_groups() -> String {
    let mut out = String::new();
    for (title, prefixes) in GROUPS {
        out.push_str(&format!(
            "<div class=\"group\"><h3>{}</h3>\n",
            escape(title)
        ));
        for t in EventType::ALL {
            if prefixes.iter().any(|p| t.label().starts_with(p)) {
                // `<wbr>` after each dot: a long label wraps between its words, not inside one.
                out.push_str(&format!(
                    "<label class=\"check\"><input type=\"checkbox\" name=\"events\" value=\"{label}\">\
                     <span><span class=\"desc\">{description}</span><code>{wrapped}</code></span></label>\n",
                    label = escape(t.label()),
                    wrapped = escape(t.label()).replace('.', ".<wbr>"),
                    description = escape(t.description()),
                ));
            }
        }
        out.push_str("</div>\n");
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_exactly_one_checkbox() {
        let html = event_type_groups();
        for t in EventType::ALL {
            let checkbox = format!("value=\"{}\"", t.label());
            assert_eq!(html.matches(&checkbox).count(), 1, "{t}");
            assert!(html.contains(t.description()), "{t}");
        }
    }

    #[test]
    fn the_page_has_no_placeholder_left() {
        let settings = crate::config::Settings::load_with_env(None, Vec::new())
            .unwrap()
            .delivery;
        let html = render(&settings);
        assert!(!html.contains("{{"), "a placeholder was not filled");
        assert!(html.contains("https://"));
    }

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
