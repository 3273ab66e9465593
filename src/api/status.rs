//! `GET /v1/accounts/{account_id}/status`: why an account's deliveries fail, for the dashboard
//! (the same answer as `hookrelay webhooks status`, see [`crate::dlq::status`]). The dead-letter
//! pass here is short by default (10,000 letters, 5 s) so that the page stays quick and barely
//! holds the queue; the answer says when it was cut.

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::error::{Path, Query};
use super::webhooks::AccountPath;
use super::AppState;
use crate::dlq::status::{account_status, AccountStatus, StatusOptions};
use crate::dlq::Dlq;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::IntoParams;

/// The most dead letters one request may ask to read.
const MAX_SCAN: u32 = 100_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Last attempts per webhook: 1 to 20, default 5.
    #[param(minimum = 1, maximum = 20)]
    pub attempts: Option<usize>,
    /// Dead letters to read at most to count them: 1 to 100,000, default 10,000.
    #[param(minimum = 1, maximum = 100_000)]
    pub scan_limit: Option<u32>,
}

impl StatusQuery {
    /// The options it asks for; a value out of the documented range is refused (422), as the
    /// OpenAPI document says, rather than quietly clamped.
    fn options(&self) -> Result<StatusOptions, ApiError> {
        let last = self.attempts.unwrap_or(5);
        if !(1..=20).contains(&last) {
            return Err(ApiError::invalid(
                "invalid_query",
                "attempts must be 1 to 20",
            ));
        }
        let scan_limit = self.scan_limit.unwrap_or(10_000);
        if !(1..=MAX_SCAN).contains(&scan_limit) {
            return Err(ApiError::invalid(
                "invalid_query",
                format!("scan_limit must be 1 to {MAX_SCAN}"),
            ));
        }
        Ok(StatusOptions {
            last,
            scan_limit,
            scan_time: Duration::from_secs(5),
        })
    }
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/status", tag = "deliveries",
    params(AccountPath, StatusQuery),
    responses(
        (status = 200, description = "Each webhook with its state, last attempts, success rate \
            and dead letters by reason; `dlq.complete` is false when the dead-letter pass was \
            cut or the broker could not be reached", body = AccountStatus),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not this caller's account", body = ErrorBody),
    ))]
pub async fn account_status_route(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AccountPath>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<AccountStatus>, ApiError> {
    let account = caller.account(&path.account_id)?;
    let options = query.options()?;
    let (connector, topology, timeout) = state.resender.broker();
    // A connection of its own, closed after the pass: closing it is what hands the letters
    // back, in order, at once.
    let dlq = Dlq::connect_to(connector, topology.clone(), timeout).await;
    let reachable = dlq
        .as_ref()
        .map_err(|e| format!("cannot reach RabbitMQ: {e}"));
    let status = account_status(&state.store, reachable, &account, options).await;
    if let Ok(dlq) = dlq {
        dlq.close().await;
    }
    match status {
        Ok(status) => Ok(Json(status)),
        Err(crate::dlq::status::StatusError::Store(e)) => Err(e.into()),
    }
}
