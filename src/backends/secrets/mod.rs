//! Where `putSecret` writes: Secrets Manager, or the local encrypted vault.

pub mod aws;
pub mod embedded;

use async_trait::async_trait;
use serde::Serialize;

use super::BackendError;
use crate::domain::names::SecretName;
use crate::domain::secret::SecretValue;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PutAction {
    Created,
    Updated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutSecretOutcome {
    pub action: PutAction,
    pub arn: String,
    pub version_id: String,
}

#[async_trait]
pub trait SecretsBackend: Send + Sync {
    /// Creates or updates the secret, tagged `createdBy=DevOpsAutomation`, `requestedBy=<agent>`.
    async fn put_secret(
        &self,
        name: &SecretName,
        value: &SecretValue,
        kms_key: Option<&str>,
        requested_by: &str,
    ) -> Result<PutSecretOutcome, BackendError>;
    async fn ping(&self) -> Result<(), BackendError>;
}
