//! Fast acknowledgements, Slack's 429s and failures retried, restarts survived.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_slack::Failure;
use crate::flow::wait_for_call;
use crate::helpers::{request_id_of, TestApp};

#[tokio::test]
async fn acknowledges_at_once_while_slack_rate_limits_and_loses_no_reply() {
    let mut app = TestApp::spawn().await;
    app.slack.fail_next(
        "chat.postMessage",
        Failure::RateLimited {
            retry_after_secs: 3,
        },
        1,
    );
    let started = Instant::now();
    let text = app
        .command_text("UDEV", "deploy cc-agent-doc-registry")
        .await;
    let acknowledged = started.elapsed();
    assert!(text.contains("Request"), "{text}");
    assert!(
        acknowledged < Duration::from_millis(1000),
        "acknowledged in {acknowledged:?}"
    );

    // The request goes out while Slack is still limiting; the card and reply follow, in order.
    app.next_event("devops.request").await;
    let (_, card_ts, _) = app.card(1).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After (longer than the default wait) was honoured"
    );
    let refused =
        app.slack.attempts("chat.postMessage") - app.slack.calls_to("chat.postMessage").len();
    assert_eq!(refused, 1, "one post refused with 429, then delivered");
    assert_eq!(
        app.slack.attempts("conversations.history"),
        0,
        "a 429 is a refusal: there is nothing to look for before posting again"
    );
    let reply = wait_for_call(&app, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;
    assert_eq!(reply["thread_ts"], card_ts.as_str());
    let posts = app.slack.calls_to("chat.postMessage");
    assert!(
        posts[0].get("thread_ts").is_none(),
        "the card came before its reply"
    );
}

#[tokio::test]
async fn transient_failures_are_retried_until_the_reply_is_delivered() {
    let mut app = TestApp::spawn().await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (request_id, card_ts, _) = app.card(1).await;
    app.slack
        .fail_next("chat.postMessage", Failure::ServerError, 2);
    app.slack
        .fail_next("chat.update", Failure::SlackError("internal_error"), 1);
    app.click("UBOSS", "approve", &request_id, &card_ts).await;
    app.next_event("devops.completed").await;
    let reply = wait_for_call(&app, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;
    assert_eq!(reply["thread_ts"], card_ts.as_str());
    wait_for_call(&app, "chat.update", |update| {
        update.to_string().contains("Succeeded in")
    })
    .await;
}

#[tokio::test]
async fn pending_requests_cards_and_threads_survive_a_restart() {
    let app = TestApp::spawn().await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (request_id, card_ts, _) = app.card(1).await;

    let mut app = app.restart().await;
    let approvals = app.command_text("UBOSS", "approvals").await;
    assert!(approvals.contains(&request_id), "{approvals}");
    app.click("UBOSS", "approve", &request_id, &card_ts).await;
    let request = app.next_event("devops.request").await;
    assert_eq!(request.detail["requestId"], request_id.as_str());
    let reply = wait_for_call(&app, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;
    assert_eq!(
        reply["thread_ts"],
        card_ts.as_str(),
        "the reply lands in the card's thread"
    );
    let update = wait_for_call(&app, "chat.update", |update| {
        update.to_string().contains("Succeeded in")
    })
    .await;
    assert_eq!(update["ts"], card_ts.as_str());
}

/// Slack posted the card and the reply, but the answers never reached the
/// bot (a dropped connection, a timeout): the retries find the messages
/// instead of posting them again.
#[tokio::test]
async fn posts_whose_answer_was_lost_are_found_not_posted_twice() {
    let mut app = TestApp::spawn().await;
    app.slack
        .fail_next("chat.postMessage", Failure::DoneButAnswerLost, 2);
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let messages = app
        .slack
        .wait_for_messages(|messages| !messages.is_empty(), Duration::from_secs(10))
        .await;
    let card_ts = messages[0]["ts"].as_str().unwrap().to_string();
    let request_id = request_id_of(&messages[0]);
    // The card's thread is the message Slack has, found through the history.
    app.click("UBOSS", "approve", &request_id, &card_ts).await;
    app.next_event("devops.completed").await;
    app.slack
        .wait_for_messages(
            |messages| messages.iter().any(|m| m.get("thread_ts").is_some()),
            Duration::from_secs(10),
        )
        .await;
    // The reply's retry comes 250 ms after its lost answer: a second copy would be here by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let messages = app.slack.messages();
    let in_thread = |message: &&Value| message.get("thread_ts").is_some();
    let cards: Vec<&Value> = messages.iter().filter(|m| !in_thread(m)).collect();
    let replies: Vec<&Value> = messages.iter().filter(in_thread).collect();
    assert_eq!(cards.len(), 1, "one card: {messages:?}");
    assert_eq!(replies.len(), 1, "one reply: {messages:?}");
    assert_eq!(replies[0]["thread_ts"], card_ts.as_str());
    assert!(replies[0]["text"].as_str().unwrap().contains("succeeded"));
    assert!(app.slack.attempts("conversations.history") >= 1);
    assert!(app.slack.attempts("conversations.replies") >= 1);
}

/// Slack answers 429 and 500 to everything for three seconds while requests
/// flow: afterwards every card and every reply is there, once, each reply in
/// its card's thread after the card, and each card ends showing the outcome.
#[tokio::test]
async fn a_slack_outage_delays_cards_and_replies_but_loses_none() {
    let app = TestApp::spawn().await;
    app.slack.outage(
        Duration::from_secs(3),
        &[
            Failure::RateLimited {
                retry_after_secs: 1,
            },
            Failure::ServerError,
        ],
    );
    for _ in 0..4 {
        app.command_text("UDEV", "deploy cc-agent-doc-registry")
            .await;
    }
    let in_thread = |message: &Value| message.get("thread_ts").is_some();
    let all_replied = |messages: &[Value]| {
        let cards: Vec<&Value> = messages.iter().filter(|m| !in_thread(m)).collect();
        cards.len() == 4
            && cards.iter().all(|card| {
                messages
                    .iter()
                    .any(|reply| reply["thread_ts"] == card["ts"])
                    && card.to_string().contains("Succeeded in")
            })
    };
    app.slack
        .wait_for_messages(all_replied, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let messages = app.slack.messages();
    let cards: Vec<&Value> = messages.iter().filter(|m| !in_thread(m)).collect();
    assert_eq!(cards.len(), 4, "each card once: {messages:?}");
    for card in cards {
        let replies: Vec<&Value> = messages
            .iter()
            .filter(|reply| reply["thread_ts"] == card["ts"])
            .collect();
        assert_eq!(replies.len(), 1, "each reply once: {messages:?}");
        assert!(
            replies[0]["ts"].as_str() > card["ts"].as_str(),
            "the reply follows its card"
        );
    }
    let refused =
        app.slack.attempts("chat.postMessage") - app.slack.calls_to("chat.postMessage").len();
    assert!(refused >= 4, "the outage refused posts ({refused})");
}

#[tokio::test]
async fn a_thread_slack_is_slow_for_does_not_hold_up_the_others() {
    let app = TestApp::spawn().await;
    for requester in ["UONE", "UTWO"] {
        app.command_text(requester, "deploy cc-agent-doc-registry --stage prod")
            .await;
    }
    let (slow_id, slow_ts, _) = app.card(1).await;
    let (quick_id, quick_ts, _) = app.card(2).await;
    app.slack.slow_down_thread(&slow_ts, Duration::from_secs(5));

    app.click("UBOSS", "approve", &slow_id, &slow_ts).await;
    let clicked = Instant::now();
    app.click("UBOSS", "approve", &quick_id, &quick_ts).await;
    let replied = |ts: &str, messages: &[Value]| {
        messages.iter().any(|message| {
            message["thread_ts"] == ts
                && message["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("succeeded")
        })
    };
    let messages = app
        .slack
        .wait_for_messages(
            |messages| replied(&quick_ts, messages),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        // Slack answers the slow thread after 5 s: waiting behind it shows as more.
        clicked.elapsed() < Duration::from_millis(4500),
        "the quick thread waited {:?} for the slow one",
        clicked.elapsed()
    );
    assert!(
        !replied(&slow_ts, &messages),
        "the slow thread keeps its order: card update first"
    );
    app.slack
        .wait_for_messages(
            |messages| replied(&slow_ts, messages),
            Duration::from_secs(15),
        )
        .await;
}

#[tokio::test]
async fn cards_give_way_to_a_crowd_waiting_for_answers_and_all_follow_it() {
    let app = TestApp::spawn().await;
    // Slack answers each post only after the test has looked, so every post started is still
    // under way then, however slowly a busy machine runs the deploys.
    app.slack.set_latency(Duration::from_secs(10));
    let answers = app
        .answers_due
        .clone()
        .expect("the app runs in this process");
    let crowd: Vec<_> = (0..40).map(|_| answers.begin()).collect();
    for n in 0..10 {
        let requester = format!("UCROWD{n}");
        let answer = app
            .command_text(&requester, "deploy cc-agent-doc-registry --stage prod")
            .await;
        assert!(answer.contains("Request `"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let posted_in_the_crowd = app.slack.attempts("chat.postMessage");
    assert!(
        (1..=4).contains(&posted_in_the_crowd),
        "{posted_in_the_crowd} cards started while the crowd waited; expected a few, not none"
    );
    drop(crowd);
    app.slack
        .wait_for_calls("chat.postMessage", 10, Duration::from_secs(10))
        .await;
}
