//! `qemu-img` on volume files: create, copy, grow, measure and snapshot them while no QEMU
//! has them open (a running domain's disks change through libvirt instead). Each file is
//! written under a temporary name and renamed into place, so a crash leaves either nothing
//! or a whole file.

use std::path::{Path, PathBuf};

use keel_model::VolumeFormat;
use serde::Deserialize;

/// A file's format as qemu-img names it.
pub fn format_name(format: VolumeFormat) -> &'static str {
    match format {
        VolumeFormat::Qcow2 => "qcow2",
        VolumeFormat::Raw => "raw",
    }
}

async fn run(args: &[&std::ffi::OsStr], what: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running qemu-img to {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img could not {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn tmp_of(path: &Path) -> PathBuf {
    path.with_extension("creating")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Creates `path` of `size` bytes: blank, or a thin qcow2 overlay on `backing` (a file and
/// its qemu-img format).
pub async fn create(
    path: &Path,
    format: VolumeFormat,
    backing: Option<(&Path, &str)>,
    size: u64,
) -> Result<(), String> {
    let tmp = tmp_of(path);
    let size_s = size.to_string();
    let mut args = vec![os("create"), os("-q"), os("-f"), os(format_name(format))];
    if let Some((file, fmt)) = backing {
        args.extend([os("-F"), os(fmt), os("-b"), file.as_os_str()]);
    }
    args.extend([tmp.as_os_str(), os(&size_s)]);
    run(&args, "create a volume").await?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// Copies `src` to `dst` (qcow2). With `backing`, `dst` is a thin overlay on it holding only
/// what differs; snapshots inside `src` are not copied.
pub async fn copy(src: &Path, dst: &Path, backing: Option<(&Path, &str)>) -> Result<(), String> {
    let tmp = tmp_of(dst);
    let mut args = vec![os("convert"), os("-q"), os("-O"), os("qcow2")];
    if let Some((file, fmt)) = backing {
        args.extend([os("-B"), file.as_os_str(), os("-F"), os(fmt)]);
    }
    args.extend([src.as_os_str(), tmp.as_os_str()]);
    run(&args, "copy a volume").await?;
    std::fs::rename(&tmp, dst).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// Grows `path` to `size` bytes (never shrinks: qemu-img refuses that without --shrink).
pub async fn grow(path: &Path, format: VolumeFormat, size: u64) -> Result<(), String> {
    let size_s = size.to_string();
    run(
        &[
            os("resize"),
            os("-q"),
            os("-f"),
            os(format_name(format)),
            path.as_os_str(),
            os(&size_s),
        ],
        "grow a volume",
    )
    .await
    .map(|_| ())
}

/// What `qemu-img info` says about a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Info {
    /// Size the guest sees.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// Bytes on disk.
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    /// Internal snapshots.
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
}

/// One internal snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
}

/// `qemu-img info` of `path`, readable while a guest runs (`-U`).
pub async fn info(path: &Path) -> Result<Info, String> {
    let out = run(
        &[os("info"), os("-U"), os("--output=json"), path.as_os_str()],
        "read a volume",
    )
    .await?;
    parse_info(&out)
}

/// Parses `qemu-img info --output=json`.
pub fn parse_info(json: &str) -> Result<Info, String> {
    serde_json::from_str(json).map_err(|e| format!("unreadable qemu-img info: {e}"))
}

/// What to do with an internal snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    /// Take it.
    Create,
    /// Go back to it.
    Apply,
    /// Remove it.
    Delete,
}

/// Takes, applies or deletes internal snapshot `name` of the qcow2 file `path`.
pub async fn snapshot(path: &Path, op: SnapshotOp, name: &str) -> Result<(), String> {
    let (flag, what) = match op {
        SnapshotOp::Create => ("-c", "take a snapshot"),
        SnapshotOp::Apply => ("-a", "revert to a snapshot"),
        SnapshotOp::Delete => ("-d", "delete a snapshot"),
    };
    run(
        &[os("snapshot"), os(flag), os(name), path.as_os_str()],
        what,
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_with_snapshots() {
        let json = r#"{"virtual-size": 1073741824, "filename": "x.qcow2", "format": "qcow2",
            "actual-size": 200704, "snapshots": [{"icount": 0, "vm-state-size": 0,
            "date-sec": 1, "date-nsec": 0, "vm-clock-sec": 0, "vm-clock-nsec": 0,
            "id": "1", "name": "s1"}]}"#;
        let info = parse_info(json).unwrap();
        assert_eq!(info.virtual_size, 1 << 30);
        assert_eq!(info.actual_size, 200704);
        assert_eq!(info.snapshots[0].name, "s1");
        assert!(parse_info(r#"{"virtual-size": 5}"#)
            .unwrap()
            .snapshots
            .is_empty());
        assert!(parse_info("nonsense").is_err());
    }

    #[tokio::test]
    async fn create_grow_snapshot_copy_real_files() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("qemu-img missing; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.qcow2");
        create(&a, VolumeFormat::Qcow2, None, 1 << 20)
            .await
            .unwrap();
        assert_eq!(info(&a).await.unwrap().virtual_size, 1 << 20);
        grow(&a, VolumeFormat::Qcow2, 4 << 20).await.unwrap();
        assert_eq!(info(&a).await.unwrap().virtual_size, 4 << 20);
        let shrink = grow(&a, VolumeFormat::Qcow2, 1 << 20).await.unwrap_err();
        assert!(shrink.contains("could not grow"), "{shrink}");
        snapshot(&a, SnapshotOp::Create, "s1").await.unwrap();
        assert_eq!(info(&a).await.unwrap().snapshots[0].name, "s1");
        snapshot(&a, SnapshotOp::Apply, "s1").await.unwrap();
        let b = dir.path().join("b.qcow2");
        copy(&a, &b, None).await.unwrap();
        let ib = info(&b).await.unwrap();
        assert_eq!(ib.virtual_size, 4 << 20);
        assert!(ib.snapshots.is_empty(), "a copy has no snapshots");
        snapshot(&a, SnapshotOp::Delete, "s1").await.unwrap();
        assert!(info(&a).await.unwrap().snapshots.is_empty());
        // An overlay copied relative to its backing file stays an overlay.
        let c = dir.path().join("c.qcow2");
        create(&c, VolumeFormat::Qcow2, Some((&b, "qcow2")), 4 << 20)
            .await
            .unwrap();
        let d = dir.path().join("d.qcow2");
        copy(&c, &d, Some((&b, "qcow2"))).await.unwrap();
        assert_eq!(info(&d).await.unwrap().virtual_size, 4 << 20);
        assert!(!dir.path().join("d.creating").exists());
    }
}
