//! `EventBus`: what is published reaches the rules' targets, in batches of
//! any size; an event EventBridge would refuse is refused before sending.

use std::time::Duration;

use devops_bot::backends::bus::EventBus;
use devops_bot::backends::BackendError;
use devops_bot::domain::events::Envelope;
use serde_json::json;
use tokio::sync::broadcast;

use super::{embedded_db, on_moto, sealer};

#[tokio::test]
async fn embedded_bus_honours_the_bus_contract() {
    let (dir, db) = embedded_db();
    let bus = devops_bot::backends::bus::embedded::EmbeddedBus::new(db, sealer(&dir));
    check(bus.as_ref(), bus.subscribe()).await;
}

/// A publisher that crashed after publishing, before recording it, publishes
/// again with the same id: the embedded bus delivers it once.
#[tokio::test]
async fn embedded_bus_publishes_an_event_id_once() {
    let (dir, db) = embedded_db();
    let bus = devops_bot::backends::bus::embedded::EmbeddedBus::new(db, sealer(&dir));
    let mut delivered = bus.subscribe();
    let event = request(1);
    bus.publish(&event).await.unwrap();
    bus.publish(&event).await.unwrap();
    bus.publish(&request(2)).await.unwrap();
    let first = delivered.recv().await.unwrap();
    let second = delivered.recv().await.unwrap();
    assert_eq!(first.id, event.id);
    assert_eq!(
        second.detail["requestId"], "contract-2",
        "the repeat was not delivered"
    );
}

#[tokio::test]
async fn eventbridge_honours_the_bus_contract() {
    let world = on_moto().await;
    let bus = devops_bot::backends::bus::aws::EventBridgeBus::new(
        aws_sdk_eventbridge::Client::new(&world.sdk),
        "default",
    );
    check(&bus, world.subscribe()).await;
}

fn request(n: usize) -> Envelope {
    Envelope::new(
        "devops.request",
        "agent.Contract",
        json!({"requestId": format!("contract-{n}"), "action": "unknownAction", "padding": "x"}),
    )
}

async fn check(bus: &dyn EventBus, mut delivered: broadcast::Receiver<Envelope>) {
    bus.ping().await.unwrap();
    let batch: Vec<Envelope> = (0..23).map(request).collect();
    bus.publish_batch(&batch).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < batch.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), delivered.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events delivered", seen.len(), batch.len()))
            .unwrap();
        assert_eq!(event.detail_type, "devops.request");
        assert_eq!(event.source, "agent.Contract");
        seen.push(event.detail["requestId"].as_str().unwrap().to_string());
    }
    seen.sort();
    let mut expected: Vec<String> = (0..23).map(|n| format!("contract-{n}")).collect();
    expected.sort();
    assert_eq!(seen, expected);

    let mut oversized = request(99);
    oversized.detail["padding"] = json!("x".repeat(256 * 1024));
    let refused = bus.publish(&oversized).await;
    assert!(
        matches!(&refused, Err(BackendError::Refused(message)) if message.contains("262144")),
        "{refused:?}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(600), delivered.recv()).await;
    assert!(
        nothing.is_err(),
        "an oversized event was delivered: {nothing:?}"
    );
}
