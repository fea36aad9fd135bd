//! Acknowledgement speed: signed `/devops help` and `/devops deploy` (which
//! writes a request and its effects) against the real app, embedded backends.
//! Run with `cargo bench --bench ack`; prints requests/s and latency percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use devops_bot::config::Config;
use devops_bot::Application;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "bench-signing-secret";
const REQUESTS: usize = 4000;
const CONCURRENCY: usize = 64;

fn signed(text: &str) -> (String, String, String) {
    let body = serde_urlencoded::to_string([
        ("team_id", "T1"),
        ("channel_id", "C1"),
        ("user_id", "UBENCH"),
        ("user_name", "bench"),
        ("command", "/devops"),
        ("text", text),
        ("response_url", "http://127.0.0.1:9/r"),
        ("trigger_id", "t"),
    ])
    .expect("form encodes");
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length works");
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    (
        body,
        ts,
        format!("v0={}", hex::encode(mac.finalize().into_bytes())),
    )
}

async fn run(label: &str, url: &str, text: &str) {
    let client = reqwest::Client::new();
    let latencies = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(REQUESTS)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CONCURRENCY {
        let (client, url, latencies, text) = (
            client.clone(),
            url.to_string(),
            latencies.clone(),
            text.to_string(),
        );
        workers.push(tokio::spawn(async move {
            for _ in (worker..REQUESTS).step_by(CONCURRENCY) {
                let (body, ts, signature) = signed(&text);
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-slack-request-timestamp", ts)
                    .header("x-slack-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .expect("app answers");
                assert_eq!(response.status(), 200);
                let _ = response.bytes().await;
                latencies.lock().await.push(sent.elapsed());
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker finishes");
    }
    let elapsed = started.elapsed();
    let mut latencies = latencies.lock().await.clone();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{label:<22} {REQUESTS} requests, {CONCURRENCY} concurrent: {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        REQUESTS as f64 / elapsed.as_secs_f64(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vars = [
        ("DEVOPSBOT_LISTEN", "127.0.0.1:0".to_string()),
        ("DEVOPSBOT_DATA_DIR", dir.path().display().to_string()),
        ("SLACK_SIGNING_SECRET", SECRET.to_string()),
    ];
    let config = Config::from_env(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("bench configuration is valid");
    let app = Application::build(config).await.expect("app builds");
    let url = format!("http://127.0.0.1:{}/slack/commands", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    run("/devops help", &url, "help").await;
    run("/devops deploy (dev)", &url, "deploy cc-agent-doc-registry").await;
}
