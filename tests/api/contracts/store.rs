//! The behaviour every `Store` implementation must show, run against SQLite
//! and against DynamoDB on moto.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use devops_bot::backends::sqlite::Database;
use devops_bot::backends::store::aws::DynamoStore;
use devops_bot::backends::store::embedded::SqliteStore;
use devops_bot::backends::store::{
    Effect, Execution, QueuedEffect, Store, ThreadRef, UpdateOutcome,
};
use devops_bot::domain::events::Envelope;
use devops_bot::domain::names::Person;
use devops_bot::domain::names::{StackName, Stage};
use devops_bot::domain::policy::Decision;
use devops_bot::domain::request::{Action, Origin, Request, Status};
use serde_json::json;

use super::on_moto;

const LEASE: Duration = Duration::from_secs(60);

fn sample_request(user: &str) -> Request {
    Request::new(
        Action::DeployLambda {
            stack: StackName::parse("cc-contract").unwrap(),
        },
        Stage::Dev,
        Person {
            platform: "slack".into(),
            team_id: "T1".into(),
            user_id: user.into(),
            user_name: user.into(),
        },
        Origin {
            platform: "slack".into(),
            channel: "C1".into(),
        },
        Decision {
            approvals_needed: 1,
            approvers: vec!["*".into()],
            self_approval: false,
            expires_in_secs: 3600,
        },
        Utc::now(),
    )
}

/// A SQLite store at `path` holding one request, whose card is queued.
async fn sqlite_store_with_a_card_queued(path: &Path) -> (SqliteStore, Request, Effect) {
    let request = sample_request("U1");
    let card = Effect::PostCard {
        request_id: request.id.clone(),
    };
    let store = SqliteStore::open(Database::open(path).unwrap()).unwrap();
    store
        .create_request(&request, std::slice::from_ref(&card))
        .await
        .unwrap();
    (store, request, card)
}

/// The store on the table that `world`'s moto holds.
fn dynamodb_store(world: &crate::aws_world::AwsWorld) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&world.sdk),
        crate::aws_world::TABLE,
    )
}

async fn due_now(store: &dyn Store) -> Vec<QueuedEffect> {
    store
        .claim_due_effects(Utc::now(), LEASE, 10)
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_store_honours_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("state.db")).unwrap();
    check(&SqliteStore::open(db).unwrap()).await;
}

/// One process owns an embedded data directory, so what a killed run had
/// leased is due again the moment the next run opens the file.
#[tokio::test]
async fn sqlite_store_reopened_after_a_crash_takes_back_what_the_dead_run_had_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (first_run, _, card) = sqlite_store_with_a_card_queued(&path).await;
    assert_eq!(due_now(&first_run).await.len(), 1);
    drop(first_run);

    let next_run = SqliteStore::open(Database::open(&path).unwrap()).unwrap();
    let due = due_now(&next_run).await;
    assert_eq!(
        due.len(),
        1,
        "due at once, not when the dead run's lease ends"
    );
    assert_eq!(due[0].effect, card);
    assert!(due[0].interrupted);
}

/// A file written before lanes were filed by creation time: an effect queued
/// then and one queued now for the same request still run one after the other.
#[tokio::test]
async fn sqlite_store_keeps_a_lane_in_order_across_the_upgrade_of_an_earlier_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (earlier_run, request, card) = sqlite_store_with_a_card_queued(&path).await;
    drop(earlier_run);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP INDEX outbox_by_lane_in_order;
             ALTER TABLE outbox DROP COLUMN lane_since;
             CREATE INDEX outbox_by_lane ON outbox (lane, dead, seq);",
        )
        .unwrap();

    let upgraded = SqliteStore::open(Database::open(&path).unwrap()).unwrap();
    let reply = Effect::ThreadReply {
        request_id: request.id.clone(),
        text: "queued after the upgrade".into(),
    };
    upgraded
        .enqueue(std::slice::from_ref(&reply))
        .await
        .unwrap();
    let due = due_now(&upgraded).await;
    assert_eq!(
        due.iter().map(|queued| &queued.effect).collect::<Vec<_>>(),
        [&card],
        "the reply waits for the card queued before the upgrade"
    );
    upgraded.effect_done(&due[0].id).await.unwrap();
    let due = due_now(&upgraded).await;
    assert_eq!(
        due.iter().map(|queued| &queued.effect).collect::<Vec<_>>(),
        [&reply]
    );
}

/// An earlier version run again on an upgraded file queues effects without
/// their filing; the next upgraded run files them, and the lane keeps its order.
#[tokio::test]
async fn sqlite_store_keeps_a_lane_in_order_after_an_earlier_version_ran_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (upgraded_run, request, card) = sqlite_store_with_a_card_queued(&path).await;
    drop(upgraded_run);
    let reply = Effect::ThreadReply {
        request_id: request.id.clone(),
        text: "queued by the earlier version".into(),
    };
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO outbox (lane, payload, next_at) VALUES (?1, ?2, 0)",
            [reply.lane(), serde_json::to_string(&reply).unwrap()],
        )
        .unwrap();

    let next_run = SqliteStore::open(Database::open(&path).unwrap()).unwrap();
    let due = due_now(&next_run).await;
    assert_eq!(
        due.iter().map(|queued| &queued.effect).collect::<Vec<_>>(),
        [&card],
        "the reply waits for the card"
    );
}

/// A file written when threads were filed by request id alone keeps them: a
/// request whose card was posted is not posted again after the upgrade. Its
/// pending requests are still listed, without the index of every request by
/// status that each decision had to rewrite.
#[tokio::test]
async fn sqlite_store_keeps_the_threads_of_an_earlier_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (earlier_run, request, _) = sqlite_store_with_a_card_queued(&path).await;
    drop(earlier_run);
    let earlier_file = rusqlite::Connection::open(&path).unwrap();
    earlier_file
        .execute_batch(
            "DROP TABLE request_threads;
             CREATE INDEX requests_by_status ON requests (status);
             CREATE TABLE threads (request_id TEXT PRIMARY KEY, platform TEXT NOT NULL,
                                   channel TEXT NOT NULL, ts TEXT NOT NULL);",
        )
        .unwrap();
    earlier_file
        .execute(
            "INSERT INTO threads VALUES (?1, 'slack', 'C1', '1.000100')",
            [request.id.to_string()],
        )
        .unwrap();
    drop(earlier_file);

    let upgraded = SqliteStore::open(Database::open(&path).unwrap()).unwrap();
    assert_eq!(
        upgraded.pending_requests().await.unwrap(),
        vec![request.clone()]
    );
    assert_eq!(
        upgraded.thread(&request.id).await.unwrap(),
        Some(ThreadRef {
            platform: "slack".into(),
            channel: "C1".into(),
            ts: "1.000100".into(),
        })
    );
    let status_indexes: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'requests_by_status'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(status_indexes, 0);
}

#[tokio::test]
async fn dynamodb_store_honours_the_store_contract() {
    let world = on_moto().await;
    check(&dynamodb_store(&world)).await;
}

async fn check(store: &dyn Store) {
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
    // Only a pending request whose time is up is expired, the one due first first.
    let mut sooner = sample_request("UEXPIRY");
    sooner.expires_at = request.expires_at - chrono::Duration::seconds(10);
    store.create_request(&sooner, &[]).await.unwrap();
    let expired_ids = |at| async move {
        let expired = store.expired_requests(at).await.unwrap();
        expired
            .into_iter()
            .map(|request| request.id)
            .collect::<Vec<_>>()
    };
    assert!(expired_ids(Utc::now()).await.is_empty());
    assert_eq!(
        expired_ids(sooner.expires_at).await,
        vec![sooner.id.clone()]
    );
    assert_eq!(
        expired_ids(request.expires_at).await,
        vec![sooner.id.clone(), request.id.clone()]
    );
    let mut sooner_approved = sooner.clone();
    sooner_approved.status = Status::Approved;
    let pending_ids = || async move {
        let mut ids: Vec<_> = store
            .pending_requests()
            .await
            .unwrap()
            .into_iter()
            .map(|request| request.id)
            .collect();
        ids.sort_by_key(|id| id.to_string());
        ids
    };
    let mut both = vec![request.id.clone(), sooner.id.clone()];
    both.sort_by_key(|id| id.to_string());
    assert_eq!(pending_ids().await, both);
    assert!(store.update_request(&sooner_approved, &[]).await.unwrap());
    assert_eq!(
        expired_ids(request.expires_at).await,
        vec![request.id.clone()]
    );
    // A decided request is no longer listed as pending.
    assert_eq!(pending_ids().await, vec![request.id.clone()]);
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
    assert!(pending_ids().await.is_empty());
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
    let due = store
        .claim_due_effects(Utc::now(), LEASE, 10)
        .await
        .unwrap();
    let mut effects: Vec<_> = due.iter().map(|queued| queued.effect.clone()).collect();
    effects.sort_by_key(|effect| effect.lane());
    assert_eq!(effects, vec![card.clone(), other.clone()]);
    assert!(
        due.iter().all(|queued| !queued.interrupted),
        "a first claim is not an interrupted one"
    );
    // Claimed effects are leased: nobody else gets them meanwhile.
    assert!(store
        .claim_due_effects(Utc::now(), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let due: Vec<_> = [card, other]
        .iter()
        .map(|effect| {
            due.iter()
                .find(|queued| &queued.effect == effect)
                .unwrap()
                .clone()
        })
        .collect();
    let later = Utc::now() + chrono::Duration::seconds(30);
    store
        .effect_retry(&due[0].id, later, "rate limited", false)
        .await
        .unwrap();
    store.effect_done(&due[1].id).await.unwrap();
    assert!(store
        .claim_due_effects(Utc::now(), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.next_effect_at().await.unwrap().is_some());
    let retried = store.claim_due_effects(later, LEASE, 10).await.unwrap();
    assert_eq!((retried.len(), retried[0].attempts), (1, 1));
    assert!(
        !retried[0].interrupted,
        "an effect whose attempt was settled as a retry was not interrupted"
    );
    // The card posted: its thread is remembered and the post is done, in one write;
    // not for a request the store does not hold.
    let thread = ThreadRef {
        platform: "slack".into(),
        channel: "C1".into(),
        ts: "1.000100".into(),
    };
    assert_eq!(store.thread(&request.id).await.unwrap(), None);
    let unknown = sample_request("UNKNOWN");
    assert!(store
        .card_posted(&retried[0].id, &unknown.id, &thread)
        .await
        .is_err());
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        2,
        "the post is not done"
    );
    store
        .card_posted(&retried[0].id, &request.id, &thread)
        .await
        .unwrap();
    assert_eq!(store.thread(&request.id).await.unwrap(), Some(thread));
    // A lease that runs out (its holder died) lets the effect be claimed again.
    let next = store.claim_due_effects(later, LEASE, 10).await.unwrap();
    assert_eq!(next[0].effect, reply);
    let after_lease = later + chrono::Duration::from_std(LEASE).unwrap();
    let again = store
        .claim_due_effects(after_lease, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].effect, reply);
    assert!(
        again[0].interrupted,
        "a lease that ran out unsettled may have been carried out: it comes back interrupted"
    );
    store
        .effect_dead(&again[0].id, "channel_not_found")
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    assert_eq!(store.next_effect_at().await.unwrap(), None);
    // Put back after an attempt whose outcome is unknown (a timeout, a 5xx): it
    // comes back interrupted, so it is looked for before it is done again.
    let uncertain = Effect::ThreadReply {
        request_id: request.id.clone(),
        text: "maybe posted".into(),
    };
    store
        .enqueue(std::slice::from_ref(&uncertain))
        .await
        .unwrap();
    let first = store.claim_due_effects(later, LEASE, 10).await.unwrap();
    store
        .effect_retry(&first[0].id, later, "no answer within 30s", true)
        .await
        .unwrap();
    let again = store.claim_due_effects(later, LEASE, 10).await.unwrap();
    assert_eq!(again[0].effect, uncertain);
    assert!(again[0].interrupted);
    store.effect_done(&again[0].id).await.unwrap();

    // Dedupe keys.
    assert!(store
        .claim_once("k1", Duration::from_secs(60), &[])
        .await
        .unwrap());
    assert!(!store
        .claim_once("k1", Duration::from_secs(60), &[])
        .await
        .unwrap());
    assert!(store
        .claim_once("k2", Duration::from_millis(1), &[])
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store
        .claim_once("k2", Duration::from_secs(60), &[])
        .await
        .unwrap());

    // Replicas claiming at the same moment: each effect goes to exactly one of them.
    let contested = Effect::ThreadReply {
        request_id: request.id.clone(),
        text: "contested".into(),
    };
    store.enqueue(&[contested]).await.unwrap();
    let at = after_lease + chrono::Duration::from_std(LEASE).unwrap();
    let claims = (0..8).map(|_| store.claim_due_effects(at, LEASE, 10));
    let claimed: usize = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .map(|claim| claim.unwrap().len())
        .sum();
    assert_eq!(claimed, 1, "one effect, claimed {claimed} times");

    // Executions: the first start owns it, a repeat sees it running, then finished.
    let completion = Envelope::new(
        "devops.completed",
        "devops.automation",
        json!({"requestId": "r-1", "status": "success"}),
    );
    let now = Utc::now();
    assert_eq!(
        store.start_execution("r-1", now).await.unwrap(),
        Execution::Started
    );
    assert!(matches!(
        store.start_execution("r-1", now).await.unwrap(),
        Execution::Running { .. }
    ));
    store.finish_execution("r-1", &completion).await.unwrap();
    assert_eq!(
        store.start_execution("r-1", now).await.unwrap(),
        Execution::Finished(Box::new(completion.clone()))
    );
    // Abandoning a finished execution changes nothing; an unfinished one can start again.
    store.abandon_execution("r-1").await.unwrap();
    assert!(matches!(
        store.start_execution("r-1", now).await.unwrap(),
        Execution::Finished(_)
    ));
    assert_eq!(
        store.start_execution("r-2", now).await.unwrap(),
        Execution::Started
    );
    store.abandon_execution("r-2").await.unwrap();
    assert_eq!(
        store.start_execution("r-2", now).await.unwrap(),
        Execution::Started
    );
}

#[tokio::test]
async fn sqlite_store_claims_a_delivery_in_the_write_it_causes() {
    let (_dir, db) = super::embedded_db();
    a_delivery_is_claimed_in_the_write_it_causes(&SqliteStore::open(db).unwrap()).await;
}

#[tokio::test]
async fn dynamodb_store_claims_a_delivery_in_the_write_it_causes() {
    let world = on_moto().await;
    a_delivery_is_claimed_in_the_write_it_causes(&dynamodb_store(&world)).await;
}

/// A click's key and the decision it causes are one write: a repeat writes
/// nothing, and a decision that lost its race claims nothing, so the click
/// read again still counts.
async fn a_delivery_is_claimed_in_the_write_it_causes(store: &dyn Store) {
    const REMEMBERED: Duration = Duration::from_secs(60);
    let request = sample_request("UONCE");
    store.create_request(&request, &[]).await.unwrap();
    let update_card = Effect::UpdateCard {
        request_id: request.id.clone(),
    };
    let stored = || async { store.request(&request.id).await.unwrap().unwrap() };
    let decided = |mut request: Request, status: Status| {
        request.status = status;
        request
    };

    // A decision caused by the click whose key is `click-1`, with a card update.
    let click_1 = |decision: Request| {
        let update_card = update_card.clone();
        async move {
            store
                .update_request_claiming(&decision, &[update_card], Some(("click-1", REMEMBERED)))
                .await
                .unwrap()
        }
    };

    let rejected = decided(request.clone(), Status::Rejected);
    assert!(store.update_request(&rejected, &[]).await.unwrap());
    let late = decided(request.clone(), Status::Approved);
    assert_eq!(click_1(late).await, UpdateOutcome::Stale);
    assert_eq!(store.outbox_depth().await.unwrap(), 0);

    let again = decided(stored().await, Status::Approved);
    assert_eq!(click_1(again).await, UpdateOutcome::Written);
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
    let approved = stored().await;
    assert_eq!((approved.status, approved.version), (Status::Approved, 2));

    // Its repeat, even made on the version it now reads, changes nothing.
    let repeat = decided(approved.clone(), Status::Rejected);
    assert_eq!(click_1(repeat).await, UpdateOutcome::Repeated);
    assert_eq!(stored().await, approved);
    let refusal = Effect::Ephemeral {
        platform: "slack".into(),
        channel: "C1".into(),
        user: "UONCE".into(),
        text: "Your click changed nothing".into(),
    };
    assert!(!store
        .claim_once("click-1", REMEMBERED, std::slice::from_ref(&refusal))
        .await
        .unwrap());
    assert_eq!(store.outbox_depth().await.unwrap(), 1);

    // A claim queues its effects with it; once its time is up, the key counts again.
    assert!(store
        .claim_once(
            "click-2",
            Duration::from_millis(1),
            std::slice::from_ref(&refusal)
        )
        .await
        .unwrap());
    assert_eq!(store.outbox_depth().await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let reopened = decided(stored().await, Status::Pending);
    assert_eq!(
        store
            .update_request_claiming(&reopened, &[], Some(("click-2", REMEMBERED)))
            .await
            .unwrap(),
        UpdateOutcome::Written
    );
}

#[tokio::test]
async fn sqlite_store_does_not_let_a_long_lane_starve_the_others() {
    let (_dir, db) = super::embedded_db();
    a_long_lane_does_not_starve_the_others(&SqliteStore::open(db).unwrap()).await;
}

#[tokio::test]
async fn dynamodb_store_does_not_let_a_long_lane_starve_the_others() {
    let world = on_moto().await;
    a_long_lane_does_not_starve_the_others(&dynamodb_store(&world)).await;
}

/// Lanes whose head is in backoff (a Slack outage), one with hundreds of
/// effects waiting behind it and more such lanes than a claim takes, must not
/// hide another lane's effect from a claim.
async fn a_long_lane_does_not_starve_the_others(store: &dyn Store) {
    let thread = |request: &Request, n: usize| Effect::ThreadReply {
        request_id: request.id.clone(),
        text: format!("reply {n}"),
    };
    for _ in 0..12 {
        let request = sample_request("USTUCK");
        store
            .enqueue(&[thread(&request, 0), thread(&request, 1)])
            .await
            .unwrap();
    }
    let busy = sample_request("UBUSY");
    let replies: Vec<Effect> = (0..300).map(|n| thread(&busy, n)).collect();
    // DynamoDB writes at most 100 items in one transaction.
    for chunk in replies.chunks(50) {
        store.enqueue(chunk).await.unwrap();
    }
    let heads = store
        .claim_due_effects(Utc::now(), LEASE, 20)
        .await
        .unwrap();
    assert_eq!(heads.len(), 13, "one head per lane");
    let later = Utc::now() + chrono::Duration::seconds(60);
    for head in &heads {
        store
            .effect_retry(&head.id, later, "Slack is down", false)
            .await
            .unwrap();
    }
    let other = Effect::Ephemeral {
        platform: "slack".into(),
        channel: "C1".into(),
        user: "UOTHER".into(),
        text: "hello".into(),
    };
    store.enqueue(std::slice::from_ref(&other)).await.unwrap();
    let due = store
        .claim_due_effects(Utc::now(), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(
        due.iter().map(|queued| &queued.effect).collect::<Vec<_>>(),
        vec![&other],
        "the other lane's effect is due and its lane is free"
    );
}
