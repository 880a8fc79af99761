//! The join protocol. A joining node does not know the cluster CA yet, so it cannot check the
//! server's certificate; instead both sides prove they hold the join secret:
//!
//! ```text
//!  joiner: key + CSR, nonce ──JoinRequest{.., proof = HMAC(secret, request fields)}──▶ member
//!  member (leader, or forwarded to it): check proof, allocate id, sign CSR
//!  joiner ◀──JoinResponse{id, ca, cert, proof = HMAC(secret, nonce, id, ca, cert)}── member
//!  joiner: check proof (an impostor without the secret cannot forge it), save identity
//! ```
//! The secret never crosses the wire, and the node's private key never leaves the node.

use std::time::Duration;

use hmac::{Hmac, Mac};
use keel_model::{ErrorBody, JoinRequest, JoinResponse, Name};
use sha2::Sha256;

use crate::tls;

/// Hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hex, if it is hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn mac(secret: &str, parts: &[&str]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty tag anyway.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p.as_bytes());
    }
    m.finalize().into_bytes().to_vec()
}

fn verify(secret: &str, parts: &[&str], proof_hex: &str) -> bool {
    let Some(proof) = unhex(proof_hex) else {
        return false;
    };
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p.as_bytes());
    }
    m.verify_slice(&proof).is_ok()
}

fn request_parts<'a>(
    cluster: &'a str,
    name: &'a str,
    address: &'a str,
    csr: &'a str,
    nonce: &'a str,
) -> [&'a str; 6] {
    ["keel-join-request/1", cluster, name, address, csr, nonce]
}

/// Builds a signed join request.
pub fn request(secret: &str, cluster: &str, name: &Name, address: &str, csr: &str) -> JoinRequest {
    let nonce = hex(&rand::random::<[u8; 16]>());
    let proof = hex(&mac(
        secret,
        &request_parts(cluster, name.as_str(), address, csr, &nonce),
    ));
    JoinRequest {
        cluster: cluster.to_string(),
        name: name.clone(),
        address: address.to_string(),
        csr: csr.to_string(),
        nonce,
        proof,
    }
}

/// True if the request was made by a holder of `secret`.
pub fn check_request(secret: &str, r: &JoinRequest) -> bool {
    verify(
        secret,
        &request_parts(&r.cluster, r.name.as_str(), &r.address, &r.csr, &r.nonce),
        &r.proof,
    )
}

/// Builds a signed answer.
pub fn response(secret: &str, nonce: &str, id: u64, ca: &str, cert: &str) -> JoinResponse {
    let id_s = id.to_string();
    let proof = hex(&mac(
        secret,
        &["keel-join-response/1", nonce, &id_s, ca, cert],
    ));
    JoinResponse {
        id,
        ca_cert: ca.to_string(),
        cert: cert.to_string(),
        proof,
    }
}

/// True if the answer was made by a holder of `secret` for our `nonce`.
pub fn check_response(secret: &str, nonce: &str, r: &JoinResponse) -> bool {
    let id_s = r.id.to_string();
    verify(
        secret,
        &["keel-join-response/1", nonce, &id_s, &r.ca_cert, &r.cert],
        &r.proof,
    )
}

/// Why a join attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The member could not be reached.
    #[error("member {0} unreachable: {1}")]
    Unreachable(String, String),
    /// The member refused us (wrong secret, name taken...).
    #[error("member {via} refused the join ({status}): {message}")]
    Refused {
        /// Member asked.
        via: String,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        message: String,
    },
    /// The answer's proof is wrong: not our cluster, or an impostor.
    #[error("member {0} answered without a valid proof of the join secret; ignoring it")]
    BadProof(String),
    /// The TLS client could not be built.
    #[error("TLS client: {0}")]
    Tls(String),
}

/// Sends `req` to the member at `address` (its API port) and checks the answer.
pub async fn send(
    address: &str,
    secret: &str,
    req: &JoinRequest,
) -> Result<JoinResponse, JoinError> {
    let cfg = tls::join_client_config().map_err(|e| JoinError::Tls(e.to_string()))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| JoinError::Tls(e.to_string()))?;
    let url = format!("https://{address}:{}/api/v1/cluster/join", crate::API_PORT);
    let resp = client
        .post(url)
        .json(req)
        .send()
        .await
        .map_err(|e| JoinError::Unreachable(address.to_string(), e.to_string()))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let message = resp
            .json::<ErrorBody>()
            .await
            .map(|b| b.error.message)
            .unwrap_or_else(|_| "no explanation".into());
        return Err(JoinError::Refused {
            via: address.to_string(),
            status,
            message,
        });
    }
    let answer: JoinResponse = resp
        .json()
        .await
        .map_err(|e| JoinError::Unreachable(address.to_string(), e.to_string()))?;
    if !check_response(secret, &req.nonce, &answer) {
        return Err(JoinError::BadProof(address.to_string()));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_every_field() {
        let name = Name::new("node2").unwrap();
        let r = request("s3cret-s3cret-s3cret", "lab", &name, "10.0.0.12", "CSR");
        assert!(check_request("s3cret-s3cret-s3cret", &r));
        assert!(!check_request("another-secret-xxxx", &r));
        let mut moved = r.clone();
        moved.address = "10.0.0.99".into();
        assert!(!check_request("s3cret-s3cret-s3cret", &moved));
        let a = response("s3cret-s3cret-s3cret", &r.nonce, 2, "CA", "CERT");
        assert!(check_response("s3cret-s3cret-s3cret", &r.nonce, &a));
        assert!(!check_response("s3cret-s3cret-s3cret", "other-nonce", &a));
        let mut swapped = a.clone();
        swapped.ca_cert = "EVIL CA".into();
        assert!(!check_response("s3cret-s3cret-s3cret", &r.nonce, &swapped));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
