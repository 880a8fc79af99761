//! Authentication: argon2id password hashes, stateless bearer tokens signed with a cluster key
//! (HMAC-SHA256, so any node validates any token without a store write per login), and a
//! per-client limit on failed logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Lifetime of a token.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Why authentication failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The password could not be hashed.
    #[error("hashing the password failed")]
    Hash,
    /// Token missing, malformed, forged or expired.
    #[error("{0}")]
    BadToken(&'static str),
}

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role name (`admin` for now).
    pub role: String,
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hash)
}

/// Checks a password against a stored hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User name.
    pub sub: String,
    /// Role.
    pub role: String,
    /// Expiry, unix seconds.
    pub exp: u64,
}

fn mac(key: &[u8], payload: &[u8]) -> Result<Vec<u8>, AuthError> {
    let mut m = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| AuthError::BadToken("signing key is unusable"))?;
    m.update(payload);
    Ok(m.finalize().into_bytes().to_vec())
}

/// Issues a token for `claims`.
pub fn issue(key: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let payload = serde_json::to_vec(claims).map_err(|_| AuthError::Hash)?;
    let sig = mac(key, &payload)?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(sig)
    ))
}

/// Validates a token at unix time `now`.
pub fn validate(key: &[u8], token: &str, now: u64) -> Result<Claims, AuthError> {
    let (p, s) = token
        .split_once('.')
        .ok_or(AuthError::BadToken("the token is malformed"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| AuthError::BadToken("the token is malformed"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AuthError::BadToken("the token is malformed"))?;
    let mut m = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| AuthError::BadToken("signing key is unusable"))?;
    m.update(&payload);
    m.verify_slice(&sig)
        .map_err(|_| AuthError::BadToken("the token signature is not valid"))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|_| AuthError::BadToken("the token is malformed"))?;
    if claims.exp <= now {
        return Err(AuthError::BadToken("the token has expired; log in again"));
    }
    Ok(claims)
}

/// Failed logins per client address: at most `limit` in `window`; then refuse until the oldest
/// failure leaves the window.
#[derive(Debug)]
pub struct LoginLimiter {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl LoginLimiter {
    /// A limiter allowing `limit` failures per `window`.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` if `ip` must wait before trying again.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = match self.failures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(list) = map.get_mut(&ip) else {
            return Ok(());
        };
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() >= self.limit {
            let oldest = list.iter().min().copied().unwrap_or(now);
            return Err(self
                .window
                .saturating_sub(now.duration_since(oldest))
                .max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = match self.failures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if map.len() > 10_000 {
            map.clear();
        }
        map.entry(ip).or_default().push(now);
    }

    /// Forgets the failures of `ip` after a success.
    pub fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens() {
        let key = b"0123456789abcdef0123456789abcdef";
        let c = Claims {
            sub: "admin".into(),
            role: "admin".into(),
            exp: 1000,
        };
        let t = issue(key, &c).unwrap();
        assert_eq!(validate(key, &t, 999).unwrap(), c);
        assert!(validate(key, &t, 1000)
            .unwrap_err()
            .to_string()
            .contains("expired"));
        assert!(validate(b"another key......", &t, 1).is_err());
        let (p, s) = t.split_once('.').unwrap();
        let forged = format!("{}x.{s}", p);
        assert!(validate(key, &forged, 1).is_err());
        assert!(validate(key, "garbage", 1).is_err());
    }

    #[test]
    fn limiter() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(ip, t0).is_ok());
            l.failed(ip, t0);
        }
        let wait = l.check(ip, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.check(ip, t0 + Duration::from_secs(61)).is_ok());
        assert!(l.check("10.0.0.2".parse().unwrap(), t0).is_ok());
    }
}
