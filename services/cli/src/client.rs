//! The HTTPS client of keeld's API: one TLS configuration that trusts exactly the cluster CA,
//! bearer tokens, and the API's error body turned into [`ClientError::Api`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_model::{ErrorBody, LoginRequest, LoginResponse};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long one ordinary request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The system's CA bundle, trusted when no cluster CA is given.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read.
    #[error("reading the CA certificate {path}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("{path} holds no usable PEM certificate")]
    BadCa {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("building the TLS configuration")]
    Tls(#[source] rustls::Error),
    /// reqwest refused the configuration.
    #[error("building the HTTP client")]
    Build(#[source] reqwest::Error),
    /// The endpoint is not an https URL.
    #[error("the endpoint {0:?} is not an https:// URL")]
    BadEndpoint(String),
    /// The request did not get an answer.
    #[error("{method} {url} got no answer{hint}")]
    Transport {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// A hint for the usual cause, or empty.
        hint: &'static str,
        /// Why.
        source: reqwest::Error,
    },
    /// The API answered with its error body.
    #[error("{message} ({code}{})", field.as_deref().map(|f| format!(", {f}")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable machine-readable code.
        code: String,
        /// What went wrong.
        message: String,
        /// The offending field.
        field: Option<String>,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The server answered with something that is not the API's error body.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Unexpected {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// HTTP status.
        status: StatusCode,
        /// The body (shortened).
        body: String,
    },
    /// A success answer that does not parse as the expected type.
    #[error("{method} {url}: the answer does not parse")]
    Decode {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of an answered request.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } | Self::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// `Retry-After` of an API error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A client of one endpoint, cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    has_ca: bool,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A rustls client configuration (ring provider) that trusts exactly the certificates in `pem`.
pub fn tls_config_from_pem(pem: &[u8], path: &Path) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]).flatten() {
        // Bundles may hold certificates webpki cannot use; skip those, fail only if none is left.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ClientError::BadCa {
            path: path.to_path_buf(),
        });
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

fn read_ca(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadCa {
        path: path.to_path_buf(),
        source,
    })
}

impl ApiClient {
    /// A client of `endpoint` that trusts the CA in `ca_cert` (or the system's CAs without one).
    pub fn new(endpoint: &str, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        if !endpoint.starts_with("https://") {
            return Err(ClientError::BadEndpoint(endpoint.to_string()));
        }
        let (tls, has_ca) = match ca_cert {
            Some(path) => (tls_config_from_pem(&read_ca(path)?, path)?, true),
            None => {
                let path = Path::new(SYSTEM_BUNDLE);
                let pem = std::fs::read(path).unwrap_or_default();
                match tls_config_from_pem(&pem, path) {
                    Ok(cfg) => (cfg, false),
                    // No system bundle: an empty trust store, so every server is refused
                    // with a message that points at --ca-cert.
                    Err(_) => (
                        rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .map_err(ClientError::Tls)?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                        false,
                    ),
                }
            }
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            base: endpoint.trim_end_matches('/').to_string(),
            http,
            token: None,
            has_ca,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// This client with a bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// This client with a different timeout for ordinary requests.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// True when a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `POST /api/v1/auth/login`; keeps the token on success.
    pub async fn login(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<LoginResponse, ClientError> {
        let body = LoginRequest {
            username: username.to_string(),
            password: password.to_string(),
        };
        let resp: LoginResponse = self
            .request(Method::POST, "/api/v1/auth/login", Some(&body))
            .await?;
        self.token = Some(resp.token.clone());
        Ok(resp)
    }

    /// GET and decode.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request::<T, ()>(Method::GET, path, None).await
    }

    /// Sends `body` (if any) as JSON and decodes the answer.
    pub async fn request<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let text = self
            .send(method.clone(), path, body, Some(self.timeout))
            .await?
            .text()
            .await;
        let text = text.map_err(|source| self.transport(method.clone(), &url, source))?;
        serde_json::from_str(&text).map_err(|source| ClientError::Decode {
            method,
            url,
            source,
        })
    }

    /// Sends a request that answers with no body (`204`).
    pub async fn request_empty<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        self.send(method, path, body, Some(self.timeout))
            .await
            .map(drop)
    }

    /// GETs the raw body as text.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let resp = self
            .send::<()>(Method::GET, path, None, Some(self.timeout))
            .await?;
        resp.text()
            .await
            .map_err(|source| self.transport(Method::GET, &url, source))
    }

    /// GETs a long-lived response (a stream) with no overall timeout.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.send::<()>(Method::GET, path, None, None).await
    }

    /// Sends a request with a per-request timeout; any non-2xx answer becomes an error.
    /// A 503 with `Retry-After` (no quorum, leader changing) is retried for up to 20 s when
    /// repeating the request is harmless (see [`retryable`]).
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self.send_once(method.clone(), path, body, timeout).await {
                Err(ClientError::Api {
                    status,
                    retry_after: Some(wait),
                    ..
                }) if status == StatusCode::SERVICE_UNAVAILABLE
                    && retryable(&method, path)
                    && std::time::Instant::now() + wait < deadline =>
                {
                    tracing::debug!(%method, path, ?wait, "503: retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    async fn send_once<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.execute(method, url, req).await
    }

    /// PUTs raw bytes (`application/octet-stream`), with `Content-Range` when given, and
    /// decodes the JSON answer. Used for image uploads.
    pub async fn put_octets<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        content_range: Option<&str>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut req = self
            .http
            .request(Method::PUT, &url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(range) = content_range {
            req = req.header(reqwest::header::CONTENT_RANGE, range);
        }
        let resp = self.execute(Method::PUT, url.clone(), req).await?;
        let text = resp
            .text()
            .await
            .map_err(|source| self.transport(Method::PUT, &url, source))?;
        serde_json::from_str(&text).map_err(|source| ClientError::Decode {
            method: Method::PUT,
            url,
            source,
        })
    }

    /// POSTs a file as the raw body (`application/octet-stream`, streamed from disk, never
    /// read into memory) and decodes the JSON answer. Used for update bundles.
    pub async fn post_file<T: DeserializeOwned>(
        &self,
        path: &str,
        file: tokio::fs::File,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let len = file.metadata().await.map(|m| m.len()).ok();
        let mut req = self
            .http
            .request(Method::POST, &url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::from(file));
        if let Some(len) = len {
            req = req.header(reqwest::header::CONTENT_LENGTH, len);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = self.execute(Method::POST, url.clone(), req).await?;
        let text = resp
            .text()
            .await
            .map_err(|source| self.transport(Method::POST, &url, source))?;
        serde_json::from_str(&text).map_err(|source| ClientError::Decode {
            method: Method::POST,
            url,
            source,
        })
    }

    /// Sends a built request; any non-2xx answer becomes an error.
    async fn execute(
        &self,
        method: Method,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        tracing::debug!(%method, %url, "request");
        let resp = req
            .send()
            .await
            .map_err(|source| self.transport(method.clone(), &url, source))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        Err(error_from_body(method, url, status, &text, retry_after))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn transport(&self, method: Method, url: &str, source: reqwest::Error) -> ClientError {
        let hint = if !self.has_ca && is_certificate_problem(&source) {
            " (trust the cluster CA with --ca-cert or KEEL_CA_CERT)"
        } else if source.is_connect() {
            " (is keeld running there? is the endpoint right?)"
        } else {
            ""
        };
        ClientError::Transport {
            method,
            url: url.to_string(),
            hint,
            source: source.without_url(),
        }
    }
}

fn is_certificate_problem(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return true;
        }
        source = s.source();
    }
    false
}

/// Turns a non-2xx answer into [`ClientError::Api`] when the body is the API's error body.
pub fn error_from_body(
    method: Method,
    url: String,
    status: StatusCode,
    text: &str,
    retry_after: Option<Duration>,
) -> ClientError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
            retry_after,
        },
        Err(_) => {
            let mut body: String = text.chars().take(200).collect();
            if body.is_empty() {
                body = "(empty body)".into();
            }
            ClientError::Unexpected {
                method,
                url,
                status,
                body,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_print_message_code_and_field() {
        let body = r#"{"error":{"code":"invalid_field","message":"null is not a setting value","field":"value"}}"#;
        let e = error_from_body(Method::PUT, "u".into(), StatusCode::BAD_REQUEST, body, None);
        assert_eq!(
            e.to_string(),
            "null is not a setting value (invalid_field, value)"
        );
        assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));

        let body = r#"{"error":{"code":"no_quorum","message":"the cluster has no quorum"}}"#;
        let e = error_from_body(
            Method::GET,
            "u".into(),
            StatusCode::SERVICE_UNAVAILABLE,
            body,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(e.to_string(), "the cluster has no quorum (no_quorum)");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn other_bodies_are_shown_shortened() {
        let e = error_from_body(
            Method::GET,
            "https://h/x".into(),
            StatusCode::BAD_GATEWAY,
            &"x".repeat(500),
            None,
        );
        let s = e.to_string();
        assert!(
            s.starts_with("GET https://h/x: HTTP 502 Bad Gateway: xxx"),
            "{s}"
        );
        assert!(s.len() < 260);
        let e = error_from_body(Method::GET, "u".into(), StatusCode::NOT_FOUND, "", None);
        assert!(e.to_string().contains("(empty body)"));
    }

    #[test]
    fn ca_files_must_hold_a_certificate() {
        let err = tls_config_from_pem(b"not pem", Path::new("/x.pem")).unwrap_err();
        assert!(err
            .to_string()
            .contains("/x.pem holds no usable PEM certificate"));
        assert!(matches!(
            ApiClient::new("https://h", Some(Path::new("/nonexistent/ca.pem"))),
            Err(ClientError::ReadCa { .. })
        ));
        assert!(matches!(
            ApiClient::new("http://h", None),
            Err(ClientError::BadEndpoint(_))
        ));
    }
}

/// Whether repeating a request whose outcome is unknown is harmless: reads, PUTs and DELETEs
/// (compare-and-set or absolute), and POST actions that set a state (start, stop, cordon...).
/// Creates are not retried: a repeat could answer "already exists" for the first attempt.
pub fn retryable(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::PUT | Method::DELETE => true,
        Method::POST => ["/start", "/stop", "/reboot", "/cordon", "/uncordon"]
            .iter()
            .any(|a| path.ends_with(a)),
        _ => false,
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn only_harmless_repeats_are_retried() {
        assert!(retryable(&Method::GET, "/api/v1/vms"));
        assert!(retryable(&Method::DELETE, "/api/v1/vms/a"));
        assert!(retryable(&Method::POST, "/api/v1/vms/a/stop"));
        assert!(!retryable(&Method::POST, "/api/v1/vms"));
        assert!(!retryable(&Method::POST, "/api/v1/auth/login"));
    }
}
