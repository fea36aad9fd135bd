//! Load benchmark: the release `devops-bot` binary as its own process on the
//! embedded backends, Slack pointed at the tests' fake, and a lean HTTP/1.1
//! load generator on one thread (like `wrk -t1`) keeping N connections busy.
//!
//! `cargo bench --bench load -- [--connections 200] [--seconds 5] [--round-trips 200]`
//!
//! Prints one table: start-up to ready, idle and peak RSS, acknowledgement
//! throughput and latency for signed slash commands and approval clicks,
//! genuine commands during a flood of forged ones, and the time from an
//! approval click to the completion's reply in the card's thread.

#[allow(dead_code)] // the bench uses only part of the tests' fake Slack
#[path = "../tests/api/fake_slack.rs"]
mod fake_slack;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use fake_slack::FakeSlack;

const SIGNING_SECRET: &str = "bench-signing-secret";
const STACK: &str = "cc-agent-doc-registry";
const APPROVER: &str = "UAPPROVER";

struct Args {
    connections: usize,
    duration: Duration,
    round_trips: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            connections: 200,
            duration: Duration::from_secs(5),
            round_trips: 200,
        };
        let mut given = std::env::args().skip(1);
        while let Some(flag) = given.next() {
            let mut number = || -> u64 {
                given
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("{flag} needs a number"))
            };
            match flag.as_str() {
                "--connections" => args.connections = number() as usize,
                "--seconds" => args.duration = Duration::from_secs(number()),
                "--round-trips" => args.round_trips = number() as usize,
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                other => panic!(
                    "unknown argument {other}; use --connections N --seconds N --round-trips N"
                ),
            }
        }
        args
    }
}

/// The service under test; killed when dropped.
struct Service {
    child: Child,
    port: u16,
    _data_dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts the binary and returns it with the time until `/readyz` said ready.
    async fn start(slack: &FakeSlack) -> (Service, Duration) {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_devops-bot"))
            .arg("serve")
            .env_clear()
            .env("DEVOPSBOT_LISTEN", format!("127.0.0.1:{port}"))
            .env("DEVOPSBOT_DATA_DIR", data_dir.path())
            .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            .env("SLACK_BOT_TOKEN", "xoxb-bench")
            .env("SLACK_API_URL", &slack.base_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the devops-bot binary starts");
        let service = Service {
            child,
            port,
            _data_dir: data_dir,
        };
        let ready = b"GET /readyz HTTP/1.1\r\nHost: bench\r\n\r\n";
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                let mut buffer = Vec::new();
                if let Ok((200, _)) = exchange(&mut stream, ready, &mut buffer).await {
                    return (service, started.elapsed());
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "devops-bot was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    /// (resident now, peak resident) in MiB, from /proc.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let kib = |field: &str| -> f64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    /// CPU time the service has used so far, all its threads together: unlike
    /// answers per second, the cost of an answer hardly moves when the shared
    /// machine is busier.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/<pid>/stat");
        // The fields after the command name, whose parentheses may hold anything:
        // user time and system time are the 12th and 13th, in ticks of 1/100 s.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |index: usize| -> u64 {
            fields
                .get(index)
                .and_then(|field| field.parse().ok())
                .unwrap_or(0)
        };
        Duration::from_millis((ticks(11) + ticks(12)) * 10)
    }

    /// Runs `load` and also answers how much of the service's CPU time it took.
    fn measure<T>(&self, load: impl FnOnce() -> T) -> (T, Duration) {
        let before = self.cpu_time();
        let measured = load();
        (measured, self.cpu_time().saturating_sub(before))
    }
}

/// Sends one request on a kept-alive connection and reads the whole response
/// into `buffer`: its status and where its body is.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> std::io::Result<(u16, std::ops::Range<usize>)> {
    stream.write_all(request).await?;
    buffer.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..head_end]).map_err(std::io::Error::other)?;
        let status = head
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status line"))?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| std::io::Error::other("the bench reads content-length bodies only"))?;
        let body = head_end + 4..head_end + 4 + length;
        while buffer.len() < body.end {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        return Ok((status, body));
    }
}

fn now_secs() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .to_string()
}

fn signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A complete HTTP/1.1 request to `path` with a Slack-signed form body.
fn signed_post(path: &str, secret: &str, body: &str) -> Vec<u8> {
    let timestamp = now_secs();
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         X-Slack-Request-Timestamp: {timestamp}\r\nX-Slack-Signature: {}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        signature(secret, &timestamp, body),
        body.len()
    )
    .into_bytes()
}

fn slash_command(user: &str, text: &str) -> String {
    serde_urlencoded::to_string([
        ("team_id", "T0FAKETEAM"),
        ("channel_id", "CBENCH"),
        ("user_id", user),
        ("user_name", user),
        ("command", "/devops"),
        ("text", text),
        ("response_url", "http://127.0.0.1:9/response"),
        ("trigger_id", "bench.trigger"),
    ])
    .expect("form encodes")
}

fn approve_click(request_id: &str, trigger: u64) -> String {
    let payload = json!({
        "type": "block_actions",
        "team": {"id": "T0FAKETEAM"},
        "user": {"id": APPROVER, "username": "approver"},
        "channel": {"id": "CBENCH"},
        "trigger_id": format!("bench.{trigger}"),
        "actions": [{
            "action_id": "approve",
            "value": json!({"requestId": request_id}).to_string(),
            "action_ts": format!("{trigger}.000001"),
        }],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).expect("form encodes")
}

/// The request id in an acknowledgement such as "📝 Request `…`: …".
fn request_id(ack: &str) -> Option<String> {
    let start = ack.find("Request `")? + "Request `".len();
    let end = start + ack[start..].find('`')?;
    Some(ack[start..end].to_string())
}

/// One load run: `connections` kept-alive connections each sending the next
/// request as soon as the previous is answered, for `duration` or until
/// `limit` requests were sent.
struct Load {
    connections: usize,
    duration: Duration,
    limit: u64,
    expect_status: u16,
    keep_bodies: bool,
    request: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
}

struct Measured {
    answered: usize,
    unexpected: usize,
    elapsed: Duration,
    /// Sorted acknowledgement latencies.
    latencies: Vec<Duration>,
    bodies: Vec<String>,
}

impl Measured {
    fn at(&self, quantile: f64) -> Duration {
        let last = self.latencies.len().saturating_sub(1);
        self.latencies
            .get(((self.latencies.len() as f64 * quantile) as usize).min(last))
            .copied()
            .unwrap_or_default()
    }
}

impl Load {
    /// Runs on a thread of its own with a single-threaded runtime, so the
    /// generator takes one core at most, as `wrk -t1` would.
    fn run(self, port: u16) -> Measured {
        Self::run_together(vec![self], port)
            .pop()
            .expect("one load, one measurement")
    }

    /// Several loads at once from the same single thread, each measured apart.
    fn run_together(loads: Vec<Load>, port: u16) -> Vec<Measured> {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("load runtime")
                .block_on(futures_util::future::join_all(
                    loads.into_iter().map(|load| load.drive(port)),
                ))
        })
        .join()
        .expect("load thread")
    }

    async fn drive(self, port: u16) -> Measured {
        let load = Arc::new(self);
        let next = Arc::new(AtomicU64::new(0));
        let collected = Arc::new(Mutex::new((Vec::new(), Vec::new(), 0usize)));
        let started = Instant::now();
        let deadline = started + load.duration;
        let mut connections = Vec::new();
        for _ in 0..load.connections {
            let (load, next, collected) = (load.clone(), next.clone(), collected.clone());
            connections.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut bodies = Vec::new();
                let mut unexpected = 0;
                let mut buffer = Vec::with_capacity(4096);
                let mut stream = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect to devops-bot");
                let _ = stream.set_nodelay(true);
                while Instant::now() < deadline {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= load.limit {
                        break;
                    }
                    let request = (load.request)(index);
                    let sent = Instant::now();
                    let (status, body) = exchange(&mut stream, &request, &mut buffer)
                        .await
                        .expect("devops-bot answers on a kept-alive connection");
                    latencies.push(sent.elapsed());
                    if status != load.expect_status {
                        unexpected += 1;
                    }
                    if load.keep_bodies {
                        bodies.push(String::from_utf8_lossy(&buffer[body]).into_owned());
                    }
                }
                let mut all = collected.lock().expect("not poisoned");
                all.0.extend(latencies);
                all.1.extend(bodies);
                all.2 += unexpected;
            }));
        }
        for connection in connections {
            connection.await.expect("connection task");
        }
        let elapsed = started.elapsed();
        let (mut latencies, bodies, unexpected) =
            std::mem::take(&mut *collected.lock().expect("not poisoned"));
        latencies.sort();
        Measured {
            answered: latencies.len(),
            unexpected,
            elapsed,
            latencies,
            bodies,
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One line of the table; `cpu` is the service's CPU time during the run,
/// shown per answer (none for a run that shared its time with another).
fn row(label: &str, measured: &Measured, cpu: Option<(Duration, usize)>) {
    let cpu_per_answer = cpu.map_or("shared".to_string(), |(cpu, answers)| {
        format!("{:.1}", cpu.as_secs_f64() * 1e6 / answers.max(1) as f64)
    });
    println!(
        "| {label:<34} | {:>7} | {:>9.0} | {:>7.2} | {:>7.2} | {:>8.2} | {cpu_per_answer:>10} | {:>5} |",
        measured.answered,
        measured.answered as f64 / measured.elapsed.as_secs_f64(),
        ms(measured.at(0.50)),
        ms(measured.at(0.99)),
        ms(measured.latencies.last().copied().unwrap_or_default()),
        measured.unexpected,
    );
}

/// Approval click to the completion's reply in the card's thread, one
/// request at a time on an otherwise idle service.
async fn round_trips(slack: &FakeSlack, port: u16, count: usize) -> Vec<Duration> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to devops-bot");
    let mut buffer = Vec::new();
    let mut times = Vec::with_capacity(count);
    for round in 0..count {
        // The fake Slack looks through every call it has recorded, under its lock, while
        // the bot waits for its answers: kept short, it does not weigh on what is measured.
        slack.forget_calls();
        let command = signed_post(
            "/slack/commands",
            SIGNING_SECRET,
            &slash_command("UREQUESTER", &format!("deploy {STACK} --stage prod")),
        );
        let (_, body) = exchange(&mut stream, &command, &mut buffer)
            .await
            .expect("command answered");
        let id = request_id(&String::from_utf8_lossy(&buffer[body]))
            .expect("the acknowledgement names the request");
        let has_id = |body: &serde_json::Value| body.to_string().contains(&id);
        let (_, card) = slack
            .wait_for_call("chat.postMessage", has_id, Duration::from_secs(10))
            .await
            .expect("the card is posted");
        let card_ts = card["ts"]
            .as_str()
            .expect("Slack answers with the card's ts")
            .to_string();
        let click = signed_post(
            "/slack/interactions",
            SIGNING_SECRET,
            &approve_click(&id, 1_000_000 + round as u64),
        );
        let clicked = Instant::now();
        exchange(&mut stream, &click, &mut buffer)
            .await
            .expect("click answered");
        let (reply, _) = slack
            .wait_for_call(
                "chat.postMessage",
                |body| body["thread_ts"] == card_ts.as_str(),
                Duration::from_secs(10),
            )
            .await
            .expect("the completion is replied in the card's thread");
        times.push(reply.received.duration_since(clicked));
    }
    times.sort();
    times
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("bench runtime");
    runtime.block_on(bench(args));
}

async fn bench(args: Args) {
    let slack = FakeSlack::start().await;
    let (service, ready_in) = Service::start(&slack).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle_rss, _) = service.rss_mib();
    let port = service.port;
    let load = |limit: u64, expect_status: u16, keep_bodies: bool, request| Load {
        connections: args.connections,
        duration: args.duration,
        limit,
        expect_status,
        keep_bodies,
        request,
    };

    println!(
        "devops-bot {} (release), embedded backends, {} connections, {} s per run, {} core(s)\n",
        env!("CARGO_PKG_VERSION"),
        args.connections,
        args.duration.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "| {:<34} | {:>7} | {:>9} | {:>7} | {:>7} | {:>8} | {:>10} | {:>5} |",
        "run", "answers", "answers/s", "p50 ms", "p99 ms", "max ms", "CPU µs/ans", "wrong"
    );
    println!(
        "|{:-<36}|{:-<9}|{:-<11}|{:-<9}|{:-<9}|{:-<10}|{:-<12}|{:-<7}|",
        "", "", "", "", "", "", "", ""
    );

    let help = signed_post(
        "/slack/commands",
        SIGNING_SECRET,
        &slash_command("UBENCH", "help"),
    );
    let help_request = {
        let help = help.clone();
        Arc::new(move |_| help.clone())
    };
    let (measured, cpu) =
        service.measure(|| load(u64::MAX, 200, false, help_request.clone()).run(port));
    row("/devops help", &measured, Some((cpu, measured.answered)));

    let prod_deploy = signed_post(
        "/slack/commands",
        SIGNING_SECRET,
        &slash_command("UREQUESTER", &format!("deploy {STACK} --stage prod")),
    );
    let (deploys, cpu) = service
        .measure(|| load(u64::MAX, 200, true, Arc::new(move |_| prod_deploy.clone())).run(port));
    row(
        "/devops deploy --stage prod",
        &deploys,
        Some((cpu, deploys.answered)),
    );
    // Each run measures its own load: the outbox finishes the last one's cards first.
    let (deploy_drain, deploy_drain_cpu) = drained(&service, &slack).await;

    let pending: Arc<Vec<String>> = Arc::new(
        deploys
            .bodies
            .iter()
            .filter_map(|ack| request_id(ack))
            .collect(),
    );
    let clicks = {
        let pending = pending.clone();
        load(
            pending.len() as u64,
            200,
            false,
            Arc::new(move |index| {
                signed_post(
                    "/slack/interactions",
                    SIGNING_SECRET,
                    &approve_click(&pending[index as usize], index),
                )
            }),
        )
    };
    let (clicks, cpu) = service.measure(|| clicks.run(port));
    row("Approve click", &clicks, Some((cpu, clicks.answered)));
    let (click_drain, click_drain_cpu) = drained(&service, &slack).await;

    let forged = signed_post(
        "/slack/commands",
        "not-the-signing-secret",
        &slash_command("UFORGER", "help"),
    );
    let flood = load(u64::MAX, 401, false, Arc::new(move |_| forged.clone()));
    let genuine = Load {
        connections: (args.connections / 4).max(1),
        ..load(u64::MAX, 200, false, help_request)
    };
    let (measured, cpu) = service.measure(|| Load::run_together(vec![flood, genuine], port));
    let answers = measured[0].answered + measured[1].answered;
    row(
        "forged flood (refused, 401)",
        &measured[0],
        Some((cpu, answers)),
    );
    row("  genuine /devops help meanwhile", &measured[1], None);

    let (_, peak_rss) = service.rss_mib();
    slack.forget_calls();
    let trips = round_trips(&slack, port, args.round_trips).await;
    let at = |quantile: f64| trips[((trips.len() as f64 * quantile) as usize).min(trips.len() - 1)];
    println!(
        "\n| approval click → thread reply ({} requests, one at a time) | p50 {:.2} ms | p99 {:.2} ms | max {:.2} ms |",
        trips.len(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(trips.last().copied().unwrap_or_default()),
    );
    println!(
        "| start-up to ready {:.1} ms | idle RSS {idle_rss:.1} MiB | peak RSS {peak_rss:.1} MiB |",
        ms(ready_in)
    );
    let per_answer =
        |cpu: Duration, answers: usize| cpu.as_secs_f64() * 1e6 / answers.max(1) as f64;
    println!(
        "\n{} requests acknowledged, then their cards posted within {:.1} s of the run's end \
         ({:.0} µs of bot CPU per request after the run); {} of them approved under load, then \
         published, executed, replied and updated within {:.1} s ({:.0} µs per click after the run).",
        pending.len(),
        deploy_drain.as_secs_f64(),
        per_answer(deploy_drain_cpu, pending.len()),
        clicks.answered,
        click_drain.as_secs_f64(),
        per_answer(click_drain_cpu, clicks.answered),
    );
}

/// Waits for the outbox to finish the last run's work: how long that took
/// after the run, and the bot's CPU time for it.
async fn drained(service: &Service, slack: &FakeSlack) -> (Duration, Duration) {
    let before = service.cpu_time();
    let drain = wait_until_idle(slack).await;
    (drain, service.cpu_time().saturating_sub(before))
}

/// Waits until the outbox has drained the last run's cards and replies (no
/// Slack call for 500 ms); returns how long after the call the last one came.
async fn wait_until_idle(slack: &FakeSlack) -> Duration {
    let started = Instant::now();
    let mut seen = slack.answered_so_far().0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (answered, last) = slack.answered_so_far();
        if answered == seen {
            return last.map_or_else(Duration::default, |last| {
                last.saturating_duration_since(started)
            });
        }
        seen = answered;
    }
}
