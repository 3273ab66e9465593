//! The API part of the harness: an API server on its own port and prefix, a client that speaks
//! its JSON, the check of the error shape, and what API tests check on the receiver's hits.

use crate::helpers::*;
use hookrelay::api::RunningApi;
use hookrelay::config::Settings;
use hookrelay::delivery::signing::{standard_signature, Secret};
use hookrelay::subscription::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "admin-token-for-tests-0123456789";

/// An API server on its own port, on the prefix of `settings`.
pub struct Api {
    pub base: String,
    pub store: Store,
    http: reqwest::Client,
    shutdown: CancellationToken,
    running: RunningApi,
}

/// Settings for an API on `prefix`: the test defaults (loopback http targets allowed) plus the
/// admin token, any free port and `extra`.
pub fn api_settings(prefix: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env = vec![
        ("HOOKRELAY__API__ADMIN_TOKEN", ADMIN),
        ("HOOKRELAY__API__LISTEN", "127.0.0.1:0"),
        // Tests send many invalid tokens from 127.0.0.1 on purpose; api_abuse tests the limit.
        ("HOOKRELAY__API__FAILED_SIGNIN_LIMIT", "1000000"),
    ];
    env.extend_from_slice(extra);
    settings(prefix, "200ms,200ms", &env)
}

pub async fn start_api(settings: Settings) -> Api {
    let store = Store::connect(REDIS_URL, &settings.redis.prefix, Duration::from_secs(2))
        .await
        .unwrap()
        .with_secret_key(settings.redis.secret_key.as_ref());
    // The API refuses writes to a store without a marker.
    store.init_marker().await.expect("store initialised");
    let shutdown = CancellationToken::new();
    let running = hookrelay::api::start(settings, shutdown.clone())
        .await
        .expect("the API starts");
    Api {
        base: format!("http://{}", running.addr),
        store,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        shutdown,
        running,
    }
}

/// An API alone (no worker) on a fresh prefix.
pub async fn api_alone(extra: &[(&str, &str)]) -> Api {
    start_api(api_settings(&test_prefix(), extra)).await
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        // `Value::Null` stands for no body at all.
        if let Some(body) = body.filter(|b| !b.is_null()) {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A fresh account token for `account`, issued by the admin.
    pub async fn token_for(&self, account: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/accounts/{account}/tokens"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Creates a webhook through the API and returns it (with its secret).
    pub async fn create(&self, account: &str, token: &str, url: &str, events: &[&str]) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/accounts/{account}/webhooks"),
                token,
                json!({"url": url, "events": events}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Where its `/metrics`, `/healthz` and `/readyz` are.
    pub fn ops_addr(&self) -> std::net::SocketAddr {
        self.running.ops_addr
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await.expect("the API stopped cleanly");
    }

    /// Stops the server and deletes the prefix's keys (when no worker shares the prefix).
    pub async fn cleanup(self) {
        let store = self.store.clone();
        self.stop().await;
        store.purge_prefix().await.unwrap();
    }
}

/// Asserts the error shape of DESIGN §5 and returns the code.
pub fn error_code(status: StatusCode, body: &Value, expected: StatusCode) -> String {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error explains itself: {body}");
    body["error"]["code"].as_str().unwrap().to_owned()
}

/// A client of the shared Redis, to look at what the API stored.
pub fn redis_client() -> redis::Client {
    redis::Client::open(REDIS_URL).unwrap()
}

/// Finds the request whose body carries `event_id` among the receiver's hits on `path`.
pub fn hits_of(app: &TestApp, path: &str, event_id: &str) -> Vec<Hit> {
    app.receiver
        .hits_on(path)
        .into_iter()
        .filter(|h| h.headers["webhook-id"] == event_id)
        .collect()
}

/// The signatures a hit carries (`webhook-signature`, space separated).
pub fn signatures(hit: &Hit) -> Vec<String> {
    hit.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

/// The `v1,…` signature `secret` gives the hit's id, timestamp and body.
pub fn signed_with(hit: &Hit, secret: &str) -> String {
    let secret = Secret::parse(secret).unwrap();
    let id = hit.headers["webhook-id"].to_str().unwrap();
    let timestamp: i64 = hit.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    standard_signature(&secret, id, timestamp, &hit.body)
}
