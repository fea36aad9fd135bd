//! Two clicks at once, Slack's retries and duplicate completions each have one effect.

use std::time::Duration;

use crate::flow::wait_for_call;
use crate::helpers::{TestApp, EVENTS_API_KEY};

#[tokio::test]
async fn simultaneous_approvals_and_a_retried_click_publish_one_request() {
    let mut app = TestApp::spawn().await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (request_id, card_ts, _) = app.card(1).await;

    let boss = app.click_payload("UBOSS", "approve", &request_id, &card_ts);
    let alice = app.click_payload("UALICE", "approve", &request_id, &card_ts);
    let (first, second, retry) = tokio::join!(
        app.interaction(&boss, &[]),
        app.interaction(&alice, &[]),
        app.interaction(
            &boss,
            &[
                ("x-slack-retry-num", "1"),
                ("x-slack-retry-reason", "http_timeout")
            ]
        ),
    );
    for response in [first, second, retry] {
        assert_eq!(response.status(), 200);
    }

    let published = app
        .drain_events("devops.request", Duration::from_millis(1500))
        .await;
    assert_eq!(
        published.len(),
        1,
        "exactly one devops.request: {published:?}"
    );
    assert_eq!(
        published[0].detail["approvals"].as_array().unwrap().len(),
        1
    );
    // The slower approver is told the request was already approved.
    let told = wait_for_call(&app, "chat.postEphemeral", |_| true).await;
    assert!(told["text"].as_str().unwrap().contains("already"), "{told}");
    // Told once: Slack's retry of a click is not a click of its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.slack.calls_to("chat.postEphemeral").len(), 1);
}

#[tokio::test]
async fn a_duplicate_completion_posts_one_thread_reply() {
    let mut app = TestApp::spawn().await;
    app.command_text("UDEV", "deploy cc-agent-doc-registry")
        .await;
    let completed = app.next_event("devops.completed").await;
    wait_for_call(&app, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;

    // EventBridge delivers at least once: the same completion arrives again, twice.
    let envelope = serde_json::to_value(&completed).unwrap();
    for _ in 0..2 {
        let response = app.post_event(&envelope, Some(EVENTS_API_KEY)).await;
        assert_eq!(response.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let replies = app
        .slack
        .calls_to("chat.postMessage")
        .into_iter()
        .filter(|post| post.get("thread_ts").is_some())
        .count();
    assert_eq!(replies, 1);
}

#[tokio::test]
async fn refused_clicks_change_nothing_and_say_why() {
    let mut app = TestApp::spawn().await;
    app.command_text("UALICE", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (request_id, card_ts, _) = app.card(1).await;

    app.click("UMALLORY", "approve", &request_id, &card_ts)
        .await;
    let told = wait_for_call(&app, "chat.postEphemeral", |call| {
        call["user"] == "UMALLORY"
    })
    .await;
    assert!(
        told["text"]
            .as_str()
            .unwrap()
            .contains("not one of the approvers"),
        "{told}"
    );

    // UALICE is an approver, but not of her own prod request, whatever the file says.
    app.click("UALICE", "approve", &request_id, &card_ts).await;
    let told = wait_for_call(&app, "chat.postEphemeral", |call| call["user"] == "UALICE").await;
    assert!(
        told["text"]
            .as_str()
            .unwrap()
            .contains("cannot approve your own request"),
        "{told}"
    );

    assert!(app
        .drain_events("devops.request", Duration::from_millis(500))
        .await
        .is_empty());
    assert!(
        app.slack.calls_to("chat.update").is_empty(),
        "the card is unchanged"
    );
    let status = app
        .command_text("UALICE", &format!("status {request_id}"))
        .await;
    assert!(status.contains("*pending*"), "{status}");
}

#[tokio::test]
async fn rejecting_updates_the_card_and_publishes_nothing() {
    let mut app = TestApp::spawn().await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (request_id, card_ts, _) = app.card(1).await;
    app.click("UBOSS", "reject", &request_id, &card_ts).await;
    let update = wait_for_call(&app, "chat.update", |_| true).await;
    assert!(update.to_string().contains("Rejected by"), "{update}");
    app.click("UALICE", "approve", &request_id, &card_ts).await;
    let told = wait_for_call(&app, "chat.postEphemeral", |call| call["user"] == "UALICE").await;
    assert!(
        told["text"].as_str().unwrap().contains("already rejected"),
        "{told}"
    );
    assert!(app
        .drain_events("devops.request", Duration::from_millis(500))
        .await
        .is_empty());
}
