//! AWS unreachable for a while (the app's connections to moto cut): clicks
//! and commands are acknowledged in time, held, and the person is told at
//! once; when AWS is back they go through, each once, and nothing is lost.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aws_world::AwsWorld;
use crate::fake_slack::FakeSlack;
use crate::helpers::{request_id_of, TestApp};

fn cards(messages: &[Value]) -> Vec<&Value> {
    messages
        .iter()
        .filter(|message| message.get("thread_ts").is_none())
        .collect()
}

fn replies_to<'a>(messages: &'a [Value], card_ts: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|message| message["thread_ts"] == card_ts)
        .collect()
}

async fn wait_for_response(slack: &FakeSlack, containing: &str) {
    let found = slack
        .wait_for_call(
            "response_url",
            |body| {
                body["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(containing)
            },
            Duration::from_secs(30),
        )
        .await;
    assert!(
        found.is_some(),
        "nobody was told {containing:?}; told: {:?}",
        slack.responses()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_aws_is_unreachable_requests_wait_and_go_through_afterwards() {
    let world = AwsWorld::start().await;
    world.create_stack("cc-agent-doc-registry-prod", "v1").await;
    let switch = world.put_switch_before_apps().await;
    let mut app = TestApp::spawn_on(&world, FakeSlack::start().await).await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (first_id, first_ts, _) = app.card(1).await;

    switch.cut();
    let started = Instant::now();
    let click = app.click("UBOSS", "approve", &first_id, &first_ts).await;
    assert_eq!(click.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "Slack's deadline"
    );
    wait_for_response(&app.slack, "Your click is held").await;

    let started = Instant::now();
    let answer = app
        .command_text("UALICE", "deploy cc-agent-doc-registry --stage prod")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "Slack's deadline"
    );
    assert!(answer.contains("Your request is held"), "{answer}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.slack.messages().len(),
        1,
        "nothing moved while AWS was unreachable"
    );
    switch.restore();

    // The held request is recorded, its card posted, and its requester told where it stands.
    let messages = app
        .slack
        .wait_for_messages(
            |messages| cards(messages).len() == 2,
            Duration::from_secs(30),
        )
        .await;
    wait_for_response(&app.slack, "is waiting for approval").await;
    let second = cards(&messages)[1];
    let (second_id, second_ts) = (
        request_id_of(second),
        second["ts"].as_str().unwrap().to_string(),
    );
    // The held click counted: the first request ran and its thread says so.
    app.slack
        .wait_for_messages(
            |messages| !replies_to(messages, &first_ts).is_empty(),
            Duration::from_secs(30),
        )
        .await;
    app.click("UBOSS", "approve", &second_id, &second_ts).await;
    app.slack
        .wait_for_messages(
            |messages| !replies_to(messages, &second_ts).is_empty(),
            Duration::from_secs(30),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let messages = app.slack.messages();
    assert_eq!(cards(&messages).len(), 2, "{messages:?}");
    for card_ts in [&first_ts, &second_ts] {
        let replies = replies_to(&messages, card_ts);
        assert_eq!(replies.len(), 1, "{messages:?}");
        assert!(
            replies[0]["text"].as_str().unwrap().contains("succeeded"),
            "{replies:?}"
        );
    }
    let published = app
        .drain_events("devops.request", Duration::from_millis(500))
        .await;
    for id in [&first_id, &second_id] {
        let copies = published
            .iter()
            .filter(|event| event.detail["requestId"] == id.as_str())
            .count();
        assert_eq!(copies, 1, "request {id} published {copies} times");
    }
}

fn text(message: &Value) -> &str {
    message["text"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_only_the_event_bus_is_unreachable_approved_requests_wait_and_the_thread_is_told() {
    let world = AwsWorld::start().await;
    world.create_stack("cc-agent-doc-registry-prod", "v1").await;
    let events = world.put_switch_before_events().await;
    let mut app = TestApp::spawn_on(&world, FakeSlack::start().await).await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (id, card_ts, _) = app.card(1).await;

    events.cut();
    let click = app.click("UBOSS", "approve", &id, &card_ts).await;
    assert_eq!(click.status(), 200);
    let told = |messages: &[Value], what: &str| {
        replies_to(messages, &card_ts)
            .iter()
            .filter(|reply| text(reply) == what)
            .count()
    };
    app.slack
        .wait_for_messages(
            |messages| told(messages, devops_bot::delivery::BUS_HELD) == 1,
            Duration::from_secs(30),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        app.drain_events("devops.request", Duration::from_millis(200))
            .await
            .is_empty(),
        "nothing can be published while the bus is cut"
    );
    events.restore();

    app.slack
        .wait_for_messages(
            |messages| {
                replies_to(messages, &card_ts)
                    .iter()
                    .any(|reply| text(reply).contains("succeeded"))
            },
            Duration::from_secs(60),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let messages = app.slack.messages();
    let replies: Vec<&str> = replies_to(&messages, &card_ts)
        .into_iter()
        .map(text)
        .collect();
    assert_eq!(replies.len(), 3, "{replies:#?}");
    assert_eq!(replies[0], devops_bot::delivery::BUS_HELD, "{replies:#?}");
    assert_eq!(
        told(&messages, devops_bot::delivery::BUS_BACK),
        1,
        "{replies:#?}"
    );
    let published = app
        .drain_events("devops.request", Duration::from_millis(500))
        .await;
    assert_eq!(
        published
            .iter()
            .filter(|event| event.detail["requestId"] == id.as_str())
            .count(),
        1,
        "published once"
    );
}
