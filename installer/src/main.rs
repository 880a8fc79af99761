use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_installer::{disks, install};

/// Installs Keel's appliance image onto a disk.
#[derive(Debug, Parser)]
#[command(name = "keel-install", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lists the disks with size, model and serial.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// sysfs block directory (for tests).
        #[arg(long, default_value = "/sys/block", hide = true)]
        sys_block: PathBuf,
    },
    /// Writes the image to a disk and applies an answer file.
    Install {
        /// The raw image (keel.raw).
        #[arg(long, default_value = "/usr/share/keel/keel.raw")]
        image: PathBuf,
        /// The disk to write (e.g. /dev/nvme0n1; an image file works too).
        #[arg(long)]
        target: PathBuf,
        /// Answer file to apply (cluster, admin, node, network).
        #[arg(long)]
        answer: Option<PathBuf>,
        /// Overwrite a disk that holds data or an existing Keel install.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Puts an answer file onto an installed disk's data partition.
    ApplyAnswer {
        /// The installed disk (or image file).
        #[arg(long)]
        target: PathBuf,
        /// The answer file.
        #[arg(long)]
        answer: PathBuf,
    },
    /// Wipes the node's state (data partition) but keeps the OS. Without --target: this
    /// node, at its next boot.
    FactoryReset {
        /// An installed disk that is not running (else: this node).
        #[arg(long)]
        target: Option<PathBuf>,
        /// Keep the answer file, so the node forms or joins its cluster again by itself.
        #[arg(long)]
        keep_answer: bool,
        /// Where this node's data partition is mounted.
        #[arg(long, default_value = "/data", hide = true)]
        data_mount: PathBuf,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::List { json, sys_block } => {
            let list = disks::list(&sys_block)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<10} {:>10}  {:<28} {:<22} NOTE",
                    "DISK", "SIZE", "MODEL", "SERIAL"
                );
                for d in list {
                    let contents = keel_installer::probe::probe(&d.path)
                        .map(|c| c.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    let mut note = contents;
                    if d.removable {
                        note.push_str(", removable");
                    }
                    if d.read_only {
                        note.push_str(", read-only");
                    }
                    println!(
                        "{:<10} {:>10}  {:<28} {:<22} {}",
                        d.name,
                        disks::human(d.size),
                        d.model,
                        d.serial,
                        note
                    );
                }
            }
        }
        Cmd::Install {
            image,
            target,
            answer,
            force,
            json,
        } => {
            let report = install::install(&install::InstallOptions {
                image,
                target: target.clone(),
                answer,
                force,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "installed Keel on {} ({} written); partitions: {}{}",
                    target.display(),
                    disks::human(report.written_bytes),
                    report
                        .partitions
                        .iter()
                        .map(|p| format!("{} {}", p.name, disks::human(p.size)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if report.answer_applied {
                        "; answer file applied"
                    } else {
                        "; no answer file: the node starts in setup mode"
                    }
                );
            }
        }
        Cmd::ApplyAnswer { target, answer } => {
            let text = std::fs::read_to_string(&answer)?;
            let parts = match keel_installer::probe::probe(&target)? {
                keel_installer::probe::Contents::KeelInstall(p) => p,
                other => anyhow::bail!("{} holds {other}, not a Keel install", target.display()),
            };
            let data = install::data_partition(&parts, &target)?;
            install::write_answer(&target, &data, &text)?;
            println!("answer file applied to {}", target.display());
        }
        Cmd::FactoryReset {
            target,
            keep_answer,
            data_mount,
        } => match target {
            Some(t) => {
                install::factory_reset_disk(&t, keep_answer)?;
                println!("{}: state wiped; the OS is kept", t.display());
            }
            None => {
                let marker = install::factory_reset_running(&data_mount, keep_answer)?;
                println!(
                    "factory reset armed ({}): reboot to wipe this node's state",
                    marker.display()
                );
            }
        },
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-install: {e:#}");
            ExitCode::FAILURE
        }
    }
}
