//! The event bus. Rules route envelopes to targets the way EventBridge rules
//! do (detail-type and source prefix); targets are handlers in this process.

pub mod embedded;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::BackendError;
use crate::domain::events::Envelope;

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Accepts the event for delivery (durably, when this returns Ok).
    async fn publish(&self, event: &Envelope) -> Result<(), BackendError>;
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
