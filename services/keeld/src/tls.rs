//! TLS plumbing: rustls configurations for the API (server auth) and for node-to-node traffic
//! (mutual TLS on the cluster CA), and the accept loop that serves a warp filter over them.
//!
//! ```text
//!  TcpListener ─accept─▶ TlsAcceptor (cert from CertSlot, swapped when the node joins)
//!        └─▶ hyper auto (HTTP/1.1 + h2) ─▶ ConnInfo into request extensions ─▶ warp filter
//! ```

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use tracing::{debug, warn};
use warp::{Filter, Reply};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM held no certificate.
    #[error("no certificate in PEM")]
    NoCert,
    /// The PEM held no private key.
    #[error("no private key in PEM")]
    NoKey,
    /// The PEM did not parse.
    #[error("PEM does not parse")]
    Pem(#[source] std::io::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration step '{step}' failed")]
    Rustls {
        /// Which step.
        step: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in a PEM string.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert);
    }
    Ok(certs)
}

/// The private key in a PEM string.
pub fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_bytes()))
        .map_err(TlsError::Pem)?
        .ok_or(TlsError::NoKey)
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            step: "add CA",
            source,
        })?;
    }
    Ok(roots)
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(key(key_pem)?)
        .map_err(|source| TlsError::Rustls {
            step: "load key",
            source,
        })?;
    Ok(Arc::new(CertifiedKey::new(certs(cert_pem)?, key)))
}

/// The API's certificate, swappable at run time (self-signed while forming, CA-signed once a
/// member) without restarting the listener.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// A slot holding the given certificate.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(RwLock::new(certified_key(
            cert_pem, key_pem,
        )?))))
    }

    /// Replaces the certificate for new connections.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let ck = certified_key(cert_pem, key_pem)?;
        match self.0.write() {
            Ok(mut g) => *g = ck,
            Err(poisoned) => *poisoned.into_inner() = ck,
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.0.read() {
            Ok(g) => Some(g.clone()),
            Err(poisoned) => Some(poisoned.into_inner().clone()),
        }
    }
}

/// Server configuration of the HTTPS API: server authentication only.
pub fn api_server_config(slot: Arc<CertSlot>) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            step: "protocols",
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Server configuration of the node-to-node port: a client certificate from the cluster CA is
/// required.
pub fn peer_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            step: "protocols",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(|source| TlsError::Rustls {
            step: "peer certificate",
            source,
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Client configuration for node-to-node calls: trusts only the cluster CA and presents the
/// node's certificate.
pub fn peer_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            step: "protocols",
            source,
        })?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, key(key_pem)?)
        .map_err(|source| TlsError::Rustls {
            step: "client certificate",
            source,
        })
}

/// Client configuration for a join request, made before the joiner knows the CA: the server
/// certificate is not checked here; the join protocol proves both sides hold the join secret
/// (HMAC over the exchange), and the CSR carries no secret.
pub fn join_client_config() -> Result<ClientConfig, TlsError> {
    let p = provider();
    Ok(ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            step: "protocols",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(p)))
        .with_no_client_auth())
}

#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a handler may know about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
}

/// Serves `filter` over TLS on `listener` until `shutdown` fires.
pub async fn serve<F>(
    listener: TcpListener,
    config: ServerConfig,
    filter: F,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let filter = filter.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let info = ConnInfo { remote };
            let mut svc = warp::service(filter);
            let svc = tower_service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info);
                svc.call(req)
            });
            let result = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
                .await;
            if let Err(e) = result {
                debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
}

/// A tower service from a closure (hyper_util's adapter wants tower services).
fn tower_service_fn<F, Req, Fut, Res>(f: F) -> FnService<F>
where
    F: FnMut(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Res, std::convert::Infallible>>,
{
    FnService(f)
}

#[derive(Clone)]
struct FnService<F>(F);

impl<F, Req, Fut, Res> Service<Req> for FnService<F>
where
    F: FnMut(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Res, std::convert::Infallible>>,
{
    type Response = Res;
    type Error = std::convert::Infallible;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}
