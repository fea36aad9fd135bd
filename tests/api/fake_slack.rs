//! A local stand-in for the Slack Web API.
//!
//! The app talks to Slack through slack-morphism's real hyper client, so the
//! tests point that client at this server (`with_slack_api_url(base_url)`) and
//! get the whole HTTP path exercised: auth header, JSON bodies, status codes and
//! response decoding. The replies therefore follow Slack's wire format closely
//! enough for slack-morphism to deserialize them, and they fail the way Slack
//! fails (`ok: false` with HTTP 200, 429 with `Retry-After`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

const BOT_USER_ID: &str = "U0FAKEBOT";
const BOT_ID: &str = "B0FAKEBOT";
const APP_ID: &str = "A0FAKEAPP";
const TEAM_ID: &str = "T0FAKETEAM";

/// The fake Slack server. Dropping the last clone shuts the server down.
#[derive(Clone)]
pub struct FakeSlack {
    /// What to pass to `with_slack_api_url`, e.g. `http://127.0.0.1:PORT/api`.
    pub base_url: String,
    state: Arc<Mutex<Recorder>>,
    /// Signalled after every recorded call, so waiters wake at once.
    arrived: Arc<Notify>,
    /// Never sent on: dropping it resolves the server's shutdown signal, so a
    /// finished test does not leave a listener behind.
    _shutdown: Arc<oneshot::Sender<()>>,
}

/// One request as the app sent it.
#[derive(Clone, Debug)]
pub struct SlackCall {
    /// The Web API method, e.g. `chat.postMessage`.
    pub method: String,
    /// The parameters: a JSON body as sent, or form/query fields as an object
    /// of strings (JSON-valued fields such as `blocks` stay strings).
    pub body: Value,
    /// The bearer token from the `Authorization` header.
    pub token: Option<String>,
    /// When the server received it, for `benches/load.rs` (which includes this file).
    #[allow(dead_code)]
    pub received: Instant,
}

/// A way for the next calls to a method to fail, as Slack can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429 with `Retry-After`, which slack-morphism maps to
    /// `SlackClientError::RateLimitError { retry_after, .. }`.
    RateLimited { retry_after_secs: u64 },
    /// HTTP 500, which slack-morphism maps to `SlackClientError::HttpError`.
    ServerError,
    /// HTTP 200 with `ok: false` and this error code, which slack-morphism maps
    /// to `SlackClientError::ApiError`.
    SlackError(&'static str),
    /// Slack carries the call out, but the app gets HTTP 500 instead of the
    /// answer, as after a dropped connection or a timeout: it cannot know.
    DoneButAnswerLost,
}

impl FakeSlack {
    /// Binds an ephemeral port on loopback and serves the fake API on it.
    pub async fn start() -> FakeSlack {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the fake Slack listener on 127.0.0.1");
        let address = listener
            .local_addr()
            .expect("read the fake Slack listener address");
        let state = Arc::new(Mutex::new(Recorder::default()));
        let arrived = Arc::new(Notify::new());
        let app = Router::new()
            .route("/api/{method}", any(handle))
            .route("/response/{kind}/{id}", any(respond_to_url))
            .with_state((Arc::clone(&state), Arc::clone(&arrived)));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                // Resolves with an error once every `FakeSlack` clone is gone.
                let _ = stopped.await;
            });
            if let Err(err) = server.await {
                eprintln!("fake Slack server stopped: {err}");
            }
        });
        FakeSlack {
            base_url: format!("http://{address}/api"),
            state,
            arrived,
            _shutdown: Arc::new(shutdown),
        }
    }

    /// A fresh `response_url` of the kind Slack puts in a slash command or
    /// an interaction; what is posted to it is recorded as a `response_url` call.
    pub fn response_url(&self, kind: &str) -> String {
        let base = self.base_url.trim_end_matches("/api");
        format!("{base}/response/{kind}/{}", uuid::Uuid::new_v4())
    }

    /// The texts posted to response URLs, in arrival order.
    pub fn responses(&self) -> Vec<String> {
        self.calls_to("response_url")
            .iter()
            .map(|body| body["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Every call that got an `ok: true` answer, in arrival order.
    pub fn calls(&self) -> Vec<SlackCall> {
        self.lock()
            .attempts
            .iter()
            .filter(|attempt| attempt.answered)
            .map(|attempt| attempt.call.clone())
            .collect()
    }

    /// How many calls were answered, and when the last of them came: cheap
    /// to ask often, where `calls` copies every body (for `benches/load.rs`).
    #[allow(dead_code)]
    pub fn answered_so_far(&self) -> (usize, Option<Instant>) {
        self.lock()
            .attempts
            .iter()
            .filter(|attempt| attempt.answered)
            .fold((0, None), |(count, last), attempt| {
                (count + 1, last.max(Some(attempt.call.received)))
            })
    }

    /// Every message in the channels now, oldest first, with its `channel`:
    /// what people see, whether or not Slack's answer reached the app.
    pub fn messages(&self) -> Vec<Value> {
        let state = self.lock();
        let mut messages: Vec<(&String, &PostedMessage)> = state.messages.iter().collect();
        messages.sort_by(|a, b| a.0.cmp(b.0));
        messages
            .into_iter()
            .map(|(_, posted)| {
                let mut message = posted.message.clone();
                message.insert("channel".into(), posted.channel.clone().into());
                Value::Object(message)
            })
            .collect()
    }

    /// Waits until `check` holds for [`FakeSlack::messages`] and returns them;
    /// panics listing them once `timeout` elapses.
    pub async fn wait_for_messages(
        &self,
        check: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            let messages = self.messages();
            if check(&messages) {
                return messages;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "the channels never looked as expected within {timeout:?}:\n{}",
                    messages
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }

    /// How many times `method` was called, whatever the answer was.
    pub fn attempts(&self, method: &str) -> usize {
        self.lock()
            .attempts
            .iter()
            .filter(|attempt| attempt.call.method == method)
            .count()
    }

    /// The `ts` Slack answered the `index`-th successful call to `method` with.
    pub fn message_ts(&self, method: &str, index: usize) -> String {
        self.lock()
            .attempts
            .iter()
            .filter(|attempt| attempt.answered && attempt.call.method == method)
            .nth(index)
            .and_then(|attempt| {
                attempt
                    .reply
                    .get("ts")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no answered {method} call number {index}"))
    }

    /// The bodies of the successful calls to `method`, in arrival order.
    pub fn calls_to(&self, method: &str) -> Vec<Value> {
        self.lock().answered_bodies(method)
    }

    /// Waits until `count` successful calls to `method` exist, returns their
    /// bodies; panics with a message listing all calls seen if `timeout` elapses.
    ///
    /// The app talks to Slack from background tasks, so tests cannot know when
    /// a message has gone out. All bodies are returned, so a test that expects
    /// exactly `count` can still assert on the length.
    pub async fn wait_for_calls(
        &self,
        method: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a call arriving in between still wakes us.
            let arrived = self.arrived.notified();
            let bodies = self.calls_to(method);
            if bodies.len() >= count {
                return bodies;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "expected {count} successful {method} call(s) within {timeout:?}, \
                     got {}; calls seen:\n{}",
                    bodies.len(),
                    self.lock().describe_attempts()
                );
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    /// Waits until a successful call to `method` satisfies `check` and returns
    /// it with Slack's reply, or None once `timeout` elapses.
    pub async fn wait_for_call(
        &self,
        method: &str,
        check: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<(SlackCall, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            let found = self.lock().attempts.iter().find_map(|attempt| {
                (attempt.answered && attempt.call.method == method && check(&attempt.call.body))
                    .then(|| (attempt.call.clone(), attempt.reply.clone()))
            });
            if found.is_some() {
                return found;
            }
            tokio::time::timeout_at(deadline, arrived).await.ok()?;
        }
    }

    /// Forgets the calls recorded so far (the messages stay, so their `ts`
    /// can still be updated), keeping later waits short after a load in
    /// `benches/load.rs`.
    #[allow(dead_code)]
    pub fn forget_calls(&self) {
        self.lock().attempts.clear();
    }

    /// Answers every call `latency` after carrying it out, as the real
    /// Slack (~100 ms away) does: a bot that dies meanwhile never hears.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Calls on the message `ts` or in its thread answer `latency` late, as
    /// when Slack is slow for one of them.
    pub fn slow_down_thread(&self, ts: &str, latency: Duration) {
        self.lock().slow_threads.insert(ts.to_owned(), latency);
    }

    /// For `duration` from now every call fails, in each of `failures` in
    /// turn (e.g. 429s and 500s), as during a Slack incident.
    pub fn outage(&self, duration: Duration, failures: &[Failure]) {
        self.lock().outage = Some(Outage {
            until: Instant::now() + duration,
            failures: failures.to_vec(),
            next: 0,
        });
    }

    /// The next `times` calls to `method` fail in the given way, then calls
    /// succeed again. Failures queued by repeated calls are used up in order.
    pub fn fail_next(&self, method: &str, failure: Failure, times: usize) {
        self.lock()
            .failures
            .entry(method.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(failure, times));
    }

    /// All recorded request bodies and methods concatenated as one string (for
    /// "secret never appears" assertions), including failed attempts.
    ///
    /// Each body appears raw (so percent-encoded form data is covered), as
    /// JSON, and as its plain string values and keys (so a secret is found
    /// even where JSON escaping would split it). The bearer token is left out
    /// on purpose: sending it is expected.
    pub fn everything_sent(&self) -> String {
        let state = self.lock();
        let mut sent = String::new();
        for attempt in &state.attempts {
            let body = attempt.call.body.to_string();
            for part in [&attempt.call.method, &attempt.raw, &body] {
                sent.push_str(part);
                sent.push('\n');
            }
            push_strings(&attempt.call.body, &mut sent);
        }
        sent
    }

    fn lock(&self) -> MutexGuard<'_, Recorder> {
        lock(&self.state)
    }
}

/// A request as it arrived, kept whether or not it succeeded.
struct Attempt {
    call: SlackCall,
    /// Query string and body text exactly as received.
    raw: String,
    /// Whether the reply was `ok: true`.
    answered: bool,
    /// The `ok: true` reply, or null.
    reply: Value,
}

/// What Slack would remember about a message it accepted.
struct PostedMessage {
    channel: String,
    thread_ts: Option<String>,
    /// The message as `conversations.history` and `.replies` return it.
    message: Map<String, Value>,
}

/// Everything the server knows; one lock guards it so that recording a call
/// and answering it happen in the same order for concurrent requests.
#[derive(Default)]
struct Recorder {
    attempts: Vec<Attempt>,
    failures: HashMap<String, VecDeque<Failure>>,
    /// Messages from `chat.postMessage` by `ts`, so `chat.update` can reject
    /// a `ts` Slack never handed out and history can be read back.
    messages: HashMap<String, PostedMessage>,
    /// The last `ts` handed out, in microseconds since the epoch.
    last_ts_micros: u64,
    views_opened: u64,
    /// How long each answer takes after the call has taken effect.
    latency: Duration,
    /// Extra latency of calls on a message or in its thread, by its `ts`.
    slow_threads: HashMap<String, Duration>,
    outage: Option<Outage>,
}

/// A time during which every call fails.
struct Outage {
    until: Instant,
    failures: Vec<Failure>,
    next: usize,
}

/// A request body after parsing, plus the Slack error for a body Slack could
/// not have read.
struct ParsedRequest {
    body: Value,
    raw: String,
    error: Option<&'static str>,
}

type MethodResult = Result<Value, &'static str>;

/// The single route: every Web API method is `POST /api/{method}` (slack-morphism
/// also uses GET with query parameters for a few read methods).
async fn handle(
    State((state, arrived)): State<(Arc<Mutex<Recorder>>, Arc<Notify>)>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = parse_request(&headers, query.as_deref(), &body);
    let call = SlackCall {
        method,
        body: request.body,
        token: bearer_token(&headers),
        received: Instant::now(),
    };
    let (response, latency) = {
        let mut recorder = lock(&state);
        let slowed = ["ts", "thread_ts"]
            .iter()
            .filter_map(|field| call.body[field].as_str())
            .filter_map(|ts| recorder.slow_threads.get(ts))
            .max()
            .copied()
            .unwrap_or_default();
        let latency = recorder.latency + slowed;
        (recorder.respond(call, request.raw, request.error), latency)
    };
    arrived.notify_waiters();
    // What the call did is already visible in the channels, as in Slack.
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    response
}

/// A `response_url`: Slack shows what is posted there to the person who
/// ran the command or clicked.
async fn respond_to_url(
    State((state, arrived)): State<(Arc<Mutex<Recorder>>, Arc<Notify>)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = parse_request(&headers, None, &body);
    let call = SlackCall {
        method: "response_url".into(),
        body: request.body,
        token: bearer_token(&headers),
        received: Instant::now(),
    };
    lock(&state).attempts.push(Attempt {
        call,
        raw: request.raw,
        answered: true,
        reply: json!({"ok": true}),
    });
    arrived.notify_waiters();
    Json(json!({"ok": true})).into_response()
}

impl Recorder {
    /// Records the call and answers it, an injected failure taking precedence
    /// over everything else.
    fn respond(&mut self, call: SlackCall, raw: String, error: Option<&'static str>) -> Response {
        let injected = self.outage_failure().or_else(|| {
            self.failures
                .get_mut(&call.method)
                .and_then(VecDeque::pop_front)
        });
        let (response, answered, reply) = match injected {
            Some(Failure::DoneButAnswerLost) => {
                let _ = self.answer(&call);
                (failure_response(Failure::ServerError), false, Value::Null)
            }
            Some(failure) => (failure_response(failure), false, Value::Null),
            None => {
                let result = match error {
                    Some(code) => Err(code),
                    None => self.answer(&call),
                };
                let answered = result.is_ok();
                let reply = result.clone().unwrap_or(Value::Null);
                (slack_reply(result), answered, reply)
            }
        };
        self.attempts.push(Attempt {
            call,
            raw,
            answered,
            reply,
        });
        response
    }

    /// During an outage every call fails, taking the failures in turn.
    fn outage_failure(&mut self) -> Option<Failure> {
        let outage = self.outage.as_mut()?;
        if Instant::now() >= outage.until {
            self.outage = None;
            return None;
        }
        let failure = outage.failures[outage.next % outage.failures.len()];
        outage.next += 1;
        Some(failure)
    }

    /// Slack rejects unknown methods before looking at the token.
    fn answer(&mut self, call: &SlackCall) -> MethodResult {
        let method: fn(&mut Self, &Value) -> MethodResult = match call.method.as_str() {
            "chat.postMessage" => Self::post_message,
            "chat.update" => Self::update_message,
            "chat.postEphemeral" => Self::post_ephemeral,
            "views.open" => Self::open_view,
            "conversations.history" => Self::history,
            "conversations.replies" => Self::replies,
            _ => return Err("unknown_method"),
        };
        let is_bot_token = call
            .token
            .as_deref()
            .is_some_and(|token| token.starts_with("xoxb-"));
        if !is_bot_token {
            return Err("not_authed");
        }
        method(self, &call.body)
    }

    fn post_message(&mut self, body: &Value) -> MethodResult {
        let channel = str_field(body, "channel").ok_or("channel_not_found")?;
        let mut message = message_content(body)?;
        let ts = self.next_ts();
        message.insert("ts".into(), ts.clone().into());
        let thread_ts = str_field(body, "thread_ts");
        if let Some(thread_ts) = thread_ts {
            message.insert("thread_ts".into(), thread_ts.into());
        }
        self.messages.insert(
            ts.clone(),
            PostedMessage {
                channel: channel.to_owned(),
                thread_ts: thread_ts.map(str::to_owned),
                message: message.clone(),
            },
        );
        Ok(json!({
            "ok": true,
            "channel": channel,
            "ts": ts,
            "message": message,
        }))
    }

    /// Only messages this fake posted, in the channel they were posted to, can
    /// be updated, as in Slack (ephemeral messages cannot be updated at all).
    fn update_message(&mut self, body: &Value) -> MethodResult {
        let channel = str_field(body, "channel").ok_or("channel_not_found")?;
        let ts = str_field(body, "ts").ok_or("message_not_found")?;
        let posted = self
            .messages
            .get_mut(ts)
            .filter(|posted| posted.channel == channel)
            .ok_or("message_not_found")?;
        let message = message_content(body)?;
        for (key, value) in &message {
            posted.message.insert(key.clone(), value.clone());
        }
        let mut reply = json!({
            "ok": true,
            "channel": channel,
            "ts": ts,
            "text": str_field(body, "text").unwrap_or_default(),
            "message": message,
        });
        if let Some(thread_ts) = &posted.thread_ts {
            reply["thread_ts"] = thread_ts.as_str().into();
        }
        Ok(reply)
    }

    /// The channel's top-level messages, newest first. Like Slack, metadata
    /// is only returned when `include_all_metadata` asks for it.
    fn history(&mut self, body: &Value) -> MethodResult {
        let channel = str_field(body, "channel").ok_or("channel_not_found")?;
        let mut found: Vec<(&String, &PostedMessage)> = self
            .messages
            .iter()
            .filter(|(ts, posted)| {
                posted.channel == channel
                    && posted.thread_ts.as_ref().is_none_or(|thread| thread == *ts)
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(a.0));
        let messages = self.read_back(found, body);
        Ok(json!({
            "ok": true, "messages": messages, "has_more": false, "pin_count": 0,
            "response_metadata": {"next_cursor": ""},
        }))
    }

    /// A thread: its parent first, then the replies, oldest first.
    fn replies(&mut self, body: &Value) -> MethodResult {
        let channel = str_field(body, "channel").ok_or("channel_not_found")?;
        let parent = str_field(body, "ts").ok_or("thread_not_found")?;
        if self
            .messages
            .get(parent)
            .is_none_or(|posted| posted.channel != channel)
        {
            return Err("thread_not_found");
        }
        let mut found: Vec<(&String, &PostedMessage)> = self
            .messages
            .iter()
            .filter(|(ts, posted)| *ts == parent || posted.thread_ts.as_deref() == Some(parent))
            .collect();
        found.sort_by(|a, b| a.0.cmp(b.0));
        let messages = self.read_back(found, body);
        Ok(json!({
            "ok": true, "messages": messages, "has_more": false,
            "response_metadata": {"next_cursor": ""},
        }))
    }

    fn read_back(&self, found: Vec<(&String, &PostedMessage)>, body: &Value) -> Vec<Value> {
        let with_metadata = str_field(body, "include_all_metadata") == Some("true");
        let limit = str_field(body, "limit")
            .and_then(|limit| limit.parse().ok())
            .unwrap_or(100);
        found
            .into_iter()
            .take(limit)
            .map(|(_, posted)| {
                let mut message = posted.message.clone();
                if !with_metadata {
                    message.remove("metadata");
                }
                Value::Object(message)
            })
            .collect()
    }

    fn post_ephemeral(&mut self, body: &Value) -> MethodResult {
        str_field(body, "channel").ok_or("channel_not_found")?;
        str_field(body, "user").ok_or("user_not_in_channel")?;
        message_content(body)?;
        Ok(json!({ "ok": true, "message_ts": self.next_ts() }))
    }

    /// Echoes the submitted modal with the fields Slack adds to an opened view.
    fn open_view(&mut self, body: &Value) -> MethodResult {
        str_field(body, "trigger_id").ok_or("invalid_arguments")?;
        let Some(Value::Object(mut view)) = json_field(body, "view") else {
            return Err("invalid_arguments");
        };
        // slack-morphism needs `title` and `blocks` to read a modal back, and
        // Slack refuses to open anything else.
        let is_modal = view.get("type").and_then(Value::as_str) == Some("modal")
            && view.get("title").is_some_and(Value::is_object)
            && view.get("blocks").is_some_and(Value::is_array);
        if !is_modal {
            return Err("invalid_arguments");
        }
        self.views_opened += 1;
        let id = format!("V0{:09}", self.views_opened);
        let hash = format!("{}.{:08}", now_micros() / 1_000_000, self.views_opened);
        for (key, default) in [
            ("private_metadata", json!("")),
            ("callback_id", json!("")),
            ("external_id", json!("")),
            ("close", Value::Null),
            ("submit", Value::Null),
            ("clear_on_close", json!(false)),
            ("notify_on_close", json!(false)),
        ] {
            view.entry(key).or_insert(default);
        }
        for (key, value) in [
            ("id", json!(id)),
            ("team_id", json!(TEAM_ID)),
            ("state", json!({ "values": {} })),
            ("hash", json!(hash)),
            ("previous_view_id", Value::Null),
            ("root_view_id", json!(id)),
            ("app_id", json!(APP_ID)),
            ("app_installed_team_id", json!(TEAM_ID)),
            ("bot_id", json!(BOT_ID)),
        ] {
            view.insert(key.to_owned(), value);
        }
        Ok(json!({ "ok": true, "view": view }))
    }

    /// A fresh message timestamp: the current time in Slack's
    /// `seconds.micros` format, bumped if needed so every `ts` is unique and
    /// later than the previous one even within the same microsecond.
    fn next_ts(&mut self) -> String {
        self.last_ts_micros = now_micros().max(self.last_ts_micros + 1);
        format!(
            "{}.{:06}",
            self.last_ts_micros / 1_000_000,
            self.last_ts_micros % 1_000_000
        )
    }

    fn answered_bodies(&self, method: &str) -> Vec<Value> {
        self.attempts
            .iter()
            .filter(|attempt| attempt.answered && attempt.call.method == method)
            .map(|attempt| attempt.call.body.clone())
            .collect()
    }

    fn describe_attempts(&self) -> String {
        if self.attempts.is_empty() {
            return "  (none)".to_owned();
        }
        self.attempts
            .iter()
            .map(|attempt| {
                let outcome = if attempt.answered { "ok" } else { "failed" };
                format!(
                    "  {} [{outcome}] {}",
                    attempt.call.method, attempt.call.body
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The message object Slack returns for what the app posted. Errors follow
/// Slack: content must be present, and `blocks`/`attachments` must be arrays
/// (form posts send them as JSON strings, which Slack decodes).
fn message_content(body: &Value) -> Result<Map<String, Value>, &'static str> {
    let mut message = Map::new();
    message.insert("type".into(), "message".into());
    message.insert("user".into(), BOT_USER_ID.into());
    message.insert("bot_id".into(), BOT_ID.into());
    message.insert("app_id".into(), APP_ID.into());
    message.insert("team".into(), TEAM_ID.into());
    message.insert(
        "text".into(),
        str_field(body, "text").unwrap_or_default().into(),
    );
    let mut has_content =
        str_field(body, "text").is_some() || str_field(body, "markdown_text").is_some();
    if let Some(metadata @ Value::Object(_)) = json_field(body, "metadata") {
        message.insert("metadata".into(), metadata);
    }
    for (key, error) in [
        ("blocks", "invalid_blocks"),
        ("attachments", "invalid_attachments"),
    ] {
        match json_field(body, key) {
            None => {}
            Some(Value::Array(items)) => {
                has_content |= !items.is_empty();
                message.insert(key.to_owned(), Value::Array(items));
            }
            Some(_) => return Err(error),
        }
    }
    if has_content {
        Ok(message)
    } else {
        Err("no_text")
    }
}

/// Reads the parameters the way Slack does: JSON for `application/json`,
/// otherwise form fields, with query parameters underneath either.
fn parse_request(headers: &HeaderMap, query: Option<&str>, bytes: &[u8]) -> ParsedRequest {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let raw = match query {
        Some(query) if !query.is_empty() => format!("{query}\n{text}"),
        _ => text.clone(),
    };
    let mut fields = query.map(form_fields).unwrap_or_default();
    let (body, error) = if bytes.iter().all(u8::is_ascii_whitespace) {
        (Value::Object(fields), None)
    } else if is_json(headers) {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(object)) => {
                fields.extend(object);
                (Value::Object(fields), None)
            }
            Ok(other) => (other, None),
            Err(_) => (Value::String(text), Some("invalid_json")),
        }
    } else {
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes) {
            Ok(pairs) => {
                fields.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
                (Value::Object(fields), None)
            }
            Err(_) => (Value::String(text), Some("invalid_form_data")),
        }
    };
    ParsedRequest { body, raw, error }
}

fn form_fields(encoded: &str) -> Map<String, Value> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(encoded)
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, Value::String(value)))
        .collect()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// A non-empty string parameter; Slack treats empty strings as missing.
fn str_field<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
}

/// A structured parameter, decoding it when a form post sent it as JSON text.
fn json_field(body: &Value, key: &str) -> Option<Value> {
    match body.get(key)? {
        Value::Null => None,
        Value::String(text) => {
            Some(serde_json::from_str(text).unwrap_or_else(|_| text.clone().into()))
        }
        other => Some(other.clone()),
    }
}

/// Slack answers API errors with HTTP 200 and `ok: false`.
fn slack_reply(result: MethodResult) -> Response {
    match result {
        Ok(reply) => Json(reply).into_response(),
        Err(code) => Json(json!({ "ok": false, "error": code })).into_response(),
    }
}

fn failure_response(failure: Failure) -> Response {
    match failure {
        // The JSON content type matters: slack-morphism only reads the error
        // code from a 429 body it recognises as JSON.
        Failure::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            Json(json!({ "ok": false, "error": "ratelimited" })),
        )
            .into_response(),
        Failure::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "ok": false, "error": "internal_error" })),
        )
            .into_response(),
        Failure::SlackError(code) => slack_reply(Err(code)),
        Failure::DoneButAnswerLost => failure_response(Failure::ServerError),
    }
}

/// Appends every string and key in `value`, descending into strings that are
/// themselves JSON (such as form-encoded `blocks`).
fn push_strings(value: &Value, out: &mut String) {
    match value {
        Value::String(text) => {
            out.push_str(text);
            out.push('\n');
            if let Ok(nested @ (Value::Array(_) | Value::Object(_))) =
                serde_json::from_str::<Value>(text)
            {
                push_strings(&nested, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| push_strings(item, out)),
        Value::Object(object) => {
            for (key, item) in object {
                out.push_str(key);
                out.push('\n');
                push_strings(item, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() * 1_000_000 + u64::from(elapsed.subsec_micros()))
        .unwrap_or_default()
}

/// Poisoning only means another test thread panicked; the recorded data is
/// still what the tests want to inspect.
fn lock(state: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
