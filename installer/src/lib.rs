//! keel-install: lists disks, writes Keel's appliance image (`target/image/keel.raw`) to one,
//! applies an answer file onto its data partition for unattended factory installs, and
//! factory-resets a node (state wiped, OS kept); on a terminal it asks its questions
//! instead ([`interactive`]). See docs/IMAGE.md.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod disks;
pub mod install;
pub mod interactive;
pub mod probe;
