use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// An interface address with its prefix length, e.g. `10.0.0.11/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for Cidr {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            ValidationError::new(
                "",
                format!("{s:?} is not an address with prefix: {why} (write it like 10.0.0.11/24)"),
            )
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("the /prefix is missing"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("the address does not parse"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad(&format!("the prefix is larger than {max}")));
        }
        Ok(Self { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let c: Cidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.to_string(), "10.1.2.3/24");
        assert!("fd00::1/64".parse::<Cidr>().is_ok());
        for bad in ["10.1.2.3", "10.1.2.3/33", "x/24", "10.1.2.3/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
