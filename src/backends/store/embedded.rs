//! The store on SQLite. Conditional writes are `UPDATE … WHERE version = ?`
//! in the same piece of database work that appends the effects, undone
//! together if it fails; concurrent calls share a transaction (see `Database`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{Effect, EffectId, Execution, QueuedEffect, Store, ThreadRef, UpdateOutcome};
use crate::backends::sqlite::{now_millis, Database};
use crate::backends::BackendError;
use crate::domain::events::Envelope;
use crate::domain::names::RequestId;
use crate::domain::request::Request;

pub struct SqliteStore {
    db: Database,
}

impl SqliteStore {
    /// Opens the store for the one process that owns `db`. Whatever a
    /// previous run had leased, it can no longer be working on: those effects
    /// are due now, and come back `interrupted`.
    pub fn open(db: Database) -> Result<Self, BackendError> {
        db.run_blocking(|conn| {
            conn.prepare_cached("UPDATE outbox SET next_at = ?1 WHERE claimed = 1 AND dead = 0")?
                .execute([now_millis()])?;
            Ok(())
        })?;
        Ok(Self { db })
    }
}

/// Appends `effects` to their lanes; a request's lanes are filed under when it was created.
fn append_effects(tx: &Connection, effects: &[Effect]) -> Result<(), BackendError> {
    let now = now_millis();
    for effect in effects {
        tx.prepare_cached(
            "INSERT INTO outbox (lane, lane_since, payload, next_at) VALUES
             (?1, COALESCE((SELECT created_at FROM requests WHERE id = ?2), ''), ?3, ?4)",
        )?
        .execute(params![
            effect.lane(),
            effect.request_id().map(RequestId::to_string),
            serde_json::to_string(effect)?,
            now
        ])?;
    }
    Ok(())
}

/// Whether `key` was claimed and its time is not up by `now`.
fn is_claimed(conn: &Connection, key: &str, now: i64) -> Result<bool, BackendError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM dedupe WHERE key = ?1 AND expires_at > ?2")?
        .exists(params![key, now])?)
}

/// Claims `key` until `expires_at`; false if it was claimed and its time is not up by `now`.
fn claim_key(
    conn: &Connection,
    key: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, BackendError> {
    conn.prepare_cached("DELETE FROM dedupe WHERE key = ?1 AND expires_at <= ?2")?
        .execute(params![key, now])?;
    let inserted = conn
        .prepare_cached("INSERT OR IGNORE INTO dedupe (key, expires_at) VALUES (?1, ?2)")?
        .execute(params![key, expires_at])?;
    Ok(inserted == 1)
}

fn delete_effect(conn: &Connection, seq: i64) -> Result<(), BackendError> {
    conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
        .execute([seq])?;
    Ok(())
}

fn seq(id: &EffectId) -> Result<i64, BackendError> {
    id.as_str()
        .parse()
        .map_err(|_| BackendError::Refused(format!("`{}` is not an outbox entry", id.as_str())))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// The requests whose bodies `sql` selects, in its order.
    async fn requests_found<P>(
        &self,
        sql: &'static str,
        values: P,
    ) -> Result<Vec<Request>, BackendError>
    where
        P: rusqlite::Params + Clone + Send + 'static,
    {
        let rows = self
            .db
            .run(move |conn| {
                Ok(conn
                    .prepare_cached(sql)?
                    .query_map(values.clone(), |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?)
            })
            .await?;
        decode_requests(rows)
    }
}

fn decode_requests(rows: Vec<String>) -> Result<Vec<Request>, BackendError> {
    rows.iter()
        .map(|body| serde_json::from_str(body).map_err(BackendError::from))
        .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_request(
        &self,
        request: &Request,
        effects: &[Effect],
    ) -> Result<(), BackendError> {
        let (id, requester, status, created_at, version, body, expires_at) = (
            request.id.to_string(),
            request.requester.identity(),
            request.status.as_str(),
            request.created_at.to_rfc3339(),
            request.version as i64,
            serde_json::to_string(request)?,
            request.expires_at.timestamp_millis(),
        );
        let effects = effects.to_vec();
        self.db
            .run(move |conn| {
                let inserted = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO requests (id, requester, status, created_at, version, body, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![id, requester, status, created_at, version, body, expires_at])?;
                if inserted == 0 {
                    return Err(BackendError::Refused(format!("request {id} already exists")));
                }
                append_effects(conn, &effects)
            })
            .await
    }

    async fn request(&self, id: &RequestId) -> Result<Option<Request>, BackendError> {
        let id = id.to_string();
        let body: Option<String> = self.db.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT body FROM requests WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?)
        })?;
        body.map(|body| serde_json::from_str(&body).map_err(BackendError::from))
            .transpose()
    }

    async fn update_request_claiming(
        &self,
        request: &Request,
        effects: &[Effect],
        claim: Option<(&str, Duration)>,
    ) -> Result<UpdateOutcome, BackendError> {
        let mut stored = request.clone();
        stored.version = request.version + 1;
        let (status, version, body, id, seen) = (
            stored.status.as_str(),
            stored.version as i64,
            serde_json::to_string(&stored)?,
            request.id.to_string(),
            request.version as i64,
        );
        let effects = effects.to_vec();
        let now = now_millis();
        let claiming = claim.map(|(key, ttl)| (key.to_string(), now.saturating_add(millis(ttl))));
        self.db
            .run(move |conn| {
                if let Some((key, _)) = &claiming {
                    if is_claimed(conn, key, now)? {
                        return Ok(UpdateOutcome::Repeated);
                    }
                }
                let updated = conn
                    .prepare_cached(
                        "UPDATE requests SET status = ?1, version = ?2, body = ?3 WHERE id = ?4 AND version = ?5",
                    )?
                    .execute(params![status, version, body, id, seen])?;
                if updated == 0 {
                    return Ok(UpdateOutcome::Stale);
                }
                if let Some((key, expires_at)) = &claiming {
                    claim_key(conn, key, now, *expires_at)?;
                }
                append_effects(conn, &effects)?;
                Ok(UpdateOutcome::Written)
            })
            .await
    }

    async fn requests_by(
        &self,
        identity: &str,
        limit: usize,
    ) -> Result<Vec<Request>, BackendError> {
        self.requests_found(
            "SELECT body FROM requests WHERE requester = ?1 ORDER BY created_at DESC LIMIT ?2",
            (identity.to_string(), limit as i64),
        )
        .await
    }

    async fn pending_requests(&self) -> Result<Vec<Request>, BackendError> {
        self.requests_found(
            "SELECT body FROM requests INDEXED BY requests_pending_by_expiry
             WHERE status = 'pending' ORDER BY created_at",
            (),
        )
        .await
    }

    async fn expired_requests(&self, now: DateTime<Utc>) -> Result<Vec<Request>, BackendError> {
        self.requests_found(
            // Without statistics SQLite would rather walk every pending request.
            "SELECT body FROM requests INDEXED BY requests_pending_by_expiry
             WHERE status = 'pending' AND expires_at <= ?1 ORDER BY expires_at",
            (now.timestamp_millis(),),
        )
        .await
    }

    async fn card_posted(
        &self,
        effect: &EffectId,
        id: &RequestId,
        thread: &ThreadRef,
    ) -> Result<(), BackendError> {
        let (seq, id, thread) = (seq(effect)?, id.to_string(), thread.clone());
        self.db
            .run(move |conn| {
                let stored = conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO request_threads (request_created_at, request_id, platform, channel, ts)
                         SELECT created_at, id, ?2, ?3, ?4 FROM requests WHERE id = ?1",
                    )?
                    .execute(params![id, thread.platform, thread.channel, thread.ts])?;
                if stored == 0 {
                    return Err(BackendError::Refused(format!("request {id} was not found")));
                }
                delete_effect(conn, seq)
            })
            .await
    }

    async fn thread(&self, id: &RequestId) -> Result<Option<ThreadRef>, BackendError> {
        let id = id.to_string();
        self.db.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT t.platform, t.channel, t.ts FROM requests AS r JOIN request_threads AS t
                     ON t.request_created_at = r.created_at AND t.request_id = r.id WHERE r.id = ?1",
                )?
                .query_row([id], |row| {
                    Ok(ThreadRef {
                        platform: row.get(0)?,
                        channel: row.get(1)?,
                        ts: row.get(2)?,
                    })
                })
                .optional()?)
        })
    }

    async fn claim_once(
        &self,
        key: &str,
        ttl: Duration,
        effects: &[Effect],
    ) -> Result<bool, BackendError> {
        let now = now_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let (key, effects) = (key.to_string(), effects.to_vec());
        self.db
            .run(move |conn| {
                let claimed = claim_key(conn, &key, now, expires_at)?;
                if claimed {
                    append_effects(conn, &effects)?;
                }
                Ok(claimed)
            })
            .await
    }

    async fn enqueue(&self, effects: &[Effect]) -> Result<(), BackendError> {
        let effects = effects.to_vec();
        self.db
            .run(move |conn| append_effects(conn, &effects))
            .await
    }

    async fn start_execution(
        &self,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Execution, BackendError> {
        let request_id = request_id.to_string();
        let found: Option<(i64, Option<String>)> = self
            .db
            .run(move |conn| {
                let inserted = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO executions (request_id, started_at) VALUES (?1, ?2)",
                    )?
                    .execute(params![request_id, now.timestamp_millis()])?;
                if inserted == 1 {
                    return Ok(None);
                }
                Ok(Some(
                    conn.prepare_cached(
                        "SELECT started_at, completion FROM executions WHERE request_id = ?1",
                    )?
                    .query_row([&request_id], |row| Ok((row.get(0)?, row.get(1)?)))?,
                ))
            })
            .await?;
        Ok(match found {
            None => Execution::Started,
            Some((_, Some(completion))) => {
                Execution::Finished(Box::new(serde_json::from_str(&completion)?))
            }
            Some((started_at, None)) => Execution::Running {
                since: DateTime::from_timestamp_millis(started_at).unwrap_or(now),
            },
        })
    }

    async fn finish_execution(
        &self,
        request_id: &str,
        completion: &Envelope,
    ) -> Result<(), BackendError> {
        let (request_id, completion) = (request_id.to_string(), serde_json::to_string(completion)?);
        self.db
            .execute(
                "UPDATE executions SET completion = ?1 WHERE request_id = ?2",
                (completion, request_id),
            )
            .await
            .map(|_| ())
    }

    async fn abandon_execution(&self, request_id: &str) -> Result<(), BackendError> {
        let request_id = request_id.to_string();
        self.db
            .execute(
                "DELETE FROM executions WHERE request_id = ?1 AND completion IS NULL",
                (request_id,),
            )
            .await
            .map(|_| ())
    }

    async fn claim_due_effects(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<QueuedEffect>, BackendError> {
        let leased_until = now.timestamp_millis().saturating_add(millis(lease));
        self.db
            .run(move |conn| {
                // Only the oldest live effect of a lane may run, and only when its time has
                // come; the longest-waiting first. Effects waiting for later (a rate limit,
                // a backoff) are not even looked at.
                let rows = conn
                    .prepare_cached(
                        "SELECT seq, payload, attempts, claimed FROM outbox AS o
                         WHERE dead = 0 AND next_at <= ?1
                           AND seq = (SELECT MIN(seq) FROM outbox
                                      WHERE lane_since = o.lane_since AND lane = o.lane AND dead = 0)
                         ORDER BY next_at, seq LIMIT ?2",
                    )?
                    .query_map(params![now.timestamp_millis(), limit as i64], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, u32>(2)?,
                            row.get::<_, bool>(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut due = Vec::with_capacity(rows.len());
                for (seq, payload, attempts, interrupted) in rows {
                    conn.prepare_cached(
                        "UPDATE outbox SET next_at = ?1, claimed = 1 WHERE seq = ?2",
                    )?
                    .execute(params![leased_until, seq])?;
                    due.push(QueuedEffect {
                        id: EffectId::new(seq.to_string()),
                        effect: serde_json::from_str(&payload)?,
                        attempts,
                        interrupted,
                    });
                }
                Ok(due)
            })
            .await
    }

    async fn next_effect_at(&self) -> Result<Option<DateTime<Utc>>, BackendError> {
        let next: Option<i64> = self
            .db
            .run(|conn| {
                Ok(conn
                    .prepare_cached("SELECT MIN(next_at) FROM outbox WHERE dead = 0")?
                    .query_row([], |row| row.get(0))?)
            })
            .await?;
        Ok(next.and_then(DateTime::from_timestamp_millis))
    }

    async fn effect_done(&self, id: &EffectId) -> Result<(), BackendError> {
        let seq = seq(id)?;
        self.db.run(move |conn| delete_effect(conn, seq)).await
    }

    async fn effect_retry(
        &self,
        id: &EffectId,
        at: DateTime<Utc>,
        error: &str,
        outcome_unknown: bool,
    ) -> Result<(), BackendError> {
        let (seq, error) = (seq(id)?, error.to_string());
        self.db.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ?1, last_error = ?2, claimed = ?3 WHERE seq = ?4", (at.timestamp_millis(), error, outcome_unknown, seq)).await.map(|_| ())
    }

    async fn effect_dead(&self, id: &EffectId, error: &str) -> Result<(), BackendError> {
        let (seq, error) = (seq(id)?, error.to_string());
        self.db.execute("UPDATE outbox SET dead = 1, attempts = attempts + 1, last_error = ?1 WHERE seq = ?2", (error, seq)).await.map(|_| ())
    }

    async fn outbox_depth(&self) -> Result<u64, BackendError> {
        let depth: i64 = self
            .db
            .run(|conn| {
                Ok(conn
                    .prepare_cached("SELECT COUNT(*) FROM outbox WHERE dead = 0")?
                    .query_row([], |row| row.get(0))?)
            })
            .await?;
        Ok(depth.max(0) as u64)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }
}
