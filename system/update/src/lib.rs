//! keel-update: Keel's signed update bundles and A/B slot switching.
//!
//! ```text
//!   image/build.sh ──openssl ed25519──▶ keel-update.bundle (manifest + root squashfs,
//!                                        vmlinuz, initrd.img)
//!   node: bundle::verify (signature, version, sha256 of every file, streaming)
//!         slot::install  (inactive root partition, ESP keel/<slot>/, entry keel-<gen>-<slot>+3)
//!         reboot ── systemd-boot counts tries ── slot::bless once keeld is healthy,
//!                   or falls back to the previous entry when the tries run out
//! ```
#![warn(missing_docs)]
// Tests may unwrap (STYLE H13); the workspace lints deny it everywhere else.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bundle;
mod error;
pub mod slot;
pub mod version;

pub use bundle::{load_keys, verify, Manifest, TrustedKey, Verified};
pub use error::UpdateError;
pub use slot::{bless, boot_state, install, BootState, InstallOptions, Installed, Layout, Slot};
