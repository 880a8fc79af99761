//! The cluster certificate authority: created by the founder, kept in the replicated store,
//! signing one certificate per node. Node-to-node traffic is mutual TLS on these certificates;
//! the HTTPS API serves them too.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to generate, parse or sign.
    #[error("certificate step '{step}' failed")]
    Rcgen {
        /// Which step.
        step: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A name or address cannot go into a certificate.
    #[error("{0:?} cannot be put in a certificate")]
    BadSubject(String),
}

fn rc(step: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { step, source }
}

/// The cluster CA as stored (PEM).
#[derive(Clone, Serialize, Deserialize)]
pub struct CaMaterial {
    /// CA certificate.
    pub cert_pem: String,
    /// CA private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

/// A node's key and certificate (PEM).
#[derive(Clone)]
pub struct NodeMaterial {
    /// Certificate signed by the cluster CA.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

impl CaMaterial {
    /// Creates a new CA for the cluster `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Keel cluster CA ({cluster})"));
        dn.push(DnType::OrganizationName, "Keel");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * 20);
        let cert = params.self_signed(&key).map_err(rc("self-sign CA"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate for node `name` at `address` for the public key in `csr_pem`. The
    /// subject comes from the arguments, never from the CSR, so a joiner cannot ask for names
    /// it was not admitted under.
    pub fn sign_node(&self, csr_pem: &str, name: &str, address: &str) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(rc("parse CSR"))?;
        let (issuer, issuer_key) = self.issuer()?;
        let params = node_params(name, address)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer, &issuer_key)
            .map_err(rc("sign node certificate"))?;
        Ok(cert.pem())
    }

    /// Issues a key and certificate for a node directly (the founder, for itself).
    pub fn issue_node(&self, name: &str, address: &str) -> Result<NodeMaterial, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate node key"))?;
        let (issuer, issuer_key) = self.issuer()?;
        let cert = node_params(name, address)?
            .signed_by(&key, &issuer, &issuer_key)
            .map_err(rc("sign node certificate"))?;
        Ok(NodeMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(rc("load CA key"))?;
        let params =
            CertificateParams::from_ca_cert_pem(&self.cert_pem).map_err(rc("load CA cert"))?;
        let cert = params.self_signed(&key).map_err(rc("rebuild CA"))?;
        Ok((cert, key))
    }
}

/// A fresh key and a CSR for it; the CA decides the subject.
pub fn new_csr(name: &str) -> Result<(KeyPair, String), PkiError> {
    let key = KeyPair::generate().map_err(rc("generate node key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .map_err(rc("make CSR"))?
        .pem()
        .map_err(rc("encode CSR"))?;
    Ok((key, csr))
}

/// A self-signed certificate for the API while a node has no cluster yet (setup and forming).
pub fn self_signed(name: &str, address: Option<&str>) -> Result<NodeMaterial, PkiError> {
    let key = KeyPair::generate().map_err(rc("generate key"))?;
    let params = node_params(name, address.unwrap_or("127.0.0.1"))?;
    let cert = params.self_signed(&key).map_err(rc("self-sign"))?;
    Ok(NodeMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn node_params(name: &str, address: &str) -> Result<CertificateParams, PkiError> {
    let ip: IpAddr = address
        .parse()
        .map_err(|_| PkiError::BadSubject(address.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Keel");
    let dns = |s: &str| {
        s.to_string()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|_| PkiError::BadSubject(s.to_string()))
    };
    params.subject_alt_names = vec![
        dns(name)?,
        dns("localhost")?,
        SanType::IpAddress(ip),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365 * 5);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_a_csr_with_the_subject_it_chooses() {
        let ca = CaMaterial::generate("lab").unwrap();
        let (_key, csr) = new_csr("node2").unwrap();
        let cert = ca.sign_node(&csr, "node2", "10.0.0.12").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.sign_node("garbage", "node2", "10.0.0.12").is_err());
        assert!(ca.sign_node(&csr, "node2", "not-an-ip").is_err());
    }
}
