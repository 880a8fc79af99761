use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_installer::interactive::{self, Dialogue, Echoed, Sources, Terminal};
use keel_installer::{disks, install};

const DEFAULT_IMAGE: &str = "/usr/share/keel/keel.raw";

/// Installs Keel's appliance image onto a disk. Without a command, on a terminal, it asks
/// its questions (the same as `keel-install interactive`).
#[derive(Debug, Parser)]
#[command(name = "keel-install", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, clap::Args)]
struct InteractiveArgs {
    /// The raw image (keel.raw).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: PathBuf,
    /// Install onto this disk (or image file) instead of choosing from the list.
    #[arg(long)]
    target: Option<PathBuf>,
    /// sysfs block directory (for tests).
    #[arg(long, default_value = "/sys/block", hide = true)]
    sys_block: PathBuf,
    /// sysfs network directory (for tests).
    #[arg(long, default_value = "/sys/class/net", hide = true)]
    sys_net: PathBuf,
    /// Read passwords as plain lines of stdin, which need not be a terminal (for tests).
    #[arg(
        long,
        hide = true,
        env = "KEEL_INSTALL_PASSWORDS_FROM_STDIN",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    passwords_from_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Asks which disk, which cluster, the node's name and address, then installs (the
    /// default on a terminal).
    Interactive(InteractiveArgs),
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
        #[arg(long, default_value = DEFAULT_IMAGE)]
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
    /// node, at its next boot. Also spelled `keel-install --factory-reset`.
    #[command(long_flag = "factory-reset")]
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

fn print_report(target: &std::path::Path, report: &install::InstallReport) {
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

fn run_interactive(args: InteractiveArgs) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !args.passwords_from_stdin && !stdin.is_terminal() {
        anyhow::bail!(
            "the interactive installer needs a terminal on stdin; for an unattended install use `keel-install install --image IMAGE --target DISK --answer answer.toml`"
        );
    }
    let facts = interactive::gather(&Sources {
        image: args.image.clone(),
        target: args.target.clone(),
        sys_block: args.sys_block.clone(),
        sys_net: args.sys_net.clone(),
    })?;
    let stdout = std::io::stdout();
    let plan = if args.passwords_from_stdin {
        Dialogue::new(stdin.lock(), stdout.lock(), Echoed).run(&facts)
    } else {
        Dialogue::new(stdin.lock(), stdout.lock(), Terminal).run(&facts)
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            // The prompt the person was answering is still on the line.
            println!();
            return Err(e.into());
        }
    };
    println!(
        "\nWriting {} to {} ...",
        args.image.display(),
        plan.target.display()
    );
    let report = install::install_with_answer(
        &install::InstallOptions {
            image: args.image,
            target: plan.target.clone(),
            answer: None,
            force: plan.force,
        },
        Some(&plan.answer_text),
    )?;
    print_report(&plan.target, &report);
    println!(
        "Node {} of cluster {} is ready to boot: remove the installer medium and reboot.",
        plan.answer.node.name, plan.answer.cluster.name
    );
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(cmd) = cli.cmd else {
        if std::io::stdin().is_terminal() {
            return run_interactive(InteractiveArgs {
                image: PathBuf::from(DEFAULT_IMAGE),
                target: None,
                sys_block: PathBuf::from("/sys/block"),
                sys_net: PathBuf::from("/sys/class/net"),
                passwords_from_stdin: false,
            });
        }
        anyhow::bail!(
            "no command, and stdin is not a terminal: run it on a terminal to be asked, or install unattended with `keel-install install --image IMAGE --target DISK --answer answer.toml` (see --help)"
        );
    };
    match cmd {
        Cmd::Interactive(args) => run_interactive(args)?,
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
                print_report(&target, &report);
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
