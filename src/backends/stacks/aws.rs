//! CloudFormation: update an existing stack with its previous template,
//! changing only the parameters named; never create one.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_cloudformation::types::{Parameter, Stack};
use aws_sdk_cloudformation::Client;

use super::{StackUpdate, StacksBackend};
use crate::backends::aws::classify;
use crate::backends::BackendError;

pub struct CloudFormation {
    client: Client,
}

/// CloudFormation answers a describe of a missing stack with a ValidationError.
fn is_missing(error: &BackendError) -> bool {
    matches!(error, BackendError::Refused(message) if message.contains("does not exist"))
}

impl CloudFormation {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn describe(&self, stack_name: &str) -> Result<Option<Stack>, BackendError> {
        match self
            .client
            .describe_stacks()
            .stack_name(stack_name)
            .send()
            .await
        {
            Ok(output) => Ok(output.stacks.unwrap_or_default().into_iter().next()),
            Err(error) => {
                let error = classify("DescribeStacks", error);
                if is_missing(&error) {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }
}

#[async_trait]
impl StacksBackend for CloudFormation {
    async fn status(&self, stack_name: &str) -> Result<Option<String>, BackendError> {
        Ok(self
            .describe(stack_name)
            .await?
            .and_then(|stack| stack.stack_status)
            .map(|status| status.as_str().to_string()))
    }

    async fn update(
        &self,
        stack_name: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<StackUpdate, BackendError> {
        let Some(stack) = self.describe(stack_name).await? else {
            return Err(BackendError::NotFound(format!(
                "Stack with id {stack_name} does not exist"
            )));
        };
        let existing: Vec<String> = stack
            .parameters()
            .iter()
            .filter_map(|parameter| parameter.parameter_key().map(str::to_string))
            .collect();
        let unknown: Vec<&str> = parameters
            .keys()
            .filter(|key| !existing.contains(key))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(BackendError::Refused(format!(
                "stack {stack_name} has no parameter(s) {}; it has: {}",
                unknown.join(", "),
                if existing.is_empty() {
                    "none".to_string()
                } else {
                    existing.join(", ")
                }
            )));
        }
        let new_parameters = existing
            .iter()
            .map(|key| match parameters.get(key) {
                Some(value) => Parameter::builder()
                    .parameter_key(key)
                    .parameter_value(value)
                    .build(),
                None => Parameter::builder()
                    .parameter_key(key)
                    .use_previous_value(true)
                    .build(),
            })
            .collect();
        let updated = self
            .client
            .update_stack()
            .stack_name(stack_name)
            .use_previous_template(true)
            .set_parameters(Some(new_parameters))
            .set_capabilities(Some(stack.capabilities().to_vec()))
            .send()
            .await;
        let action = match updated {
            Ok(_) => "updated",
            Err(error) => {
                let error = classify("UpdateStack", error);
                match &error {
                    BackendError::Refused(message)
                        if message.contains("No updates are to be performed") =>
                    {
                        "no_changes"
                    }
                    _ => return Err(error),
                }
            }
        };
        let current_status = self
            .status(stack_name)
            .await?
            .unwrap_or_else(|| "UNKNOWN".to_string());
        // CloudFormation updates run on after the call returns; say so rather than claim it is done.
        let action = if action == "updated" && current_status.ends_with("_IN_PROGRESS") {
            "update_started"
        } else {
            action
        };
        Ok(StackUpdate {
            action,
            current_status,
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.client
            .list_stacks()
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("ListStacks", e))
    }
}
