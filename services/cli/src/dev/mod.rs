//! `keel dev`: a Keel cluster on one machine, one network and one mount namespace per node,
//! joined by a host bridge; the embedded default way to run Keel and what the integration
//! tests use. Needs root. See [`ops`] for the flow and [`state`] for what is recorded.

pub mod forward;
pub mod host;
pub mod libvirt;
pub mod ops;
pub mod ovs;
pub mod plan;
pub mod procs;
pub mod state;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{DevArgs, DevCommand};
use crate::output;

/// Runs a `keel dev` command.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.state;
    match args.command {
        DevCommand::Up(up) => {
            let info = ops::up_with(dir, &up.up, up.no_libvirt).await?;
            output::line(&serde_json::to_string(&info)?)?;
        }
        DevCommand::Down => ops::down(dir)?,
        DevCommand::Stop { node, kill } => ops::stop(dir, &node, kill)?,
        DevCommand::Start { node } => ops::start(dir, &node)?,
        DevCommand::Exec { node, command } => ops::exec(dir, &node, &command)?,
        DevCommand::Add {
            name,
            join_secret,
            no_libvirt,
            wait,
            timeout,
        } => {
            let node = ops::add(
                dir,
                name.as_str(),
                join_secret.as_deref(),
                no_libvirt,
                wait,
                Duration::from_secs(timeout),
            )
            .await?;
            output::line(&serde_json::to_string(&node)?)?;
        }
        DevCommand::Status => {
            let status = ops::status(dir)?;
            output::line(&serde_json::to_string_pretty(&status)?)?;
        }
        DevCommand::Forward { listen } => {
            let paths = ops::existing_paths(dir)?
                .with_context(|| format!("{} does not exist", dir.display()))?;
            forward::serve(listen, paths).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
