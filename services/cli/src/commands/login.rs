//! `keel login`: logs in and saves the token, the endpoint and the CA for later commands.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::cli::LoginArgs;
use crate::client::ApiClient;
use crate::credentials::{self, Credentials, CREDENTIALS_VERSION};
use crate::session::Target;

/// `keel login`.
pub async fn login(target: &Target, args: &LoginArgs) -> anyhow::Result<()> {
    let password = password(args)?;
    let ca_cert = match &target.ca_cert {
        Some(p) => Some(absolute(p)?),
        None => None,
    };
    let mut client = ApiClient::new(&target.endpoint, ca_cert.as_deref())?;
    let resp = client.login(&args.username, &password).await?;
    let path = credentials::default_path()?;
    credentials::save(
        &path,
        &Credentials {
            version: CREDENTIALS_VERSION,
            endpoint: target.endpoint.clone(),
            ca_cert,
            username: args.username.clone(),
            token: resp.token,
            expires: resp.expires.clone(),
        },
    )?;
    eprintln!(
        "logged in to {} as {}; the token (valid until {}) is saved in {}",
        target.endpoint,
        args.username,
        resp.expires,
        path.display()
    );
    Ok(())
}

fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("the CA certificate {}", p.display()))
}

fn password(args: &LoginArgs) -> anyhow::Result<String> {
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            bail!("standard input held no password");
        }
        return Ok(pw);
    }
    if let Some(pw) = std::env::var("KEEL_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(pw);
    }
    prompt(&format!("password for {}: ", args.username))
}

/// Asks on the terminal with echo off.
fn prompt(question: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::Write as _;

    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the password; use --password-stdin or KEEL_PASSWORD")?;
    let saved = tcgetattr(&tty).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    (&tty).write_all(question.as_bytes())?;
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).context("turning off echo")?;
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let restored = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    (&tty).write_all(b"\n")?;
    read.context("reading the password")?;
    restored.context("restoring the terminal settings")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
