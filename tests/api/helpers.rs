//! Spawns the real app on a random port, wired to a fake Slack Web API, and
//! talks to it the way Slack does: form bodies signed with v0 HMAC-SHA256.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devops_bot::config::Config;
use devops_bot::domain::events::Envelope;
use devops_bot::Application;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{broadcast, oneshot};

use crate::aws_world::AwsWorld;
use crate::fake_slack::FakeSlack;

pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const BOT_TOKEN: &str = "xoxb-test-token";
pub const EVENTS_API_KEY: &str = "events-api-key-for-tests";
pub const TEAM: &str = "T0TEAM";
pub const CHANNEL: &str = "C0DEPLOYS";

const POLICY: &str = r#"
stage = "dev"

[[policy]]
actions = ["*"]
stages = ["prod"]
requesters = ["*"]
approvers = ["slack:UBOSS", "slack:UALICE"]
approvals = 1
self_approval = true   # ignored: never on prod
expires_in = "1h"

[[policy]]
actions = ["deployLambda"]
stages = ["dev"]
requesters = ["*"]
approvals = 0

[[policy]]
actions = ["putSecret"]
stages = ["dev"]
requesters = ["slack:UALICE"]
approvers = ["*"]
approvals = 1
self_approval = true

[embedded]
stacks = ["cc-agent-doc-registry-dev", "cc-agent-doc-registry-prod"]
"#;

/// Everything the app logs during the tests, to prove what it never logs.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn captured_logs() -> String {
    let logs = LOGS.get().expect("logging starts with the first app");
    String::from_utf8_lossy(&logs.lock().unwrap()).into_owned()
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogBuffer(buffer.clone());
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        buffer
    });
}

pub struct TestApp {
    pub address: String,
    pub slack: FakeSlack,
    pub data_dir: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    pub app_events: broadcast::Receiver<Envelope>,
    /// The embedded backends, or the emulated AWS account the app runs on.
    pub embedded: Option<devops_bot::backends::open::Embedded>,
    pub aws: Option<Arc<AwsWorld>>,
    /// The chat requests waiting for their answers, in an app run in this process.
    pub answers_due: Option<Arc<devops_bot::answers::AnswersDue>>,
    process: Option<Replica>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start(FakeSlack::start().await, data_dir, None).await
    }

    /// The app with `DEVOPSBOT_BACKEND=aws` on `world`; several may share one world and one Slack.
    pub async fn spawn_on(world: &Arc<AwsWorld>, slack: FakeSlack) -> TestApp {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start(slack, data_dir, Some(world.clone())).await
    }

    /// The configuration an app of this test gets.
    pub fn config(slack: &FakeSlack, data_dir: &std::path::Path, aws: Option<&AwsWorld>) -> Config {
        let vars = Self::environment(slack, data_dir, aws, "127.0.0.1:0");
        Config::from_env(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("test configuration is valid")
    }

    /// The environment of an app of this test, listening on `listen`.
    fn environment(
        slack: &FakeSlack,
        data_dir: &std::path::Path,
        aws: Option<&AwsWorld>,
        listen: &str,
    ) -> Vec<(&'static str, String)> {
        let policy = data_dir.join("devops-bot.toml");
        std::fs::write(&policy, POLICY).expect("write policy");
        let mut vars = vec![
            ("DEVOPSBOT_LISTEN", listen.to_string()),
            (
                "DEVOPSBOT_DATA_DIR",
                data_dir.join("data").display().to_string(),
            ),
            ("DEVOPSBOT_CONFIG", policy.display().to_string()),
            ("DEVOPSBOT_EVENTS_API_KEY", EVENTS_API_KEY.to_string()),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET.to_string()),
            ("SLACK_BOT_TOKEN", BOT_TOKEN.to_string()),
            ("SLACK_API_URL", slack.base_url.clone()),
        ];
        if let Some(world) = aws {
            vars.extend(world.vars());
        }
        vars
    }

    /// The built `devops-bot` binary as its own process on `world`: a real
    /// second replica, sharing nothing with this one but AWS and Slack.
    pub async fn spawn_process_on(world: &Arc<AwsWorld>, slack: FakeSlack) -> TestApp {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Self::bot_process(&slack, data_dir.path(), Some(world), &listen)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the devops-bot binary starts");
        let process = Replica(child);
        let address = format!("http://{listen}");
        let http = reqwest::Client::new();
        wait_until_ready(&http, &address).await;
        world.add_target(&address);
        TestApp {
            address,
            slack,
            data_dir,
            http,
            app_events: world.subscribe(),
            embedded: None,
            aws: Some(world.clone()),
            answers_due: None,
            process: Some(process),
            stop: None,
            served: None,
        }
    }

    /// The built `devops-bot serve` with this test's configuration, to spawn.
    pub fn bot_process(
        slack: &FakeSlack,
        data_dir: &std::path::Path,
        aws: Option<&AwsWorld>,
        listen: &str,
    ) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_devops-bot"));
        command
            .arg("serve")
            .envs(Self::environment(slack, data_dir, aws, listen))
            .stdout(std::process::Stdio::null());
        command
    }

    /// Talks to an app at `address` that the test runs and stops itself.
    pub fn client_of(
        address: String,
        slack: FakeSlack,
        data_dir: Arc<tempfile::TempDir>,
    ) -> TestApp {
        TestApp {
            address,
            slack,
            data_dir,
            http: reqwest::Client::new(),
            app_events: broadcast::channel(1).1,
            embedded: None,
            aws: None,
            answers_due: None,
            process: None,
            stop: None,
            served: None,
        }
    }

    async fn start(
        slack: FakeSlack,
        data_dir: Arc<tempfile::TempDir>,
        aws: Option<Arc<AwsWorld>>,
    ) -> TestApp {
        capture_logs();
        let config = Self::config(&slack, data_dir.path(), aws.as_deref());
        let app = Application::build(config).await.expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let app_events = match (&aws, app.published_events()) {
            (Some(world), _) => world.subscribe(),
            (None, Some(events)) => events,
            (None, None) => panic!("an embedded app publishes on its own bus"),
        };
        if let Some(world) = &aws {
            world.add_target(&address);
        }
        let embedded = app.embedded().cloned();
        let answers_due = Some(app.answers_due());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("app serves");
        });
        TestApp {
            address,
            slack,
            data_dir,
            http: reqwest::Client::new(),
            app_events,
            embedded,
            aws,
            answers_due,
            process: None,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Stops the app and starts a new one on the same data and the same fake Slack.
    pub async fn restart(mut self) -> TestApp {
        self.shut_down().await;
        // The data directory is one bot's at a time: let go of the old one's backends.
        self.embedded = None;
        Self::start(self.slack.clone(), self.data_dir.clone(), self.aws.clone()).await
    }

    pub fn embedded(&self) -> &devops_bot::backends::open::Embedded {
        self.embedded
            .as_ref()
            .expect("this test runs on the embedded backends")
    }

    /// A secret's value where the app's backend keeps it.
    pub async fn stored_secret(&self, name: &str) -> Option<String> {
        match &self.aws {
            Some(world) => world.secret_value(name).await,
            None => {
                let name = devops_bot::domain::names::SecretName::parse(name).unwrap();
                self.embedded()
                    .vault
                    .read(&name)
                    .unwrap()
                    .map(|value| value.expose().to_string())
            }
        }
    }

    pub async fn shut_down(&mut self) {
        if let Some(world) = &self.aws {
            world.remove_target(&self.address);
        }
        self.process.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.expect("app stops cleanly");
        }
    }

    /// What `/metrics` shows now.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn sign(body: &str, timestamp: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{timestamp}:{body}").as_bytes());
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    pub fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Posts a form body to a Slack route, signed as Slack signs it.
    pub async fn post_signed(
        &self,
        path: &str,
        body: String,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        self.try_post_signed(path, body, extra)
            .await
            .expect("app answers")
    }

    /// As [`TestApp::post_signed`], for an app that may not be there to answer.
    pub async fn try_post_signed(
        &self,
        path: &str,
        body: String,
        extra: &[(&str, &str)],
    ) -> reqwest::Result<reqwest::Response> {
        let timestamp = Self::now();
        let mut request = self
            .http
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp.to_string())
            .header("x-slack-signature", Self::sign(&body, timestamp));
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.body(body).send().await
    }

    pub async fn command(&self, user: &str, text: &str) -> reqwest::Response {
        self.post_signed("/slack/commands", self.command_body(user, text), &[])
            .await
    }

    /// The form body Slack posts for `/devops <text>` typed by `user`.
    pub fn command_body(&self, user: &str, text: &str) -> String {
        serde_urlencoded::to_string([
            ("token", "deprecated"),
            ("team_id", TEAM),
            ("team_domain", "acme"),
            ("channel_id", CHANNEL),
            ("channel_name", "deploys"),
            ("user_id", user),
            ("user_name", &user.to_lowercase()),
            ("command", "/devops"),
            ("text", text),
            ("api_app_id", "A0APP"),
            ("response_url", &self.slack.response_url("commands")),
            ("trigger_id", &format!("trigger-{}", uuid::Uuid::new_v4())),
        ])
        .unwrap()
    }

    /// Runs a command and returns the ephemeral text it answered with.
    pub async fn command_text(&self, user: &str, text: &str) -> String {
        let response = self.command(user, text).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("command answers JSON");
        assert_eq!(body["response_type"], "ephemeral", "{body}");
        body["text"].as_str().unwrap_or_default().to_string()
    }

    pub async fn interaction(&self, payload: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        self.post_signed("/slack/interactions", body, extra).await
    }

    /// The block_actions payload Slack sends when `user` clicks a card button.
    pub fn click_payload(&self, user: &str, verb: &str, request_id: &str, card_ts: &str) -> Value {
        json!({
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "acme"},
            "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": TEAM},
            "api_app_id": "A0APP",
            "trigger_id": format!("trigger-{}", uuid::Uuid::new_v4()),
            "container": {"type": "message", "message_ts": card_ts, "channel_id": CHANNEL},
            "channel": {"id": CHANNEL, "name": "deploys"},
            "message": {"type": "message", "ts": card_ts, "text": "card"},
            "response_url": self.slack.response_url("actions"),
            "actions": [{
                "type": "button",
                "action_id": verb,
                "block_id": "b1",
                "value": json!({"verb": verb, "requestId": request_id}).to_string(),
                "action_ts": format!("{}.000200", Self::now()),
            }]
        })
    }

    pub async fn click(
        &self,
        user: &str,
        verb: &str,
        request_id: &str,
        card_ts: &str,
    ) -> reqwest::Response {
        self.interaction(&self.click_payload(user, verb, request_id, card_ts), &[])
            .await
    }

    /// The view_submission Slack sends when the put-secret modal is submitted.
    pub async fn submit_modal(
        &self,
        user: &str,
        opened_view: &Value,
        value: &str,
    ) -> reqwest::Response {
        let payload = json!({
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "acme"},
            "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": TEAM},
            "api_app_id": "A0APP",
            "trigger_id": format!("trigger-{}", uuid::Uuid::new_v4()),
            "view": {
                "id": "V0MODAL",
                "type": "modal",
                "callback_id": opened_view["callback_id"],
                "private_metadata": opened_view["private_metadata"],
                "state": {"values": {"secret_value": {"value": {"type": "plain_text_input", "value": value}}}},
                "hash": "1.abc"
            }
        });
        self.interaction(&payload, &[]).await
    }

    pub async fn post_event(&self, envelope: &Value, api_key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/events", self.address))
            .json(envelope);
        if let Some(key) = api_key {
            request = request.header("x-api-key", key);
        }
        request.send().await.expect("app answers")
    }

    /// The next event of `detail_type` published on the bus.
    pub async fn next_event(&mut self, detail_type: &str) -> Envelope {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, self.app_events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {detail_type} event within 10 s"))
                .expect("bus open");
            if event.detail_type == detail_type {
                return event;
            }
        }
    }

    /// Events of `detail_type` published until the bus is quiet for `quiet`.
    pub async fn drain_events(&mut self, detail_type: &str, quiet: Duration) -> Vec<Envelope> {
        let mut seen = Vec::new();
        while let Ok(Ok(event)) = tokio::time::timeout(quiet, self.app_events.recv()).await {
            if event.detail_type == detail_type {
                seen.push(event);
            }
        }
        seen
    }

    /// Waits for the `count`-th approval card and returns (request id, card ts, card body).
    pub async fn card(&self, count: usize) -> (String, String, Value) {
        let posts = self
            .slack
            .wait_for_calls("chat.postMessage", count, Duration::from_secs(10))
            .await;
        let cards: Vec<&Value> = posts
            .iter()
            .filter(|post| post.get("thread_ts").is_none())
            .collect();
        let card = cards
            .get(count - 1)
            .unwrap_or_else(|| panic!("card {count} not posted: {posts:?}"));
        let ts = self.posted_ts(card);
        (request_id_of(card), ts, (*card).clone())
    }

    /// The ts the fake Slack gave the post whose body is `post`.
    fn posted_ts(&self, post: &Value) -> String {
        let index = self
            .slack
            .calls_to("chat.postMessage")
            .iter()
            .position(|call| call == post)
            .expect("post recorded");
        self.slack.message_ts("chat.postMessage", index)
    }
}

/// The request id carried by a card's buttons, or its "Request …" context line.
pub fn request_id_of(card: &Value) -> String {
    let text = card.to_string();
    let at = text.find("Request ").expect("card names its request") + "Request ".len();
    text[at..at + 36].to_string()
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 10 s) until the app at `address` says it is ready.
pub async fn wait_until_ready(http: &reqwest::Client, address: &str) {
    for _ in 0..200 {
        if http
            .get(format!("{address}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the app at {address} was not ready within 10 s");
}

/// An app running as its own process, killed with the test.
struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A `devops.request` envelope as an agent publishes it.
pub fn devops_request(source: &str, request_id: &str, action: &str, params: Value) -> Value {
    json!({"version": "0", "id": request_id, "detail-type": "devops.request", "source": source,
        "time": "2026-12-03T00:00:00Z", "region": "us-east-1", "resources": [],
        "detail": {"requestId": request_id, "action": action, "stage": "dev",
            "params": params, "requestedBy": source.trim_start_matches("agent."),
            "ts": "2026-12-03T00:00:00Z"}})
}
