//! Keel's adapter over libvirt: the one place Keel talks to the hypervisor of a node.
//!
//! The seam is the [`Hypervisor`] trait: define, start, shut down, destroy, undefine,
//! suspend and resume domains, list them with their state, open serial consoles, live-migrate,
//! and report capabilities and whether KVM really works ([`KvmProbe`]). [`Libvirt`] implements
//! it over a libvirt connection (the `virt` crate); `FakeHypervisor` (feature `fake`)
//! implements it in memory for logic tests; [`conformance`] holds the checks both must pass.
//! No cluster logic lives here: which VM runs where, and when, is keeld's business.
//!
//! # Data flow
//!
//! ```text
//!  keeld reconciler ──DomainSpec──▶ Hypervisor::define ──validate + render──▶ domain XML
//!         ▲                              │                                        │
//!         │                              ▼                                        ▼
//!   DomainEvent ◀── StateWatcher ◀── Hypervisor::list ◀───── libvirtd / virtqemud ──▶ QEMU
//!   (polled)                                                                       │
//!  keeld console proxy ◀──── Console (libvirt stream) ◀───────────────── serial ttyS0
//! ```
//!
//! # Domain XML
//!
//! XML is never a template: [`DomainSpec`] (typed, validated, deserialisable from TOML) is
//! rendered through serde types that mirror libvirt's schema, then handed to libvirt with
//! schema validation on. Golden files in `tests/data/` pin the output byte for byte.
//! Every domain carries Keel's VM uid in `<metadata>` ([`KEEL_METADATA_NS`]), which is how
//! Keel tells its domains from anyone else's ([`DomainInfo::keel_uid`]).
//!
//! # Testing
//!
//! - Unit tests (no host needed): spec validation, XML reading, the KVM probe's firmware, and
//!   [`conformance::run_all`] against the fake.
//! - `tests/golden.rs`: `tests/data/<case>.input.toml` renders to `<case>.expected.xml` byte for
//!   byte; `tests/data/invalid/<defect>.toml` is refused with `<defect>.expected.err`
//!   (`KEEL_BLESS=1` rewrites them).
//! - `tests/real_libvirt.rs` (root, packages from `APT_PACKAGES`): each test starts its own
//!   libvirtd in a mount namespace (no system daemon needed), boots the tiny guest from
//!   `tests/guest/build.sh` under TCG, runs the conformance suite, reads the guest's counter
//!   from its serial console, live-migrates between two daemons (memory only and with copy
//!   storage) and checks that golden XML defines and every rendered device starts.
//!
//! # Rejected designs
//!
//! - An async trait: libvirt calls block in C; see [`Hypervisor`].
//! - libvirt event callbacks: need a process-wide event loop thread and raw FFI; polling with
//!   [`StateWatcher`] feeds level-triggered reconcilers just as well (see [`watch`]).
//! - `virsh` subprocesses: text scraping where a library API exists.
//! - Trusting libvirt's `kvm` capability: it only checks that `/dev/kvm` opens; see
//!   [`KvmProbe`].

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod agent;
mod capabilities;
pub mod conformance;
mod console;
mod error;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod hypervisor;
mod kvm_probe;
mod libvirt;
mod live;
mod spec;
pub mod watch;
mod xml;

pub use agent::{AddressSource, GuestAddress};
pub use capabilities::Capabilities;
pub use console::{Console, ConsoleError};
pub use error::{HypervisorError, Op};
#[cfg(any(test, feature = "fake"))]
pub use fake::FakeHypervisor;
pub use hypervisor::{
    DomainInfo, DomainState, DomainStats, Hypervisor, JobProgress, MigrateOptions, ShutdownMode,
};
pub use kvm_probe::{KvmProbe, KvmStatus};
pub use libvirt::Libvirt;
pub use live::{LiveDisk, LiveDomain, LiveNic};
pub use spec::{
    Boot, BootDevice, BridgeName, Cdrom, CpuMode, CpuModel, Disk, DiskFormat, DomainName,
    DomainSpec, DomainType, Firmware, Hotplug, IoTune, MacAddr, Nic, ValidationError, Vnc,
};
pub use watch::{DomainEvent, StateWatcher};
pub use xml::{XmlError, KEEL_METADATA_NS};
