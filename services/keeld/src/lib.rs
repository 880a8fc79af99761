//! keeld, Keel's node daemon: the HTTPS API, the replicated store, cluster formation and
//! membership, and (in later issues) the reconcilers that drive the host.
//!
//! ```text
//!   clients ──HTTPS 8443──▶ api ──▶ member ──▶ keel_store (openraft + SQLite)
//!                                     │  followers forward writes / read-index to the leader
//!   peers  ◀─mTLS 7443─▶ rpc / peer (Raft RPCs, forwarded writes, joins, heartbeats)
//!   discovery (multicast beacons) ──▶ formation (pure) ──▶ daemon: found or join
//!   leader: liveness (Ready/NotReady) + membership (learners → odd voters)
//! ```
#![warn(missing_docs)]
#![recursion_limit = "256"]
// Tests may unwrap (STYLE H13); the workspace lints deny it everywhere else.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod agent;
pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cloudinit;
pub mod compute;
pub mod console;
pub mod daemon;
pub mod discovery;
pub mod error;
pub mod formation;
pub mod host;
pub mod hostconf;
pub mod hotplug;
pub mod identity;
pub mod images;
pub mod inventory;
pub mod join;
pub mod leader;
pub mod lifecycle;
pub mod member;
pub mod migrate;
pub mod network;
pub mod notify;
pub mod peer;
pub mod pki;
pub mod rpc;
pub mod scheduler;
pub mod seed;
pub mod storage;
pub mod tls;
pub mod upgrade;
pub mod usage;
pub mod wake;

/// HTTPS API port.
pub const API_PORT: u16 = 8443;
/// Node-to-node port (mutual TLS).
pub const PEER_PORT: u16 = 7443;

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Logging setup.
pub mod telemetry {
    /// Logs to stderr, filtered by `RUST_LOG` (default `info`).
    pub fn init(json: bool) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
        use std::io::IsTerminal;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
    }
}

/// Keeps glibc from holding on to large freed blocks. Password hashing allocates ~19 MiB at a
/// time; with glibc's dynamic mmap threshold those blocks land on the heap after the first one
/// and stay in the process's RSS. A fixed threshold returns them to the OS on free.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called once at start, before
    // any other thread exists, with a valid parameter and value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs keeld on a multi-threaded runtime and turns the outcome into an exit code.
pub fn main_with(args: daemon::Args) -> std::process::ExitCode {
    tune_allocator();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keeld: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keeld: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
