//! The node's own identity on disk: written once it is a member, read at every start.
//!
//! `<state>/node.json` (versioned, H16) and `<state>/tls/{ca.pem,node.pem,node-key.pem}`.
//! Written with write-to-temp + fsync + rename, so a crash leaves the old file or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Current format of `node.json`.
pub const IDENTITY_FORMAT: u32 = 1;

/// Who this node is in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format version of this file.
    pub format: u32,
    /// Raft node id.
    pub id: u64,
    /// Node name.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Management address (no prefix).
    pub address: String,
    /// True on the node that founded the cluster (it finishes the bootstrap after a crash).
    #[serde(default)]
    pub founder: bool,
}

/// The node's TLS material, PEM.
#[derive(Clone)]
pub struct TlsFiles {
    /// Cluster CA certificate.
    pub ca: String,
    /// This node's certificate.
    pub cert: String,
    /// This node's key.
    pub key: String,
}

/// Why the identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// File I/O failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `node.json` is not valid.
    #[error("{path} is not a valid identity file")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `node.json` is from a newer Keel.
    #[error("{path} has format {found}; this build reads up to {IDENTITY_FORMAT}")]
    TooNew {
        /// Which file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
}

/// Where a node keeps its identity.
#[derive(Debug, Clone)]
pub struct IdentityDir {
    root: PathBuf,
}

impl IdentityDir {
    /// The identity files under the state directory `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn node_json(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// Directory with the TLS files.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// Directory of the replicated store.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The saved identity, if this node is a member.
    pub fn load(&self) -> Result<Option<(Identity, TlsFiles)>, IdentityError> {
        let path = self.node_json();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let id: Identity = serde_json::from_str(&text).map_err(|source| IdentityError::Parse {
            path: path.clone(),
            source,
        })?;
        if id.format > IDENTITY_FORMAT {
            return Err(IdentityError::TooNew {
                path,
                found: id.format,
            });
        }
        let read = |name: &str| {
            let p = self.tls_dir().join(name);
            std::fs::read_to_string(&p).map_err(|source| IdentityError::Io {
                action: "read",
                path: p,
                source,
            })
        };
        let tls = TlsFiles {
            ca: read("ca.pem")?,
            cert: read("node.pem")?,
            key: read("node-key.pem")?,
        };
        Ok(Some((id, tls)))
    }

    /// Saves the TLS files, then the identity (the identity last: its presence means complete).
    pub fn save(&self, id: &Identity, tls: &TlsFiles) -> Result<(), IdentityError> {
        let dir = self.tls_dir();
        std::fs::create_dir_all(&dir).map_err(|source| IdentityError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        write_atomic(&dir.join("ca.pem"), tls.ca.as_bytes(), 0o644)?;
        write_atomic(&dir.join("node.pem"), tls.cert.as_bytes(), 0o644)?;
        write_atomic(&dir.join("node-key.pem"), tls.key.as_bytes(), 0o600)?;
        let json = serde_json::to_vec_pretty(id).map_err(|source| IdentityError::Parse {
            path: self.node_json(),
            source,
        })?;
        write_atomic(&self.node_json(), &json, 0o644)
    }
}

/// Writes `data` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |action, source| IdentityError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuse_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityDir::new(dir.path());
        assert!(ids.load().unwrap().is_none());
        let id = Identity {
            format: IDENTITY_FORMAT,
            id: 2,
            name: "node2".into(),
            cluster: "lab".into(),
            address: "10.0.0.12".into(),
            founder: false,
        };
        let tls = TlsFiles {
            ca: "ca".into(),
            cert: "c".into(),
            key: "k".into(),
        };
        ids.save(&id, &tls).unwrap();
        let (back, t) = ids.load().unwrap().unwrap();
        assert_eq!(back, id);
        assert_eq!(t.key, "k");
        let newer = Identity {
            format: IDENTITY_FORMAT + 1,
            ..id
        };
        std::fs::write(
            dir.path().join("node.json"),
            serde_json::to_vec(&newer).unwrap(),
        )
        .unwrap();
        assert!(matches!(ids.load(), Err(IdentityError::TooNew { .. })));
    }
}
