//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): `READY=1` once the API
//! listens, `STATUS=` on phase changes, and `WATCHDOG=1` from the async runtime at half the
//! watchdog interval, so a wedged runtime gets keeld restarted. A no-op when keeld does not
//! run under systemd (no `NOTIFY_SOCKET`), as in `keel dev`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

/// Sends `state` (e.g. `READY=1`) to systemd's notify socket, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "notify socket");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        debug!(error = %e, "sd_notify");
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells systemd keeld is ready and keeps its watchdog fed until shutdown.
pub fn ready(mut shutdown: watch::Receiver<bool>) {
    notify("READY=1");
    if let Some(every) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tokio::select! {
                    _ = tick.tick() => notify("WATCHDOG=1"),
                    _ = shutdown.changed() => {
                        notify("STOPPING=1");
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        // Only this test sets NOTIFY_SOCKET in this process.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
