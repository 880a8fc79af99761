//! Finding and stopping a node's processes without cgroups: a process belongs to a node when
//! `/proc/PID/ns/net` is the node's network namespace (same device and inode as the file
//! `ip netns` bound it to). Every process of a node is found this way, including ones keeld
//! started and ones a user started with `keel dev exec`.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A namespace's identity: `(st_dev, st_ino)` of its nsfs inode.
pub type NsId = (u64, u64);

/// The identity of the namespace bound at (or linked from) `path`.
pub fn ns_id(path: &Path) -> std::io::Result<NsId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Pids of every live process in the network namespace `ns`, this process excluded.
pub fn pids_in_netns(ns: NsId) -> Vec<i32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| u32::try_from(pid).map(|p| p != me).unwrap_or(false))
        .filter(|&pid| {
            ns_id(&Path::new("/proc").join(pid.to_string()).join("ns/net")).ok() == Some(ns)
        })
        .filter(|&pid| is_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// The process state letter from a `/proc/PID/stat` line (after the last `)`).
pub fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// True when `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z' | 'X') | None),
        Err(_) => false,
    }
}

/// `/proc/PID/comm`, trimmed.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `/proc/PID/cmdline` as arguments.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Resident memory of `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS` in bytes from a `/proc/PID/status` text.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The keeld processes among `pids`.
pub fn keelds(pids: &[i32]) -> Vec<i32> {
    named(pids, "keeld")
}

/// The processes among `pids` whose command name (`/proc/PID/comm`) is `name`.
pub fn named(pids: &[i32], name: &str) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|&p| comm(p).as_deref() == Some(name))
        .collect()
}

/// Sends `sig` to each pid; pids that are already gone are ignored.
pub fn signal_all(pids: &[i32], sig: Signal) {
    for &pid in pids {
        if let Err(e) = kill(Pid::from_raw(pid), sig) {
            tracing::debug!(pid, %e, ?sig, "signal not delivered");
        }
    }
}

/// Waits until none of `pids` is alive; returns those still alive at the deadline.
pub fn wait_gone(pids: &[i32], deadline: Duration) -> Vec<i32> {
    let end = Instant::now() + deadline;
    loop {
        reap_children();
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= end {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills every process in the network namespace `ns` with SIGKILL, again for any that appear
/// meanwhile, until none is left or the deadline passes; returns the survivors.
pub fn kill_netns(ns: NsId, deadline: Duration) -> Vec<i32> {
    let end = Instant::now() + deadline;
    loop {
        let pids = pids_in_netns(ns);
        if pids.is_empty() {
            return pids;
        }
        signal_all(&pids, Signal::SIGKILL);
        let left = wait_gone(&pids, Duration::from_millis(500));
        if Instant::now() >= end {
            return if left.is_empty() {
                pids_in_netns(ns)
            } else {
                left
            };
        }
    }
}

/// Collects exited children of this process, so they do not linger as zombies.
pub fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        assert_eq!(stat_state("123 (keeld) S 1 123"), Some('S'));
        assert_eq!(stat_state("123 (a (b) c) Z 1"), Some('Z'));
        assert_eq!(stat_state("garbage"), None);
        assert_eq!(
            parse_vm_rss("Name:\tkeeld\nVmRSS:\t   23456 kB\n"),
            Some(23456 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_alive_and_has_a_command_line() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(is_alive(me));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(!cmdline(me).is_empty());
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn processes_are_found_by_network_namespace_of_this_process() {
        // A child in our own network namespace is found; this process itself is not.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let ns = ns_id(Path::new("/proc/self/ns/net")).unwrap();
        let pids = pids_in_netns(ns);
        assert!(pids.contains(&pid), "{pids:?}");
        assert!(!pids.contains(&i32::try_from(std::process::id()).unwrap()));
        signal_all(&[pid], Signal::SIGKILL);
        let _ = child.wait();
        assert!(!is_alive(pid));
    }

    /// The cgroup-free tracking that `dev stop --kill` relies on, in a real network namespace.
    #[test]
    #[ignore = "host: needs root (network namespaces)"]
    fn kill_netns_kills_exactly_the_processes_of_a_namespace() {
        use std::process::Command;
        let inside = Command::new("unshare")
            .args(["--net", "sh", "-c", "sleep 60 & sleep 60"])
            .spawn()
            .unwrap();
        let outside = Command::new("sleep").arg("60").spawn().unwrap();
        let inside_pid = i32::try_from(inside.id()).unwrap();
        let outside_pid = i32::try_from(outside.id()).unwrap();
        let ns_path = format!("/proc/{inside_pid}/ns/net");
        // unshare execs sh once the namespace exists; wait for that.
        let end = Instant::now() + Duration::from_secs(5);
        let ns = loop {
            let ns = ns_id(Path::new(&ns_path)).unwrap();
            if ns != ns_id(Path::new("/proc/self/ns/net")).unwrap() && pids_in_netns(ns).len() >= 2
            {
                break ns;
            }
            assert!(Instant::now() < end, "the namespace never held its sleeps");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(kill_netns(ns, Duration::from_secs(5)), Vec::<i32>::new());
        assert!(pids_in_netns(ns).is_empty());
        assert!(is_alive(outside_pid));
        signal_all(&[outside_pid], Signal::SIGKILL);
        let mut outside = outside;
        let _ = outside.wait();
        let mut inside = inside;
        let _ = inside.wait();
    }
}
