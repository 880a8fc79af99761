//! [`NewMetadata`]: what a client says about a resource it creates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Metadata, Name, ValidationError};

/// The `metadata` of a create request (`VmCreate`, `ImageCreate`, ...): the name and labels.
///
/// Create bodies carry this instead of [`Metadata`] so that a client cannot send the
/// server-owned `uid`, `version` or `created` (unknown fields are refused), and so that the
/// name is a checked [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMetadata {
    /// The resource's name, unique within its kind.
    pub name: Name,
    /// Free-form labels (see [`validate_labels`] for the rules).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl NewMetadata {
    /// Metadata with this name and no labels.
    pub fn named(name: Name) -> Self {
        Self {
            name,
            labels: BTreeMap::new(),
        }
    }

    /// Checks the labels; paths are relative (`labels`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_labels("labels", &self.labels)
    }

    /// The stored metadata: the store fills in `uid`, `version` and `created`.
    pub fn into_metadata(self) -> Metadata {
        Metadata {
            name: self.name.into(),
            labels: self.labels,
            ..Metadata::default()
        }
    }
}

/// Most labels on one resource.
pub const MAX_LABELS: usize = 64;

/// Checks a label map (resource labels, or a node selector): at most 64 entries; keys are 1
/// to 63 characters of letters, digits, `-`, `_`, `.` and `/`, starting and ending with a
/// letter or digit (`zone`, `keel.io/disk`); values are up to 63 of the same characters
/// (and may be empty). `field` is the map's path; errors name the key (`labels.zone`).
pub fn validate_labels(
    field: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::new(
            field,
            format!(
                "{} labels is too many; use at most {MAX_LABELS}",
                labels.len()
            ),
        ));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    let ok_ends = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    for (key, value) in labels {
        if key.is_empty() || key.len() > 63 || !key.chars().all(ok_char) || !ok_ends(key) {
            return Err(ValidationError::new(
                field,
                format!("{key:?} is not a valid label key: use 1-63 letters, digits, '-', '_', '.' and '/', starting and ending with a letter or digit"),
            ));
        }
        if value.len() > 63 || !value.chars().all(ok_char) || !(value.is_empty() || ok_ends(value))
        {
            return Err(ValidationError::new(
                format!("{field}.{key}"),
                format!("{value:?} is not a valid label value: use up to 63 letters, digits, '-', '_', '.' and '/', starting and ending with a letter or digit"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_accept_and_refuse() {
        assert!(validate_labels(
            "labels",
            &map(&[("zone", "a"), ("keel.io/disk", "ssd"), ("x", "")])
        )
        .is_ok());
        let err = validate_labels("labels", &map(&[("bad key", "a")])).unwrap_err();
        assert_eq!(err.field, "labels");
        assert!(err.message.contains("\"bad key\" is not a valid label key"));
        let err =
            validate_labels("spec.placement.node_selector", &map(&[("zone", "a b")])).unwrap_err();
        assert_eq!(err.field, "spec.placement.node_selector.zone");
        let err = validate_labels("labels", &map(&[("-x", "a")])).unwrap_err();
        assert!(err.message.contains("label key"));
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_labels("labels", &many)
            .unwrap_err()
            .message
            .contains("too many"));
    }

    #[test]
    fn refuses_server_owned_fields_and_bad_names() {
        let err = serde_json::from_str::<NewMetadata>(r#"{"name":"a","uid":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `uid`"), "{err}");
        let err = serde_json::from_str::<NewMetadata>(r#"{"name":"Not_DNS"}"#).unwrap_err();
        assert!(err.to_string().contains("not a valid name"), "{err}");
        let m: NewMetadata =
            serde_json::from_str(r#"{"name":"web","labels":{"tier":"front"}}"#).unwrap();
        let meta = m.into_metadata();
        assert_eq!(meta.name, "web");
        assert_eq!(meta.version, 0);
        assert_eq!(meta.labels["tier"], "front");
    }
}
