//! Imports from a URL or a file on a node's host, level-triggered: the image record says
//! what is wanted (source, and in `status.node` the node that imports it), and the import
//! loop of that node converges.
//!
//! ```text
//!  every 2 s and on image changes, for each image with status.node = me, phase pending|importing:
//!    uploads/<n>.done exists ─▶ finalize (a crash after the bytes were complete)
//!    url  ─▶ GET [Range: bytes=<len of .part>-] ─▶ append to uploads/<n>.part, sha256 as it goes
//!            (the prefix is re-hashed first), progress in status every 2 s
//!            dropped ─▶ back off, resume with Range (5 attempts in a row without new bytes: failed)
//!    file ─▶ copy <path> to uploads/<n>.part with sha256
//!    ─▶ sha256 ≠ spec.checksum: phase failed, .part removed
//!    ─▶ rename .part → .done ─▶ probe::store (guards, conversion) ─▶ images/<n>
//!    ─▶ status ready (compare-and-set, same uid) ─▶ remove .done
//!  uploads/<n>.* of images that no longer exist (older than a minute) are removed.
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_model::{Image, ImagePhase, ImageProgress, ImageSource, ImageStatus};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument as _};

use super::{image_of, probe, sha256_file, KIND};
use crate::error::ApiError;
use crate::host::Host;
use crate::member::{update_record, Member};

/// Attempts in a row that bring no new byte before an import is marked failed.
pub const MAX_FRUITLESS_ATTEMPTS: u32 = 5;
/// How often progress is written to the store while bytes arrive.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Why an import step stopped.
#[derive(Debug)]
pub enum Stop {
    /// The image was deleted or re-created: drop the work.
    Gone,
    /// The image is already ready or failed (another attempt settled it): leave its files.
    Settled,
    /// Retrying cannot help: the image becomes `failed` with this message.
    Fatal(String),
    /// A passing trouble (network, store): back off and resume.
    Retry {
        /// What happened.
        message: String,
        /// Whether new bytes arrived before it happened.
        progressed: bool,
    },
}

fn retry(message: impl Into<String>) -> Stop {
    Stop::Retry {
        message: message.into(),
        progressed: false,
    }
}

/// Names being finalized or imported in this process, so the upload handler and the loop
/// never work on the same files at once.
static BUSY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Holds an image's name in [`BUSY`] until dropped.
pub struct Busy(String);

impl Busy {
    /// Claims `name`, or `None` when someone in this process already works on it.
    pub fn claim(name: &str) -> Option<Self> {
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(name.to_string())
            .then(|| Self(name.to_string()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Where the complete, checksum-verified source bytes of image `name` wait for probing.
pub fn done_path(host: &Host, name: &str) -> PathBuf {
    host.pool.upload(name).with_extension("done")
}

/// What to do with the answer to a (ranged) GET, given the `have` bytes already on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The body continues the file at `have`; `total` when the server said.
    Append {
        /// Size of the whole file.
        total: Option<u64>,
    },
    /// The body is the whole file: start over.
    Restart {
        /// Size of the whole file.
        total: Option<u64>,
    },
    /// The server says there is nothing after `have`: the file is complete.
    Complete,
    /// The answer does not continue the file: discard what is on disk and try again.
    Mismatch(String),
    /// A passing trouble: try again.
    Retry(String),
    /// The server refuses: give up.
    Fatal(String),
}

/// First and last byte (inclusive) of a `Content-Range`, and the total when known.
pub type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// `bytes START-END/TOTAL` or `bytes */TOTAL` (`*` for an unknown total).
pub fn parse_content_range(h: &str) -> Option<ContentRange> {
    let rest = h.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        }
    };
    Some((range, total))
}

/// Decides how a GET's answer continues a download that has `have` bytes.
pub fn resume(
    have: u64,
    status: u16,
    content_range: Option<&str>,
    content_length: Option<u64>,
) -> Resume {
    match status {
        200 => Resume::Restart {
            total: content_length,
        },
        206 => match content_range.and_then(parse_content_range) {
            Some((Some((start, _)), total)) if start == have => Resume::Append { total },
            Some((Some((start, _)), _)) => Resume::Mismatch(format!(
                "the server resumed at byte {start}, not at byte {have}"
            )),
            _ => Resume::Mismatch(format!(
                "the server answered 206 with an unusable Content-Range {content_range:?}"
            )),
        },
        416 => match content_range.and_then(parse_content_range) {
            Some((None, Some(total))) if total == have && have > 0 => Resume::Complete,
            _ => Resume::Mismatch(format!(
                "the server cannot resume at byte {have} (416, Content-Range {content_range:?})"
            )),
        },
        408 | 429 => Resume::Retry(format!("the server answered {status}; trying again")),
        s if (400..500).contains(&s) => Resume::Fatal(format!(
            "the server answered {s} ({}); check the URL",
            http::StatusCode::from_u16(s)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("client error")
        )),
        s => Resume::Retry(format!("the server answered {s}")),
    }
}

/// The pause before attempt `n` (1, 2, …) of an import: 1 s doubling, at most 30 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.saturating_sub(1).min(5)).min(30))
}

/// The HTTP client of URL imports: certificates checked against the system's roots (the
/// Debian or Red Hat bundle), no proxies from the environment, a minute without a byte is
/// a dropped connection.
pub fn http_client() -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ] {
        let Ok(pem) = std::fs::read_to_string(bundle) else {
            continue;
        };
        if let Ok(certs) = crate::tls::certs(&pem) {
            let (added, _) = roots.add_parsable_certificates(certs);
            if added > 0 {
                break;
            }
        }
    }
    if roots.is_empty() {
        warn!("no system CA bundle found: HTTPS image imports will fail to verify servers");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS client: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .no_proxy()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("keel-image-import/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Applies `f` to the status of image `name` if it still has `uid` and is being imported.
async fn update(
    m: &Member,
    name: &str,
    uid: &str,
    f: impl Fn(&mut ImageStatus),
) -> Result<(), Stop> {
    let r = update_record(m, KIND, "image", name, image_of, |img: &mut Image| {
        if img.metadata.uid != uid {
            return Err(ApiError::NotFound(format!(
                "image {name} was deleted or replaced"
            )));
        }
        if !matches!(
            img.status.phase,
            ImagePhase::Pending | ImagePhase::Importing
        ) {
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!("image {name} is settled already"),
            });
        }
        let before = img.status.clone();
        f(&mut img.status);
        Ok(img.status != before)
    })
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(ApiError::NotFound(_)) => Err(Stop::Gone),
        Err(ApiError::Conflict {
            code: "already_exists",
            ..
        }) => Err(Stop::Settled),
        Err(e) => Err(retry(format!("writing the image status: {e}"))),
    }
}

/// One import of one image on this node.
struct Job {
    m: Arc<Member>,
    host: Arc<Host>,
    http: Result<reqwest::Client, String>,
    image: Image,
}

impl Job {
    fn name(&self) -> &str {
        &self.image.metadata.name
    }

    async fn set(&self, f: impl Fn(&mut ImageStatus)) -> Result<(), Stop> {
        update(&self.m, self.name(), &self.image.metadata.uid, f).await
    }

    /// Progress, written at most every [`PROGRESS_EVERY`].
    async fn progress(
        &self,
        last: &mut Instant,
        done: u64,
        total: Option<u64>,
    ) -> Result<(), Stop> {
        if last.elapsed() < PROGRESS_EVERY {
            return Ok(());
        }
        *last = Instant::now();
        let p = ImageProgress {
            done_bytes: done,
            total_bytes: total.unwrap_or(0),
        };
        match self.set(|s| s.progress = Some(p)).await {
            Err(Stop::Gone) => Err(Stop::Gone),
            Err(Stop::Settled) => Err(Stop::Settled),
            // Progress is best effort; the bytes keep coming while the store is busy.
            _ => Ok(()),
        }
    }

    /// Downloads `url` into the `.part` file, resuming from its length; the sha256 of the
    /// whole file.
    async fn download(&self, url: &str) -> Result<String, Stop> {
        let http = self.http.as_ref().map_err(|e| Stop::Fatal(e.clone()))?;
        let part = self.host.pool.upload(self.name());
        let mut have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut req = http.get(url);
        if have > 0 {
            req = req.header(http::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| retry(format!("fetching {url}: {}", error_chain(&e))))?;
        let header = |h: http::header::HeaderName| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_range = header(http::header::CONTENT_RANGE);
        let decision = resume(
            have,
            resp.status().as_u16(),
            content_range.as_deref(),
            resp.content_length(),
        );
        let total = match decision {
            Resume::Append { total } => total,
            Resume::Restart { total } => {
                if have > 0 {
                    info!(image = %self.name(), have, "the server does not resume; starting over");
                }
                have = 0;
                total
            }
            Resume::Complete => Some(have),
            Resume::Mismatch(why) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(retry(format!("{why}; starting over")));
            }
            Resume::Retry(why) => return Err(retry(why)),
            Resume::Fatal(why) => return Err(Stop::Fatal(format!("{url}: {why}"))),
        };
        if let Some(total) = total {
            let need = total.saturating_sub(have);
            let free = self.host.pool.available_bytes();
            if need > free {
                return Err(Stop::Fatal(format!(
                    "the image is {total} bytes but the pool of node {} has only {free} bytes free",
                    self.m.identity.name
                )));
            }
        }
        // The file restarts when `have` went to 0; the hash covers what is kept.
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(have == 0)
            .open(&part)
            .await
            .map_err(|e| retry(format!("opening {}: {e}", part.display())))?;
        let mut hasher = hash_prefix(&part, have).await?;
        file.set_len(have)
            .await
            .map_err(|e| retry(format!("truncating {}: {e}", part.display())))?;
        {
            use tokio::io::AsyncSeekExt as _;
            file.seek(std::io::SeekFrom::End(0))
                .await
                .map_err(|e| retry(format!("seeking {}: {e}", part.display())))?;
        }
        let start = have;
        let mut last = Instant::now();
        let shown = self
            .set(|s| {
                s.phase = ImagePhase::Importing;
                s.message = format!("downloading {url}");
                s.progress = Some(ImageProgress {
                    done_bytes: have,
                    total_bytes: total.unwrap_or(0),
                });
            })
            .await;
        if let Err(stop @ (Stop::Gone | Stop::Settled)) = shown {
            return Err(stop);
        }
        if decision_is_complete(have, total) {
            return finish_file(file, hasher).await;
        }
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let _ = file.sync_data().await;
                    return Err(Stop::Retry {
                        message: format!(
                            "the download of {url} broke off at byte {have}: {}",
                            error_chain(&e)
                        ),
                        progressed: have > start,
                    });
                }
            };
            file.write_all(&chunk)
                .await
                .map_err(|e| Stop::Fatal(format!("writing {}: {e}", part.display())))?;
            hasher.update(&chunk);
            have += chunk.len() as u64;
            if total.is_some_and(|t| have > t) {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(retry(format!(
                    "the server sent more than the {} bytes it announced; starting over",
                    total.unwrap_or(0)
                )));
            }
            self.progress(&mut last, have, total).await?;
        }
        if let Some(t) = total {
            if have < t {
                let _ = file.sync_data().await;
                return Err(Stop::Retry {
                    message: format!("the download of {url} ended at byte {have} of {t}"),
                    progressed: have > start,
                });
            }
        }
        finish_file(file, hasher).await
    }

    /// Copies `path` of this node's host into the `.part` file; its sha256.
    async fn copy(&self, path: &str) -> Result<String, Stop> {
        let me = &self.m.identity.name;
        let meta = tokio::fs::metadata(path).await.map_err(|e| {
            Stop::Fatal(match e.kind() {
                std::io::ErrorKind::NotFound => format!("{path} does not exist on node {me}"),
                _ => format!("reading {path} on node {me}: {e}"),
            })
        })?;
        if !meta.is_file() {
            return Err(Stop::Fatal(format!(
                "{path} on node {me} is not a regular file"
            )));
        }
        let total = meta.len();
        let free = self.host.pool.available_bytes();
        if total > free {
            return Err(Stop::Fatal(format!(
                "{path} is {total} bytes but the pool of node {me} has only {free} bytes free"
            )));
        }
        let mut src = tokio::fs::File::open(path)
            .await
            .map_err(|e| Stop::Fatal(format!("opening {path} on node {me}: {e}")))?;
        let part = self.host.pool.upload(self.name());
        let mut dst = tokio::fs::File::create(&part)
            .await
            .map_err(|e| retry(format!("creating {}: {e}", part.display())))?;
        self.set(|s| {
            s.phase = ImagePhase::Importing;
            s.message = format!("copying {path} on node {me}");
            s.progress = Some(ImageProgress {
                done_bytes: 0,
                total_bytes: total,
            });
        })
        .await?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        let mut last = Instant::now();
        loop {
            let n = src
                .read(&mut buf)
                .await
                .map_err(|e| Stop::Fatal(format!("reading {path} on node {me}: {e}")))?;
            if n == 0 {
                break;
            }
            let bytes = buf.get(..n).unwrap_or_default();
            dst.write_all(bytes)
                .await
                .map_err(|e| Stop::Fatal(format!("writing {}: {e}", part.display())))?;
            hasher.update(bytes);
            done += n as u64;
            self.progress(&mut last, done, Some(total)).await?;
        }
        finish_file(dst, hasher).await
    }

    /// Fetches (unless already complete), verifies and stores the image.
    async fn attempt(&self) -> Result<(), Stop> {
        let name = self.name().to_string();
        let part = self.host.pool.upload(&name);
        let done = done_path(&self.host, &name);
        let sum = if done.exists() {
            None
        } else {
            let sum = match &self.image.spec.source {
                ImageSource::Url { url, .. } => self.download(url).await?,
                ImageSource::File { path, .. } => self.copy(path).await?,
                // An upload's bytes come through the API; only its finalize is redone here.
                ImageSource::Upload => return Ok(()),
            };
            if let Some(want) = &self.image.spec.checksum {
                if want.sha256_hex() != sum {
                    let _ = std::fs::remove_file(&part);
                    return Err(Stop::Fatal(format!(
                        "the imported bytes have sha256 {sum}, not the {want} the spec expects; \
                         nothing was stored (delete the image and import it again)"
                    )));
                }
            }
            std::fs::rename(&part, &done)
                .map_err(|e| retry(format!("renaming {}: {e}", part.display())))?;
            Some(sum)
        };
        finalize(&self.m, &self.host, &self.image, sum).await
    }

    /// Attempts until the image is ready, failed or gone.
    async fn run(self) {
        let name = self.name().to_string();
        let Some(_busy) = Busy::claim(&name) else {
            return;
        };
        // The loop read a replica that may trail the leader: an attempt that just made the
        // image ready may not show there yet. Check again, up to date, before touching files.
        if let Err(e) = self.m.linearizable().await {
            debug!(image = %name, error = %e, "cannot confirm the image is still wanted; next round");
            return;
        }
        let current = self
            .m
            .get(KIND, &name)
            .ok()
            .flatten()
            .and_then(|r| image_of(&r).ok());
        let still = current.is_some_and(|i| {
            i.metadata.uid == self.image.metadata.uid
                && matches!(i.status.phase, ImagePhase::Pending | ImagePhase::Importing)
                && i.status.node.as_deref() == Some(self.m.identity.name.as_str())
        });
        if !still {
            return;
        }
        let mut fruitless = 0u32;
        loop {
            let stop = match self.attempt().await {
                Ok(()) => return,
                Err(s) => s,
            };
            match stop {
                Stop::Gone => {
                    info!(image = %name, "image deleted or replaced; import dropped");
                    cleanup(&self.host, &name, true);
                    return;
                }
                Stop::Settled => {
                    cleanup(&self.host, &name, false);
                    return;
                }
                Stop::Fatal(message) => {
                    fail(&self.m, &self.host, &self.image, message).await;
                    return;
                }
                Stop::Retry {
                    message,
                    progressed,
                } => {
                    fruitless = if progressed { 1 } else { fruitless + 1 };
                    if fruitless >= MAX_FRUITLESS_ATTEMPTS {
                        let message = format!("gave up after {fruitless} attempts: {message}");
                        fail(&self.m, &self.host, &self.image, message).await;
                        return;
                    }
                    let pause = backoff(fruitless);
                    warn!(image = %name, attempt = fruitless, error = %message, "import interrupted; resuming in {} s", pause.as_secs());
                    let shown = format!("{message}; resuming in {} s", pause.as_secs());
                    match self.set(|s| s.message = shown.clone()).await {
                        Err(Stop::Gone) => {
                            cleanup(&self.host, &name, true);
                            return;
                        }
                        Err(Stop::Settled) => {
                            cleanup(&self.host, &name, false);
                            return;
                        }
                        _ => {}
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

fn decision_is_complete(have: u64, total: Option<u64>) -> bool {
    total.is_some_and(|t| have >= t)
}

/// Flushes a finished `.part` file; the hex digest.
async fn finish_file(mut file: tokio::fs::File, hasher: Sha256) -> Result<String, Stop> {
    file.flush()
        .await
        .and(file.sync_all().await)
        .map_err(|e| retry(format!("syncing the download: {e}")))?;
    Ok(crate::join::hex(&hasher.finalize()))
}

/// A hasher fed with the first `len` bytes of `path` (what an earlier attempt kept).
async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, Stop> {
    if len == 0 {
        return Ok(Sha256::new());
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<Sha256> {
        use std::io::Read as _;
        let f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f.take(len), &mut h)?;
        Ok(h)
    })
    .await
    .map_err(|e| retry(e.to_string()))?
    .map_err(|e| retry(format!("re-reading the partial download: {e}")))
}

/// reqwest errors with their causes ("error sending request: … connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Removes the import's files of image `name` (and its stored file when `stored`).
fn cleanup(host: &Host, name: &str, stored: bool) {
    let part = host.pool.upload(name);
    for p in [
        part.clone(),
        part.with_extension("done"),
        part.with_extension("total"),
    ] {
        let _ = std::fs::remove_file(p);
    }
    if stored {
        let image = host.pool.image(name);
        let _ = std::fs::remove_file(probe::converting(&image));
        let _ = std::fs::remove_file(image);
    }
}

/// Marks the image failed with `message` and removes what the import left.
pub async fn fail(m: &Member, host: &Host, image: &Image, message: String) {
    let name = &image.metadata.name;
    warn!(image = %name, error = %message, "image import failed");
    cleanup(host, name, true);
    let r = update(m, name, &image.metadata.uid, |s| {
        s.phase = ImagePhase::Failed;
        s.message = message.clone();
        s.progress = None;
    })
    .await;
    if let Err(Stop::Retry { message, .. }) = r {
        // The loop tries again (the bytes are gone, so it starts over).
        warn!(image = %name, error = %message, "could not record the failure");
    }
}

/// Probes, checks and stores the complete source bytes (`uploads/<n>.done`) of `image`
/// and marks it ready. `sum` is their sha256 when the caller knows it.
pub async fn finalize(
    m: &Member,
    host: &Host,
    image: &Image,
    sum: Option<String>,
) -> Result<(), Stop> {
    let name = image.metadata.name.clone();
    let uid = image.metadata.uid.clone();
    let done = done_path(host, &name);
    let sum = match sum {
        Some(s) => s,
        None => sha256_file(&done).await.map_err(|e| retry(e.to_string()))?,
    };
    update(m, &name, &uid, |s| {
        s.phase = ImagePhase::Importing;
        s.message = "checking the image (qemu-img info)".into();
    })
    .await?;
    let dest = host.pool.image(&name);
    let stored = probe::store(image.spec.format, &done, &dest, |from| {
        info!(image = %name, from, "converting to qcow2");
    })
    .await
    .map_err(Stop::Fatal)?;
    let file_sha256 = if stored.converted {
        Some(sha256_file(&dest).await.map_err(|e| retry(e.to_string()))?)
    } else {
        None
    };
    let me = m.identity.name.clone();
    let r = update(m, &name, &uid, |s| {
        s.phase = ImagePhase::Ready;
        s.sha256 = Some(sum.clone());
        s.file_sha256 = file_sha256.clone();
        s.format = Some(stored.format);
        s.size_bytes = stored.size_bytes;
        s.virtual_size_bytes = stored.virtual_size_bytes;
        s.node = Some(me.clone());
        s.progress = None;
        s.message = String::new();
    })
    .await;
    match r {
        Ok(()) => {
            cleanup(host, &name, false);
            info!(image = %name, format = stored.format.as_str(), size = stored.size_bytes, "image ready");
            Ok(())
        }
        Err(Stop::Gone) => {
            cleanup(host, &name, true);
            Err(Stop::Gone)
        }
        Err(Stop::Settled) => {
            cleanup(host, &name, false);
            Err(Stop::Settled)
        }
        Err(e) => Err(e),
    }
}

/// Whether this node should work on `image` now.
fn wanted(me: &str, image: &Image, host: &Host) -> bool {
    if image.status.node.as_deref() != Some(me)
        || !matches!(
            image.status.phase,
            ImagePhase::Pending | ImagePhase::Importing
        )
    {
        return false;
    }
    match image.spec.source {
        ImageSource::Url { .. } | ImageSource::File { .. } => true,
        // An upload whose bytes were complete when keeld stopped.
        ImageSource::Upload => done_path(host, &image.metadata.name).exists(),
    }
}

/// Removes upload files of images that no longer exist (left by a delete handled on another
/// node, or by a crash), once they are a minute old.
fn collect_garbage(host: &Host, existing: &HashSet<String>) {
    let Some(dir) = host.pool.upload("x").parent().map(Path::to_path_buf) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if existing.contains(stem) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            debug!(file = %path.display(), "removing the upload of a deleted image");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The import loop of this node.
pub async fn node_loop(m: Arc<Member>, host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut wake = crate::wake::Wake::new(m.clone(), &[KIND]);
    let mut running: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    let http = http_client();
    if let Err(e) = &http {
        warn!(error = %e, "no HTTP client: URL image imports will fail");
    }
    loop {
        tokio::select! { _ = tick.tick() => {} _ = wake.changed() => {} _ = shutdown.changed() => {
            for (_, (_, h)) in running.drain() { h.abort(); }
            return;
        } }
        let span = tracing::debug_span!("reconcile", kind = "images", node = %m.identity.name);
        let _g = span.enter();
        running.retain(|_, (_, h)| !h.is_finished());
        let recs = match m.list(KIND) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "listing images failed; retrying next round");
                continue;
            }
        };
        let me = m.identity.name.clone();
        let mut existing = HashSet::new();
        let mut want: HashMap<String, String> = HashMap::new();
        for rec in &recs {
            let Ok(image) = image_of(rec) else { continue };
            existing.insert(image.metadata.name.clone());
            if !wanted(&me, &image, &host) {
                continue;
            }
            let name = image.metadata.name.clone();
            let uid = image.metadata.uid.clone();
            want.insert(name.clone(), uid.clone());
            if running.get(&name).is_some_and(|(u, _)| *u == uid) {
                continue;
            }
            if let Some((_, old)) = running.remove(&name) {
                old.abort();
            }
            let job = Job {
                m: m.clone(),
                host: host.clone(),
                http: http.clone(),
                image,
            };
            let task_span = tracing::info_span!("import", image = %name);
            info!(image = %name, "importing");
            running.insert(name, (uid, tokio::spawn(job.run().instrument(task_span))));
        }
        running.retain(|name, (uid, h)| {
            let keep = want.get(name) == Some(uid);
            if !keep {
                h.abort();
            }
            keep
        });
        collect_garbage(&host, &existing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((Some((100, 199)), Some(200)))
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some((Some((0, 9)), None))
        );
        assert_eq!(parse_content_range("bytes */200"), Some((None, Some(200))));
        for bad in ["", "bytes", "items 0-1/2", "bytes 0-x/2", "bytes 5/7"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn answers_decide_how_a_download_resumes() {
        assert_eq!(
            resume(0, 200, None, Some(10)),
            Resume::Restart { total: Some(10) }
        );
        // A server that ignores Range sends everything again.
        assert_eq!(
            resume(5, 200, None, Some(10)),
            Resume::Restart { total: Some(10) }
        );
        assert_eq!(
            resume(5, 206, Some("bytes 5-9/10"), Some(5)),
            Resume::Append { total: Some(10) }
        );
        assert!(matches!(
            resume(5, 206, Some("bytes 0-9/10"), None),
            Resume::Mismatch(m) if m.contains("byte 0, not at byte 5")
        ));
        assert!(matches!(resume(5, 206, None, None), Resume::Mismatch(_)));
        assert_eq!(resume(10, 416, Some("bytes */10"), None), Resume::Complete);
        assert!(matches!(
            resume(12, 416, Some("bytes */10"), None),
            Resume::Mismatch(_)
        ));
        assert!(matches!(
            resume(0, 404, None, None),
            Resume::Fatal(m) if m.contains("404 (Not Found)")
        ));
        assert!(matches!(resume(0, 503, None, None), Resume::Retry(_)));
        assert!(matches!(resume(0, 429, None, None), Resume::Retry(_)));
    }

    #[test]
    fn backoff_is_capped() {
        let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn busy_names_are_claimed_once() {
        let a = Busy::claim("unit-busy").unwrap();
        assert!(Busy::claim("unit-busy").is_none());
        drop(a);
        assert!(Busy::claim("unit-busy").is_some());
    }

    #[test]
    fn the_http_client_builds_with_system_roots() {
        http_client().unwrap();
    }
}
