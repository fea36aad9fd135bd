//! The Slack edge: signed HTTP in, slack-morphism Web API calls out.
//! Everything is acknowledged within Slack's 3 s; slow work continues after.

mod blocks;
mod client;
mod commands;
mod interactions;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use slack_morphism::prelude::SlackSigningSecret;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

pub use client::SlackChat;

use crate::answers::AnswersDue;
use crate::backends::store::Store;
use crate::domain::names::Person;
use crate::requests::RequestService;

/// Work not finished by then is answered "working on it" and reported later.
const ANSWER_WITHIN: Duration = Duration::from_millis(2000);
/// Bodies bigger than any real slash command or interaction payload are refused.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the Slack endpoints share. Cloned for every request (by each layer and
/// the handler), so behind one reference count rather than one per part: the
/// parts' counts, shared by both cores, cost more than the clone itself.
#[derive(Clone)]
pub struct SlackState(Arc<SlackShared>);

pub struct SlackShared {
    pub requests: Arc<RequestService>,
    pub store: Arc<dyn Store>,
    pub client: Option<Arc<SlackChat>>,
    pub verifier: Option<SlackEventSignatureVerifier>,
    pub refusals: verify::Refusals,
    /// Genuine requests waiting for their answers (see [`AnswersDue`]).
    pub answers_due: Arc<AnswersDue>,
}

impl std::ops::Deref for SlackState {
    type Target = SlackShared;

    fn deref(&self) -> &SlackShared {
        &self.0
    }
}

impl SlackState {
    pub fn new(
        requests: Arc<RequestService>,
        store: Arc<dyn Store>,
        client: Option<Arc<SlackChat>>,
        signing_secret: Option<&str>,
        answers_due: Arc<AnswersDue>,
    ) -> Self {
        let verifier = signing_secret.map(|secret| {
            SlackEventSignatureVerifier::new(&SlackSigningSecret::new(secret.to_string()))
        });
        Self(Arc::new(SlackShared {
            requests,
            store,
            client,
            verifier,
            refusals: verify::Refusals::default(),
            answers_due,
        }))
    }
}

/// The Slack endpoints; each genuine request counts in the state's
/// `answers_due` until it is answered (see [`verify::verify_signature`]).
pub fn router(state: SlackState) -> Router {
    Router::new()
        .route("/slack/commands", post(commands::handle))
        .route("/slack/interactions", post(interactions::handle))
        .route("/slack/events", post(interactions::events))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            verify::verify_signature,
        ))
        .with_state(state)
}

/// Lets work answer the person before it has finished (it is held).
pub struct EarlyAnswer(tokio::sync::oneshot::Sender<String>);

impl EarlyAnswer {
    /// Err(text) when the answer has gone already: tell them another way.
    pub fn give(self, text: &str) -> Result<(), String> {
        self.0.send(text.to_string())
    }
}

/// How work started for a Slack request stood at Slack's deadline.
enum InTime<T> {
    Finished(Result<T, tokio::task::JoinError>),
    /// It answered early and goes on.
    Early(String, tokio::task::JoinHandle<T>),
    /// It was still running at the deadline.
    Late(tokio::task::JoinHandle<T>),
}

/// Runs `work` on its own task and waits for it up to Slack's deadline, or
/// until it gives an early answer.
async fn within_deadline<T, W, F>(work: W) -> InTime<T>
where
    T: Send + 'static,
    W: FnOnce(EarlyAnswer) -> F,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let (early, early_text) = tokio::sync::oneshot::channel();
    let mut task = tokio::spawn(work(EarlyAnswer(early)));
    tokio::select! {
        finished = &mut task => InTime::Finished(finished),
        Ok(text) = early_text => InTime::Early(text, task),
        _ = tokio::time::sleep(ANSWER_WITHIN) => InTime::Late(task),
    }
}

fn person(team_id: &str, user_id: &str, user_name: &str) -> Person {
    Person {
        platform: "slack".into(),
        team_id: team_id.into(),
        user_id: user_id.into(),
        user_name: if user_name.is_empty() {
            user_id.into()
        } else {
            user_name.into()
        },
    }
}
