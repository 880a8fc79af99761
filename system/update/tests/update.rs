//! Bundles and slots on real files, a real loop device and a real vfat ESP.
//! `cargo test -p keel-update` (the loop-device test needs root, losetup, sgdisk, mkfs.vfat).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::{Signer, SigningKey};
use keel_update::bundle::{self, hex};
use keel_update::slot::{self, Entry};
use keel_update::{InstallOptions, Layout, Slot, UpdateError};
use sha2::{Digest, Sha256};

struct Key {
    sk: SigningKey,
    id: String,
}

fn key(seed: u8) -> Key {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let id = bundle::key_id(&sk.verifying_key().to_bytes());
    Key { sk, id }
}

fn trust(dir: &Path, k: &Key) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join(format!("{}.pub", k.id)),
        hex(&k.sk.verifying_key().to_bytes()) + "\n",
    )
    .unwrap();
}

struct Payload {
    root: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

fn payload(tag: u8) -> Payload {
    Payload {
        root: (0..3 * 1024 * 1024 + 17)
            .map(|i| (i % 251) as u8 ^ tag)
            .collect(),
        kernel: vec![tag; 4096],
        initrd: vec![tag.wrapping_add(1); 10_000],
    }
}

fn manifest(version: &str, p: &Payload) -> String {
    let f = |name: &str, d: &[u8]| {
        format!(
            r#"{{"name":"{name}","size":{},"sha256":"{}"}}"#,
            d.len(),
            hex(&Sha256::digest(d))
        )
    };
    format!(
        r#"{{"format":1,"version":"{version}","build":"test","files":[{},{},{}]}}"#,
        f("root", &p.root),
        f("vmlinuz", &p.kernel),
        f("initrd.img", &p.initrd)
    )
}

fn write(path: &Path, m: &str, signer: Option<(&Key, &str)>, p: &Payload) {
    let sig = signer.map(|(k, id)| (id.to_string(), k.sk.sign(m.as_bytes()).to_bytes()));
    let mut out = Vec::new();
    bundle::write_bundle(
        &mut out,
        m.as_bytes(),
        sig.as_ref().map(|(id, s)| (id.as_str(), s)),
        &[&p.root, &p.kernel, &p.initrd],
    )
    .unwrap();
    fs::write(path, out).unwrap();
}

fn signed(path: &Path, version: &str, k: &Key, p: &Payload) {
    write(path, &manifest(version, p), Some((k, &k.id)), p);
}

#[test]
fn a_signed_bundle_verifies_and_every_tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    trust(&dir.path().join("keys"), &k);
    let keys = keel_update::load_keys(&dir.path().join("keys")).unwrap();
    let p = payload(1);
    let good = dir.path().join("good.bundle");
    signed(&good, "0.1.0-2", &k, &p);
    let v = keel_update::verify(&good, &keys, Some("0.1.0-1"), false).unwrap();
    assert_eq!(v.manifest.version, "0.1.0-2");
    assert_eq!(v.key_id, k.id);

    // One byte changed anywhere: header, manifest, signature, each payload file.
    let bytes = fs::read(&good).unwrap();
    let head_len = v.payload_offset as usize;
    let m_at = bytes.iter().position(|b| *b == b'\n').unwrap() + 10;
    let sig_at = head_len - 5;
    let root_at = head_len + 1_000_000;
    let kernel_at = head_len + p.root.len() + 5;
    let initrd_at = bytes.len() - 1;
    for (what, at) in [
        ("manifest", m_at),
        ("signature", sig_at),
        ("root", root_at),
        ("kernel", kernel_at),
        ("initrd", initrd_at),
    ] {
        let mut t = bytes.clone();
        t[at] ^= 0x01;
        let path = dir.path().join(format!("tampered-{what}.bundle"));
        fs::write(&path, &t).unwrap();
        let err = keel_update::verify(&path, &keys, None, false).unwrap_err();
        match (what, &err) {
            ("manifest" | "signature", UpdateError::BadSignature { .. }) => {}
            ("manifest" | "signature", UpdateError::Unsigned) => {}
            ("root", UpdateError::HashMismatch { file, .. }) => assert_eq!(file, "root"),
            ("kernel", UpdateError::HashMismatch { file, .. }) => assert_eq!(file, "vmlinuz"),
            ("initrd", UpdateError::HashMismatch { file, .. }) => assert_eq!(file, "initrd.img"),
            _ => panic!("{what}: unexpected {err:?}"),
        }
    }

    // Truncated, and trailing bytes.
    let path = dir.path().join("short.bundle");
    fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(
        keel_update::verify(&path, &keys, None, false),
        Err(UpdateError::Truncated { .. })
    ));
    let mut long = bytes.clone();
    long.push(0);
    fs::write(&path, &long).unwrap();
    assert!(matches!(
        keel_update::verify(&path, &keys, None, false),
        Err(UpdateError::TrailingData)
    ));

    // Unsigned; signed by a key not trusted; a forged key id.
    let path = dir.path().join("unsigned.bundle");
    write(&path, &manifest("0.1.0-2", &p), None, &p);
    assert!(matches!(
        keel_update::verify(&path, &keys, None, false),
        Err(UpdateError::Unsigned)
    ));
    let other = key(9);
    signed(&path, "0.1.0-2", &other, &p);
    let err = keel_update::verify(&path, &keys, None, false).unwrap_err();
    assert!(matches!(err, UpdateError::UnknownKey { .. }), "{err:?}");
    assert!(err.to_string().contains(&other.id));
    write(&path, &manifest("0.1.0-2", &p), Some((&other, &k.id)), &p);
    assert!(matches!(
        keel_update::verify(&path, &keys, None, false),
        Err(UpdateError::BadSignature { .. })
    ));

    // Not a bundle at all.
    fs::write(&path, b"\x7fELF not a bundle\n").unwrap();
    assert!(matches!(
        keel_update::verify(&path, &keys, None, false),
        Err(UpdateError::NotABundle(_))
    ));

    // Downgrades and reinstalls only when asked.
    let err = keel_update::verify(&good, &keys, Some("0.1.0-10"), false).unwrap_err();
    assert!(matches!(err, UpdateError::Downgrade { .. }), "{err:?}");
    assert!(matches!(
        keel_update::verify(&good, &keys, Some("0.1.0-2"), false),
        Err(UpdateError::Downgrade { .. })
    ));
    keel_update::verify(&good, &keys, Some("0.1.0-10"), true).unwrap();

    // A manifest that is signed but wrong is still refused.
    let bad_m = manifest("0.1.0-2", &p).replace("\"vmlinuz\"", "\"kernel\"");
    write(&path, &bad_m, Some((&k, &k.id)), &p);
    assert!(matches!(
        keel_update::verify(&path, &keys, None, false),
        Err(UpdateError::Manifest(_))
    ));
    // No trusted keys.
    fs::create_dir_all(dir.path().join("empty")).unwrap();
    assert!(matches!(
        keel_update::load_keys(&dir.path().join("empty")),
        Err(UpdateError::NoTrustedKeys(_))
    ));
}

/// A node's layout whose partitions are `parts[label]` (files or block devices).
struct Node {
    layout: Layout,
}

fn node(root: &Path, esp: PathBuf, parts: &[(&str, &Path)], slot: Slot, version: &str) -> Node {
    let layout = Layout {
        cmdline: root.join("cmdline"),
        os_release: root.join("os-release"),
        by_partlabel: root.join("by-partlabel"),
        by_partuuid: root.join("by-partuuid"),
        esp,
        keys: root.join("keys"),
        esp_fstype: esp_fstype(),
    };
    fs::create_dir_all(&layout.by_partlabel).unwrap();
    fs::create_dir_all(&layout.by_partuuid).unwrap();
    for (i, (label, path)) in parts.iter().enumerate() {
        symlink(path, layout.by_partlabel.join(label)).unwrap();
        symlink(
            path,
            layout
                .by_partuuid
                .join(format!("4b45454c-000{i}-4000-8000-00000000000{i}")),
        )
        .unwrap();
    }
    let n = Node { layout };
    n.boot(slot, version);
    fs::create_dir_all(n.layout.esp.join("loader/entries")).unwrap();
    fs::write(
        n.layout.esp.join("loader/loader.conf"),
        "default keel-*\ntimeout 0\neditor no\n",
    )
    .unwrap();
    fs::write(
        n.layout.esp.join("loader/entries/keel-1-a.conf"),
        "title Keel (slot A)\nlinux /keel/a/vmlinuz\ninitrd /keel/a/initrd.img\noptions root=PARTUUID=4b45454c-0001-4000-8000-000000000001 rootfstype=squashfs ro quiet keel.slot=a\n",
    )
    .unwrap();
    n
}

impl Node {
    fn boot(&self, slot: Slot, version: &str) {
        fs::write(
            &self.layout.cmdline,
            format!("root=PARTUUID=x ro quiet keel.slot={slot}\n"),
        )
        .unwrap();
        fs::write(
            &self.layout.os_release,
            format!("NAME=Keel\nIMAGE_ID=keel\nIMAGE_VERSION={version}\n"),
        )
        .unwrap();
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = slot::entries(&self.layout)
            .unwrap()
            .into_iter()
            .map(|e| e.file)
            .collect();
        v.sort();
        v
    }
    /// What systemd-boot does to a counted entry when it boots it.
    fn sd_boot_tries(&self) -> String {
        let all = slot::entries(&self.layout).unwrap();
        let e = slot::default_entry(&all).unwrap().clone();
        if let Some((left, done)) = e.counter {
            let next = format!(
                "keel-{}-{}+{}-{}.conf",
                e.generation,
                e.slot,
                left - 1,
                done + 1
            );
            let d = self.layout.esp.join("loader/entries");
            fs::rename(d.join(&e.file), d.join(&next)).unwrap();
        }
        e.file
    }
}

fn run_slot_cycle(n: &Node, root_b: &Path, k: &Key, dir: &Path) {
    // Slot B is filled with a marker; a tampered bundle must leave it alone.
    let cap = fs::OpenOptions::new()
        .read(true)
        .open(root_b)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .unwrap();
    let marker = vec![0xA5u8; 4 * 1024 * 1024];
    fs::OpenOptions::new()
        .write(true)
        .open(root_b)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &marker))
        .unwrap();
    let p = payload(2);
    let good = dir.join("v2.bundle");
    signed(&good, "0.1.0-2", k, &p);
    let mut bytes = fs::read(&good).unwrap();
    let at = bytes.len() - p.initrd.len() - p.kernel.len() - 10;
    bytes[at] ^= 0x40;
    let tampered = dir.join("v2-tampered.bundle");
    fs::write(&tampered, &bytes).unwrap();
    let err = slot::install(&n.layout, &tampered, &InstallOptions::default()).unwrap_err();
    assert!(matches!(err, UpdateError::HashMismatch { .. }), "{err:?}");
    let head = read_prefix(root_b, marker.len());
    assert!(head == marker, "a tampered bundle touched the partition");
    assert_eq!(n.entries(), vec!["keel-1-a.conf"]);

    // The good one: slot B written and read back, kernel/initrd on the ESP, counted entry.
    let inst = slot::install(&n.layout, &good, &InstallOptions::default()).unwrap();
    assert_eq!(inst.slot, Slot::B);
    assert_eq!(inst.entry, "keel-2-b+3.conf");
    assert!(cap >= p.root.len() as u64);
    assert!(read_prefix(root_b, p.root.len()) == p.root);
    assert_eq!(
        fs::read(n.layout.esp.join("keel/b/vmlinuz")).unwrap(),
        p.kernel
    );
    assert_eq!(
        fs::read(n.layout.esp.join("keel/b/initrd.img")).unwrap(),
        p.initrd
    );
    assert_eq!(n.entries(), vec!["keel-1-a.conf", "keel-2-b+3.conf"]);
    let entry = fs::read_to_string(n.layout.esp.join("loader/entries/keel-2-b+3.conf")).unwrap();
    assert!(entry.contains("linux /keel/b/vmlinuz"), "{entry}");
    assert!(entry.contains("keel.slot=b"), "{entry}");
    assert!(!entry.contains("keel.slot=a"), "{entry}");
    assert!(entry.contains("rootfstype=squashfs ro quiet"), "{entry}");
    let loader = fs::read_to_string(n.layout.esp.join("loader/loader.conf")).unwrap();
    assert!(loader.starts_with("default keel-*\n"), "{loader}");
    // Installing again (still running 0.1.0-1) replaces the unbooted entry with a newer one.
    slot::install(&n.layout, &good, &InstallOptions::default()).unwrap();
    assert_eq!(n.entries(), vec!["keel-1-a.conf", "keel-3-b+3.conf"]);

    // The new slot never gets blessed: three tries, then systemd-boot picks slot A again.
    for _ in 0..3 {
        let booted = n.sd_boot_tries();
        assert!(booted.starts_with("keel-3-b+"), "{booted}");
    }
    assert_eq!(n.entries(), vec!["keel-1-a.conf", "keel-3-b+0-3.conf"]);
    let all = slot::entries(&n.layout).unwrap();
    assert_eq!(slot::default_entry(&all).unwrap().file, "keel-1-a.conf");
    n.boot(Slot::A, "0.1.0-1");
    let st = slot::boot_state(&n.layout).unwrap();
    assert_eq!(st.slot, Slot::A);
    assert!(!st.pending);

    // Again, and this time slot B comes up healthy and blesses itself.
    slot::install(&n.layout, &good, &InstallOptions::default()).unwrap();
    assert_eq!(n.entries(), vec!["keel-1-a.conf", "keel-4-b+3.conf"]);
    assert_eq!(n.sd_boot_tries(), "keel-4-b+3.conf");
    n.boot(Slot::B, "0.1.0-2");
    let st = slot::boot_state(&n.layout).unwrap();
    assert!(st.pending);
    assert_eq!(st.version.as_deref(), Some("0.1.0-2"));
    // On trial, nothing is written to slot A: its entry is what a failed boot falls back to.
    let v3 = dir.join("v3.bundle");
    signed(&v3, "0.1.0-3", k, &payload(3));
    let err = slot::install(&n.layout, &v3, &InstallOptions::default()).unwrap_err();
    assert!(matches!(err, UpdateError::OnTrial { .. }), "{err:?}");
    assert!(err.to_string().contains("keel-4-b+"), "{err}");
    assert_eq!(n.entries(), vec!["keel-1-a.conf", "keel-4-b+2-1.conf"]);
    assert_eq!(
        slot::bless(&n.layout).unwrap().as_deref(),
        Some("keel-4-b.conf")
    );
    assert_eq!(slot::bless(&n.layout).unwrap(), None);
    assert_eq!(n.entries(), vec!["keel-1-a.conf", "keel-4-b.conf"]);
    assert!(!slot::boot_state(&n.layout).unwrap().pending);
    let all = slot::entries(&n.layout).unwrap();
    assert_eq!(slot::default_entry(&all).unwrap().file, "keel-4-b.conf");

    // Running B at 0.1.0-2: the older bundle is refused, the next one goes to slot A.
    assert!(matches!(
        slot::install(&n.layout, &good, &InstallOptions::default()),
        Err(UpdateError::Downgrade { .. })
    ));
    let inst = slot::install(
        &n.layout,
        &v3,
        &InstallOptions {
            tries: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (inst.slot, inst.entry.as_str()),
        (Slot::A, "keel-5-a+1.conf")
    );
    assert_eq!(n.entries(), vec!["keel-4-b.conf", "keel-5-a+1.conf"]);
    let entry = fs::read_to_string(n.layout.esp.join("loader/entries/keel-5-a+1.conf")).unwrap();
    assert!(
        entry.contains("keel.slot=a") && entry.contains("/keel/a/vmlinuz"),
        "{entry}"
    );
    assert!(Entry::parse(&inst.entry).unwrap().counter == Some((1, 0)));
}

fn read_prefix(path: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    fs::File::open(path).unwrap().read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn slots_on_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    let parts = dir.path().join("parts");
    fs::create_dir_all(&parts).unwrap();
    let (a, b) = (parts.join("root-a"), parts.join("root-b"));
    for p in [&a, &b] {
        fs::File::create(p)
            .unwrap()
            .set_len(8 * 1024 * 1024)
            .unwrap();
    }
    let n = node(
        dir.path(),
        dir.path().join("esp"),
        &[("root-a", &a), ("root-b", &b)],
        Slot::A,
        "0.1.0-1",
    );
    trust(&n.layout.keys, &k);
    run_slot_cycle(&n, &b, &k, dir.path());
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The same on a GPT disk image attached as a loop device, with a real vfat ESP mounted.
#[test]
fn slots_on_a_loop_device() {
    let root = nix_is_root();
    let tools = ["losetup", "sgdisk", "mkfs.vfat", "mount"].iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!("skipped: needs root, losetup, sgdisk, mkfs.vfat");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    fs::File::create(&img)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    sh(Command::new("sgdisk")
        .args(["-n", "1:1M:+16M", "-t", "1:EF00", "-c", "1:esp"])
        .args([
            "-n",
            "2:17M:+16M",
            "-c",
            "2:root-a",
            "-n",
            "3:33M:+16M",
            "-c",
            "3:root-b",
        ])
        .args(["-n", "4:49M:0", "-c", "4:data"])
        .arg(&img));
    // One loop device per partition, at its GPT offset (partition nodes of a --partscan loop
    // device do not appear in every container).
    let mib = 1024 * 1024;
    let attach = |start_mib: u64| {
        sh(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(format!("--offset={}", start_mib * mib))
            .arg(format!("--sizelimit={}", 16 * mib))
            .arg(&img))
    };
    let devs = [attach(1), attach(17), attach(33)];
    struct Detach(Vec<String>, PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.1).status();
            for d in &self.0 {
                let _ = Command::new("losetup").arg("-d").arg(d).status();
            }
        }
    }
    let esp = dir.path().join("esp");
    fs::create_dir_all(&esp).unwrap();
    let _guard = Detach(devs.to_vec(), esp.clone());
    let part = |i: usize| PathBuf::from(&devs[i - 1]);
    if esp_fstype() == "vfat" {
        sh(Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "KEEL-ESP"])
            .arg(part(1)));
    } else {
        // This kernel has no vfat: the same steps on ext4 (the appliance's ESP is vfat).
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(part(1)));
    }
    let (p1, p2, p3) = (part(1), part(2), part(3));
    let n = node(
        dir.path(),
        esp.clone(),
        &[("esp", &p1), ("root-a", &p2), ("root-b", &p3)],
        Slot::A,
        "0.1.0-1",
    );
    // Mount through the adapter, as on a node; then lay out the first image's entries.
    fs::remove_dir_all(&esp).unwrap();
    n.layout.ensure_esp_mounted().unwrap();
    n.layout.ensure_esp_mounted().unwrap();
    fs::create_dir_all(esp.join("loader/entries")).unwrap();
    fs::write(
        esp.join("loader/loader.conf"),
        "default keel-*\ntimeout 0\n",
    )
    .unwrap();
    fs::write(
        esp.join("loader/entries/keel-1-a.conf"),
        "title Keel (slot A)\nlinux /keel/a/vmlinuz\ninitrd /keel/a/initrd.img\noptions root=PARTUUID=4b45454c-0001-4000-8000-000000000001 rootfstype=squashfs ro quiet keel.slot=a\n",
    )
    .unwrap();
    trust(&n.layout.keys, &key(7));
    run_slot_cycle(&n, &p3, &key(7), dir.path());
    // Everything reached the vfat filesystem.
    sh(Command::new("umount").arg(&esp));
    fs::create_dir_all(&esp).unwrap();
    sh(Command::new("mount")
        .args(["-t", &esp_fstype()])
        .arg(&p1)
        .arg(&esp));
    let entries = fs::read_dir(esp.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect::<Vec<_>>();
    assert!(
        entries.contains(&"keel-5-a+1.conf".to_string()),
        "{entries:?}"
    );
    // And slot B's partition holds v2's root at the image offset of root-b.
    let disk = read_prefix(&img, 49 * 1024 * 1024);
    assert!(disk[33 * 1024 * 1024..33 * 1024 * 1024 + 1024] == payload(2).root[..1024]);
}

fn esp_fstype() -> String {
    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs.split_whitespace().any(|w| w == "vfat") {
        "vfat".into()
    } else {
        "ext4".into()
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
