//! The machine's disks, from sysfs (`/sys/block`): size, model, serial, removable.

use std::path::{Path, PathBuf};

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`, `vda`, `loop3`).
    pub name: String,
    /// Device node.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Model, if the device reports one.
    pub model: String,
    /// Serial number, if the device reports one.
    pub serial: String,
    /// Removable media (USB sticks, card readers).
    pub removable: bool,
    /// Read-only.
    pub read_only: bool,
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Lists the disks under `sys_block` (normally `/sys/block`): no partitions, RAM disks,
/// zram, empty loop devices or zero-sized devices.
pub fn list(sys_block: &Path) -> std::io::Result<Vec<Disk>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sys_block)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("ram") || name.starts_with("zram") || name.starts_with("sr") {
            continue;
        }
        let dir = entry.path();
        let sectors: u64 = read_trim(&dir.join("size")).parse().unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        if name.starts_with("loop") && !dir.join("loop/backing_file").exists() {
            continue;
        }
        let mut model = read_trim(&dir.join("device/model"));
        if model.is_empty() && name.starts_with("loop") {
            model = format!("loop: {}", read_trim(&dir.join("loop/backing_file")));
        }
        let mut serial = read_trim(&dir.join("device/serial"));
        if serial.is_empty() {
            serial = read_trim(&dir.join("serial"));
        }
        if serial.is_empty() {
            serial = read_trim(&dir.join("device/wwid"));
        }
        out.push(Disk {
            path: PathBuf::from("/dev").join(&name),
            name,
            size: sectors * 512,
            model,
            serial,
            removable: read_trim(&dir.join("removable")) == "1",
            read_only: read_trim(&dir.join("ro")) == "1",
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `12.0 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Whether `dev` or one of its partitions is mounted or used as swap.
pub fn in_use(dev: &Path) -> Option<String> {
    let dev = std::fs::canonicalize(dev).ok()?;
    let dev_s = dev.to_string_lossy().to_string();
    let name = dev.file_name()?.to_string_lossy().to_string();
    let text = format!(
        "{}\n{}",
        std::fs::read_to_string("/proc/mounts").unwrap_or_default(),
        std::fs::read_to_string("/proc/swaps").unwrap_or_default()
    );
    for line in text.lines() {
        let Some(src) = line.split_whitespace().next() else {
            continue;
        };
        let src_c = std::fs::canonicalize(src)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_else(|_| src.to_string());
        let is_part = src_c
            .strip_prefix(&dev_s)
            .map(|rest| {
                let rest = rest.strip_prefix('p').unwrap_or(rest);
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
            })
            .unwrap_or(false);
        if src_c == dev_s || is_part {
            return Some(format!("{src_c} is in use ({})", line.trim()));
        }
    }
    let holders = PathBuf::from("/sys/class/block")
        .join(&name)
        .join("holders");
    if let Ok(mut d) = std::fs::read_dir(holders) {
        if let Some(Ok(h)) = d.next() {
            return Some(format!(
                "{dev_s} is held by {}",
                h.file_name().to_string_lossy()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(root: &Path, name: &str, files: &[(&str, &str)]) {
        for (f, v) in files {
            let p = root.join(name).join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn lists_disks_with_size_model_serial() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        dev(
            root,
            "sda",
            &[
                ("size", "3907029168"),
                ("device/model", "Samsung SSD 870  "),
                ("device/serial", "S6PNNX0R123"),
                ("removable", "0"),
                ("ro", "0"),
            ],
        );
        dev(
            root,
            "nvme0n1",
            &[
                ("size", "1000215216"),
                ("device/model", "WD Blue SN570"),
                ("serial", "22123"),
            ],
        );
        dev(root, "loop0", &[("size", "0")]);
        dev(root, "loop1", &[("size", "2048")]);
        dev(
            root,
            "loop2",
            &[("size", "4096"), ("loop/backing_file", "/tmp/disk.img")],
        );
        dev(root, "ram0", &[("size", "8192")]);
        let disks = list(root).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop2", "nvme0n1", "sda"]);
        let sda = &disks[2];
        assert_eq!(sda.size, 3907029168 * 512);
        assert_eq!(sda.model, "Samsung SSD 870");
        assert_eq!(sda.serial, "S6PNNX0R123");
        assert_eq!(sda.path, PathBuf::from("/dev/sda"));
        assert_eq!(disks[1].serial, "22123");
        assert_eq!(disks[0].model, "loop: /tmp/disk.img");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
