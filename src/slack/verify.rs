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
    if let Err(error) = verifier.verify(signature, text, timestamp) {
        if let Some(refused) = state.refusals.note() {
            tracing::warn!(%error, path = %parts.uri.path(), refused, "Slack signatures refused (one warning per {WARN_EVERY_SECS} s)");
        }
        return refuse(StatusCode::UNAUTHORIZED, "invalid or stale Slack signature");
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
