//! `keel`: the command-line client of Keel's API, the dev cluster harness and the benchmarks.
//!
//! ```text
//!  argv ──clap──▶ cli::Cli ──▶ run()
//!                               ├─ login/cluster/node/setting/image/vm/events/openapi
//!                               │     session (endpoint, CA, token) ─▶ client::ApiClient ─HTTPS─▶ keeld
//!                               ├─ dev …   host tools (ip, mount, unshare, nsenter) + keeld per netns
//!                               └─ bench … client passes, and a dev cluster of its own
//! ```
//!
//! The API client speaks only the documented REST API, with the model crate's types. Output
//! is a table for people by default and the API's JSON with `-o json`.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod credentials;
pub mod dev;
pub mod output;
pub mod session;
pub mod sse;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{BenchCommand, Cli, ClusterCommand, Command, NodeCommand, SettingCommand};
use crate::client::{ApiClient, ClientError};
use crate::session::Target;

/// Logs to stderr; `KEEL_LOG` sets the filter (default: this crate's info, others' warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,keel_cli=info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

/// Runs the command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(dispatch(cli))
}

/// Prints an error chain for people (`error: …: …`) and picks the exit code. A closed stdout
/// (`keel events | head -1`) is not an error.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let broken_pipe = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err:#}");
    ExitCode::FAILURE
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        endpoint,
        ca_cert,
        command,
    } = cli;
    let target = || session::target(endpoint.as_deref(), ca_cert.as_ref());
    match command {
        Command::Dev(args) => return dev::run(args).await,
        Command::Bench(BenchCommand::Cluster(args)) => {
            let report = bench::cluster::run(&args).await?;
            output::print(args.out.output, &report, bench::cluster::render)?;
        }
        Command::Bench(BenchCommand::Vm(args)) => {
            let report = bench::vm::run(&args).await?;
            output::print(args.out.output, &report, bench::vm::render)?;
        }
        Command::Login(args) => commands::login::login(&target()?, &args).await?,
        other => {
            let target = target()?;
            let client = session::connect(&target).await?;
            api_command(&client, other)
                .await
                .map_err(|e| with_auth_hint(e, &target))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn with_auth_hint(e: anyhow::Error, target: &Target) -> anyhow::Error {
    let unauthorized = e
        .downcast_ref::<ClientError>()
        .and_then(ClientError::status)
        .is_some_and(|s| s == reqwest::StatusCode::UNAUTHORIZED);
    match (unauthorized, session::unauthorized_hint(target)) {
        (true, Some(hint)) => e.context(hint),
        _ => e,
    }
}

async fn api_command(client: &ApiClient, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Cluster(ClusterCommand::Status(o)) => {
            commands::cluster::status(client, o.output).await
        }
        Command::Cluster(ClusterCommand::Remove { node }) => {
            commands::cluster::remove(client, &node).await
        }
        Command::Node(NodeCommand::List(o)) => commands::node::list(client, o.output).await,
        Command::Node(NodeCommand::Show { name, out }) => {
            commands::node::show(client, &name, out.output).await
        }
        Command::Node(NodeCommand::Cordon { name, out }) => {
            commands::node::cordon(client, &name, true, out.output).await
        }
        Command::Node(NodeCommand::Uncordon { name, out }) => {
            commands::node::cordon(client, &name, false, out.output).await
        }
        Command::Node(NodeCommand::Maintenance(a)) => {
            commands::lifecycle::maintenance(client, &a, true).await
        }
        Command::Node(NodeCommand::MaintenanceExit(a)) => {
            commands::lifecycle::maintenance(client, &a, false).await
        }
        Command::Task(c) => commands::lifecycle::task(client, c).await,
        Command::Upgrade(c) => commands::upgrade::run(client, c).await,
        Command::Image(c) => commands::image::run(client, c).await,
        Command::Vm(c) => commands::vm::run(client, c).await,
        Command::Pool(c) => commands::storage::pool(client, c).await,
        Command::Volume(c) => commands::storage::volume(client, c).await,
        Command::Setting(SettingCommand::List(o)) => {
            commands::setting::list(client, o.output).await
        }
        Command::Setting(SettingCommand::Get { key, out }) => {
            commands::setting::get(client, &key, out.output).await
        }
        Command::Setting(SettingCommand::Set {
            key,
            value,
            version,
            out,
        }) => commands::setting::set(client, &key, &value, version, out.output).await,
        Command::Setting(SettingCommand::Delete { key, version }) => {
            commands::setting::delete(client, &key, version).await
        }
        Command::Events(a) => commands::events::follow(client, a.since).await,
        Command::Openapi => commands::openapi(client).await,
        Command::Bench(BenchCommand::Api(a)) => {
            let report = bench::api::run(client, a.writes, a.reads).await?;
            output::print(a.out.output, &report, bench::api::render)
        }
        Command::Login(_)
        | Command::Dev(_)
        | Command::Bench(BenchCommand::Cluster(_))
        | Command::Bench(BenchCommand::Vm(_)) => {
            anyhow::bail!("this command does not talk to the API through a session")
        }
    }
}
