//! The addresses `isthmusd` listens on: returned by [`super::Bound::addresses`] and written to
//! `STATE/addresses.json`, which callers in other processes (`isthmusctl up`, the end-to-end
//! tests) read through the same [`Addresses`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::private_files::write_private;

/// The file in the state directory, written once every port is bound.
pub const ADDRESSES_FILE: &str = "addresses.json";

/// The addresses actually bound (a port of 0 in the configuration picks a free one).
///
/// In `addresses.json`: `{"grpc": "127.0.0.1:15012", "debug": "…", "xdsPlaintext": null,
/// "federation": "…", "webhook": "…"}`, each `host:port`, `null` for a port that is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addresses {
    /// The mTLS gRPC port: certificate service and xDS.
    pub grpc: SocketAddr,
    /// The debug port: `/metrics`, `/ready`, `/debug/*`.
    pub debug: SocketAddr,
    /// Plaintext xDS on loopback, when opted in.
    #[serde(default)]
    pub xds_plaintext: Option<SocketAddr>,
    /// Federation discovery, unless it is off.
    #[serde(default)]
    pub federation: Option<SocketAddr>,
    /// The admission webhooks (HTTPS), unless they are off.
    #[serde(default)]
    pub webhook: Option<SocketAddr>,
}

/// Why `addresses.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AddressesError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not isthmusd's addresses")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Addresses {
    /// `STATE/addresses.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(ADDRESSES_FILE)
    }

    /// Reads the addresses an `isthmusd` with this state directory published. The file is
    /// replaced atomically, so a caller waiting for a start can retry until this succeeds.
    pub fn read(state_dir: &Path) -> Result<Self, AddressesError> {
        let path = Self::path(state_dir);
        let text = std::fs::read_to_string(&path).map_err(|source| AddressesError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| AddressesError::Parse { path, source })
    }

    /// Writes `STATE/addresses.json` (0600, atomically).
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string(self).map_err(std::io::Error::other)?;
        write_private(&Self::path(state_dir), json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_json_keeps_its_keys_and_nulls() {
        let addresses = Addresses {
            grpc: "127.0.0.1:15012".parse().unwrap(),
            debug: "127.0.0.1:15014".parse().unwrap(),
            xds_plaintext: None,
            federation: Some("127.0.0.1:8188".parse().unwrap()),
            webhook: None,
        };
        let json = serde_json::to_value(addresses).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "grpc": "127.0.0.1:15012",
                "debug": "127.0.0.1:15014",
                "xdsPlaintext": null,
                "federation": "127.0.0.1:8188",
                "webhook": null,
            })
        );
        assert_eq!(
            serde_json::from_value::<Addresses>(json).unwrap(),
            addresses
        );
    }
}
