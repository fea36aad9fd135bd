//! The local stack registry: the stacks named in `[embedded] stacks`, with
//! their parameters, as CloudFormation would keep them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{StackUpdate, StacksBackend};
use crate::backends::sqlite::Database;
use crate::backends::BackendError;

pub struct LocalStacks {
    db: Database,
}

impl LocalStacks {
    /// Registers `stacks` (existing ones keep their state) as `CREATE_COMPLETE`.
    pub fn new(db: Database, stacks: &[String]) -> Result<Self, BackendError> {
        let stacks = stacks.to_vec();
        db.run_blocking(move |conn| {
            for name in &stacks {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO stacks (name, status, parameters, updated_at) VALUES (?1, 'CREATE_COMPLETE', '{}', ?2)",
                )?
                .execute(params![name, chrono::Utc::now().to_rfc3339()])?;
            }
            Ok(())
        })?;
        Ok(Self { db })
    }

    /// Sets a stack's status; operators use it to simulate a stack mid-update.
    pub fn set_status(&self, stack_name: &str, status: &str) -> Result<(), BackendError> {
        let (stack_name, status) = (stack_name.to_string(), status.to_string());
        self.db.run_blocking(move |conn| {
            conn.prepare_cached("UPDATE stacks SET status = ?1 WHERE name = ?2")?
                .execute(params![status, stack_name])?;
            Ok(())
        })
    }
}

#[async_trait]
impl StacksBackend for LocalStacks {
    async fn status(&self, stack_name: &str) -> Result<Option<String>, BackendError> {
        self.db.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT status FROM stacks WHERE name = ?1")?
                .query_row([stack_name], |row| row.get(0))
                .optional()?)
        })
    }

    async fn update(
        &self,
        stack_name: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<StackUpdate, BackendError> {
        let (stack_name, parameters) = (stack_name.to_string(), parameters.clone());
        self.db
            .run(move |conn| {
                let stored: Option<(String, String)> = conn
                    .prepare_cached("SELECT status, parameters FROM stacks WHERE name = ?1")?
                    .query_row([&stack_name], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let Some((status, stored_parameters)) = stored else {
                    return Err(BackendError::NotFound(format!(
                        "Stack with id {stack_name} does not exist"
                    )));
                };
                if status.ends_with("_IN_PROGRESS") {
                    return Err(BackendError::Refused(format!(
                        "stack {stack_name} is in {status} state; try again when it has finished"
                    )));
                }
                let mut merged: BTreeMap<String, String> =
                    serde_json::from_str(&stored_parameters)?;
                let before = merged.clone();
                merged.extend(parameters.clone());
                if merged == before {
                    return Ok(StackUpdate {
                        action: "no_changes",
                        current_status: status,
                    });
                }
                conn.prepare_cached(
                    "UPDATE stacks SET status = 'UPDATE_COMPLETE', parameters = ?1, updated_at = ?2 WHERE name = ?3",
                )?
                .execute(params![
                    serde_json::to_string(&merged)?,
                    chrono::Utc::now().to_rfc3339(),
                    stack_name
                ])?;
                Ok(StackUpdate {
                    action: "updated",
                    current_status: "UPDATE_COMPLETE".to_string(),
                })
            })
            .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }
}
