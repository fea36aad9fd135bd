//! The request service: creates requests under policy, applies approvals and
//! completions as conditional writes, and answers status questions. Every
//! state change and the effects it causes are written together.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{json, Value};

use crate::backends::bus::EventHandler;
use crate::backends::store::{Effect, Store, UpdateOutcome};
use crate::backends::BackendError;
use crate::domain::events::{rfc3339, CompletedDetail, CompletionStatus, Envelope, CHATOPS_AGENT};
use crate::domain::names::{Person, RequestId, Stage};
use crate::domain::policy::Policy;
use crate::domain::request::{Action, ActionKind, Origin, Outcome, Refusal, Request, Status};
use crate::domain::secret::{SealError, Sealer, SecretValue};

/// How long a request or a click waits for a store that cannot be reached
/// before it is dropped with a message; Slack's `response_url`, which
/// carries the late answer, works for 30 minutes.
const HOLD_AT_MOST: Duration = Duration::from_secs(25 * 60);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LONGEST_RETRY: Duration = Duration::from_secs(10);
/// How long a chat delivery (a click, an event) is told from its repeats: chat
/// platforms retry one they did not hear back about for a few minutes at most.
pub const DELIVERIES_REMEMBERED: Duration = Duration::from_secs(24 * 3600);

/// Runs `attempt` again while the store cannot be reached (up to
/// `HOLD_AT_MOST`); `on_hold` hears of the first such failure, so the person
/// is told of the delay at once.
async fn hold_while_unreachable<T, Fut>(
    mut attempt: impl FnMut(bool) -> Fut,
    on_hold: impl FnOnce(),
) -> Result<T, RequestError>
where
    Fut: Future<Output = Result<T, RequestError>>,
{
    let started = Instant::now();
    let mut on_hold = Some(on_hold);
    let mut wait = FIRST_RETRY;
    loop {
        match attempt(on_hold.is_none()).await {
            Err(RequestError::Backend(BackendError::Unavailable(reason)))
                if started.elapsed() < HOLD_AT_MOST =>
            {
                if let Some(tell) = on_hold.take() {
                    tell();
                }
                tracing::warn!(%reason, retry_in_ms = wait.as_millis() as u64, "the store cannot be reached; holding on to the request");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LONGEST_RETRY);
            }
            other => return other,
        }
    }
}

/// How a chat click or command failed, told to the person.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Click(#[from] Refusal),
    #[error("request {0} was not found")]
    NotFound(RequestId),
    #[error("the bot's store is unavailable; nothing was changed, please try again ({0})")]
    Backend(#[from] BackendError),
}

/// What the person asked for, before policy.
pub enum NewAction {
    PutSecret {
        name: crate::domain::names::SecretName,
        kms_key: Option<String>,
        value: SecretValue,
    },
    Deploy {
        stack: crate::domain::names::StackName,
    },
}

pub enum Verdict {
    Approve,
    Reject,
}

pub struct RequestService {
    store: Arc<dyn Store>,
    policy: Policy,
    sealer: Sealer,
    default_stage: Stage,
    outbox_wake: Arc<tokio::sync::Notify>,
}

impl RequestService {
    pub fn new(
        store: Arc<dyn Store>,
        policy: Policy,
        sealer: Sealer,
        default_stage: Stage,
        outbox_wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            store,
            policy,
            sealer,
            default_stage,
            outbox_wake,
        }
    }

    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    pub fn stage_or_default(&self, stage: Option<Stage>) -> Stage {
        stage.unwrap_or(self.default_stage)
    }

    /// Checks policy before asking for a secret value, so nobody types a value in vain.
    pub fn may_request(
        &self,
        kind: ActionKind,
        stage: Stage,
        requester: &Person,
    ) -> Result<(), RequestError> {
        self.policy
            .decide(kind, stage, &requester.identity())
            .map(|_| ())
            .map_err(RequestError::Refused)
    }

    /// Creates the request under policy. While the store cannot be reached
    /// the request is held and tried again; `on_hold` hears of it once.
    pub async fn submit(
        &self,
        action: NewAction,
        stage: Stage,
        requester: Person,
        origin: Origin,
        on_hold: impl FnOnce(),
    ) -> Result<Request, RequestError> {
        let action = match action {
            NewAction::PutSecret {
                name,
                kms_key,
                value,
            } => Action::PutSecret {
                name,
                kms_key,
                sealed_value: Some(self.sealer.seal_secret(&value)),
            },
            NewAction::Deploy { stack } => Action::DeployLambda { stack },
        };
        let decision = self
            .policy
            .decide(action.kind(), stage, &requester.identity())
            .map_err(RequestError::Refused)?;
        let request = Request::new(action, stage, requester, origin, decision, Utc::now());
        let mut effects = vec![Effect::PostCard {
            request_id: request.id.clone(),
        }];
        if request.status == Status::Approved {
            effects.push(Effect::Publish {
                request_id: request.id.clone(),
            });
        }
        hold_while_unreachable(
            |retrying| {
                let (request, effects) = (&request, &effects);
                async move {
                    match self.store.create_request(request, effects).await {
                        // An attempt whose answer was lost had stored it.
                        Err(BackendError::Refused(_))
                            if retrying && self.store.request(&request.id).await?.is_some() =>
                        {
                            Ok(())
                        }
                        stored => Ok(stored?),
                    }
                }
            },
            on_hold,
        )
        .await?;
        tracing::info!(request_id = %request.id, action = request.action.kind().as_str(), stage = %stage, requester = %request.requester.identity(), status = request.status.as_str(), "request created");
        self.outbox_wake.notify_one();
        Ok(request)
    }

    /// Applies an Approve or Reject click once per `delivery`, the key its
    /// repeats share (Slack retries a click it did not hear back about): the
    /// decision and the claim of the key are one write. `None` for a repeat.
    /// Held while the store cannot be reached (`on_hold` hears of it once).
    pub async fn decide(
        &self,
        id: &RequestId,
        who: &Person,
        verdict: Verdict,
        delivery: &str,
        on_hold: impl FnOnce(),
    ) -> Result<Option<Request>, RequestError> {
        hold_while_unreachable(|_| self.decide_now(id, who, &verdict, delivery), on_hold).await
    }

    /// Concurrent clicks race on the request's version: the loser re-reads
    /// and sees the winner's state.
    async fn decide_now(
        &self,
        id: &RequestId,
        who: &Person,
        verdict: &Verdict,
        delivery: &str,
    ) -> Result<Option<Request>, RequestError> {
        loop {
            let mut request = self
                .store
                .request(id)
                .await?
                .ok_or_else(|| RequestError::NotFound(id.clone()))?;
            let now = Utc::now();
            let approved = match verdict {
                Verdict::Approve => request.approve(who, now)?,
                Verdict::Reject => {
                    request.reject(who, now)?;
                    false
                }
            };
            let mut effects = vec![Effect::UpdateCard {
                request_id: request.id.clone(),
            }];
            if approved {
                effects.push(Effect::Publish {
                    request_id: request.id.clone(),
                });
            }
            match self
                .store
                .update_request_claiming(
                    &request,
                    &effects,
                    Some((delivery, DELIVERIES_REMEMBERED)),
                )
                .await?
            {
                UpdateOutcome::Written => {
                    tracing::info!(request_id = %id, by = %who.identity(), status = request.status.as_str(), "request decided");
                    self.outbox_wake.notify_one();
                    return Ok(Some(request));
                }
                UpdateOutcome::Repeated => return Ok(None),
                UpdateOutcome::Stale => {}
            }
        }
    }

    /// Applies a `devops.completed`; a repeated delivery changes nothing and posts nothing.
    pub async fn complete(&self, detail: &CompletedDetail) -> Result<bool, BackendError> {
        let Ok(id) = RequestId::parse(&detail.request_id) else {
            return Ok(false);
        };
        loop {
            let Some(mut request) = self.store.request(&id).await? else {
                tracing::info!(request_id = %id, "devops.completed for a request the bot did not make; ignored");
                return Ok(false);
            };
            let succeeded = detail.status == CompletionStatus::Success;
            let outcome = Outcome {
                summary: summarize(detail),
                latency_ms: detail.latency_ms,
                at: Utc::now(),
            };
            let reply = thread_reply(&request, succeeded, &outcome);
            if !request.complete(succeeded, outcome) {
                tracing::info!(request_id = %id, status = request.status.as_str(), "devops.completed delivered again; ignored");
                return Ok(false);
            }
            let effects = [
                Effect::ThreadReply {
                    request_id: id.clone(),
                    text: reply,
                },
                Effect::UpdateCard {
                    request_id: id.clone(),
                },
            ];
            if self.store.update_request(&request, &effects).await? {
                self.outbox_wake.notify_one();
                return Ok(true);
            }
        }
    }

    /// Expires pending requests whose time is up and updates their cards.
    pub async fn expire_due(&self) -> Result<usize, BackendError> {
        let mut expired = 0;
        for mut request in self.store.expired_requests(Utc::now()).await? {
            if request.expire(Utc::now()) {
                let effects = [Effect::UpdateCard {
                    request_id: request.id.clone(),
                }];
                if self.store.update_request(&request, &effects).await? {
                    expired += 1;
                }
            }
        }
        if expired > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(expired)
    }

    /// Marks an approved request published, unless the completion got there
    /// first. `request` is as it was read before publishing; it is read again
    /// only if it has changed since.
    pub async fn mark_published(&self, mut request: Request) -> Result<(), BackendError> {
        loop {
            if !request.mark_published(Utc::now())
                || self.store.update_request(&request, &[]).await?
            {
                return Ok(());
            }
            let Some(current) = self.store.request(&request.id).await? else {
                return Ok(());
            };
            request = current;
        }
    }

    /// The `devops.request` detail of SPEC.md §2, with the secret value opened.
    pub fn request_detail(&self, request: &Request) -> Result<Value, SealError> {
        let params = match &request.action {
            Action::PutSecret {
                name,
                kms_key,
                sealed_value,
            } => {
                let sealed = sealed_value.as_ref().ok_or(SealError::Open)?;
                let value = self.sealer.open_secret(sealed)?;
                let mut params = json!({"name": name.as_str(), "value": value.expose()});
                if let Some(kms_key) = kms_key {
                    params["kmsKey"] = json!(kms_key);
                }
                params
            }
            Action::DeployLambda { stack } => {
                json!({"stackName": stack.as_str(), "stage": request.stage})
            }
        };
        Ok(json!({
            "requestId": request.id,
            "action": request.action.kind().as_str(),
            "stage": request.stage,
            "params": params,
            "requestedBy": CHATOPS_AGENT,
            "ts": rfc3339(Utc::now()),
            "initiator": request.requester,
            "approvals": request.approvals.iter().map(|a| json!({
                "platform": a.platform, "userId": a.user_id, "userName": a.user_name, "at": rfc3339(a.at),
            })).collect::<Vec<_>>(),
        }))
    }

    pub async fn get(&self, id: &RequestId) -> Result<Request, RequestError> {
        self.store
            .request(id)
            .await?
            .ok_or_else(|| RequestError::NotFound(id.clone()))
    }

    pub async fn recent(&self, requester: &Person) -> Result<Vec<Request>, RequestError> {
        Ok(self.store.requests_by(&requester.identity(), 5).await?)
    }

    pub async fn pending(&self) -> Result<Vec<Request>, RequestError> {
        Ok(self.store.pending_requests().await?)
    }
}

fn summarize(detail: &CompletedDetail) -> String {
    match (&detail.error, &detail.result) {
        (Some(error), _) => error.clone(),
        (None, Some(result)) => {
            let field = |key: &str| {
                result
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            match detail.action.as_str() {
                "putSecret" => format!("{} (version {})", field("action"), field("versionId")),
                "deployLambda" => format!("{}, now {}", field("action"), field("currentStatus")),
                _ => result.to_string(),
            }
        }
        (None, None) => "done".to_string(),
    }
}

fn thread_reply(request: &Request, succeeded: bool, outcome: &Outcome) -> String {
    let target = request.action.target(request.stage);
    let action = request.action.kind().as_str();
    if succeeded {
        format!(
            "✅ {action} `{target}` on {} succeeded in {} ms: {}",
            request.stage, outcome.latency_ms, outcome.summary
        )
    } else {
        format!(
            "❌ {action} `{target}` on {} failed after {} ms: {}",
            request.stage, outcome.latency_ms, outcome.summary
        )
    }
}

/// The notifier: `devops.completed` events become thread replies and card updates.
pub struct CompletionNotifier(pub Arc<RequestService>);

#[async_trait]
impl EventHandler for CompletionNotifier {
    async fn handle(&self, event: &Envelope) -> Result<(), BackendError> {
        match serde_json::from_value::<CompletedDetail>(event.detail.clone()) {
            Ok(detail) => self.0.complete(&detail).await.map(|_| ()),
            Err(error) => {
                tracing::warn!(id = %event.id, %error, "malformed devops.completed ignored");
                Ok(())
            }
        }
    }
}

/// Expires requests on a timer until shutdown.
pub async fn run_expiry(
    service: Arc<RequestService>,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {
                if let Err(error) = service.expire_due().await {
                    tracing::warn!(%error, "expiring requests failed");
                }
            }
        }
    }
}
