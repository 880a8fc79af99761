//! A VM's boot configuration end to end on a real dev cluster (libvirt under TCG): UEFI
//! (OVMF loader and a per-VM NVRAM file), an ISO attached read-only, a boot order rendered as
//! per-device `<boot order>`, a cloud-init NoCloud seed (an ISO labelled `cidata` whose files
//! say what the spec says), a password the API never shows in clear, `autostart` after a
//! (simulated) host restart while a keeld restart changes nothing, clean-up of the seed and
//! NVRAM on delete, and bad input refused with the field and nothing created.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_tests::{wait_until, Api, DevCluster};
use serde_json::{json, Value};

const NODE: &str = "node1";
const PASSWORD: &str = "Sup3r-secret-pw!";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeelTestKeyKeelTestKeyKeelTestKey0 test@keel";

fn ok(out: Output, what: &str) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs a command inside the node's namespaces.
fn in_node(dev: &DevCluster, args: &[&str]) -> Result<String> {
    let state = dev.state.to_string_lossy().to_string();
    let mut all = vec!["dev", "--state", &state, "exec", NODE, "--"];
    all.extend_from_slice(args);
    keel_tests::keel(&all)
}

fn virsh(dev: &DevCluster, args: &[&str]) -> Result<String> {
    let mut all = vec!["virsh", "-c", "qemu:///system"];
    all.extend_from_slice(args);
    in_node(dev, &all)
}

/// The node's pool directory (its state dir is on the host's file system).
fn pool(dev: &DevCluster) -> PathBuf {
    dev.state.join(NODE).join("state/pool")
}

/// A file out of an ISO 9660 image (Rock Ridge names).
fn iso_file(iso: &Path, file: &str) -> Result<String> {
    let out = Command::new("isoinfo")
        .args(["-R", "-i"])
        .arg(iso)
        .args(["-x", file])
        .output()
        .context("isoinfo (genisoimage) is needed")?;
    Ok(String::from_utf8_lossy(&ok(out, "isoinfo -x")?.into_bytes()).to_string())
}

fn iso_label(iso: &Path) -> Result<String> {
    let out = ok(
        Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(iso)
            .output()?,
        "isoinfo -d",
    )?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("Volume id:"))
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The `<disk>` elements of a domain's XML, in order.
fn disks(xml: &str) -> Vec<String> {
    xml.split("<disk ")
        .skip(1)
        .filter_map(|d| d.split("</disk>").next())
        .map(str::to_string)
        .collect()
}

async fn vm(api: &Api, name: &str) -> Result<keel_tests::Answer> {
    api.call("GET", &format!("/api/v1/vms/{name}"), None).await
}

async fn wait_phase(api: &Api, name: &str, phase: &str) -> Result<Value> {
    wait_until(
        &format!("{name} {phase}"),
        Duration::from_secs(120),
        || async {
            let v = vm(api, name).await?.body;
            Ok((v["status"]["phase"] == phase).then_some(v))
        },
    )
    .await
}

fn qemu_pids(vm: &str) -> Vec<i32> {
    keel_tests::pids_with_cmdline(&format!("guest={vm},"))
}

/// keeld of the node stopped and started again; `host_reboot` also powers every guest off
/// and clears the node's /run marker, as a host restart would.
async fn restart_node(dev: &DevCluster, host_reboot: bool, vms: &[&str]) -> Result<Api> {
    dev.dev(&["stop", NODE])?;
    if host_reboot {
        for v in vms {
            virsh(dev, &["destroy", v])?;
        }
        in_node(dev, &["rm", "-f", "/run/keel/host-booted"])?;
    }
    dev.dev(&["start", NODE])?;
    wait_until(
        "the API after the restart",
        Duration::from_secs(60),
        || async { Ok(dev.client(&dev.info.endpoint).await.ok()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boot_config_uefi_iso_cloud_init_autostart() -> Result<()> {
    let dev = DevCluster::up("vmconfig", 1, "10.77.11.0/24", 18453)?;
    let api = dev.client(&dev.info.endpoint).await?;
    dev.import_guest_image("tiny")?;
    // An ISO image: a small ISO 9660 file system.
    let iso_dir = dev.state.join("tools");
    std::fs::create_dir_all(&iso_dir)?;
    std::fs::write(iso_dir.join("README"), "keel tools\n")?;
    let iso = dev.state.join("tools.iso");
    ok(
        Command::new("genisoimage")
            .args(["-quiet", "-V", "KEELTOOLS", "-J", "-R", "-o"])
            .arg(&iso)
            .arg(&iso_dir)
            .output()
            .context("genisoimage")?,
        "genisoimage",
    )?;
    let iso_s = iso.to_string_lossy().to_string();
    ok(
        dev.cli(&[
            "image", "import", &iso_s, "--name", "tools", "--format", "iso", "--wait",
        ])?,
        "image import tools",
    )?;

    // Bad input: 400 naming the field, and nothing is created.
    let body = |extra: Value| {
        let mut spec = json!({"cpus": 1, "memory": "128MiB",
            "disks": [{"name": "root", "source": {"type": "image", "image": "tiny"}}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"metadata": {"name": "bad"}, "spec": spec})
    };
    let big = format!("#cloud-config\n#{}\n", "x".repeat(64 * 1024));
    for (extra, field) in [
        (json!({"iso": "nosuch"}), "spec.iso"),
        (json!({"iso": "tiny"}), "spec.iso"),
        (json!({"boot_order": ["iso"]}), "spec.boot_order[0]"),
        (json!({"boot_order": ["cdrom"]}), "spec.boot_order[0]"),
        (json!({"firmware": "efi"}), "spec.firmware"),
        (
            json!({"cloud_init": {"hostname": "not_dns!"}}),
            "spec.cloud_init.hostname",
        ),
        (
            json!({"cloud_init": {"ssh_keys": ["hello there"]}}),
            "spec.cloud_init.ssh_keys[0]",
        ),
        (
            json!({"cloud_init": {"user_data": "hello: world\n"}}),
            "spec.cloud_init.user_data",
        ),
        (
            json!({"cloud_init": {"user_data": big}}),
            "spec.cloud_init.user_data",
        ),
    ] {
        let b = body(extra.clone());
        let a = api.call("POST", "/api/v1/vms", Some(b)).await?;
        assert_eq!(a.status, 400, "{extra}: {}", a.body);
        assert_eq!(
            a.body["error"]["field"].as_str(),
            Some(field),
            "{extra}: {}",
            a.body
        );
    }
    let out = dev.cli(&[
        "vm",
        "create",
        "bad",
        "--image",
        "tiny",
        "--cpus",
        "1",
        "--memory",
        "128MiB",
        "--hostname",
        "no_underscores",
    ])?;
    assert!(!out.status.success(), "a bad hostname must be refused");
    let list = api.call("GET", "/api/v1/vms", None).await?;
    assert_eq!(list.body["items"], json!([]), "{}", list.body);
    assert!(
        !pool(&dev).join("cloud-init").exists()
            || std::fs::read_dir(pool(&dev).join("cloud-init"))?
                .next()
                .is_none()
    );

    // UEFI, the ISO, a boot order, cloud-init from options, autostart off.
    let pw_file = dev.state.join("password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n"))?;
    let pw_s = pw_file.to_string_lossy().to_string();
    ok(
        dev.cli(&[
            "vm",
            "create",
            "cfg",
            "--image",
            "tiny",
            "--cpus",
            "1",
            "--memory",
            "128MiB",
            "--firmware",
            "uefi",
            "--iso",
            "tools",
            "--boot",
            "root,iso",
            "--hostname",
            "cfg-host",
            "--ssh-key",
            SSH_KEY,
            "--password-file",
            &pw_s,
            "--autostart",
            "false",
            "--wait",
        ])?,
        "vm create cfg",
    )?;
    let cfg = wait_phase(&api, "cfg", "running").await?;
    let uid = cfg["metadata"]["uid"].as_str().context("uid")?.to_string();
    assert!(virsh(&dev, &["domstate", "cfg"])?.contains("running"));

    // The password is never readable from the API: only its SHA-512 crypt hash is stored.
    let shown = vm(&api, "cfg").await?.body;
    assert!(!shown.to_string().contains(PASSWORD), "{shown}");
    let hash = shown["spec"]["cloud_init"]["password"]
        .as_str()
        .context("password")?
        .to_string();
    assert!(hash.starts_with("$6$"), "{hash}");
    let cli_show = ok(dev.cli(&["vm", "show", "cfg", "-o", "json"])?, "vm show")?;
    assert!(!cli_show.contains(PASSWORD), "{cli_show}");

    // The domain: OVMF with this VM's NVRAM, the disk first, the ISO second and read-only,
    // the seed read-only and not bootable.
    let xml = virsh(&dev, &["dumpxml", "cfg"])?;
    let nvram = pool(&dev).join(format!("nvram/{uid}.fd"));
    assert!(
        xml.contains("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("{}</nvram>", nvram.display())),
        "{xml}"
    );
    assert!(nvram.is_file(), "libvirt made the NVRAM from the template");
    assert!(!xml.contains("<boot dev="), "{xml}");
    let d = disks(&xml);
    assert_eq!(d.len(), 3, "{xml}");
    assert!(
        d[0].contains("device='disk'") && d[0].contains("<boot order='1'/>"),
        "{}",
        d[0]
    );
    let image = pool(&dev).join("images/tools");
    assert!(
        d[1].contains("device='cdrom'")
            && d[1].contains(&format!("<source file='{}'", image.display()))
            && d[1].contains("<readonly/>")
            && d[1].contains("bus='sata'")
            && d[1].contains("<boot order='2'/>"),
        "{}",
        d[1]
    );
    let seed = pool(&dev).join(format!("cloud-init/{uid}.iso"));
    assert!(
        d[2].contains("device='cdrom'")
            && d[2].contains(&format!("<source file='{}'", seed.display()))
            && d[2].contains("<readonly/>")
            && !d[2].contains("<boot "),
        "{}",
        d[2]
    );
    // The QEMU process runs OVMF.
    let pid = *qemu_pids("cfg").first().context("cfg's QEMU")?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))?.replace('\0', " ");
    assert!(cmdline.contains("OVMF_CODE"), "{cmdline}");

    // The seed: label cidata, meta-data and user-data as the spec says, no clear password.
    assert_eq!(iso_label(&seed)?, "cidata");
    let meta = iso_file(&seed, "/meta-data")?;
    assert_eq!(
        meta,
        format!("instance-id: \"{uid}\"\nlocal-hostname: \"cfg-host\"\n")
    );
    let user = iso_file(&seed, "/user-data")?;
    assert!(user.starts_with("#cloud-config\n"), "{user}");
    assert!(user.contains("hostname: \"cfg-host\"\n"), "{user}");
    assert!(
        user.contains(&format!("ssh_authorized_keys:\n  - \"{SSH_KEY}\"\n")),
        "{user}"
    );
    assert!(
        user.contains(&format!(
            "password: \"{hash}\"\nchpasswd:\n  expire: false\n"
        )),
        "{user}"
    );
    assert!(!user.contains(PASSWORD), "{user}");

    // BIOS, no ISO, raw user-data, autostart on (the default).
    let user_data = "#cloud-config\nruncmd:\n  - echo hello\n";
    let a = api
        .call(
            "POST",
            "/api/v1/vms",
            Some(
                json!({"metadata": {"name": "plain"}, "spec": {"cpus": 1, "memory": "128MiB",
                "disks": [{"name": "root", "source": {"type": "image", "image": "tiny"}}],
                "cloud_init": {"user_data": user_data}}}),
            ),
        )
        .await?;
    assert_eq!(a.status, 201, "{}", a.body);
    let plain_uid = a.body["metadata"]["uid"]
        .as_str()
        .context("uid")?
        .to_string();
    wait_phase(&api, "plain", "running").await?;
    let xml = virsh(&dev, &["dumpxml", "plain"])?;
    assert!(!xml.contains("<loader"), "{xml}");
    assert!(xml.contains("<boot dev='hd'/>"), "{xml}");
    let plain_seed = pool(&dev).join(format!("cloud-init/{plain_uid}.iso"));
    assert_eq!(iso_file(&plain_seed, "/user-data")?, user_data);
    assert_eq!(
        iso_file(&plain_seed, "/meta-data")?,
        format!("instance-id: \"{plain_uid}\"\nlocal-hostname: \"plain\"\n")
    );

    // keeld restarts (the host does not): nothing changes, whatever autostart says.
    let cfg_qemu = qemu_pids("cfg");
    let plain_qemu = qemu_pids("plain");
    let api = restart_node(&dev, false, &[]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(qemu_pids("cfg"), cfg_qemu, "cfg's QEMU runs on");
    assert_eq!(qemu_pids("plain"), plain_qemu, "plain's QEMU runs on");
    let v = vm(&api, "cfg").await?.body;
    assert_eq!(v["spec"]["power_state"], "running", "{v}");
    assert_eq!(v["status"]["phase"], "running", "{v}");

    // The host restarts (guests powered off, /run emptied): autostart on starts again,
    // autostart off is left stopped with a condition saying why.
    let api = restart_node(&dev, true, &["cfg", "plain"]).await?;
    // (The status still says running from before: watch the domain.)
    wait_until(
        "plain's domain started again",
        Duration::from_secs(60),
        || async {
            Ok(virsh(&dev, &["domstate", "plain"])?
                .contains("running")
                .then_some(()))
        },
    )
    .await?;
    let v = wait_phase(&api, "cfg", "stopped").await?;
    assert_eq!(v["spec"]["power_state"], "stopped", "{v}");
    let cond = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Autostart"))
        .cloned()
        .context("Autostart condition")?;
    assert_eq!(cond["reason"], "HostRestarted", "{cond}");
    assert!(virsh(&dev, &["domstate", "cfg"])?.contains("shut off"));
    // A new password through PATCH (the VM is stopped) ends up hashed in the store too, and
    // the rebuilt seed carries the new hash.
    let a = api
        .call(
            "PATCH",
            "/api/v1/vms/cfg",
            Some(json!({"cloud_init": {"hostname": "cfg-host", "password": "An0ther-pw!"}})),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let new_hash = wait_until(
        "the new password hashed",
        Duration::from_secs(60),
        || async {
            let v = vm(&api, "cfg").await?.body;
            let p = v["spec"]["cloud_init"]["password"]
                .as_str()
                .unwrap_or("")
                .to_string();
            Ok((p.starts_with("$6$") && p != hash).then_some(p))
        },
    )
    .await?;
    wait_until("the seed rebuilt", Duration::from_secs(60), || async {
        Ok(iso_file(&seed, "/user-data")
            .ok()
            .filter(|u| u.contains(&new_hash))
            .map(|_| ()))
    })
    .await?;
    assert!(!vm(&api, "cfg")
        .await?
        .body
        .to_string()
        .contains("An0ther-pw!"));
    // Started by hand, it runs again (and its NVRAM was kept).
    ok(dev.cli(&["vm", "start", "cfg", "--wait"])?, "vm start cfg")?;
    assert!(nvram.is_file());

    // Delete removes the domain, the seed and the NVRAM.
    for name in ["cfg", "plain"] {
        ok(dev.cli(&["vm", "delete", name, "--wait"])?, "vm delete")?;
        assert!(
            !virsh(&dev, &["list", "--all", "--name"])?
                .lines()
                .any(|l| l.trim() == name),
            "{name} still defined"
        );
    }
    assert!(!seed.exists(), "seed left behind");
    assert!(!plain_seed.exists(), "seed left behind");
    assert!(!nvram.exists(), "NVRAM left behind");
    let left: Vec<_> = std::fs::read_dir(pool(&dev).join("cloud-init"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
