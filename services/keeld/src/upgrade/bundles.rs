//! Update bundles on a node: received from an upload (streamed to a file while hashed, never
//! held in memory), verified with the node's trusted keys, kept as
//! `<state>/upgrade-bundles/<sha256>.bundle`, served to peers over mTLS
//! (`GET /internal/upgrade-bundles/<sha256>.bundle`) and copied from a peer by the nodes
//! being upgraded.
//!
//! ```text
//!   POST /api/v1/upgrade-bundles ─▶ .upload-<uuid> (sha256 while written) ─▶ verify
//!        ─ refused: the file is removed, 4xx with a code ─┐
//!        ─ good: rename to <sha256>.bundle ─▶ 201 {sha256, version, size_bytes}
//!   node being upgraded without it: GET https://<holder>:7443/internal/upgrade-bundles/<sha>.bundle
//!        ─▶ .fetch-<uuid> ─▶ sha256 must match ─▶ <sha256>.bundle ─▶ install verifies it again
//! ```

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Buf;
use futures::{Stream, StreamExt};
use keel_model::UpgradeBundle;
use keel_update::UpdateError;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};
use warp::http::StatusCode;

/// Largest bundle accepted (two 1 GiB root slots' worth is far more than a slot holds).
pub const MAX_BUNDLE: u64 = 2 * 1024 * 1024 * 1024;

/// Where bundles are kept and which keys verify them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of bundles (`<state>/upgrade-bundles`, on the data partition).
    pub dir: PathBuf,
    /// Trusted update keys (`*.pub`).
    pub keys: PathBuf,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The appliance's trusted keys.
pub const DEFAULT_KEYS: &str = "/usr/share/keel/update-keys";

/// Sets where bundles are kept and which keys are trusted (once, at start).
pub fn configure(state_dir: &Path, keys: &Path) -> std::io::Result<()> {
    let dir = state_dir.join("upgrade-bundles");
    std::fs::create_dir_all(&dir)?;
    let _ = CONFIG.set(Config {
        dir,
        keys: keys.to_path_buf(),
    });
    Ok(())
}

/// The configuration (the appliance's defaults when [`configure`] was not called).
pub fn config() -> Config {
    CONFIG.get().cloned().unwrap_or_else(|| Config {
        dir: PathBuf::from("/var/lib/keel/upgrade-bundles"),
        keys: PathBuf::from(DEFAULT_KEYS),
    })
}

/// Path of the bundle with `sha256`.
pub fn path_of(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.bundle"))
}

/// A 64-digit lowercase hex SHA-256.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a bundle was refused, as the API says it: status, stable code, field, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
    /// The field to blame, if any.
    pub field: Option<String>,
}

impl Refusal {
    /// A refusal.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        field: Option<&str>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: field.map(str::to_string),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, None)
    }
}

/// The API's answer to a bundle that does not verify (one match, no catch-all).
pub fn refusal_of(e: &UpdateError) -> Refusal {
    use StatusCode as S;
    let (status, code) = match e {
        UpdateError::NotABundle(_) => (S::BAD_REQUEST, "not_a_bundle"),
        UpdateError::Unsigned => (S::BAD_REQUEST, "unsigned"),
        UpdateError::UnknownKey { .. } => (S::BAD_REQUEST, "untrusted_key"),
        UpdateError::BadSignature { .. } => (S::BAD_REQUEST, "bad_signature"),
        UpdateError::Manifest(_) => (S::BAD_REQUEST, "bad_manifest"),
        UpdateError::HashMismatch { .. } => (S::BAD_REQUEST, "hash_mismatch"),
        UpdateError::Truncated { .. } => (S::BAD_REQUEST, "truncated"),
        UpdateError::TrailingData => (S::BAD_REQUEST, "trailing_data"),
        UpdateError::Downgrade { .. } => (S::CONFLICT, "downgrade"),
        UpdateError::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            (S::BAD_REQUEST, "truncated")
        }
        UpdateError::NoTrustedKeys(_) | UpdateError::Key { .. } => {
            (S::SERVICE_UNAVAILABLE, "no_trusted_keys")
        }
        UpdateError::OnTrial { .. } => (S::CONFLICT, "on_trial"),
        UpdateError::Io { .. } | UpdateError::Slot(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    };
    let message = match e {
        UpdateError::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("the bundle is truncated: {e}")
        }
        _ => e.to_string(),
    };
    Refusal {
        status,
        code,
        message,
        field: None,
    }
}

/// The answer when this node has no usable trusted keys (its configuration, not the bundle).
pub fn keys_refusal(dir: &Path, e: &UpdateError) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_trusted_keys",
        format!(
            "this node cannot verify update bundles: {e} (trusted keys are *.pub files in {}; keeld --update-keys or KEEL_UPDATE_KEYS)",
            dir.display()
        ),
        None,
    )
}

/// Verifies the bundle at `path` completely (signature with the keys in `keys`, manifest,
/// every payload file's size and hash). Blocking: reads the whole file.
pub fn verify_file(path: &Path, keys: &Path) -> Result<keel_update::Verified, UpdateError> {
    let keys = keel_update::load_keys(keys)?;
    keel_update::verify(path, &keys, None, true)
}

/// Reads the head of a stored bundle and checks its signature (cheap: no payload read).
pub fn describe(
    dir: &Path,
    keys: &Path,
    sha256: &str,
    node: &str,
) -> Result<UpgradeBundle, UpdateError> {
    let path = path_of(dir, sha256);
    let f = std::fs::File::open(&path).map_err(|e| UpdateError::Io {
        context: format!("opening {}", path.display()),
        source: e,
    })?;
    let size_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = BufReader::new(f);
    let head = keel_update::bundle::read_head(&mut r)?;
    let keys = keel_update::load_keys(keys)?;
    let (manifest, key_id) = keel_update::bundle::verify_head(&head, &keys)?;
    Ok(UpgradeBundle {
        sha256: sha256.to_string(),
        version: manifest.version,
        size_bytes,
        key_id,
        node: node.to_string(),
    })
}

/// Every bundle stored on this node (signature checked; the payload was checked on arrival).
pub fn list(cfg: &Config, node: &str) -> Vec<UpgradeBundle> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&cfg.dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(sha) = name.strip_suffix(".bundle").filter(|s| is_sha256(s)) {
            match describe(&cfg.dir, &cfg.keys, sha, node) {
                Ok(b) => out.push(b),
                Err(err) => warn!(bundle = %name, error = %err, "stored bundle does not verify"),
            }
        }
    }
    out.sort_by(|a, b| a.version.cmp(&b.version).then(a.sha256.cmp(&b.sha256)));
    out
}

/// Removes a file, logging (not failing) when that does not work.
fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove");
        }
    }
}

/// Receives an uploaded bundle: streams `body` into a temporary file in the bundle directory
/// while hashing it, verifies it completely, and keeps it as `<sha256>.bundle`. Anything
/// refused leaves nothing behind.
pub async fn receive<S, B>(cfg: &Config, node: &str, body: S) -> Result<UpgradeBundle, Refusal>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    // The keys first: a node that cannot verify anything does not take 200 MiB to say so.
    if let Err(e) = keel_update::load_keys(&cfg.keys) {
        return Err(keys_refusal(&cfg.keys, &e));
    }
    tokio::fs::create_dir_all(&cfg.dir)
        .await
        .map_err(|e| Refusal::internal(format!("creating {}: {e}", cfg.dir.display())))?;
    let tmp = cfg
        .dir
        .join(format!(".upload-{}", uuid::Uuid::new_v4().simple()));
    let outcome = write_hashed(&tmp, body).await;
    let (sha256, size) = match outcome {
        Ok(v) => v,
        Err(r) => {
            remove_quietly(&tmp);
            return Err(r);
        }
    };
    if size == 0 {
        remove_quietly(&tmp);
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "not_a_bundle",
            "the request body is empty; send the bundle file (keel-update.bundle) as the body",
            None,
        ));
    }
    let (t, keys) = (tmp.clone(), cfg.keys.clone());
    let verified = tokio::task::spawn_blocking(move || verify_file(&t, &keys))
        .await
        .map_err(|e| Refusal::internal(format!("verifying: {e}")));
    let verified = match verified {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            remove_quietly(&tmp);
            let r = refusal_of(&e);
            warn!(code = r.code, error = %e, "update bundle refused");
            return Err(r);
        }
        Err(r) => {
            remove_quietly(&tmp);
            return Err(r);
        }
    };
    let dest = path_of(&cfg.dir, &sha256);
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        remove_quietly(&tmp);
        return Err(Refusal::internal(format!(
            "keeping the bundle as {}: {e}",
            dest.display()
        )));
    }
    info!(sha256 = %sha256, version = %verified.manifest.version, key = %verified.key_id, size, "update bundle stored");
    Ok(UpgradeBundle {
        sha256,
        version: verified.manifest.version,
        size_bytes: size,
        key_id: verified.key_id,
        node: node.to_string(),
    })
}

async fn write_hashed<S, B>(tmp: &Path, mut body: S) -> Result<(String, u64), Refusal>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| Refusal::internal(format!("creating {}: {e}", tmp.display())))?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "upload_broken",
                format!("the upload broke off after {size} bytes: {e}"),
                None,
            )
        })?;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            size += n as u64;
            if size > MAX_BUNDLE {
                return Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("an update bundle is at most {MAX_BUNDLE} bytes"),
                    None,
                ));
            }
            h.update(part);
            file.write_all(part)
                .await
                .map_err(|e| Refusal::internal(format!("writing {}: {e}", tmp.display())))?;
            chunk.advance(n);
        }
    }
    file.sync_all()
        .await
        .map_err(|e| Refusal::internal(format!("syncing {}: {e}", tmp.display())))?;
    Ok((keel_update::bundle::hex(&h.finalize()), size))
}

/// Copies bundle `sha256` from the first of `peers` (`address:port`) that has it; the copy's
/// hash must match. Returns the local path.
pub async fn fetch(
    m: &crate::member::Member,
    cfg: &Config,
    sha256: &str,
    peers: &[(String, String)],
) -> Result<PathBuf, String> {
    let dest = path_of(&cfg.dir, sha256);
    if dest.exists() {
        return Ok(dest);
    }
    tokio::fs::create_dir_all(&cfg.dir)
        .await
        .map_err(|e| format!("creating {}: {e}", cfg.dir.display()))?;
    let mut errors = Vec::new();
    for (name, peer) in peers {
        let tmp = cfg
            .dir
            .join(format!(".fetch-{}", uuid::Uuid::new_v4().simple()));
        let got = m
            .peers
            .download(
                peer,
                &format!("/internal/upgrade-bundles/{sha256}.bundle"),
                &tmp,
            )
            .await;
        if let Err(e) = got {
            remove_quietly(&tmp);
            errors.push(format!("{name}: {e}"));
            continue;
        }
        let sum = crate::images::sha256_file(&tmp)
            .await
            .map_err(|e| e.to_string());
        match sum {
            Ok(s) if s == sha256 => {
                std::fs::rename(&tmp, &dest).map_err(|e| {
                    remove_quietly(&tmp);
                    format!("keeping {}: {e}", dest.display())
                })?;
                info!(sha256, from = %name, "update bundle copied to this node");
                return Ok(dest);
            }
            Ok(s) => {
                remove_quietly(&tmp);
                errors.push(format!("{name}: the copy has sha256 {s}"));
            }
            Err(e) => {
                remove_quietly(&tmp);
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    Err(format!(
        "no node could give the bundle {sha256}: {}",
        if errors.is_empty() {
            "no other node to ask".to_string()
        } else {
            errors.join("; ")
        }
    ))
}

/// Removes bundles no unfinished upgrade needs and stale partial files, once older than
/// `keep` (so a bundle uploaded for an upgrade about to be created stays).
pub fn collect_garbage(cfg: &Config, needed: &[String], keep: Duration) {
    let Ok(rd) = std::fs::read_dir(&cfg.dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep);
        if !old {
            continue;
        }
        let sha = name.strip_suffix(".bundle");
        let partial = name.starts_with(".upload-") || name.starts_with(".fetch-");
        if partial || sha.is_some_and(|s| !needed.iter().any(|n| n == s)) {
            info!(file = %name, "removing an update bundle no upgrade needs");
            remove_quietly(&e.path());
        }
    }
}

/// Peer route: the node's bundles, for the nodes that copy them (warp refuses paths leaving
/// the directory).
pub fn peer_route(
) -> impl warp::Filter<Extract = (warp::fs::File,), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::path!("internal" / "upgrade-bundles" / ..)
        .and(warp::get())
        .and(warp::fs::dir(config().dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn keypair(dir: &Path, seed: u8) -> (SigningKey, String) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let pk = sk.verifying_key().to_bytes();
        let id = keel_update::bundle::key_id(&pk);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{id}.pub")), keel_update::bundle::hex(&pk)).unwrap();
        (sk, id)
    }

    /// A small signed bundle (`tamper` flips a payload byte after signing).
    pub fn bundle(sk: &SigningKey, id: &str, version: &str, tamper: bool) -> Vec<u8> {
        let files: [(&str, &[u8]); 3] = [
            ("root", b"root filesystem"),
            ("vmlinuz", b"kernel"),
            ("initrd.img", b"initrd"),
        ];
        let entries: Vec<serde_json::Value> = files
            .iter()
            .map(|(n, d)| {
                serde_json::json!({"name": n, "size": d.len(),
                    "sha256": keel_update::bundle::hex(&Sha256::digest(d))})
            })
            .collect();
        let manifest = serde_json::to_vec(
            &serde_json::json!({"format": 1, "version": version, "build": "t", "files": entries}),
        )
        .unwrap();
        let sig = sk.sign(&manifest).to_bytes();
        let mut out = Vec::new();
        let mut root = files[0].1.to_vec();
        if tamper {
            root[0] ^= 1;
        }
        keel_update::bundle::write_bundle(
            &mut out,
            &manifest,
            Some((id, &sig)),
            &[&root, files[1].1, files[2].1],
        )
        .unwrap();
        out
    }

    fn body(bytes: Vec<u8>) -> impl Stream<Item = Result<bytes::Bytes, warp::Error>> + Unpin {
        futures::stream::iter(
            bytes
                .chunks(7)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn good_bundles_are_kept_and_bad_ones_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config {
            dir: tmp.path().join("bundles"),
            keys: tmp.path().join("keys"),
        };
        let (sk, id) = keypair(&cfg.keys, 7);
        let (other, other_id) = keypair(&tmp.path().join("other"), 9);

        let good = bundle(&sk, &id, "0.1.0-2", false);
        let b = receive(&cfg, "node1", body(good.clone())).await.unwrap();
        assert_eq!(b.version, "0.1.0-2");
        assert_eq!(b.size_bytes, good.len() as u64);
        assert_eq!(b.sha256, keel_update::bundle::hex(&Sha256::digest(&good)));
        assert_eq!(files(&cfg.dir), vec![format!("{}.bundle", b.sha256)]);
        assert_eq!(list(&cfg, "node1"), vec![b.clone()]);

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bundle(&sk, &id, "0.1.0-3", true), "hash_mismatch"),
            (bundle(&other, &other_id, "0.1.0-3", false), "untrusted_key"),
            (b"garbage, not a bundle\n".to_vec(), "not_a_bundle"),
            (Vec::new(), "not_a_bundle"),
            (good[..good.len() - 3].to_vec(), "truncated"),
            (
                {
                    let mut v = Vec::new();
                    keel_update::bundle::write_bundle(&mut v, b"{}", None, &[]).unwrap();
                    v
                },
                "unsigned",
            ),
            (
                {
                    // The manifest changed after signing.
                    let s = String::from_utf8_lossy(&good).replacen("0.1.0-2", "0.1.0-9", 1);
                    s.into_bytes()
                },
                "bad_signature",
            ),
        ];
        for (bytes, code) in cases {
            let r = receive(&cfg, "node1", body(bytes)).await.unwrap_err();
            assert_eq!(r.code, code, "{}", r.message);
            assert!(r.status.is_client_error());
            assert_eq!(
                files(&cfg.dir),
                vec![format!("{}.bundle", b.sha256)],
                "nothing kept for {code}"
            );
        }

        // No keys at all: refused before anything is written.
        let nokeys = Config {
            dir: tmp.path().join("b2"),
            keys: tmp.path().join("none"),
        };
        let r = receive(&nokeys, "node1", body(good)).await.unwrap_err();
        assert_eq!(r.code, "no_trusted_keys");
        assert!(!nokeys.dir.exists() || files(&nokeys.dir).is_empty());
    }

    #[test]
    fn garbage_collection_keeps_what_is_needed() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config {
            dir: tmp.path().to_path_buf(),
            keys: tmp.path().join("keys"),
        };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        for f in [
            format!("{a}.bundle"),
            format!("{b}.bundle"),
            ".upload-x".into(),
        ] {
            std::fs::write(tmp.path().join(f), b"x").unwrap();
        }
        collect_garbage(&cfg, &[], Duration::from_secs(3600));
        assert_eq!(files(tmp.path()).len(), 3, "young files stay");
        collect_garbage(&cfg, std::slice::from_ref(&a), Duration::ZERO);
        assert_eq!(files(tmp.path()), vec![format!("{a}.bundle")]);
    }

    #[test]
    fn sha256_names() {
        assert!(is_sha256(&"0a".repeat(32)));
        assert!(!is_sha256(&"0A".repeat(32)));
        assert!(!is_sha256("../../etc/passwd"));
        assert!(!is_sha256(&"0".repeat(63)));
    }
}
