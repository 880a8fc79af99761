//! The API commands: each is a thin function from parsed arguments to requests and printing.

pub mod cluster;
pub mod console;
pub mod events;
pub mod image;
pub mod lifecycle;
pub mod login;
pub mod node;
pub mod setting;
pub mod storage;
pub mod upgrade;
pub mod vm;
pub mod vm_edit;

use serde::{Deserialize, Serialize};

use crate::client::ApiClient;
use crate::output;

/// The API's list envelope, `{"items": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Items<T> {
    /// The resources.
    pub items: Vec<T>,
}

/// How a model enum is spelled on the wire (`not-ready`, `voter`), for table cells.
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// A table cell for an optional value: the value, or `-`.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `keel openapi`: the document as the server has it, pretty-printed.
pub async fn openapi(client: &ApiClient) -> anyhow::Result<()> {
    let text = client.get_text("/api/v1/openapi.json").await?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    output::line(&serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::{MemberRole, NodeState};

    #[test]
    fn enums_print_as_on_the_wire() {
        assert_eq!(wire_name(&NodeState::NotReady), "not-ready");
        assert_eq!(wire_name(&MemberRole::Learner), "learner");
    }
}
