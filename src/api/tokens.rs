//! `/v1/accounts/{account_id}/tokens…` (the admin issues, lists and revokes account tokens) and
//! `/v1/whoami` (what a token may do, for the page's sign-in).

use super::auth::{self, Caller, TokenInfo};
use super::error::{ApiError, ErrorBody, Path};
use super::webhooks::AccountPath;
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct IssuedToken {
    /// The token itself, shown only here: it is stored hashed.
    #[schema(example = "hr_Njg.Xq3kZ0aB9cD8eF7gH6iJ5kL4mN3oP2qR1sT0uV9w")]
    pub token: String,
    pub account_id: String,
    /// Names the token for revoking it.
    pub id: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    pub account_id: String,
    /// `tok_…`
    pub token_id: String,
}

#[utoipa::path(post, path = "/v1/accounts/{account_id}/tokens", tag = "tokens",
    params(AccountPath),
    responses(
        (status = 201, description = "A new account token (admin only)", body = IssuedToken),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not the admin token", body = ErrorBody),
    ))]
pub async fn issue_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AccountPath>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let account = caller.admin_for(&path.account_id)?;
    let (token, info) = auth::issue(&state.store, &account).await?;
    tracing::info!(account_id = %account, token_id = %info.id, "account token issued");
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            token,
            account_id: info.account_id,
            id: info.id,
            created_at: info.created_at,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/tokens", tag = "tokens",
    params(AccountPath),
    responses(
        (status = 200, description = "The account's tokens, without the tokens themselves (admin only)", body = TokenList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not the admin token", body = ErrorBody),
    ))]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AccountPath>,
) -> Result<Json<TokenList>, ApiError> {
    let account = caller.admin_for(&path.account_id)?;
    let tokens = auth::list(&state.store, &account).await?;
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(delete, path = "/v1/accounts/{account_id}/tokens/{token_id}", tag = "tokens",
    params(TokenPath),
    responses(
        (status = 204, description = "Revoked: the token stops working at once (admin only)"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such token, or not the admin token", body = ErrorBody),
    ))]
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<TokenPath>,
) -> Result<StatusCode, ApiError> {
    let account = caller.admin_for(&path.account_id)?;
    if !auth::revoke(&state.store, &account, &path.token_id).await? {
        return Err(ApiError::not_found("token"));
    }
    tracing::info!(account_id = %account, token_id = %path.token_id, "account token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// True for the admin token, which acts on any account.
    pub admin: bool,
    /// The account an account token acts on; null for the admin.
    pub account_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "tokens",
    responses(
        (status = 200, description = "What the token may act on", body = WhoAmI),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match caller {
        Caller::Admin => WhoAmI {
            admin: true,
            account_id: None,
        },
        Caller::Account(account) => WhoAmI {
            admin: false,
            account_id: Some(account.to_string()),
        },
    })
}
