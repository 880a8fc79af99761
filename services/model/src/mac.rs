//! [`MacAddr`]: a NIC's Ethernet address.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::ValidationError;

/// A unicast Ethernet address, written `52:54:00:12:34:56`. Either case is accepted; it is
/// always written in lower case, so one address has one spelling in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[schema(value_type = String, pattern = "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$", example = "52:54:00:12:34:56")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Wraps six octets; the address must be unicast (low bit of the first octet clear) and
    /// not all zeros.
    pub fn from_octets(octets: [u8; 6]) -> Result<Self, ValidationError> {
        let mac = Self(octets);
        if octets[0] & 1 == 1 {
            return Err(Self::invalid(&mac.to_string(), "it is a multicast address"));
        }
        if octets == [0; 6] {
            return Err(Self::invalid(&mac.to_string(), "it is all zeros"));
        }
        Ok(mac)
    }

    /// `52:54:00:` (the prefix QEMU and libvirt use for guests) followed by `suffix`.
    pub const fn qemu(suffix: [u8; 3]) -> Self {
        Self([0x52, 0x54, 0x00, suffix[0], suffix[1], suffix[2]])
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    fn invalid(value: &str, why: &str) -> ValidationError {
        ValidationError::new(
            "",
            format!(
                "{value:?} is not a valid MAC address: {why}; write six hex octets separated by ':' with the first octet even (unicast), e.g. 52:54:00:12:34:56"
            ),
        )
    }
}

impl FromStr for MacAddr {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts
                .next()
                .ok_or_else(|| Self::invalid(s, "it has fewer than six octets"))?;
            if part.len() != 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Self::invalid(s, &format!("{part:?} is not two hex digits")));
            }
            *octet = u8::from_str_radix(part, 16)
                .map_err(|_| Self::invalid(s, &format!("{part:?} is not two hex digits")))?;
        }
        if parts.next().is_some() {
            return Err(Self::invalid(s, "it has more than six octets"));
        }
        Self::from_octets(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse()
            .map_err(|e: ValidationError| de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(mac.octets(), [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"52:54:00:ab:cd:0f\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
    }

    #[test]
    fn refuses_with_reason() {
        for (bad, why) in [
            ("", "not two hex digits"),
            ("52:54:00:12:34", "fewer than six"),
            ("52:54:00:12:34:56:78", "more than six"),
            ("52-54-00-12-34-56", "not two hex digits"),
            ("52:54:00:12:34:5g", "not two hex digits"),
            ("52:54:00:12:34:+5", "not two hex digits"),
            ("01:00:5e:00:00:01", "multicast"),
            ("ff:ff:ff:ff:ff:ff", "multicast"),
            ("00:00:00:00:00:00", "all zeros"),
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.message.contains(why), "{bad}: {}", err.message);
        }
        let err = serde_json::from_str::<MacAddr>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("not a valid MAC address"));
    }
}
