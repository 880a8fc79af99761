//! The update bundle: a signed manifest followed by the payload files.
//!
//! ```text
//!   KEEL-UPDATE 1 <manifest length in bytes>\n
//!   <manifest: JSON, exactly that many bytes>\n
//!   sig ed25519 <key id: 16 hex> <signature of the manifest bytes: 128 hex>\n
//!   <payload: the manifest's files, in manifest order, back to back>
//! ```
//!
//! The signature covers the manifest bytes; the manifest carries the size and SHA-256 of every
//! payload file, so the whole bundle is authenticated by one signature and one streaming pass.
//! The key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key; trusted
//! keys are `*.pub` files (64 hex digits) in a directory (`/usr/share/keel/update-keys/`).
//! `image/build.sh` writes bundles with openssl; nothing else is needed to make one.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_err, UpdateError};
use crate::version;

/// First word of every bundle.
pub const MAGIC: &str = "KEEL-UPDATE";
/// The bundle format this crate reads.
pub const FORMAT: u32 = 1;
/// Upper bound for the manifest (it lists three files).
pub const MAX_MANIFEST: usize = 64 * 1024;
/// Payload file names a bundle must carry.
pub const REQUIRED_FILES: [&str; 3] = ["root", "vmlinuz", "initrd.img"];

const CHUNK: usize = 1024 * 1024;

/// What a bundle is: signed by the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format (1).
    pub format: u32,
    /// Image version, e.g. `0.1.0-20261124223000`; ordered with [`version::compare`].
    pub version: String,
    /// Build id (the image build's input hash).
    pub build: String,
    /// The payload files, in payload order.
    pub files: Vec<FileEntry>,
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `root` (the root squashfs), `vmlinuz` or `initrd.img`.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl Manifest {
    /// The entry of a payload file.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Bytes of payload.
    pub fn payload_len(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn check(&self) -> Result<(), UpdateError> {
        let bad = |m: String| Err(UpdateError::Manifest(m));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not supported (this build reads {FORMAT})",
                self.format
            ));
        }
        if !version::is_valid(&self.version) {
            return bad(format!("version {:?} is not a valid version", self.version));
        }
        for need in REQUIRED_FILES {
            if self.files.iter().filter(|f| f.name == need).count() != 1 {
                return bad(format!("the bundle must carry exactly one {need:?} file"));
            }
        }
        for f in &self.files {
            if !REQUIRED_FILES.contains(&f.name.as_str()) {
                return bad(format!("unknown payload file {:?}", f.name));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("sha256 of {:?} is not 64 hex digits", f.name));
            }
            if f.size == 0 {
                return bad(format!("{:?} is empty", f.name));
            }
        }
        Ok(())
    }
}

/// A trusted public key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Key id (16 hex digits).
    pub id: String,
    /// Where it was read from.
    pub path: PathBuf,
    key: VerifyingKey,
}

impl TrustedKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32], path: PathBuf) -> Result<TrustedKey, UpdateError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| UpdateError::Key {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(TrustedKey {
            id: key_id(&bytes),
            path,
            key,
        })
    }
}

/// Key id of a raw public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public: &[u8; 32]) -> String {
    let mut h = hex(&Sha256::digest(public));
    h.truncate(16);
    h
}

/// Every `*.pub` key in `dir` (64 hex digits each, whitespace ignored).
pub fn load_keys(dir: &Path) -> Result<Vec<TrustedKey>, UpdateError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    let mut keys = Vec::new();
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io_err(format!("reading {}", path.display()), e))?;
        let bytes = unhex(text.trim()).ok_or_else(|| UpdateError::Key {
            path: path.clone(),
            message: "not 64 hex digits".into(),
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| UpdateError::Key {
            path: path.clone(),
            message: "not a 32-byte ed25519 key".into(),
        })?;
        keys.push(TrustedKey::from_bytes(arr, path)?);
    }
    if keys.is_empty() {
        return Err(UpdateError::NoTrustedKeys(dir.to_path_buf()));
    }
    Ok(keys)
}

/// The parsed head of a bundle (nothing verified yet).
#[derive(Debug, Clone)]
pub struct Head {
    /// The manifest bytes as signed.
    pub manifest_bytes: Vec<u8>,
    /// `None` when the bundle says it is unsigned.
    pub signature: Option<(String, [u8; 64])>,
    /// Byte offset of the payload.
    pub payload_offset: u64,
}

fn read_line(r: &mut impl BufRead, max: usize, what: &str) -> Result<String, UpdateError> {
    let mut buf = Vec::new();
    r.take(max as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| io_err(format!("reading the {what}"), e))?;
    if buf.last() != Some(&b'\n') {
        return Err(UpdateError::NotABundle(format!(
            "the {what} line is missing or too long"
        )));
    }
    buf.pop();
    String::from_utf8(buf).map_err(|_| UpdateError::NotABundle(format!("the {what} is not text")))
}

/// Reads the head: magic, manifest, signature line.
pub fn read_head(r: &mut impl BufRead) -> Result<Head, UpdateError> {
    let first = read_line(r, 64, "header")?;
    let mut parts = first.split(' ');
    let (magic, fmt, len) = (parts.next(), parts.next(), parts.next());
    if magic != Some(MAGIC) || parts.next().is_some() {
        return Err(UpdateError::NotABundle(
            "it does not start with KEEL-UPDATE".into(),
        ));
    }
    if fmt != Some("1") {
        return Err(UpdateError::NotABundle(format!(
            "bundle format {} is not supported (this build reads {FORMAT})",
            fmt.unwrap_or("?")
        )));
    }
    let len: usize = len
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0 && *l <= MAX_MANIFEST)
        .ok_or_else(|| UpdateError::NotABundle("the manifest length is not valid".into()))?;
    let mut manifest_bytes = vec![0u8; len];
    r.read_exact(&mut manifest_bytes)
        .map_err(|e| io_err("reading the manifest".into(), e))?;
    let mut nl = [0u8; 1];
    r.read_exact(&mut nl)
        .map_err(|e| io_err("reading the manifest".into(), e))?;
    if nl[0] != b'\n' {
        return Err(UpdateError::NotABundle(
            "the manifest is not followed by a newline".into(),
        ));
    }
    let sig_line = read_line(r, 256, "signature")?;
    let signature = parse_sig_line(&sig_line)?;
    let payload_offset = (first.len() + 1 + len + 1 + sig_line.len() + 1) as u64;
    Ok(Head {
        manifest_bytes,
        signature,
        payload_offset,
    })
}

fn parse_sig_line(line: &str) -> Result<Option<(String, [u8; 64])>, UpdateError> {
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        ["unsigned"] | [""] => Ok(None),
        ["sig", "ed25519", id, sig] => {
            let bytes = unhex(sig).ok_or(UpdateError::Unsigned)?;
            let arr: [u8; 64] = bytes.try_into().map_err(|_| UpdateError::Unsigned)?;
            Ok(Some((id.to_string(), arr)))
        }
        _ => Err(UpdateError::Unsigned),
    }
}

/// What [`verify`] found: a bundle whose signature and payload hashes are good.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The key that signed it.
    pub key_id: String,
    /// Byte offset of the payload in the bundle.
    pub payload_offset: u64,
}

/// Checks the signature of the manifest against the trusted keys and parses it.
pub fn verify_head(head: &Head, keys: &[TrustedKey]) -> Result<(Manifest, String), UpdateError> {
    let (id, sig) = head.signature.as_ref().ok_or(UpdateError::Unsigned)?;
    let key = keys
        .iter()
        .find(|k| &k.id == id)
        .ok_or_else(|| UpdateError::UnknownKey {
            key_id: id.clone(),
            trusted: keys.iter().map(|k| k.id.clone()).collect(),
        })?;
    key.key
        .verify(&head.manifest_bytes, &Signature::from_bytes(sig))
        .map_err(|_| UpdateError::BadSignature { key_id: id.clone() })?;
    let manifest: Manifest = serde_json::from_slice(&head.manifest_bytes)
        .map_err(|e| UpdateError::Manifest(e.to_string()))?;
    manifest.check()?;
    Ok((manifest, id.clone()))
}

/// Refuses an older (or the same) version unless `allow_downgrade`.
pub fn check_version(
    manifest: &Manifest,
    running: Option<&str>,
    allow_downgrade: bool,
) -> Result<(), UpdateError> {
    if let Some(running) = running {
        if !allow_downgrade && version::compare(&manifest.version, running).is_le() {
            return Err(UpdateError::Downgrade {
                running: running.to_string(),
                bundle: manifest.version.clone(),
            });
        }
    }
    Ok(())
}

/// Verifies a bundle file completely: signature, manifest, version, and every payload file's
/// size and SHA-256 in one streaming pass (nothing is written anywhere).
pub fn verify(
    path: &Path,
    keys: &[TrustedKey],
    running: Option<&str>,
    allow_downgrade: bool,
) -> Result<Verified, UpdateError> {
    let f = File::open(path).map_err(|e| io_err(format!("opening {}", path.display()), e))?;
    let mut r = BufReader::with_capacity(CHUNK, f);
    let head = read_head(&mut r)?;
    let (manifest, key_id) = verify_head(&head, keys)?;
    check_version(&manifest, running, allow_downgrade)?;
    for f in &manifest.files {
        copy_hashed(&mut r, f, &mut std::io::sink())?;
    }
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(UpdateError::TrailingData),
        Err(e) => return Err(io_err("reading past the payload".into(), e)),
    }
    Ok(Verified {
        manifest,
        key_id,
        payload_offset: head.payload_offset,
    })
}

/// Copies exactly `entry.size` bytes from `r` to `w`, hashing them; fails when the input ends
/// early or the hash differs. On failure `w` may have received part of the data: callers that
/// must not touch their target with bad data verify the whole bundle first.
pub fn copy_hashed(
    r: &mut impl Read,
    entry: &FileEntry,
    w: &mut impl Write,
) -> Result<(), UpdateError> {
    let mut h = Sha256::new();
    let mut left = entry.size;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let n = r
            .read(&mut buf[..want])
            .map_err(|e| io_err(format!("reading {}", entry.name), e))?;
        if n == 0 {
            return Err(UpdateError::Truncated {
                file: entry.name.clone(),
                missing: left,
            });
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| io_err(format!("writing {}", entry.name), e))?;
        left -= n as u64;
    }
    let actual = hex(&h.finalize());
    if actual != entry.sha256.to_ascii_lowercase() {
        return Err(UpdateError::HashMismatch {
            file: entry.name.clone(),
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// SHA-256 of the first `len` bytes of `r`.
pub fn hash_prefix(r: &mut impl Read, len: u64) -> Result<String, UpdateError> {
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let n = r
            .read(&mut buf[..want])
            .map_err(|e| io_err("reading back".into(), e))?;
        if n == 0 {
            return Err(UpdateError::Truncated {
                file: "read-back".into(),
                missing: left,
            });
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex(&h.finalize()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Bytes of a hex string (either case); `None` when it is not hex of even length.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

/// Writes a bundle (used by tests and `keel-update pack`; the image build uses openssl).
pub fn write_bundle(
    out: &mut impl Write,
    manifest_json: &[u8],
    signature: Option<(&str, &[u8; 64])>,
    payload: &[&[u8]],
) -> std::io::Result<()> {
    writeln!(out, "{MAGIC} {FORMAT} {}", manifest_json.len())?;
    out.write_all(manifest_json)?;
    out.write_all(b"\n")?;
    match signature {
        Some((id, sig)) => writeln!(out, "sig ed25519 {id} {}", hex(sig))?,
        None => writeln!(out, "unsigned")?,
    }
    for p in payload {
        out.write_all(p)?;
    }
    Ok(())
}
