//! API tokens and the audit log: who may call the HTTP API, and who changed what. Written once for both SQL stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use seismo_schemas::Role;

use crate::{Cursor, Page, Result};

/// Audit action of a token's creation.
pub const ACTION_TOKEN_CREATE: &str = "token.create";
/// Audit action of a token's revocation.
pub const ACTION_TOKEN_REVOKE: &str = "token.revoke";
/// Audit action of an incident's status change through the API.
pub const ACTION_INCIDENT_TRANSITION: &str = "incident.transition";

/// An API token as stored: everything but its secret, of which only the SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct ApiToken {
    /// Public part of the token (12 hex digits); names it in listings and the audit log.
    pub id: String,
    pub tenant: String,
    pub role: Role,
    pub name: String,
    /// Lowercase hex SHA-256 of the secret. Never serialised, so no answer can leak it.
    #[serde(skip_serializing)]
    pub secret_sha256: String,
    /// Ingest budget in points per second; `None` takes the server's default.
    pub rate_per_sec: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One change worth remembering: who (`actor`) did what (`action`) to which object
/// (`target`) of which tenant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct AuditRecord {
    pub time: DateTime<Utc>,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// What changed, as JSON (stored as text).
    pub detail: serde_json::Value,
}

/// An audit record as stored, with its id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Filters for reading one tenant's audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// Storage of API tokens and of the audit log, apart from the result tables.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Stores a new token and records its creation by `actor`, in one transaction: no token
    /// exists that the audit log does not know of.
    async fn create_token(&self, token: &ApiToken, actor: &str) -> Result<()>;
    /// The token with this id, revoked or not.
    async fn token(&self, id: &str) -> Result<Option<ApiToken>>;
    /// Tokens of one tenant (every tenant with `None`), oldest first.
    async fn list_tokens(&self, tenant: Option<&str>) -> Result<Vec<ApiToken>>;
    /// Revokes a token (of `tenant` only, when given) and records it, in one transaction.
    /// Revoking a revoked token changes nothing and records nothing; an unknown id (or one
    /// of another tenant) is `NotFound`.
    async fn revoke_token(
        &self,
        tenant: Option<&str>,
        id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<ApiToken>;
    /// Whether any token was ever created. Revoked ones count: once a deployment uses
    /// tokens, revoking them all must not make `http.auth = auto` serve open again.
    async fn has_tokens(&self) -> Result<bool>;
    async fn append_audit(&self, record: &AuditRecord) -> Result<()>;
    async fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditEntry>>;
}

/// What the audit log says about a token change.
pub(crate) fn token_detail(t: &ApiToken) -> serde_json::Value {
    serde_json::json!({ "name": t.name, "role": t.role, "rate_per_sec": t.rate_per_sec })
}

/// Implements [`AccessStore`] for a store with a `pool` field of sqlx database `$db`. Times
/// are epoch milliseconds in both databases, so one implementation serves both.
macro_rules! access_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn token_from_row(
                r: &<$db as sqlx::Database>::Row,
            ) -> $crate::Result<$crate::access::ApiToken> {
                use sqlx::Row;
                let role: String = r.try_get("role")?;
                let at = |v: i64| {
                    chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, v)
                        .single()
                        .unwrap_or_default()
                };
                Ok($crate::access::ApiToken {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant")?,
                    role: seismo_schemas::Role::parse(&role)
                        .ok_or_else(|| $crate::corrupt("token role", &role))?,
                    name: r.try_get("name")?,
                    secret_sha256: r.try_get("secret_sha256")?,
                    rate_per_sec: r.try_get("rate_per_sec")?,
                    created_at: at(r.try_get("created_at")?),
                    revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(at),
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::access::AccessStore for $store {
            async fn create_token(
                &self,
                token: &$crate::access::ApiToken,
                actor: &str,
            ) -> $crate::Result<()> {
                let mut tx = self.pool.begin().await?;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO api_tokens (id, tenant, role, name, secret_sha256, rate_per_sec, created_at) VALUES (",
                );
                qb.separated(", ")
                    .push_bind(&token.id)
                    .push_bind(&token.tenant)
                    .push_bind(token.role.as_str())
                    .push_bind(&token.name)
                    .push_bind(&token.secret_sha256)
                    .push_bind(token.rate_per_sec)
                    .push_bind(token.created_at.timestamp_millis());
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
                let record = $crate::access::AuditRecord {
                    time: token.created_at,
                    tenant: token.tenant.clone(),
                    actor: actor.to_string(),
                    action: $crate::access::ACTION_TOKEN_CREATE.into(),
                    target: token.id.clone(),
                    detail: $crate::access::token_detail(token),
                };
                Self::insert_audit(&mut *tx, &record).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn token(&self, id: &str) -> $crate::Result<Option<$crate::access::ApiToken>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM api_tokens WHERE id = ");
                qb.push_bind(id);
                match qb.build().fetch_optional(&self.pool).await? {
                    Some(r) => Ok(Some(Self::token_from_row(&r)?)),
                    None => Ok(None),
                }
            }

            async fn list_tokens(
                &self,
                tenant: Option<&str>,
            ) -> $crate::Result<Vec<$crate::access::ApiToken>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM api_tokens");
                if let Some(t) = tenant {
                    qb.push(" WHERE tenant = ").push_bind(t);
                }
                qb.push(" ORDER BY created_at, id");
                let rows = qb.build().fetch_all(&self.pool).await?;
                Ok($crate::skip_undecodable(
                    "api_tokens",
                    rows.iter().map(Self::token_from_row),
                ))
            }

            async fn revoke_token(
                &self,
                tenant: Option<&str>,
                id: &str,
                actor: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<$crate::access::ApiToken> {
                let mut tx = self.pool.begin().await?;
                // The update comes first so the transaction takes the write lock at once
                // (see checkpoint.rs); `revoked_at IS NULL` makes a repeated revocation
                // change nothing, and so record nothing.
                let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE api_tokens SET revoked_at = ");
                qb.push_bind(now.timestamp_millis())
                    .push(" WHERE id = ")
                    .push_bind(id)
                    .push(" AND revoked_at IS NULL");
                if let Some(t) = tenant {
                    qb.push(" AND tenant = ").push_bind(t);
                }
                qb.push(" RETURNING *");
                let token = match qb.build().fetch_optional(&mut *tx).await? {
                    Some(r) => {
                        let token = Self::token_from_row(&r)?;
                        let record = $crate::access::AuditRecord {
                            time: now,
                            tenant: token.tenant.clone(),
                            actor: actor.to_string(),
                            action: $crate::access::ACTION_TOKEN_REVOKE.into(),
                            target: token.id.clone(),
                            detail: $crate::access::token_detail(&token),
                        };
                        Self::insert_audit(&mut *tx, &record).await?;
                        token
                    }
                    None => {
                        let mut qb =
                            sqlx::QueryBuilder::<$db>::new("SELECT * FROM api_tokens WHERE id = ");
                        qb.push_bind(id);
                        if let Some(t) = tenant {
                            qb.push(" AND tenant = ").push_bind(t);
                        }
                        match qb.build().fetch_optional(&mut *tx).await? {
                            Some(r) => Self::token_from_row(&r)?,
                            None => return Err($crate::StoreError::NotFound),
                        }
                    }
                };
                tx.commit().await?;
                Ok(token)
            }

            async fn has_tokens(&self) -> $crate::Result<bool> {
                use sqlx::Row;
                let row = sqlx::QueryBuilder::<$db>::new(
                    "SELECT count(*) AS n FROM (SELECT 1 FROM api_tokens LIMIT 1) AS t",
                )
                .build()
                .fetch_one(&self.pool)
                .await?;
                Ok(row.try_get::<i64, _>("n")? > 0)
            }

            async fn append_audit(
                &self,
                record: &$crate::access::AuditRecord,
            ) -> $crate::Result<()> {
                let mut conn = self.pool.acquire().await?;
                Self::insert_audit(&mut *conn, record).await
            }

            async fn list_audit(
                &self,
                q: &$crate::access::AuditQuery,
            ) -> $crate::Result<$crate::Page<$crate::access::AuditEntry>> {
                use sqlx::Row;
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM audit_log WHERE tenant = ");
                qb.push_bind(&q.tenant);
                if let Some(from) = q.from {
                    qb.push(" AND time >= ").push_bind(from.timestamp_millis());
                }
                if let Some(to) = q.to {
                    qb.push(" AND time < ").push_bind(to.timestamp_millis());
                }
                if let Some(c) = &q.cursor {
                    let id: i64 = c.id.parse().map_err(|_| {
                        $crate::StoreError::Invalid(format!(
                            "cursor {:?} is not one this API returned",
                            c.encode()
                        ))
                    })?;
                    qb.push(" AND (time < ")
                        .push_bind(c.ts_ms)
                        .push(" OR (time = ")
                        .push_bind(c.ts_ms)
                        .push(" AND id < ")
                        .push_bind(id)
                        .push("))");
                }
                qb.push(" ORDER BY time DESC, id DESC LIMIT ")
                    .push_bind(q.limit as i64 + 1);
                let rows = qb.build().fetch_all(&self.pool).await?;
                $crate::page_skipping(
                    rows,
                    q.limit,
                    "audit_log",
                    |r| {
                        let detail: String = r.try_get("detail")?;
                        Ok($crate::access::AuditEntry {
                            id: r.try_get("id")?,
                            record: $crate::access::AuditRecord {
                                time: chrono::TimeZone::timestamp_millis_opt(
                                    &chrono::Utc,
                                    r.try_get("time")?,
                                )
                                .single()
                                .unwrap_or_default(),
                                tenant: r.try_get("tenant")?,
                                actor: r.try_get("actor")?,
                                action: r.try_get("action")?,
                                target: r.try_get("target")?,
                                // Written as JSON by this code; anything else written by
                                // hand is still worth showing, as a string.
                                detail: serde_json::from_str(&detail)
                                    .unwrap_or(serde_json::Value::String(detail)),
                            },
                        })
                    },
                    |r| {
                        Ok($crate::Cursor {
                            ts_ms: r.try_get("time")?,
                            id: r.try_get::<i64, _>("id")?.to_string(),
                        })
                    },
                )
            }
        }

        impl $store {
            async fn insert_audit(
                conn: &mut <$db as sqlx::Database>::Connection,
                record: &$crate::access::AuditRecord,
            ) -> $crate::Result<()> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO audit_log (time, tenant, actor, action, target, detail) VALUES (",
                );
                qb.separated(", ")
                    .push_bind(record.time.timestamp_millis())
                    .push_bind(&record.tenant)
                    .push_bind(&record.actor)
                    .push_bind(&record.action)
                    .push_bind(&record.target)
                    .push_bind(record.detail.to_string());
                qb.push(")");
                qb.build().execute(conn).await?;
                Ok(())
            }
        }
    };
}
pub(crate) use access_store;

#[cfg(test)]
mod tests {
    use crate::{SqliteStore, Store};

    #[tokio::test]
    async fn tokens_and_audit_follow_the_contract_on_sqlite() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        crate::testing::access_conformance(&store).await;
    }
}
