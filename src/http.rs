//! The HTTP surface besides Slack: health, readiness, metrics and the
//! EventBridge API-destination ingress.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::backends::bus::{EventBus, Routes, MAX_EVENT_BYTES};
use crate::backends::secrets::SecretsBackend;
use crate::backends::stacks::StacksBackend;
use crate::backends::store::Store;
use crate::backends::BackendError;
use crate::domain::events::Envelope;
use crate::metrics::Metrics;

pub const API_KEY_HEADER: &str = "x-api-key";

#[derive(Clone)]
pub struct CoreState {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn EventBus>,
    pub secrets: Arc<dyn SecretsBackend>,
    pub stacks: Arc<dyn StacksBackend>,
    pub routes: Routes,
    pub events_api_key: Option<String>,
    pub metrics: Arc<Metrics>,
}

/// Errors of the `/events` boundary, each with its status and a specific message.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("DEVOPSBOT_EVENTS_API_KEY is not configured")]
    NotConfigured,
    #[error("missing or wrong API key in the x-api-key header")]
    Unauthorized,
    #[error("the body is not an EventBridge envelope: {0}")]
    Malformed(String),
    #[error("the event could not be handled now; deliver it again ({0})")]
    Unavailable(BackendError),
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let status = match &self {
            IngressError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngressError::Malformed(_) => StatusCode::BAD_REQUEST,
            IngressError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            Json(json!({"ok": false, "error": self.to_string()})),
        )
            .into_response()
    }
}

pub fn router(state: CoreState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/events",
            post(events).layer(DefaultBodyLimit::max(MAX_EVENT_BYTES)),
        )
        .with_state(state)
}

async fn readyz(State(state): State<CoreState>) -> Response {
    let checks = [
        ("store", state.store.ping().await),
        ("bus", state.bus.ping().await),
        ("secrets", state.secrets.ping().await),
        ("stacks", state.stacks.ping().await),
    ];
    let failing: Vec<String> = checks
        .iter()
        .filter_map(|(name, result)| {
            result
                .as_ref()
                .err()
                .map(|error| format!("{name}: {error}"))
        })
        .collect();
    if failing.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "failing": failing})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<CoreState>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn events(
    State(state): State<CoreState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, IngressError> {
    let expected = state
        .events_api_key
        .as_deref()
        .ok_or(IngressError::NotConfigured)?;
    let given = headers
        .get(API_KEY_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if given.ct_eq(expected.as_bytes()).unwrap_u8() != 1 {
        return Err(IngressError::Unauthorized);
    }
    let envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|error| IngressError::Malformed(error.to_string()))?;
    if !envelope.detail.is_object() {
        return Err(IngressError::Malformed(
            "`detail` must be a JSON object".into(),
        ));
    }
    state.metrics.event(&envelope.detail_type, "received");
    let targets = state
        .routes
        .dispatch(&envelope)
        .await
        .map_err(IngressError::Unavailable)?;
    if targets == 0 {
        tracing::info!(detail_type = %envelope.detail_type, source = %envelope.source, "event has no rule here; accepted and not routed");
    }
    Ok(Json(json!({"ok": true, "routedTo": targets})).into_response())
}

/// Counts and times every request by route (known routes only, so no input becomes a label).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = match request.uri().path() {
        "/slack/commands" => "/slack/commands",
        "/slack/interactions" => "/slack/interactions",
        "/slack/events" => "/slack/events",
        "/events" => "/events",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
