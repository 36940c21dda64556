//! API tokens (hashed secrets and scopes) and the audit log of mutating calls.

use chrono::{DateTime, Utc};

use crate::{unique_conflict, Result, Store};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    /// `read`, `operate` or `admin` (the API crate owns the meaning).
    pub scope: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// From this instant on the token is refused; None: never.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub who: String,
    pub method: String,
    pub route: String,
    pub target: String,
    pub status: i64,
}

/// An audit entry to append.
pub struct NewAudit<'a> {
    pub who: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub target: &'a str,
    pub status: u16,
}

type AuditTuple = (i64, DateTime<Utc>, String, String, String, String, i64);
type TokenTuple = (
    i64,
    String,
    String,
    Vec<u8>,
    DateTime<Utc>,
    String,
    Option<DateTime<Utc>>,
);

fn token(t: TokenTuple) -> TokenRow {
    TokenRow {
        id: t.0,
        name: t.1,
        scope: t.2,
        secret_hash: t.3,
        created_at: t.4,
        created_by: t.5,
        expires_at: t.6,
    }
}

impl Store {
    /// Adds a token (expiring at `expires_at`, if given); a name already taken is a conflict.
    pub async fn insert_token(
        &self,
        name: &str,
        scope: &str,
        secret_hash: &[u8],
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<TokenRow> {
        let t: TokenTuple = sqlx::query_as(
            "INSERT INTO api_tokens (name, scope, secret_hash, created_at, created_by, expires_at)
             VALUES (?, ?, ?, ?, ?, ?)
             RETURNING id, name, scope, secret_hash, created_at, created_by, expires_at",
        )
        .bind(name)
        .bind(scope)
        .bind(secret_hash)
        .bind(Utc::now())
        .bind(created_by)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "token", name))?;
        Ok(token(t))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        let rows: Vec<TokenTuple> = sqlx::query_as(
            "SELECT id, name, scope, secret_hash, created_at, created_by, expires_at
             FROM api_tokens ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(token).collect())
    }

    /// Removes the token named `name`; false when there is none.
    pub async fn delete_token(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_audit(&self, a: NewAudit<'_>) -> Result<i64> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO audit_log (at, who, method, route, target, status)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(Utc::now())
        .bind(a.who)
        .bind(a.method)
        .bind(a.route)
        .bind(a.target)
        .bind(i64::from(a.status))
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// Newest first: at most `limit` entries with an id below `before` (all when None).
    pub async fn list_audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRow>> {
        let rows: Vec<AuditTuple> = sqlx::query_as(
            "SELECT id, at, who, method, route, target, status FROM audit_log
                 WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, at, who, method, route, target, status)| AuditRow {
                id,
                at,
                who,
                method,
                route,
                target,
                status,
            })
            .collect())
    }

    /// Retention: deletes entries older than `older_than` and all but the newest `keep` rows.
    /// Returns how many were deleted.
    pub async fn prune_audit(&self, older_than: DateTime<Utc>, keep: u64) -> Result<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let a = sqlx::query("DELETE FROM audit_log WHERE at < ?")
            .bind(older_than)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let b = sqlx::query(
            "DELETE FROM audit_log WHERE id <= (SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET ?)",
        )
        .bind(keep)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_unique_by_name_and_hash() {
        let (_d, s) = crate::test_store().await;
        let t = s
            .insert_token("ci", "read", &[1; 32], "unix:0", None)
            .await
            .unwrap();
        assert_eq!((t.name.as_str(), t.scope.as_str()), ("ci", "read"));
        let e = s
            .insert_token("ci", "admin", &[2; 32], "unix:0", None)
            .await;
        assert!(
            matches!(e, Err(crate::StoreError::Conflict { .. })),
            "{e:?}"
        );
        assert!(s
            .insert_token("x", "bogus", &[3; 32], "unix:0", None)
            .await
            .is_err());
        assert_eq!(s.list_tokens().await.unwrap(), vec![t]);
        assert!(s.delete_token("ci").await.unwrap());
        assert!(!s.delete_token("ci").await.unwrap());
        // Ids are never reused.
        let t2 = s
            .insert_token("ci", "read", &[1; 32], "unix:0", None)
            .await
            .unwrap();
        assert!(t2.id > 1);
        let at = Utc::now() + chrono::Duration::days(30);
        let t3 = s
            .insert_token("short", "read", &[4; 32], "unix:0", Some(at))
            .await
            .unwrap();
        assert_eq!(t3.expires_at, Some(at));
        assert_eq!(s.list_tokens().await.unwrap()[1].expires_at, Some(at));
        assert_eq!(t2.expires_at, None);
    }

    #[tokio::test]
    async fn audit_pages_and_retention() {
        let (_d, s) = crate::test_store().await;
        for i in 0..10 {
            s.insert_audit(NewAudit {
                who: "unix:0",
                method: "POST",
                route: "/v1/containers",
                target: &format!("/v1/containers?{i}"),
                status: 201,
            })
            .await
            .unwrap();
        }
        let page = s.list_audit(None, 4).await.unwrap();
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [10, 9, 8, 7]);
        let next = s.list_audit(Some(7), 4).await.unwrap();
        assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [6, 5, 4, 3]);
        assert_eq!(
            s.prune_audit(Utc::now() - chrono::Duration::days(1), 3)
                .await
                .unwrap(),
            7
        );
        let left = s.list_audit(None, 100).await.unwrap();
        assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), [10, 9, 8]);
        assert_eq!(
            s.prune_audit(Utc::now() + chrono::Duration::seconds(1), 100)
                .await
                .unwrap(),
            3
        );
        assert!(s.list_audit(None, 100).await.unwrap().is_empty());
    }
}
