//! [`MacAddr`]: a NIC's Ethernet address.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A unicast Ethernet address, written `52:54:00:12:34:56`. Parsing accepts either case and
/// always renders lower case, so the same address always produces the same XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Wraps six octets; the address must be unicast (low bit of the first octet clear).
    pub fn from_octets(octets: [u8; 6]) -> Result<Self, ValidationError> {
        if octets[0] & 1 == 1 {
            return Err(Self::malformed(Self(octets).to_string()));
        }
        Ok(Self(octets))
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    fn malformed(value: String) -> ValidationError {
        ValidationError::Malformed {
            field: "mac".into(),
            value,
            expected: "six hex octets separated by ':', unicast (e.g. 52:54:00:12:34:56)",
        }
    }
}

impl std::str::FromStr for MacAddr {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(|| Self::malformed(s.into()))?;
            if part.len() != 2 {
                return Err(Self::malformed(s.into()));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| Self::malformed(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(Self::malformed(s.into()));
        }
        Self::from_octets(octets)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ValidationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<MacAddr> for String {
    fn from(value: MacAddr) -> Self {
        value.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_lower_case() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
    }

    #[test]
    fn refuses_multicast_and_malformed() {
        for bad in [
            "01:00:5e:00:00:01",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:g0",
            "52:54:00:ab:cd:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
