//! API tokens: random secrets, of which only the SHA-256 is stored, and the in-memory table of
//! those hashes that authenticates each TCP request. The table is re-read from SQL after every
//! change made here and on SIGHUP.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use inarray_store::{StoreError, TokenRow};
use sha2::{Digest, Sha256};

use super::{Access, Scope};
use crate::error::ApiError;

/// The prefix of every token secret (so that leaked tokens are easy to find in logs and repos).
pub const TOKEN_PREFIX: &str = "inarray_";

#[derive(Clone, Debug)]
pub(super) struct CachedToken {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) scope: Scope,
    pub(super) expires_at: Option<DateTime<Utc>>,
}

/// The longest life a token may be given (ten years).
const MAX_TTL_SECS: u64 = 10 * 366 * 86_400;

/// A token's life as `<number><unit>` (s, m, h, d or w, e.g. `30d`, `12h`) or a number of
/// seconds; the error names the field.
pub fn parse_ttl(field: &str, s: &str) -> Result<chrono::Duration, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "{field}: {s:?} is not a duration like 3600, 90m, 12h, 30d or 2w"
        ))
    };
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(mult).ok_or_else(bad)?;
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "{field}: {s:?} is not between 1 second and 10 years"
        )));
    }
    Ok(chrono::Duration::seconds(secs as i64))
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new random secret: the prefix and 256 bits from the kernel's CSPRNG, in hex.
fn new_secret() -> Result<String, ApiError> {
    use std::io::Read;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| ApiError::internal(format!("/dev/urandom: {e}")))?;
    let mut s = String::from(TOKEN_PREFIX);
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

fn check_token_name(name: &str) -> Result<(), ApiError> {
    inarray_store::names::TOKEN
        .check(name)
        .map_err(|reason| ApiError::bad_request(format!("name: {reason}")))
}

impl Access {
    /// Re-reads the token table from SQL; returns (added, removed) token names.
    pub async fn reload_tokens(&self) -> Result<(Vec<String>, Vec<String>), ApiError> {
        let rows = self.inner.store.list_tokens().await?;
        let mut map = HashMap::new();
        for r in rows {
            let Some(scope) = Scope::parse(&r.scope) else {
                return Err(ApiError::internal(format!(
                    "token {}: unknown scope {:?} in the database",
                    r.name, r.scope
                )));
            };
            let Ok(hash) = <[u8; 32]>::try_from(r.secret_hash.as_slice()) else {
                return Err(ApiError::internal(format!(
                    "token {}: the stored hash is not 32 bytes",
                    r.name
                )));
            };
            map.insert(
                hash,
                CachedToken {
                    id: r.id,
                    name: r.name,
                    scope,
                    expires_at: r.expires_at,
                },
            );
        }
        let mut tokens = self.inner.tokens.write().unwrap_or_else(|p| p.into_inner());
        let before: Vec<(i64, String)> = tokens.values().map(|t| (t.id, t.name.clone())).collect();
        let after: Vec<(i64, String)> = map.values().map(|t| (t.id, t.name.clone())).collect();
        let added = after
            .iter()
            .filter(|t| !before.contains(t))
            .map(|t| t.1.clone())
            .collect();
        let removed = before
            .iter()
            .filter(|t| !after.contains(t))
            .map(|t| t.1.clone())
            .collect();
        *tokens = map;
        Ok((added, removed))
    }

    /// The token whose secret this is, if any, with its hash.
    pub(super) fn lookup(&self, secret: &str) -> Option<([u8; 32], CachedToken)> {
        let hash = hash_secret(secret);
        self.lookup_hash(&hash).map(|t| (hash, t))
    }

    /// The token of this hash, if it is still in the table (a console session's).
    pub(super) fn lookup_hash(&self, hash: &[u8; 32]) -> Option<CachedToken> {
        let tokens = self.inner.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.get(hash).cloned()
    }

    /// Every token (never their secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, ApiError> {
        Ok(self.inner.store.list_tokens().await?)
    }

    /// Makes a token, refused from `expires_at` on (if given; it must lie ahead); returns its row
    /// and its secret, which is never seen again.
    pub async fn create_token(
        &self,
        name: &str,
        scope: Scope,
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(TokenRow, String), ApiError> {
        check_token_name(name)?;
        if let Some(at) = expires_at {
            if at <= Utc::now() {
                return Err(ApiError::bad_request(format!(
                    "expires_at: {} has passed",
                    at.to_rfc3339()
                )));
            }
        }
        let secret = new_secret()?;
        let row = self
            .inner
            .store
            .insert_token(
                name,
                scope.as_str(),
                &hash_secret(&secret),
                created_by,
                expires_at,
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ApiError::conflict(format!("token {name} already exists"))
                }
                e => e.into(),
            })?;
        self.reload_tokens().await?;
        Ok((row, secret))
    }

    /// Revokes a token: its next request is refused.
    pub async fn delete_token(&self, name: &str) -> Result<(), ApiError> {
        if !self.inner.store.delete_token(name).await? {
            return Err(ApiError::not_found(format!("no such token: {name}")));
        }
        self.reload_tokens().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_prefixed() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }

    #[test]
    fn token_lives() {
        let secs = |s: &str| parse_ttl("ttl", s).unwrap().num_seconds();
        assert_eq!(secs("3600"), 3600);
        assert_eq!(secs("90m"), 5400);
        assert_eq!(secs("12h"), 43_200);
        assert_eq!(secs("30d"), 30 * 86_400);
        assert_eq!(secs("2W"), 14 * 86_400);
        for bad in [
            "",
            "d",
            "0",
            "0d",
            "-1d",
            "1.5d",
            "3y",
            "99999999999999999999",
            "11000d",
        ] {
            let e = parse_ttl("ttl", bad).unwrap_err();
            assert!(e.message.starts_with("ttl: "), "{bad}: {}", e.message);
        }
    }
}
