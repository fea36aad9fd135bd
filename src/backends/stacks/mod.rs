//! Where `deployLambda` acts: CloudFormation, or the local stack registry.

pub mod aws;
pub mod embedded;

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::BackendError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackUpdate {
    /// `updated`, or `no_changes` when CloudFormation says "No updates are to be performed".
    pub action: &'static str,
    pub current_status: String,
}

#[async_trait]
pub trait StacksBackend: Send + Sync {
    /// The stack's status (e.g. `UPDATE_COMPLETE`), or None if it does not exist.
    async fn status(&self, stack_name: &str) -> Result<Option<String>, BackendError>;
    /// Updates the existing stack with its previous template, changing only `parameters`.
    async fn update(
        &self,
        stack_name: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<StackUpdate, BackendError>;
    async fn ping(&self) -> Result<(), BackendError>;
}
