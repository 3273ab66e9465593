//! `hookrelay listen`: a local receiver that verifies each delivery's signature the way a
//! merchant's receiver should (Standard Webhooks, ±5 minutes, or the InPlayer header) and prints
//! it. Answers 2xx when the signature verifies and 401 otherwise, so a bad signature shows up as
//! a failed attempt too.
//!
//! What it answered 2xx it has printed: each delivery is handed to the printer before its answer
//! is sent, and on SIGTERM the server stops accepting, finishes the requests it has read, and the
//! printer drains them (at most [`DRAIN_GRACE`]) before the process exits. So a receiver taken
//! down and brought back (as `scripts/faults.sh` does) never hides a delivery it acknowledged.

use crate::config::ConnectionLimits;
use crate::delivery::signing::{self, Secret};
use crate::event::AccountId;
use crate::subscription::store::Store;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use chrono::{DateTime, Utc};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Receivers accept a timestamp this far from their clock (the reference libraries' tolerance).
pub const TOLERANCE_SECS: i64 = 300;

/// How long a stopping receiver waits for the requests it has read (a worker's whole request is
/// bounded by `delivery.timeout`, 15 s by default; a sender that hangs longer loses its answer).
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The receiver's bounds on its connections (see [`crate::ops::listener`]). Its idle bounds are
/// longer than a worker keeps an unused connection to an endpoint (90 s), so that the receiver
/// never closes a connection just as a worker reuses it; the count bound keeps a flood of idle
/// connections from taking all file descriptors.
fn connection_limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(120),
    }
}

/// Where the receiver gets the secrets to verify with.
#[derive(Clone)]
pub enum Secrets {
    Fixed(Vec<Secret>),
    /// The account's webhooks' current and previous secrets, read on each request.
    Account(Store, AccountId),
}

impl Secrets {
    async fn get(&self) -> Vec<Secret> {
        match self {
            Secrets::Fixed(s) => s.clone(),
            Secrets::Account(store, account) => match store.snapshot(account).await {
                Ok(snapshot) => snapshot
                    .webhooks
                    .iter()
                    .flat_map(|w| {
                        std::iter::once(w.secret.clone())
                            .chain(w.previous_secret.as_ref().map(|p| p.secret.clone()))
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the account's secrets");
                    Vec::new()
                }
            },
        }
    }
}

/// One delivery as received.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Received {
    /// When the request had been read, before it was answered.
    pub received_at: DateTime<Utc>,
    pub path: String,
    pub format: &'static str,
    pub webhook_id: Option<String>,
    pub verified: bool,
    pub problem: Option<String>,
    pub body: String,
}

/// Checks a request as a receiver does; `Err` says what is wrong.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[Secret],
) -> Result<&'static str, String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(sig) = header("x-inplayer-signature") {
        return if signing::verify_inplayer(secrets, sig, body) {
            Ok("inplayer")
        } else {
            Err("X-InPlayer-Signature does not match".into())
        };
    }
    let id = header("webhook-id").ok_or("no webhook-id header")?;
    let ts: i64 = header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("no valid webhook-timestamp header")?;
    if (Utc::now().timestamp() - ts).abs() > TOLERANCE_SECS {
        return Err(format!("webhook-timestamp {ts} is more than 5 minutes off"));
    }
    let sig = header("webhook-signature").ok_or("no webhook-signature header")?;
    if signing::verify_standard(secrets, sig, id, ts, body) {
        Ok("standard")
    } else {
        Err("webhook-signature does not match".into())
    }
}

struct Shared {
    secrets: Secrets,
    out: mpsc::UnboundedSender<Received>,
}

/// Serves on `addr` until `shutdown`; each delivery is sent to the returned channel, which
/// closes once the server has answered the last request it read.
pub async fn serve(
    addr: SocketAddr,
    secrets: Secrets,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, mpsc::UnboundedReceiver<Received>)> {
    let listener = crate::ops::listener::bind(addr)?;
    let local = listener.local_addr()?;
    let (out, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .fallback(receive)
        .with_state(Arc::new(Shared { secrets, out }));
    tokio::spawn(crate::ops::listener::serve(
        "listen",
        listener,
        app,
        connection_limits(),
        shutdown,
    ));
    Ok((local, rx))
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secrets = shared.secrets.get().await;
    let result = verify(&headers, &body, &secrets);
    let received = Received {
        received_at: Utc::now(),
        path: uri.path().to_owned(),
        format: result.as_ref().map_or("unknown", |f| *f),
        webhook_id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        verified: result.is_ok(),
        problem: result.err(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let status = if received.verified {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    };
    // Handed over before the answer is sent: see the module's opening comment.
    let _ = shared.out.send(received);
    status
}
