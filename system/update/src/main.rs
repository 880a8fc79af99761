//! `keel-update`: the slot tool on a node (keeld does the same through the library).
//!
//! ```text
//! keel-update verify BUNDLE [--keys DIR]     signature, version and hashes; writes nothing
//! keel-update install BUNDLE [--allow-downgrade] [--tries N]
//! keel-update bless                          mark the running boot good
//! keel-update status                         running slot, version, pending, next entry
//! ```
use std::path::PathBuf;
use std::process::ExitCode;

use keel_update::{slot, InstallOptions, Layout};

fn run(args: &[String]) -> Result<String, String> {
    let mut layout = Layout::system();
    let mut opts = InstallOptions::default();
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keys" => layout.keys = PathBuf::from(it.next().ok_or("--keys needs a directory")?),
            "--allow-downgrade" => opts.allow_downgrade = true,
            "--tries" => {
                opts.tries = it
                    .next()
                    .and_then(|t| t.parse().ok())
                    .ok_or("--tries needs a number")?
            }
            _ => pos.push(a.as_str()),
        }
    }
    let e = |e: keel_update::UpdateError| e.to_string();
    match pos.as_slice() {
        ["verify", bundle] => {
            let keys = keel_update::load_keys(&layout.keys).map_err(e)?;
            let v = keel_update::verify(bundle.as_ref(), &keys, None, true).map_err(e)?;
            Ok(format!(
                "ok: version {} build {} signed by {}",
                v.manifest.version, v.manifest.build, v.key_id
            ))
        }
        ["install", bundle] => {
            layout.ensure_esp_mounted().map_err(e)?;
            let i = slot::install(&layout, bundle.as_ref(), &opts).map_err(e)?;
            Ok(format!(
                "slot {} now holds {}; entry {}: reboot to try it",
                i.slot, i.version, i.entry
            ))
        }
        ["bless"] => {
            layout.ensure_esp_mounted().map_err(e)?;
            Ok(match slot::bless(&layout).map_err(e)? {
                Some(name) => format!("blessed: {name}"),
                None => "nothing to bless".into(),
            })
        }
        ["status"] => {
            layout.ensure_esp_mounted().map_err(e)?;
            let s = slot::boot_state(&layout).map_err(e)?;
            Ok(format!(
                "slot {} version {} pending {} next {}",
                s.slot,
                s.version.unwrap_or_else(|| "-".into()),
                s.pending,
                s.next.map(|n| n.file).unwrap_or_else(|| "-".into())
            ))
        }
        _ => Err("usage: keel-update verify|install BUNDLE | bless | status".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("keel-update: {msg}");
            ExitCode::FAILURE
        }
    }
}
