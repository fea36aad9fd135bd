//! Property tests at the HTTP edge, against the real app: arbitrary signed
//! Slack bodies and arbitrary EventBridge envelopes never crash a handler
//! (no 5xx, no dropped connection), bad input gets a 4xx or a specific
//! message, and nothing is stored, published or posted unless the input was
//! a valid request.
//!
//! proptest is synchronous: each property builds its own runtime, starts one
//! app on it and runs every case with `block_on`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Duration;

use devops_bot::domain::command::Command;
use devops_bot::domain::events::Envelope;
use devops_bot::domain::names::{SecretName, Stage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::helpers::{TestApp, CHANNEL, EVENTS_API_KEY, TEAM};

/// The Slack routes refuse bigger bodies (`MAX_BODY_BYTES`).
const SLACK_BODY_LIMIT: usize = 64 * 1024;

fn cases(count: u32) -> Config {
    Config {
        source_file: Some(file!()),
        ..Config::with_cases(count)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Text people and agents can send: Slack markup, template syntax, unicode,
/// near-misses of our own words, and now and then something huge.
fn hostile_text() -> impl Strategy<Value = String> {
    let markup = proptest::sample::select(vec![
        "<!channel>",
        "<!here>",
        "<@U0ADMIN>",
        "<https://evil.example|click me>",
        "*bold*",
        "`code`",
        "${requestId}",
        "&amp;",
        "\"",
        "“",
        "\\",
        "%",
        "%ZZ",
        "\u{0}",
        "\n",
        "😀",
        "é",
        "deploy",
        "approve",
        "/contentcraft/",
        "null",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        12 => proptest::collection::vec(prop_oneof![markup.clone(), "\\PC{0,10}"], 0..6)
            .prop_map(|parts| parts.concat()),
        1 => (markup, 1_000usize..=20_000)
            .prop_map(|(unit, chars)| unit.chars().cycle().take(chars).collect()),
    ]
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|n| json!(n)),
        hostile_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON field that is usually `good`, sometimes of another type, sometimes absent.
fn field_or_odd(good: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        18 => good.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
}

fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key.to_string(), value)))
            .collect(),
    )
}

/// What the app stored or sent that a request could change.
#[derive(Debug, PartialEq)]
struct World {
    requests: i64,
    secrets: i64,
    stacks: String,
    messages_posted: usize,
    messages_updated: usize,
    modals_opened: usize,
}

fn world(app: &TestApp) -> World {
    let db = rusqlite::Connection::open_with_flags(
        app.data_dir.path().join("data").join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count = |table: &str| -> i64 {
        db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
    };
    let stacks = db
        .query_row(
            "SELECT COALESCE(group_concat(name || ' ' || status || ' ' || parameters, ';'), '') FROM stacks",
            [],
            |row| row.get(0),
        )
        .unwrap();
    World {
        requests: count("requests"),
        secrets: count("vault"),
        stacks,
        messages_posted: app.slack.attempts("chat.postMessage"),
        messages_updated: app.slack.attempts("chat.update"),
        modals_opened: app.slack.attempts("views.open"),
    }
}

/// Every event published since the last call.
fn published(events: &RefCell<broadcast::Receiver<Envelope>>) -> Vec<Envelope> {
    let mut events = events.borrow_mut();
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return seen,
        }
    }
}

struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Posts `body` signed as Slack signs it; a dropped connection fails the case.
async fn post_signed(app: &TestApp, path: &str, body: &str) -> Result<Answer, TestCaseError> {
    let timestamp = TestApp::now();
    let response = app
        .http
        .post(format!("{}{path}", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header("x-slack-signature", TestApp::sign(body, timestamp))
        .body(body.to_string())
        .send()
        .await
        .map_err(|error| TestCaseError::fail(format!("no answer from {path}: {error}")))?;
    read(response).await
}

async fn read(response: reqwest::Response) -> Result<Answer, TestCaseError> {
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|error| TestCaseError::fail(format!("answer cut off: {error}")))?;
    Ok(Answer { status, body })
}

/// No 5xx, and a refusal says what was wrong.
fn no_crash_and_refusals_explain(answer: &Answer) -> Result<(), TestCaseError> {
    prop_assert!(
        answer.status < 500,
        "{}: {:.300}",
        answer.status,
        answer.body
    );
    if answer.status >= 400 {
        prop_assert!(
            !answer.body.trim().is_empty(),
            "{} without a message",
            answer.status
        );
    }
    Ok(())
}

fn ephemeral_text(answer: &Answer) -> Result<String, TestCaseError> {
    let body = answer.json();
    prop_assert_eq!(answer.status, 200, "{:.300}", answer.body);
    prop_assert_eq!(&body["response_type"], "ephemeral", "{:.300}", answer.body);
    let text = body["text"].as_str().unwrap_or_default().to_string();
    prop_assert!(!text.trim().is_empty(), "empty answer");
    Ok(text)
}

// ---------------------------------------------------------------- /slack/commands

/// The words of the grammar, their near misses, and hostile text, in any
/// order or in the order of a command.
fn command_text() -> impl Strategy<Value = String> {
    let verb = proptest::sample::select(vec![
        "help",
        "deploy",
        "put-secret",
        "status",
        "approvals",
        "Deploy",
        "frobnicate",
        "",
    ])
    .prop_map(str::to_string);
    let word = prop_oneof![
        proptest::sample::select(vec![
            "--stage",
            "--stage=qa",
            "--stage=prod",
            "dev",
            "prod",
            "--kms-key",
            "--help",
            "-h",
            "--",
            "\"",
            "“quoted words”",
            "cc-agent-doc-registry",
            "1bad-stack",
            "/contentcraft/svc/key",
            "/contentcraft/a b",
            "/etc/passwd",
            "6f1e2d3c-4b5a-4987-8877-665544332211",
            "not-a-uuid",
        ])
        .prop_map(str::to_string),
        hostile_text(),
    ];
    let words = proptest::collection::vec(prop_oneof![verb.clone(), word.clone()], 0..6);
    prop_oneof![
        (verb, proptest::collection::vec(word, 0..3)).prop_map(|(verb, args)| {
            std::iter::once(verb)
                .chain(args)
                .collect::<Vec<_>>()
                .join(" ")
        }),
        words.prop_map(|words| words.join(" ")),
    ]
}

#[derive(Debug, Clone)]
enum CommandBody {
    /// A form as Slack sends it, some fields missing or hostile.
    Form {
        user: Option<String>,
        channel: Option<String>,
        text: Option<String>,
        extra: Vec<(String, String)>,
    },
    /// Anything at all.
    Raw(String),
}

fn command_body() -> impl Strategy<Value = CommandBody> {
    let user = proptest::option::weighted(
        0.9,
        prop_oneof![4 => Just("UFUZZ".to_string()), 1 => hostile_text()],
    );
    let channel = proptest::option::weighted(
        0.9,
        prop_oneof![4 => Just(CHANNEL.to_string()), 1 => hostile_text()],
    );
    let extra_key = prop_oneof![
        proptest::sample::select(vec![
            "team_id",
            "user_name",
            "command",
            "response_url",
            "trigger_id",
            "api_app_id"
        ])
        .prop_map(str::to_string),
        "\\PC{0,8}".prop_filter("a field the oracle reads", |key: &String| {
            !["user_id", "channel_id", "text"].contains(&key.as_str())
        }),
    ];
    prop_oneof![
        6 => (
            user,
            channel,
            proptest::option::weighted(0.95, command_text()),
            proptest::collection::vec((extra_key, hostile_text()), 0..4),
        )
            .prop_map(|(user, channel, text, extra)| CommandBody::Form { user, channel, text, extra }),
        1 => prop_oneof![
            "\\PC{0,200}",
            "[%&=+a-z_]{0,80}",
            Just("a".repeat(SLACK_BODY_LIMIT + 1)),
        ]
        .prop_map(CommandBody::Raw),
    ]
}

impl CommandBody {
    fn encode(&self) -> String {
        match self {
            CommandBody::Raw(body) => body.clone(),
            CommandBody::Form {
                user,
                channel,
                text,
                extra,
            } => {
                let mut fields: Vec<(&str, &str)> = vec![("team_id", TEAM)];
                for (key, value) in [("user_id", user), ("channel_id", channel), ("text", text)] {
                    if let Some(value) = value {
                        fields.push((key, value));
                    }
                }
                fields.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                serde_urlencoded::to_string(fields).unwrap()
            }
        }
    }
}

#[test]
fn arbitrary_signed_commands_are_answered_and_change_nothing() {
    let runtime = runtime();
    let app = runtime.block_on(TestApp::spawn());
    let events = RefCell::new(app.app_events.resubscribe());
    let before = world(&app);
    TestRunner::new(cases(200))
        .run(&command_body(), |command| {
            let body = command.encode();
            if let CommandBody::Form {
                user: Some(user),
                channel: Some(channel),
                text,
                ..
            } = &command
            {
                let writes = matches!(
                    Command::parse(text.as_deref().unwrap_or_default()),
                    Ok(Command::Deploy { .. } | Command::PutSecret { .. })
                );
                // Valid requests are the flow tests' business; here only what must change nothing.
                prop_assume!(!(writes && !user.is_empty() && !channel.is_empty()));
            }
            let answer = runtime.block_on(post_signed(&app, "/slack/commands", &body))?;
            no_crash_and_refusals_explain(&answer)?;
            match &command {
                _ if body.len() > SLACK_BODY_LIMIT => prop_assert_eq!(answer.status, 413),
                CommandBody::Form {
                    user,
                    channel,
                    text,
                    ..
                } => {
                    let text = text.as_deref().unwrap_or_default();
                    let answered = ephemeral_text(&answer)?;
                    let present =
                        |field: &Option<String>| field.as_deref().is_some_and(|f| !f.is_empty());
                    if !present(user) || !present(channel) {
                        prop_assert_eq!(
                            answered,
                            "This request is missing its user or channel; nothing was done."
                        );
                    } else {
                        match Command::parse(text) {
                            Err(error) => prop_assert_eq!(answered, format!("⚠️ {error}")),
                            Ok(Command::Help) => prop_assert_eq!(answered, Command::help()),
                            Ok(_) => {}
                        }
                    }
                }
                CommandBody::Raw(_) => {
                    if answer.status == 200 {
                        ephemeral_text(&answer)?;
                    }
                }
            }
            prop_assert_eq!(&world(&app), &before);
            let events = published(&events);
            prop_assert!(events.is_empty(), "published {:?}", events);
            Ok(())
        })
        .unwrap();
    // The outbox works after the answer: give it time to post anything queued.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    assert_eq!(world(&app), before);
    assert!(published(&events).is_empty());
}

// ------------------------------------------------------------ /slack/interactions

fn person_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (hostile_text(), hostile_text()).prop_map(|(id, name)| json!({"id": id, "username": name})),
        1 => Just(json!({"id": "UALICE", "username": "alice"})),
        1 => any_json(),
    ]
}

/// A click on a card button, structurally close to what Slack sends.
fn block_actions() -> impl Strategy<Value = Value> {
    let request_id = prop_oneof![
        any::<u128>().prop_map(|bits| json!(uuid::Uuid::from_u128(bits).to_string())),
        Just(json!("6F1E2D3C4B5A49878877665544332211")),
        hostile_text().prop_map(Value::from),
        any_json(),
    ];
    let value = prop_oneof![
        4 => (proptest::sample::select(vec!["approve", "reject"]), request_id)
            .prop_map(|(verb, id)| json!({"verb": verb, "requestId": id}).to_string()),
        1 => hostile_text(),
    ];
    let verb = prop_oneof![
        4 => proptest::sample::select(vec!["approve", "reject"]).prop_map(Value::from),
        1 => hostile_text().prop_map(Value::from),
        1 => any_json(),
    ];
    let action = (
        field_or_odd(verb),
        field_or_odd(value.prop_map(Value::from)),
        field_or_odd("[0-9]{10}\\.[0-9]{6}".prop_map(Value::from)),
    )
        .prop_map(|(verb, value, ts)| {
            object(vec![
                ("type", Some(json!("button"))),
                ("action_id", verb),
                ("value", value),
                ("action_ts", ts),
            ])
        })
        .boxed();
    let actions = prop_oneof![
        6 => proptest::collection::vec(action.clone(), 1..3).prop_map(Value::Array),
        1 => Just(json!([])),
        1 => action.prop_map(|action| json!({"0": action})),
        1 => any_json(),
    ];
    (
        field_or_odd(person_json()),
        field_or_odd(person_json()),
        field_or_odd(prop_oneof![
            Just(json!({"id": CHANNEL})),
            hostile_text().prop_map(|id| json!({"id": id}))
        ]),
        field_or_odd("[a-f0-9-]{1,36}".prop_map(Value::from)),
        field_or_odd(actions),
    )
        .prop_map(|(team, user, channel, trigger, actions)| {
            object(vec![
                ("type", Some(json!("block_actions"))),
                ("team", team),
                ("user", user),
                ("channel", channel),
                ("trigger_id", trigger),
                ("actions", actions),
            ])
        })
}

/// The put-secret modal submitted with metadata that is not ours or a value
/// that is missing: never a valid request, by construction.
fn broken_submission() -> impl Strategy<Value = Value> {
    let bad_name = hostile_text().prop_filter("a valid secret name", |name| {
        SecretName::parse(name).is_err()
    });
    let bad_stage =
        hostile_text().prop_filter("a valid stage", |stage| Stage::parse(stage).is_err());
    let metadata_and_value = prop_oneof![
        (hostile_text(), hostile_text()).prop_map(|(metadata, value)| (metadata, json!(value))),
        (bad_name, hostile_text()).prop_map(|(name, value)| {
            (json!({"name": name, "stage": "dev", "channel": CHANNEL}).to_string(), json!(value))
        }),
        (bad_stage, hostile_text()).prop_map(|(stage, value)| {
            (json!({"name": "/contentcraft/fuzz/key", "stage": stage, "channel": CHANNEL}).to_string(), json!(value))
        }),
        prop_oneof![Just(json!("")), Just(Value::Null), any::<i64>().prop_map(Value::from)].prop_map(|value| {
            (json!({"name": "/contentcraft/fuzz/key", "stage": "dev", "channel": CHANNEL, "kmsKey": null}).to_string(), value)
        }),
        (any_json(), hostile_text()).prop_map(|(metadata, value)| (metadata.to_string(), json!(value))),
    ];
    (field_or_odd(person_json()), metadata_and_value).prop_map(|(user, (metadata, value))| {
        object(vec![
            ("type", Some(json!("view_submission"))),
            ("user", user),
            ("view", Some(json!({
                "callback_id": "put_secret",
                "private_metadata": metadata,
                "state": {"values": {"secret_value": {"value": {"type": "plain_text_input", "value": value}}}}
            }))),
        ])
    })
}

#[derive(Debug, Clone)]
enum InteractionBody {
    /// A form with a `payload` field holding this text.
    Payload(String),
    /// A form without `payload`.
    Fields(Vec<(String, String)>),
    Raw(String),
}

fn interaction_body() -> impl Strategy<Value = InteractionBody> {
    let other_kind = (
        prop_oneof![
            proptest::sample::select(vec![
                "view_closed",
                "shortcut",
                "message_action",
                "block_suggestion",
                "view_submission"
            ])
            .prop_map(Value::from),
            hostile_text().prop_map(Value::from),
            any_json(),
        ],
        any_json(),
    )
        .prop_map(|(kind, view)| json!({"type": kind, "view": view}));
    let payload = prop_oneof![
        6 => block_actions(),
        3 => broken_submission(),
        2 => other_kind,
        1 => any_json(),
    ];
    prop_oneof![
        12 => payload.prop_map(|payload| InteractionBody::Payload(payload.to_string())),
        1 => hostile_text().prop_map(InteractionBody::Payload),
        1 => proptest::collection::vec(("\\PC{0,8}", hostile_text()), 0..3).prop_map(|fields| {
            InteractionBody::Fields(fields.into_iter().filter(|(key, _)| key != "payload").collect())
        }),
        1 => "\\PC{0,200}".prop_map(InteractionBody::Raw),
    ]
}

impl InteractionBody {
    fn encode(&self) -> String {
        match self {
            InteractionBody::Payload(payload) => {
                serde_urlencoded::to_string([("payload", payload)]).unwrap()
            }
            InteractionBody::Fields(fields) => serde_urlencoded::to_string(fields).unwrap(),
            InteractionBody::Raw(body) => body.clone(),
        }
    }
}

fn text_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |value, key| value.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[test]
fn arbitrary_signed_interactions_are_acknowledged_or_refused_and_change_nothing() {
    let runtime = runtime();
    let app = runtime.block_on(TestApp::spawn());
    let events = RefCell::new(app.app_events.resubscribe());
    let before = world(&app);
    // Clicks are deduplicated on (trigger_id, action_ts), as Slack's retries repeat both.
    let deliveries = RefCell::new(HashSet::new());
    let refusals = RefCell::new(0usize);
    TestRunner::new(cases(200))
        .run(&interaction_body(), |interaction| {
            let body = interaction.encode();
            let answer = runtime.block_on(post_signed(&app, "/slack/interactions", &body))?;
            no_crash_and_refusals_explain(&answer)?;
            match &interaction {
                _ if body.len() > SLACK_BODY_LIMIT => prop_assert_eq!(answer.status, 413),
                InteractionBody::Raw(_) => {}
                InteractionBody::Fields(_) => {
                    prop_assert_eq!(answer.status, 400);
                    prop_assert!(
                        answer.body.contains("missing form field `payload`"),
                        "{}",
                        answer.body
                    );
                }
                InteractionBody::Payload(raw) => match serde_json::from_str::<Value>(raw) {
                    Err(_) => {
                        prop_assert_eq!(answer.status, 400);
                        prop_assert!(
                            answer.body.contains("`payload` is not JSON"),
                            "{}",
                            answer.body
                        );
                    }
                    Ok(payload) => {
                        prop_assert_eq!(answer.status, 200, "{:.300}", answer.body);
                        let kind = text_at(&payload, &["type"]);
                        if kind == "view_submission"
                            && text_at(&payload, &["view", "callback_id"]) == "put_secret"
                        {
                            let body = answer.json();
                            prop_assert_eq!(
                                &body["response_action"],
                                "errors",
                                "{:.300}",
                                answer.body
                            );
                            let said = body["errors"]["secret_value"].as_str().unwrap_or_default();
                            prop_assert!(
                                [
                                    "This form is damaged; close it and run the command again.",
                                    "Enter the secret's value."
                                ]
                                .contains(&said),
                                "{}",
                                said
                            );
                        }
                        if kind == "block_actions" {
                            if let Some(action) =
                                payload.get("actions").and_then(|actions| actions.get(0))
                            {
                                let delivery = (
                                    text_at(&payload, &["trigger_id"]).to_string(),
                                    text_at(action, &["action_ts"]).to_string(),
                                );
                                // A button the bot does not have is ignored and claims nothing.
                                if ["approve", "reject"].contains(&text_at(action, &["action_id"]))
                                    && deliveries.borrow_mut().insert(delivery)
                                {
                                    *refusals.borrow_mut() += 1;
                                }
                            }
                        }
                    }
                },
            }
            prop_assert_eq!(&world(&app), &before);
            let events = published(&events);
            prop_assert!(events.is_empty(), "published {:?}", events);
            Ok(())
        })
        .unwrap();

    // Every click that could not apply is told privately to the clicker, once.
    let refusals = refusals.into_inner();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while app.slack.attempts("chat.postEphemeral") < refusals
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    assert!(refusals > 0, "no click reached the state machine");
    assert_eq!(app.slack.attempts("chat.postEphemeral"), refusals);
    for told in app.slack.calls_to("chat.postEphemeral") {
        assert!(
            told["text"]
                .as_str()
                .unwrap()
                .starts_with("⚠️ Your click changed nothing: "),
            "{told}"
        );
    }
    assert_eq!(world(&app), before);
    assert!(published(&events).is_empty());
}

// ------------------------------------------------------------------------ /events

const KNOWN_TYPES: [&str; 3] = ["devops.request", "devops.completed", "agent.heartbeat"];

/// A `devops.request` detail that can never run: a bad request id, action,
/// stage or parameter, or a stack that does not exist.
fn unrunnable_request_detail() -> impl Strategy<Value = Value> {
    let request_id = prop_oneof![
        any::<u128>().prop_map(|bits| json!(uuid::Uuid::from_u128(bits).to_string())),
        "[a-z0-9-]{1,40}".prop_map(Value::from),
        Just(json!("r".repeat(200))),
        Just(json!("")),
    ];
    let bad_name = hostile_text().prop_filter("a valid secret name", |name| {
        SecretName::parse(name).is_err()
    });
    let params = prop_oneof![
        (bad_name, field_or_odd(hostile_text().prop_map(Value::from))).prop_map(|(name, value)| {
            (
                "putSecret",
                object(vec![("name", Some(json!(name))), ("value", value)]),
            )
        }),
        prop_oneof![
            Just(json!("")),
            Just(Value::Null),
            any::<i64>().prop_map(Value::from)
        ]
        .prop_map(|value| {
            (
                "putSecret",
                json!({"name": "/contentcraft/fuzz/key", "value": value}),
            )
        }),
        (
            prop_oneof![
                Just("nope-stack".to_string()),
                hostile_text().prop_filter("the registry's stack", |name| name
                    != "cc-agent-doc-registry"),
            ],
            field_or_odd(prop_oneof![Just(json!("dev")), Just(json!("qa"))]),
            field_or_odd(prop_oneof![Just(json!({"Version": "v1"})), any_json()]),
        )
            .prop_map(|(stack, stage, parameters)| {
                (
                    "deployLambda",
                    object(vec![
                        ("stackName", Some(json!(stack))),
                        ("stage", stage),
                        ("parameters", parameters),
                    ]),
                )
            }),
        any_json().prop_map(|params| ("rm -rf", params)),
    ];
    (
        field_or_odd(request_id),
        params,
        field_or_odd(prop_oneof![
            Just(json!("dev")),
            Just(json!("prod")),
            hostile_text().prop_map(Value::from)
        ]),
        field_or_odd(hostile_text().prop_map(Value::from)),
        proptest::collection::btree_map("[a-z]{1,8}", any_json(), 0..3),
    )
        .prop_map(
            |(request_id, (action, params), stage, requested_by, extra)| {
                let mut detail = object(vec![
                    ("requestId", request_id),
                    ("action", Some(json!(action))),
                    ("params", Some(params)),
                    ("stage", stage),
                    ("requestedBy", requested_by),
                ]);
                let fields = detail.as_object_mut().unwrap();
                for (key, value) in extra {
                    fields.entry(key).or_insert(value);
                }
                detail
            },
        )
}

fn envelope_json() -> impl Strategy<Value = Value> {
    let detail_type = prop_oneof![
        3 => Just("devops.request".to_string()),
        1 => Just("devops.completed".to_string()),
        1 => Just("agent.heartbeat".to_string()),
        1 => hostile_text(),
    ];
    let source = prop_oneof![
        proptest::sample::select(vec![
            "agent.Fuzz",
            "agent.",
            "devops.automation",
            "human.mallory",
            "AGENT.x"
        ])
        .prop_map(str::to_string),
        hostile_text(),
    ];
    let detail = prop_oneof![
        3 => unrunnable_request_detail(),
        1 => (field_or_odd("[a-z0-9-]{1,36}".prop_map(Value::from)), proptest::sample::select(vec!["success", "error", "maybe"]), any_json())
            .prop_map(|(id, status, result)| object(vec![("requestId", id), ("status", Some(json!(status))), ("result", Some(result)), ("action", Some(json!("deployLambda")))])),
        1 => any_json(),
    ];
    (
        field_or_odd(detail_type.prop_map(Value::from)),
        field_or_odd(source.prop_map(Value::from)),
        field_or_odd(detail),
        field_or_odd(proptest::option::of("[0-9]{12}").prop_map(|account| json!(account))),
        field_or_odd(proptest::collection::vec(hostile_text(), 0..2).prop_map(|r| json!(r))),
        proptest::collection::btree_map("[a-zA-Z-]{1,10}", any_json(), 0..3),
    )
        .prop_map(|(detail_type, source, detail, account, resources, extra)| {
            let mut envelope = object(vec![
                ("version", Some(json!("0"))),
                ("id", Some(json!(uuid::Uuid::new_v4().to_string()))),
                ("detail-type", detail_type),
                ("source", source),
                ("account", account),
                ("time", Some(json!("2026-12-03T00:00:00Z"))),
                ("region", Some(json!("us-east-1"))),
                ("resources", resources),
                ("detail", detail),
            ]);
            let fields = envelope.as_object_mut().unwrap();
            for (key, value) in extra {
                fields.entry(key).or_insert(value);
            }
            envelope
        })
}

fn events_body() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => envelope_json().prop_map(|envelope| envelope.to_string()),
        1 => any_json().prop_map(|value| value.to_string()),
        1 => "\\PC{0,200}",
    ]
}

#[test]
fn arbitrary_events_are_routed_or_refused_and_run_nothing() {
    let runtime = runtime();
    let app = runtime.block_on(TestApp::spawn());
    let events = RefCell::new(app.app_events.resubscribe());
    let before = world(&app);
    let odd_types = RefCell::new(Vec::new());
    TestRunner::new(cases(200))
        .run(&events_body(), |body| {
            let answer = runtime.block_on(async {
                let response = app
                    .http
                    .post(format!("{}/events", app.address))
                    .header("content-type", "application/json")
                    .header("x-api-key", EVENTS_API_KEY)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|error| {
                        TestCaseError::fail(format!("no answer from /events: {error}"))
                    })?;
                read(response).await
            })?;
            no_crash_and_refusals_explain(&answer)?;
            let published = published(&events);
            match serde_json::from_str::<Envelope>(&body) {
                Ok(envelope) if envelope.detail.is_object() => {
                    prop_assert_eq!(answer.status, 200, "{:.300}", answer.body);
                    let to_executor = envelope.detail_type == "devops.request";
                    let to_notifier = envelope.detail_type == "devops.completed"
                        && envelope.source.starts_with("devops.automation");
                    prop_assert_eq!(
                        &answer.json()["routedTo"],
                        &json!(usize::from(to_executor || to_notifier))
                    );
                    if to_executor {
                        // The requester is told why, by a completion with the error.
                        prop_assert_eq!(published.len(), 1, "{:?}", published);
                        let completed = &published[0];
                        prop_assert_eq!(&completed.detail_type, "devops.completed");
                        prop_assert_eq!(
                            &completed.detail["status"],
                            "error",
                            "{}",
                            completed.detail
                        );
                        let error = completed.detail["error"].as_str().unwrap_or_default();
                        prop_assert!(!error.is_empty(), "{}", completed.detail);
                    } else {
                        prop_assert!(published.is_empty(), "{:?}", published);
                    }
                    if !KNOWN_TYPES.contains(&envelope.detail_type.as_str())
                        && envelope.detail_type.len() > 6
                    {
                        odd_types.borrow_mut().push(envelope.detail_type);
                    }
                }
                _ => {
                    prop_assert_eq!(answer.status, 400, "{:.300}", answer.body);
                    prop_assert!(
                        answer.body.contains("EventBridge envelope"),
                        "{}",
                        answer.body
                    );
                    prop_assert!(published.is_empty(), "{:?}", published);
                }
            }
            prop_assert_eq!(&world(&app), &before);
            Ok(())
        })
        .unwrap();
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    assert_eq!(world(&app), before);
    // Event types are counted under fixed labels, so no input becomes a metric.
    let metrics = runtime.block_on(async { app.metrics().await });
    for detail_type in odd_types.into_inner() {
        assert!(
            !metrics.contains(&detail_type),
            "{detail_type} became a label"
        );
    }
}

// ------------------------------------------------------------------ /slack/events

fn slack_event_body() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just(json!("url_verification")),
        Just(json!("event_callback")),
        Just(json!("app_rate_limited")),
        hostile_text().prop_map(Value::from),
        any_json(),
    ];
    let event = (
        field_or_odd(kind),
        field_or_odd(hostile_text().prop_map(Value::from)),
        field_or_odd("[A-Za-z0-9]{1,12}".prop_map(Value::from)),
        field_or_odd(any_json()),
    )
        .prop_map(|(kind, challenge, event_id, event)| {
            object(vec![
                ("type", kind),
                ("challenge", challenge),
                ("event_id", event_id),
                ("event", event),
            ])
            .to_string()
        });
    prop_oneof![
        6 => event,
        1 => any_json().prop_map(|value| value.to_string()),
        1 => "\\PC{0,200}",
    ]
}

#[test]
fn arbitrary_signed_slack_events_are_acknowledged_or_refused_and_change_nothing() {
    let runtime = runtime();
    let app = runtime.block_on(TestApp::spawn());
    let events = RefCell::new(app.app_events.resubscribe());
    let before = world(&app);
    TestRunner::new(cases(100))
        .run(&slack_event_body(), |body| {
            let answer = runtime.block_on(post_signed(&app, "/slack/events", &body))?;
            no_crash_and_refusals_explain(&answer)?;
            match serde_json::from_str::<Value>(&body) {
                _ if body.len() > SLACK_BODY_LIMIT => prop_assert_eq!(answer.status, 413),
                Err(_) => {
                    prop_assert_eq!(answer.status, 400);
                    prop_assert!(answer.body.contains("body is not JSON"), "{}", answer.body);
                }
                Ok(event) => {
                    prop_assert_eq!(answer.status, 200, "{:.300}", answer.body);
                    if text_at(&event, &["type"]) == "url_verification" {
                        // The challenge goes back as JSON data, whatever it holds.
                        let challenge = text_at(&event, &["challenge"]);
                        prop_assert_eq!(&answer.json(), &json!({"challenge": challenge}));
                    }
                }
            }
            prop_assert_eq!(&world(&app), &before);
            let events = published(&events);
            prop_assert!(events.is_empty(), "published {:?}", events);
            Ok(())
        })
        .unwrap();
}
