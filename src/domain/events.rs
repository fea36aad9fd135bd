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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ENVELOPE_FIELDS: [&str; 9] = [
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    ];

    /// Any JSON, with keys that are often the envelope's own so odd types get tried.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|n| json!(n)),
            "\\PC{0,20}".prop_map(Value::from),
        ];
        let key = prop_oneof![
            proptest::sample::select(ENVELOPE_FIELDS.to_vec()).prop_map(str::to_string),
            proptest::sample::select(vec!["requestId", "action", "status", "error", "latencyMs"])
                .prop_map(str::to_string),
            "\\PC{0,10}",
        ];
        leaf.prop_recursive(4, 64, 10, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..10)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            (
                "\\PC{0,8}",
                "\\PC{0,36}",
                "\\PC{1,30}",
                "\\PC{1,30}",
                proptest::option::of("[0-9]{12}"),
            ),
            ("\\PC{0,24}", "\\PC{0,12}"),
            proptest::collection::vec("\\PC{0,20}", 0..3),
            any_json(),
        )
            .prop_map(
                |(
                    (version, id, detail_type, source, account),
                    (time, region),
                    resources,
                    detail,
                )| {
                    Envelope {
                        version,
                        id,
                        detail_type,
                        source,
                        account,
                        time,
                        region,
                        resources,
                        detail,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_json_or_bytes_is_read_or_refused_without_panicking(
            value in any_json(),
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = serde_json::from_value::<Envelope>(value.clone());
            let _ = serde_json::from_str::<Envelope>(&value.to_string());
            let _ = serde_json::from_value::<CompletedDetail>(value);
            let _ = serde_json::from_slice::<Envelope>(&bytes);
        }

        #[test]
        fn unknown_fields_are_ignored_and_account_may_be_absent(
            envelope in envelope(),
            extra in proptest::collection::btree_map(
                "\\PC{1,12}".prop_filter("an envelope field", |key: &String| !ENVELOPE_FIELDS.contains(&key.as_str())),
                any_json(),
                0..5,
            ),
        ) {
            let mut sent = serde_json::to_value(&envelope).unwrap();
            prop_assert_eq!(sent.get("account").is_some(), envelope.account.is_some());
            let fields = sent.as_object_mut().unwrap();
            fields.extend(extra);
            let read: Envelope = serde_json::from_value(sent).unwrap();
            prop_assert_eq!(read, envelope);
        }

        #[test]
        fn completions_ignore_unknown_fields(
            extra in proptest::collection::btree_map("[a-z]{1,12}", any_json(), 0..5),
            error in "\\PC{0,40}",
        ) {
            let known = ["requestId", "action", "status", "result", "error", "latencyMs", "requestedBy", "timestamp"];
            let mut detail = json!({"requestId": "r1", "action": "deployLambda", "status": "error", "error": error});
            let fields = detail.as_object_mut().unwrap();
            fields.extend(extra.into_iter().filter(|(key, _)| !known.contains(&key.as_str())));
            let read: CompletedDetail = serde_json::from_value(detail).unwrap();
            prop_assert_eq!(read.status, CompletionStatus::Error);
            prop_assert_eq!(read.error, Some(error));
        }
    }

    #[test]
    fn the_envelope_of_spec_section_2_is_read_with_or_without_account() {
        let mut sent = json!({"version": "0", "id": "e1", "detail-type": "devops.request",
            "source": "agent.X", "account": "123456789012", "time": "2026-12-03T00:00:00Z",
            "region": "us-east-1", "resources": [], "detail": {"requestId": "r1"}, "replay-name": "x"});
        let read: Envelope = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(read.account.as_deref(), Some("123456789012"));
        sent.as_object_mut().unwrap().remove("account");
        let read: Envelope = serde_json::from_value(sent).unwrap();
        assert_eq!(
            (read.account, read.detail["requestId"].as_str()),
            (None, Some("r1"))
        );
    }
}
