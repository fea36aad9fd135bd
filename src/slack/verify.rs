//! Slack's v0 request signature, checked before anything else reads the body.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

use super::{SlackState, MAX_BODY_BYTES};

const WARN_EVERY_SECS: i64 = 10;

/// Counts refused signatures between warnings: a flood of forged requests
/// gets one log line per interval, not one each (`/metrics` counts every 401).
#[derive(Default)]
pub struct Refusals {
    since_warning: AtomicU64,
    warned_at_secs: AtomicI64,
}

impl Refusals {
    /// Some(refusals since the last warning) when it is time to warn again.
    fn note(&self) -> Option<u64> {
        self.since_warning.fetch_add(1, Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp();
        let warned = self.warned_at_secs.load(Ordering::Relaxed);
        let due = now - warned >= WARN_EVERY_SECS
            && self
                .warned_at_secs
                .compare_exchange(warned, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        due.then(|| self.since_warning.swap(0, Ordering::Relaxed))
    }
}

/// Slack's replay window, both ways (SPEC.md §6).
const MAX_SKEW_SECS: u64 = 300;

fn refuse(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"ok": false, "error": error}))).into_response()
}

pub async fn verify_signature(
    State(state): State<SlackState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(verifier) = state.verifier.as_ref() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "SLACK_SIGNING_SECRET is not configured",
        );
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let signature = header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER);
    let timestamp = header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP);
    let (Some(signature), Some(timestamp), Ok(text)) =
        (signature, timestamp, std::str::from_utf8(&bytes))
    else {
        return refuse(StatusCode::UNAUTHORIZED, "missing Slack signature");
    };
    // Checked before slack-morphism sees it: its own window check subtracts
    // unchecked, and a timestamp near i64::MIN made that overflow and panic.
    if !is_fresh(timestamp, chrono::Utc::now().timestamp()) {
        if let Some(refused) = state.refusals.note() {
            tracing::warn!(%timestamp, path = %parts.uri.path(), refused, "Slack requests refused: outside the five-minute window (one warning per {WARN_EVERY_SECS} s)");
        }
        return refuse(StatusCode::UNAUTHORIZED, "invalid or stale Slack signature");
    }
    if let Err(error) = verifier.verify(signature, text, timestamp) {
        if let Some(refused) = state.refusals.note() {
            tracing::warn!(%error, path = %parts.uri.path(), refused, "Slack signatures refused (one warning per {WARN_EVERY_SECS} s)");
        }
        return refuse(StatusCode::UNAUTHORIZED, "invalid or stale Slack signature");
    }
    // Counted once the signature holds, so a flood of forged requests makes no crowd.
    let _waiting = state.answers_due.begin();
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn is_fresh(timestamp: &str, now: i64) -> bool {
    timestamp
        .parse::<i64>()
        .ok()
        .and_then(|at| now.checked_sub(at))
        .is_some_and(|age| age.unsigned_abs() <= MAX_SKEW_SECS)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::body::Bytes;
    use axum::routing::post;
    use axum::Router;
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use sha2::Sha256;
    use tower::ServiceExt;

    use super::*;
    use crate::domain::names::Stage;
    use crate::domain::policy::Policy;
    use crate::requests::RequestService;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    /// The signature middleware in front of a handler that counts what reaches it.
    struct Guarded {
        router: Router,
        handled: Arc<AtomicUsize>,
        runtime: tokio::runtime::Runtime,
        _data: tempfile::TempDir,
    }

    impl Guarded {
        fn new() -> Guarded {
            let data = tempfile::tempdir().unwrap();
            let backends = crate::backends::open::embedded(data.path(), &[]).unwrap();
            let requests = Arc::new(RequestService::new(
                backends.store.clone(),
                Policy::default(),
                backends.sealer,
                Stage::Dev,
                Arc::new(tokio::sync::Notify::new()),
            ));
            let state =
                SlackState::new(requests, backends.store, None, Some(SECRET), Arc::default());
            let handled = Arc::new(AtomicUsize::new(0));
            let counter = handled.clone();
            let echo = move |body: Bytes| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { body }
            };
            let router = Router::new().route("/slack/commands", post(echo)).layer(
                axum::middleware::from_fn_with_state(state, verify_signature),
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Guarded {
                router,
                handled,
                runtime,
                _data: data,
            }
        }

        /// Sends `body` with these headers; the answer's status and body, and
        /// whether the handler ran.
        fn send(
            &self,
            body: &[u8],
            timestamp: &str,
            signature: &str,
        ) -> (StatusCode, Vec<u8>, bool) {
            let before = self.handled.load(Ordering::SeqCst);
            let request = Request::post("/slack/commands")
                .header(
                    SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP,
                    timestamp,
                )
                .header(
                    SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER,
                    signature,
                )
                .body(Body::from(body.to_vec()))
                .unwrap();
            let (status, answer) = self.runtime.block_on(async {
                let response = self.router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let answer = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (status, answer.to_vec())
            });
            (status, answer, self.handled.load(Ordering::SeqCst) > before)
        }
    }

    fn cases(count: u32) -> Config {
        Config {
            source_file: Some(file!()),
            ..Config::with_cases(count)
        }
    }

    fn sign(body: &[u8], timestamp: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("v0:{timestamp}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// Bodies as Slack sends them (form-encoded, JSON) and anything else in UTF-8.
    fn body() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,300}",
            proptest::collection::vec(("[a-z_]{1,12}", "\\PC{0,40}"), 0..8)
                .prop_map(|fields| serde_urlencoded::to_string(fields).unwrap()),
            "[ -~]{0,2000}",
        ]
    }

    fn refused_unhandled(
        answer: (StatusCode, Vec<u8>, bool),
        what: &str,
    ) -> Result<(), TestCaseError> {
        let (status, body, handled) = answer;
        prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", what);
        prop_assert!(!handled, "{} reached the handler", what);
        let text = String::from_utf8_lossy(&body);
        prop_assert!(text.contains("Slack signature"), "{}: {}", what, text);
        Ok(())
    }

    #[test]
    fn a_fresh_signed_request_passes_unchanged_and_any_changed_byte_is_refused() {
        let guarded = Guarded::new();
        let tampering = (
            body(),
            -290i64..=290,
            any::<proptest::sample::Index>(),
            1u8..=255,
            any::<proptest::sample::Index>(),
            proptest::sample::select(b"0123456789abcdefABv=".to_vec()),
        );
        TestRunner::new(cases(256))
            .run(
                &tampering,
                |(body, skew, flip_at, flip, sign_at, replacement)| {
                    let timestamp = (now() + skew).to_string();
                    let signature = sign(body.as_bytes(), &timestamp);

                    let (status, echoed, handled) =
                        guarded.send(body.as_bytes(), &timestamp, &signature);
                    prop_assert_eq!(status, StatusCode::OK);
                    prop_assert!(handled);
                    prop_assert_eq!(
                        echoed,
                        body.as_bytes().to_vec(),
                        "the handler got another body"
                    );

                    let mut changed = body.clone().into_bytes();
                    if changed.is_empty() {
                        changed.push(flip);
                    } else {
                        changed[flip_at.index(body.len())] ^= flip;
                    }
                    refused_unhandled(
                        guarded.send(&changed, &timestamp, &signature),
                        "changed body",
                    )?;

                    let mut forged = signature.clone().into_bytes();
                    let at = sign_at.index(forged.len());
                    prop_assume!(forged[at] != replacement);
                    forged[at] = replacement;
                    let forged = String::from_utf8(forged).unwrap();
                    refused_unhandled(
                        guarded.send(body.as_bytes(), &timestamp, &forged),
                        "changed signature",
                    )?;
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn a_signed_timestamp_is_accepted_only_within_five_minutes_either_way() {
        let guarded = Guarded::new();
        let timestamps = (
            0..5u8,
            prop_oneof![-600i64..600, -100_000_000i64..100_000_000],
            prop_oneof![
                any::<i64>(),
                Just(i64::MIN),
                Just(i64::MIN + 1),
                Just(i64::MAX),
                Just(0)
            ],
            "[ -~]{0,24}",
        );
        TestRunner::new(cases(256))
            .run(&timestamps, |(form, skew, raw, text)| {
                let timestamp = match form {
                    0 => (now() + skew).to_string(),
                    1 => format!("+{}", now() + skew),
                    2 => format!("00{}", now() + skew),
                    3 => raw.to_string(),
                    _ => text,
                };
                prop_assume!(axum::http::HeaderValue::from_str(&timestamp).is_ok());
                let age = timestamp
                    .parse::<i64>()
                    .ok()
                    .and_then(|at| now().checked_sub(at))
                    .map(i64::unsigned_abs);
                // Leave out the second either side of the edge, which the clock may cross.
                prop_assume!(!matches!(age, Some(296..=304)));
                let body = b"command=%2Fdevops&text=help";
                let answer = guarded.send(body, &timestamp, &sign(body, &timestamp));
                match age {
                    Some(age) if age <= 295 => {
                        prop_assert_eq!(answer.0, StatusCode::OK, "{}", timestamp);
                        prop_assert!(answer.2);
                    }
                    _ => refused_unhandled(answer, &format!("timestamp {timestamp}"))?,
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn requests_without_a_signature_or_timestamp_are_refused() {
        let guarded = Guarded::new();
        let timestamp = now().to_string();
        let signature = sign(b"text=help", &timestamp);
        refused_unhandled(guarded.send(b"text=help", "", &signature), "no timestamp").unwrap();
        refused_unhandled(guarded.send(b"text=help", &timestamp, ""), "no signature").unwrap();
        let not_utf8 = [0xff, 0xfe];
        let signature = sign(&not_utf8, &timestamp);
        refused_unhandled(guarded.send(&not_utf8, &timestamp, &signature), "not UTF-8").unwrap();
    }
}
