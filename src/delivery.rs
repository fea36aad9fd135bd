//! Carries out the outbox: publishes approved requests and posts or updates
//! chat messages. Each lane (a request's thread, one person's ephemerals)
//! runs in order; failures wait their `Retry-After` or back off, and nothing
//! is dropped unless the platform says it can never succeed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;

use crate::answers::AnswersDue;
use crate::backends::bus::EventBus;
use crate::backends::store::{Effect, QueuedEffect, Store, ThreadRef};
use crate::backends::BackendError;
use crate::cards::Cards;
use crate::chat::{ChatError, ChatMessage, ChatPlatform};
use crate::domain::events::{Envelope, CHATOPS_SOURCE, DEVOPS_REQUEST};
use crate::domain::names::RequestId;
use crate::domain::request::{Request, Status};
use crate::metrics::Metrics;
use crate::requests::RequestService;

/// Effects waiting on something that never comes (a card that could not be
/// posted) give up after this many tries.
const MAX_ATTEMPTS_WITHOUT_PROGRESS: u32 = 30;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A call that hangs (a half-open connection) is abandoned and retried, so one lane cannot stall the rest.
const EFFECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a claimed effect is ours; longer than any attempt can take, so
/// another replica only takes it over when this one died mid-way.
const LEASE: Duration = Duration::from_secs(120);
const DEPTH_EVERY: Duration = Duration::from_secs(1);
/// At most this many effects are carried out at once.
const IN_FLIGHT: usize = 64;
/// At most this many while a crowd of chat requests waits for its answers (see
/// [`AnswersDue`]): effects are what a person sees a moment later (cards, replies,
/// card updates, ephemeral notes) or nobody watches (publishing), while each answer
/// is watched and Slack gives up on it after 3 s. In a burst on the embedded
/// backends the effects' CPU came out of the answers. More than one, so lanes still
/// move during a long crowd.
const IN_FLIGHT_WHILE_CROWDED: usize = 4;
/// How often the outbox looks for work while a crowd waits.
const CROWD_POLL: Duration = Duration::from_millis(20);
const BLOCKED_LANES_POLL_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(250);
const RECORD_RETRY_LONGEST: Duration = Duration::from_secs(10);
/// A longer `Retry-After` than this is not believed.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Told in the thread when an approved request cannot be published yet.
pub const BUS_HELD: &str = "⏳ The event bus cannot be reached right now. This approved request is held and will be sent as soon as it is back; nothing needs doing.";
/// Told in the thread when a request held by an event bus outage has gone out.
pub const BUS_BACK: &str = "📨 The event bus is reachable again: the request has been sent.";
const HELD_NOTICE: &str = "bus-held";
/// How long a thread notice is remembered as told, so no replica tells it twice.
const NOTICE_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Delivery {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn EventBus>,
    pub requests: Arc<RequestService>,
    pub cards: Cards,
    pub platforms: HashMap<String, Arc<dyn ChatPlatform>>,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub answers_due: Arc<AnswersDue>,
}

/// What an effect carried out leaves to be written down with it.
enum Done {
    Nothing,
    /// The request's card was posted, opening `thread`.
    CardPosted {
        request_id: RequestId,
        thread: ThreadRef,
    },
}

/// How an attempt at an effect ended, to be written down.
enum Settled {
    Done(Done),
    Retry {
        at: chrono::DateTime<Utc>,
        reason: String,
        outcome_unknown: bool,
    },
    Dead(String),
}

enum Failed {
    Retry {
        after: Duration,
        reason: String,
        /// The attempt was refused before anything was done (a rate limit, a
        /// card not posted yet): the next one need not look for its effect.
        refused: bool,
    },
    GiveUp(String),
}

impl From<BackendError> for Failed {
    fn from(error: BackendError) -> Self {
        Failed::Retry {
            refused: false,
            after: Duration::from_secs(1),
            reason: error.to_string(),
        }
    }
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempts.min(12))).min(MAX_BACKOFF)
}

fn chat_failure(error: ChatError, attempts: u32) -> Failed {
    match error {
        ChatError::RateLimited(after) => Failed::Retry {
            refused: true,
            after: after.unwrap_or(Duration::from_secs(1)).min(MAX_RETRY_AFTER),
            reason: "rate limited".into(),
        },
        ChatError::Transient(reason) => Failed::Retry {
            refused: false,
            after: backoff(attempts),
            reason,
        },
        ChatError::Permanent(reason) => Failed::GiveUp(reason),
    }
}

/// Posts `message` once: an effect whose earlier attempt ended without a
/// known outcome (a crash, a timeout, a dropped connection, a 5xx) may have
/// reached the channel, so it is looked for before it is posted again.
async fn post_once(
    platform: &dyn ChatPlatform,
    channel: &str,
    thread_ts: Option<&str>,
    message: &ChatMessage,
    queued: &QueuedEffect,
) -> Result<String, Failed> {
    if queued.interrupted {
        match platform.find_posted(channel, thread_ts, message).await {
            Ok(Some(ts)) => {
                tracing::info!(
                    effect = kind(&queued.effect),
                    "outbox: an earlier attempt had posted the message; not posting it again"
                );
                return Ok(ts);
            }
            Ok(None) => {}
            // Without the history scope it cannot look; posting again beats never posting.
            Err(ChatError::Permanent(reason)) => {
                tracing::warn!(effect = kind(&queued.effect), %reason, "outbox: cannot check whether an earlier attempt posted; posting");
            }
            // Still not known whether the earlier attempt posted: the next one looks again.
            Err(error) => {
                return Err(match chat_failure(error, queued.attempts) {
                    Failed::Retry { after, reason, .. } => Failed::Retry {
                        after,
                        reason,
                        refused: false,
                    },
                    gave_up => gave_up,
                })
            }
        }
    }
    platform
        .post(channel, thread_ts, message)
        .await
        .map_err(|error| chat_failure(error, queued.attempts))
}

fn log_if_panicked(finished: Result<(), tokio::task::JoinError>) {
    if let Err(error) = finished {
        tracing::error!(%error, "outbox: carrying out an effect panicked; its lease runs out and it is tried again");
    }
}

fn thread_notice(request_id: &RequestId, text: &str) -> Effect {
    Effect::ThreadReply {
        request_id: request_id.clone(),
        text: text.to_string(),
    }
}

fn kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::Publish { .. } => "publish",
        Effect::PostCard { .. } => "post_card",
        Effect::UpdateCard { .. } => "update_card",
        Effect::ThreadReply { .. } => "thread_reply",
        Effect::Ephemeral { .. } => "ephemeral",
    }
}

impl Delivery {
    /// Carries out due effects until `shutdown`, then lets those under way finish.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut in_flight = tokio::task::JoinSet::new();
        let mut depth_read: Option<tokio::time::Instant> = None;
        let mut blocked_poll = BLOCKED_LANES_POLL_FIRST;
        loop {
            while let Some(finished) = in_flight.try_join_next() {
                log_if_panicked(finished);
            }
            let crowded = self.answers_due.crowded();
            let at_once = if crowded {
                IN_FLIGHT_WHILE_CROWDED
            } else {
                IN_FLIGHT
            };
            let room = at_once.saturating_sub(in_flight.len());
            let mut wait = Duration::from_secs(1);
            // New effects are claimed while others are under way, so one slow call does not
            // hold up every other lane; in batches, so claiming does not cost more than the work.
            if room >= at_once / 2 {
                let due = self.claim_due(room).await;
                let more_may_be_due = due.len() == room;
                let started_some = !due.is_empty();
                for queued in due {
                    let this = self.clone();
                    in_flight.spawn(async move { this.settle(queued).await });
                }
                if more_may_be_due {
                    continue;
                }
                wait = if started_some {
                    blocked_poll = BLOCKED_LANES_POLL_FIRST;
                    // The effects just started bring this loop back as they finish; asking the
                    // store when the next one is due would queue ahead of their first reads.
                    BLOCKED_LANES_POLL_FIRST
                } else {
                    match self.next_due_in().await {
                        // Due already, yet not claimable: it waits behind its lane's head, under
                        // way here or leased or backing off; looked at again, less and less often.
                        Some(wait) if wait.is_zero() => {
                            let poll = blocked_poll;
                            blocked_poll = (blocked_poll * 2).min(Duration::from_secs(1));
                            poll
                        }
                        Some(wait) => wait,
                        None => wait,
                    }
                };
            }
            // Counting the outbox costs as much as it holds: once a second is enough for a gauge.
            if depth_read.is_none_or(|at| at.elapsed() >= DEPTH_EVERY) {
                depth_read = Some(tokio::time::Instant::now());
                if let Ok(depth) = self.store.outbox_depth().await {
                    self.metrics.outbox_depth.set(depth as i64);
                }
            }
            if crowded {
                wait = wait.min(CROWD_POLL);
            }
            tokio::select! {
                _ = &mut shutdown => break,
                // Each of the crowd's requests wakes the outbox, and each wake-up asks the
                // store for work, queueing beside the crowd's own writes: a short poll does instead.
                _ = self.wake.notified(), if !crowded => {}
                Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                    log_if_panicked(finished);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // What is under way finishes and is written down; nothing new starts.
        while let Some(finished) = in_flight.join_next().await {
            log_if_panicked(finished);
        }
    }

    /// Leases up to `room` due effects, at most one per lane.
    async fn claim_due(&self, room: usize) -> Vec<QueuedEffect> {
        match self.store.claim_due_effects(Utc::now(), LEASE, room).await {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "outbox: reading due effects failed");
                Vec::new()
            }
        }
    }

    /// How long until the next effect is due (zero if one is due already),
    /// if any is waiting and the store can tell.
    async fn next_due_in(&self) -> Option<Duration> {
        let at = self.store.next_effect_at().await.ok()??;
        Some(
            (at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(1)),
        )
    }

    async fn settle(&self, queued: QueuedEffect) {
        let claimed_at = Instant::now();
        let kind = kind(&queued.effect);
        let performed = match tokio::time::timeout(EFFECT_TIMEOUT, self.perform(&queued)).await {
            Ok(performed) => performed,
            Err(_) => {
                if let Effect::Publish { request_id } = &queued.effect {
                    self.tell_bus_held(request_id).await;
                }
                Err(Failed::Retry {
                    refused: false,
                    after: backoff(queued.attempts),
                    reason: format!("no answer within {EFFECT_TIMEOUT:?}"),
                })
            }
        };
        let settled = match performed {
            Ok(done) => {
                self.metrics.effect(kind, "done");
                Settled::Done(done)
            }
            Err(Failed::Retry {
                after,
                reason,
                refused,
            }) if queued.attempts < u32::MAX - 1 => {
                self.metrics.effect(kind, "retry");
                tracing::warn!(effect = kind, attempts = queued.attempts + 1, retry_in_ms = after.as_millis() as u64, %reason, "outbox: will retry");
                let at = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
                Settled::Retry {
                    at,
                    reason,
                    outcome_unknown: !refused,
                }
            }
            Err(Failed::Retry { reason, .. } | Failed::GiveUp(reason)) => {
                self.metrics.effect(kind, "dead");
                tracing::error!(effect = kind, %reason, "outbox: effect cannot succeed; kept as dead letter");
                Settled::Dead(reason)
            }
        };
        self.record(&queued, &settled, claimed_at).await;
    }

    /// Writes down how an effect went. Unwritten, the effect would sit out
    /// its lease and then be tried again for nothing, so while the store
    /// cannot be reached this keeps trying, for half the lease at most.
    async fn record(&self, queued: &QueuedEffect, settled: &Settled, claimed_at: Instant) {
        let mut wait = RECORD_RETRY_FIRST;
        loop {
            let recorded = match settled {
                Settled::Done(Done::Nothing) => self.store.effect_done(&queued.id).await,
                Settled::Done(Done::CardPosted { request_id, thread }) => {
                    self.store.card_posted(&queued.id, request_id, thread).await
                }
                Settled::Retry {
                    at,
                    reason,
                    outcome_unknown,
                } => {
                    self.store
                        .effect_retry(&queued.id, *at, reason, *outcome_unknown)
                        .await
                }
                Settled::Dead(reason) => self.store.effect_dead(&queued.id, reason).await,
            };
            match recorded {
                Ok(()) => return,
                // Well before the lease ends, so a late write cannot land on another replica's claim.
                Err(error @ BackendError::Unavailable(_))
                    if claimed_at.elapsed() + wait < LEASE / 2 =>
                {
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "outbox: recording an effect's outcome failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECORD_RETRY_LONGEST);
                }
                Err(error) => {
                    tracing::error!(%error, "outbox: recording an effect's outcome failed; it will be looked at again when its lease ends");
                    return;
                }
            }
        }
    }

    async fn tell_bus_held(&self, request_id: &RequestId) {
        let held = thread_notice(request_id, BUS_HELD);
        self.claim_notice(HELD_NOTICE, request_id, &[held]).await;
    }

    /// After a publish that followed failures. Decided once: a later republish
    /// (its outcome was not recorded) must not tell it again, nor tell it
    /// when the held notice was never told.
    async fn tell_bus_back(&self, request_id: &RequestId) {
        // Claiming the held notice's key tells whether it was told: if this
        // claim wins, it was not, and there is nothing to take back.
        if self.claim_notice("bus-back", request_id, &[]).await
            && !self.claim_notice(HELD_NOTICE, request_id, &[]).await
        {
            let back = thread_notice(request_id, BUS_BACK);
            if let Err(error) = self.store.enqueue(&[back]).await {
                tracing::warn!(%error, "outbox: could not queue a thread notice; left out");
            }
        }
    }

    /// True for the first caller per notice and request, across retries and
    /// replicas, whose `telling` is queued with the claim; false too when it
    /// cannot be claimed now, as a notice is better left out than told twice.
    async fn claim_notice(&self, notice: &str, request_id: &RequestId, telling: &[Effect]) -> bool {
        self.store
            .claim_once(&format!("{notice}:{request_id}"), NOTICE_KEPT, telling)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, notice, "outbox: could not claim a thread notice; left out");
                false
            })
    }

    fn platform(&self, name: &str) -> Result<&Arc<dyn ChatPlatform>, Failed> {
        self.platforms.get(name).ok_or_else(|| Failed::Retry {
            refused: true,
            after: Duration::from_secs(30),
            reason: format!("{name} is not configured"),
        })
    }

    async fn request(&self, id: &RequestId) -> Result<Option<Request>, Failed> {
        Ok(self.store.request(id).await?)
    }

    /// An effect on a request's thread whose card is not posted (yet).
    fn card_not_posted(attempts: u32) -> Failed {
        if attempts >= MAX_ATTEMPTS_WITHOUT_PROGRESS {
            return Failed::GiveUp("the request's card was never posted".into());
        }
        Failed::Retry {
            refused: true,
            after: backoff(attempts),
            reason: "the request's card is not posted yet".into(),
        }
    }

    fn card_message(&self, request: &Request) -> Result<ChatMessage, Failed> {
        let card = self
            .cards
            .request_card(request)
            .map_err(|error| Failed::GiveUp(error.to_string()))?;
        Ok(ChatMessage {
            text: format!(
                "{} {} on {}: {}",
                request.action.kind().as_str(),
                request.action.target(request.stage),
                request.stage,
                request.status.as_str()
            ),
            card: Some(card),
            key: None,
        })
    }

    async fn perform(&self, queued: &QueuedEffect) -> Result<Done, Failed> {
        let attempts = queued.attempts;
        match &queued.effect {
            Effect::Publish { request_id } => {
                let Some(request) = self.request(request_id).await? else {
                    return Ok(Done::Nothing);
                };
                if request.status != Status::Approved {
                    return Ok(Done::Nothing);
                }
                let detail = self
                    .requests
                    .request_detail(&request)
                    .map_err(|error| Failed::GiveUp(error.to_string()))?;
                let mut envelope = Envelope::new(DEVOPS_REQUEST, CHATOPS_SOURCE, detail);
                // A republish after a crash carries the same id, so consumers can tell it is a repeat.
                envelope.id = request.id.to_string();
                if let Err(error) = self.bus.publish(&envelope).await {
                    // Failed after the SDK's own retries: an outage, not a blip.
                    self.tell_bus_held(request_id).await;
                    return Err(Failed::Retry {
                        refused: false,
                        after: backoff(attempts),
                        reason: error.to_string(),
                    });
                }
                self.metrics.event(DEVOPS_REQUEST, "published");
                if attempts > 0 {
                    self.tell_bus_back(request_id).await;
                }
                self.requests.mark_published(request).await?;
                Ok(Done::Nothing)
            }
            Effect::PostCard { request_id } | Effect::UpdateCard { request_id } => {
                let Some(request) = self.request(request_id).await? else {
                    return Ok(Done::Nothing);
                };
                let platform = self.platform(&request.origin.platform)?;
                let message = self.card_message(&request)?;
                let existing = self.store.thread(request_id).await?;
                match (existing, &queued.effect) {
                    (Some(thread), _) => platform
                        .update(&thread.channel, &thread.ts, &message)
                        .await
                        .map(|()| Done::Nothing)
                        .map_err(|error| chat_failure(error, attempts)),
                    (None, Effect::PostCard { .. }) => {
                        let message = message.keyed(format!("card:{request_id}"));
                        let ts = post_once(
                            platform.as_ref(),
                            &request.origin.channel,
                            None,
                            &message,
                            queued,
                        )
                        .await?;
                        let thread = ThreadRef {
                            platform: request.origin.platform.clone(),
                            channel: request.origin.channel.clone(),
                            ts,
                        };
                        Ok(Done::CardPosted {
                            request_id: request_id.clone(),
                            thread,
                        })
                    }
                    (None, _) => Err(Self::card_not_posted(attempts)),
                }
            }
            Effect::ThreadReply { request_id, text } => {
                // A posted card means the request exists; without one, the request says why.
                let Some(thread) = self.store.thread(request_id).await? else {
                    return match self.request(request_id).await? {
                        Some(_) => Err(Self::card_not_posted(attempts)),
                        None => Ok(Done::Nothing),
                    };
                };
                let platform = self.platform(&thread.platform)?;
                let message = ChatMessage::text(text.clone())
                    .keyed(format!("reply:{request_id}:{}", queued.id.as_str()));
                post_once(
                    platform.as_ref(),
                    &thread.channel,
                    Some(&thread.ts),
                    &message,
                    queued,
                )
                .await
                .map(|_| Done::Nothing)
            }
            Effect::Ephemeral {
                platform,
                channel,
                user,
                text,
            } => self
                .platform(platform)?
                .ephemeral(channel, user, text)
                .await
                .map(|()| Done::Nothing)
                .map_err(|error| chat_failure(error, attempts)),
        }
    }
}
