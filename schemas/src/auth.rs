//! Who is calling the HTTP API, as authentication established it.

use std::sync::Arc;
use std::time::Duration;

/// What a token may do. Each role includes nothing of the others except `admin`, which may
/// do everything (and name another tenant with `X-Seismo-Tenant`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send points, remote_write and alerts.
    Ingest,
    /// Query anomalies, incidents and the rest.
    Read,
    /// Read, and move incidents through their lifecycle.
    Write,
    /// Everything, including tokens and the audit log.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "ingest" => Some(Role::Ingest),
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A budget a caller spends as it ingests (a per-token rate limit).
pub trait Quota: Send + Sync {
    /// Takes `points` from the budget, or says how long to wait before retrying.
    fn take(&self, points: u64) -> Result<(), Duration>;
}

/// The caller of a request: put into the request's extensions by the authentication
/// layer, read by every handler. Handlers that find none (authentication off, or a test
/// calling the router directly) fall back to the `X-Seismo-Tenant` header.
#[derive(Clone)]
pub struct Caller {
    /// The tenant every read and write of the request is confined to.
    pub tenant: String,
    /// Who acts, for the audit log and timelines: `token:<id>` or `anonymous`.
    pub actor: String,
    pub role: Role,
    /// The token's ingest budget, when it has one.
    pub quota: Option<Arc<dyn Quota>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("tenant", &self.tenant)
            .field("actor", &self.actor)
            .field("role", &self.role)
            .finish()
    }
}
