//! The Slack Web API through slack-morphism. Its types stop here: the rest of
//! the bot speaks `ChatPlatform` and JSON.

use async_trait::async_trait;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{json, Value};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use super::blocks::{keyed_text_block, plain_text, to_blocks};
use crate::chat::{ChatError, ChatMessage, ChatPlatform};

pub struct SlackChat {
    client: SlackHyperClient,
    token: SlackApiToken,
}

impl SlackChat {
    /// `api_url` is the Web API base including `/api` (Slack's, or a test fake's).
    pub fn new(api_url: &str, bot_token: &str) -> std::io::Result<SlackChat> {
        // http as well as https, so a local fake Slack can stand in. The AWS
        // SDK brings a second TLS crypto provider, so name ours.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let connector =
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(api_url);
        Ok(SlackChat {
            client: SlackClient::new(connector),
            token: SlackApiToken::new(SlackApiTokenValue(bot_token.to_string())),
        })
    }

    /// Opens a modal; must happen within 3 s of the interaction that gave `trigger_id`.
    pub async fn open_modal(&self, trigger_id: &str, view: Value) -> Result<(), ChatError> {
        let request: SlackApiViewsOpenRequest =
            typed(json!({"trigger_id": trigger_id, "view": view}))?;
        self.client
            .open_session(&self.token)
            .views_open(&request)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Answers through an interaction's `response_url` (only the person sees it).
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), ChatError> {
        let url = response_url
            .parse()
            .map_err(|_| ChatError::Permanent("response_url is not a URL".into()))?;
        let request: SlackApiPostWebhookMessageRequest =
            typed(json!({"text": plain_text(text), "response_type": "ephemeral"}))?;
        self.client
            .respond_to_event(&SlackResponseUrl(url), &request)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

/// What the bot reads of Slack's answer to a post.
#[derive(serde::Deserialize)]
struct Posted {
    ts: SlackTs,
}

impl SlackChat {
    /// Sends a message as built. Through slack-morphism's typed request and
    /// response, every card would be parsed and written out again, and the
    /// copy Slack echoes back parsed block by block: most of what a post cost.
    /// The property tests check that the blocks fit slack-morphism's types.
    async fn send<Answer: DeserializeOwned + Send>(
        &self,
        method: &str,
        body: &Value,
        rate: &'static SlackApiMethodRateControlConfig,
    ) -> Result<Answer, ChatError> {
        self.client
            .open_session(&self.token)
            .http_session_api
            .http_post(method, body, Some(rate))
            .await
            .map_err(classify)
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ChatError> {
    serde_json::from_value(value).map_err(|error| {
        ChatError::Permanent(format!("message does not fit Slack's schema: {error}"))
    })
}

/// The metadata event type that carries a message's key.
const KEYED_MESSAGE: &str = "devops_bot_message";
/// How far back a channel or thread is searched for a message whose post was
/// interrupted: recovery follows the interruption within minutes.
const SEARCH_DEPTH: u16 = 200;

/// Every text the bot sends is plain: `<!channel>`, `<@U…>` or a link in an
/// agent's error message, a stack name or a person's input stays text.
fn content(message: &ChatMessage) -> Value {
    let text = plain_text(&message.text);
    let mut body = json!({"text": text});
    match (&message.card, &message.key) {
        (Some(card), _) => body["blocks"] = Value::Array(to_blocks(card)),
        (None, Some(key)) => body["blocks"] = json!([keyed_text_block(&text, key)]),
        (None, None) => {}
    }
    if let Some(key) = &message.key {
        body["metadata"] = json!({"event_type": KEYED_MESSAGE, "event_payload": {"key": key}});
    }
    body
}

/// Whether `found` is the message that carries `key`: in its metadata (which
/// Slack returns from the history when asked) or as a block's `block_id`
/// (which it always returns).
fn carries(found: &SlackHistoryMessage, key: &str) -> bool {
    let in_metadata = found
        .content
        .metadata
        .as_ref()
        .filter(|metadata| metadata.event_type == KEYED_MESSAGE)
        .and_then(|metadata| metadata.event_payload.as_ref())
        .and_then(|payload| payload.get("key"))
        .is_some_and(|found| found == key);
    let in_blocks = || {
        serde_json::to_value(&found.content.blocks)
            .ok()
            .and_then(|blocks| blocks.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|block| block["block_id"] == key)
    };
    in_metadata || in_blocks()
}

/// Sorts Slack's failures into wait-and-retry, back-off-and-retry and give-up.
fn classify(error: SlackClientError) -> ChatError {
    match error {
        SlackClientError::RateLimitError(limit) => ChatError::RateLimited(limit.retry_after),
        SlackClientError::ApiError(api) => match api.code.as_str() {
            "ratelimited" => ChatError::RateLimited(None),
            "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
                ChatError::Transient(api.code)
            }
            _ => ChatError::Permanent(api.code),
        },
        SlackClientError::HttpError(http)
            if http.status_code.is_client_error() && http.status_code.as_u16() != 408 =>
        {
            ChatError::Permanent(format!("HTTP {}", http.status_code))
        }
        SlackClientError::HttpError(http) => {
            ChatError::Transient(format!("HTTP {}", http.status_code))
        }
        other => ChatError::Transient(other.to_string()),
    }
}

#[async_trait]
impl ChatPlatform for SlackChat {
    async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        message: &ChatMessage,
    ) -> Result<String, ChatError> {
        let mut body = content(message);
        body["channel"] = json!(channel);
        if let Some(thread_ts) = thread_ts {
            body["thread_ts"] = json!(thread_ts);
        }
        let posted: Posted = self
            .send(
                "chat.postMessage",
                &body,
                &CHAT_POST_MESSAGE_SPECIAL_LIMIT_RATE_CTL,
            )
            .await?;
        Ok(posted.ts.0)
    }

    async fn find_posted(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        message: &ChatMessage,
    ) -> Result<Option<String>, ChatError> {
        let session = self.client.open_session(&self.token);
        let messages = match thread_ts {
            Some(thread_ts) => {
                let request: SlackApiConversationsRepliesRequest =
                    typed(json!({"channel": channel, "ts": thread_ts, "limit": SEARCH_DEPTH}))?;
                session
                    .conversations_replies(&request)
                    .await
                    .map_err(classify)?
                    .messages
            }
            None => {
                let request: SlackApiConversationsHistoryRequest = typed(json!({
                    "channel": channel, "limit": SEARCH_DEPTH, "include_all_metadata": true,
                }))?;
                session
                    .conversations_history(&request)
                    .await
                    .map_err(classify)?
                    .messages
            }
        };
        let Some(key) = &message.key else {
            return Ok(None);
        };
        Ok(messages
            .iter()
            .find(|found| carries(found, key))
            .map(|found| found.origin.ts.0.clone()))
    }

    async fn update(
        &self,
        channel: &str,
        ts: &str,
        message: &ChatMessage,
    ) -> Result<(), ChatError> {
        let mut body = content(message);
        body["channel"] = json!(channel);
        body["ts"] = json!(ts);
        self.send::<IgnoredAny>("chat.update", &body, &SLACK_TIER3_METHOD_CONFIG)
            .await
            .map(|_| ())
    }

    async fn ephemeral(&self, channel: &str, user: &str, text: &str) -> Result<(), ChatError> {
        let request: SlackApiChatPostEphemeralRequest =
            typed(json!({"channel": channel, "user": user, "text": plain_text(text)}))?;
        self.client
            .open_session(&self.token)
            .chat_post_ephemeral(&request)
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_agents_or_people_cannot_mention_or_link() {
        let body = content(&ChatMessage::text(
            "❌ failed: <!channel> see <https://evil.example|the fix> & <@U0BOSS> in /a/**",
        ));
        assert_eq!(
            body["text"],
            "❌ failed: &lt;!channel&gt; see &lt;https://evil.example|the fix&gt; &amp; &lt;@U0BOSS&gt; in /a/**"
        );
    }

    #[test]
    fn a_keyed_reply_carries_its_key_as_a_block_id_and_fits_a_section() {
        let long = "x".repeat(50_000);
        let body = content(&ChatMessage::text(long).keyed("reply:r1:42"));
        let block = &body["blocks"][0];
        assert_eq!(block["block_id"], "reply:r1:42");
        assert!(block["text"]["text"].as_str().unwrap().chars().count() <= 3000);
        assert!(body["text"].as_str().unwrap().chars().count() <= 3000);
        assert_eq!(body["metadata"]["event_payload"]["key"], "reply:r1:42");
    }
}
