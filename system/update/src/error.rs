//! Typed errors: each says what was refused and why.

use std::path::PathBuf;

/// Why an update was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// An I/O step failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not an update bundle this build can read.
    #[error("not a Keel update bundle: {0}")]
    NotABundle(String),
    /// The bundle carries no signature.
    #[error("the bundle is not signed; only signed bundles are installed")]
    Unsigned,
    /// Signed by a key this node does not trust.
    #[error("the bundle is signed by key {key_id}, which this node does not trust (trusted: {})", trusted.join(", "))]
    UnknownKey {
        /// The bundle's key id.
        key_id: String,
        /// Trusted key ids.
        trusted: Vec<String>,
    },
    /// The signature does not match the manifest: tampered with, or a forged key id.
    #[error("the signature of the bundle does not verify with key {key_id}: the manifest was changed after signing")]
    BadSignature {
        /// The bundle's key id.
        key_id: String,
    },
    /// A trusted key file is unusable.
    #[error("trusted key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// No trusted keys are installed.
    #[error("no trusted update keys (*.pub) in {0}")]
    NoTrustedKeys(PathBuf),
    /// The signed manifest is not valid.
    #[error("the manifest is not valid: {0}")]
    Manifest(String),
    /// A payload file does not have the hash its manifest says.
    #[error("{file} does not match the signed manifest: sha256 {actual}, expected {expected}")]
    HashMismatch {
        /// Payload file.
        file: String,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The payload ends early.
    #[error("the bundle is truncated: {file} is missing {missing} bytes")]
    Truncated {
        /// Payload file.
        file: String,
        /// Bytes missing.
        missing: u64,
    },
    /// Bytes after the last payload file.
    #[error("the bundle has data after its last payload file")]
    TrailingData,
    /// The bundle is not newer than what runs.
    #[error("the bundle's version {bundle} is not newer than the running {running}; allow a downgrade explicitly to install it")]
    Downgrade {
        /// Running version.
        running: String,
        /// Bundle version.
        bundle: String,
    },
    /// The running slot boots on trial (its loader entry still counts tries): writing the
    /// other slot now would remove the only entry a failed boot can fall back to.
    #[error("the running slot {slot} boots on trial ({entry} still counts its tries): bless it (keel-update bless) once the node is healthy, or reboot, before another slot is written")]
    OnTrial {
        /// The running slot.
        slot: String,
        /// Its loader entry.
        entry: String,
    },
    /// The node's slots or boot loader are not as expected.
    #[error("{0}")]
    Slot(String),
}

pub(crate) fn io_err(context: String, source: std::io::Error) -> UpdateError {
    UpdateError::Io { context, source }
}
