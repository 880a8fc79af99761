//! The interactive installer driven through a pipe, as a person would on a serial console
//! (passwords as plain lines with the hidden `--passwords-from-stdin`): onto an image file
//! that holds a filesystem, and (as root) onto a loop device chosen from the real disk list
//! after a loop device that is too small. The answer file read back from the data partition
//! is what was answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keel_installer::install;
use keel_installer::probe::{self, Contents};
use keel_model::AnswerFile;

mod common;
use common::{bin, keel_parts, nix_is_root, read_at, sh, small_image, MIB};

fn drive(args: &[&str], extra: &[&Path], lines: &[&str], env_flag: bool) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for p in extra {
        cmd.arg(p);
    }
    if env_flag {
        cmd.env("KEEL_INSTALL_PASSWORDS_FROM_STDIN", "1");
    } else {
        cmd.env_remove("KEEL_INSTALL_PASSWORDS_FROM_STDIN");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut text = lines.join("\n");
    text.push('\n');
    // The installer may stop reading early (an error); a closed pipe is fine then.
    let _ = stdin.write_all(text.as_bytes());
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn ext4_disk(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    sh(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(path));
}

fn answer_on(target: &Path) -> AnswerFile {
    let parts = keel_parts(target);
    let data = install::data_partition(&parts, target).unwrap();
    let text = install::read_answer(target, &data)
        .unwrap()
        .expect("an answer file on the data partition");
    assert!(text.starts_with("# Written by keel-install (interactive)"));
    AnswerFile::from_toml(&text).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Founding answers for a disk holding a filesystem, with bad answers on the way.
const FOUND_ON_FILE: &[&str] = &[
    "yes",      // not the disk's name
    "disk.img", // confirmed: it holds ext4
    "1",        // found
    "Bad Name",
    "lab",
    "", // 3 nodes
    "short",
    "correct horse",
    "correct horsf",
    "correct horse",
    "correct horse",
    "node1",
    "52:54:00:77:20:11",
    "10.77.20.11",
    "10.77.20.11/24",
    "10.77.21.1",
    "10.77.20.1",
    "10.77.20.1",
    "yes",
];

#[test]
fn interactive_install_onto_a_file_then_factory_reset_spelled_as_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let no_nics = dir.path().join("no-nics");
    std::fs::create_dir_all(&no_nics).unwrap();
    let disk = dir.path().join("disk.img");
    ext4_disk(&disk, 128 * MIB);
    let before = read_at(&disk, 0, MIB as usize);

    // Not a terminal and no password flag: refused before any question.
    let out = drive(&["interactive", "--image"], &[&img], FOUND_ON_FILE, false);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needs a terminal"),
        "{}",
        text(&out.stderr)
    );
    // No command and not a terminal: pointed at the unattended install.
    let out = drive(&[], &[], FOUND_ON_FILE, false);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("keel-install install --image IMAGE --target DISK --answer"),
        "{}",
        text(&out.stderr)
    );

    let args = ["interactive", "--image"];
    let rest: Vec<&Path> = vec![
        &img,
        Path::new("--target"),
        &disk,
        Path::new("--sys-net"),
        &no_nics,
    ];

    // End of input in the middle (after the passwords): nothing is written.
    let out = drive(&args, &rest, &FOUND_ON_FILE[..11], true);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("aborted (end of input or Ctrl-C): nothing was written"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(read_at(&disk, 0, MIB as usize), before);
    assert_eq!(
        probe::probe(&disk).unwrap(),
        Contents::Filesystem("ext2/3/4")
    );
    // "no" at the end: nothing is written either.
    let mut no = FOUND_ON_FILE.to_vec();
    *no.last_mut().unwrap() = "no";
    let out = drive(&args, &rest, &no, true);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not confirmed: nothing was written"));
    assert_eq!(read_at(&disk, 0, MIB as usize), before);

    // The whole dialogue (the hidden flag works as an environment variable too).
    let mut cmd_args = args.to_vec();
    cmd_args.insert(1, "--passwords-from-stdin");
    let out = drive(&cmd_args, &rest, FOUND_ON_FILE, false);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for msg in [
        "holds a ext2/3/4 signature. Installing erases everything on it.",
        "\"yes\" is not \"disk.img\"",
        "\"Bad Name\" is not a valid name",
        "shorter than 8 characters",
        "the two passwords differ",
        "the /prefix is missing",
        "10.77.21.1 is not in 10.77.20.11/24's network",
        "found lab with 3 node(s)",
        "answer file applied",
        "Node node1 of cluster lab is ready to boot",
    ] {
        assert!(stdout.contains(msg), "{msg:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("correct horse"), "{stdout}");
    // The secret shown is the one in the answer file.
    let secret = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Join secret"))
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let a = answer_on(&disk);
    assert_eq!(a.cluster.name.as_str(), "lab");
    assert_eq!(a.cluster.expected_nodes, 3);
    assert_eq!(a.cluster.join_secret, secret);
    assert_eq!(secret.len(), 29);
    assert_eq!(a.admin.password, "correct horse");
    assert_eq!(a.node.name.as_str(), "node1");
    let m = &a.network.management;
    assert_eq!(m.mac.as_deref(), Some("52:54:00:77:20:11"));
    assert_eq!(m.address.to_string(), "10.77.20.11/24");
    assert_eq!(m.gateway, Some(ip("10.77.20.1")));
    assert_eq!(m.dns, vec![ip("10.77.20.1")]);
    let parts = keel_parts(&disk);
    assert_eq!(read_at(&disk, parts[1].offset, 16), b"hsqs-KEEL-ROOT-A");

    // Asked again, the disk now holds a Keel install: the dialogue says so and points at
    // the factory reset; end of input there changes nothing.
    let out = drive(&cmd_args, &rest, &[], false);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("holds an existing Keel install"));
    assert!(text(&out.stdout).contains("keel-install --factory-reset --target"));
    assert_eq!(answer_on(&disk), a);

    // `keel-install --factory-reset` (the spelling) is the factory-reset command.
    let data = install::data_partition(&parts, &disk).unwrap();
    let out = Command::new(bin())
        .args(["--factory-reset", "--keep-answer", "--target"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("state wiped; the OS is kept"));
    assert_eq!(answer_on(&disk), a);
    let out = Command::new(bin())
        .args(["--factory-reset", "--target"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(install::read_answer(&disk, &data).unwrap(), None);
    assert_eq!(read_at(&disk, parts[1].offset, 16), b"hsqs-KEEL-ROOT-A");
}

struct Loop(String);
impl Loop {
    fn new(backing: &Path, size: u64) -> Self {
        std::fs::File::create(backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let dev = sh(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing))
        .trim()
        .to_string();
        Loop(dev)
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn interactive_join_onto_a_loop_device_chosen_from_the_list() {
    if !nix_is_root() {
        eprintln!("skipped: loop devices need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let no_nics = dir.path().join("no-nics");
    std::fs::create_dir_all(&no_nics).unwrap();
    let small = Loop::new(&dir.path().join("small.img"), 32 * MIB);
    let good = Loop::new(&dir.path().join("good.img"), 96 * MIB);
    let small_name = small.0.trim_start_matches("/dev/").to_string();
    let lines = [
        small.0.as_str(), // too small for the 64 MiB image
        good.0.as_str(),  // empty: no confirmation needed
        "2",              // join
        "lab",
        "10.77.20.11",
        "0123456789abcdef0123",
        "correct horse",
        "correct horse",
        "node2",
        "52:54:00:77:20:12",
        "10.77.20.12/24",
        "",
        "none",
        "yes",
    ];
    let out = drive(
        &["interactive", "--passwords-from-stdin", "--image"],
        &[&img, Path::new("--sys-net"), &no_nics],
        &lines,
        false,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let good_backing = dir.path().join("good.img");
    for msg in [
        format!("loop: {}", good_backing.display()),
        "96.0 MiB".to_string(),
        format!("{small_name} is 32.0 MiB but the image needs 64.0 MiB"),
        "join lab (a member: 10.77.20.11)".to_string(),
    ] {
        assert!(stdout.contains(&msg), "{msg:?} missing from:\n{stdout}");
    }
    let target = PathBuf::from(&good.0);
    let a = answer_on(&target);
    assert_eq!(a.cluster.name.as_str(), "lab");
    assert_eq!(a.cluster.expected_nodes, 64);
    assert_eq!(a.cluster.join_secret, "0123456789abcdef0123");
    assert_eq!(a.node.name.as_str(), "node2");
    let m = &a.network.management;
    assert_eq!(m.mac.as_deref(), Some("52:54:00:77:20:12"));
    assert_eq!(m.address.to_string(), "10.77.20.12/24");
    assert_eq!(m.gateway, None);
    assert!(m.dns.is_empty());
    // The small device was not touched.
    assert_eq!(probe::probe(Path::new(&small.0)).unwrap(), Contents::Empty);
}

/// A terminal for the installer: a pty whose master side this test reads and types into,
/// waiting for each prompt as a person would.
struct Pty {
    master: std::fs::File,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pos: usize,
    child: std::process::Child,
}

impl Pty {
    fn spawn(args: &[&std::ffi::OsStr]) -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        let child = {
            let mut cmd = Command::new(bin());
            cmd.args(args)
                .env_remove("KEEL_INSTALL_PASSWORDS_FROM_STDIN")
                .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
                .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
                .stderr(Stdio::from(pty.slave));
            cmd.spawn().unwrap()
        };
        let master = std::fs::File::from(pty.master);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut r, s) = (master.try_clone().unwrap(), seen.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            seen,
            pos: 0,
            child,
        }
    }

    fn transcript(&self) -> String {
        text(&self.seen.lock().unwrap())
    }

    fn expect(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            {
                let seen = self.seen.lock().unwrap();
                let hay = text(&seen[self.pos..]);
                if let Some(i) = hay.find(needle) {
                    self.pos += hay[..i + needle.len()].len();
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} on the terminal:\n{}",
                self.transcript()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn answer(&mut self, prompt: &str, line: &str) {
        self.expect(prompt);
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        (status, self.transcript())
    }
}

#[test]
fn on_a_terminal_passwords_are_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let no_nics = dir.path().join("no-nics");
    std::fs::create_dir_all(&no_nics).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let mut t = Pty::spawn(&[
        os("interactive"),
        os("--image"),
        img.as_os_str(),
        os("--target"),
        disk.as_os_str(),
        os("--sys-net"),
        no_nics.as_os_str(),
    ]);
    t.answer("Choice [1]: ", "1");
    t.answer("e.g. lab): ", "lab");
    t.answer("[3]: ", "");
    t.answer("not shown): ", "hunter2-hunter2");
    t.answer("again, to check: ", "hunter2-hunter3");
    t.expect("the two passwords differ");
    t.answer("not shown): ", "hunter2-hunter2");
    t.answer("again, to check: ", "hunter2-hunter2");
    t.answer("e.g. node1): ", "node1");
    t.answer("or name (eth0): ", "52:54:00:77:20:11");
    t.answer("10.0.0.11/24: ", "10.77.20.11/24");
    t.answer("(Enter for none): ", "");
    t.answer("DNS servers", "none");
    t.answer("[yes/no]: ", "yes");
    let (status, transcript) = t.finish();
    assert!(status.success(), "{transcript}");
    assert!(!transcript.contains("hunter2"), "{transcript}");
    // The terminal echoes again after a password: the node's name was echoed.
    assert!(transcript.contains("e.g. node1): node1"), "{transcript}");
    assert!(transcript.contains("answer file applied"), "{transcript}");
    let a = answer_on(&disk);
    assert_eq!(a.admin.password, "hunter2-hunter2");
    assert_eq!(a.node.name.as_str(), "node1");

    // Ctrl-C at a password prompt (signals are off there) aborts with nothing written.
    let mut t = Pty::spawn(&[
        os("interactive"),
        os("--image"),
        img.as_os_str(),
        os("--target"),
        disk.as_os_str(),
        os("--sys-net"),
        no_nics.as_os_str(),
    ]);
    t.answer("Type disk.img to erase it: ", "disk.img");
    t.answer("Choice [1]: ", "1");
    t.answer("e.g. lab): ", "other");
    t.answer("[3]: ", "");
    t.answer("not shown): ", "\u{3}");
    let (status, transcript) = t.finish();
    assert!(!status.success(), "{transcript}");
    assert!(
        transcript.contains("aborted (end of input or Ctrl-C): nothing was written"),
        "{transcript}"
    );
    assert_eq!(answer_on(&disk), a);

    // With no command, on a terminal, keel-install is the interactive installer (here it
    // stops at once: this machine has no /usr/share/keel/keel.raw).
    if !Path::new("/usr/share/keel/keel.raw").exists() {
        let (status, transcript) = Pty::spawn(&[]).finish();
        assert!(!status.success());
        assert!(
            transcript.contains("the image /usr/share/keel/keel.raw is missing"),
            "{transcript}"
        );
    }
}
