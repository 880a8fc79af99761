//! Printing for people and for scripts: aligned tables, key/value blocks, pretty JSON, and the
//! small formatters (bytes, ages, setting values) the tables use.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cli::OutputFormat;

/// A table with a header row; columns are as wide as their widest cell, two spaces apart, and
/// no line ends in whitespace.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let width = |cell: &String| cell.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(width).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned, for one object.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = w - k.chars().count();
        let _ = writeln!(out, "{k}:{}  {v}", " ".repeat(pad));
    }
    out
}

/// Prints `value` as pretty JSON, or the `table` text, as `format` says.
pub fn print<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => line(&serde_json::to_string_pretty(value)?)?,
        OutputFormat::Table => text(&table(value))?,
    }
    Ok(())
}

/// Writes `s` and a newline to stdout, flushed. Unlike `println!` this returns an error
/// instead of panicking when the reader has gone (`keel events | head -1`).
pub fn line(s: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")?;
    out.flush()
}

/// Writes `s` as is to stdout, flushed.
pub fn text(s: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `15.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A setting value for a table cell: strings without quotes, anything else as compact JSON.
pub fn value_cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How long ago an RFC 3339 time was, coarsely (`3s ago`, `5m ago`); the input when it does
/// not parse, `-` when absent.
pub fn age(rfc3339: Option<&str>, now: time::OffsetDateTime) -> String {
    let Some(text) = rfc3339 else {
        return "-".into();
    };
    let Ok(then) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    else {
        return text.to_string();
    };
    let secs = (now - then).whole_seconds();
    if secs < 0 {
        return "just now".into();
    }
    let secs = secs.unsigned_abs();
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// A duration in milliseconds with a precision that suits it: `0.84 ms`, `12.3 ms`, `1520 ms`.
pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let mut t = Table::new(["NAME", "STATE", "ADDRESS"]);
        t.row(["node1", "ready", "10.77.0.11"]);
        t.row(["node-long", "not-ready", ""]);
        t.row(["n3"]);
        assert_eq!(
            t.render(),
            "NAME       STATE      ADDRESS\n\
             node1      ready      10.77.0.11\n\
             node-long  not-ready\n\
             n3\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let mut t = Table::new(["K", "V"]);
        t.row(["é", "x"]);
        t.row(["ab", "y"]);
        assert_eq!(t.render(), "K   V\né   x\nab  y\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(["A", "B"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A  B\n");
    }

    #[test]
    fn fields_align_values() {
        let s = fields(&[("name", "node1".into()), ("address", "10.0.0.1".into())]);
        assert_eq!(s, "name:     node1\naddress:  10.0.0.1\n");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(16 * 1024 * 1024 * 1024), "16.0 GiB");
    }

    #[test]
    fn value_cells() {
        assert_eq!(value_cell(&serde_json::json!("text")), "text");
        assert_eq!(value_cell(&serde_json::json!(2.5)), "2.5");
        assert_eq!(value_cell(&serde_json::json!({"a": [1]})), r#"{"a":[1]}"#);
    }

    #[test]
    fn ages() {
        let now = time::macros::datetime!(2025-01-01 12:00:00 UTC);
        assert_eq!(age(None, now), "-");
        assert_eq!(age(Some("2025-01-01T11:59:57Z"), now), "3s ago");
        assert_eq!(age(Some("2025-01-01T11:50:00Z"), now), "10m ago");
        assert_eq!(age(Some("2025-01-01T09:00:00Z"), now), "3h ago");
        assert_eq!(age(Some("2025-01-01T12:00:05Z"), now), "just now");
        assert_eq!(age(Some("yesterday"), now), "yesterday");
    }

    #[test]
    fn millisecond_precision() {
        assert_eq!(millis(Duration::from_micros(840)), "0.84 ms");
        assert_eq!(millis(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(millis(Duration::from_millis(1520)), "1520 ms");
    }
}
