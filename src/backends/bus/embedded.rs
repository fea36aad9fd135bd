//! An in-process bus that keeps every delivery in SQLite until its target has
//! handled it, so a restart loses nothing, and publishes each event id once.
//! Envelopes are sealed at rest: a `devops.request` for putSecret carries the
//! secret value.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::{broadcast, Notify};

use super::{check_size, EventBus, Routes};
use crate::backends::sqlite::{now_millis, Database};
use crate::backends::BackendError;
use crate::domain::events::Envelope;
use crate::domain::secret::{Sealed, Sealer};

/// An event published again with the same id within this time (a publisher
/// that crashed before recording that it had published) is published once.
const REMEMBER_IDS_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct EmbeddedBus {
    db: Database,
    sealer: Sealer,
    /// The handlers hold the bus (they publish), so the routes are let go
    /// when the bus stops, or neither would ever be dropped.
    routes: RwLock<Option<Routes>>,
    wake: Notify,
    published: broadcast::Sender<Envelope>,
}

impl EmbeddedBus {
    pub fn new(db: Database, sealer: Sealer) -> Arc<Self> {
        Arc::new(Self {
            db,
            sealer,
            routes: RwLock::new(None),
            wake: Notify::new(),
            published: broadcast::channel(1024).0,
        })
    }

    /// Handlers depend on the bus (they publish), so routes are attached after construction.
    pub fn attach(&self, routes: Routes) {
        let mut attached = self
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if attached.replace(routes).is_some() {
            tracing::warn!("bus routes attached twice; keeping the last");
        }
    }

    fn routes(&self) -> std::sync::RwLockReadGuard<'_, Option<Routes>> {
        self.routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every envelope published from now on, for observers such as tests.
    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.published.subscribe()
    }

    /// Delivers queued events until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut pruned: Option<tokio::time::Instant> = None;
        loop {
            if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned = Some(tokio::time::Instant::now());
                if let Err(error) = self.forget_old_ids().await {
                    tracing::warn!(%error, "bus: forgetting old event ids failed");
                }
            }
            let delivered = self.deliver_due().await;
            if delivered == 0 {
                tokio::select! {
                    _ = &mut shutdown => {
                        self.routes
                            .write()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .take();
                        return;
                    }
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn forget_old_ids(&self) -> Result<(), BackendError> {
        let cutoff = now_millis() - i64::try_from(REMEMBER_IDS_FOR.as_millis()).unwrap_or(i64::MAX);
        self.db
            .execute("DELETE FROM bus_published WHERE at < ?1", (cutoff,))
            .await
            .map(|_| ())
    }

    async fn deliver_due(&self) -> usize {
        let Some(routes) = self.routes().clone() else {
            return 0;
        };
        let due = match self.due().await {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "bus: reading deliveries failed");
                return 0;
            }
        };
        let count = due.len();
        for (seq, target, sealed, attempts) in due {
            let outcome = match self.open(&sealed) {
                Ok(event) => match routes.handler(&target) {
                    Some(handler) => handler.handle(&event).await,
                    None => Err(BackendError::Refused(format!("no handler named {target}"))),
                },
                Err(error) => Err(error),
            };
            if let Err(error) = self.settle(seq, attempts, outcome).await {
                tracing::error!(%error, "bus: recording a delivery failed");
            }
        }
        count
    }

    async fn due(&self) -> Result<Vec<(i64, String, Sealed, u32)>, BackendError> {
        self.db
            .run(|conn| {
                let rows = conn
                    .prepare_cached(
                        "SELECT seq, target, sealed_envelope, attempts FROM bus_deliveries
                         WHERE dead = 0 AND next_at <= ?1 ORDER BY seq LIMIT 100",
                    )?
                    .query_map([now_millis()], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            Sealed::from_stored(row.get(2)?),
                            row.get(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
    }

    fn open(&self, sealed: &Sealed) -> Result<Envelope, BackendError> {
        let bytes = self
            .sealer
            .open(sealed)
            .map_err(|error| BackendError::Refused(error.to_string()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn settle(
        &self,
        seq: i64,
        attempts: u32,
        outcome: Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        match outcome {
            Ok(()) => self
                .db
                .execute("DELETE FROM bus_deliveries WHERE seq = ?1", (seq,))
                .await
                .map(|_| ()),
            Err(BackendError::Unavailable(error)) => {
                let backoff = 250i64.saturating_mul(1 << attempts.min(8));
                tracing::warn!(%error, attempts, "bus: delivery failed, will retry");
                self.db.execute("UPDATE bus_deliveries SET attempts = attempts + 1, next_at = ?1, last_error = ?2 WHERE seq = ?3", (now_millis() + backoff, error, seq)).await.map(|_| ())
            }
            Err(error) => {
                tracing::error!(%error, "bus: delivery cannot succeed, kept as dead letter");
                let error = error.to_string();
                self.db
                    .execute(
                        "UPDATE bus_deliveries SET dead = 1, last_error = ?1 WHERE seq = ?2",
                        (error, seq),
                    )
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, event: &Envelope) -> Result<(), BackendError> {
        check_size(event)?;
        let targets = self
            .routes()
            .as_ref()
            .map(|routes| routes.targets_for(event))
            .unwrap_or_default();
        let sealed = self
            .sealer
            .seal(&serde_json::to_vec(event)?)
            .as_stored()
            .to_string();
        let (id, count) = (event.id.clone(), targets.len());
        let first_time = self
            .db
            .run(move |conn| {
                let first_time = conn
                    .prepare_cached("INSERT OR IGNORE INTO bus_published (id, at) VALUES (?1, ?2)")?
                    .execute(params![id, now_millis()])?
                    == 1;
                if first_time {
                    for target in &targets {
                        conn.prepare_cached(
                            "INSERT INTO bus_deliveries (target, sealed_envelope, next_at) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![target, sealed, now_millis()])?;
                    }
                }
                Ok(first_time)
            })
            .await?;
        if !first_time {
            tracing::info!(detail_type = %event.detail_type, id = %event.id, "event already published; not published again");
            return Ok(());
        }
        tracing::info!(detail_type = %event.detail_type, source = %event.source, id = %event.id, targets = count, "event published");
        // Nobody listening is normal outside tests.
        let _ = self.published.send(event.clone());
        self.wake.notify_one();
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }
}
