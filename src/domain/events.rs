//! The EventBridge contracts of SPEC.md §2. Unknown fields are ignored, never
//! rejected, so agents can add to their events without breaking the bot.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEVOPS_REQUEST: &str = "devops.request";
pub const DEVOPS_COMPLETED: &str = "devops.completed";
pub const CHATOPS_SOURCE: &str = "agent.ChatOps";
pub const CHATOPS_AGENT: &str = "ChatOps";
pub const EXECUTOR_SOURCE: &str = "devops.automation";

/// An EventBridge envelope. `account` may be absent (EventBridge → SQS drops it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub id: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub resources: Vec<String>,
    pub detail: Value,
}

fn default_version() -> String {
    "0".to_string()
}

impl Envelope {
    pub fn new(detail_type: &str, source: &str, detail: Value) -> Self {
        Self {
            version: default_version(),
            id: uuid::Uuid::new_v4().to_string(),
            detail_type: detail_type.to_string(),
            source: source.to_string(),
            account: None,
            time: rfc3339(Utc::now()),
            region: String::new(),
            resources: Vec::new(),
            detail,
        }
    }
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `devops.completed` detail, as the executor publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedDetail {
    pub request_id: String,
    pub action: String,
    pub status: CompletionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub requested_by: String,
    #[serde(default)]
    pub timestamp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompletionStatus {
    Success,
    Error,
}
