//! The bot killed with SIGKILL at random points of many request flows and
//! started again on the same data: every acknowledged request survives, each
//! card is posted once, each approved request is published and executed
//! once, and each completion reaches its thread once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::fake_slack::FakeSlack;
use crate::helpers::{free_port, request_id_of, wait_until_ready, TestApp};

const REQUESTS: usize = 30;
const KILLS: usize = 20;

/// The bot as a process the test kills; killed for good when dropped.
struct Bot {
    child: Child,
    slack: FakeSlack,
    data_dir: PathBuf,
    listen: String,
    log: PathBuf,
}

impl Bot {
    fn start(slack: &FakeSlack, data_dir: &Path, listen: &str) -> Bot {
        let log = data_dir.join("bot.log");
        Bot {
            child: Self::spawn(slack, data_dir, listen, &log),
            slack: slack.clone(),
            data_dir: data_dir.to_path_buf(),
            listen: listen.to_string(),
            log,
        }
    }

    fn spawn(slack: &FakeSlack, data_dir: &Path, listen: &str, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        TestApp::bot_process(slack, data_dir, None, listen)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the devops-bot binary starts")
    }

    /// SIGKILL, then a new process on the same data directory and port.
    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.slack, &self.data_dir, &self.listen, &self.log);
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state_db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join("data").join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// Every request the bot has stored, with its status.
fn stored_requests(data_dir: &Path) -> BTreeMap<String, String> {
    let db = state_db(data_dir);
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut statement = db.prepare("SELECT id, status FROM requests").unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The request ids of the cards in the channel, with their ts.
fn cards(messages: &[Value]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|message| message.get("thread_ts").is_none())
        .map(|card| {
            (
                request_id_of(card),
                card["ts"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_the_bot_loses_nothing_and_repeats_nothing() {
    let seed: u64 = rand::random();
    println!("crash test seed {seed}");
    let slack = FakeSlack::start().await;
    slack.set_latency(Duration::from_millis(40));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let listen = format!("127.0.0.1:{}", free_port());
    let app = TestApp::client_of(format!("http://{listen}"), slack.clone(), dir.clone());
    let mut bot = Bot::start(&slack, dir.path(), &listen);
    wait_until_ready(&app.http, &app.address).await;

    let killer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let http = reqwest::Client::new();
        let address = format!("http://{}", bot.listen);
        for _ in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
            bot.kill_and_restart();
            wait_until_ready(&http, &address).await;
        }
        bot
    });

    // People type commands and click Approve on every card they see, again
    // when a click went unanswered, as long as the request is pending.
    let mut acknowledged = BTreeSet::new();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut sent = 0;
    while sent < REQUESTS || !killer.is_finished() {
        if sent < REQUESTS {
            sent += 1;
            let body = app.command_body("UREQ", "deploy cc-agent-doc-registry --stage prod");
            if let Ok(response) = app.try_post_signed("/slack/commands", body, &[]).await {
                if let Ok(answer) = response.json::<Value>().await {
                    let text = answer["text"].as_str().unwrap_or_default();
                    if let Some(at) = text.find("Request `") {
                        acknowledged.insert(text[at + 9..at + 45].to_string());
                    }
                }
            }
        }
        approve_pending_cards(&app, dir.path()).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
    }
    let bot = killer.await.unwrap();

    // Left alone, the last process finishes every flow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        approve_pending_cards(&app, dir.path()).await;
        let requests = stored_requests(dir.path());
        let messages = slack.messages();
        let replied: BTreeSet<&str> = messages
            .iter()
            .filter_map(|message| message["thread_ts"].as_str())
            .collect();
        let finished = requests
            .values()
            .all(|status| status == "succeeded" || status == "failed");
        let cards = cards(&messages);
        let every_request_replied = requests.keys().all(|id| {
            cards
                .iter()
                .any(|(card, ts)| card == id && replied.contains(ts.as_str()))
        });
        if finished && every_request_replied {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: flows did not finish within 60 s after the last kill; requests {requests:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything still to be repeated would arrive now.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let requests = stored_requests(dir.path());
    let messages = slack.messages();
    let log = std::fs::read_to_string(&bot.log).unwrap();
    assert!(
        log.matches("devops-bot listening").count() > KILLS,
        "the bot was really started again after every kill"
    );
    println!(
        "{} requests, {KILLS} kills; after them: {} posts found instead of posted again, \
         {} repeated publishes dropped, {} executions found interrupted",
        requests.len(),
        log.matches("an earlier attempt had posted the message")
            .count(),
        log.matches("event already published").count(),
        log.matches("was interrupted; its outcome is unknown")
            .count(),
    );
    assert!(requests.len() >= acknowledged.len() && !acknowledged.is_empty());
    for id in &acknowledged {
        assert!(
            requests.contains_key(id),
            "seed {seed}: acknowledged request {id} was lost"
        );
    }
    let cards = cards(&messages);
    for (id, status) in &requests {
        let own: Vec<&(String, String)> = cards.iter().filter(|(card, _)| card == id).collect();
        assert_eq!(
            own.len(),
            1,
            "seed {seed}: request {id} has {} cards",
            own.len()
        );
        let card_ts = own[0].1.as_str();
        let replies: Vec<&Value> = messages
            .iter()
            .filter(|message| message["thread_ts"] == card_ts)
            .collect();
        assert_eq!(
            replies.len(),
            1,
            "seed {seed}: request {id} ({status}) has {} thread replies: {replies:?}",
            replies.len()
        );
        let published = log
            .lines()
            .filter(|line| {
                line.contains("event published")
                    && line.contains("devops.request")
                    && line.contains(id.as_str())
            })
            .count();
        assert!(
            published <= 1,
            "seed {seed}: request {id} was published {published} times"
        );
        let executed = log
            .lines()
            .filter(|line| line.contains("devops.request performed") && line.contains(id.as_str()))
            .count();
        assert!(
            executed <= 1,
            "seed {seed}: request {id} was performed {executed} times"
        );
    }
    let executions: i64 = state_db(dir.path())
        .query_row(
            "SELECT COUNT(*) FROM executions WHERE completion IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        executions as usize,
        requests.len(),
        "seed {seed}: every approved request ran, once"
    );
    drop(bot);
}

/// Clicks Approve (as an approver) on the card of every pending request.
async fn approve_pending_cards(app: &TestApp, data_dir: &Path) {
    let pending: BTreeSet<String> = stored_requests(data_dir)
        .into_iter()
        .filter(|(_, status)| status == "pending")
        .map(|(id, _)| id)
        .collect();
    for (id, ts) in cards(&app.slack.messages()) {
        if pending.contains(&id) {
            let payload = app.click_payload("UBOSS", "approve", &id, &ts);
            let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
            let _ = app.try_post_signed("/slack/interactions", body, &[]).await;
        }
    }
}
