//! An incremental parser of server-sent events (the `text/event-stream` format): bytes in as
//! they arrive, whole events out.

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field.
    pub id: Option<String>,
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// Collects bytes and yields events at each blank line.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                } else {
                    self.current = SseEvent::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment, e.g. a keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (&*line, ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "id" => self.current.id = Some(value.to_string()),
                "event" => self.current.event = Some(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"id: 7\nda").is_empty());
        assert!(p.push(b"ta: {\"a\":1}\r\n").is_empty());
        let evs = p.push(b"\n: keep-alive\n\nid:8\ndata:x\ndata: y\n\n");
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    id: Some("7".into()),
                    event: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: Some("8".into()),
                    event: None,
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn events_without_data_are_dropped() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: ping\n\n").is_empty());
        let evs = p.push(b"event: change\ndata: 1\n\n");
        assert_eq!(evs[0].event.as_deref(), Some("change"));
        assert_eq!(evs[0].data, "1");
    }
}
