//! The API under abuse (issue 9): URLs that grow when normalised or hide duplicates, malformed
//! requests of every kind, guessed tokens, floods of test-sends, endpoints that never answer and
//! targets inside the network. Every answer is the JSON error shape, and none hangs.

use crate::api_harness::*;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A raw request to the API, for what `Api::call` cannot send; the status, headers and JSON.
async fn raw(request: reqwest::RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.expect("the API answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}, not JSON: {text}"));
    (status, headers, body)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn a_url_that_grows_past_the_limit_when_normalised_is_refused_and_nothing_is_stored() {
    let api = api_alone(&[]).await;
    let token = api.token_for("h1").await;
    // 2,020 characters as sent, 6,020 once `{` is percent-encoded as it is stored and sent.
    let url = format!("https://example.com/{}", "{".repeat(2000));

    let (status, body) = api
        .post(
            "/v1/accounts/h1/webhooks",
            &token,
            json!({"url": url, "events": ["*"]}),
        )
        .await;

    assert_eq!(
        error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
        "invalid_url"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("2048"),
        "{body}"
    );
    let (status, list) = api.get("/v1/accounts/h1/webhooks", &token).await;
    assert_eq!((status, list), (StatusCode::OK, json!({"webhooks": []})));
    api.cleanup().await;
}

#[tokio::test]
async fn a_fragment_an_empty_query_or_a_trailing_dot_does_not_make_a_url_new() {
    let api = api_alone(&[]).await;
    let token = api.token_for("d1").await;
    let created = api
        .create("d1", &token, "https://example.com/hook?#top", &["*"])
        .await;
    assert_eq!(
        created["url"], "https://example.com/hook",
        "stored normalised"
    );

    for spelling in [
        "https://example.com/hook",
        "https://example.com/hook#frag",
        "https://example.com/hook?",
        "https://example.com./hook",
        "https://EXAMPLE.com.:443/hook?#x",
    ] {
        let (status, body) = api
            .post(
                "/v1/accounts/d1/webhooks",
                &token,
                json!({"url": spelling, "events": ["*"]}),
            )
            .await;
        assert_eq!(
            error_code(status, &body, StatusCode::CONFLICT),
            "duplicate_url",
            "{spelling}"
        );
    }
    let (_, list) = api.get("/v1/accounts/d1/webhooks", &token).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    api.cleanup().await;
}

#[tokio::test]
async fn every_malformed_request_is_answered_in_the_error_shape() {
    let api = api_alone(&[]).await;
    let http = client();
    let url = |path: &str| format!("{}{path}", api.base);
    let cases = [
        (
            "a path segment that is not UTF-8",
            http.get(url("/v1/accounts/%FF%FE/webhooks"))
                .bearer_auth(ADMIN),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "a query of the wrong type",
            http.get(url("/v1/accounts/a1/webhooks/wh_x/attempts?limit=many"))
                .bearer_auth(ADMIN),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            "a body that is not JSON",
            http.post(url("/v1/accounts/a1/webhooks"))
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body("{\"url\":"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "a body of the wrong shape",
            http.post(url("/v1/accounts/a1/webhooks"))
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body("[1, 2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "an optional body that is not JSON",
            http.post(url("/v1/accounts/a1/webhooks/wh_x/test"))
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body("nope"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "an unknown route",
            http.get(url("/v2/anything")).bearer_auth(ADMIN),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "an unknown route without a token",
            http.get(url("/v1/accounts/a1/nothing")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "a method the route does not take",
            http.put(url("/v1/event-types")).bearer_auth(ADMIN),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "no token",
            http.get(url("/v1/event-types")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];

    for (what, request, expected, code) in cases {
        let (status, headers, body) = raw(request).await;
        assert_eq!(error_code(status, &body, expected), code, "{what}: {body}");
        assert_eq!(headers["content-type"], "application/json", "{what}");
        assert_eq!(
            body.as_object().unwrap().keys().collect::<Vec<_>>(),
            vec!["error"],
            "{what}: {body}"
        );
    }
    api.cleanup().await;
}

#[tokio::test]
async fn a_store_failure_is_a_5xx_that_names_no_internals() {
    let api = api_alone(&[]).await;
    let token = api.token_for("s1").await;
    let created = api
        .create("s1", &token, "https://example.com/s", &["*"])
        .await;
    let id = created["id"].as_str().unwrap();
    // A record no hookrelay wrote: the store cannot read it.
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}:{{s1}}:webhooks", api.store.prefix());
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg(id)
        .arg("{\"url\": 5, \"secret\": \"whsec_leak\"}")
        .query_async(&mut redis)
        .await
        .unwrap();

    let (status, body) = api
        .get(&format!("/v1/accounts/s1/webhooks/{id}"), &token)
        .await;

    assert!(status.is_server_error(), "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap().to_lowercase();
    for internal in ["redis", "json", "invalid type", "line", "whsec", "expected"] {
        assert!(!message.contains(internal), "{internal} in {message}");
    }
    api.cleanup().await;
}

#[tokio::test]
async fn invalid_tokens_from_one_address_are_refused_for_a_while_then_let_through() {
    let api = api_alone(&[
        ("HOOKRELAY__API__FAILED_SIGNIN_LIMIT", "5"),
        ("HOOKRELAY__API__FAILED_SIGNIN_WINDOW", "2s"),
    ])
    .await;
    let http = client();
    let whoami = format!("{}/v1/whoami", api.base);
    let started = Instant::now();

    for guess in 0..5 {
        let (status, _, body) = raw(http.get(&whoami).bearer_auth(format!("guess-{guess}"))).await;
        assert_eq!(
            error_code(status, &body, StatusCode::UNAUTHORIZED),
            "unauthorized"
        );
    }
    let (status, headers, body) = raw(http.get(&whoami).bearer_auth("guess-5")).await;
    assert_eq!(
        error_code(status, &body, StatusCode::TOO_MANY_REQUESTS),
        "too_many_failed_signins"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // Even the right token is refused now: answering it would confirm a guess.
    let (status, _, _) = raw(http.get(&whoami).bearer_auth(ADMIN)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // After the window, from the first failure on, the address may sign in again.
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(started.elapsed()) + Duration::from_millis(300),
    )
    .await;
    let (status, _, body) = raw(http.get(&whoami).bearer_auth(ADMIN)).await;
    assert_eq!(
        (status, body["admin"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, _, _) = raw(http.get(&whoami).bearer_auth("guess-6")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.cleanup().await;
}

/// A receiver on loopback, an API on a fresh prefix and an account with a webhook at `path`.
async fn api_with_receiver(
    extra: &[(&str, &str)],
    path: &str,
) -> (Api, Receiver, CancellationToken, String, String) {
    let stop = CancellationToken::new();
    let receiver = Receiver::start(stop.clone()).await;
    let api = api_alone(extra).await;
    let token = api.token_for("t1").await;
    let created = api.create("t1", &token, &receiver.url(path), &["*"]).await;
    let test = format!(
        "/v1/accounts/t1/webhooks/{}/test",
        created["id"].as_str().unwrap()
    );
    (api, receiver, stop, token, test)
}

#[tokio::test]
async fn test_sends_beyond_the_account_limit_are_refused_at_once() {
    // Delivery timeout 3 s (the harness's), well inside the request timeout.
    let (api, receiver, stop, token, test) =
        api_with_receiver(&[("HOOKRELAY__API__TEST_SENDS_PER_ACCOUNT", "2")], "/slow").await;
    receiver.behave("/slow", Behaviour::Hang);
    let api = std::sync::Arc::new(api);
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (api, token, test) = (api.clone(), token.clone(), test.clone());
            tokio::spawn(async move { api.post(&test, &token, Value::Null).await })
        })
        .collect();
    receiver.wait_for("/slow", 2, Duration::from_secs(5)).await;

    let asked = Instant::now();
    let (status, body) = api.post(&test, &token, Value::Null).await;

    assert!(asked.elapsed() < Duration::from_secs(1), "answered at once");
    assert_eq!(
        error_code(status, &body, StatusCode::TOO_MANY_REQUESTS),
        "too_many_test_sends"
    );
    assert_eq!(
        receiver.hits_on("/slow").len(),
        2,
        "no third request was made"
    );
    // Another account is not held up.
    let other = api.token_for("t2").await;
    let theirs = api
        .create("t2", &other, &receiver.url("/fast"), &["*"])
        .await;
    let (status, result) = api
        .post(
            &format!(
                "/v1/accounts/t2/webhooks/{}/test",
                theirs["id"].as_str().unwrap()
            ),
            &other,
            Value::Null,
        )
        .await;
    assert_eq!(
        (status, result["status"].clone()),
        (StatusCode::OK, json!(200))
    );
    // The two in flight end with the endpoint's timeout; then the account may test again.
    for send in in_flight {
        let (status, result) = send.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{result}");
        assert!(
            result["error"].as_str().unwrap().contains("timeout"),
            "{result}"
        );
    }
    receiver.behave("/slow", Behaviour::Status(204));
    let (status, result) = api.post(&test, &token, Value::Null).await;
    assert_eq!(
        (status, result["status"].clone()),
        (StatusCode::OK, json!(204))
    );

    stop.cancel();
    std::sync::Arc::into_inner(api).unwrap().cleanup().await;
}

#[tokio::test]
async fn a_test_send_to_an_endpoint_that_never_answers_ends_at_the_request_timeout() {
    let (api, receiver, stop, token, test) = api_with_receiver(
        &[
            ("HOOKRELAY__API__REQUEST_TIMEOUT", "1s"),
            ("HOOKRELAY__API__TEST_SENDS_PER_ACCOUNT", "1"),
        ],
        "/never",
    )
    .await;
    receiver.behave("/never", Behaviour::Hang);

    // Three in a row: each ends at the timeout and gives its slot back (never 429).
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, body) = api.post(&test, &token, Value::Null).await;
        let took = asked.elapsed();

        assert_eq!(
            error_code(status, &body, StatusCode::GATEWAY_TIMEOUT),
            "timeout"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "took {took:?}"
        );
    }
    assert_eq!(receiver.hits_on("/never").len(), 3);
    stop.cancel();
    api.cleanup().await;
}

#[tokio::test]
async fn a_target_inside_the_network_is_refused_without_naming_it() {
    let stop = CancellationToken::new();
    let receiver = Receiver::start(stop.clone()).await;
    let api = api_alone(&[("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false")]).await;
    let token = api.token_for("p1").await;
    // Stored while private targets were allowed (or by hand): test-send must still refuse it.
    let stored = api
        .store
        .create(
            &"p1".parse().unwrap(),
            hookrelay::subscription::store::NewWebhook {
                url: hookrelay::subscription::WebhookUrl::parse(&receiver.url("/inside"), true)
                    .unwrap(),
                events: hookrelay::subscription::EventFilter::All,
                format: hookrelay::subscription::Format::Standard,
                description: String::new(),
                rate_limit: None,
            },
        )
        .await
        .unwrap();
    let port = receiver.addr.port().to_string();

    let (status, result) = api
        .post(
            &format!("/v1/accounts/p1/webhooks/{}/test", stored.id),
            &token,
            Value::Null,
        )
        .await;

    assert_eq!(status, StatusCode::OK, "{result}");
    assert!(
        result.get("status").is_none(),
        "no request was made: {result}"
    );
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("not a public address"), "{error}");
    assert!(
        !error.contains("127.0.0.1") && !error.contains(&port),
        "{error}"
    );
    assert!(receiver.hits().is_empty());

    // Registration refuses the same targets, naming none of them either.
    for (url, secret) in [
        ("https://127.0.0.1:8443/x", "127.0.0.1"),
        ("https://[::ffff:10.1.2.3]/x", "10.1.2.3"),
        ("https://[2002:a9fe:a9fe::1]/x", "a9fe"),
        ("https://localhost./x", "localhost"),
        ("https://db.internal.invalid/x", "internal"),
    ] {
        let (status, body) = api
            .post(
                "/v1/accounts/p1/webhooks",
                &token,
                json!({"url": url, "events": ["*"]}),
            )
            .await;
        assert_eq!(
            error_code(status, &body, StatusCode::UNPROCESSABLE_ENTITY),
            "target_not_public",
            "{url}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("not a public address"), "{message}");
        assert!(!message.contains(secret), "{url}: {message}");
    }
    stop.cancel();
    api.cleanup().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let http = client();
    let limited = [
        ("HOOKRELAY__API__FAILED_SIGNIN_LIMIT", "2"),
        ("HOOKRELAY__API__FAILED_SIGNIN_WINDOW", "1m"),
    ];
    // The test connects from 127.0.0.1, a trusted proxy by default.
    let api = api_alone(&limited).await;
    let whoami = format!("{}/v1/whoami", api.base);
    let from = |client: &str| http.get(&whoami).header("x-forwarded-for", client);

    for _ in 0..2 {
        let (status, _, _) = raw(from("203.0.113.9").bearer_auth("guess")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, _) = raw(from("203.0.113.9").bearer_auth("guess")).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser is limited"
    );
    let (status, _, _) = raw(from("198.51.100.1").bearer_auth(ADMIN)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another client behind the proxy is not"
    );
    // What the client itself wrote to the left of the proxy's entry changes nothing.
    let (status, _, _) = raw(from("192.0.2.77, 203.0.113.9").bearer_auth(ADMIN)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    api.cleanup().await;

    // From a peer that is not a trusted proxy, the header is ignored: rotating it does not help.
    let mut untrusted = limited.to_vec();
    untrusted.push(("HOOKRELAY__API__TRUSTED_PROXIES", "10.9.8.7"));
    let api = api_alone(&untrusted).await;
    let whoami = format!("{}/v1/whoami", api.base);
    for n in 0..2 {
        let request = http
            .get(&whoami)
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .bearer_auth("guess");
        assert_eq!(raw(request).await.0, StatusCode::UNAUTHORIZED);
    }
    let request = http
        .get(&whoami)
        .header("x-forwarded-for", "203.0.113.99")
        .bearer_auth("guess");
    assert_eq!(raw(request).await.0, StatusCode::TOO_MANY_REQUESTS);
    api.cleanup().await;
}
