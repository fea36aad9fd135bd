//! `/devops …` slash commands.

use std::future::Future;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde_json::{json, Value};

use super::{person, within_deadline, EarlyAnswer, InTime, SlackState};
use crate::domain::command::Command;
use crate::domain::events::rfc3339;
use crate::domain::request::{ActionKind, Origin, Request};
use crate::requests::{NewAction, RequestError};

/// Private metadata carried by the put-secret modal to its submission.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PutSecretForm {
    pub name: String,
    pub stage: String,
    #[serde(rename = "kmsKey")]
    pub kms_key: Option<String>,
    pub channel: String,
}

pub const PUT_SECRET_CALLBACK: &str = "put_secret";
pub const SECRET_BLOCK: &str = "secret_value";
pub const SECRET_INPUT: &str = "value";

pub fn ephemeral(text: impl Into<String>) -> Response {
    Json(json!({"response_type": "ephemeral", "text": text.into()})).into_response()
}

/// Told at once when a request cannot be stored now and is held instead.
pub const HELD: &str = "⏳ The bot's store cannot be reached right now. Your request is held and will be recorded as soon as it is back; the answer will come here.";

/// Runs `work`, answering with its text if it finishes within Slack's
/// deadline; otherwise answers with what the work said early, or "working on
/// it", and reports the outcome through `response_url`.
pub async fn answer_in_time<W, F>(state: &SlackState, response_url: String, work: W) -> Response
where
    W: FnOnce(EarlyAnswer) -> F,
    F: Future<Output = String> + Send + 'static,
{
    let (first_answer, task) = match within_deadline(work).await {
        InTime::Finished(Ok(text)) => return ephemeral(text),
        InTime::Finished(Err(_)) => {
            return ephemeral(
                "Something went wrong on our side; nothing was changed. Please try again.",
            )
        }
        InTime::Early(text, task) => (text, task),
        InTime::Late(task) => ("⏳ Working on it…".to_string(), task),
    };
    let client = state.client.clone();
    tokio::spawn(async move {
        if let (Ok(text), Some(client)) = (task.await, client) {
            if let Err(error) = client.respond(&response_url, &text).await {
                tracing::warn!(%error, "late answer through response_url failed");
            }
        }
    });
    ephemeral(first_answer)
}

/// Tells the person through `response_url` (when the early answer has gone).
pub fn tell_later(state: &SlackState, response_url: &str) -> impl Fn(String) + Send + 'static {
    let (client, response_url) = (state.client.clone(), response_url.to_string());
    move |text| {
        if let Some(client) = client.clone() {
            let response_url = response_url.clone();
            tokio::spawn(async move {
                let _ = client.respond(&response_url, &text).await;
            });
        }
    }
}

/// The fields of a slash command the bot reads, out of the dozen and more Slack
/// sends; a missing one is empty. Read as a map would: a field sent twice counts
/// with its last value, and the others are skipped without being copied.
#[derive(Default)]
pub struct SlashCommand {
    team_id: String,
    user_id: String,
    user_name: String,
    channel_id: String,
    text: String,
    response_url: String,
    trigger_id: String,
}

impl<'de> serde::Deserialize<'de> for SlashCommand {
    fn deserialize<D: serde::Deserializer<'de>>(form: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = SlashCommand;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a slash command's form fields")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut fields: M,
            ) -> Result<SlashCommand, M::Error> {
                let mut command = SlashCommand::default();
                while let Some(field) = fields.next_key()? {
                    let slot = match field {
                        Field::TeamId => &mut command.team_id,
                        Field::UserId => &mut command.user_id,
                        Field::UserName => &mut command.user_name,
                        Field::ChannelId => &mut command.channel_id,
                        Field::Text => &mut command.text,
                        Field::ResponseUrl => &mut command.response_url,
                        Field::TriggerId => &mut command.trigger_id,
                        Field::Other => {
                            fields.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = fields.next_value()?;
                }
                Ok(command)
            }
        }
        form.deserialize_map(Fields)
    }
}

/// A form field's name, if it is one the bot reads; recognised without being copied.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    TeamId,
    UserId,
    UserName,
    ChannelId,
    Text,
    ResponseUrl,
    TriggerId,
    #[serde(other)]
    Other,
}

pub async fn handle(State(state): State<SlackState>, Form(form): Form<SlashCommand>) -> Response {
    let who = person(&form.team_id, &form.user_id, &form.user_name);
    if who.user_id.is_empty() || form.channel_id.is_empty() {
        return ephemeral("This request is missing its user or channel; nothing was done.");
    }
    let origin = Origin {
        platform: "slack".into(),
        channel: form.channel_id.clone(),
    };
    let command = match Command::parse(&form.text) {
        Ok(command) => command,
        Err(error) => return ephemeral(format!("⚠️ {error}")),
    };
    let response_url = form.response_url.clone();
    match command {
        Command::Help => ephemeral(Command::help()),
        Command::Deploy { stack, stage } => {
            let requests = state.requests.clone();
            let stage = requests.stage_or_default(stage);
            let tell = tell_later(&state, &response_url);
            answer_in_time(&state, response_url, |early| async move {
                // Held after the first answer went: the person hears it through response_url.
                let on_hold = || early.give(HELD).unwrap_or_else(tell);
                match requests
                    .submit(NewAction::Deploy { stack }, stage, who, origin, on_hold)
                    .await
                {
                    Ok(request) => created_text(&request),
                    Err(error) => format!("⚠️ {error}"),
                }
            })
            .await
        }
        Command::PutSecret {
            name,
            stage,
            kms_key,
        } => {
            let stage = state.requests.stage_or_default(stage);
            if let Err(error) = state
                .requests
                .may_request(ActionKind::PutSecret, stage, &who)
            {
                return ephemeral(format!("⚠️ {error}"));
            }
            let Some(client) = state.client.clone() else {
                return ephemeral("⚠️ SLACK_BOT_TOKEN is not configured, so the bot cannot open the form for the value.");
            };
            let metadata = PutSecretForm {
                name: name.to_string(),
                stage: stage.to_string(),
                kms_key,
                channel: origin.channel,
            };
            let view = secret_modal(&metadata);
            let trigger_id = form.trigger_id.clone();
            // trigger_id is valid for 3 s: open the modal right after acknowledging.
            tokio::spawn(async move {
                if let Err(error) = client.open_modal(&trigger_id, view).await {
                    tracing::warn!(%error, "opening the put-secret modal failed");
                    let _ = client
                        .respond(&response_url, &format!("⚠️ The form for the value could not be opened ({error}); please run the command again."))
                        .await;
                }
            });
            axum::http::StatusCode::OK.into_response()
        }
        Command::Status { request_id } => {
            let requests = state.requests.clone();
            answer_in_time(&state, response_url, |_| async move {
                let answer = match request_id {
                    Some(id) => requests.get(&id).await.map(|request| describe(&request)),
                    None => requests.recent(&who).await.map(|list| {
                        if list.is_empty() {
                            "You have no requests yet.".to_string()
                        } else {
                            list.iter().map(describe).collect::<Vec<_>>().join("\n")
                        }
                    }),
                };
                answer.unwrap_or_else(|error: RequestError| format!("⚠️ {error}"))
            })
            .await
        }
        Command::Approvals => {
            let requests = state.requests.clone();
            answer_in_time(&state, response_url, |_| async move {
                match requests.pending().await {
                    Ok(list) if list.is_empty() => "Nothing is waiting for approval.".to_string(),
                    Ok(list) => list
                        .iter()
                        .map(|request| {
                            format!(
                                "{} — waiting for {} ({}/{} approvals, expires {})",
                                describe(request),
                                request
                                    .policy
                                    .approvers
                                    .join(", ")
                                    .replace('*', "any approver"),
                                request.approvals.len(),
                                request.policy.approvals_needed,
                                rfc3339(request.expires_at)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                    Err(error) => format!("⚠️ {error}"),
                }
            })
            .await
        }
    }
}

pub fn created_text(request: &Request) -> String {
    let what = format!(
        "{} `{}` on {}",
        request.action.kind().as_str(),
        request.action.target(request.stage),
        request.stage
    );
    if request.policy.approvals_needed == 0 {
        format!(
            "🚀 Request `{}`: {what} needs no approval and is being published.",
            request.id
        )
    } else {
        format!(
            "📝 Request `{}`: {what} is waiting for approval; the card is in the channel.",
            request.id
        )
    }
}

fn describe(request: &Request) -> String {
    format!(
        "`{}` {} `{}` on {} by {}: *{}*",
        request.id,
        request.action.kind().as_str(),
        request.action.target(request.stage),
        request.stage,
        request.requester.user_name,
        request.status.as_str()
    )
}

fn secret_modal(form: &PutSecretForm) -> Value {
    json!({
        "type": "modal",
        "callback_id": PUT_SECRET_CALLBACK,
        "private_metadata": serde_json::to_string(form).unwrap_or_default(),
        "title": {"type": "plain_text", "text": "Put secret"},
        "submit": {"type": "plain_text", "text": "Request"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!(
                "Secret `{}` on *{}*. The value is sealed and sent only in the request itself; it is never shown in Slack.",
                super::blocks::mrkdwn(&form.name), form.stage)}},
            {"type": "input", "block_id": SECRET_BLOCK,
             "label": {"type": "plain_text", "text": "Value"},
             "element": {"type": "plain_text_input", "action_id": SECRET_INPUT}}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::SlashCommand;

    #[test]
    fn a_slash_command_form_is_read_as_a_map_would_be() {
        let form: SlashCommand = serde_urlencoded::from_str(
            "token=x&team_id=T1&user_id=U1&user_name=ann&user_id=U2&channel_id=C1\
             &text=deploy+web%20--stage%3Dprod&api_app_id=A1&response_url=https%3A%2F%2Fhooks",
        )
        .unwrap();
        assert_eq!(
            [
                form.team_id,
                form.user_id,
                form.user_name,
                form.channel_id,
                form.text,
                form.response_url,
                form.trigger_id,
            ],
            [
                "T1",
                "U2",
                "ann",
                "C1",
                "deploy web --stage=prod",
                "https://hooks",
                ""
            ]
        );
    }
}
