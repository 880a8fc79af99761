//! Watch streams: the change history from a revision on, then live changes, with no gaps and no
//! duplicates.
//!
//! A stream never buffers changes pushed by the writer. It keeps only the last revision it
//! delivered; the writer's revision channel just says "there is more", and the stream reads the
//! `changes` table from where it stopped. So a slow consumer cannot make the writer wait or
//! drop anything, and a snapshot install (which replaces the table) is handled like any other
//! jump: if the next revision is no longer in the table, the stream ends and the consumer's
//! next `watch` call gets `Compacted`.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;

use crate::db;
use crate::error::StoreError;
use crate::state_reader::StateReader;
use crate::types::Change;

/// Changes read from the table per query.
const PAGE: u32 = 256;

/// Starts a watch of every change with a revision above `since`.
pub(crate) fn watch(
    reader: Arc<StateReader>,
    since: u64,
) -> Result<impl Stream<Item = Change> + Send + 'static, StoreError> {
    let floor = reader.change_floor()?;
    if since < floor {
        return Err(StoreError::Compacted { oldest: floor });
    }
    let cursor = Cursor {
        rx: reader.subscribe(),
        reader,
        last: since,
        buf: VecDeque::new(),
    };
    Ok(futures::stream::unfold(cursor, |mut cursor| async move {
        cursor.next().await.map(|change| (change, cursor))
    }))
}

struct Cursor {
    reader: Arc<StateReader>,
    rx: watch::Receiver<u64>,
    last: u64,
    buf: VecDeque<Change>,
}

impl Cursor {
    async fn next(&mut self) -> Option<Change> {
        loop {
            if let Some(change) = self.buf.pop_front() {
                self.last = change.revision;
                return Some(change);
            }
            if self.reader.is_closed() {
                return None;
            }
            let current = *self.rx.borrow_and_update();
            if current > self.last {
                let reader = Arc::clone(&self.reader);
                let last = self.last;
                let page = match db::spawn_blocking("reading the change history", move || {
                    reader.changes_after(last, PAGE)
                })
                .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, since = last, "watch stream ends: reading changes failed");
                        return None;
                    }
                };
                match page.first() {
                    Some(first) if first.revision == last + 1 => self.buf.extend(page),
                    _ => {
                        tracing::info!(
                            since = last,
                            current,
                            "watch stream ends: history was compacted past it"
                        );
                        return None;
                    }
                }
                continue;
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}
