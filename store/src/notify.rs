//! The notification log: pages the notify stage finished with. Written once for both SQL stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::Result;

/// How a notification ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    /// The receiver accepted it (2xx).
    Delivered,
    /// The receiver refused it for good (4xx other than 429) or kept failing past the
    /// retry budget.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Delivered => "delivered",
            NotificationStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<NotificationStatus> {
        match s {
            "delivered" => Some(NotificationStatus::Delivered),
            "failed" => Some(NotificationStatus::Failed),
            _ => None,
        }
    }
}

/// One finished notification.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct NotificationRecord {
    /// Deterministic: incident, receiver, action and its ordinal, so a replay finds it.
    pub id: String,
    pub tenant: String,
    pub incident_id: String,
    pub receiver: String,
    /// `trigger`, `acknowledge`, `resolve`.
    pub action: String,
    pub status: NotificationStatus,
    pub attempts: u32,
    /// The receiver's last answer (status and the start of its body) or the error.
    pub response: String,
    pub at: DateTime<Utc>,
}

/// A silence: while it is active, pages about the tenant's incidents whose labels match
/// every matcher are held.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Silence {
    pub id: String,
    pub tenant: String,
    /// `name=value` or `name!=value`, as routes take them.
    pub matchers: Vec<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub author: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

impl Silence {
    pub fn active_at(&self, t: DateTime<Utc>) -> bool {
        self.starts_at <= t && t < self.ends_at
    }
}

/// The notification log and silences.
#[async_trait]
pub trait NotifyStore: Send + Sync {
    async fn create_silence(&self, s: &Silence) -> Result<()>;
    /// A tenant's silences that have not ended by `now` (with `expired`, all of them),
    /// newest first, at most 1,000.
    async fn list_silences(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
        expired: bool,
    ) -> Result<Vec<Silence>>;
    /// Silences of every tenant active at `now` or starting later.
    async fn current_silences(&self, now: DateTime<Utc>) -> Result<Vec<Silence>>;
    /// Ends a silence now; `NotFound` when the tenant has no such silence.
    async fn expire_silence(&self, tenant: &str, id: &str, now: DateTime<Utc>) -> Result<Silence>;
    /// Records finished notifications; a repeated id changes nothing.
    async fn record_notifications(&self, records: &[NotificationRecord]) -> Result<()>;
    /// Which of `ids` are already recorded.
    async fn notifications_done(&self, ids: &[String]) -> Result<Vec<String>>;
    /// An incident's notifications, oldest first (at most 1,000).
    async fn incident_notifications(
        &self,
        tenant: &str,
        incident_id: &str,
    ) -> Result<Vec<NotificationRecord>>;
}

/// Implements [`NotifyStore`] for a store with a `pool` field of sqlx database `$db`.
macro_rules! notify_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn silence_from_row(
                r: &<$db as sqlx::Database>::Row,
            ) -> $crate::Result<$crate::notify::Silence> {
                use sqlx::Row;
                let at = |v: i64| {
                    chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, v)
                        .single()
                        .unwrap_or_default()
                };
                let matchers: String = r.try_get("matchers")?;
                Ok($crate::notify::Silence {
                    id: r.try_get("id")?,
                    tenant: r.try_get("tenant")?,
                    matchers: serde_json::from_str(&matchers)
                        .map_err(|e| $crate::corrupt("silence matchers", e))?,
                    starts_at: at(r.try_get("starts_at")?),
                    ends_at: at(r.try_get("ends_at")?),
                    author: r.try_get("author")?,
                    comment: r.try_get("comment")?,
                    created_at: at(r.try_get("created_at")?),
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::notify::NotifyStore for $store {
            async fn record_notifications(
                &self,
                records: &[$crate::notify::NotificationRecord],
            ) -> $crate::Result<()> {
                for chunk in records.chunks(1000) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO notifications (id, tenant, incident_id, receiver, action, status, attempts, response, at) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(&r.id)
                            .push_bind(&r.tenant)
                            .push_bind(&r.incident_id)
                            .push_bind(&r.receiver)
                            .push_bind(&r.action)
                            .push_bind(r.status.as_str())
                            .push_bind(r.attempts as i64)
                            .push_bind(&r.response)
                            .push_bind(r.at.timestamp_millis());
                    });
                    qb.push(" ON CONFLICT (id) DO NOTHING");
                    qb.build().persistent(chunk.len() == 1000).execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn create_silence(&self, s: &$crate::notify::Silence) -> $crate::Result<()> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO silences (id, tenant, matchers, starts_at, ends_at, author, comment, created_at) VALUES (",
                );
                qb.separated(", ")
                    .push_bind(&s.id)
                    .push_bind(&s.tenant)
                    .push_bind(serde_json::to_string(&s.matchers).expect("strings serialise"))
                    .push_bind(s.starts_at.timestamp_millis())
                    .push_bind(s.ends_at.timestamp_millis())
                    .push_bind(&s.author)
                    .push_bind(&s.comment)
                    .push_bind(s.created_at.timestamp_millis());
                qb.push(")");
                qb.build().execute(&self.pool).await?;
                Ok(())
            }

            async fn list_silences(
                &self,
                tenant: &str,
                now: chrono::DateTime<chrono::Utc>,
                expired: bool,
            ) -> $crate::Result<Vec<$crate::notify::Silence>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM silences WHERE tenant = ");
                qb.push_bind(tenant);
                if !expired {
                    qb.push(" AND ends_at > ").push_bind(now.timestamp_millis());
                }
                qb.push(" ORDER BY created_at DESC, id LIMIT 1000");
                let rows = qb.build().fetch_all(&self.pool).await?;
                Ok($crate::skip_undecodable("silences", rows.iter().map(Self::silence_from_row)))
            }

            async fn current_silences(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<Vec<$crate::notify::Silence>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM silences WHERE ends_at > ");
                qb.push_bind(now.timestamp_millis()).push(" ORDER BY id LIMIT 100000");
                let rows = qb.build().fetch_all(&self.pool).await?;
                Ok($crate::skip_undecodable("silences", rows.iter().map(Self::silence_from_row)))
            }

            async fn expire_silence(
                &self,
                tenant: &str,
                id: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<$crate::notify::Silence> {
                let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE silences SET ends_at = ");
                qb.push_bind(now.timestamp_millis())
                    .push(" WHERE tenant = ")
                    .push_bind(tenant)
                    .push(" AND id = ")
                    .push_bind(id)
                    .push(" AND ends_at > ")
                    .push_bind(now.timestamp_millis());
                qb.build().execute(&self.pool).await?;
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT * FROM silences WHERE tenant = ");
                qb.push_bind(tenant).push(" AND id = ").push_bind(id);
                match qb.build().fetch_optional(&self.pool).await? {
                    Some(r) => Self::silence_from_row(&r),
                    None => Err($crate::StoreError::NotFound),
                }
            }

            async fn notifications_done(&self, ids: &[String]) -> $crate::Result<Vec<String>> {
                use sqlx::Row;
                let mut out = Vec::new();
                for chunk in ids.chunks(500) {
                    let mut qb =
                        sqlx::QueryBuilder::<$db>::new("SELECT id FROM notifications WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id);
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&self.pool).await? {
                        out.push(r.try_get("id")?);
                    }
                }
                Ok(out)
            }

            async fn incident_notifications(
                &self,
                tenant: &str,
                incident_id: &str,
            ) -> $crate::Result<Vec<$crate::notify::NotificationRecord>> {
                use sqlx::Row;
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "SELECT * FROM notifications WHERE tenant = ",
                );
                qb.push_bind(tenant)
                    .push(" AND incident_id = ")
                    .push_bind(incident_id)
                    .push(" ORDER BY at, id LIMIT 1000");
                let rows = qb.build().fetch_all(&self.pool).await?;
                let decode = |r: &<$db as sqlx::Database>::Row| -> $crate::Result<$crate::notify::NotificationRecord> {
                    let status: String = r.try_get("status")?;
                    Ok($crate::notify::NotificationRecord {
                        id: r.try_get("id")?,
                        tenant: r.try_get("tenant")?,
                        incident_id: r.try_get("incident_id")?,
                        receiver: r.try_get("receiver")?,
                        action: r.try_get("action")?,
                        status: $crate::notify::NotificationStatus::parse(&status)
                            .ok_or_else(|| $crate::corrupt("notification status", &status))?,
                        attempts: r.try_get::<i64, _>("attempts")? as u32,
                        response: r.try_get("response")?,
                        at: chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, r.try_get("at")?)
                            .single()
                            .unwrap_or_default(),
                    })
                };
                Ok($crate::skip_undecodable("notifications", rows.iter().map(decode)))
            }
        }
    };
}
pub(crate) use notify_store;
