//! What the core asks of a chat platform. Slack (and later Teams) adapters
//! implement it; the core never sees their types.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

/// A message: `text` is the notification / fallback text, `card` a bound
/// Adaptive Card that the platform renders in its own way.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub text: String,
    pub card: Option<Value>,
    /// Travels with the posted message, so that after an attempt whose
    /// outcome is unknown the message can be found instead of posted twice.
    pub key: Option<String>,
}

impl ChatMessage {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            card: None,
            key: None,
        }
    }

    pub fn keyed(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("rate limited (retry after {0:?})")]
    RateLimited(Option<Duration>),
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("refused: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait ChatPlatform: Send + Sync {
    /// Posts in `channel` (in the thread `thread_ts` if given); returns the new message's ts.
    async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        message: &ChatMessage,
    ) -> Result<String, ChatError>;
    /// The ts of `message` if it is already in `channel` (in the thread
    /// `thread_ts` if given), found by its key; None for a message without one.
    async fn find_posted(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        message: &ChatMessage,
    ) -> Result<Option<String>, ChatError>;
    async fn update(&self, channel: &str, ts: &str, message: &ChatMessage)
        -> Result<(), ChatError>;
    async fn ephemeral(&self, channel: &str, user: &str, text: &str) -> Result<(), ChatError>;
}
