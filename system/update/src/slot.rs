//! A/B slots on a node: which slot runs, writing a verified bundle to the other one, the
//! systemd-boot entries with boot counting, and blessing a good boot.
//!
//! ```text
//!   ESP  loader/loader.conf             default keel-*     (first match in sd-boot's order)
//!        loader/entries/keel-1-a.conf   blessed entry of slot A, generation 1
//!        loader/entries/keel-2-b+3.conf new slot B, 3 tries left (sd-boot renames it on
//!                                       every boot: +2-1, +1-2, +0-3)
//!        keel/<slot>/{vmlinuz,initrd.img}
//! ```
//!
//! systemd-boot orders entries with no tries left last, then by id in version order, newest
//! first; `default keel-*` picks the first. So the newest generation boots while it has tries,
//! and once they run out (every boot of it failed to be blessed) the previous slot's entry is
//! first again: the rollback needs nothing from the failed system. A boot is blessed by
//! renaming its entry to drop the counter ([`bless`]), which keeld does once it is a healthy
//! member of its cluster; `keel-boot-check` reboots a node whose new slot is not blessed in
//! time, so a slot whose keeld never comes up spends its tries and falls back.
//!
//! Every path is in [`Layout`], so the tests run on loop devices and plain files.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

use crate::bundle::{self, Verified};
use crate::error::{io_err, UpdateError};

/// Where a node's slots, boot loader and keys are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Kernel command line (`/proc/cmdline`): `keel.slot=a|b`.
    pub cmdline: PathBuf,
    /// os-release of the running root (`IMAGE_VERSION=`).
    pub os_release: PathBuf,
    /// Partitions by GPT name (`/dev/disk/by-partlabel`): `esp`, `root-a`, `root-b`.
    pub by_partlabel: PathBuf,
    /// Partitions by GPT partition GUID (`/dev/disk/by-partuuid`).
    pub by_partuuid: PathBuf,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// Trusted update keys.
    pub keys: PathBuf,
    /// Filesystem of the ESP (`vfat`; tests on kernels without vfat use another).
    pub esp_fstype: String,
}

impl Layout {
    /// The appliance's layout.
    pub fn system() -> Layout {
        Layout {
            cmdline: "/proc/cmdline".into(),
            os_release: "/etc/os-release".into(),
            by_partlabel: "/dev/disk/by-partlabel".into(),
            by_partuuid: "/dev/disk/by-partuuid".into(),
            esp: "/run/keel/esp".into(),
            keys: "/usr/share/keel/update-keys".into(),
            esp_fstype: "vfat".into(),
        }
    }

    /// Mounts the ESP (partition `esp`) at [`Layout::esp`] unless something is mounted there.
    pub fn ensure_esp_mounted(&self) -> Result<(), UpdateError> {
        fs::create_dir_all(&self.esp)
            .map_err(|e| io_err(format!("creating {}", self.esp.display()), e))?;
        if is_mountpoint(&self.esp) {
            return Ok(());
        }
        let dev = self.by_partlabel.join("esp");
        let out = Command::new("mount")
            .args(["-t", &self.esp_fstype, "-o", "rw,nosuid,nodev,noexec"])
            .arg(&dev)
            .arg(&self.esp)
            .output()
            .map_err(|e| io_err("running mount".into(), e))?;
        // Another unit (keel-boot-check) may have mounted it since the check above.
        if !out.status.success() && !is_mountpoint(&self.esp) {
            return Err(UpdateError::Slot(format!(
                "mounting the ESP {} at {} failed: {}",
                dev.display(),
                self.esp.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn entries_dir(&self) -> PathBuf {
        self.esp.join("loader/entries")
    }
}

fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(parent)) = (fs::metadata(p), p.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|pm| pm.dev() != me.dev())
}

/// Root slot A or B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// GPT partition `root-a`.
    A,
    /// GPT partition `root-b`.
    B,
}

impl Slot {
    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// From `a`/`b`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// GPT partition name.
    pub fn partlabel(self) -> String {
        format!("root-{}", self.as_str())
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The slot this system booted from (`keel.slot=` on the kernel command line).
pub fn running_slot(layout: &Layout) -> Result<Slot, UpdateError> {
    let text = fs::read_to_string(&layout.cmdline)
        .map_err(|e| io_err(format!("reading {}", layout.cmdline.display()), e))?;
    slot_of_cmdline(&text).ok_or_else(|| {
        UpdateError::Slot(format!(
            "no keel.slot= on the kernel command line ({}): not booted from an A/B image",
            layout.cmdline.display()
        ))
    })
}

/// `keel.slot=` of a kernel command line.
pub fn slot_of_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("keel.slot="))
        .and_then(Slot::parse)
}

/// The image version the running root says it is (`IMAGE_VERSION=` of os-release).
pub fn running_version(layout: &Layout) -> Option<String> {
    let text = fs::read_to_string(&layout.os_release).ok()?;
    image_version_of(&text)
}

/// `IMAGE_VERSION=` of an os-release text.
pub fn image_version_of(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// A loader entry file of Keel's: `keel-<generation>-<slot>[+<left>[-<done>]].conf`
/// (the first image's `keel-a.conf` is generation 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name.
    pub file: String,
    /// Generation: every install writes one more than the highest.
    pub generation: u64,
    /// Slot it boots.
    pub slot: Slot,
    /// Boot counter `(tries left, tries done)`; `None` once blessed.
    pub counter: Option<(u32, u32)>,
}

impl Entry {
    /// Parses a file name; `None` for files that are not Keel's entries.
    pub fn parse(file: &str) -> Option<Entry> {
        let stem = file.strip_suffix(".conf")?.strip_prefix("keel-")?;
        let (base, counter) = match stem.split_once('+') {
            Some((base, c)) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                    None => (c.parse().ok()?, 0),
                };
                (base, Some((left, done)))
            }
            None => (stem, None),
        };
        let (generation, slot) = match base.split_once('-') {
            Some((g, s)) => (g.parse().ok()?, Slot::parse(s)?),
            None => (0, Slot::parse(base)?),
        };
        Some(Entry {
            file: file.to_string(),
            generation,
            slot,
            counter,
        })
    }

    /// The file name without the boot counter.
    pub fn blessed_name(&self) -> String {
        format!("keel-{}-{}.conf", self.generation, self.slot)
    }

    /// Tries left is 0: systemd-boot will not pick it by default.
    pub fn is_bad(&self) -> bool {
        matches!(self.counter, Some((0, _)))
    }
}

/// Keel's loader entries on the ESP, newest generation first.
pub fn entries(layout: &Layout) -> Result<Vec<Entry>, UpdateError> {
    let dir = layout.entries_dir();
    let rd = fs::read_dir(&dir).map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    let mut out: Vec<Entry> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(Entry::parse))
        .collect();
    out.sort_by(|a, b| b.generation.cmp(&a.generation).then(a.file.cmp(&b.file)));
    Ok(out)
}

/// What systemd-boot will start by default, by the same rule it uses: entries with tries left
/// before those without, then the newest generation.
pub fn default_entry(entries: &[Entry]) -> Option<&Entry> {
    entries
        .iter()
        .min_by_key(|e| (e.is_bad(), std::cmp::Reverse(e.generation)))
}

/// How to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Boot tries the new slot gets before systemd-boot falls back.
    pub tries: u32,
    /// Install an older (or the same) version.
    pub allow_downgrade: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            tries: 3,
            allow_downgrade: false,
        }
    }
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The slot written.
    pub slot: Slot,
    /// The version it holds.
    pub version: String,
    /// The loader entry file written (with its counter).
    pub entry: String,
}

/// Verifies `bundle` completely, then writes it to the slot that is not running: the root to
/// its partition (read back and checked), kernel and initrd to `keel/<slot>/` on the ESP, and a
/// new loader entry with a boot counter. A bundle that fails verification changes nothing.
pub fn install(
    layout: &Layout,
    bundle_path: &Path,
    opts: &InstallOptions,
) -> Result<Installed, UpdateError> {
    let running = running_slot(layout)?;
    let target = running.other();
    let keys = bundle::load_keys(&layout.keys)?;
    let current = running_version(layout);
    let verified = bundle::verify(bundle_path, &keys, current.as_deref(), opts.allow_downgrade)?;
    info!(version = %verified.manifest.version, key = %verified.key_id, slot = %target, "bundle verified");

    let existing = entries(layout)?;
    if let Some(trial) = existing
        .iter()
        .find(|e| e.slot == running)
        .filter(|e| e.counter.is_some())
    {
        return Err(UpdateError::OnTrial {
            slot: running.to_string(),
            entry: trial.file.clone(),
        });
    }
    let template = existing
        .iter()
        .filter(|e| e.slot == running)
        .min_by_key(|e| (e.counter.is_some(), std::cmp::Reverse(e.generation)))
        .ok_or_else(|| {
            UpdateError::Slot(format!(
                "no loader entry for the running slot {running} in {}",
                layout.entries_dir().display()
            ))
        })?;
    let options = entry_options(&layout.entries_dir().join(&template.file))?;
    let part = layout.by_partlabel.join(target.partlabel());
    let partuuid = partuuid_of(layout, &part)?;
    let generation = existing.iter().map(|e| e.generation).max().unwrap_or(0) + 1;

    // Nothing may boot the target slot while it is being written.
    for e in existing.iter().filter(|e| e.slot == target) {
        let p = layout.entries_dir().join(&e.file);
        fs::remove_file(&p).map_err(|e| io_err(format!("removing {}", p.display()), e))?;
    }
    sync_dir(&layout.entries_dir())?;

    write_payload(layout, bundle_path, &verified, &part, target)?;

    let options = retarget_options(&options, &partuuid, target);
    let entry = format!("keel-{generation}-{target}+{}.conf", opts.tries.max(1));
    let body = format!(
        "title Keel {} (slot {})\nversion {}\nlinux /keel/{target}/vmlinuz\ninitrd /keel/{target}/initrd.img\noptions {options}\n",
        verified.manifest.version,
        target.as_str().to_uppercase(),
        verified.manifest.version,
    );
    write_atomic(&layout.entries_dir().join(&entry), body.as_bytes())?;
    ensure_loader_default(layout)?;
    info!(slot = %target, entry = %entry, "slot written; the next boot tries it");
    Ok(Installed {
        slot: target,
        version: verified.manifest.version,
        entry,
    })
}

fn write_payload(
    layout: &Layout,
    bundle_path: &Path,
    verified: &Verified,
    part: &Path,
    target: Slot,
) -> Result<(), UpdateError> {
    let f = File::open(bundle_path)
        .map_err(|e| io_err(format!("opening {}", bundle_path.display()), e))?;
    let mut r = BufReader::with_capacity(1024 * 1024, f);
    r.seek(SeekFrom::Start(verified.payload_offset))
        .map_err(|e| io_err("seeking to the payload".into(), e))?;
    let kdir = layout.esp.join("keel").join(target.as_str());
    fs::create_dir_all(&kdir).map_err(|e| io_err(format!("creating {}", kdir.display()), e))?;
    for entry in &verified.manifest.files {
        match entry.name.as_str() {
            "root" => {
                let mut dev = OpenOptions::new()
                    .write(true)
                    .open(part)
                    .map_err(|e| io_err(format!("opening {}", part.display()), e))?;
                let cap = dev
                    .seek(SeekFrom::End(0))
                    .map_err(|e| io_err(format!("sizing {}", part.display()), e))?;
                if cap < entry.size {
                    return Err(UpdateError::Slot(format!(
                        "the root ({} bytes) does not fit {} ({cap} bytes)",
                        entry.size,
                        part.display()
                    )));
                }
                dev.seek(SeekFrom::Start(0))
                    .map_err(|e| io_err(format!("seeking {}", part.display()), e))?;
                bundle::copy_hashed(&mut r, entry, &mut dev)?;
                dev.sync_all()
                    .map_err(|e| io_err(format!("syncing {}", part.display()), e))?;
                drop(dev);
                let mut back = File::open(part)
                    .map_err(|e| io_err(format!("reading back {}", part.display()), e))?;
                let got = bundle::hash_prefix(&mut back, entry.size)?;
                if got != entry.sha256.to_ascii_lowercase() {
                    return Err(UpdateError::HashMismatch {
                        file: format!("{} read back", part.display()),
                        expected: entry.sha256.clone(),
                        actual: got,
                    });
                }
            }
            name => {
                let dst = kdir.join(name);
                let tmp = kdir.join(format!("{name}.new"));
                let mut out = File::create(&tmp)
                    .map_err(|e| io_err(format!("creating {}", tmp.display()), e))?;
                bundle::copy_hashed(&mut r, entry, &mut out)?;
                out.sync_all()
                    .map_err(|e| io_err(format!("syncing {}", tmp.display()), e))?;
                fs::rename(&tmp, &dst)
                    .map_err(|e| io_err(format!("renaming {}", tmp.display()), e))?;
            }
        }
    }
    sync_dir(&kdir)
}

fn entry_options(path: &Path) -> Result<String, UpdateError> {
    let text =
        fs::read_to_string(path).map_err(|e| io_err(format!("reading {}", path.display()), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("options "))
        .map(|o| o.trim().to_string())
        .ok_or_else(|| UpdateError::Slot(format!("{} has no options line", path.display())))
}

/// The running entry's kernel options with `root=` and `keel.slot=` pointing at `target`.
pub fn retarget_options(options: &str, partuuid: &str, target: Slot) -> String {
    let mut out: Vec<String> = options
        .split_whitespace()
        .filter(|w| !w.starts_with("root=") && !w.starts_with("keel.slot="))
        .map(str::to_string)
        .collect();
    out.insert(0, format!("root=PARTUUID={partuuid}"));
    out.push(format!("keel.slot={target}"));
    out.join(" ")
}

fn partuuid_of(layout: &Layout, part: &Path) -> Result<String, UpdateError> {
    let want =
        fs::canonicalize(part).map_err(|e| io_err(format!("resolving {}", part.display()), e))?;
    let rd = fs::read_dir(&layout.by_partuuid)
        .map_err(|e| io_err(format!("reading {}", layout.by_partuuid.display()), e))?;
    for e in rd.filter_map(|e| e.ok()) {
        if fs::canonicalize(e.path()).is_ok_and(|p| p == want) {
            if let Some(name) = e.file_name().to_str() {
                return Ok(name.to_string());
            }
        }
    }
    Err(UpdateError::Slot(format!(
        "no partition GUID for {} in {}",
        part.display(),
        layout.by_partuuid.display()
    )))
}

fn ensure_loader_default(layout: &Layout) -> Result<(), UpdateError> {
    let path = layout.esp.join("loader/loader.conf");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("default"))
        .map(str::to_string)
        .collect();
    lines.insert(0, "default keel-*".to_string());
    let new = lines.join("\n") + "\n";
    if new != text {
        write_atomic(&path, new.as_bytes())?;
    }
    Ok(())
}

/// Marks the running boot good: the running slot's newest entry loses its boot counter (as
/// systemd-bless-boot does), and older entries of the same slot go. Returns the new file name,
/// or `None` when there was nothing to bless.
pub fn bless(layout: &Layout) -> Result<Option<String>, UpdateError> {
    let running = running_slot(layout)?;
    let all = entries(layout)?;
    let Some(newest) = all.iter().find(|e| e.slot == running) else {
        return Err(UpdateError::Slot(format!(
            "no loader entry for the running slot {running}"
        )));
    };
    let dir = layout.entries_dir();
    for stale in all
        .iter()
        .filter(|e| e.slot == running && e.generation < newest.generation)
    {
        let p = dir.join(&stale.file);
        fs::remove_file(&p).map_err(|e| io_err(format!("removing {}", p.display()), e))?;
    }
    if newest.counter.is_none() {
        return Ok(None);
    }
    let name = newest.blessed_name();
    fs::rename(dir.join(&newest.file), dir.join(&name))
        .map_err(|e| io_err(format!("renaming {} to {name}", newest.file), e))?;
    sync_dir(&dir)?;
    info!(entry = %name, "boot blessed");
    Ok(Some(name))
}

/// Where a node's boot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The running slot.
    pub slot: Slot,
    /// The running image version.
    pub version: Option<String>,
    /// The running slot's newest entry still carries a boot counter: not blessed yet.
    pub pending: bool,
    /// The entry systemd-boot starts next time.
    pub next: Option<Entry>,
}

/// Reads where the boot stands.
pub fn boot_state(layout: &Layout) -> Result<BootState, UpdateError> {
    let slot = running_slot(layout)?;
    let all = entries(layout)?;
    let pending = all
        .iter()
        .find(|e| e.slot == slot)
        .is_some_and(|e| e.counter.is_some());
    Ok(BootState {
        slot,
        version: running_version(layout),
        pending,
        next: default_entry(&all).cloned(),
    })
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), UpdateError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| io_err(format!("creating {}", tmp.display()), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(format!("renaming to {}", path.display()), e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    // vfat directories cannot always be opened for fsync; the file syncs carry the data.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        let e = Entry::parse("keel-2-b+3.conf").unwrap();
        assert_eq!(
            (e.generation, e.slot, e.counter),
            (2, Slot::B, Some((3, 0)))
        );
        let e = Entry::parse("keel-2-b+0-3.conf").unwrap();
        assert!(e.is_bad());
        assert_eq!(e.blessed_name(), "keel-2-b.conf");
        let e = Entry::parse("keel-a.conf").unwrap();
        assert_eq!((e.generation, e.slot, e.counter), (0, Slot::A, None));
        assert!(Entry::parse("keel-2-c.conf").is_none());
        assert!(Entry::parse("other.conf").is_none());
        assert!(Entry::parse("keel-1-a+x.conf").is_none());
    }

    #[test]
    fn default_follows_systemd_boot() {
        let parse = |n: &[&str]| {
            n.iter()
                .map(|f| Entry::parse(f).unwrap())
                .collect::<Vec<_>>()
        };
        let es = parse(&["keel-1-a.conf", "keel-2-b+3.conf"]);
        assert_eq!(default_entry(&es).unwrap().file, "keel-2-b+3.conf");
        let es = parse(&["keel-1-a.conf", "keel-2-b+0-3.conf"]);
        assert_eq!(default_entry(&es).unwrap().file, "keel-1-a.conf");
        let es = parse(&["keel-3-a+1-2.conf", "keel-2-b.conf"]);
        assert_eq!(default_entry(&es).unwrap().file, "keel-3-a+1-2.conf");
    }

    #[test]
    fn cmdline_and_options() {
        assert_eq!(
            slot_of_cmdline("root=PARTUUID=x ro quiet keel.slot=b\n"),
            Some(Slot::B)
        );
        assert_eq!(slot_of_cmdline("root=/dev/sda1"), None);
        assert_eq!(
            retarget_options(
                "root=PARTUUID=aaa rootfstype=squashfs ro keel.slot=a",
                "bbb",
                Slot::B
            ),
            "root=PARTUUID=bbb rootfstype=squashfs ro keel.slot=b"
        );
        assert_eq!(
            image_version_of("NAME=\"Keel\"\nIMAGE_VERSION=\"0.1.0-2\"\n").as_deref(),
            Some("0.1.0-2")
        );
    }
}
