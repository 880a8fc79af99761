//! [`HypervisorError`]: what can go wrong talking to a hypervisor.

use std::fmt;

use crate::{DomainState, XmlError};

/// The operation that failed, for messages and for callers that map errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Reading capabilities.
    Capabilities,
    /// Listing domains.
    List,
    /// Looking up one domain.
    Inspect,
    /// Defining (creating or updating) a domain.
    Define,
    /// Starting.
    Start,
    /// Graceful shutdown.
    Shutdown,
    /// Graceful reboot.
    Reboot,
    /// Forced power-off.
    Destroy,
    /// Removing the definition.
    Undefine,
    /// Pausing vCPUs.
    Suspend,
    /// Resuming vCPUs.
    Resume,
    /// Live migration.
    Migrate,
    /// Attaching to the serial console.
    OpenConsole,
    /// Growing a disk of a running domain.
    BlockResize,
    /// Taking a snapshot of a running domain.
    Snapshot,
    /// Changing the vCPUs or memory of a running domain.
    Resize,
    /// Plugging a device into a running domain.
    AttachDevice,
    /// Unplugging a device from a running domain.
    DetachDevice,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Capabilities => "read capabilities",
            Op::List => "list domains",
            Op::Inspect => "inspect",
            Op::Define => "define",
            Op::Start => "start",
            Op::Shutdown => "shut down",
            Op::Reboot => "reboot",
            Op::Destroy => "destroy",
            Op::Undefine => "undefine",
            Op::Suspend => "suspend",
            Op::Resume => "resume",
            Op::Migrate => "migrate",
            Op::OpenConsole => "open the console of",
            Op::BlockResize => "grow a disk of",
            Op::Snapshot => "snapshot",
            Op::Resize => "resize",
            Op::AttachDevice => "attach a device to",
            Op::DetachDevice => "detach a device from",
        })
    }
}

/// A failed hypervisor call. The first five variants are the contract every implementation
/// keeps (the conformance suite checks them); the rest carry the underlying cause.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// No domain has this name.
    #[error("domain {name} does not exist")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// Defining would clash with a different domain that has the same name or UUID.
    #[error("domain {existing} (UUID {uuid}) already exists and is not {name}")]
    AlreadyExists {
        /// The name being defined.
        name: String,
        /// The existing domain's name.
        existing: String,
        /// The existing domain's UUID.
        uuid: uuid::Uuid,
    },
    /// The operation does not apply in the domain's current state (starting a running domain,
    /// suspending a stopped one, undefining a running one).
    #[error("cannot {op} domain {name} while it is {state}")]
    InvalidState {
        /// The domain.
        name: String,
        /// What was asked.
        op: Op,
        /// The state it is in.
        state: DomainState,
    },
    /// A guest-agent request could not be delivered: the domain has no agent channel, or no
    /// agent answers in the guest. Fall back to ACPI.
    #[error("domain {name} has no responding guest agent")]
    NoGuestAgent {
        /// The domain.
        name: String,
    },
    /// The request does not fit the domain (beyond its hot-add headroom, an unknown device).
    #[error("cannot {op} domain {name}: {reason}")]
    Refused {
        /// The domain.
        name: String,
        /// What was asked.
        op: Op,
        /// Why not.
        reason: String,
    },
    /// The domain spec is invalid or could not be rendered.
    #[error("domain {name} has an invalid spec")]
    Spec {
        /// The domain.
        name: String,
        /// What is wrong.
        #[source]
        source: XmlError,
    },
    /// Could not open the libvirt connection.
    #[error("cannot connect to libvirt at {uri}")]
    Connect {
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// A libvirt call about one domain failed.
    #[error("libvirt could not {op} domain {name}")]
    Domain {
        /// What was asked.
        op: Op,
        /// The domain.
        name: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// A host-wide libvirt call failed.
    #[error("libvirt could not {op}")]
    Host {
        /// What was asked.
        op: Op,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// XML from libvirt did not parse.
    #[error("cannot {op}")]
    Xml {
        /// What was asked.
        op: Op,
        /// The parse error.
        #[source]
        source: XmlError,
    },
    /// A local system call failed (such as starting a helper thread).
    #[error("cannot {op} domain {name}")]
    Io {
        /// What was asked.
        op: Op,
        /// The domain.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The migration destination is unknown or unreachable (fake only; libvirt reports this
    /// as [`Domain`](Self::Domain) with its own error).
    #[error("no hypervisor at {uri}")]
    Unreachable {
        /// The destination URI.
        uri: String,
    },
}
