//! Signatures on every Slack route, body limits, and the secret value kept
//! out of everything but the published request.

use std::time::Duration;

use crate::flow::{request_prod_secret, wait_for_call};
use crate::helpers::{captured_logs, TestApp};

const ROUTES: [&str; 3] = ["/slack/commands", "/slack/interactions", "/slack/events"];

#[tokio::test]
async fn unsigned_wrongly_signed_or_stale_requests_get_401_and_change_nothing() {
    let app = TestApp::spawn().await;
    let body = "team_id=T0TEAM&channel_id=C1&user_id=U1&user_name=u1&command=%2Fdevops&text=deploy+cc-agent-doc-registry";
    let now = TestApp::now();
    for route in ROUTES {
        let url = format!("{}{route}", app.address);
        let unsigned = app.http.post(&url).body(body).send().await.unwrap();
        assert_eq!(unsigned.status(), 401, "{route} unsigned");

        let wrong = app
            .http
            .post(&url)
            .header("x-slack-request-timestamp", now.to_string())
            .header(
                "x-slack-signature",
                "v0=0000000000000000000000000000000000000000000000000000000000000000",
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{route} wrong signature");

        // A few seconds past the 5-minute window, read afresh: on a slow machine the
        // clock can tick between reading it and the bot's check.
        for stale in [TestApp::now() - 303, TestApp::now() + 303] {
            let response = app
                .http
                .post(&url)
                .header("x-slack-request-timestamp", stale.to_string())
                .header("x-slack-signature", TestApp::sign(body, stale))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                401,
                "{route} timestamp {stale} vs now {now}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.slack.calls().is_empty(), "nothing was posted");
    assert!(app
        .command_text("U1", "status")
        .await
        .contains("no requests"));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = TestApp::spawn().await;
    let body = format!("text={}", "a".repeat(200 * 1024));
    let response = app.post_signed("/slack/commands", body, &[]).await;
    assert_eq!(response.status(), 413);
    let event = serde_json::json!({"detail-type": "x", "source": "agent.X", "detail": {"pad": "a".repeat(300 * 1024)}});
    let response = app
        .post_event(&event, Some(crate::helpers::EVENTS_API_KEY))
        .await;
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn the_secret_value_appears_only_in_the_published_request() {
    let mut app = TestApp::spawn().await;
    let value = "canary-7f3e9b1d-never-shown";
    let (request_id, card_ts, _) = request_prod_secret(&app, "UREQ", value).await;
    app.click("UALICE", "approve", &request_id, &card_ts).await;
    let request = app.next_event("devops.request").await;
    assert_eq!(request.detail["params"]["value"], value);
    app.next_event("devops.completed").await;
    wait_for_call(&app, "chat.update", |update| {
        update.to_string().contains("Succeeded in")
    })
    .await;
    let status = app
        .command_text("UREQ", &format!("status {request_id}"))
        .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("devopsbot_http_requests_total"),
        "{metrics}"
    );

    assert!(
        !app.slack.everything_sent().contains(value),
        "sent to Slack"
    );
    assert!(!captured_logs().contains(value), "logged");
    assert!(!status.contains(value), "status answer");
    assert!(!metrics.contains(value), "metrics");
    app.shut_down().await;
    for entry in std::fs::read_dir(app.data_dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(value),
            "plain text in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn forged_requests_make_no_crowd_for_the_outbox_to_give_way_to_and_genuine_ones_do() {
    let app = TestApp::spawn().await;
    let answers = app
        .answers_due
        .clone()
        .expect("the app runs in this process");
    // One short of a crowd: the next request to be counted makes one.
    let waiting: Vec<_> = (0..16).map(|_| answers.begin()).collect();
    assert!(!answers.crowded());
    for _ in 0..3 {
        let forged = app
            .http
            .post(format!("{}/slack/commands", app.address))
            .header("x-slack-request-timestamp", TestApp::now().to_string())
            .header(
                "x-slack-signature",
                "v0=0000000000000000000000000000000000000000000000000000000000000000",
            )
            .body(app.command_body("U1", "help"))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 401);
    }
    assert!(!answers.crowded(), "a forged request was counted");
    app.command_text("U1", "help").await;
    assert!(answers.crowded(), "a genuine request was not counted");
    drop(waiting);
}
