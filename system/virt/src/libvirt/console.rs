//! [`LibvirtConsole`]: a serial console over a libvirt stream.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use virt::stream::Stream;

use crate::{Console, ConsoleError};

/// What the reader thread passes on.
enum Chunk {
    Data(Vec<u8>),
    Eof,
    Failed(virt::error::Error),
}

/// A blocking libvirt stream read by a helper thread, so that reads can time out without an
/// event loop. Dropping it aborts the stream, which ends the thread's blocking receive.
pub(crate) struct LibvirtConsole {
    stream: Option<Stream>,
    chunks: Receiver<Chunk>,
    pending: Vec<u8>,
    closed: bool,
}

impl LibvirtConsole {
    pub(crate) fn new(stream: Stream, domain: &str) -> std::io::Result<Self> {
        let reader = stream.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("console-{domain}"))
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let chunk = match reader.recv(&mut buf) {
                        Ok(0) => Chunk::Eof,
                        Ok(n) => Chunk::Data(buf[..n].to_vec()),
                        Err(e) => Chunk::Failed(e),
                    };
                    let last = !matches!(chunk, Chunk::Data(_));
                    if tx.send(chunk).is_err() || last {
                        break;
                    }
                }
            })?;
        Ok(Self {
            stream: Some(stream),
            chunks: rx,
            pending: Vec::new(),
            closed: false,
        })
    }
}

impl Console for LibvirtConsole {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, ConsoleError> {
        if self.pending.is_empty() && !self.closed {
            match self.chunks.recv_timeout(timeout) {
                Ok(Chunk::Data(data)) => self.pending = data,
                Ok(Chunk::Eof) | Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Ok(Chunk::Failed(e)) => {
                    self.closed = true;
                    return Err(ConsoleError::Stream(e));
                }
                Err(RecvTimeoutError::Timeout) => return Ok(0),
            }
        }
        if self.pending.is_empty() {
            return Err(ConsoleError::Closed);
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    fn write(&mut self, mut data: &[u8]) -> Result<(), ConsoleError> {
        let stream = self.stream.as_ref().ok_or(ConsoleError::Closed)?;
        while !data.is_empty() {
            let n = stream.send(data).map_err(ConsoleError::Stream)?;
            if n == 0 {
                return Err(ConsoleError::Closed);
            }
            data = &data[n.min(data.len())..];
        }
        Ok(())
    }
}

impl Drop for LibvirtConsole {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            // Wakes the reader thread's receive with an error; it then drops its reference.
            let _ = stream.abort();
        }
    }
}
