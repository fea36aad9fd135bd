//! The executor: performs `devops.request` events (putSecret, deployLambda)
//! and publishes `devops.completed`, with the error messages of SPEC.md §2.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::backends::bus::{EventBus, EventHandler};
use crate::backends::secrets::SecretsBackend;
use crate::backends::stacks::StacksBackend;
use crate::backends::store::{Execution, Store};
use crate::backends::BackendError;
use crate::domain::events::{
    rfc3339, CompletedDetail, CompletionStatus, Envelope, DEVOPS_COMPLETED, EXECUTOR_SOURCE,
};
use crate::domain::names::{SecretName, StackName, Stage};
use crate::domain::secret::SecretValue;
use crate::metrics::Metrics;

/// An execution that started this long ago and never finished was cut off
/// (a crash mid-way); its outcome is unknown, and it is not run again.
const INTERRUPTED_AFTER: chrono::Duration = chrono::Duration::minutes(15);
/// Longer request ids are refused rather than used as store keys.
const MAX_REQUEST_ID_LEN: usize = 128;

pub struct Executor {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn EventBus>,
    pub secrets: Arc<dyn SecretsBackend>,
    pub stacks: Arc<dyn StacksBackend>,
    pub metrics: Arc<Metrics>,
    /// Set when this process is the only executor of its store (embedded):
    /// an execution left unfinished from before it started was cut off by a
    /// crash, and need not wait out `INTERRUPTED_AFTER`.
    pub sole_executor_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a request was not performed.
enum Failure {
    /// It will never succeed as asked; the message is published as the error.
    Refused(String),
    /// A backend could not be reached: nothing happened, so deliver the request again later.
    Unavailable(BackendError),
}

use Failure::Refused;

impl From<BackendError> for Failure {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::Unavailable(_) => Failure::Unavailable(error),
            other => Refused(other.to_string()),
        }
    }
}

fn required<'a>(
    params: &'a Map<String, Value>,
    key: &str,
    action: &str,
) -> Result<&'a str, Failure> {
    match params.get(key) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(Refused(format!(
            "missing required parameter `{key}` for {action}"
        ))),
        Some(_) => Err(Refused(format!(
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
            return Err(Refused(format!(
                "source `{}` is not allowed: only sources matching agent.* may request DevOps actions",
                event.source
            )));
        }
        let stage = match detail.get("stage").and_then(Value::as_str) {
            Some(stage) => Some(Stage::parse(stage).map_err(|e| Refused(e.to_string()))?),
            None => None,
        };
        let empty = Map::new();
        let params = match detail.get("params") {
            Some(Value::Object(params)) => params,
            None | Some(Value::Null) => &empty,
            Some(_) => return Err(Refused("`params` must be an object".to_string())),
        };
        let requested_by = detail
            .get("requestedBy")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        match action {
            "putSecret" => {
                let name = required(params, "name", action)?;
                let name = SecretName::parse(name).map_err(|e| Refused(e.to_string()))?;
                let value = SecretValue::new(required(params, "value", action)?.to_string());
                let kms_key = params.get("kmsKey").and_then(Value::as_str);
                let outcome = self
                    .secrets
                    .put_secret(&name, &value, kms_key, requested_by)
                    .await
                    .map_err(|error| match error {
                        BackendError::Unavailable(_) => Failure::Unavailable(error),
                        other => Refused(format!("Failed to put secret {name}: {other}")),
                    })?;
                Ok(json!({
                    "secretName": name.as_str(),
                    "action": outcome.action,
                    "arn": outcome.arn,
                    "versionId": outcome.version_id,
                }))
            }
            "deployLambda" => {
                let stack = StackName::parse(required(params, "stackName", action)?)
                    .map_err(|e| Refused(e.to_string()))?;
                let stage = match params.get("stage").and_then(Value::as_str) {
                    Some(stage) => Stage::parse(stage).map_err(|e| Refused(e.to_string()))?,
                    None => stage.ok_or_else(|| {
                        Refused("missing required parameter `stage` for deployLambda".into())
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
                        return Err(Refused(
                            "`parameters` must be an object of parameter values".into(),
                        ))
                    }
                };
                match self.stacks.status(&stack_name).await? {
                    None => return Err(Refused(format!("stack {stack_name} not found: the executor never creates stacks"))),
                    Some(status) if status.ends_with("_IN_PROGRESS") => {
                        return Err(Refused(format!(
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
            other => Err(Refused(format!(
                "unknown action `{other}`: supported actions are putSecret and deployLambda"
            ))),
        }
    }
}

impl Executor {
    fn was_interrupted(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        now - since >= INTERRUPTED_AFTER
            || self
                .sole_executor_since
                .is_some_and(|started| since < started)
    }

    async fn completion_for(
        &self,
        request_id: &str,
        action: &str,
        requested_by: &str,
        outcome: Result<Value, String>,
        started: Instant,
    ) -> Result<Envelope, BackendError> {
        let latency = started.elapsed();
        self.metrics
            .execution(action, outcome.is_ok(), latency.as_secs_f64());
        let (status, result, error) = match outcome {
            Ok(result) => (CompletionStatus::Success, Some(result), None),
            Err(message) => (CompletionStatus::Error, None, Some(message)),
        };
        tracing::info!(%request_id, %action, ?status, "devops.request completed");
        let completed = CompletedDetail {
            request_id: request_id.to_string(),
            action: action.to_string(),
            status,
            result,
            error,
            latency_ms: latency.as_millis() as u64,
            requested_by: requested_by.to_string(),
            timestamp: rfc3339(chrono::Utc::now()),
        };
        Ok(Envelope::new(
            DEVOPS_COMPLETED,
            EXECUTOR_SOURCE,
            serde_json::to_value(completed)?,
        ))
    }
}

#[async_trait]
impl EventHandler for Executor {
    /// Runs each `requestId` once. A redelivery of a finished request
    /// re-publishes its completion; one that finds it running is retried later.
    async fn handle(&self, event: &Envelope) -> Result<(), BackendError> {
        let started = Instant::now();
        let empty = Map::new();
        let detail = match &event.detail {
            Value::Object(detail) => detail,
            _ => &empty,
        };
        let text = |key: &str| detail.get(key).and_then(Value::as_str).unwrap_or_default();
        let (request_id, action) = (text("requestId"), text("action"));
        let requested_by = match text("requestedBy") {
            "" => "unknown",
            agent => agent,
        };
        if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_LEN {
            let problem = if request_id.is_empty() {
                "missing required parameter `requestId`".to_string()
            } else {
                format!("`requestId` is longer than {MAX_REQUEST_ID_LEN} characters")
            };
            let completion = self
                .completion_for(request_id, action, requested_by, Err(problem), started)
                .await?;
            return self.bus.publish(&completion).await;
        }
        let now = chrono::Utc::now();
        let completion = match self.store.start_execution(request_id, now).await? {
            Execution::Finished(completion) => {
                tracing::info!(%request_id, "devops.request delivered again; re-publishing its completion");
                *completion
            }
            Execution::Running { since } if !self.was_interrupted(since, now) => {
                return Err(BackendError::Unavailable(format!(
                    "request {request_id} is being executed by another delivery since {since}"
                )));
            }
            Execution::Running { since } => {
                tracing::warn!(%request_id, since = %rfc3339(since), "devops.request found interrupted; its outcome is unknown and it is not run again");
                let message = format!(
                    "an earlier attempt at request {request_id} started at {} and was interrupted; its outcome is unknown, so it is not run again: check the target before requesting anew",
                    rfc3339(since)
                );
                let completion = self
                    .completion_for(request_id, action, requested_by, Err(message), started)
                    .await?;
                self.store.finish_execution(request_id, &completion).await?;
                completion
            }
            Execution::Started => {
                let performed = self.perform(event, detail, action).await;
                tracing::info!(%request_id, %action, "devops.request performed");
                let outcome = match performed {
                    Ok(result) => Ok(result),
                    Err(Refused(message)) => Err(message),
                    Err(Failure::Unavailable(error)) => {
                        tracing::warn!(%request_id, %error, "devops.request not performed; backend unavailable, will be delivered again");
                        self.store.abandon_execution(request_id).await?;
                        return Err(error);
                    }
                };
                let completion = self
                    .completion_for(request_id, action, requested_by, outcome, started)
                    .await?;
                self.store.finish_execution(request_id, &completion).await?;
                completion
            }
        };
        self.bus.publish(&completion).await
    }
}
