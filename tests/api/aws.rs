//! The same service with `DEVOPSBOT_BACKEND=aws`, on moto: DynamoDB state,
//! EventBridge events (read back through an SQS rule target), Secrets
//! Manager and CloudFormation really changed, and two replicas sharing it all.

use std::time::Duration;

use devops_bot::Application;
use serde_json::{json, Value};

use crate::aws_world::AwsWorld;
use crate::fake_slack::FakeSlack;
use crate::flow::{
    deploy_flow, put_secret_flow, request_prod_secret, wait_for_call, FLOW_SECRET_VALUE,
    SECRET_NAME,
};
use crate::helpers::{captured_logs, devops_request, TestApp, EVENTS_API_KEY};

const STACK: &str = "cc-agent-doc-registry-dev";

async fn app_on_aws() -> (std::sync::Arc<AwsWorld>, TestApp) {
    let world = AwsWorld::start().await;
    world.create_stack(STACK, "v1").await;
    let app = TestApp::spawn_on(&world, FakeSlack::start().await).await;
    (world, app)
}

#[tokio::test]
async fn put_secret_runs_end_to_end_on_aws() {
    let (world, mut app) = app_on_aws().await;
    put_secret_flow(&mut app).await;
    let described = world
        .secrets()
        .describe_secret()
        .secret_id(SECRET_NAME)
        .send()
        .await
        .unwrap();
    assert_eq!(described.kms_key_id(), Some("alias/billing"));
    let tags: Vec<_> = described
        .tags()
        .iter()
        .map(|tag| format!("{}={}", tag.key().unwrap(), tag.value().unwrap()))
        .collect();
    assert!(
        tags.contains(&"createdBy=DevOpsAutomation".to_string()),
        "{tags:?}"
    );
    assert!(
        tags.contains(&"requestedBy=ChatOps".to_string()),
        "{tags:?}"
    );

    // The value waited for approval sealed: no item of the bot's table, no
    // log line and no metric holds it in plain text.
    let items = aws_sdk_dynamodb::Client::new(&world.sdk)
        .scan()
        .table_name(crate::aws_world::TABLE)
        .send()
        .await
        .unwrap();
    assert!(items.count() > 0);
    assert!(!format!("{:?}", items.items()).contains(FLOW_SECRET_VALUE));
    assert!(!captured_logs().contains(FLOW_SECRET_VALUE));
    let metrics = app.metrics().await;
    assert!(!metrics.contains(FLOW_SECRET_VALUE));
    // The reference's RequestCount and RequestLatency, by action.
    assert!(
        metrics.contains(
            r#"devopsbot_executor_requests_total{action="putSecret",status="success"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"devopsbot_executor_latency_seconds_count{action="putSecret"} 1"#));
}

#[tokio::test]
async fn deploy_runs_end_to_end_on_aws() {
    let (world, mut app) = app_on_aws().await;
    let detail = deploy_flow(&mut app).await;
    // From chat nothing changes but the rollout itself: template and parameters are the previous ones.
    assert_eq!(detail["result"]["action"], "no_changes");
    assert_eq!(detail["result"]["currentStatus"], "CREATE_COMPLETE");
    assert_eq!(
        world.stack_parameter(STACK, "Version").await.as_deref(),
        Some("v1")
    );
}

#[tokio::test]
async fn agents_requests_change_aws_and_each_error_is_named() {
    let (world, mut app) = app_on_aws().await;
    let mut ask = async |source: &str, action: &str, params: Value| -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = devops_request(source, &id, action, params);
        assert_eq!(
            app.post_event(&envelope, Some(EVENTS_API_KEY))
                .await
                .status(),
            200
        );
        loop {
            let completed = app.next_event("devops.completed").await;
            if completed.detail["requestId"] == id.as_str() {
                assert_eq!(completed.source, "devops.automation");
                assert!(completed.detail["latencyMs"].is_u64());
                return completed.detail;
            }
        }
    };

    let deployed = ask(
        "agent.DocRegistry",
        "deployLambda",
        json!({"stackName": "cc-agent-doc-registry", "parameters": {"Version": "v2"}}),
    )
    .await;
    assert_eq!(deployed["status"], "success", "{deployed}");
    assert_eq!(deployed["result"]["action"], "updated");
    assert_eq!(deployed["result"]["stackName"], STACK);
    assert_eq!(deployed["result"]["currentStatus"], "UPDATE_COMPLETE");
    assert_eq!(
        world.stack_parameter(STACK, "Version").await.as_deref(),
        Some("v2")
    );

    let created = ask(
        "agent.CostSentinel",
        "putSecret",
        json!({"name": "/contentcraft/costsent/threshold", "value": "{\"spendPct\": 30}"}),
    )
    .await;
    assert_eq!(created["result"]["action"], "created", "{created}");
    assert!(created["result"]["arn"].as_str().unwrap().starts_with(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:/contentcraft/costsent/threshold-"
    ));
    let updated = ask(
        "agent.CostSentinel",
        "putSecret",
        json!({"name": "/contentcraft/costsent/threshold", "value": "{\"spendPct\": 40}"}),
    )
    .await;
    assert_eq!(updated["result"]["action"], "updated");
    assert_ne!(
        updated["result"]["versionId"],
        created["result"]["versionId"]
    );
    assert_eq!(
        world
            .secret_value("/contentcraft/costsent/threshold")
            .await
            .as_deref(),
        Some("{\"spendPct\": 40}")
    );

    for (source, action, params, expected) in [
        (
            "agent.X",
            "putSecret",
            json!({"value": "v"}),
            "missing required parameter `name`",
        ),
        (
            "agent.X",
            "putSecret",
            json!({"name": "/contentcraft/x"}),
            "missing required parameter `value`",
        ),
        (
            "agent.X",
            "putSecret",
            json!({"name": "/other/x", "value": "v"}),
            "/contentcraft/",
        ),
        (
            "agent.X",
            "deployLambda",
            json!({"stackName": "cc-missing"}),
            "cc-missing-dev not found",
        ),
        (
            "agent.X",
            "deployLambda",
            json!({"stackName": "cc-agent-doc-registry", "parameters": {"Colour": "blue"}}),
            "no parameter(s) Colour",
        ),
        (
            "agent.X",
            "rebootServer",
            json!({}),
            "unknown action `rebootServer`",
        ),
        (
            "human.mallory",
            "putSecret",
            json!({"name": "/contentcraft/x", "value": "v"}),
            "only sources matching agent.*",
        ),
    ] {
        let completed = ask(source, action, params).await;
        assert_eq!(completed["status"], "error", "{completed}");
        let error = completed["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "expected `{expected}` in: {error}"
        );
    }
    assert_eq!(world.secret_value("/other/x").await, None);
    assert_eq!(world.secret_value("/contentcraft/x").await, None);
}

#[tokio::test]
async fn a_redelivered_request_runs_once_and_gets_its_completion_again() {
    let (world, mut app) = app_on_aws().await;
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = devops_request(
        "agent.CostSentinel",
        &id,
        "putSecret",
        json!({"name": "/contentcraft/once", "value": "v1"}),
    );
    assert_eq!(
        app.post_event(&envelope, Some(EVENTS_API_KEY))
            .await
            .status(),
        200
    );
    let first = app.next_event("devops.completed").await;
    assert_eq!(
        app.post_event(&envelope, Some(EVENTS_API_KEY))
            .await
            .status(),
        200
    );
    let second = app.next_event("devops.completed").await;
    assert_eq!(second.detail, first.detail);
    let versions = world
        .secrets()
        .list_secret_version_ids()
        .secret_id("/contentcraft/once")
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1, "the secret was written twice");
}

#[tokio::test]
async fn two_replicas_on_one_table_decide_and_post_once() {
    let world = AwsWorld::start().await;
    let slack = FakeSlack::start().await;
    let first = TestApp::spawn_on(&world, slack.clone()).await;
    let second = TestApp::spawn_on(&world, slack.clone()).await;
    replicas_decide_and_post_once(&world, &slack, first, second).await;
}

#[tokio::test]
async fn two_replica_processes_on_one_moto_decide_and_post_once() {
    let world = AwsWorld::start().await;
    let slack = FakeSlack::start().await;
    let first = TestApp::spawn_on(&world, slack.clone()).await;
    let second = TestApp::spawn_process_on(&world, slack.clone()).await;
    replicas_decide_and_post_once(&world, &slack, first, second).await;
}

/// Clicks reach both replicas at once, events are delivered to either in
/// turn, both run outbox workers: one transition, one request, one execution,
/// one card, one reply.
async fn replicas_decide_and_post_once(
    world: &AwsWorld,
    slack: &FakeSlack,
    mut first: TestApp,
    second: TestApp,
) {
    let (request_id, card_ts, _) = request_prod_secret(&first, "UREQ", "sk_live_replicas").await;
    // Two approvers click at once, each reaching another replica; Slack retries one click.
    let boss = first.click_payload("UBOSS", "approve", &request_id, &card_ts);
    let (a, b, c) = tokio::join!(
        first.interaction(&boss, &[]),
        second.click("UALICE", "approve", &request_id, &card_ts),
        second.interaction(
            &boss,
            &[
                ("x-slack-retry-num", "1"),
                ("x-slack-retry-reason", "http_timeout")
            ]
        ),
    );
    assert_eq!(
        (
            a.status().as_u16(),
            b.status().as_u16(),
            c.status().as_u16()
        ),
        (200, 200, 200)
    );

    let request = first.next_event("devops.request").await;
    assert_eq!(request.detail["requestId"], request_id.as_str());
    let completed = first.next_event("devops.completed").await;
    assert_eq!(
        completed.detail["status"], "success",
        "{:?}",
        completed.detail
    );
    wait_for_call(&first, "chat.update", |update| {
        update.to_string().contains("Succeeded in")
    })
    .await;
    // The card can show the outcome before the reply is posted (it is drawn from
    // the request as it stands), and the reply may wait for the other replica's outbox.
    wait_for_call(&first, "chat.postMessage", |post| {
        post.get("thread_ts").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let later = first
        .drain_events("devops.request", Duration::from_millis(300))
        .await;
    assert!(later.is_empty(), "published twice: {later:?}");
    let cards = slack
        .calls_to("chat.postMessage")
        .iter()
        .filter(|post| post.get("thread_ts").is_none())
        .count();
    let replies = slack
        .calls_to("chat.postMessage")
        .iter()
        .filter(|post| post.get("thread_ts").is_some())
        .count();
    assert_eq!((cards, replies), (1, 1), "{:?}", slack.calls());
    let versions = world
        .secrets()
        .list_secret_version_ids()
        .secret_id(SECRET_NAME)
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1);
    drop(second);
}

#[tokio::test]
async fn start_up_refuses_a_missing_table_and_names_the_fix() {
    let world = AwsWorld::start().await;
    let slack = FakeSlack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestApp::config(&slack, dir.path(), Some(&world));
    if let devops_bot::config::Backend::Aws(settings) = &mut config.backend {
        settings.table = "devops-bot-missing".into();
    }
    let error = Application::build(config)
        .await
        .err()
        .expect("start-up refused");
    let text = error.to_string();
    assert!(
        text.contains("devops-bot-missing") && text.contains("devops-bot init-aws"),
        "{text}"
    );
}

#[tokio::test]
async fn a_permission_aws_denies_is_named_in_the_completion() {
    let world = AwsWorld::start_denying("secretsmanager:UpdateSecret").await;
    world
        .secrets()
        .create_secret()
        .name("/contentcraft/denied")
        .secret_string("old")
        .send()
        .await
        .unwrap();
    let mut app = TestApp::spawn_on(&world, FakeSlack::start().await).await;
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = devops_request(
        "agent.CostSentinel",
        &id,
        "putSecret",
        json!({"name": "/contentcraft/denied", "value": "v"}),
    );
    assert_eq!(
        app.post_event(&envelope, Some(EVENTS_API_KEY))
            .await
            .status(),
        200
    );
    let completed = app.next_event("devops.completed").await;
    assert_eq!(completed.detail["status"], "error");
    let error = completed.detail["error"].as_str().unwrap();
    assert!(
        error.contains("Failed to put secret /contentcraft/denied: permission denied"),
        "{error}"
    );
    assert_eq!(
        world.secret_value("/contentcraft/denied").await.as_deref(),
        Some("old")
    );
}

#[tokio::test]
async fn init_aws_creates_what_is_missing_and_leaves_the_rest() {
    let moto = crate::aws_world::Moto::start().await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_devops-bot"))
            .arg("init-aws")
            .env_clear()
            .envs([
                ("AWS_REGION", "us-east-1"),
                ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("DEVOPSBOT_TABLE", "devops-bot-init"),
            ])
            .output()
            .unwrap()
    };
    let first = run();
    let said = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        said.contains("created DynamoDB table devops-bot-init"),
        "{said}"
    );
    let second = run();
    let said = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success());
    assert!(said.contains("devops-bot-init already exists"), "{said}");
}

/// A wire-level stand-in for EventBridge that refuses chosen entries, since
/// moto never answers `PutEvents` with a partial failure.
async fn flaky_eventbridge(
    refuse: impl Fn(usize, &serde_json::Value) -> bool + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
    let seen = calls.clone();
    let refuse = std::sync::Arc::new(refuse);
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: String| {
            let (seen, refuse) = (seen.clone(), refuse.clone());
            async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                let entries = request["Entries"].as_array().unwrap().clone();
                let call = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(
                        entries
                            .iter()
                            .map(|entry| entry["Detail"].as_str().unwrap().to_string())
                            .collect(),
                    );
                    seen.len()
                };
                let results: Vec<Value> = entries
                    .iter()
                    .enumerate()
                    .map(|(n, entry)| {
                        if refuse(call, entry) {
                            json!({"ErrorCode": "InternalFailure", "ErrorMessage": "try again"})
                        } else {
                            json!({"EventId": format!("event-{call}-{n}")})
                        }
                    })
                    .collect();
                let failed = results
                    .iter()
                    .filter(|result| result.get("ErrorCode").is_some())
                    .count();
                (
                    [("content-type", "application/x-amz-json-1.1")],
                    json!({"FailedEntryCount": failed, "Entries": results}).to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, calls)
}

async fn bus_at(endpoint: &str) -> devops_bot::backends::bus::aws::EventBridgeBus {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_eventbridge::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    devops_bot::backends::bus::aws::EventBridgeBus::new(
        aws_sdk_eventbridge::Client::new(&sdk),
        "default",
    )
}

fn numbered(n: usize) -> devops_bot::domain::events::Envelope {
    devops_bot::domain::events::Envelope::new(
        "devops.completed",
        "devops.automation",
        json!({"n": n}),
    )
}

#[tokio::test]
async fn eventbridge_partial_failures_resend_just_the_failed_entries() {
    use devops_bot::backends::bus::EventBus;
    // The first answer refuses the second entry of the batch; later answers accept all.
    let (endpoint, calls) =
        flaky_eventbridge(|call, entry| call == 1 && entry["Detail"] == r#"{"n":1}"#).await;
    let bus = bus_at(&endpoint).await;
    let events: Vec<_> = (0..12).map(numbered).collect();
    bus.publish_batch(&events).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 1, 2],
        "{calls:?}"
    );
    assert_eq!(calls[1], vec![r#"{"n":1}"#.to_string()]);

    // An entry refused every time is reported, not dropped.
    let (endpoint, _) = flaky_eventbridge(|_, entry| entry["Detail"] == r#"{"n":0}"#).await;
    let refused = bus_at(&endpoint).await.publish(&numbered(0)).await;
    assert!(
        matches!(&refused, Err(devops_bot::backends::BackendError::Unavailable(message)) if message.contains("did not accept 1 event(s)")),
        "{refused:?}"
    );
}
