//! Running the host tools the dev cluster is built with (`ip`, `mount`, `unshare`, `nsenter`)
//! and reading what the kernel says exists. Every exit status is checked; a failure carries
//! the command line and its stderr.

use std::path::Path;
use std::process::{Command, Stdio};

/// A host command that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// It could not be started.
    #[error("could not run `{command}` (is it installed?)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
}

/// Runs `program args…`, returns its stdout; any non-zero exit is an error.
pub fn run(program: &str, args: &[&str]) -> Result<String, HostError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running");
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when a network interface of this name exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The file `ip netns` binds a named network namespace to.
pub fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}

/// True when a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// True when `path` is a mount point in this process's mount namespace.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mount_points(&info).iter().any(|m| Path::new(m) == path)
}

/// The mount points listed in a `/proc/PID/mountinfo` text, unescaped.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

/// Undoes the kernel's `\040`-style escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The IPv4 addresses with prefixes configured on the host (`ip -o -4 addr show`).
pub fn host_ipv4_networks() -> Result<Vec<(String, String)>, HostError> {
    let out = run("ip", &["-o", "-4", "addr", "show"])?;
    Ok(parse_ip_addr(&out))
}

/// `(interface, address/prefix)` pairs from `ip -o -4 addr show` output.
pub fn parse_ip_addr(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let _index = it.next()?;
            let ifname = it.next()?.to_string();
            let family = it.next()?;
            if family != "inet" {
                return None;
            }
            Some((ifname, it.next()?.to_string()))
        })
        .collect()
}

/// The last `n` lines of a file, or a note saying why there are none.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let info = "22 1 0:21 / /run rw,nosuid - tmpfs tmpfs rw\n\
                    40 22 0:4 / /var/lib/keel\\040dev/ns rw - nsfs nsfs rw\n";
        assert_eq!(mount_points(info), vec!["/run", "/var/lib/keel dev/ns"]);
        assert_eq!(unescape_octal("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_octal("trailing\\"), "trailing\\");
        assert_eq!(unescape_octal("\\9zz"), "\\9zz");
    }

    #[test]
    fn ip_addr_output() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   5: kbr-ab12    inet 10.77.0.1/24 scope global kbr-ab12\\       valid_lft forever\n";
        assert_eq!(
            parse_ip_addr(out),
            vec![
                ("lo".into(), "127.0.0.1/8".into()),
                ("kbr-ab12".into(), "10.77.0.1/24".into())
            ]
        );
    }

    #[test]
    fn failures_carry_the_command_and_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`sh -c echo oops >&2; exit 3` failed"),
            "{err}"
        );
        assert!(err.ends_with(": oops"), "{err}");
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
        assert!(matches!(
            run("/nonexistent/tool", &[]),
            Err(HostError::Spawn { .. })
        ));
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(tail(&p, 2), "3\n4");
        assert_eq!(tail(&p, 10), "1\n2\n3\n4");
        assert!(tail(&dir.path().join("none"), 2).contains("none"));
    }
}
