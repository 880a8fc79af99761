//! keel-ovs against a real ovsdb-server and ovs-vswitchd (userspace datapath), started
//! privately in a temporary directory and their own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_ovs::{Datapath, Vsctl};

struct PrivateOvs {
    dir: tempfile::TempDir,
    netns: String,
}

impl PrivateOvs {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let netns = format!("keel-ovs-{}", std::process::id());
        let d = dir.path();
        let db = d.join("conf.db");
        run(
            "ovsdb-tool",
            &["create", s(&db), "/usr/share/openvswitch/vswitch.ovsschema"],
        );
        run("ip", &["netns", "add", &netns]);
        let sock = format!("punix:{}", s(&d.join("db.sock")));
        run(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "ovsdb-server",
                s(&db),
                "--remote",
                &sock,
                &format!("--pidfile={}", s(&d.join("ovsdb.pid"))),
                &format!("--unixctl={}", s(&d.join("ovsdb.ctl"))),
                &format!("--log-file={}", s(&d.join("ovsdb.log"))),
                "--detach",
            ],
        );
        let remote = format!("unix:{}", s(&d.join("db.sock")));
        run(
            "ovs-vsctl",
            &[&format!("--db={remote}"), "--no-wait", "init"],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "ovs-vswitchd",
                &remote,
                &format!("--pidfile={}", s(&d.join("vswitchd.pid"))),
                &format!("--unixctl={}", s(&d.join("vswitchd.ctl"))),
                &format!("--log-file={}", s(&d.join("vswitchd.log"))),
                "--detach",
            ],
        );
        Self { dir, netns }
    }

    fn vsctl(&self) -> Vsctl {
        Vsctl::new().with_db(format!("unix:{}", s(&self.dir.path().join("db.sock"))))
    }

    fn in_ns(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PrivateOvs {
    fn drop(&mut self) {
        for pid in ["vswitchd.pid", "ovsdb.pid"] {
            if let Ok(p) = std::fs::read_to_string(self.dir.path().join(pid)) {
                let _ = Command::new("kill").arg(p.trim()).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bridges_are_created_once_and_report_their_ports() {
    let ovs = PrivateOvs::start();
    let v = ovs.vsctl();
    v.ping().unwrap();
    v.ensure_bridge("br-test", Datapath::Netdev).unwrap();
    v.ensure_bridge("br-test", Datapath::Netdev).unwrap();
    assert_eq!(v.bridges().unwrap(), vec!["br-test".to_string()]);
    // The userspace datapath makes the bridge's interface in the daemon's namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ovs.in_ns(&["ip", "-br", "link"]).contains("br-test") {
        assert!(
            Instant::now() < deadline,
            "br-test never appeared: {}",
            ovs.in_ns(&["ip", "-br", "link"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(v.ports("br-test").unwrap().is_empty());

    // A port plugged in by someone else (libvirt does this for guest taps).
    let remote = format!("unix:{}", s(&ovs.dir.path().join("db.sock")));
    run(
        "ovs-vsctl",
        &[
            &format!("--db={remote}"),
            "add-port",
            "br-test",
            "p0",
            "--",
            "set",
            "interface",
            "p0",
            "type=internal",
        ],
    );
    assert_eq!(v.ports("br-test").unwrap(), vec!["p0".to_string()]);
    v.remove_port("p0").unwrap();
    v.remove_port("p0").unwrap();
    assert!(v.ports("br-test").unwrap().is_empty());

    // Bad names never reach ovs-vsctl; a missing bridge is an error that says so.
    assert!(v.ensure_bridge("br;reboot", Datapath::Netdev).is_err());
    let e = v.ports("br-nope").unwrap_err();
    assert!(e.to_string().contains("br-nope"), "{e}");

    v.remove_bridge("br-test").unwrap();
    v.remove_bridge("br-test").unwrap();
    assert!(v.bridges().unwrap().is_empty());
}
