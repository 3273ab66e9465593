//! Who is calling. The admin (the token of `api.admin_token`) acts on any account; an account
//! token, issued by the admin, acts on its own account only, and anything of another account is
//! 404, so that existence is not revealed. Account tokens are 40 random alphanumerics (about 238
//! bits) behind `hr_<account in base64url>.`, so a request names its account without an index;
//! only their SHA-256 is stored, in `<prefix>:{<account>}:tokens` (hash of the token → record).
//! A fast hash is enough: the tokens are random, not passwords that could be guessed.

use super::error::ApiError;
use super::AppState;
use crate::event::AccountId;
use crate::subscription::store::{Store, StoreError};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use utoipa::ToSchema;

const TOKEN_PREFIX: &str = "hr_";

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Account(AccountId),
}

impl Caller {
    /// The account named in the path, if this caller may act on it; 404 otherwise.
    pub fn account(&self, in_path: &str) -> Result<AccountId, ApiError> {
        let account = AccountId::parse(in_path).ok_or_else(|| ApiError::not_found("account"))?;
        match self {
            Caller::Admin => Ok(account),
            Caller::Account(own) if *own == account => Ok(account),
            Caller::Account(_) => Err(ApiError::not_found("account")),
        }
    }

    /// The account in the path, for the admin only. An account token gets 404 too: the contract
    /// never answers 403 (DESIGN §5).
    pub fn admin_for(&self, in_path: &str) -> Result<AccountId, ApiError> {
        match self {
            Caller::Admin => {
                AccountId::parse(in_path).ok_or_else(|| ApiError::not_found("account"))
            }
            Caller::Account(_) => Err(ApiError::not_found("resource")),
        }
    }
}

/// SHA-256 of a token, the form in which tokens are kept and compared.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        // No token at all is not a sign-in attempt: it cannot guess anything.
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let client = state.limits.client_of(parts);
        let attempt = state.limits.signins.attempt(client)?;
        match identify(state, token).await {
            Ok(Some(caller)) => {
                attempt.succeeded();
                Ok(caller)
            }
            // Dropping the attempt without success counts it as a failure.
            Ok(None) => Err(ApiError::unauthorized()),
            Err(e) => {
                attempt.succeeded(); // the store failed, not the caller
                Err(e.into())
            }
        }
    }
}

/// Who `token` is, if anyone.
async fn identify(state: &AppState, token: &str) -> Result<Option<Caller>, StoreError> {
    // Comparing hashes rather than the tokens: equal-length values, and a timing difference
    // could only reveal a prefix of a hash, which does not help to find the token.
    if token_hash(token) == state.admin_token_hash {
        return Ok(Some(Caller::Admin));
    }
    let Some(account) = account_of(token) else {
        return Ok(None);
    };
    Ok(is_issued(&state.store, &account, token)
        .await?
        .then_some(Caller::Account(account)))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The account an account token names (not yet checked against the store).
fn account_of(token: &str) -> Option<AccountId> {
    let (account, _) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let account = String::from_utf8(B64URL.decode(account).ok()?).ok()?;
    AccountId::parse(&account)
}

/// An issued token as the admin lists it (the token itself is never kept).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Names the token for revoking it.
    #[schema(example = "tok_8fJ2kQ0aZxYw1bN3")]
    pub id: String,
    pub account_id: String,
    /// RFC 3339.
    pub created_at: String,
}

fn tokens_key(store: &Store, account: &AccountId) -> String {
    format!("{}:{{{}}}:tokens", store.prefix(), account)
}

/// Makes a new token for `account`, keeps its hash and returns it (the only time it is seen).
pub async fn issue(store: &Store, account: &AccountId) -> Result<(String, TokenInfo), StoreError> {
    let token = format!(
        "{TOKEN_PREFIX}{}.{}",
        B64URL.encode(account.as_str()),
        crate::random_token(40)
    );
    let info = TokenInfo {
        id: format!("tok_{}", crate::random_token(16)),
        account_id: account.to_string(),
        created_at: now_rfc3339(),
    };
    let record = serde_json::to_string(&info)?;
    let mut pipe = redis::pipe();
    pipe.hset(
        tokens_key(store, account),
        hex::encode(token_hash(&token)),
        record,
    );
    store.run_pipeline(&pipe).await?;
    Ok((token, info))
}

async fn is_issued(store: &Store, account: &AccountId, token: &str) -> Result<bool, StoreError> {
    let mut pipe = redis::pipe();
    pipe.hexists(tokens_key(store, account), hex::encode(token_hash(token)));
    let (exists,): (bool,) = store.query_pipeline(&pipe).await?;
    Ok(exists)
}

/// The account's tokens, oldest first.
pub async fn list(store: &Store, account: &AccountId) -> Result<Vec<TokenInfo>, StoreError> {
    let mut pipe = redis::pipe();
    pipe.hvals(tokens_key(store, account));
    let (records,): (Vec<String>,) = store.query_pipeline(&pipe).await?;
    let mut tokens = records
        .iter()
        .map(|r| serde_json::from_str::<TokenInfo>(r))
        .collect::<Result<Vec<_>, _>>()?;
    tokens.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    Ok(tokens)
}

/// Revokes the token `id` of `account`; false if there is none.
pub async fn revoke(store: &Store, account: &AccountId, id: &str) -> Result<bool, StoreError> {
    let key = tokens_key(store, account);
    let mut pipe = redis::pipe();
    pipe.hgetall(&key);
    let (records,): (Vec<(String, String)>,) = store.query_pipeline(&pipe).await?;
    let found = records.into_iter().find(|(_, record)| {
        serde_json::from_str::<TokenInfo>(record).is_ok_and(|info| info.id == id)
    });
    let Some((hash, _)) = found else {
        return Ok(false);
    };
    let mut pipe = redis::pipe();
    pipe.hdel(&key, hash);
    store.run_pipeline(&pipe).await?;
    Ok(true)
}

fn now_rfc3339() -> String {
    let now: DateTime<Utc> = Utc::now();
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_token_names_its_account() {
        let account: AccountId = "merchant.68:eu-1".parse().unwrap();
        let token = format!(
            "hr_{}.{}",
            B64URL.encode(account.as_str()),
            crate::random_token(40)
        );
        assert_eq!(account_of(&token), Some(account));
        assert_eq!(account_of("hr_.abc"), None);
        assert_eq!(account_of("hr_!!!.abc"), None);
        assert_eq!(account_of("admin-token"), None);
    }

    #[test]
    fn only_a_path_account_the_caller_owns_is_found() {
        let own = Caller::Account("a1".parse().unwrap());
        assert_eq!(own.account("a1").unwrap().as_str(), "a1");
        assert_eq!(own.account("a2").unwrap_err().status.as_u16(), 404);
        assert_eq!(own.admin_for("a1").unwrap_err().status.as_u16(), 404);
        assert_eq!(Caller::Admin.account("a2").unwrap().as_str(), "a2");
        assert_eq!(
            Caller::Admin.account("bad/id").unwrap_err().status.as_u16(),
            404
        );
    }
}
