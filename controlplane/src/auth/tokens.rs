//! Bootstrap tokens for local mode. `isthmusctl token create` makes one per workload: a random
//! secret bound to one SPIFFE ID. The state directory keeps only its SHA-256, one record file per
//! token (`STATE/tokens/<id>.json`, mode 0600), so revocation is a file edit that `isthmusd`
//! sees at the next request, and a copy of the state directory does not leak usable tokens.
//!
//! Token format: `isth.<id>.<secret>`, `<id>` 12 hex digits, `<secret>` 32 random bytes in
//! unpadded base64url.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use isthmus_identity::{SpiffeId, format_time};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Authenticator};
use crate::private_files::{create_private_dir, write_private};

const PREFIX: &str = "isth";

/// One token's record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub spiffe_id: String,
    /// Hex SHA-256 of the secret part.
    pub sha256: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// A token store failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt token record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no token {0}")]
    NotFound(String),
    #[error("{0:?} is not a token id (12 hex digits)")]
    BadId(String),
}

/// The token records under `STATE/tokens`.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("tokens"),
        }
    }

    /// Creates a token for `spiffe_id`; returns its record and the token itself (shown once).
    pub fn create(&self, spiffe_id: &SpiffeId) -> Result<(TokenRecord, String), TokenStoreError> {
        let id = hex::encode(rand::random::<[u8; 6]>());
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let record = TokenRecord {
            id: id.clone(),
            spiffe_id: spiffe_id.to_string(),
            sha256: digest(&secret),
            created_at: format_time(SystemTime::now()),
            revoked_at: None,
        };
        create_private_dir(&self.dir).map_err(|source| TokenStoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        self.write(&record)?;
        Ok((record, format!("{PREFIX}.{id}.{secret}")))
    }

    /// Marks a token revoked; later requests with it are refused. Revoking twice is harmless.
    pub fn revoke(&self, id: &str) -> Result<TokenRecord, TokenStoreError> {
        let mut record = self
            .read(id)?
            .ok_or_else(|| TokenStoreError::NotFound(id.to_owned()))?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(format_time(SystemTime::now()));
            self.write(&record)?;
        }
        Ok(record)
    }

    /// Every record, sorted by id.
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenStoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(TokenStoreError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(record) = self.read(id)? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// The identity `token` is bound to, if it is known, matches and is not revoked.
    pub fn verify(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let mut parts = token.splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::UnknownToken);
        };
        let record = match self.read(id) {
            Ok(Some(record)) => record,
            Ok(None) | Err(TokenStoreError::BadId(_)) => return Err(AuthError::UnknownToken),
            Err(e) => return Err(AuthError::Store(e.to_string())),
        };
        let matches: bool = digest(secret)
            .as_bytes()
            .ct_eq(record.sha256.as_bytes())
            .into();
        if !matches {
            return Err(AuthError::UnknownToken);
        }
        if let Some(revoked_at) = record.revoked_at {
            return Err(AuthError::Revoked {
                token_id: record.id,
                revoked_at,
            });
        }
        SpiffeId::parse(&record.spiffe_id).map_err(|e| AuthError::Store(e.to_string()))
    }

    fn path(&self, id: &str) -> Result<PathBuf, TokenStoreError> {
        // Only hex ids reach the file system: no path tricks through a token.
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenStoreError::BadId(id.chars().take(40).collect()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn read(&self, id: &str) -> Result<Option<TokenRecord>, TokenStoreError> {
        let path = self.path(id)?;
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TokenStoreError::Io { path, source }),
        };
        let record: TokenRecord =
            serde_json::from_str(&text).map_err(|e| TokenStoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.id != id {
            return Err(TokenStoreError::Corrupt {
                path,
                reason: format!("records id {:?}", record.id),
            });
        }
        Ok(Some(record))
    }

    fn write(&self, record: &TokenRecord) -> Result<(), TokenStoreError> {
        let path = self.path(&record.id)?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| TokenStoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &json).map_err(|source| TokenStoreError::Io { path, source })
    }
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Authenticator for TokenStore {
    async fn authenticate(&self, bearer: String) -> Result<SpiffeId, AuthError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.verify(&bearer))
            .await
            .map_err(|e| AuthError::Store(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://red.local/ns/app/sa/web").unwrap()
    }

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (record, token) = store.create(&id()).unwrap();
        assert_eq!(store.verify(&token).unwrap(), id());

        let mode = fs::metadata(dir.path().join(format!("tokens/{}.json", record.id)))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path().join("tokens"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // The secret is not stored.
        let stored =
            fs::read_to_string(dir.path().join(format!("tokens/{}.json", record.id))).unwrap();
        assert!(!stored.contains(token.rsplit('.').next().unwrap()));

        store.revoke(&record.id).unwrap();
        assert!(matches!(
            store.verify(&token),
            Err(AuthError::Revoked { .. })
        ));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn hostile_tokens_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (record, token) = store.create(&id()).unwrap();
        for bad in [
            "",
            "isth",
            "isth..",
            "isth.../../../etc/passwd.x",
            "isth.zzzzzzzzzzzz.secret",
            &format!("isth.{}.wrong-secret", record.id),
            &format!("isth.{}.", record.id),
            &format!("other.{}.{}", record.id, token.rsplit('.').next().unwrap()),
            &"x".repeat(100_000),
        ] {
            assert!(
                matches!(store.verify(bad), Err(AuthError::UnknownToken)),
                "{bad:.60}"
            );
        }
    }

    #[test]
    fn corrupt_record_is_an_internal_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (record, token) = store.create(&id()).unwrap();
        fs::write(
            dir.path().join(format!("tokens/{}.json", record.id)),
            "{not json",
        )
        .unwrap();
        match store.verify(&token) {
            Err(AuthError::Store(msg)) => {
                assert!(msg.contains(&record.id) && msg.contains("corrupt"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }
}
