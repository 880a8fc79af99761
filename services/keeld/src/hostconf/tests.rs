use super::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// A tz database with two zones (and a directory that is not one).
fn zoneinfo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for zone in ["Etc/UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires"] {
        let p = dir.path().join(zone);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"TZif2\0\0\0").unwrap();
    }
    std::fs::write(dir.path().join("zone.tab"), b"# not a zone\n").unwrap();
    dir
}

/// Records every host action; fails the ones named in `fail`.
#[derive(Default)]
struct Recorder {
    done: Mutex<Vec<Action>>,
    fail: Mutex<Vec<Action>>,
}

impl HostActions for Recorder {
    fn apply(&self, action: &Action) -> Result<(), String> {
        if self.fail.lock().unwrap().contains(action) {
            return Err(format!("{action:?} failed"));
        }
        self.done.lock().unwrap().push(action.clone());
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<Action> {
        std::mem::take(&mut *self.done.lock().unwrap())
    }
}

fn inputs(settings: &[(&str, Value)]) -> Inputs {
    Inputs {
        node: "node2".into(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        answer_dns: Vec::new(),
        nodes: vec![
            ("node2".into(), "10.0.0.12".into()),
            ("node1".into(), "10.0.0.11".into()),
        ],
    }
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn keys_are_owned_with_their_per_node_form_only() {
    assert_eq!(owned_key("ntp.servers"), Some(NTP_SERVERS));
    assert_eq!(owned_key("ntp.servers.node2"), Some(NTP_SERVERS));
    assert_eq!(owned_key("dns.search.n-1"), Some(DNS_SEARCH));
    assert_eq!(owned_key("time.zone"), Some(TIMEZONE));
    assert_eq!(owned_key("ntp.serversx"), None);
    assert_eq!(owned_key("ntp.servers."), None);
    assert_eq!(owned_key("virt.accel"), None);
    assert!(validate_setting("virt.accel", &json!(42)).is_ok());
}

#[test]
fn ntp_servers_are_names_or_addresses() {
    assert_eq!(
        ntp_servers(&json!(["ntp1.example.com", "10.0.0.1", "fd00::1"])).unwrap(),
        vec!["ntp1.example.com", "10.0.0.1", "fd00::1"]
    );
    assert_eq!(
        ntp_servers(&json!("a.example, b.example c")).unwrap(),
        vec!["a.example", "b.example", "c"]
    );
    for (bad, field) in [
        (json!(["ok.example", "not a host"]), "value[1]"),
        (json!(["300.1.1.1"]), "value[0]"),
        (json!(["-x.example"]), "value[0]"),
        (json!(["a..b"]), "value[0]"),
        (json!("good.example bad_name"), "value"),
        (json!([1]), "value[0]"),
        (json!([]), "value"),
        (json!(""), "value"),
        (json!(7), "value"),
        (json!({"a": 1}), "value"),
    ] {
        let e = validate_setting("ntp.servers.node1", &bad).unwrap_err();
        assert_eq!(e.field, field, "{bad}: {e}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("n{i}.example")).collect();
    assert!(ntp_servers(&json!(many)).is_err());
}

#[test]
fn dns_servers_are_addresses_and_search_domains_names() {
    assert_eq!(
        dns_servers(&json!(["1.1.1.1", "fd00::53"])).unwrap().len(),
        2
    );
    let e = dns_servers(&json!(["1.1.1.1", "dns.example"])).unwrap_err();
    assert_eq!(e.field, "value[1]");
    assert!(e.message.contains("not an IP address"), "{e}");
    assert!(dns_servers(&json!(["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"])).is_err());
    assert_eq!(
        dns_search(&json!("lab.example corp.example")).unwrap(),
        vec!["lab.example", "corp.example"]
    );
    assert_eq!(
        dns_search(&json!(["lab.example", "bad domain"]))
            .unwrap_err()
            .field,
        "value[1]"
    );
}

#[test]
fn time_zones_come_from_the_tz_database() {
    let zi = zoneinfo();
    assert_eq!(
        timezone(&json!("Europe/Berlin"), zi.path()).unwrap(),
        "Europe/Berlin"
    );
    assert_eq!(
        timezone(&json!("America/Argentina/Buenos_Aires"), zi.path()).unwrap(),
        "America/Argentina/Buenos_Aires"
    );
    for bad in [
        json!("Mars/Olympus"),
        json!("Europe"),
        json!("zone.tab"),
        json!("../../etc/passwd"),
        json!("/Europe/Berlin"),
        json!("Europe//Berlin"),
        json!(""),
        json!(3),
    ] {
        let e = timezone(&bad, zi.path()).unwrap_err();
        assert_eq!(e.field, "value", "{bad}");
    }
}

#[test]
fn defaults_render_exactly() {
    let zi = zoneinfo();
    let d = desired(&inputs(&[]), zi.path());
    let names: Vec<_> = d.iter().map(|d| d.name).collect();
    assert_eq!(names, ["ntp", "dns", "timezone", "hostname", "hosts"]);
    assert_eq!(
        d[0].files,
        vec![(
            NTP_FILE,
            Content::File {
                text: "# Written by keeld from the default (no setting ntp.servers); do not edit (see `keel setting`).\npool 2.debian.pool.ntp.org iburst\n".into(),
                mode: 0o644
            }
        )]
    );
    assert_eq!(d[0].source, "default");
    assert_eq!(d[0].action, Action::ReloadNtp);
    assert_eq!(
        d[1].files[0].1,
        Content::File {
            text: "# Written by keeld from the default (no setting dns.servers, no DNS in the answer file); do not edit (see `keel setting`).\n".into(),
            mode: 0o644
        }
    );
    assert_eq!(
        d[2].files,
        vec![
            (
                "etc/localtime",
                Content::Symlink("/usr/share/zoneinfo/Etc/UTC".into())
            ),
            (
                "etc/timezone",
                Content::File {
                    text: "Etc/UTC\n".into(),
                    mode: 0o644
                }
            )
        ]
    );
    assert_eq!(d[3].action, Action::SetHostname("node2".into()));
    assert_eq!(
        d[4].files[0].1,
        Content::File {
            text: "# Written by keeld from the cluster's nodes; do not edit (see `keel setting`).\n127.0.0.1\tlocalhost\n10.0.0.11\tnode1\n10.0.0.12\tnode2\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".into(),
            mode: 0o644
        }
    );
}

#[test]
fn the_nodes_own_setting_wins_and_the_answer_gives_dns_by_default() {
    let zi = zoneinfo();
    let mut inp = inputs(&[
        ("ntp.servers", json!(["a.example", "b.example"])),
        ("ntp.servers.node2", json!("10.1.1.1")),
        ("ntp.servers.node1", json!("10.9.9.9")),
        ("dns.search", json!("lab.example")),
        ("time.zone", json!("Europe/Berlin")),
    ]);
    inp.answer_dns = vec!["10.0.0.1".parse().unwrap()];
    let d = desired(&inp, zi.path());
    assert_eq!(
        d[0].files[0].1,
        Content::File {
            text: "# Written by keeld from setting ntp.servers.node2; do not edit (see `keel setting`).\nserver 10.1.1.1 iburst\n".into(),
            mode: 0o644
        }
    );
    assert_eq!(
        (d[0].source.as_str(), d[0].value.as_str()),
        ("ntp.servers.node2", "10.1.1.1")
    );
    assert_eq!(
        d[1].files[0].1,
        Content::File {
            text: "# Written by keeld from the answer file and setting dns.search; do not edit (see `keel setting`).\nsearch lab.example\nnameserver 10.0.0.1\n".into(),
            mode: 0o644
        }
    );
    assert_eq!(d[1].value, "10.0.0.1; search lab.example");
    assert_eq!(d[2].value, "Europe/Berlin");
    assert_eq!(d[2].source, "time.zone");
}

#[test]
fn converge_writes_once_applies_once_and_reports() {
    let zi = zoneinfo();
    let root = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let hc = HostConf::new(root.path().to_path_buf(), rec.clone(), Vec::new())
        .with_zoneinfo(zi.path().to_path_buf());
    let inp = inputs(&[("ntp.servers", json!(["ntp.example"]))]);
    let st = hc.converge(&inp);
    assert!(st.items.iter().all(|i| i.applied), "{st:?}");
    assert_eq!(
        rec.take(),
        vec![
            Action::ReloadNtp,
            Action::None,
            Action::None,
            Action::SetHostname("node2".into()),
            Action::None
        ]
    );
    assert!(read(root.path(), NTP_FILE).ends_with("server ntp.example iburst\n"));
    let meta = std::fs::metadata(root.path().join(NTP_FILE)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(
        std::fs::read_link(root.path().join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Etc/UTC")
    );
    assert_eq!(read(root.path(), "etc/hostname"), "node2\n");
    let inode = |rel: &str| {
        std::fs::symlink_metadata(root.path().join(rel))
            .unwrap()
            .ino()
    };
    let before: Vec<u64> = ["etc/resolv.conf", NTP_FILE, "etc/localtime"]
        .iter()
        .map(|r| inode(r))
        .collect();

    // Nothing changed: no write, no action, same status.
    assert_eq!(hc.converge(&inp), st);
    assert!(rec.take().is_empty());
    let after: Vec<u64> = ["etc/resolv.conf", NTP_FILE, "etc/localtime"]
        .iter()
        .map(|r| inode(r))
        .collect();
    assert_eq!(before, after, "unchanged files are not rewritten");

    // A changed setting: only its file and its action.
    let inp2 = inputs(&[
        ("ntp.servers", json!(["ntp.example", "10.0.0.5"])),
        ("time.zone", json!("Europe/Berlin")),
    ]);
    let st2 = hc.converge(&inp2);
    assert!(st2.items.iter().all(|i| i.applied), "{st2:?}");
    assert_eq!(rec.take(), vec![Action::ReloadNtp, Action::None]);
    assert_eq!(
        std::fs::read_link(root.path().join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
    assert_eq!(read(root.path(), "etc/timezone"), "Europe/Berlin\n");
    assert_eq!(inode("etc/resolv.conf"), before[0]);

    // A file someone edited by hand (or with the wrong mode) is put back.
    std::fs::write(root.path().join("etc/hostname"), "other\n").unwrap();
    std::fs::set_permissions(
        root.path().join("etc/resolv.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    hc.converge(&inp2);
    assert_eq!(read(root.path(), "etc/hostname"), "node2\n");
    let mode = std::fs::metadata(root.path().join("etc/resolv.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
    assert_eq!(
        rec.take(),
        vec![Action::None, Action::SetHostname("node2".into())]
    );

    // Deleting the settings returns the defaults.
    hc.converge(&inputs(&[]));
    assert!(read(root.path(), NTP_FILE).ends_with("pool 2.debian.pool.ntp.org iburst\n"));
    assert_eq!(read(root.path(), "etc/timezone"), "Etc/UTC\n");
}

#[test]
fn a_failed_action_is_reported_and_retried_and_a_restart_applies_again() {
    let zi = zoneinfo();
    let root = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    rec.fail.lock().unwrap().push(Action::ReloadNtp);
    let hc = HostConf::new(root.path().to_path_buf(), rec.clone(), Vec::new())
        .with_zoneinfo(zi.path().to_path_buf());
    let inp = inputs(&[("ntp.servers.node2", json!(["ntp.example"]))]);
    let st = hc.converge(&inp);
    let ntp = &st.items[0];
    assert!(!ntp.applied);
    assert_eq!(ntp.message, "ReloadNtp failed");
    assert_eq!(ntp.source, "ntp.servers.node2");
    assert!(read(root.path(), NTP_FILE).contains("server ntp.example iburst"));
    rec.take();
    // The file is in place, but the action is retried until it succeeds.
    hc.converge(&inp);
    assert!(rec.take().is_empty());
    rec.fail.lock().unwrap().clear();
    let st = hc.converge(&inp);
    assert!(st.items[0].applied && st.items[0].message.is_empty());
    assert_eq!(rec.take(), vec![Action::ReloadNtp]);

    // A new keeld (crash between write and action) applies every part once more.
    let hc2 = HostConf::new(root.path().to_path_buf(), rec.clone(), Vec::new())
        .with_zoneinfo(zi.path().to_path_buf());
    hc2.converge(&inp);
    assert_eq!(rec.take().len(), 5);
    hc2.converge(&inp);
    assert!(rec.take().is_empty());
}

#[test]
fn an_unusable_stored_value_leaves_the_file_and_says_why() {
    let zi = zoneinfo();
    let root = tempfile::tempdir().unwrap();
    let rec = Arc::new(Recorder::default());
    let hc = HostConf::new(root.path().to_path_buf(), rec.clone(), Vec::new())
        .with_zoneinfo(zi.path().to_path_buf());
    hc.converge(&inputs(&[("time.zone", json!("Europe/Berlin"))]));
    let st = hc.converge(&inputs(&[("time.zone", json!("Mars/Olympus"))]));
    let tz = st.items.iter().find(|i| i.name == "timezone").unwrap();
    assert!(!tz.applied);
    assert!(
        tz.message.contains("time.zone") && tz.message.contains("Mars/Olympus"),
        "{}",
        tz.message
    );
    assert_eq!(read(root.path(), "etc/timezone"), "Europe/Berlin\n");
    // The other parts are not held up.
    assert!(st
        .items
        .iter()
        .filter(|i| i.name != "timezone")
        .all(|i| i.applied));
}

#[test]
fn a_symlink_replaces_a_file_and_a_file_replaces_a_symlink() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/localtime"), b"TZif").unwrap();
    std::os::unix::fs::symlink("/elsewhere", root.path().join("etc/resolv.conf")).unwrap();
    assert!(ensure(
        root.path(),
        "etc/localtime",
        &Content::Symlink("/usr/share/zoneinfo/Etc/UTC".into())
    )
    .unwrap());
    let file = Content::File {
        text: "nameserver 10.0.0.1\n".into(),
        mode: 0o644,
    };
    assert!(ensure(root.path(), "etc/resolv.conf", &file).unwrap());
    assert!(!ensure(root.path(), "etc/resolv.conf", &file).unwrap());
    assert!(
        std::fs::symlink_metadata(root.path().join("etc/resolv.conf"))
            .unwrap()
            .is_file()
    );
    let left: Vec<_> = std::fs::read_dir(root.path().join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".keel-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_images_chrony_takes_its_sources_from_keeld_only() {
    let overlay = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../overlays/rootfs/etc/chrony"
    );
    let shipped = std::fs::read_to_string(format!("{overlay}/sources.d/keel.sources")).unwrap();
    let d = desired(&inputs(&[]), zoneinfo().path());
    assert_eq!(
        d[0].files[0].1,
        Content::File {
            text: shipped,
            mode: 0o644
        },
        "the image ships what keeld writes without a setting (no rewrite at first boot)"
    );
    let conf = std::fs::read_to_string(format!("{overlay}/chrony.conf")).unwrap();
    assert!(
        conf.contains("\nsourcedir /etc/chrony/sources.d\n"),
        "{conf}"
    );
    let own: Vec<&str> = conf
        .lines()
        .filter(|l| {
            ["pool ", "server ", "peer "]
                .iter()
                .any(|d| l.starts_with(d))
        })
        .collect();
    assert!(own.is_empty(), "chrony.conf has its own sources: {own:?}");
}

#[test]
fn only_the_appliance_or_an_explicit_root_manages_host_files() {
    let args = |extra: &[&str]| {
        let mut all = vec!["keeld", "--state-dir", "/nonexistent"];
        all.extend_from_slice(extra);
        <crate::daemon::Args as clap::Parser>::parse_from(all)
    };
    // A keeld started by hand (or a test) leaves its machine's /etc alone.
    assert!(args(&[]).host_conf(None).is_none());
    let appliance = args(&["--seed"]).host_conf(None).unwrap();
    assert_eq!(appliance.root(), Path::new("/"));
    let dev = args(&["--etc-root", "/tmp/x/node1/root", "--host-actions", "none"])
        .host_conf(None)
        .unwrap();
    assert_eq!(dev.root(), Path::new("/tmp/x/node1/root"));
    // Files only there: converging a root that is not / runs no host action by default.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let hc = args(&["--etc-root", r])
        .host_conf(None)
        .unwrap()
        .with_zoneinfo(zoneinfo().path().to_path_buf());
    let st = hc.converge(&inputs(&[]));
    assert!(st.items.iter().all(|i| i.applied), "{st:?}");
    assert_eq!(read(root.path(), "etc/hostname"), "node2\n");
}
