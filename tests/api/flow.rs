//! The spine, end to end: command, modal, card, approve, request, completion,
//! thread reply, card update.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, CHANNEL, TEAM};

pub const SECRET_NAME: &str = "/contentcraft/billing/stripe_key";
/// The value `put_secret_flow` stores.
pub const FLOW_SECRET_VALUE: &str = "sk_live_flow_0123456789";

/// Waits until some call to `method` satisfies `check`, returning it.
pub async fn wait_for_call(app: &TestApp, method: &str, check: impl Fn(&Value) -> bool) -> Value {
    match app
        .slack
        .wait_for_call(method, check, Duration::from_secs(10))
        .await
    {
        Some((call, _)) => call.body,
        None => panic!("no matching {method} call; calls: {:?}", app.slack.calls()),
    }
}

/// Asks for a prod secret through command and modal; returns (request id, card ts, card).
pub async fn request_prod_secret(
    app: &TestApp,
    user: &str,
    value: &str,
) -> (String, String, Value) {
    let response = app
        .command(
            user,
            &format!("put-secret {SECRET_NAME} --stage prod --kms-key alias/billing"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let opened = app
        .slack
        .wait_for_calls("views.open", 1, Duration::from_secs(5))
        .await;
    let view = opened.last().unwrap()["view"].clone();
    assert_eq!(view["callback_id"], "put_secret");
    assert!(opened.last().unwrap()["trigger_id"]
        .as_str()
        .unwrap()
        .starts_with("trigger-"));
    let submitted = app.submit_modal(user, &view, value).await;
    assert_eq!(submitted.status(), 200);
    app.card(1).await
}

#[tokio::test]
async fn put_secret_runs_from_command_to_thread_reply() {
    put_secret_flow(&mut TestApp::spawn().await).await;
}

/// Command → modal → card → approve → devops.request → executor → secret
/// stored → devops.completed → thread reply and final card; on any backend.
pub async fn put_secret_flow(app: &mut TestApp) {
    let value = FLOW_SECRET_VALUE;
    let (request_id, card_ts, card) = request_prod_secret(app, "UREQ", value).await;

    // The card shows action, target, stage, requester and expiry, and has both buttons.
    assert_eq!(card["channel"], CHANNEL);
    let text = card.to_string();
    for expected in [
        "putSecret",
        SECRET_NAME,
        "prod",
        "ureq",
        "Expires",
        "\"approve\"",
        "\"reject\"",
    ] {
        assert!(text.contains(expected), "card lacks {expected}: {text}");
    }
    assert!(!text.contains(value));

    let clicked = app.click("UBOSS", "approve", &request_id, &card_ts).await;
    assert_eq!(clicked.status(), 200);

    let request = app.next_event("devops.request").await;
    assert_eq!(request.source, "agent.ChatOps");
    let detail = &request.detail;
    assert_eq!(detail["requestId"], request_id.as_str());
    assert_eq!(detail["action"], "putSecret");
    assert_eq!(detail["stage"], "prod");
    assert_eq!(detail["params"]["name"], SECRET_NAME);
    assert_eq!(detail["params"]["value"], value);
    assert_eq!(detail["params"]["kmsKey"], "alias/billing");
    assert_eq!(detail["requestedBy"], "ChatOps");
    assert!(chrono::DateTime::parse_from_rfc3339(detail["ts"].as_str().unwrap()).is_ok());
    assert_eq!(detail["initiator"]["platform"], "slack");
    assert_eq!(detail["initiator"]["teamId"], TEAM);
    assert_eq!(detail["initiator"]["userId"], "UREQ");
    assert_eq!(detail["initiator"]["userName"], "ureq");
    let approvals = detail["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0]["userId"], "UBOSS");
    assert_eq!(approvals[0]["platform"], "slack");
    assert!(approvals[0]["at"].is_string());

    let completed = app.next_event("devops.completed").await;
    assert_eq!(completed.source, "devops.automation");
    assert_eq!(completed.detail["status"], "success");
    assert_eq!(completed.detail["result"]["secretName"], SECRET_NAME);
    assert_eq!(completed.detail["result"]["action"], "created");
    assert!(completed.detail["latencyMs"].is_u64());

    let reply = wait_for_call(app, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;
    assert_eq!(reply["thread_ts"], card_ts.as_str());
    assert_eq!(reply["channel"], CHANNEL);
    let reply_text = reply["text"].as_str().unwrap();
    assert!(
        reply_text.contains("succeeded") && reply_text.contains(SECRET_NAME),
        "{reply_text}"
    );

    let final_card = wait_for_call(app, "chat.update", |update| {
        update.to_string().contains("Succeeded in")
    })
    .await;
    assert_eq!(final_card["ts"], card_ts.as_str());
    let final_text = final_card.to_string();
    assert!(
        final_text.contains("uboss"),
        "card says who approved: {final_text}"
    );
    assert!(
        !final_text.contains("\"approve\""),
        "buttons are gone once decided"
    );

    assert_eq!(app.stored_secret(SECRET_NAME).await.as_deref(), Some(value));
}

#[tokio::test]
async fn deploy_without_required_approval_is_published_at_once() {
    deploy_flow(&mut TestApp::spawn().await).await;
}

/// A dev deploy needs no approval: published at once, reported in the card's thread.
pub async fn deploy_flow(app: &mut TestApp) -> Value {
    let text = app
        .command_text("UDEV", "deploy cc-agent-doc-registry")
        .await;
    assert!(text.contains("needs no approval"), "{text}");
    let request = app.next_event("devops.request").await;
    assert_eq!(
        request.detail["params"]["stackName"],
        "cc-agent-doc-registry"
    );
    assert_eq!(request.detail["stage"], "dev");
    let completed = app.next_event("devops.completed").await;
    assert_eq!(
        completed.detail["status"], "success",
        "{:?}",
        completed.detail
    );
    assert_eq!(
        completed.detail["result"]["stackName"],
        "cc-agent-doc-registry-dev"
    );
    let (_, card_ts, card) = app.card(1).await;
    assert!(
        !card.to_string().contains("\"approve\""),
        "no buttons without approval: {card}"
    );
    let reply = wait_for_call(app, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;
    assert_eq!(reply["thread_ts"], card_ts.as_str());
    completed.detail
}

#[tokio::test]
async fn executor_errors_read_as_the_spec_says() {
    let mut app = TestApp::spawn().await;
    app.embedded()
        .stacks
        .set_status("cc-agent-doc-registry-dev", "UPDATE_IN_PROGRESS")
        .unwrap();
    app.command_text("UDEV", "deploy cc-agent-doc-registry")
        .await;
    let completed = app.next_event("devops.completed").await;
    assert_eq!(completed.detail["status"], "error");
    assert!(completed.detail["error"]
        .as_str()
        .unwrap()
        .contains("UPDATE_IN_PROGRESS"));

    app.command_text("UDEV", "deploy cc-unknown-stack").await;
    let completed = app.next_event("devops.completed").await;
    assert!(completed.detail["error"]
        .as_str()
        .unwrap()
        .contains("cc-unknown-stack-dev not found"));
    let failed = wait_for_call(&app, "chat.postMessage", |post| {
        post["text"]
            .as_str()
            .unwrap_or_default()
            .contains("cc-unknown-stack-dev not found")
    })
    .await;
    assert!(failed["thread_ts"].is_string());
    assert!(failed["text"].as_str().unwrap().starts_with("❌"));
}
