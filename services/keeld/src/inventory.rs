//! What a node reports about its hardware and software, read from /proc and /sys.

use std::collections::BTreeMap;
use std::fs;

use keel_model::{CpuInfo, DiskInfo, MemoryInfo, NicInfo, NodeStatus, Versions};

fn read(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The inventory part of a [`NodeStatus`] (liveness fields left default).
pub fn collect() -> NodeStatus {
    NodeStatus {
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        cpu: cpu(),
        memory: memory(),
        disks: disks(),
        nics: nics(),
        versions: Versions {
            keel: env!("CARGO_PKG_VERSION").to_string(),
            kernel: read("/proc/sys/kernel/osrelease"),
            os: os_name(),
        },
        ..Default::default()
    }
}

/// The inventory fields only, for change detection (available memory changes all the time).
pub fn fingerprint(s: &NodeStatus) -> String {
    format!(
        "{:?}{:?}{:?}{:?}{}{:?}",
        s.cpu, s.memory.total_bytes, s.disks, s.nics, s.hostname, s.versions
    )
}

fn cpu() -> CpuInfo {
    let text = read("/proc/cpuinfo");
    let count = text.lines().filter(|l| l.starts_with("processor")).count() as u32;
    let model = text
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    CpuInfo { count, model }
}

fn memory() -> MemoryInfo {
    let text = read("/proc/meminfo");
    let kib = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    MemoryInfo {
        total_bytes: kib("MemTotal:"),
        available_bytes: kib("MemAvailable:"),
    }
}

fn disks() -> Vec<DiskInfo> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if ["loop", "ram", "zram", "dm-", "sr"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let base = format!("/sys/block/{name}");
        let sectors: u64 = read(&format!("{base}/size")).parse().unwrap_or(0);
        out.push(DiskInfo {
            name,
            size_bytes: sectors * 512,
            model: read(&format!("{base}/device/model")),
            rotational: read(&format!("{base}/queue/rotational")) == "1",
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn nics() -> Vec<NicInfo> {
    let mut addrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for ifa in ifaddrs {
            let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
                continue;
            };
            if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                let prefix = u32::from(m.ip()).count_ones();
                addrs
                    .entry(ifa.interface_name.clone())
                    .or_default()
                    .push(format!("{}/{prefix}", a.ip()));
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                let prefix = u128::from(m.ip()).count_ones();
                addrs
                    .entry(ifa.interface_name.clone())
                    .or_default()
                    .push(format!("{}/{prefix}", a.ip()));
            }
        }
    }
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "lo" {
            continue;
        }
        let base = format!("/sys/class/net/{name}");
        out.push(NicInfo {
            mac: read(&format!("{base}/address")),
            state: read(&format!("{base}/operstate")),
            mtu: read(&format!("{base}/mtu")).parse().unwrap_or(0),
            speed_mbps: read(&format!("{base}/speed"))
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .map(|s| s as u32),
            addresses: addrs.remove(&name).unwrap_or_default(),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn os_name() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_machine() {
        let s = super::collect();
        assert!(s.cpu.count >= 1);
        assert!(s.memory.total_bytes > 0);
        assert!(!s.versions.kernel.is_empty());
    }
}
