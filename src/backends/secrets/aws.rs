//! Secrets Manager: create the secret, or put a new version of it if it
//! exists; tags say who asked.

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::types::Tag;
use aws_sdk_secretsmanager::Client;

use super::{PutAction, PutSecretOutcome, SecretsBackend};
use crate::backends::aws::classify;
use crate::backends::BackendError;
use crate::domain::names::SecretName;
use crate::domain::secret::SecretValue;

pub struct SecretsManager {
    client: Client,
}

fn tags(requested_by: &str) -> Vec<Tag> {
    [
        ("createdBy", "DevOpsAutomation"),
        ("requestedBy", requested_by),
    ]
    .into_iter()
    .map(|(key, value)| Tag::builder().key(key).value(value).build())
    .collect()
}

impl SecretsManager {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The value of one of the bot's own secrets, creating it with `initial`
    /// if it does not exist yet (two replicas starting together agree on one).
    pub async fn get_or_create(
        &self,
        name: &str,
        initial: SecretValue,
    ) -> Result<SecretValue, BackendError> {
        let created = self
            .client
            .create_secret()
            .name(name)
            .secret_string(initial.expose())
            .description("devops-bot: seals secret values waiting for approval")
            .tags(Tag::builder().key("createdBy").value("devops-bot").build())
            .send()
            .await;
        match created {
            Ok(_) => return Ok(initial),
            Err(SdkError::ServiceError(service))
                if service.err().is_resource_exists_exception() => {}
            Err(error) => return Err(classify("Secrets Manager CreateSecret", error)),
        }
        let existing = self
            .client
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| classify("Secrets Manager GetSecretValue", e))?;
        existing
            .secret_string
            .map(SecretValue::new)
            .ok_or_else(|| BackendError::Refused(format!("secret {name} has no string value")))
    }
}

#[async_trait]
impl SecretsBackend for SecretsManager {
    async fn put_secret(
        &self,
        name: &SecretName,
        value: &SecretValue,
        kms_key: Option<&str>,
        requested_by: &str,
    ) -> Result<PutSecretOutcome, BackendError> {
        let created = self
            .client
            .create_secret()
            .name(name.as_str())
            .secret_string(value.expose())
            .set_kms_key_id(kms_key.map(str::to_string))
            .set_tags(Some(tags(requested_by)))
            .send()
            .await;
        match created {
            Ok(output) => {
                return Ok(PutSecretOutcome {
                    action: PutAction::Created,
                    arn: output.arn.unwrap_or_default(),
                    version_id: output.version_id.unwrap_or_default(),
                })
            }
            Err(SdkError::ServiceError(service))
                if service.err().is_resource_exists_exception() => {}
            Err(error) => return Err(classify("CreateSecret", error)),
        }
        let updated = self
            .client
            .update_secret()
            .secret_id(name.as_str())
            .secret_string(value.expose())
            .set_kms_key_id(kms_key.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("UpdateSecret", e))?;
        self.client
            .tag_resource()
            .secret_id(name.as_str())
            .set_tags(Some(tags(requested_by)))
            .send()
            .await
            .map_err(|e| classify("TagResource", e))?;
        Ok(PutSecretOutcome {
            action: PutAction::Updated,
            arn: updated.arn.unwrap_or_default(),
            version_id: updated.version_id.unwrap_or_default(),
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.client
            .list_secrets()
            .max_results(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("Secrets Manager ListSecrets", e))
    }
}
