//! The event bus. Rules route envelopes to targets the way EventBridge rules
//! do (detail-type and source prefix); targets are handlers in this process.

pub mod aws;
pub mod embedded;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::BackendError;
use crate::domain::events::Envelope;

/// EventBridge's limit for one event, as it counts it.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The size of an event as EventBridge counts it for `PutEvents`: time,
/// source, detail-type, detail and resources, in UTF-8 bytes.
pub fn event_size(event: &Envelope) -> usize {
    const TIME_BYTES: usize = 14;
    TIME_BYTES
        + event.source.len()
        + event.detail_type.len()
        + event.detail.to_string().len()
        + event.resources.iter().map(String::len).sum::<usize>()
}

/// Refuses, before anything is sent, an event EventBridge would not accept.
pub fn check_size(event: &Envelope) -> Result<(), BackendError> {
    let size = event_size(event);
    if size > MAX_EVENT_BYTES {
        return Err(BackendError::Refused(format!(
            "{} event is {size} bytes; EventBridge accepts at most {MAX_EVENT_BYTES}",
            event.detail_type
        )));
    }
    Ok(())
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Accepts the event for delivery (durably, when this returns Ok).
    async fn publish(&self, event: &Envelope) -> Result<(), BackendError>;
    /// Accepts all of `events`, or says which could not be accepted.
    async fn publish_batch(&self, events: &[Envelope]) -> Result<(), BackendError> {
        for event in events {
            self.publish(event).await?;
        }
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError>;
}

/// A consumer of events: the executor, the notifier.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Err means "deliver again later"; a malformed event is handled (and logged), not an Err.
    async fn handle(&self, event: &Envelope) -> Result<(), BackendError>;
}

/// An EventBridge-style rule: exact detail-type, source prefix.
#[derive(Debug, Clone)]
pub struct Rule {
    pub detail_type: &'static str,
    pub source_prefix: &'static str,
    pub target: &'static str,
}

impl Rule {
    pub fn matches(&self, event: &Envelope) -> bool {
        event.detail_type == self.detail_type && event.source.starts_with(self.source_prefix)
    }
}

/// Rules plus the handlers they name.
#[derive(Clone, Default)]
pub struct Routes {
    rules: Vec<Rule>,
    handlers: HashMap<&'static str, Arc<dyn EventHandler>>,
}

impl Routes {
    pub fn route(mut self, rule: Rule, handler: Arc<dyn EventHandler>) -> Self {
        self.handlers.insert(rule.target, handler);
        self.rules.push(rule);
        self
    }

    pub fn targets_for(&self, event: &Envelope) -> Vec<&'static str> {
        self.rules
            .iter()
            .filter(|rule| rule.matches(event))
            .map(|rule| rule.target)
            .collect()
    }

    pub fn handler(&self, target: &str) -> Option<Arc<dyn EventHandler>> {
        self.handlers.get(target).cloned()
    }

    /// Delivers to every matching handler now; used by the `/events` ingress.
    pub async fn dispatch(&self, event: &Envelope) -> Result<usize, BackendError> {
        let targets = self.targets_for(event);
        for target in &targets {
            if let Some(handler) = self.handler(target) {
                handler.handle(event).await?;
            }
        }
        Ok(targets.len())
    }
}
