//! H1: dependencies point one way. `services/model` depends on no I/O crate and on no other
//! Keel crate; `system/*` crates never depend on `services/*`; nothing depends on the CLI or
//! keeld.

use std::process::Command;

use serde_json::Value;

#[test]
fn crate_dependencies_point_one_way() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let mut checked = 0;
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let path = p["manifest_path"].as_str().unwrap();
        let deps: Vec<&str> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        let keel_deps: Vec<&&str> = deps.iter().filter(|d| d.starts_with("keel-")).collect();
        if name == "keel-model" {
            assert!(keel_deps.is_empty(), "keel-model depends on {keel_deps:?}");
            for io in ["tokio", "rusqlite", "reqwest", "warp", "openraft", "nix"] {
                assert!(
                    !deps.contains(&io),
                    "keel-model depends on the I/O crate {io}"
                );
            }
        }
        if path.contains("/system/") {
            assert!(
                keel_deps.is_empty(),
                "{name} (a host adapter) depends on {keel_deps:?}; system crates depend on no Keel crate"
            );
        }
        for d in &keel_deps {
            assert!(
                **d != "keel-keeld" && **d != "keel-cli" && **d != "keel-tests",
                "{name} depends on the binary crate {d}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} packages found");
}
