//! `hookrelay api`: the admin HTTP API of DESIGN §5 (JSON, bearer tokens) and the merchants'
//! Webhooks page at `/`. The OpenAPI document at `/v1/openapi.json` is generated from the route
//! handlers' annotations, so it cannot drift from them.
//!
//! # Layout
//! - [`access`]: the access log and request metrics of every request.
//! - [`auth`]: who is calling (admin or an account), account tokens kept hashed in Redis.
//! - [`error`]: the `{"error": {"code", "message"}}` responses and the JSON body extractor.
//! - [`webhooks`]: list, create, read, update, delete, rotate-secret; the rules and SSRF check.
//! - [`deliveries`]: send an example, recent attempts, resend one attempt's event.
//! - [`tokens`]: the admin's token routes and `/v1/whoami`.
//! - [`status`]: why an account's deliveries fail (webhooks, attempts, dead letters).
//! - [`examples`]: example events per type; [`resend`]: the broker connection for resends.
//! - [`limits`]: the request timeout, test-sends per account, failed sign-ins per address.
//! - [`page`]: the Webhooks page (HTML, CSS and JS beside it, built into the binary).

pub mod access;
pub mod auth;
pub mod deliveries;
pub mod error;
pub mod examples;
pub mod limits;
pub mod page;
pub mod resend;
pub mod status;
pub mod tokens;
pub mod webhooks;

use crate::config::{ConfigError, DeliverySettings, Settings};
use crate::delivery::Deliverer;
use crate::event::EventType;
use crate::subscription::store::Store;
use anyhow::Context;
use auth::Caller;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use error::{ApiError, ErrorBody, MAX_BODY_BYTES};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// An admin token shorter than this is refused at start-up: it guards every account.
const MIN_ADMIN_TOKEN: usize = 16;

/// What every handler shares.
pub struct AppState {
    pub store: Store,
    pub delivery: DeliverySettings,
    pub deliverer: Deliverer,
    pub resender: resend::Resender,
    /// SHA-256 of `api.admin_token`; the token itself is not kept.
    pub admin_token_hash: [u8; 32],
    pub limits: limits::Limits,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay admin API",
        description = "Manage webhook subscriptions (DESIGN §5). Send `Authorization: Bearer <token>`: \
                       the admin token acts on any account, an account token on its own account only; \
                       another account's resources are 404. Errors are `{\"error\": {\"code\", \"message\"}}`. \
                       Invalid tokens are limited per client address (429 with Retry-After), and every \
                       request ends within api.request_timeout (504)."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "webhooks", description = "An account's webhooks (at most 10, no duplicate URL)"),
        (name = "deliveries", description = "Example events, recent attempts, resending"),
        (name = "tokens", description = "Account tokens, issued by the admin"),
        (name = "event types", description = "The 27 event labels"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Documents, on every operation (applied once the routes are in: see [`documented_routes`]), the errors any request can get whatever its route: a
/// malformed path, query or body, the limits of [`limits`], and a failing store; with a body,
/// also 413 and 415. An operation's own description of a status is kept.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let with_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                for (status, description) in COMMON_ERRORS {
                    let needs_body = matches!(*status, "413" | "415");
                    if !needs_body || with_body {
                        responses
                            .entry((*status).to_owned())
                            .or_insert_with(|| error(description).into());
                    }
                }
            }
        }
    }
}

const COMMON_ERRORS: &[(&str, &str)] = &[
    ("400", "A malformed path, query string or JSON body"),
    ("401", "No valid token"),
    ("413", "The body is over 16 KiB"),
    ("415", "The body is not declared `application/json`"),
    ("422", "A field or query parameter is invalid"),
    (
        "429",
        "Too many invalid tokens from this client (Retry-After)",
    ),
    ("500", "A stored record could not be read"),
    ("503", "The store is unavailable (Retry-After)"),
    (
        "504",
        "The request did not finish within api.request_timeout",
    ),
];

#[derive(Serialize, ToSchema)]
pub struct EventTypeView {
    #[schema(example = "payment.card.success")]
    pub label: &'static str,
    #[schema(example = "Payment sale with card succeeded")]
    pub description: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeList {
    pub event_types: Vec<EventTypeView>,
}

#[utoipa::path(get, path = "/v1/event-types", tag = "event types",
    responses(
        (status = 200, description = "The 27 labels with the dashboard's descriptions", body = EventTypeList),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn event_types(_caller: Caller) -> Json<EventTypeList> {
    Json(EventTypeList {
        event_types: EventType::ALL
            .iter()
            .map(|t| EventTypeView {
                label: t.label(),
                description: t.description(),
            })
            .collect(),
    })
}

/// The envelope schema is public: publishers' CI fetches it without an account token.
#[utoipa::path(get, path = "/v1/schemas/envelope.json", tag = "event types", security(()),
    responses(
        (status = 200, description = "The JSON Schema of the event envelope upstream publishes \
            (DESIGN §2), with this deployment's delivery.max_event_bytes and max_event_depth in \
            its x-max-bytes and x-max-depth extension keywords; as docs/asyncapi.yaml and \
            `hookrelay schema envelope`", content_type = "application/schema+json"),
    ))]
async fn envelope_schema(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Response {
    let limits = crate::event::Limits {
        max_bytes: state.delivery.max_event_bytes,
        max_depth: state.delivery.max_event_depth,
    };
    let schema = crate::event::schema::envelope_schema(limits);
    let mut response = Json(schema).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/schema+json"),
    );
    response
}

/// The routes with their OpenAPI document.
fn documented_routes() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (routes, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(event_types))
        .routes(routes!(envelope_schema))
        .routes(routes!(tokens::whoami))
        .routes(routes!(tokens::issue_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(deliveries::send_test))
        .routes(routes!(deliveries::list_attempts))
        .routes(routes!(deliveries::resend))
        .routes(routes!(status::account_status_route))
        .split_for_parts();
    let mut doc = doc;
    utoipa::Modify::modify(&CommonErrors, &mut doc);
    (routes, doc)
}

/// `events` as the server takes it: `["*"]` alone, or known labels (repeats are harmless).
fn event_filter_schema(description: &serde_json::Value, nullable: bool) -> serde_json::Value {
    let labels: Vec<&str> = EventType::ALL.iter().map(|t| t.label()).collect();
    let mut choices = vec![
        serde_json::json!({"type": "array", "items": {"type": "string", "enum": ["*"]},
            "minItems": 1, "maxItems": 1}),
        serde_json::json!({"type": "array", "items": {"type": "string", "enum": labels},
            "minItems": 1}),
    ];
    if nullable {
        choices.push(serde_json::json!({"type": "null"}));
    }
    let description = description
        .as_str()
        .unwrap_or("Event labels, or `[\"*\"]` alone");
    serde_json::json!({"description": description, "oneOf": choices,
        "example": ["payment.card.success", "payment.card.failed"]})
}

/// The document as served: what utoipa's annotations cannot say is patched in.
fn document_json(doc: &utoipa::openapi::OpenApi) -> String {
    // Plain data: serializing it cannot fail.
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    for (schema, nullable) in [("CreateWebhook", false), ("UpdateWebhook", true)] {
        let properties = &mut doc["components"]["schemas"][schema]["properties"];
        let events = &mut properties["events"];
        *events = event_filter_schema(&events["description"], nullable);
        // Both are optional: left out or null means the default (create) or unchanged (update).
        properties["format"]["enum"] = serde_json::json!(["standard", "inplayer", null]);
    }
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}

/// The whole application: the API, its document and the page.
pub fn router(state: Arc<AppState>) -> Router {
    let (api, doc) = documented_routes();
    let doc = document_json(&doc);
    api.route(
        "/v1/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
    )
    .merge(page::routes(&state.delivery))
    .fallback(|| async { ApiError::not_found("route") })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    })
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(axum::middleware::from_fn_with_state(
        state.limits.request_timeout,
        limits::request_timeout,
    ))
    .layer(axum::middleware::map_response(common_headers))
    .layer(axum::middleware::from_fn(access::observe))
    .with_state(state)
}

/// Tokens and secrets pass through these responses: never cache them, never sniff or frame them.
async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A started API server.
pub struct RunningApi {
    pub addr: SocketAddr,
    /// Where its `/metrics`, `/healthz` and `/readyz` are (`ops.listen`).
    pub ops_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningApi {
    /// Waits until the server stopped (after `shutdown` was cancelled and requests finished).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("API server task panicked")
    }
}

/// Checks the settings, connects to Redis and serves on `api.listen` (port 0: any free port)
/// until `shutdown`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<RunningApi> {
    let admin_token = admin_token(&settings)?;
    let state = Arc::new(AppState {
        store: open_store(&settings).await?,
        delivery: settings.delivery.clone(),
        deliverer: Deliverer::new(&settings.delivery).context("building the HTTP client")?,
        resender: resend::Resender::new(&settings),
        admin_token_hash: auth::token_hash(admin_token),
        limits: limits::Limits::new(&settings.api),
    });
    if settings.api.request_timeout <= settings.delivery.timeout {
        tracing::warn!(
            "api.request_timeout is not longer than delivery.timeout: a test-send to a slow \
             endpoint will be answered 504 instead of reporting the endpoint's timeout"
        );
    }
    let listener = crate::ops::listener::bind(settings.api.listen)
        .with_context(|| format!("binding api.listen {}", settings.api.listen))?;
    let addr = listener.local_addr()?;
    let ops_addr = serve_ops(&settings, shutdown.clone()).await?;
    // The listener adds the client address, which failed sign-ins are counted by.
    let app = router(state.clone());
    let limits = settings.api.connections.clone();
    let task = tokio::spawn(async move {
        crate::ops::listener::serve("api", listener, app, limits, shutdown).await;
        state.resender.close().await;
    });
    tracing::info!(%addr, %ops_addr, prefix = %settings.redis.prefix,
        "API and Webhooks page listening");
    Ok(RunningApi {
        addr,
        ops_addr,
        task,
    })
}

/// `api.admin_token`, trimmed; the API does not start without one long enough.
fn admin_token(settings: &Settings) -> Result<&str, ConfigError> {
    let admin_token = settings.api.admin_token.trim();
    if admin_token.chars().count() >= MIN_ADMIN_TOKEN {
        return Ok(admin_token);
    }
    Err(ConfigError::Invalid {
        key: "api.admin_token",
        message: format!(
            "{} (the API needs one to start; set HOOKRELAY__API__ADMIN_TOKEN to a random \
             string of at least {MIN_ADMIN_TOKEN} characters)",
            if admin_token.is_empty() {
                "is empty"
            } else {
                "is too short"
            }
        ),
    })
}

/// The store, with `redis.secret_key` checked against what it holds.
async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::from_settings(&settings.redis)
        .await
        .context("connecting to Redis (redis.url)")?;
    store.verify_secret_key().await?;
    if !store.seals_secrets() {
        tracing::warn!("redis.secret_key is empty: webhook secrets are stored in plain text");
    }
    Ok(store)
}

/// /metrics, /healthz, /readyz on ops.listen, as for a worker: never on the public listener.
async fn serve_ops(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let ready = crate::ops::Health::new(|| true);
    crate::ops::serve(&settings.ops, ready, shutdown)
        .await
        .with_context(|| {
            format!(
                "binding ops.listen {} (a worker on this host may use it: give one of them \
                 another port)",
                settings.ops.listen
            )
        })
}

/// `hookrelay api`: serves until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    start(settings, shutdown).await?.wait().await
}
