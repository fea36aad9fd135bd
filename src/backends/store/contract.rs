//! The behaviour every `Store` implementation must show; run against each.

use std::time::Duration;

use chrono::Utc;

use super::{Effect, Store, ThreadRef};
use crate::domain::request::{sample_request, Status};

pub async fn check(store: &dyn Store) {
    store.ping().await.unwrap();

    // Requests round-trip and a second create of the same id is refused.
    let request = sample_request("UCONTRACT");
    let card = Effect::PostCard {
        request_id: request.id.clone(),
    };
    store
        .create_request(&request, std::slice::from_ref(&card))
        .await
        .unwrap();
    assert!(store.create_request(&request, &[]).await.is_err());
    assert_eq!(
        store.request(&request.id).await.unwrap(),
        Some(request.clone())
    );
    assert_eq!(store.pending_requests().await.unwrap().len(), 1);
    assert_eq!(
        store
            .requests_by("slack:UCONTRACT", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .requests_by("slack:UOTHER", 10)
        .await
        .unwrap()
        .is_empty());

    // Two writers who read the same version: exactly one wins.
    let mut first = request.clone();
    first.status = Status::Rejected;
    let mut second = request.clone();
    second.status = Status::Approved;
    let publish = Effect::Publish {
        request_id: request.id.clone(),
    };
    assert!(store.update_request(&first, &[]).await.unwrap());
    assert!(!store.update_request(&second, &[publish]).await.unwrap());
    let stored = store.request(&request.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.version), (Status::Rejected, 1));

    // Effects of one lane come one at a time, in order; other lanes are independent.
    let reply = Effect::ThreadReply {
        request_id: request.id.clone(),
        text: "done".into(),
    };
    let other = Effect::Ephemeral {
        platform: "slack".into(),
        channel: "C1".into(),
        user: "U2".into(),
        text: "hi".into(),
    };
    store
        .enqueue(&[reply.clone(), other.clone()])
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 3);
    let due = store.due_effects(Utc::now(), 10).await.unwrap();
    let effects: Vec<_> = due.iter().map(|queued| queued.effect.clone()).collect();
    assert_eq!(effects, vec![card, other]);
    let later = Utc::now() + chrono::Duration::seconds(30);
    store
        .effect_retry(due[0].seq, later, "rate limited")
        .await
        .unwrap();
    store.effect_done(due[1].seq).await.unwrap();
    assert!(store.due_effects(Utc::now(), 10).await.unwrap().is_empty());
    let retried = store.due_effects(later, 10).await.unwrap();
    assert_eq!((retried.len(), retried[0].attempts), (1, 1));
    store.effect_done(retried[0].seq).await.unwrap();
    let next = store.due_effects(later, 10).await.unwrap();
    assert_eq!(next[0].effect, reply);
    store
        .effect_dead(next[0].seq, "channel_not_found")
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 0);

    // Threads and dedupe keys.
    let thread = ThreadRef {
        platform: "slack".into(),
        channel: "C1".into(),
        ts: "1.000100".into(),
    };
    store.set_thread(&request.id, &thread).await.unwrap();
    assert_eq!(store.thread(&request.id).await.unwrap(), Some(thread));
    assert!(store
        .claim_once("k1", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!store
        .claim_once("k1", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(store
        .claim_once("k2", Duration::from_millis(1))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store
        .claim_once("k2", Duration::from_secs(60))
        .await
        .unwrap());
}
