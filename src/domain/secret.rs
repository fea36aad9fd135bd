//! Secret values and their sealing at rest. A `SecretValue` cannot be printed:
//! its `Debug` is redacted and it has no `Display`, so it cannot leak into a
//! log line or a chat message by accident.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The plain value, for the one place that needs it: the published request
    /// and the backend call.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Bytes sealed with the data directory's key: nonce ‖ ciphertext, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_stored(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("sealed data could not be opened (wrong key or damaged)")]
    Open,
    #[error("sealing key {name}: {reason}")]
    SharedKey { name: String, reason: String },
}

/// Seals and opens values with ChaCha20-Poly1305 under a key kept in a 0600
/// file (embedded) or in a secret every replica reads (aws).
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// Loads the key at `path`, creating it (mode 0600) on first start.
    pub fn from_key_file(path: &Path) -> Result<Self, SealError> {
        let key_error = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let key = match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(bytes) => {
                return Err(key_error(format!(
                    "expected 32 bytes, found {}",
                    bytes.len()
                )))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private_file(path, &key).map_err(|e| key_error(e.to_string()))?;
                key
            }
            Err(error) => return Err(key_error(error.to_string())),
        };
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// A new random key, base64-encoded, for a key kept as a secret.
    pub fn generate_encoded_key() -> SecretValue {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SecretValue::new(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// Uses a base64-encoded 32-byte key, such as the replicas' shared one named `name`.
    pub fn from_encoded_key(name: &str, encoded: &SecretValue) -> Result<Self, SealError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded.expose().trim())
            .ok()
            .filter(|key| key.len() == 32)
            .ok_or_else(|| SealError::SharedKey {
                name: name.to_string(),
                reason: "expected 32 bytes, base64-encoded".into(),
            })?;
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    pub fn seal(&self, plain: &[u8]) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Sealed(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed.0)
            .map_err(|_| SealError::Open)?;
        if bytes.len() < 12 {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SealError::Open)
    }

    pub fn seal_secret(&self, value: &SecretValue) -> Sealed {
        self.seal(value.expose().as_bytes())
    }

    pub fn open_secret(&self, sealed: &Sealed) -> Result<SecretValue, SealError> {
        let bytes = self.open(sealed)?;
        String::from_utf8(bytes)
            .map(SecretValue::new)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_hides_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let sealer = Sealer::from_key_file(&path).unwrap();
        let sealed = sealer.seal_secret(&SecretValue::new("hunter2".into()));
        assert!(!format!("{sealed:?}").contains("hunter2"));
        let reopened = Sealer::from_key_file(&path).unwrap();
        assert_eq!(reopened.open_secret(&sealed).unwrap().expose(), "hunter2");
        assert_eq!(
            format!("{:?}", SecretValue::new("hunter2".into())),
            "SecretValue(<redacted>)"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn damaged_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::from_key_file(&dir.path().join("k")).unwrap();
        assert!(sealer.open(&Sealed("AAAA".into())).is_err());
        assert!(sealer.open(&Sealed("not base64!".into())).is_err());
    }
}
