//! Which endpoint, which CA and which credentials a command uses.
//!
//! ```text
//!  endpoint: --endpoint / KEEL_ENDPOINT  >  saved login  >  https://127.0.0.1:8443
//!  CA:       --ca-cert / KEEL_CA_CERT    >  saved login (same endpoint)  >  system CAs
//!  token:    KEEL_TOKEN  >  KEEL_USERNAME + KEEL_PASSWORD (logs in)  >  saved login  >  none
//! ```

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::DEFAULT_ENDPOINT;
use crate::client::ApiClient;
use crate::credentials::{self, Credentials};

/// Credentials from the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvCredentials {
    /// `KEEL_TOKEN`.
    pub token: Option<String>,
    /// `KEEL_USERNAME`.
    pub username: Option<String>,
    /// `KEEL_PASSWORD`.
    pub password: Option<String>,
}

impl std::fmt::Debug for EnvCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvCredentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EnvCredentials {
    /// Reads `KEEL_TOKEN`, `KEEL_USERNAME` and `KEEL_PASSWORD`; empty values count as unset.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            token: var("KEEL_TOKEN"),
            username: var("KEEL_USERNAME"),
            password: var("KEEL_PASSWORD"),
        }
    }
}

/// How a command authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// A bearer token as given.
    Token(String),
    /// Log in with these first.
    Login {
        /// User.
        username: String,
        /// Password.
        password: String,
    },
    /// No credentials: requests go without a token.
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Login { username, .. } => write!(f, "Login({username})"),
            Self::None => f.write_str("None"),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// API endpoint.
    pub endpoint: String,
    /// CA to trust.
    pub ca_cert: Option<PathBuf>,
    /// Credentials.
    pub auth: Auth,
}

/// Decides endpoint, CA and credentials from the flags, the environment and the saved login.
pub fn resolve(
    endpoint: Option<&str>,
    ca_cert: Option<&PathBuf>,
    env: &EnvCredentials,
    saved: Option<&Credentials>,
) -> Target {
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| saved.map(|s| s.endpoint.clone()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let saved_here =
        saved.filter(|s| s.endpoint.trim_end_matches('/') == endpoint.trim_end_matches('/'));
    let ca_cert = ca_cert
        .cloned()
        .or_else(|| saved_here.and_then(|s| s.ca_cert.clone()));
    let auth = if let Some(t) = &env.token {
        Auth::Token(t.clone())
    } else if let (Some(u), Some(p)) = (&env.username, &env.password) {
        Auth::Login {
            username: u.clone(),
            password: p.clone(),
        }
    } else if let Some(s) = saved {
        // A token is valid on every node of its cluster, so it is used for any endpoint.
        Auth::Token(s.token.clone())
    } else {
        Auth::None
    };
    Target {
        endpoint,
        ca_cert,
        auth,
    }
}

/// The target for this invocation, from the global flags, the environment and the saved login.
pub fn target(endpoint: Option<&str>, ca_cert: Option<&PathBuf>) -> anyhow::Result<Target> {
    let saved = match credentials::default_path() {
        Ok(path) => credentials::load(&path)?,
        Err(_) => None,
    };
    Ok(resolve(
        endpoint,
        ca_cert,
        &EnvCredentials::from_env(),
        saved.as_ref(),
    ))
}

/// A client of the target, logged in if the credentials say so.
pub async fn connect(target: &Target) -> anyhow::Result<ApiClient> {
    let mut client = ApiClient::new(&target.endpoint, target.ca_cert.as_deref())?;
    match &target.auth {
        Auth::Token(t) => client = client.with_token(t.clone()),
        Auth::Login { username, password } => {
            client.login(username, password).await.with_context(|| {
                format!("logging in as {username} (KEEL_USERNAME/KEEL_PASSWORD)")
            })?;
        }
        Auth::None => {}
    }
    Ok(client)
}

/// A hint to add to a 401 when the command had no credentials.
pub fn unauthorized_hint(target: &Target) -> Option<&'static str> {
    matches!(target.auth, Auth::None).then_some(
        "no credentials: run `keel login`, or set KEEL_TOKEN, or KEEL_USERNAME and KEEL_PASSWORD",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CREDENTIALS_VERSION;

    fn saved() -> Credentials {
        Credentials {
            version: CREDENTIALS_VERSION,
            endpoint: "https://10.0.0.1:8443".into(),
            ca_cert: Some("/saved/ca.pem".into()),
            username: "admin".into(),
            token: "saved-token".into(),
            expires: String::new(),
        }
    }

    #[test]
    fn defaults_without_anything() {
        let t = resolve(None, None, &EnvCredentials::default(), None);
        assert_eq!(t.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(t.ca_cert, None);
        assert_eq!(t.auth, Auth::None);
    }

    #[test]
    fn the_saved_login_fills_the_gaps() {
        let s = saved();
        let t = resolve(None, None, &EnvCredentials::default(), Some(&s));
        assert_eq!(t.endpoint, "https://10.0.0.1:8443");
        assert_eq!(t.ca_cert, Some(PathBuf::from("/saved/ca.pem")));
        assert_eq!(t.auth, Auth::Token("saved-token".into()));
    }

    #[test]
    fn flags_and_environment_win() {
        let s = saved();
        let ca = PathBuf::from("/flag/ca.pem");
        let env = EnvCredentials {
            token: None,
            username: Some("admin".into()),
            password: Some("pw".into()),
        };
        let t = resolve(Some("https://other:8443"), Some(&ca), &env, Some(&s));
        assert_eq!(t.endpoint, "https://other:8443");
        assert_eq!(t.ca_cert, Some(ca));
        assert_eq!(
            t.auth,
            Auth::Login {
                username: "admin".into(),
                password: "pw".into()
            }
        );
        let env = EnvCredentials {
            token: Some("env-token".into()),
            ..env
        };
        assert_eq!(
            resolve(None, None, &env, Some(&s)).auth,
            Auth::Token("env-token".into())
        );
    }

    #[test]
    fn the_saved_ca_only_applies_to_its_endpoint() {
        let s = saved();
        let t = resolve(
            Some("https://other:8443"),
            None,
            &EnvCredentials::default(),
            Some(&s),
        );
        assert_eq!(t.ca_cert, None);
        let t = resolve(
            Some("https://10.0.0.1:8443/"),
            None,
            &EnvCredentials::default(),
            Some(&s),
        );
        assert_eq!(t.ca_cert, Some(PathBuf::from("/saved/ca.pem")));
    }

    #[test]
    fn a_username_without_password_is_not_a_login() {
        let env = EnvCredentials {
            username: Some("admin".into()),
            ..Default::default()
        };
        assert_eq!(resolve(None, None, &env, None).auth, Auth::None);
    }
}
