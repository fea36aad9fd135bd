//! Button clicks, modal submissions and the Events API. Payloads are read
//! leniently: a type we do not handle is acknowledged and ignored.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde_json::{json, Value};

use super::commands::{
    created_text, PutSecretForm, HELD, PUT_SECRET_CALLBACK, SECRET_BLOCK, SECRET_INPUT,
};
use super::{person, within_deadline, EarlyAnswer, InTime, SlackState};
use crate::backends::store::Effect;
use crate::chat::ChatPlatform;
use crate::domain::names::{RequestId, SecretName, Stage};
use crate::domain::request::Origin;
use crate::domain::secret::SecretValue;
use crate::requests::{NewAction, Verdict, DELIVERIES_REMEMBERED};

const HELD_CLICK: &str = "⏳ The bot's store cannot be reached right now. Your click is held and will count as soon as it is back; the card will show it.";

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(value, |value, key| value.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn bad_payload(reason: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"ok": false, "error": reason})),
    )
        .into_response()
}

pub async fn handle(
    State(state): State<SlackState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(raw) = form.get("payload") else {
        return bad_payload("missing form field `payload`");
    };
    let Ok(payload) = serde_json::from_str::<Value>(raw) else {
        return bad_payload("field `payload` is not JSON");
    };
    match str_at(&payload, &["type"]) {
        "block_actions" => block_actions(state, payload).await,
        "view_submission" if str_at(&payload, &["view", "callback_id"]) == PUT_SECRET_CALLBACK => {
            put_secret_submission(state, payload).await
        }
        other => {
            tracing::debug!(kind = other, "Slack interaction ignored");
            StatusCode::OK.into_response()
        }
    }
}

async fn block_actions(state: SlackState, payload: Value) -> Response {
    let Some(action) = payload
        .get("actions")
        .and_then(|actions| actions.get(0))
        .cloned()
    else {
        return StatusCode::OK.into_response();
    };
    let who = person(
        str_at(&payload, &["team", "id"]),
        str_at(&payload, &["user", "id"]),
        str_at(&payload, &["user", "username"]),
    );
    let channel = str_at(&payload, &["channel", "id"]).to_string();
    // A retried delivery repeats the trigger_id and the action's timestamp.
    let delivery = format!(
        "slack-action:{}:{}",
        str_at(&payload, &["trigger_id"]),
        str_at(&action, &["action_ts"])
    );
    let tell = super::commands::tell_later(&state, str_at(&payload, &["response_url"]));
    store_before_answering(|early| async move {
        let verb = str_at(&action, &["action_id"]);
        let data: Value = serde_json::from_str(str_at(&action, &["value"])).unwrap_or(Value::Null);
        let verdict = match verb {
            "approve" => Verdict::Approve,
            "reject" => Verdict::Reject,
            _ => return,
        };
        // Held: Slack hears "ok" at once, the person why nothing shows yet.
        let on_hold = move || {
            let _ = early.give("");
            tell(HELD_CLICK.to_string());
        };
        let outcome = match RequestId::parse(str_at(&data, &["requestId"])) {
            Ok(id) => {
                state
                    .requests
                    .decide(&id, &who, verdict, &delivery, on_hold)
                    .await
            }
            Err(error) => Err(crate::requests::RequestError::Refused(error.to_string())),
        };
        match outcome {
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!("Slack retried a click; already handled"),
            Err(error) => {
                let tell = Effect::Ephemeral {
                    platform: "slack".into(),
                    channel,
                    user: who.user_id.clone(),
                    text: format!("⚠️ Your click changed nothing: {error}"),
                };
                // A retried refused click is told once.
                match state
                    .store
                    .claim_once(&delivery, DELIVERIES_REMEMBERED, &[tell])
                    .await
                {
                    Ok(true) => state.requests.wake_outbox(),
                    Ok(false) => tracing::info!("Slack retried a refused click; already told"),
                    Err(error) => tracing::error!(%error, "could not queue the refusal message"),
                }
            }
        }
    })
    .await;
    StatusCode::OK.into_response()
}

/// Runs `work` on its own task and waits for it up to Slack's deadline, so the
/// click or submission is stored before Slack hears "ok" (and survives a
/// shutdown); if the store is slow or the work is held, the answer goes first
/// and the work goes on.
async fn store_before_answering<W, F>(work: W)
where
    W: FnOnce(EarlyAnswer) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match within_deadline(work).await {
        InTime::Finished(_) | InTime::Early(..) => {}
        InTime::Late(_) => {
            tracing::warn!("interaction still being stored after the acknowledgement deadline")
        }
    }
}

fn field_error(message: &str) -> Response {
    Json(json!({"response_action": "errors", "errors": {SECRET_BLOCK: message}})).into_response()
}

async fn put_secret_submission(state: SlackState, payload: Value) -> Response {
    let Ok(form) =
        serde_json::from_str::<PutSecretForm>(str_at(&payload, &["view", "private_metadata"]))
    else {
        return field_error("This form is damaged; close it and run the command again.");
    };
    let value = str_at(
        &payload,
        &[
            "view",
            "state",
            "values",
            SECRET_BLOCK,
            SECRET_INPUT,
            "value",
        ],
    );
    if value.is_empty() {
        return field_error("Enter the secret's value.");
    }
    let (Ok(name), Ok(stage)) = (SecretName::parse(&form.name), Stage::parse(&form.stage)) else {
        return field_error("This form is damaged; close it and run the command again.");
    };
    let who = person(
        str_at(&payload, &["team", "id"]),
        str_at(&payload, &["user", "id"]),
        str_at(&payload, &["user", "username"]),
    );
    let action = NewAction::PutSecret {
        name,
        kms_key: form.kms_key,
        value: SecretValue::new(value.to_string()),
    };
    let origin = Origin {
        platform: "slack".into(),
        channel: form.channel.clone(),
    };
    let requests = state.requests.clone();
    let store = state.store.clone();
    let user = who.user_id.clone();
    let channel = form.channel;
    // The modal closes on an empty 200; the outcome is told to the requester privately.
    let client = state.client.clone();
    let (held_channel, held_user) = (channel.clone(), user.clone());
    let work = |early: EarlyAnswer| async move {
        // Held: the modal closes at once, and the person hears why nothing shows yet.
        let on_hold = move || {
            let _ = early.give("");
            if let Some(client) = client {
                tokio::spawn(async move {
                    let _ = client.ephemeral(&held_channel, &held_user, HELD).await;
                });
            }
        };
        let text = match requests.submit(action, stage, who, origin, on_hold).await {
            Ok(request) => created_text(&request),
            Err(error) => format!("⚠️ {error}"),
        };
        let tell = Effect::Ephemeral {
            platform: "slack".into(),
            channel,
            user,
            text,
        };
        if let Err(error) = store.enqueue(&[tell]).await {
            tracing::error!(%error, "could not queue the submission answer");
        }
        requests.wake_outbox();
    };
    store_before_answering(work).await;
    StatusCode::OK.into_response()
}

/// The Events API: URL verification, and deduplicated (ignored) event callbacks.
pub async fn events(State(state): State<SlackState>, body: axum::body::Bytes) -> Response {
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return bad_payload("body is not JSON");
    };
    match str_at(&event, &["type"]) {
        "url_verification" => {
            Json(json!({"challenge": str_at(&event, &["challenge"])})).into_response()
        }
        "event_callback" => {
            let key = format!("slack-event:{}", str_at(&event, &["event_id"]));
            if let Ok(false) = state
                .store
                .claim_once(&key, DELIVERIES_REMEMBERED, &[])
                .await
            {
                tracing::info!("Slack redelivered an event; already seen");
            }
            StatusCode::OK.into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}
