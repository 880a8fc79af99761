//! What a disk holds: a GPT (and whether it is a Keel install), an MBR partition table, or a
//! filesystem/volume signature. Reads only; works on block devices and image files alike.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One GPT partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptPartition {
    /// 1-based partition number.
    pub number: u32,
    /// Partition name (the GPT label, e.g. `root-a`).
    pub name: String,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// What was found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Nothing recognisable in the first MiB: safe to overwrite.
    Empty,
    /// A GPT whose partitions are Keel's (esp, root-a, root-b, data).
    KeelInstall(Vec<GptPartition>),
    /// Some other partition table.
    PartitionTable {
        /// "gpt" or "mbr".
        kind: &'static str,
        /// How many partitions it lists.
        partitions: usize,
    },
    /// A filesystem or volume signature on the whole disk.
    Filesystem(&'static str),
    /// Not zero, but nothing known: unknown data.
    UnknownData,
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contents::Empty => write!(f, "empty"),
            Contents::KeelInstall(_) => write!(f, "an existing Keel install"),
            Contents::PartitionTable { kind, partitions } => {
                write!(f, "a {kind} partition table with {partitions} partition(s)")
            }
            Contents::Filesystem(fs) => write!(f, "a {fs} signature"),
            Contents::UnknownData => write!(f, "data of an unknown kind"),
        }
    }
}

/// Why probing failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {cause}")]
pub struct ProbeError {
    path: String,
    // Not a `source`: the message already says it, and `{:#}` would say it twice.
    cause: std::io::Error,
}

const PROBE_BYTES: usize = 1024 * 1024;

/// Filesystem and volume signatures: (offset, magic, name).
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (1080, &[0x53, 0xef], "ext2/3/4"),
    (0, b"XFSB", "xfs"),
    (65600, b"_BHRfS_M", "btrfs"),
    (0, b"hsqs", "squashfs"),
    (1024, &[0xe2, 0xe1, 0xf5, 0xe0], "erofs"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (512, b"LABELONE", "LVM"),
    (4086, b"SWAPSPACE2", "swap"),
    (32769, b"CD001", "iso9660"),
    (54, b"FAT1", "vfat"),
    (82, b"FAT32", "vfat"),
    (3, b"NTFS    ", "ntfs"),
    (0, b"ZFS", "zfs"),
];

/// Reads the first MiB of `path` (less if it is shorter).
pub fn head(path: &Path) -> Result<Vec<u8>, ProbeError> {
    let err = |cause| ProbeError {
        path: path.display().to_string(),
        cause,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    f.by_ref()
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(err)?;
    Ok(buf)
}

/// What `path` holds.
pub fn probe(path: &Path) -> Result<Contents, ProbeError> {
    let buf = head(path)?;
    if let Some(parts) = gpt_partitions(&buf) {
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        if names.contains(&"root-a") && names.contains(&"data") {
            return Ok(Contents::KeelInstall(parts));
        }
        return Ok(Contents::PartitionTable {
            kind: "gpt",
            partitions: parts.len(),
        });
    }
    for (offset, magic, name) in SIGNATURES {
        if buf.len() >= offset + magic.len() && &buf[*offset..offset + magic.len()] == *magic {
            return Ok(Contents::Filesystem(name));
        }
    }
    if buf.len() >= 512 && buf[510] == 0x55 && buf[511] == 0xaa {
        let used = (0..4).filter(|i| buf[446 + i * 16 + 4] != 0).count();
        if used > 0 {
            return Ok(Contents::PartitionTable {
                kind: "mbr",
                partitions: used,
            });
        }
    }
    if buf.iter().all(|b| *b == 0) {
        Ok(Contents::Empty)
    } else {
        Ok(Contents::UnknownData)
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The GPT partitions in `buf` (the disk's first MiB), for 512- or 4096-byte sectors.
pub fn gpt_partitions(buf: &[u8]) -> Option<Vec<GptPartition>> {
    for sector in [512usize, 4096] {
        if buf.get(sector..sector + 8) != Some(b"EFI PART".as_slice()) {
            continue;
        }
        let hdr = &buf[sector..];
        let entries_lba = le_u64(hdr, 72)? as usize;
        let count = le_u32(hdr, 80)? as usize;
        let size = le_u32(hdr, 84)? as usize;
        if size < 128 || count > 1024 {
            return None;
        }
        let mut parts = Vec::new();
        for i in 0..count {
            let at = entries_lba * sector + i * size;
            let Some(e) = buf.get(at..at + size) else {
                break;
            };
            if e[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let first = le_u64(e, 32)?;
            let last = le_u64(e, 40)?;
            let name16: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0)
                .collect();
            parts.push(GptPartition {
                number: i as u32 + 1,
                name: String::from_utf16_lossy(&name16),
                offset: first * sector as u64,
                size: (last.saturating_sub(first) + 1) * sector as u64,
            });
        }
        return Some(parts);
    }
    None
}

/// Size in bytes of a block device or file.
pub fn size_of(path: &Path) -> std::io::Result<u64> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(at: usize, bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut data = vec![0u8; 70 * 1024];
        data[at..at + bytes.len()].copy_from_slice(bytes);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &data).unwrap();
        f
    }

    #[test]
    fn zeros_are_empty() {
        let f = file_with(0, &[0]);
        assert_eq!(probe(f.path()).unwrap(), Contents::Empty);
    }

    #[test]
    fn filesystem_signatures_are_named() {
        for (at, magic, name) in [
            (1080, &[0x53u8, 0xef][..], "ext2/3/4"),
            (0, b"XFSB", "xfs"),
            (65600, b"_BHRfS_M", "btrfs"),
            (4086, b"SWAPSPACE2", "swap"),
        ] {
            let f = file_with(at, magic);
            assert_eq!(probe(f.path()).unwrap(), Contents::Filesystem(name));
        }
    }

    #[test]
    fn mbr_with_a_partition_is_a_partition_table() {
        let mut data = vec![0u8; 4096];
        data[510] = 0x55;
        data[511] = 0xaa;
        data[446 + 4] = 0x83;
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &data).unwrap();
        assert_eq!(
            probe(f.path()).unwrap(),
            Contents::PartitionTable {
                kind: "mbr",
                partitions: 1
            }
        );
    }

    #[test]
    fn random_bytes_are_unknown_data() {
        let f = file_with(100, b"hello");
        assert_eq!(probe(f.path()).unwrap(), Contents::UnknownData);
    }
}
