//! `/events`, the Events API handshake, health and readiness.

use serde_json::json;

use crate::helpers::{devops_request, TestApp, EVENTS_API_KEY};

#[tokio::test]
async fn events_ingress_requires_its_api_key_and_a_real_envelope() {
    let app = TestApp::spawn().await;
    let envelope = json!({"version": "0", "id": "e1", "detail-type": "agent.heartbeat", "source": "agent.X",
        "time": "2026-12-03T00:00:00Z", "region": "us-east-1", "resources": [], "detail": {"agent": "X"}, "extra": 1});
    assert_eq!(app.post_event(&envelope, None).await.status(), 401);
    assert_eq!(
        app.post_event(&envelope, Some("wrong-key-wrong-key"))
            .await
            .status(),
        401
    );
    let malformed = app
        .post_event(&json!({"detail": 1}), Some(EVENTS_API_KEY))
        .await;
    assert_eq!(malformed.status(), 400);
    assert!(malformed
        .text()
        .await
        .unwrap()
        .contains("EventBridge envelope"));
    let accepted = app.post_event(&envelope, Some(EVENTS_API_KEY)).await;
    assert_eq!(accepted.status(), 200);
    assert_eq!(
        accepted.json::<serde_json::Value>().await.unwrap()["routedTo"],
        0
    );
}

#[tokio::test]
async fn health_readiness_and_url_verification() {
    let app = TestApp::spawn().await;
    let health = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );
    let challenge =
        json!({"token": "x", "challenge": "c-123", "type": "url_verification"}).to_string();
    let answer = app.post_signed("/slack/events", challenge, &[]).await;
    assert_eq!(
        answer.json::<serde_json::Value>().await.unwrap()["challenge"],
        "c-123"
    );
}

#[tokio::test]
async fn requests_from_elsewhere_are_executed_and_non_agents_refused_by_name() {
    let mut app = TestApp::spawn().await;
    let request = |source: &str, id: &str| {
        let mut envelope = devops_request(
            source,
            id,
            "deployLambda",
            json!({"stackName": "cc-agent-doc-registry"}),
        );
        envelope["detail"]["requestedBy"] = json!("DocRegistry");
        envelope
    };
    let forged = request("human.mallory", "0b7c3a52-5f0e-4a7e-9d55-1f7a1e2b3c4d");
    assert_eq!(
        app.post_event(&forged, Some(EVENTS_API_KEY)).await.status(),
        200
    );
    let refused = app.next_event("devops.completed").await;
    assert_eq!(refused.detail["status"], "error");
    assert!(refused.detail["error"]
        .as_str()
        .unwrap()
        .contains("only sources matching agent.*"));

    let agent = request("agent.DocRegistry", "6f1e2d3c-4b5a-4987-8877-665544332211");
    assert_eq!(
        app.post_event(&agent, Some(EVENTS_API_KEY)).await.status(),
        200
    );
    let done = app.next_event("devops.completed").await;
    assert_eq!(done.detail["status"], "success");
    assert_eq!(done.detail["requestedBy"], "DocRegistry");
    // Delivered again (at least once): not executed again. The embedded bus
    // has delivered that completion already and publishes an event id once;
    // on EventBridge the same completion goes out again (tests/api/aws.rs).
    assert_eq!(
        app.post_event(&agent, Some(EVENTS_API_KEY)).await.status(),
        200
    );
    let repeated = app
        .drain_events("devops.completed", std::time::Duration::from_millis(500))
        .await;
    assert!(repeated.is_empty(), "{repeated:?}");
}
