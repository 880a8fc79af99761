//! `keel events [--since REV]`: follows the server-sent event stream, one JSON object per line,
//! and resumes after the last revision seen when the connection drops.

use std::time::Duration;

use futures::StreamExt;
use keel_model::WatchEvent;

use crate::client::{ApiClient, ClientError};
use crate::output;
use crate::sse::{SseEvent, SseParser};

/// Reconnection attempts in a row before giving up.
const MAX_RECONNECTS: u32 = 10;

/// The events path for a starting revision.
pub fn path(since: Option<u64>) -> String {
    match since {
        Some(rev) => format!("/api/v1/events?since={rev}"),
        None => "/api/v1/events".to_string(),
    }
}

/// The line to print for one event, and the revision to resume after.
pub fn line_for(ev: &SseEvent) -> (String, Option<u64>) {
    match serde_json::from_str::<WatchEvent>(&ev.data) {
        Ok(w) => (
            serde_json::to_string(&w).unwrap_or_else(|_| ev.data.clone()),
            Some(w.revision),
        ),
        Err(_) => (
            ev.data.replace('\n', " "),
            ev.id.as_deref().and_then(|i| i.parse().ok()),
        ),
    }
}

/// `keel events`.
pub async fn follow(client: &ApiClient, since: Option<u64>) -> anyhow::Result<()> {
    let mut since = since;
    let mut failures = 0u32;
    loop {
        match stream_once(client, &mut since, &mut failures).await {
            Ok(()) => tracing::info!("the event stream ended; reconnecting"),
            Err(e) => {
                if let Some(ClientError::Api { status, .. }) = e.downcast_ref::<ClientError>() {
                    if status.is_client_error() {
                        return Err(e);
                    }
                }
                if e.downcast_ref::<std::io::Error>().is_some() {
                    return Err(e); // stdout is gone
                }
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(e.context(format!(
                        "the event stream failed {MAX_RECONNECTS} times in a row"
                    )));
                }
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the event stream broke; reconnecting"
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn stream_once(
    client: &ApiClient,
    since: &mut Option<u64>,
    failures: &mut u32,
) -> anyhow::Result<()> {
    let resp = client.get_stream(&path(*since)).await?;
    *failures = 0;
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(chunk) = body.next().await {
        for ev in parser.push(&chunk?) {
            let (line, rev) = line_for(&ev);
            output::line(&line)?;
            if rev.is_some() {
                *since = rev;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_lines() {
        assert_eq!(path(None), "/api/v1/events");
        assert_eq!(path(Some(5)), "/api/v1/events?since=5");
        let ev = SseEvent {
            id: Some("9".into()),
            event: None,
            data: r#"{"revision": 9, "kind": "settings", "name": "a", "op": "create", "object": {"v": 1}}"#.into(),
        };
        let (line, rev) = line_for(&ev);
        assert_eq!(
            line,
            r#"{"revision":9,"kind":"settings","name":"a","op":"create","object":{"v":1}}"#
        );
        assert_eq!(rev, Some(9));
        let odd = SseEvent {
            id: Some("10".into()),
            event: None,
            data: "not\njson".into(),
        };
        assert_eq!(line_for(&odd), ("not json".into(), Some(10)));
    }
}
