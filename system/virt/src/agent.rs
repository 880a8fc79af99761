//! What qemu-guest-agent (or the host's view of the guest's network) says about a guest:
//! [`GuestAddress`].

use std::fmt;
use std::net::IpAddr;

/// One IP address of a guest NIC, from the guest agent (or a DHCP lease or the host's ARP
/// table when no agent answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAddress {
    /// The guest's name for the interface (`eth0`), or the host-side device without an agent.
    pub interface: String,
    /// The interface's MAC address, lower case (`52:54:00:..`); empty when unknown.
    pub mac: String,
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Where it was learnt.
    pub source: AddressSource,
}

impl GuestAddress {
    /// True for loopback and IPv6 link-local addresses: nothing to report to users.
    pub fn is_local(&self) -> bool {
        match self.ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
        }
    }
}

impl fmt::Display for GuestAddress {
    /// `ip/prefix`, e.g. `192.0.2.7/24`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// Where a [`GuestAddress`] was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// qemu-guest-agent inside the guest (every address it has).
    Agent,
    /// The DHCP lease a libvirt network handed out.
    Lease,
    /// The host's ARP table.
    Arp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, prefix: u8) -> GuestAddress {
        GuestAddress {
            interface: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
            ip: ip.parse().unwrap(),
            prefix,
            source: AddressSource::Agent,
        }
    }

    #[test]
    fn local_addresses_and_display() {
        assert!(addr("127.0.0.1", 8).is_local());
        assert!(addr("::1", 128).is_local());
        assert!(addr("fe80::5054:ff:fe00:1", 64).is_local());
        assert!(!addr("192.0.2.7", 24).is_local());
        assert!(!addr("2001:db8::7", 64).is_local());
        assert_eq!(addr("192.0.2.7", 24).to_string(), "192.0.2.7/24");
    }
}
