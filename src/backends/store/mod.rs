//! The bot's state: requests (with their audit trail), chat thread references,
//! dedupe keys and the outbox of effects still to be carried out.

pub mod aws;
pub mod embedded;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::BackendError;
use crate::domain::events::Envelope;
use crate::domain::names::RequestId;
use crate::domain::request::Request;

/// Something to do after a state change, written in the same atomic write as
/// the change, so a crash can delay it but never lose or duplicate the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "camelCase")]
pub enum Effect {
    /// Publish the approved request as `devops.request`.
    Publish { request_id: RequestId },
    /// Post the request's card in its channel (opening its thread).
    PostCard { request_id: RequestId },
    /// Re-render the card from the request's current state.
    UpdateCard { request_id: RequestId },
    /// Post `text` in the card's thread.
    ThreadReply { request_id: RequestId, text: String },
    /// Tell one person something only they see.
    Ephemeral {
        platform: String,
        channel: String,
        user: String,
        text: String,
    },
}

impl Effect {
    /// The request whose state this effect carries out, if it is about one.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Effect::Publish { request_id }
            | Effect::PostCard { request_id }
            | Effect::UpdateCard { request_id }
            | Effect::ThreadReply { request_id, .. } => Some(request_id),
            Effect::Ephemeral { .. } => None,
        }
    }

    /// Effects in the same lane run one at a time, in the order written:
    /// a thread's card is posted before its replies, its replies stay in order.
    pub fn lane(&self) -> String {
        match self {
            Effect::Publish { request_id } => format!("publish:{request_id}"),
            Effect::PostCard { request_id }
            | Effect::UpdateCard { request_id }
            | Effect::ThreadReply { request_id, .. } => format!("thread:{request_id}"),
            Effect::Ephemeral { channel, user, .. } => format!("user:{channel}:{user}"),
        }
    }
}

/// Names one queued effect in the store that holds it; opaque to everyone else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EffectId(String);

impl EffectId {
    pub fn new(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEffect {
    pub id: EffectId,
    pub effect: Effect,
    pub attempts: u32,
    /// An earlier claim of this effect ended without an outcome (its holder
    /// died or hung mid-call), so it may have been carried out already.
    pub interrupted: bool,
}

/// What the executor finds when it starts on a `requestId`.
#[derive(Debug, Clone, PartialEq)]
pub enum Execution {
    /// Nobody has run it: this caller now owns it.
    Started,
    /// Another delivery started it at `since` and has not finished.
    Running { since: DateTime<Utc> },
    /// It ran; this is the completion that was published for it.
    Finished(Box<Envelope>),
}

/// What [`Store::update_request_claiming`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The request, its effects and the delivery's key were written together.
    Written,
    /// Another writer changed the request first: nothing was written.
    Stale,
    /// The delivery's key was claimed already (a repeat): nothing was written.
    Repeated,
}

/// The chat message that holds a request's card; replies go in its thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRef {
    pub platform: String,
    pub channel: String,
    pub ts: String,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a new request with its first effects; fails if the id exists.
    async fn create_request(
        &self,
        request: &Request,
        effects: &[Effect],
    ) -> Result<(), BackendError>;
    async fn request(&self, id: &RequestId) -> Result<Option<Request>, BackendError>;
    /// Writes `request` only if the stored version is still `request.version`
    /// (then stored as version + 1), together with `effects` and, if given,
    /// the `claim` of a delivery's dedupe key for its time (a click Slack may
    /// retry): a crash cannot keep the claim and lose what it caused. Writes
    /// nothing if another writer got there first or the key was claimed.
    async fn update_request_claiming(
        &self,
        request: &Request,
        effects: &[Effect],
        claim: Option<(&str, Duration)>,
    ) -> Result<UpdateOutcome, BackendError>;
    /// [`Store::update_request_claiming`] with no key to claim: false,
    /// writing nothing, if another writer got there first.
    async fn update_request(
        &self,
        request: &Request,
        effects: &[Effect],
    ) -> Result<bool, BackendError> {
        Ok(self.update_request_claiming(request, effects, None).await? == UpdateOutcome::Written)
    }
    /// The newest requests made by `identity` (e.g. `slack:U123`).
    async fn requests_by(&self, identity: &str, limit: usize)
        -> Result<Vec<Request>, BackendError>;
    async fn pending_requests(&self) -> Result<Vec<Request>, BackendError>;
    /// The pending requests whose time is up by `now`, soonest first.
    async fn expired_requests(&self, now: DateTime<Utc>) -> Result<Vec<Request>, BackendError>;
    /// The card of the stored request `id` was posted, opening `thread`: the
    /// thread is remembered and `effect`, the post, is done, in one write.
    async fn card_posted(
        &self,
        effect: &EffectId,
        id: &RequestId,
        thread: &ThreadRef,
    ) -> Result<(), BackendError>;
    async fn thread(&self, id: &RequestId) -> Result<Option<ThreadRef>, BackendError>;
    /// True for the first caller of `key` within `ttl`, whose `effects` are
    /// queued in the same write; false, writing nothing, for every repeat.
    async fn claim_once(
        &self,
        key: &str,
        ttl: Duration,
        effects: &[Effect],
    ) -> Result<bool, BackendError>;
    /// Claims the execution of `request_id` for this caller, unless somebody has.
    async fn start_execution(
        &self,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Execution, BackendError>;
    /// Records the completion of an execution this caller started.
    async fn finish_execution(
        &self,
        request_id: &str,
        completion: &Envelope,
    ) -> Result<(), BackendError>;
    /// Gives an unfinished execution back (it did not happen), so a redelivery may run it.
    async fn abandon_execution(&self, request_id: &str) -> Result<(), BackendError>;
    async fn enqueue(&self, effects: &[Effect]) -> Result<(), BackendError>;
    /// Leases the next effect of every lane whose turn has come: nobody else
    /// gets them until `lease` has passed, unless they are settled sooner.
    /// An effect whose previous lease ran out unsettled comes back `interrupted`.
    async fn claim_due_effects(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<QueuedEffect>, BackendError>;
    /// When the next effect will be due, if any is waiting.
    async fn next_effect_at(&self) -> Result<Option<DateTime<Utc>>, BackendError>;
    async fn effect_done(&self, id: &EffectId) -> Result<(), BackendError>;
    /// Puts an effect back for `at`. With `outcome_unknown` (the attempt may
    /// have been carried out) its next claim comes back `interrupted`.
    async fn effect_retry(
        &self,
        id: &EffectId,
        at: DateTime<Utc>,
        error: &str,
        outcome_unknown: bool,
    ) -> Result<(), BackendError>;
    /// Gives up on an effect that can never succeed; it stays for operators to inspect.
    async fn effect_dead(&self, id: &EffectId, error: &str) -> Result<(), BackendError>;
    async fn outbox_depth(&self) -> Result<u64, BackendError>;
    async fn ping(&self) -> Result<(), BackendError>;
}
