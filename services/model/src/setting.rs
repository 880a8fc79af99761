use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ValidationError;

/// A cluster-wide setting's key: 1 to 128 characters of lowercase letters, digits, `-`, `_`
/// and `.`, starting with a letter (e.g. `scheduler.cpu_overcommit`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[a-z][a-z0-9._-]{0,127}$")]
pub struct SettingKey(String);

impl SettingKey {
    /// Checks `value` and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let ok_len = !value.is_empty() && value.len() <= 128;
        let ok_start = value.starts_with(|c: char| c.is_ascii_lowercase());
        let ok_chars = value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if ok_len && ok_start && ok_chars {
            Ok(Self(value))
        } else {
            Err(ValidationError::new(
                "key",
                format!("{value:?} is not a valid setting key: use 1-128 lowercase letters, digits, '.', '_' and '-', starting with a letter (e.g. scheduler.cpu_overcommit)"),
            ))
        }
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SettingKey {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SettingKey> for String {
    fn from(key: SettingKey) -> Self {
        key.0
    }
}

impl fmt::Display for SettingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cluster-wide setting as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Setting {
    /// The setting's key.
    pub key: SettingKey,
    /// Any JSON value.
    pub value: serde_json::Value,
    /// Bumped by every write; send it back as `version` (or `If-Match`) to compare-and-set.
    pub version: u64,
}

/// The body of `PUT /api/v1/settings/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingValue {
    /// Any JSON value except `null` (delete the setting instead).
    pub value: serde_json::Value,
    /// When given, the write only succeeds if the stored version still equals it (0: must not
    /// exist yet); otherwise 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl SettingValue {
    /// Largest accepted value, serialised.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.value.is_null() {
            return Err(ValidationError::new(
                "value",
                "null is not a setting value; DELETE the setting to remove it",
            ));
        }
        let size = self.value.to_string().len();
        if size > Self::MAX_BYTES {
            return Err(ValidationError::new(
                "value",
                format!(
                    "the value is {size} bytes; settings hold at most {} bytes",
                    Self::MAX_BYTES
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(SettingKey::new("scheduler.cpu_overcommit").is_ok());
        assert!(SettingKey::new("a").is_ok());
        for bad in ["", "Upper", "1x", "has space", "a/b", &"a".repeat(129)] {
            assert!(SettingKey::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values() {
        let v: SettingValue = serde_json::from_str(r#"{"value": 2.5}"#).unwrap();
        assert!(v.validate().is_ok());
        let null: SettingValue = serde_json::from_str(r#"{"value": null}"#).unwrap();
        assert_eq!(null.validate().unwrap_err().field, "value");
        let big = SettingValue {
            value: serde_json::Value::String("x".repeat(70_000)),
            version: None,
        };
        assert!(big.validate().unwrap_err().message.contains("at most"));
        assert!(serde_json::from_str::<SettingValue>(r#"{"value":1,"extra":2}"#).is_err());
        assert!(serde_json::from_str::<SettingValue>(r#"{}"#).is_err());
    }
}
