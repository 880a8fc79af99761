//! `keel setting list|get|set|delete`.

use keel_model::{Setting, SettingKey, SettingValue};
use reqwest::Method;

use super::Items;
use crate::cli::OutputFormat;
use crate::client::ApiClient;
use crate::output::{self, Table};

/// VALUE as the user meant it: JSON when it parses as JSON, else the text as a string.
pub fn parse_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// The settings table.
pub fn render(settings: &[Setting]) -> String {
    let mut t = Table::new(["KEY", "VALUE", "VERSION"]);
    for s in settings {
        t.row([
            s.key.to_string(),
            output::value_cell(&s.value),
            s.version.to_string(),
        ]);
    }
    t.render()
}

/// `keel setting list`.
pub async fn list(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let items: Items<Setting> = client.get("/api/v1/settings").await?;
    output::print(format, &items, |i| render(&i.items))
}

/// `keel setting get KEY`.
pub async fn get(client: &ApiClient, key: &SettingKey, format: OutputFormat) -> anyhow::Result<()> {
    let s: Setting = client.get(&format!("/api/v1/settings/{key}")).await?;
    output::print(format, &s, |s| render(std::slice::from_ref(s)))
}

/// `keel setting set KEY VALUE [--version N]`.
pub async fn set(
    client: &ApiClient,
    key: &SettingKey,
    value: &str,
    version: Option<u64>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let body = SettingValue {
        value: parse_value(value),
        version,
    };
    let s: Setting = client
        .request(Method::PUT, &format!("/api/v1/settings/{key}"), Some(&body))
        .await?;
    output::print(format, &s, |s| render(std::slice::from_ref(s)))
}

/// The path of `DELETE`, with the compare-and-set version when given.
pub fn delete_path(key: &SettingKey, version: Option<u64>) -> String {
    match version {
        Some(v) => format!("/api/v1/settings/{key}?version={v}"),
        None => format!("/api/v1/settings/{key}"),
    }
}

/// `keel setting delete KEY [--version N]`.
pub async fn delete(
    client: &ApiClient,
    key: &SettingKey,
    version: Option<u64>,
) -> anyhow::Result<()> {
    client
        .request_empty::<()>(Method::DELETE, &delete_path(key, version), None)
        .await?;
    eprintln!("deleted {key}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(parse_value("42"), json!(42));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value(r#"{"a":[1,2]}"#), json!({"a": [1, 2]}));
        assert_eq!(parse_value(r#""quoted""#), json!("quoted"));
        assert_eq!(parse_value("plain text"), json!("plain text"));
        assert_eq!(parse_value("{broken"), json!("{broken"));
        assert_eq!(parse_value(""), json!(""));
    }

    #[test]
    fn delete_carries_the_version() {
        let k = SettingKey::new("a.b").unwrap();
        assert_eq!(delete_path(&k, None), "/api/v1/settings/a.b");
        assert_eq!(delete_path(&k, Some(3)), "/api/v1/settings/a.b?version=3");
    }

    #[test]
    fn table() {
        let s = vec![
            Setting {
                key: SettingKey::new("a").unwrap(),
                value: json!("x"),
                version: 1,
            },
            Setting {
                key: SettingKey::new("scheduler.cpu").unwrap(),
                value: json!({"n": 2}),
                version: 12,
            },
        ];
        assert_eq!(
            render(&s),
            "KEY            VALUE    VERSION\na              x        1\nscheduler.cpu  {\"n\":2}  12\n"
        );
    }
}
