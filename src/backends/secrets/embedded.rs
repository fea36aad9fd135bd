//! The local vault: values sealed with the data directory's key, in SQLite.

use async_trait::async_trait;
use rand::Rng;
use rusqlite::{params, OptionalExtension};

use super::{PutAction, PutSecretOutcome, SecretsBackend};
use crate::backends::sqlite::Database;
use crate::backends::BackendError;
use crate::domain::names::SecretName;
use crate::domain::secret::{Sealer, SecretValue};

pub struct LocalVault {
    db: Database,
    sealer: Sealer,
}

impl LocalVault {
    pub fn new(db: Database, sealer: Sealer) -> Self {
        Self { db, sealer }
    }

    /// Reads a value back; the vault is write-only for the bot, this is for operators and tests.
    pub fn read(&self, name: &SecretName) -> Result<Option<SecretValue>, BackendError> {
        let name = name.as_str().to_string();
        let sealed: Option<String> = self.db.run_blocking(move |conn| {
            Ok(conn
                .prepare_cached("SELECT sealed_value FROM vault WHERE name = ?1")?
                .query_row([&name], |row| row.get(0))
                .optional()?)
        })?;
        sealed
            .map(|sealed| {
                self.sealer
                    .open_secret(&crate::domain::secret::Sealed::from_stored(sealed))
                    .map_err(|error| BackendError::Unavailable(error.to_string()))
            })
            .transpose()
    }
}

/// Secrets Manager appends six random characters to a secret's ARN.
fn arn_suffix() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..6)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[async_trait]
impl SecretsBackend for LocalVault {
    async fn put_secret(
        &self,
        name: &SecretName,
        value: &SecretValue,
        kms_key: Option<&str>,
        requested_by: &str,
    ) -> Result<PutSecretOutcome, BackendError> {
        let sealed = self.sealer.seal_secret(value);
        let version_id = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now().to_rfc3339();
        let tags =
            serde_json::json!({"createdBy": "DevOpsAutomation", "requestedBy": requested_by})
                .to_string();
        let (name, sealed, kms_key) = (
            name.as_str().to_string(),
            sealed.as_stored().to_string(),
            kms_key.map(str::to_string),
        );
        let stored_version = version_id.clone();
        let (action, arn) = self
            .db
            .run(move |conn| {
                let existing: Option<String> = conn
                    .prepare_cached("SELECT arn FROM vault WHERE name = ?1")?
                    .query_row([&name], |row| row.get(0))
                    .optional()?;
                Ok(match existing {
                    Some(arn) => {
                        conn.prepare_cached(
                            "UPDATE vault SET version_id = ?1, sealed_value = ?2, kms_key = COALESCE(?3, kms_key), tags = ?4, updated_at = ?5 WHERE name = ?6",
                        )?
                        .execute(params![stored_version, sealed, kms_key, tags, now, name])?;
                        (PutAction::Updated, arn)
                    }
                    None => {
                        let arn = format!(
                            "arn:aws:secretsmanager:local:000000000000:secret:{name}-{}",
                            arn_suffix()
                        );
                        conn.prepare_cached(
                            "INSERT INTO vault (name, arn, version_id, sealed_value, kms_key, tags, created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                        )?
                        .execute(params![name, arn, stored_version, sealed, kms_key, tags, now])?;
                        (PutAction::Created, arn)
                    }
                })
            })
            .await?;
        Ok(PutSecretOutcome {
            action,
            arn,
            version_id,
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_then_updates_and_never_stores_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("state.db");
        let db = Database::open(&db_path).unwrap();
        let sealer = Sealer::from_key_file(&dir.path().join("vault.key")).unwrap();
        let vault = LocalVault::new(db, sealer);
        let name = SecretName::parse("/contentcraft/test/key").unwrap();
        let first = vault
            .put_secret(
                &name,
                &SecretValue::new("plain-canary-1".into()),
                None,
                "ChatOps",
            )
            .await
            .unwrap();
        assert_eq!(first.action, PutAction::Created);
        assert!(first.arn.contains(":secret:/contentcraft/test/key-"));
        let second = vault
            .put_secret(
                &name,
                &SecretValue::new("plain-canary-2".into()),
                Some("alias/k"),
                "ChatOps",
            )
            .await
            .unwrap();
        assert_eq!(
            (second.action, &second.arn),
            (PutAction::Updated, &first.arn)
        );
        assert_ne!(first.version_id, second.version_id);
        assert_eq!(
            vault.read(&name).unwrap().unwrap().expose(),
            "plain-canary-2"
        );
        drop(vault);
        let mut bytes = std::fs::read(&db_path).unwrap();
        if let Ok(wal) = std::fs::read(dir.path().join("state.db-wal")) {
            bytes.extend(wal);
        }
        assert!(!String::from_utf8_lossy(&bytes).contains("plain-canary"));
    }
}
