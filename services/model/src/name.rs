use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ValidationError;

/// A resource or node name: a DNS label (RFC 1123): 1 to 63 characters of lowercase letters,
/// digits and `-`, starting with a letter and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")]
pub struct Name(String);

impl Name {
    /// Longest allowed name.
    pub const MAX_LEN: usize = 63;

    /// Checks `value` and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let fail = |why: &str| {
            Err(ValidationError::new(
                "",
                format!("{value:?} is not a valid name: {why}; use 1-63 lowercase letters, digits and '-', starting with a letter"),
            ))
        };
        if value.is_empty() {
            return fail("it is empty");
        }
        if value.len() > Self::MAX_LEN {
            return fail("it is longer than 63 characters");
        }
        if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
            return fail("it must start with a lowercase letter");
        }
        if value.ends_with('-') {
            return fail("it must not end with '-'");
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return fail(&format!("it contains {c:?}"));
        }
        Ok(Self(value))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "node1", "web-01", &"a".repeat(63)] {
            assert_eq!(Name::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_bad_names_with_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("1abc", "start with a lowercase letter"),
            ("Abc", "start with a lowercase letter"),
            ("ab-", "end with '-'"),
            ("a_b", "contains '_'"),
            ("a.b", "contains '.'"),
        ] {
            let err = Name::new(bad).unwrap_err();
            assert!(err.message.contains(why), "{bad}: {}", err.message);
        }
        assert!(Name::new("a".repeat(64))
            .unwrap_err()
            .message
            .contains("longer than 63"));
    }

    #[test]
    fn deserialising_validates() {
        let err = serde_json::from_str::<Name>("\"Bad Name\"").unwrap_err();
        assert!(err.to_string().contains("not a valid name"));
        let ok: Name = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(ok.as_str(), "good");
    }
}
