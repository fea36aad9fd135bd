//! A real AWS API emulator (moto's server, installed by `scripts/test`) on a
//! free loopback port, with what EventBridge would do around the bot: a rule
//! per event the bot consumes, an SQS queue as their target, and a relay
//! that posts each queued event to the bot's `/events` the way an API
//! destination does (moto delivers API-destination calls without a body).
//! Several apps can share one world, as replicas behind a load balancer.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use devops_bot::backends::aws::{AwsSettings, StaticKeys};
use devops_bot::domain::events::Envelope;
use tokio::sync::broadcast;

pub const TABLE: &str = "devops-bot-test";

/// One moto server, killed when dropped.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        Self::start_with(&[]).await
    }

    /// A moto server with these environment settings (e.g. IAM enforcement).
    pub async fn start_with(env: &[(&str, &str)]) -> Moto {
        let program = std::env::var("DEVOPSBOT_TEST_MOTO_SERVER")
            .unwrap_or_else(|_| "moto_server".to_string());
        let port = crate::helpers::free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start {program} ({error}); run the tests with ./scripts/test, which installs moto")
            });
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let ready = format!("{}/moto-api/data.json", moto.endpoint);
        for _ in 0..300 {
            if let Ok(response) = reqwest::get(&ready).await {
                if response.status().is_success() {
                    return moto;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not answer on {ready} within 15 s");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP relay in front of moto that the test can cut: while cut,
/// every connection through it is dropped at once, as with AWS unreachable.
pub struct Switch {
    pub endpoint: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<tokio::task::JoinSet<()>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Switch {
    pub async fn start(target: &str) -> Switch {
        let target = target.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let accepting = tokio::spawn({
            let (cut, connections) = (cut.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let target = target.clone();
                    connections.lock().unwrap().spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Switch {
            endpoint,
            cut,
            connections,
            accepting,
        }
    }

    /// Drops every open connection and every new one until restored.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accepting.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

pub struct AwsWorld {
    pub moto: Moto,
    /// Where the apps reach AWS: moto, or a switch in front of it.
    apps_reach: Mutex<String>,
    /// Where the apps reach EventBridge, if not where they reach the rest.
    apps_reach_events: Mutex<Option<String>>,
    pub sdk: SdkConfig,
    access_key_id: String,
    secret_access_key: String,
    queue_url: String,
    /// Every event EventBridge delivered, as the relay saw it.
    events: broadcast::Sender<Envelope>,
    /// The replicas behind the "load balancer", taken in turn.
    targets: Mutex<Vec<String>>,
    next_target: AtomicUsize,
}

impl AwsWorld {
    /// A fresh emulator with the bot's table and sealing key (made by `init-aws`), rules and relay.
    pub async fn start() -> Arc<AwsWorld> {
        let keys = ("testing".to_string(), "testing".to_string());
        Self::start_on(Moto::start().await, keys).await
    }

    /// An emulator that enforces IAM, where the bot's user may do anything but `denied_action`.
    pub async fn start_denying(denied_action: &str) -> Arc<AwsWorld> {
        // moto lets the first three calls through unauthenticated: just enough to make the user.
        let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
        let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Deny", "Action": denied_action, "Resource": "*"}]});
        let mut answers = Vec::new();
        for form in [
            vec![("Action", "CreateUser".to_string())],
            vec![("Action", "CreateAccessKey".to_string())],
            vec![
                ("Action", "PutUserPolicy".to_string()),
                ("PolicyName", "bot".to_string()),
                ("PolicyDocument", policy.to_string()),
            ],
        ] {
            let mut form = form;
            form.extend([
                ("UserName", "bot".to_string()),
                ("Version", "2010-05-08".to_string()),
            ]);
            let answer = reqwest::Client::new()
                .post(format!("{}/", moto.endpoint))
                .header("authorization", "AWS4-HMAC-SHA256 Credential=setup/20261203/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0")
                .form(&form)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            answers.push(answer);
        }
        let element = |name: &str| {
            let text = &answers[1];
            let start = text.find(&format!("<{name}>")).unwrap() + name.len() + 2;
            let end = text.find(&format!("</{name}>")).unwrap();
            text[start..end].to_string()
        };
        let keys = (element("AccessKeyId"), element("SecretAccessKey"));
        Self::start_on(moto, keys).await
    }

    async fn start_on(
        moto: Moto,
        (access_key_id, secret_access_key): (String, String),
    ) -> Arc<AwsWorld> {
        let settings = AwsSettings {
            region: Some("us-east-1".into()),
            endpoint_url: Some(moto.endpoint.clone()),
            service_endpoints: Default::default(),
            static_keys: Some(StaticKeys {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: None,
            }),
            profile: None,
            table: TABLE.into(),
            event_bus: "default".into(),
            sealing_key_secret: "devops-bot/sealing-key".into(),
        };
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                access_key_id.clone(),
                secret_access_key.clone(),
                None,
                None,
                "tests",
            ))
            .load()
            .await;
        devops_bot::backends::open::init_aws(&settings)
            .await
            .expect("init-aws on moto");

        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let queue_url = sqs
            .create_queue()
            .queue_name("bot-ingress")
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "1",
            )
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let queue_arn = "arn:aws:sqs:us-east-1:123456789012:bot-ingress";
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        for (rule, pattern) in [
            (
                "devops-request-to-bot",
                r#"{"detail-type":["devops.request"]}"#,
            ),
            (
                "devops-completed-to-bot",
                r#"{"detail-type":["devops.completed"],"source":["devops.automation"]}"#,
            ),
        ] {
            events
                .put_rule()
                .name(rule)
                .event_pattern(pattern)
                .send()
                .await
                .unwrap();
            events
                .put_targets()
                .rule(rule)
                .targets(
                    aws_sdk_eventbridge::types::Target::builder()
                        .id("bot")
                        .arn(queue_arn)
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
        }
        let world = Arc::new(AwsWorld {
            apps_reach: Mutex::new(moto.endpoint.clone()),
            apps_reach_events: Mutex::new(None),
            moto,
            sdk,
            access_key_id,
            secret_access_key,
            queue_url,
            events: broadcast::channel(1024).0,
            targets: Mutex::new(Vec::new()),
            next_target: AtomicUsize::new(0),
        });
        tokio::spawn(relay(Arc::downgrade(&world)));
        world
    }

    /// The environment an app on this world reads (through the config seam).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("DEVOPSBOT_BACKEND", "aws".into()),
            ("DEVOPSBOT_TABLE", TABLE.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.apps_reach.lock().unwrap().clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ];
        if let Some(events) = self.apps_reach_events.lock().unwrap().clone() {
            vars.push(("AWS_ENDPOINT_URL_EVENTBRIDGE", events));
        }
        vars
    }

    /// Apps started from now on reach AWS through a switch the test can cut;
    /// the test itself and the EventBridge relay still reach moto directly.
    pub async fn put_switch_before_apps(&self) -> Switch {
        let switch = Switch::start(&self.moto.endpoint).await;
        *self.apps_reach.lock().unwrap() = switch.endpoint.clone();
        switch
    }

    /// As `put_switch_before_apps`, for EventBridge alone: cutting it leaves the store reachable.
    pub async fn put_switch_before_events(&self) -> Switch {
        let switch = Switch::start(&self.moto.endpoint).await;
        *self.apps_reach_events.lock().unwrap() = Some(switch.endpoint.clone());
        switch
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.events.subscribe()
    }

    pub fn add_target(&self, address: &str) {
        self.targets.lock().unwrap().push(address.to_string());
    }

    pub fn remove_target(&self, address: &str) {
        self.targets
            .lock()
            .unwrap()
            .retain(|target| target != address);
    }

    fn pick_target(&self) -> Option<String> {
        let targets = self.targets.lock().unwrap();
        if targets.is_empty() {
            return None;
        }
        let turn = self.next_target.fetch_add(1, Ordering::SeqCst);
        Some(targets[turn % targets.len()].clone())
    }

    pub fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk)
    }

    pub fn cloudformation(&self) -> aws_sdk_cloudformation::Client {
        aws_sdk_cloudformation::Client::new(&self.sdk)
    }

    /// A secret's current value, if it exists.
    pub async fn secret_value(&self, name: &str) -> Option<String> {
        self.secrets()
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .ok()
            .and_then(|output| output.secret_string)
    }

    /// Creates a stack with one parameter, `Version`, as a team's Lambda stack would have.
    pub async fn create_stack(&self, name: &str, version: &str) {
        let template = serde_json::json!({
            "AWSTemplateFormatVersion": "2010-09-09",
            "Parameters": {"Version": {"Type": "String"}},
            "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {}}}
        });
        self.cloudformation()
            .create_stack()
            .stack_name(name)
            .template_body(template.to_string())
            .parameters(
                aws_sdk_cloudformation::types::Parameter::builder()
                    .parameter_key("Version")
                    .parameter_value(version)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    pub async fn stack_parameter(&self, name: &str, key: &str) -> Option<String> {
        let output = self
            .cloudformation()
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .ok()?;
        let stack = output.stacks().first()?.clone();
        stack
            .parameters()
            .iter()
            .find(|parameter| parameter.parameter_key() == Some(key))
            .and_then(|parameter| parameter.parameter_value().map(str::to_string))
    }
}

/// Stands in for EventBridge's API destination: each queued event is posted
/// to one replica's `/events`; one that is not accepted is delivered again.
async fn relay(world: std::sync::Weak<AwsWorld>) {
    let http = reqwest::Client::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let Some(world) = world.upgrade() else {
            return;
        };
        let sqs = aws_sdk_sqs::Client::new(&world.sdk);
        let received = sqs
            .receive_message()
            .queue_url(&world.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await;
        let messages = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(_) => return,
        };
        if messages.is_empty() {
            drop(world);
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        }
        for message in messages {
            let body = message.body().unwrap_or_default();
            let first_delivery = seen.insert(message.message_id().unwrap_or_default().to_string());
            if let (true, Ok(envelope)) = (first_delivery, serde_json::from_str::<Envelope>(body)) {
                let _ = world.events.send(envelope);
            }
            let Some(target) = world.pick_target() else {
                continue;
            };
            let accepted = http
                .post(format!("{target}/events"))
                .header("x-api-key", crate::helpers::EVENTS_API_KEY)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if accepted {
                let _ = sqs
                    .delete_message()
                    .queue_url(&world.queue_url)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await;
            }
        }
    }
}
