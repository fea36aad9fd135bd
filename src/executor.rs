//! The executor: performs `devops.request` events (putSecret, deployLambda)
//! and publishes `devops.completed`, with the error messages of SPEC.md §2.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::backends::bus::{EventBus, EventHandler};
use crate::backends::secrets::SecretsBackend;
use crate::backends::stacks::StacksBackend;
use crate::backends::store::Store;
use crate::backends::BackendError;
use crate::domain::events::{
    rfc3339, CompletedDetail, CompletionStatus, Envelope, DEVOPS_COMPLETED, EXECUTOR_SOURCE,
};
use crate::domain::names::{SecretName, StackName, Stage};
use crate::domain::secret::SecretValue;

/// Executions are remembered this long, so a redelivered request runs once.
const EXECUTED_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Executor {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn EventBus>,
    pub secrets: Arc<dyn SecretsBackend>,
    pub stacks: Arc<dyn StacksBackend>,
}

/// A request the executor will not or could not perform; the message is published.
struct Failure(String);

impl From<BackendError> for Failure {
    fn from(error: BackendError) -> Self {
        Failure(error.to_string())
    }
}

fn required<'a>(
    params: &'a Map<String, Value>,
    key: &str,
    action: &str,
) -> Result<&'a str, Failure> {
    match params.get(key) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(Failure(format!(
            "missing required parameter `{key}` for {action}"
        ))),
        Some(_) => Err(Failure(format!(
            "parameter `{key}` for {action} must be a string"
        ))),
    }
}

impl Executor {
    async fn perform(
        &self,
        event: &Envelope,
        detail: &Map<String, Value>,
        action: &str,
    ) -> Result<Value, Failure> {
        if !event.source.starts_with("agent.") {
            return Err(Failure(format!(
                "source `{}` is not allowed: only sources matching agent.* may request DevOps actions",
                event.source
            )));
        }
        let stage = match detail.get("stage").and_then(Value::as_str) {
            Some(stage) => Some(Stage::parse(stage).map_err(|e| Failure(e.to_string()))?),
            None => None,
        };
        let empty = Map::new();
        let params = match detail.get("params") {
            Some(Value::Object(params)) => params,
            None | Some(Value::Null) => &empty,
            Some(_) => return Err(Failure("`params` must be an object".to_string())),
        };
        let requested_by = detail
            .get("requestedBy")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        match action {
            "putSecret" => {
                let name = required(params, "name", action)?;
                let name = SecretName::parse(name).map_err(|e| Failure(e.to_string()))?;
                let value = SecretValue::new(required(params, "value", action)?.to_string());
                let kms_key = params.get("kmsKey").and_then(Value::as_str);
                let outcome = self
                    .secrets
                    .put_secret(&name, &value, kms_key, requested_by)
                    .await
                    .map_err(|error| Failure(format!("Failed to put secret {name}: {error}")))?;
                Ok(json!({
                    "secretName": name.as_str(),
                    "action": outcome.action,
                    "arn": outcome.arn,
                    "versionId": outcome.version_id,
                }))
            }
            "deployLambda" => {
                let stack = StackName::parse(required(params, "stackName", action)?)
                    .map_err(|e| Failure(e.to_string()))?;
                let stage = match params.get("stage").and_then(Value::as_str) {
                    Some(stage) => Stage::parse(stage).map_err(|e| Failure(e.to_string()))?,
                    None => stage.ok_or_else(|| {
                        Failure("missing required parameter `stage` for deployLambda".into())
                    })?,
                };
                let stack_name = stack.for_stage(stage);
                let parameters: BTreeMap<String, String> = match params.get("parameters") {
                    None | Some(Value::Null) => BTreeMap::new(),
                    Some(Value::Object(values)) => values
                        .iter()
                        .map(|(key, value)| {
                            let text = value
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| value.to_string());
                            (key.clone(), text)
                        })
                        .collect(),
                    Some(_) => {
                        return Err(Failure(
                            "`parameters` must be an object of parameter values".into(),
                        ))
                    }
                };
                match self.stacks.status(&stack_name).await? {
                    None => return Err(Failure(format!("stack {stack_name} not found: the executor never creates stacks"))),
                    Some(status) if status.ends_with("_IN_PROGRESS") => {
                        return Err(Failure(format!(
                            "stack {stack_name} is in {status} state; try again when it has finished"
                        )))
                    }
                    Some(_) => {}
                }
                let update = self.stacks.update(&stack_name, &parameters).await?;
                Ok(json!({
                    "stackName": stack_name,
                    "action": update.action,
                    "currentStatus": update.current_status,
                }))
            }
            other => Err(Failure(format!(
                "unknown action `{other}`: supported actions are putSecret and deployLambda"
            ))),
        }
    }
}

#[async_trait]
impl EventHandler for Executor {
    async fn handle(&self, event: &Envelope) -> Result<(), BackendError> {
        let started = Instant::now();
        let Value::Object(detail) = &event.detail else {
            tracing::warn!(id = %event.id, "devops.request without a detail object ignored");
            return Ok(());
        };
        let request_id = detail
            .get("requestId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let action = detail
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let requested_by = detail
            .get("requestedBy")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let outcome = if request_id.is_empty() {
            Err(Failure("missing required parameter `requestId`".into()))
        } else if !self
            .store
            .claim_once(&format!("executed:{request_id}"), EXECUTED_MEMORY)
            .await?
        {
            tracing::info!(%request_id, "devops.request delivered again; already executed");
            return Ok(());
        } else {
            self.perform(event, detail, &action).await
        };
        let (status, result, error) = match outcome {
            Ok(result) => (CompletionStatus::Success, Some(result), None),
            Err(Failure(message)) => (CompletionStatus::Error, None, Some(message)),
        };
        tracing::info!(%request_id, %action, ?status, "devops.request executed");
        let completed = CompletedDetail {
            request_id,
            action,
            status,
            result,
            error,
            latency_ms: started.elapsed().as_millis() as u64,
            requested_by,
            timestamp: rfc3339(chrono::Utc::now()),
        };
        let envelope = Envelope::new(
            DEVOPS_COMPLETED,
            EXECUTOR_SOURCE,
            serde_json::to_value(completed)?,
        );
        self.bus.publish(&envelope).await
    }
}
