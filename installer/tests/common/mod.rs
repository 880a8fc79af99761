//! Helpers shared by the installer's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use keel_installer::probe::{self, Contents};

pub const MIB: u64 = 1024 * 1024;

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel-install"))
}

/// A 64 MiB image with Keel's layout; root-a holds a marker.
pub fn small_image(dir: &Path) -> PathBuf {
    let img = dir.join("keel.raw");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 * MIB).unwrap();
    sh(Command::new("sgdisk")
        .args(["-n", "1:2048:+8M", "-t", "1:EF00", "-c", "1:esp"])
        .args(["-n", "2:0:+16M", "-t", "2:8304", "-c", "2:root-a"])
        .args(["-n", "3:0:+16M", "-t", "3:8304", "-c", "3:root-b"])
        .args(["-n", "4:0:0", "-t", "4:8300", "-c", "4:data"])
        .arg(&img));
    let parts = probe::gpt_partitions(&probe::head(&img).unwrap()).unwrap();
    let root_a = parts.iter().find(|p| p.name == "root-a").unwrap();
    let data = parts.iter().find(|p| p.name == "data").unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(root_a.offset)).unwrap();
        f.write_all(b"hsqs-KEEL-ROOT-A").unwrap();
    }
    sh(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "KEEL-DATA", "-E"])
        .arg(format!("offset={}", data.offset))
        .arg(&img)
        .arg(format!("{}k", data.size / 1024)));
    img
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

pub fn keel_parts(target: &Path) -> Vec<probe::GptPartition> {
    match probe::probe(target).unwrap() {
        Contents::KeelInstall(p) => p,
        other => panic!("{} holds {other}", target.display()),
    }
}

pub fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
