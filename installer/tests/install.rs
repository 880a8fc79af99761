//! keel-install end to end on image files and (as root) a loop device: a small image with
//! Keel's partition layout (esp, root-a, root-b, data with ext4) stands in for keel.raw so
//! the test runs in seconds; `make e2e` boots the real one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use keel_installer::install::{self, InstallOptions, ANSWER_IN_DATA};
use keel_installer::probe::{self, Contents};

mod common;
use common::{bin, keel_parts, nix_is_root, read_at, sh, small_image, MIB};
const ANSWER: &str = r#"[cluster]
name = "lab"
expected_nodes = 3
join_secret = "0123456789abcdef0123"

[admin]
password = "correct horse"

[node]
name = "node1"

[network.management]
mac = "52:54:00:77:20:11"
address = "10.77.20.11/24"
"#;

#[test]
fn install_refuses_data_then_installs_applies_answer_and_factory_resets() {
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let answer = dir.path().join("answer.toml");
    std::fs::write(&answer, ANSWER).unwrap();

    // A disk with an ext4 filesystem on it is refused without --force, and left as it was.
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    sh(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&disk));
    let out = Command::new(bin())
        .args(["install", "--image"])
        .arg(&img)
        .arg("--target")
        .arg(&disk)
        .arg("--answer")
        .arg(&answer)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ext2/3/4") && err.contains("--force"), "{err}");
    assert_eq!(
        probe::probe(&disk).unwrap(),
        Contents::Filesystem("ext2/3/4")
    );

    // A bad answer file is refused before anything is written.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        ANSWER.replace("expected_nodes = 3", "expected_nodes = 0"),
    )
    .unwrap();
    let err = install::install(&InstallOptions {
        image: img.clone(),
        target: disk.clone(),
        answer: Some(bad),
        force: true,
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("expected_nodes"), "{err:#}");
    assert_eq!(
        probe::probe(&disk).unwrap(),
        Contents::Filesystem("ext2/3/4")
    );

    // --force installs; the backup GPT moves to the end of the larger disk.
    let out = Command::new(bin())
        .args(["install", "--force", "--json", "--image"])
        .arg(&img)
        .arg("--target")
        .arg(&disk)
        .arg("--answer")
        .arg(&answer)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["answer_applied"], true);
    let parts = keel_parts(&disk);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["esp", "root-a", "root-b", "data"]);
    let root_a = &parts[1];
    assert_eq!(read_at(&disk, root_a.offset, 16), b"hsqs-KEEL-ROOT-A");
    assert_eq!(read_at(&disk, 128 * MIB - 512, 8), b"EFI PART");
    sh(Command::new("sgdisk").arg("-v").arg(&disk));
    let data = install::data_partition(&parts, &disk).unwrap();
    assert_eq!(
        install::read_answer(&disk, &data).unwrap().as_deref(),
        Some(ANSWER)
    );

    // Now it is a Keel install: refused without --force, with a hint at --factory-reset.
    let err = install::install(&InstallOptions {
        image: img.clone(),
        target: disk.clone(),
        answer: None,
        force: false,
    })
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("existing Keel install"),
        "{err:#}"
    );

    // State written by the node (here: a node identity file) goes with a factory reset;
    // the answer file stays on request; the OS slot is untouched.
    let state = dir.path().join("node.json");
    std::fs::write(&state, "{}").unwrap();
    sh(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!(
            "write {} overlay/var/upper/lib/keel/node.json",
            state.display()
        ))
        .arg(format!("{}?offset={}", disk.display(), data.offset)));
    assert!(install::data_has(&disk, &data, "overlay/var/upper/lib/keel/node.json").unwrap());
    let out = Command::new(bin())
        .args(["factory-reset", "--keep-answer", "--target"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!install::data_has(&disk, &data, "overlay/var/upper/lib/keel/node.json").unwrap());
    assert_eq!(
        install::read_answer(&disk, &data).unwrap().as_deref(),
        Some(ANSWER)
    );
    assert_eq!(read_at(&disk, root_a.offset, 16), b"hsqs-KEEL-ROOT-A");

    // Without --keep-answer the answer goes too: the node comes up in setup mode.
    install::factory_reset_disk(&disk, false).unwrap();
    assert!(!install::data_has(&disk, &data, ANSWER_IN_DATA).unwrap());
    assert!(matches!(
        probe::probe(&disk).unwrap(),
        Contents::KeelInstall(_)
    ));

    // The running-node reset only arms a marker for the initramfs.
    let data_mount = dir.path().join("data");
    assert!(install::factory_reset_running(&data_mount, false).is_err());
    std::fs::create_dir_all(data_mount.join("overlay")).unwrap();
    let marker = install::factory_reset_running(&data_mount, true).unwrap();
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "keep-answer\n");
}

#[test]
fn installs_onto_a_loop_device() {
    if !nix_is_root() {
        eprintln!("skipped: loop devices need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let backing = dir.path().join("loop-backing.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    let dev = sh(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing))
    .trim()
    .to_string();
    let dev_path = PathBuf::from(&dev);
    let result = std::panic::catch_unwind(|| {
        // The listing shows the loop device with its size.
        let out = sh(Command::new(bin()).args(["list", "--json"]));
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let me = list
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["path"] == dev.as_str())
            .unwrap_or_else(|| panic!("{dev} not listed: {out}"));
        assert_eq!(me["size"], 96 * MIB);
        let answer = dir.path().join("answer.toml");
        std::fs::write(&answer, ANSWER).unwrap();
        let report = install::install(&InstallOptions {
            image: img.clone(),
            target: dev_path.clone(),
            answer: Some(answer),
            force: false,
        })
        .unwrap();
        assert!(report.answer_applied);
        // Block devices get every byte.
        assert_eq!(report.written_bytes, report.image_bytes);
        let parts = keel_parts(&dev_path);
        let data = install::data_partition(&parts, &dev_path).unwrap();
        assert_eq!(
            install::read_answer(&dev_path, &data).unwrap().as_deref(),
            Some(ANSWER)
        );
    });
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
