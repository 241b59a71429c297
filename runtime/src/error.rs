//! One error type for every stage: whose fault it is, and whether retrying can help.

use seismo_store::StoreError;
use seismo_transport::TransportError;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// Bad input from a producer or client: refuse it, never retry.
    User,
    /// A broker, database or disk that failed: usually worth retrying.
    External,
    /// A bug or a broken deployment: stop.
    Internal,
}

/// Why a stage could not go on, keeping the source error.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct StageError {
    pub domain: ErrorDomain,
    /// Whether the same operation may succeed later.
    pub retry: bool,
    pub context: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StageError {
    pub fn new(
        domain: ErrorDomain,
        retry: bool,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StageError {
            domain,
            retry,
            context: context.into(),
            source: source.into(),
        }
    }

    /// The same error with more context in front.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.context = format!("{what}: {}", self.context);
        self
    }
}

impl From<TransportError> for StageError {
    fn from(e: TransportError) -> Self {
        let (domain, retry) = match &e {
            TransportError::Closed(_) | TransportError::UnknownTopic(_) => {
                (ErrorDomain::Internal, false)
            }
            _ => (ErrorDomain::External, e.is_transient()),
        };
        StageError::new(domain, retry, "bus", e)
    }
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        let (domain, retry) = match &e {
            StoreError::NotFound | StoreError::IllegalTransition(_) | StoreError::Invalid(_) => {
                (ErrorDomain::User, false)
            }
            _ if e.is_transient() => (ErrorDomain::External, true),
            _ => (ErrorDomain::Internal, false),
        };
        StageError::new(domain, retry, "store", e)
    }
}
