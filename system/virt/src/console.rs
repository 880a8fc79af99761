//! [`Console`]: a domain's serial console as a byte stream.

use std::time::Duration;

/// A serial console attached with [`Hypervisor::open_console`](crate::Hypervisor::open_console).
/// Dropping it detaches at once, even while nothing arrives.
///
/// Over libvirt it is a blocking libvirt stream read by a helper thread, so reads can time out
/// without a process-wide libvirt event loop; the console of a stopped domain, or one taken
/// over by another client, reads as [`ConsoleError::Closed`].
pub trait Console: Send {
    /// Copies what the guest wrote into `buf`, waiting at most `timeout` for something to
    /// arrive; `Ok(0)` means nothing arrived in time.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, ConsoleError>;

    /// Sends bytes to the guest, as if typed.
    fn write(&mut self, data: &[u8]) -> Result<(), ConsoleError>;
}

/// Why a console read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The domain stopped or another client took the console over.
    #[error("console closed")]
    Closed,
    /// The libvirt stream failed.
    #[error("console stream failed")]
    Stream(#[source] virt::error::Error),
}
