//! The appliance's first boot: where the answer file comes from and what it sets up on the
//! host before keeld forms or joins its cluster.
//!
//! ```text
//!  keel-seed.service (keeld --seed-only, before systemd-networkd)
//!    KEEL-SEED filesystem (vfat or iso9660)? ─yes─▶ mount read-only, validate answer.toml,
//!        │                                          copy it to STATE_DIR/answer.toml (0600)
//!        ▼
//!    STATE_DIR/answer.toml? ─yes─▶ /run/systemd/network/10-keel-management.network, hostname
//!  keeld.service (keeld --seed): no --answer-file → STATE_DIR/answer.toml if present,
//!    else setup mode
//! ```
//! The state directory is on the data partition, so a node keeps its answer file when the
//! seed is removed, and a new seed replaces it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use keel_model::AnswerFile;
use tracing::{info, warn};

use crate::daemon::Args;

/// Label of the filesystem that carries the answer file.
pub const SEED_LABEL: &str = "KEEL-SEED";
/// Name of the answer file on the seed and in the state directory.
pub const ANSWER_NAME: &str = "answer.toml";
/// Optional keeld environment on the seed (`KEEL_*=value` lines, e.g. test tuning).
pub const ENV_NAME: &str = "keeld.env";
/// The systemd-networkd file written for the management network.
pub const NETWORK_FILE: &str = "/run/systemd/network/10-keel-management.network";
const SEED_MOUNT: &str = "/run/keel/seed";

/// Where the node keeps its answer file.
pub fn state_answer(state_dir: &Path) -> PathBuf {
    state_dir.join(ANSWER_NAME)
}

/// The block device labelled [`SEED_LABEL`], if one is attached.
pub fn find_seed_device() -> Option<PathBuf> {
    let by_label = Path::new("/dev/disk/by-label").join(SEED_LABEL);
    if by_label.exists() {
        return Some(by_label);
    }
    let out = std::process::Command::new("blkid")
        .args(["-L", SEED_LABEL])
        .output()
        .ok()?;
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dev.is_empty()).then(|| PathBuf::from(dev))
}

/// What a seed filesystem carries.
#[derive(Debug, Default)]
pub struct Seed {
    /// `answer.toml`.
    pub answer: Option<String>,
    /// `keeld.env`.
    pub env: Option<String>,
}

/// Mounts `dev` read-only at `dir` (vfat, then iso9660), reads `answer.toml` and
/// `keeld.env`, unmounts.
pub fn read_seed(dev: &Path, dir: &Path) -> anyhow::Result<Seed> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut last = None;
    let mut mounted = false;
    for fstype in ["vfat", "iso9660"] {
        match mount(Some(dev), dir, Some(fstype), flags, None::<&str>) {
            Ok(()) => {
                mounted = true;
                break;
            }
            Err(e) => last = Some(format!("{fstype}: {e}")),
        }
    }
    if !mounted {
        anyhow::bail!(
            "mounting {} (label {SEED_LABEL}) failed; it must be vfat or iso9660 ({})",
            dev.display(),
            last.unwrap_or_default()
        );
    }
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    };
    let seed = read(ANSWER_NAME).and_then(|answer| {
        Ok(Seed {
            answer,
            env: read(ENV_NAME)?,
        })
    });
    if let Err(e) = umount2(dir, MntFlags::MNT_DETACH) {
        warn!(error = %e, dir = %dir.display(), "unmounting the seed");
    }
    seed
}

/// Scales the store's Raft timings by `scale` (1 leaves the defaults).
pub fn scale_timings(cfg: &mut keel_store::StoreConfig, scale: u32) {
    let scale = scale.clamp(1, 100);
    if scale > 1 {
        cfg.heartbeat *= scale;
        cfg.election_min *= scale;
        cfg.election_max *= scale;
        cfg.write_timeout *= scale;
        info!(scale, "Raft timings scaled");
    }
}

/// Copies `keeld.env` from the seed to `STATE_DIR/keeld.env` (read by keeld.service),
/// keeping only `KEEL_*=value` lines; removes the stored one when the seed has none.
pub fn store_env(state_dir: &Path, seed_text: Option<&str>) -> anyhow::Result<()> {
    let path = state_dir.join(ENV_NAME);
    match seed_text {
        Some(text) => {
            let kept: String = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.split_once('=').is_some_and(|(k, _)| {
                        k.starts_with("KEEL_")
                            && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    })
                })
                .map(|l| format!("{l}\n"))
                .collect();
            write_if_changed(&path, &kept, 0o600)?;
        }
        None => {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Validates `text` and stores it as the node's answer file (mode 0600). Returns whether
/// the stored file changed.
pub fn store_answer(state_dir: &Path, text: &str) -> anyhow::Result<bool> {
    AnswerFile::from_toml(text).context("the answer file on the seed is invalid")?;
    let path = state_answer(state_dir);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    crate::identity::write_atomic(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// The systemd-networkd unit for the management network of `answer`.
pub fn render_network(answer: &AnswerFile) -> String {
    let m = &answer.network.management;
    let mut s = String::from(
        "# Written by keeld (keel-seed) from the answer file; do not edit.\n[Match]\n",
    );
    if let Some(mac) = &m.mac {
        s.push_str(&format!("MACAddress={}\n", mac.to_ascii_lowercase()));
    }
    if let Some(name) = &m.interface {
        s.push_str(&format!("Name={name}\n"));
    }
    s.push_str("\n[Link]\nRequiredForOnline=yes\n\n[Network]\n");
    s.push_str(&format!("Address={}\n", m.address));
    if let Some(gw) = m.gateway {
        s.push_str(&format!("Gateway={gw}\n"));
    }
    for dns in &m.dns {
        s.push_str(&format!("DNS={dns}\n"));
    }
    s.push_str("DHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n");
    s
}

/// Writes `content` to `path` if it differs; returns whether it changed.
fn write_if_changed(path: &Path, content: &str, mode: u32) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::identity::write_atomic(path, content.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Host setup from an answer file: the management network and the hostname.
pub fn configure_host(answer: &AnswerFile, network_file: &Path) -> anyhow::Result<()> {
    if write_if_changed(network_file, &render_network(answer), 0o644)? {
        info!(file = %network_file.display(), address = %answer.network.management.address, "management network configured");
    }
    let name = answer.node.name.as_str();
    write_if_changed(Path::new("/etc/hostname"), &format!("{name}\n"), 0o644)?;
    if let Err(e) = nix::unistd::sethostname(name) {
        warn!(error = %e, "setting the hostname");
    }
    Ok(())
}

/// `--seed` / `--seed-only`: finds the answer file (seed filesystem, then the state
/// directory) and, with `mount_seed`, copies it from the seed and sets up the host. Returns
/// `args` with `answer_file` set when there is one.
pub fn apply(mut args: Args, mount_seed: bool) -> anyhow::Result<Args> {
    if mount_seed {
        match find_seed_device() {
            Some(dev) => match read_seed(&dev, Path::new(SEED_MOUNT))? {
                Seed {
                    answer: Some(text),
                    env,
                } => {
                    if store_answer(&args.state_dir, &text)? {
                        info!(seed = %dev.display(), "answer file taken from the seed");
                    }
                    store_env(&args.state_dir, env.as_deref())?;
                }
                Seed { answer: None, .. } => {
                    warn!(seed = %dev.display(), "the {SEED_LABEL} filesystem has no {ANSWER_NAME}")
                }
            },
            None => info!("no {SEED_LABEL} filesystem"),
        }
    }
    if args.answer_file.is_none() {
        let stored = state_answer(&args.state_dir);
        if stored.exists() {
            args.answer_file = Some(stored);
        }
    }
    match &args.answer_file {
        Some(path) if mount_seed => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let answer =
                AnswerFile::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
            configure_host(&answer, Path::new(NETWORK_FILE))?;
        }
        Some(_) => {}
        None => info!("no answer file: the node starts in setup mode"),
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"
[cluster]
name = "lab"
expected_nodes = 3
join_secret = "0123456789abcdef0123"

[admin]
password = "correct horse"

[node]
name = "node1"

[network.management]
mac = "52:54:00:AA:00:01"
address = "10.77.20.11/24"
gateway = "10.77.20.1"
dns = ["10.77.20.1"]
"#;

    #[test]
    fn network_file_matches_by_mac_and_sets_the_static_address() {
        let a = AnswerFile::from_toml(ANSWER).unwrap();
        let unit = render_network(&a);
        assert!(unit.contains("MACAddress=52:54:00:aa:00:01\n"), "{unit}");
        assert!(unit.contains("Address=10.77.20.11/24\n"), "{unit}");
        assert!(unit.contains("Gateway=10.77.20.1\n"), "{unit}");
        assert!(unit.contains("DNS=10.77.20.1\n"), "{unit}");
        assert!(!unit.contains("Name="), "{unit}");
    }

    #[test]
    fn network_file_matches_by_name() {
        let text = ANSWER.replace("mac = \"52:54:00:AA:00:01\"", "interface = \"eth1\"");
        let a = AnswerFile::from_toml(&text).unwrap();
        let unit = render_network(&a);
        assert!(unit.contains("Name=eth1\n"), "{unit}");
        assert!(!unit.contains("Gateway=") || unit.contains("Gateway=10.77.20.1"));
    }

    #[test]
    fn store_answer_refuses_an_invalid_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(store_answer(dir.path(), ANSWER).unwrap());
        assert!(
            !store_answer(dir.path(), ANSWER).unwrap(),
            "same text: unchanged"
        );
        let err = store_answer(dir.path(), "[cluster]\nname = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("invalid"), "{err:#}");
        let kept = std::fs::read_to_string(state_answer(dir.path())).unwrap();
        assert_eq!(kept, ANSWER);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_answer(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn env_keeps_only_keel_variables_and_goes_with_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        store_env(
            dir.path(),
            Some("KEEL_RAFT_TIMING_SCALE=10\nPATH=/evil\n# c\nLD_PRELOAD=x\n"),
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join(ENV_NAME)).unwrap();
        assert_eq!(text, "KEEL_RAFT_TIMING_SCALE=10\n");
        store_env(dir.path(), None).unwrap();
        assert!(!dir.path().join(ENV_NAME).exists());
    }

    #[test]
    fn timings_scale() {
        let mut cfg = keel_store::StoreConfig::new("/x", 1, "c");
        let before = cfg.clone();
        scale_timings(&mut cfg, 1);
        assert_eq!(cfg.election_max, before.election_max);
        scale_timings(&mut cfg, 10);
        assert_eq!(cfg.heartbeat, before.heartbeat * 10);
        assert_eq!(cfg.election_min, before.election_min * 10);
        assert_eq!(cfg.write_timeout, before.write_timeout * 10);
    }

    #[test]
    fn apply_without_seed_mount_uses_the_stored_answer() {
        let dir = tempfile::tempdir().unwrap();
        let args = <Args as clap::Parser>::parse_from([
            "keeld",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ]);
        let none = apply(args.clone(), false).unwrap();
        assert_eq!(none.answer_file, None);
        store_answer(dir.path(), ANSWER).unwrap();
        let some = apply(args, false).unwrap();
        assert_eq!(some.answer_file, Some(state_answer(dir.path())));
    }
}
