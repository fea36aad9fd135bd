//! EventBridge `PutEvents`: batches of at most ten, oversized events refused
//! before sending, and entries that failed retried on their own.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, PutEventsResultEntry};
use aws_sdk_eventbridge::Client;

use super::{check_size, EventBus};
use crate::backends::aws::classify;
use crate::backends::BackendError;
use crate::domain::events::Envelope;

/// EventBridge takes at most this many entries per `PutEvents`.
pub const MAX_BATCH: usize = 10;
const ATTEMPTS: u32 = 4;

pub struct EventBridgeBus {
    client: Client,
    bus_name: String,
}

/// The positions of the entries EventBridge did not accept.
pub fn failed_positions(results: &[PutEventsResultEntry], sent: usize) -> Vec<usize> {
    // A result list shorter than what was sent leaves the rest unconfirmed.
    (0..sent)
        .filter(|&position| {
            results
                .get(position)
                .is_none_or(|result| result.error_code().is_some() || result.event_id().is_none())
        })
        .collect()
}

impl EventBridgeBus {
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        Self {
            client,
            bus_name: bus_name.into(),
        }
    }

    fn entry(&self, event: &Envelope) -> Result<PutEventsRequestEntry, BackendError> {
        let time = chrono::DateTime::parse_from_rfc3339(&event.time)
            .map(|at| aws_sdk_eventbridge::primitives::DateTime::from_millis(at.timestamp_millis()))
            .ok();
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(&event.source)
            .detail_type(&event.detail_type)
            .detail(serde_json::to_string(&event.detail)?)
            .set_resources((!event.resources.is_empty()).then(|| event.resources.clone()))
            .set_time(time)
            .build())
    }

    /// Sends one batch, resending just the entries that failed, a few times.
    async fn put_batch(&self, mut pending: Vec<PutEventsRequestEntry>) -> Result<(), BackendError> {
        let mut last_problem = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let output = self
                .client
                .put_events()
                .set_entries(Some(pending.clone()))
                .send()
                .await
                .map_err(|e| classify("EventBridge PutEvents", e))?;
            if output.failed_entry_count == 0 {
                return Ok(());
            }
            let results = output.entries();
            let failed = failed_positions(results, pending.len());
            if let Some(result) = failed.first().and_then(|&position| results.get(position)) {
                last_problem = format!(
                    "{}: {}",
                    result.error_code().unwrap_or("unknown"),
                    result.error_message().unwrap_or_default()
                );
            }
            tracing::warn!(failed = failed.len(), attempt, problem = %last_problem, "EventBridge refused some entries; resending those");
            pending = failed
                .into_iter()
                .filter_map(|position| pending.get(position).cloned())
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(BackendError::Unavailable(format!(
            "EventBridge did not accept {} event(s) after {ATTEMPTS} attempts ({last_problem})",
            pending.len()
        )))
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, event: &Envelope) -> Result<(), BackendError> {
        self.publish_batch(std::slice::from_ref(event)).await
    }

    async fn publish_batch(&self, events: &[Envelope]) -> Result<(), BackendError> {
        for event in events {
            check_size(event)?;
        }
        for chunk in events.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .map(|event| self.entry(event))
                .collect::<Result<Vec<_>, _>>()?;
            self.put_batch(entries).await?;
            for event in chunk {
                tracing::info!(detail_type = %event.detail_type, source = %event.source, "event published on EventBridge");
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.client
            .describe_event_bus()
            .name(&self.bus_name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("EventBridge DescribeEventBus", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(id: &str) -> PutEventsResultEntry {
        PutEventsResultEntry::builder().event_id(id).build()
    }

    fn refused() -> PutEventsResultEntry {
        PutEventsResultEntry::builder()
            .error_code("InternalFailure")
            .error_message("try again")
            .build()
    }

    #[test]
    fn only_the_entries_that_failed_are_sent_again() {
        let results = [accepted("a"), refused(), accepted("c"), refused()];
        assert_eq!(failed_positions(&results, 4), vec![1, 3]);
        assert_eq!(failed_positions(&results[..2], 3), vec![1, 2]);
        assert!(failed_positions(&[accepted("a")], 1).is_empty());
    }
}
