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
//!
//! - `openapi`: the document at `/v1/openapi.json`.
//!
//! This file holds only what every route shares: the state, the router and start-up (each step
//! a function); the routes are in the modules above.

pub mod access;
pub mod auth;
pub mod deliveries;
pub mod error;
pub mod examples;
pub mod limits;
mod openapi;
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

/// The whole application: the API, its document and the page.
pub fn router(state: Arc<AppState>) -> Router {
    let (api, doc) = openapi::documented_routes();
    let doc = openapi::document_json(&doc);
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
