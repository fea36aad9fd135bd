//! Backends behind small traits, each with an `embedded` implementation
//! (SQLite, in-process bus, local vault and stack registry) and an `aws` one
//! (DynamoDB, EventBridge, Secrets Manager, CloudFormation) side by side.

pub mod aws;
pub mod bus;
pub mod open;
pub mod secrets;
pub mod sqlite;
pub mod stacks;
pub mod store;

/// A backend failure, classified by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Refused(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for BackendError {
    fn from(error: rusqlite::Error) -> Self {
        BackendError::Unavailable(format!("sqlite: {error}"))
    }
}

impl From<serde_json::Error> for BackendError {
    fn from(error: serde_json::Error) -> Self {
        BackendError::Unavailable(format!("stored data is damaged: {error}"))
    }
}
