//! The credentials file `keel login` writes: `$XDG_CONFIG_HOME/keel/credentials.json` (or
//! `~/.config/keel/credentials.json`), mode 0600, holding the endpoint, the CA path and the token.
//!
//! The file is versioned (H16); a file of an unknown version is refused rather than guessed at.

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Format version this build writes and reads.
pub const CREDENTIALS_VERSION: u32 = 1;

/// What `keel login` saves.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Format version.
    pub version: u32,
    /// The endpoint logged in to.
    pub endpoint: String,
    /// The CA certificate trusted for it (absolute path), if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// User name, for messages.
    pub username: String,
    /// Bearer token.
    pub token: String,
    /// When the token expires, RFC 3339.
    pub expires: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("endpoint", &self.endpoint)
            .field("ca_cert", &self.ca_cert)
            .field("username", &self.username)
            .field("token", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// Why the credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("cannot place the credentials file: neither XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
    /// Reading failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not a credentials file this build knows.
    #[error(
        "{path} is not a credentials file of version {CREDENTIALS_VERSION}; run `keel login` again"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error("writing {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The credentials file's path from the values of `XDG_CONFIG_HOME` and `HOME`.
pub fn path_from(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, CredentialsError> {
    let base = match (xdg_config_home, home) {
        (Some(x), _) if !x.is_empty() && Path::new(&x).is_absolute() => PathBuf::from(x),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".config"),
        _ => return Err(CredentialsError::NoHome),
    };
    Ok(base.join("keel").join("credentials.json"))
}

/// The credentials file's path for this process's environment.
pub fn default_path() -> Result<PathBuf, CredentialsError> {
    path_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// Reads the file; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Credentials>, CredentialsError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the credentials file is readable by others; it should be mode 0600");
        }
    }
    let creds: Credentials =
        serde_json::from_str(&text).map_err(|source| CredentialsError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if creds.version != CREDENTIALS_VERSION {
        return Err(CredentialsError::Parse {
            path: path.to_path_buf(),
            source: serde::de::Error::custom(format!("unknown version {}", creds.version)),
        });
    }
    Ok(Some(creds))
}

/// Writes the file atomically with mode 0600 (its directory 0700).
pub fn save(path: &Path, creds: &Credentials) -> Result<(), CredentialsError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CredentialsError::Write { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(write_err(dir))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(creds).map_err(|e| CredentialsError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err(&tmp))?;
    file.write_all(&body).map_err(write_err(&tmp))?;
    file.write_all(b"\n").map_err(write_err(&tmp))?;
    file.sync_all().map_err(write_err(&tmp))?;
    fs::rename(&tmp, path).map_err(write_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            version: CREDENTIALS_VERSION,
            endpoint: "https://127.0.0.1:8443".into(),
            ca_cert: Some("/var/lib/keel-dev/ca.pem".into()),
            username: "admin".into(),
            token: "tok".into(),
            expires: "2030-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn path_prefers_xdg_then_home() {
        assert_eq!(
            path_from(Some("/x".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/x/keel/credentials.json")
        );
        assert_eq!(
            path_from(None, Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.config/keel/credentials.json")
        );
        // The XDG spec says relative values are to be ignored.
        assert_eq!(
            path_from(Some("rel".into()), Some("/home/u".into())).unwrap(),
            PathBuf::from("/home/u/.config/keel/credentials.json")
        );
        assert!(matches!(
            path_from(None, None),
            Err(CredentialsError::NoHome)
        ));
    }

    #[test]
    fn saves_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/keel/credentials.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &sample()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load(&path).unwrap(), Some(sample()));

        let mut other = sample();
        other.token = "second".into();
        save(&path, &other).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().token, "second");
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn refuses_unknown_versions_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 9.into();
        fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(load(&path), Err(CredentialsError::Parse { .. })));
        v["version"] = 1.into();
        v["extra"] = 1.into();
        fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(load(&path), Err(CredentialsError::Parse { .. })));
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", sample()).contains("tok\""));
    }
}
