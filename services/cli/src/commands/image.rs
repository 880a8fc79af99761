//! `keel image import|upload|list|show|delete`.
//!
//! `import --url URL` and `import --host-path PATH [--node NODE]` only create the image: a
//! node downloads or copies the bytes in the background, and `--wait` follows its progress
//! (`status.progress`) until the image is ready or failed. `import PATH` uploads:
//!
//! ```text
//!  import PATH --name N:  sha256(PATH) ─▶ POST /images {source: upload, checksum}
//!        ─▶ GET /images/N/content {received} ─▶ PUT /images/N/content  bytes S-E/T  (8 MiB)
//!              ▲  no answer / 5xx: back off, GET content again, resume at `received`
//!              └─ 409 range_mismatch: resume at the `received` the server names
//!        ─▶ last byte: the server verifies the checksum ─▶ phase ready (--wait checks)
//! ```
//!
//! The resume logic is pure ([`plan`], [`next_chunk`], [`received_from_mismatch`]) and the
//! loop ([`upload_loop`]) runs against the [`Uploader`] trait, so both are tested without a
//! server.

use std::io::{IsTerminal as _, Read as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_model::{
    Bytes, Checksum, Image, ImageCreate, ImageFormat, ImagePhase, ImageSource, ImageSpec, Name,
    NewMetadata, OsType,
};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{or_dash, wire_name, Items};
use crate::cli::{ImageCommand, ImageImportArgs, OutputFormat, WaitArgs};
use crate::client::{ApiClient, ClientError};
use crate::output::{self, Table};

/// Bytes per PUT.
pub const CHUNK_SIZE: u64 = 8 << 20;
/// Failed attempts in a row (without progress) before an upload gives up.
pub const MAX_RETRIES: u32 = 5;
/// How often a wait polls.
const POLL: Duration = Duration::from_millis(500);

/// Runs a `keel image` command.
pub async fn run(client: &ApiClient, command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import(args) => import(client, &args).await,
        ImageCommand::Upload {
            name,
            path,
            wait,
            out,
        } => upload(client, &name, &path, wait, out.output).await,
        ImageCommand::List(o) => list(client, o.output).await,
        ImageCommand::Show { name, out } => show(client, &name, out.output).await,
        ImageCommand::Delete { name } => delete(client, &name).await,
    }
}

/// Upload progress as the server reports it (`GET`/`PUT /api/v1/images/{name}/content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    /// Bytes the server has; the next chunk starts here.
    pub received: u64,
    /// Bytes expected in all (0 before the first chunk).
    pub total: u64,
    /// All bytes arrived and were verified.
    pub complete: bool,
}

/// One PUT's worth of a file: bytes `start..=end` of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive, as in `Content-Range`).
    pub end: u64,
    /// Size of the whole file.
    pub total: u64,
}

impl Chunk {
    /// Bytes in the chunk.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a chunk holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the chunk ends the file (the server verifies after it).
    pub fn is_last(&self) -> bool {
        self.end + 1 == self.total
    }

    /// The `Content-Range` header: `bytes START-END/TOTAL`.
    pub fn content_range(&self) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, self.total)
    }
}

/// The chunk of a `total`-byte file that starts at `received`, or `None` when the server
/// has everything.
pub fn next_chunk(received: u64, total: u64, chunk_size: u64) -> Option<Chunk> {
    if received >= total || chunk_size == 0 {
        return None;
    }
    let end = received.saturating_add(chunk_size).min(total) - 1;
    Some(Chunk {
        start: received,
        end,
        total,
    })
}

/// What an upload does next, given what the server reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send this chunk.
    Send(Chunk),
    /// The server has every byte and is verifying them: ask again shortly.
    Verifying,
    /// The image is complete and verified.
    Done,
}

/// The next step of uploading a `file_len`-byte file, or why the server's state and the
/// file do not fit together.
pub fn plan(progress: &UploadProgress, file_len: u64, chunk_size: u64) -> Result<Step, String> {
    if progress.complete {
        return Ok(Step::Done);
    }
    if progress.total != 0 && progress.total != file_len {
        return Err(format!(
            "the server expects {} bytes for this image but the file has {file_len}; upload \
             the file the upload was started with, or delete and re-create the image",
            progress.total
        ));
    }
    if progress.received > file_len {
        return Err(format!(
            "the server already has {} bytes but the file has only {file_len}; delete and \
             re-create the image",
            progress.received
        ));
    }
    Ok(match next_chunk(progress.received, file_len, chunk_size) {
        Some(chunk) => Step::Send(chunk),
        None => Step::Verifying,
    })
}

/// The `received` a `range_mismatch` message names ("… send the chunk that starts at byte
/// 1234"): the number after the last "byte ", else the last number in the message.
pub fn received_from_mismatch(message: &str) -> Option<u64> {
    let leading = |s: &str| -> Option<u64> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if let Some(i) = message.rfind("byte ") {
        if let Some(n) = leading(&message[i + "byte ".len()..]) {
            return Some(n);
        }
    }
    message
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse().ok())
}

/// The pause before retry `attempt` (1, 2, …): `base` doubling each time, at most 10 × base.
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(4);
    base.saturating_mul(factor).min(base.saturating_mul(10))
}

/// How long one PUT may take: a minute, and for the last chunk also the time the server
/// needs to hash the whole file (at 32 MiB/s, which every disk here beats).
pub fn chunk_timeout(chunk: &Chunk) -> Duration {
    let verify = if chunk.is_last() {
        chunk.total / (32 << 20)
    } else {
        0
    };
    Duration::from_secs(60 + verify)
}

/// Why a request of an upload failed, as the loop treats it.
#[derive(Debug)]
pub enum Failure {
    /// No answer or a passing server trouble: back off, ask for the progress, resume.
    Retry {
        /// What happened.
        error: anyhow::Error,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The chunk did not start where the server is; resume at `received` (or ask when the
    /// message did not say).
    Mismatch {
        /// Where the server is.
        received: Option<u64>,
    },
    /// Anything else: give up.
    Fatal(anyhow::Error),
}

/// How the upload loop treats a client error.
pub fn classify(e: ClientError) -> Failure {
    match &e {
        ClientError::Transport { .. } => {
            return Failure::Retry {
                error: e.into(),
                retry_after: None,
            }
        }
        ClientError::Api {
            status,
            code,
            message,
            ..
        } if *status == StatusCode::CONFLICT && code == "range_mismatch" => {
            return Failure::Mismatch {
                received: received_from_mismatch(message),
            }
        }
        // The image became complete while a chunk was on its way (its answer was lost):
        // ask the server where it stands.
        ClientError::Api { status, code, .. }
            if *status == StatusCode::CONFLICT && code == "already_exists" =>
        {
            return Failure::Mismatch { received: None }
        }
        _ => {}
    }
    let retry_after = e.retry_after();
    match e.status() {
        Some(s) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Failure::Retry {
            error: e.into(),
            retry_after,
        },
        _ => Failure::Fatal(e.into()),
    }
}

/// The two requests of an upload, so the loop can be tested without a server.
#[allow(async_fn_in_trait)]
pub trait Uploader {
    /// Where the server stands.
    async fn progress(&self) -> Result<UploadProgress, Failure>;
    /// Sends one chunk.
    async fn put(&self, chunk: Chunk, bytes: Vec<u8>) -> Result<UploadProgress, Failure>;
}

/// Knobs of [`upload_loop`] (tests make them small).
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Bytes per PUT.
    pub chunk_size: u64,
    /// Failed attempts in a row before giving up.
    pub max_retries: u32,
    /// First back-off pause.
    pub base_delay: Duration,
    /// Pause between progress polls while the server verifies.
    pub poll: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            chunk_size: CHUNK_SIZE,
            max_retries: MAX_RETRIES,
            base_delay: Duration::from_secs(1),
            poll: POLL,
        }
    }
}

/// Uploads `file` (`len` bytes) through `api`, resuming from the server's `received` after
/// any failure, until the server reports the image complete. `report(sent, total)` is
/// called as the upload advances.
pub async fn upload_loop(
    api: &impl Uploader,
    path: &Path,
    len: u64,
    opts: &UploadOptions,
    report: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<UploadProgress> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut failures = 0u32;
    let mut known: Option<UploadProgress> = None;
    let mut verifying_since: Option<Instant> = None;
    loop {
        let progress = match known.take() {
            Some(p) => p,
            None => match api.progress().await {
                Ok(p) => p,
                Err(f) => {
                    retry_or_fail(f, &mut failures, opts).await?;
                    continue;
                }
            },
        };
        report(progress.received.min(len), len);
        match plan(&progress, len, opts.chunk_size).map_err(anyhow::Error::msg)? {
            Step::Done => return Ok(progress),
            Step::Verifying => {
                let since = *verifying_since.get_or_insert_with(Instant::now);
                let limit = chunk_timeout(&Chunk {
                    start: 0,
                    end: len.saturating_sub(1),
                    total: len,
                });
                if since.elapsed() > limit {
                    bail!(
                        "the server has all {len} bytes but did not finish verifying them \
                         within {} s; see `keel image show`",
                        limit.as_secs()
                    );
                }
                tokio::time::sleep(opts.poll).await;
            }
            Step::Send(chunk) => {
                verifying_since = None;
                let bytes = read_chunk(&mut file, &chunk)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                match api.put(chunk, bytes).await {
                    Ok(p) => {
                        failures = 0;
                        known = Some(p);
                    }
                    Err(Failure::Mismatch { received }) => {
                        failures += 1;
                        if failures > opts.max_retries {
                            bail!("the server kept refusing the chunk at byte {} ({failures} times); try again later", chunk.start);
                        }
                        tracing::info!(
                            at = chunk.start,
                            server = ?received,
                            "the server is elsewhere in the upload; resuming where it is"
                        );
                        known = received.map(|received| UploadProgress {
                            received,
                            total: len,
                            complete: false,
                        });
                    }
                    Err(f) => retry_or_fail(f, &mut failures, opts).await?,
                }
            }
        }
    }
}

/// Counts a failure and backs off if it may be retried; the error if not.
async fn retry_or_fail(f: Failure, failures: &mut u32, opts: &UploadOptions) -> anyhow::Result<()> {
    match f {
        Failure::Retry { error, retry_after } => {
            *failures += 1;
            if *failures > opts.max_retries {
                return Err(error.context(format!(
                    "the upload failed {} times in a row; run the same command again to resume",
                    *failures
                )));
            }
            let pause = backoff(*failures, opts.base_delay).max(retry_after.unwrap_or_default());
            tracing::warn!(
                error = format!("{error:#}"),
                attempt = *failures,
                "upload interrupted; resuming in {} ms",
                pause.as_millis()
            );
            tokio::time::sleep(pause).await;
            Ok(())
        }
        Failure::Mismatch { .. } => {
            *failures += 1;
            if *failures > opts.max_retries {
                bail!("the server kept refusing the upload's chunks; try again later");
            }
            Ok(())
        }
        Failure::Fatal(e) => Err(e),
    }
}

async fn read_chunk(file: &mut tokio::fs::File, chunk: &Chunk) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(chunk.len())
        .map_err(|_| std::io::Error::other("the chunk does not fit in memory"))?;
    let mut buf = vec![0u8; len];
    file.seek(std::io::SeekFrom::Start(chunk.start)).await?;
    file.read_exact(&mut buf).await?;
    Ok(buf)
}

/// [`Uploader`] over the API.
struct ApiUploader<'a> {
    client: &'a ApiClient,
    path: String,
}

impl Uploader for ApiUploader<'_> {
    async fn progress(&self) -> Result<UploadProgress, Failure> {
        self.client.get(&self.path).await.map_err(classify)
    }

    async fn put(&self, chunk: Chunk, bytes: Vec<u8>) -> Result<UploadProgress, Failure> {
        self.client
            .put_octets(
                &self.path,
                bytes,
                Some(&chunk.content_range()),
                chunk_timeout(&chunk),
            )
            .await
            .map_err(classify)
    }
}

/// A progress line for stderr: on a terminal rewritten in place, else one line per 10 %.
struct ProgressLine {
    label: String,
    tty: bool,
    shown: bool,
    last: Option<Instant>,
    last_tenth: Option<u64>,
}

impl ProgressLine {
    fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            tty: std::io::stderr().is_terminal(),
            shown: false,
            last: None,
            last_tenth: None,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        let line = progress_text(&self.label, done, total);
        if self.tty {
            let due = self
                .last
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
            if due || done == total {
                eprint!("\r{line}\x1b[K");
                self.last = Some(Instant::now());
                self.shown = true;
            }
        } else {
            let tenth = (done.saturating_mul(10)).checked_div(total).unwrap_or(10);
            if self.last_tenth != Some(tenth) {
                eprintln!("{line}");
                self.last_tenth = Some(tenth);
            }
        }
    }

    fn finish(&mut self) {
        if self.tty && self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

/// `uploading debian: 8.0 MiB of 20.0 MiB (40%)`.
pub fn progress_text(label: &str, done: u64, total: u64) -> String {
    let pct = (u128::from(done) * 100)
        .checked_div(u128::from(total))
        .unwrap_or(100);
    format!(
        "{label}: {} of {} ({pct}%)",
        output::bytes(done),
        output::bytes(total)
    )
}

/// The size of a regular, non-empty file.
fn file_len(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() == 0 {
        bail!("{} is empty; there is nothing to import", path.display());
    }
    Ok(meta.len())
}

/// SHA-256 of a file as `sha256:HEX`, with progress on stderr.
async fn checksum_file(path: &Path, len: u64) -> anyhow::Result<Checksum> {
    let owned = path.to_path_buf();
    let hex = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        let mut line = ProgressLine::new(format!("hashing {}", owned.display()));
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            done += n as u64;
            line.update(done, len);
        }
        line.finish();
        Ok(hex(&hasher.finalize()))
    })
    .await
    .context("the hashing thread failed")?
    .with_context(|| format!("reading {}", path.display()))?;
    format!("sha256:{hex}")
        .parse()
        .map_err(|e: keel_model::ValidationError| anyhow::anyhow!(e.message))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The create body of `keel image import`.
pub fn import_body(
    name: &Name,
    format: Option<ImageFormat>,
    os_type: Option<OsType>,
    checksum: Checksum,
) -> ImageCreate {
    let mut spec = ImageSpec::from_source(ImageSource::Upload);
    spec.format = format;
    spec.os_type = os_type.unwrap_or_default();
    spec.checksum = Some(checksum);
    ImageCreate {
        metadata: NewMetadata::named(name.clone()),
        spec,
    }
}

/// What `import` does when the image already exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// An unfinished upload of the same bytes: continue it.
    Resume,
    /// The same bytes are already imported: nothing to do.
    Done,
    /// Something else has the name.
    Refuse(String),
}

/// Decides what to do with an existing image of the name being imported.
pub fn existing(image: &Image, checksum: &Checksum) -> Existing {
    let name = &image.metadata.name;
    let same =
        image.spec.source == ImageSource::Upload && image.spec.checksum.as_ref() == Some(checksum);
    match (same, image.status.phase) {
        (true, ImagePhase::Pending | ImagePhase::Importing) => Existing::Resume,
        (true, ImagePhase::Ready) => Existing::Done,
        (true, ImagePhase::Failed) => Existing::Refuse(format!(
            "image {name} exists and failed ({}); delete it (keel image delete {name}) and import again",
            image.status.message
        )),
        (false, _) => Existing::Refuse(format!(
            "image {name} already exists with other contents; delete it (keel image delete {name}) or pick another --name"
        )),
    }
}

/// `--sha256 HEX` (or `sha256:HEX`) as a checksum.
pub fn parse_sha256(s: &str) -> anyhow::Result<Checksum> {
    let hex = s.trim();
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    format!("sha256:{hex}")
        .parse()
        .map_err(|_: keel_model::ValidationError| {
            anyhow::anyhow!("--sha256 {s:?} is not a SHA-256 digest: give its 64 hex digits")
        })
}

/// The spec `import` sends: the source, the checksum and the guest hints given.
pub fn import_spec(
    args: &ImageImportArgs,
    source: ImageSource,
    checksum: Option<Checksum>,
) -> ImageSpec {
    let mut spec = ImageSpec::from_source(source);
    spec.format = args.format;
    spec.os_type = args.os_type.unwrap_or_default();
    spec.firmware = args.firmware.unwrap_or_default();
    spec.disk_bus = args.disk_bus.unwrap_or_default();
    spec.checksum = checksum;
    spec
}

/// `keel image import PATH|--url URL|--host-path PATH --name NAME …`.
pub async fn import(client: &ApiClient, args: &ImageImportArgs) -> anyhow::Result<()> {
    let expected = args.sha256.as_deref().map(parse_sha256).transpose()?;
    let node = args.node.clone();
    let source = match (&args.path, &args.url, &args.host_path) {
        (Some(path), None, None) => {
            if node.is_some() {
                bail!("--node applies to --url and --host-path; a local PATH is uploaded through the API");
            }
            return import_upload(client, args, path, expected).await;
        }
        (None, Some(url), None) => ImageSource::Url {
            url: url.clone(),
            node,
        },
        (None, None, Some(path)) => ImageSource::File {
            path: path.clone(),
            node,
        },
        _ => bail!("give exactly one of PATH, --url URL or --host-path PATH"),
    };
    let name = &args.name;
    let body = ImageCreate {
        metadata: NewMetadata::named(name.clone()),
        spec: import_spec(args, source, expected),
    };
    body.validate()
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    let created: Result<Image, ClientError> = client
        .request(Method::POST, "/api/v1/images", Some(&body))
        .await;
    match created {
        Ok(image) => eprintln!(
            "created image {name}; {}",
            or_dash(
                image
                    .status
                    .node
                    .as_deref()
                    .map(|n| format!("node {n} imports it"))
            )
        ),
        Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
            let image: Image = client.get(&format!("/api/v1/images/{name}")).await?;
            if image.spec.source != body.spec.source || image.spec.checksum != body.spec.checksum {
                bail!("image {name} already exists with another source; delete it (keel image delete {name}) or pick another --name");
            }
            if image.status.phase == ImagePhase::Failed {
                bail!(
                    "image {name} exists and failed ({}); delete it (keel image delete {name}) and import again",
                    image.status.message
                );
            }
            eprintln!("image {name} already exists with the same source");
        }
        Err(e) => return Err(e.into()),
    }
    finish(client, name, args.wait, args.out.output).await
}

/// `keel image import PATH`: create + chunked upload.
async fn import_upload(
    client: &ApiClient,
    args: &ImageImportArgs,
    path: &Path,
    expected: Option<Checksum>,
) -> anyhow::Result<()> {
    let name = &args.name;
    let len = file_len(path)?;
    let checksum = checksum_file(path, len).await?;
    if let Some(want) = &expected {
        if *want != checksum {
            bail!(
                "{} has {checksum}, not the {want} given with --sha256",
                path.display()
            );
        }
    }
    let body = ImageCreate {
        metadata: NewMetadata::named(name.clone()),
        spec: import_spec(args, ImageSource::Upload, Some(checksum.clone())),
    };
    let created: Result<Image, ClientError> = client
        .request(Method::POST, "/api/v1/images", Some(&body))
        .await;
    let upload_needed = match created {
        Ok(_) => {
            eprintln!("created image {name} ({checksum})");
            true
        }
        Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
            let image: Image = client.get(&format!("/api/v1/images/{name}")).await?;
            match existing(&image, &checksum) {
                Existing::Resume => {
                    eprintln!("image {name} exists with the same checksum; resuming its upload");
                    true
                }
                Existing::Done => {
                    eprintln!("image {name} is already imported with the same checksum");
                    false
                }
                Existing::Refuse(why) => bail!(why),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if upload_needed {
        upload_file(client, name, path, len).await?;
    }
    finish(client, name, args.wait, args.out.output).await
}

/// Creates image `name` from a local file, uploads it and waits until it is ready, printing
/// nothing (for benchmarks and tools that report on their own).
pub async fn import_quietly(
    client: &ApiClient,
    name: &Name,
    path: &Path,
    timeout: Duration,
) -> anyhow::Result<Image> {
    let len = file_len(path)?;
    let checksum = checksum_file(path, len).await?;
    let body = import_body(name, None, None, checksum);
    let _: Image = client
        .request(Method::POST, "/api/v1/images", Some(&body))
        .await?;
    upload_file(client, name, path, len).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let image: Image = client.get(&format!("/api/v1/images/{name}")).await?;
        match image.status.phase {
            ImagePhase::Ready => return Ok(image),
            ImagePhase::Failed => bail!("image {name} failed: {}", image.status.message),
            ImagePhase::Pending | ImagePhase::Importing if Instant::now() >= deadline => {
                bail!("image {name} is not ready after {} s", timeout.as_secs())
            }
            ImagePhase::Pending | ImagePhase::Importing => tokio::time::sleep(POLL).await,
        }
    }
}

/// `keel image upload NAME PATH`.
pub async fn upload(
    client: &ApiClient,
    name: &Name,
    path: &Path,
    wait: WaitArgs,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let len = file_len(path)?;
    let image: Image = client.get(&format!("/api/v1/images/{name}")).await?;
    if image.spec.source != ImageSource::Upload {
        bail!(
            "image {name} is not an upload (its source is {}); only images created with source upload take bytes",
            source_cell(&image.spec.source)
        );
    }
    match image.status.phase {
        ImagePhase::Ready => eprintln!("image {name} is already complete"),
        ImagePhase::Failed => bail!(
            "image {name} failed ({}); delete and re-create it",
            image.status.message
        ),
        ImagePhase::Pending | ImagePhase::Importing => {
            upload_file(client, name, path, len).await?;
        }
    }
    finish(client, name, wait, format).await
}

async fn upload_file(client: &ApiClient, name: &Name, path: &Path, len: u64) -> anyhow::Result<()> {
    let api = ApiUploader {
        client,
        path: format!("/api/v1/images/{name}/content"),
    };
    let mut line = ProgressLine::new(format!("uploading {name}"));
    let result = upload_loop(
        &api,
        path,
        len,
        &UploadOptions::default(),
        &mut |done, total| line.update(done, total),
    )
    .await;
    line.finish();
    result.with_context(|| format!("uploading {} to image {name}", path.display()))?;
    eprintln!("uploaded {} to image {name}", output::bytes(len));
    Ok(())
}

/// Waits for the image with `--wait`, then prints it.
async fn finish(
    client: &ApiClient,
    name: &Name,
    wait: WaitArgs,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/images/{name}");
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let mut line: Option<ProgressLine> = None;
    loop {
        let image: Image = client.get(&path).await?;
        let phase = image.status.phase;
        if wait.wait {
            if let Some(p) = image.status.progress {
                line.get_or_insert_with(|| ProgressLine::new(format!("importing {name}")))
                    .update(p.done_bytes, p.total_bytes.max(p.done_bytes));
            }
        }
        let done = match phase {
            ImagePhase::Ready => true,
            ImagePhase::Failed => {
                if let Some(l) = line.as_mut() {
                    l.finish();
                }
                bail!("image {name} failed: {}", image.status.message)
            }
            ImagePhase::Pending | ImagePhase::Importing => !wait.wait,
        };
        if done {
            if let Some(l) = line.as_mut() {
                l.finish();
            }
            return output::print(format, &image, |i| render_list(std::slice::from_ref(i)));
        }
        if Instant::now() >= deadline {
            bail!(
                "image {name} is still {} after {} s{}",
                wire_name(&phase),
                wait.timeout,
                message_suffix(&image.status.message)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// `keel image list`.
pub async fn list(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let images: Items<Image> = client.get("/api/v1/images").await?;
    output::print(format, &images, |i| render_list(&i.items))
}

/// `keel image show NAME`.
pub async fn show(client: &ApiClient, name: &Name, format: OutputFormat) -> anyhow::Result<()> {
    let image: Image = client.get(&format!("/api/v1/images/{name}")).await?;
    output::print(format, &image, render_show)
}

/// `keel image delete NAME`.
pub async fn delete(client: &ApiClient, name: &Name) -> anyhow::Result<()> {
    client
        .request_empty::<()>(Method::DELETE, &format!("/api/v1/images/{name}"), None)
        .await?;
    eprintln!("deleted image {name}");
    Ok(())
}

fn phase_cell(image: &Image) -> String {
    wire_name(&image.status.phase)
}

fn format_cell(image: &Image) -> String {
    or_dash(
        image
            .status
            .format
            .or(image.spec.format)
            .map(ImageFormat::as_str),
    )
}

fn size_cell(bytes: u64) -> String {
    if bytes == 0 {
        "-".into()
    } else {
        Bytes::new(bytes).to_string()
    }
}

/// The image table: NAME PHASE FORMAT SIZE NODE.
pub fn render_list(images: &[Image]) -> String {
    let mut t = Table::new(["NAME", "PHASE", "FORMAT", "SIZE", "NODE"]);
    for i in images {
        t.row([
            i.metadata.name.clone(),
            phase_cell(i),
            format_cell(i),
            size_cell(i.status.size_bytes),
            or_dash(i.status.node.as_deref()),
        ]);
    }
    t.render()
}

fn source_cell(source: &ImageSource) -> String {
    match source {
        ImageSource::Upload => "upload".into(),
        ImageSource::File { path, node } => match node {
            Some(n) => format!("file {path} on {n}"),
            None => format!("file {path}"),
        },
        ImageSource::Url { url, .. } => format!("url {url}"),
    }
}

/// One image in detail.
pub fn render_show(i: &Image) -> String {
    let s = &i.status;
    let mut pairs = vec![("name", i.metadata.name.clone()), ("phase", phase_cell(i))];
    if !s.message.is_empty() {
        pairs.push(("message", s.message.clone()));
    }
    if let Some(p) = s.progress {
        pairs.push((
            "progress",
            progress_text("", p.done_bytes, p.total_bytes.max(p.done_bytes))
                .trim_start_matches(": ")
                .to_string(),
        ));
    }
    pairs.extend([
        ("source", source_cell(&i.spec.source)),
        ("format", format_cell(i)),
        ("size", size_cell(s.size_bytes)),
        ("virtual size", size_cell(s.virtual_size_bytes)),
        ("node", or_dash(s.node.as_deref())),
        (
            "copies",
            if s.copies.is_empty() {
                "-".into()
            } else {
                s.copies.join(",")
            },
        ),
        ("os type", wire_name(&i.spec.os_type)),
        ("arch", wire_name(&i.spec.arch)),
        ("firmware", wire_name(&i.spec.firmware)),
        ("disk bus", wire_name(&i.spec.disk_bus)),
        ("checksum", or_dash(i.spec.checksum.as_ref())),
        ("sha256", or_dash(s.sha256.as_deref())),
        ("created", i.metadata.created.clone()),
    ]);
    output::fields(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use keel_model::{ImageStatus, Metadata};

    const SUM: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn chunks_cover_the_file_with_inclusive_ends() {
        let c = next_chunk(0, 20, 8).unwrap();
        assert_eq!((c.start, c.end, c.len()), (0, 7, 8));
        assert_eq!(c.content_range(), "bytes 0-7/20");
        assert!(!c.is_last());
        let c = next_chunk(16, 20, 8).unwrap();
        assert_eq!(c.content_range(), "bytes 16-19/20");
        assert_eq!(c.len(), 4);
        assert!(c.is_last());
        let c = next_chunk(19, 20, 8).unwrap();
        assert_eq!((c.content_range(), c.len()), ("bytes 19-19/20".into(), 1));
        assert_eq!(next_chunk(20, 20, 8), None);
        assert_eq!(next_chunk(0, 0, 8), None);
        assert_eq!(next_chunk(0, 5, 0), None);
        // Exactly one chunk.
        assert_eq!(next_chunk(0, 8, 8).unwrap().content_range(), "bytes 0-7/8");
        // Walking the chunks visits every byte once.
        let (mut at, mut n) = (0, 0);
        while let Some(c) = next_chunk(at, CHUNK_SIZE * 3 + 5, CHUNK_SIZE) {
            assert_eq!(c.start, at);
            at = c.end + 1;
            n += 1;
        }
        assert_eq!((at, n), (CHUNK_SIZE * 3 + 5, 4));
        // No overflow near u64::MAX.
        let c = next_chunk(u64::MAX - 3, u64::MAX, 8).unwrap();
        assert_eq!(c.end, u64::MAX - 1);
    }

    #[test]
    fn plan_resumes_from_received() {
        let p = |received, total, complete| UploadProgress {
            received,
            total,
            complete,
        };
        // A fresh image: the server knows no total yet.
        assert_eq!(
            plan(&p(0, 0, false), 20, 8),
            Ok(Step::Send(next_chunk(0, 20, 8).unwrap()))
        );
        // A dropped connection after 9 bytes: resume at 9, not at a chunk boundary.
        assert_eq!(
            plan(&p(9, 20, false), 20, 8),
            Ok(Step::Send(Chunk {
                start: 9,
                end: 16,
                total: 20
            }))
        );
        assert_eq!(plan(&p(20, 20, false), 20, 8), Ok(Step::Verifying));
        assert_eq!(plan(&p(20, 20, true), 20, 8), Ok(Step::Done));
        assert_eq!(plan(&p(0, 0, true), 20, 8), Ok(Step::Done));
        let err = plan(&p(4, 30, false), 20, 8).unwrap_err();
        assert!(err.contains("expects 30 bytes"), "{err}");
        let err = plan(&p(25, 0, false), 20, 8).unwrap_err();
        assert!(err.contains("already has 25 bytes"), "{err}");
    }

    #[test]
    fn mismatch_messages_name_the_resume_point() {
        assert_eq!(
            received_from_mismatch(
                "this node has 16777216 bytes of image debian12; send the chunk that starts at byte 16777216"
            ),
            Some(16_777_216)
        );
        assert_eq!(received_from_mismatch("the server has 42."), Some(42));
        assert_eq!(received_from_mismatch("image x2 is at byte 7."), Some(7));
        assert_eq!(received_from_mismatch("no numbers"), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=6).map(|a| backoff(a, s).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(3, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_last_chunk_allows_time_to_verify() {
        let gib = 1u64 << 30;
        let middle = next_chunk(0, 4 * gib, CHUNK_SIZE).unwrap();
        assert_eq!(chunk_timeout(&middle), Duration::from_secs(60));
        let last = next_chunk(4 * gib - 10, 4 * gib, CHUNK_SIZE).unwrap();
        assert_eq!(chunk_timeout(&last), Duration::from_secs(60 + 128));
    }

    fn api_error(status: StatusCode, code: &str, message: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            classify(api_error(
                StatusCode::CONFLICT,
                "range_mismatch",
                "send the chunk that starts at byte 8"
            )),
            Failure::Mismatch { received: Some(8) }
        ));
        assert!(matches!(
            classify(api_error(StatusCode::CONFLICT, "already_exists", "done")),
            Failure::Mismatch { received: None }
        ));
        assert!(matches!(
            classify(api_error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", "x")),
            Failure::Retry { .. }
        ));
        let Failure::Fatal(e) = classify(api_error(
            StatusCode::BAD_REQUEST,
            "checksum_mismatch",
            "the uploaded bytes have sha256 a, not b",
        )) else {
            panic!("a checksum mismatch is final")
        };
        assert!(e.to_string().contains("checksum_mismatch"), "{e}");
        assert!(matches!(
            classify(api_error(
                StatusCode::CONFLICT,
                "version_conflict",
                "other node"
            )),
            Failure::Fatal(_)
        ));
    }

    /// A server that keeps the bytes and fails on request.
    #[derive(Default)]
    struct FakeServer {
        bytes: Mutex<Vec<u8>>,
        total: Mutex<u64>,
        calls: Mutex<u32>,
        /// PUT numbers (1-based) that fail before storing anything.
        drop_before: Vec<u32>,
        /// PUT numbers that store the chunk but lose the answer.
        drop_after: Vec<u32>,
        /// Progress answers to fail (1-based), with a 503.
        progress_fails: Vec<u32>,
        progress_calls: Mutex<u32>,
        /// Report `received` 0 on the first progress call whatever the server holds.
        stale_first_progress: bool,
        /// Checksum to compare with at the end; fail when different.
        want: Option<Vec<u8>>,
        puts: Mutex<Vec<String>>,
    }

    fn transport() -> Failure {
        Failure::Retry {
            error: anyhow::anyhow!("connection reset"),
            retry_after: None,
        }
    }

    impl FakeServer {
        fn state(&self) -> UploadProgress {
            let received = self.bytes.lock().unwrap().len() as u64;
            let total = *self.total.lock().unwrap();
            UploadProgress {
                received,
                total,
                complete: total > 0 && received == total,
            }
        }
    }

    impl Uploader for FakeServer {
        async fn progress(&self) -> Result<UploadProgress, Failure> {
            let n = {
                let mut c = self.progress_calls.lock().unwrap();
                *c += 1;
                *c
            };
            if self.progress_fails.contains(&n) {
                return Err(classify(api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_quorum",
                    "no leader",
                )));
            }
            if n == 1 && self.stale_first_progress {
                return Ok(UploadProgress {
                    received: 0,
                    total: 0,
                    complete: false,
                });
            }
            Ok(self.state())
        }

        async fn put(&self, chunk: Chunk, bytes: Vec<u8>) -> Result<UploadProgress, Failure> {
            let n = {
                let mut c = self.calls.lock().unwrap();
                *c += 1;
                *c
            };
            self.puts.lock().unwrap().push(chunk.content_range());
            assert_eq!(bytes.len() as u64, chunk.len());
            if self.drop_before.contains(&n) {
                return Err(transport());
            }
            {
                let mut have = self.bytes.lock().unwrap();
                if chunk.start != have.len() as u64 {
                    return Err(classify(api_error(
                        StatusCode::CONFLICT,
                        "range_mismatch",
                        &format!(
                            "this node has {0} bytes of image x; send the chunk that starts at byte {0}",
                            have.len()
                        ),
                    )));
                }
                have.extend_from_slice(&bytes);
                *self.total.lock().unwrap() = chunk.total;
                if let Some(want) = &self.want {
                    if have.len() as u64 == chunk.total && &*have != want {
                        have.clear();
                        return Err(classify(api_error(
                            StatusCode::BAD_REQUEST,
                            "checksum_mismatch",
                            "the uploaded bytes differ",
                        )));
                    }
                }
            }
            if self.drop_after.contains(&n) {
                return Err(transport());
            }
            Ok(self.state())
        }
    }

    fn opts() -> UploadOptions {
        UploadOptions {
            chunk_size: 8,
            max_retries: 3,
            base_delay: Duration::ZERO,
            poll: Duration::ZERO,
        }
    }

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), content).unwrap();
        f
    }

    const CONTENT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz"; // 36 bytes: 5 chunks of 8

    async fn run_upload(server: &FakeServer) -> anyhow::Result<UploadProgress> {
        let f = file(CONTENT);
        let mut seen = Vec::new();
        let r = upload_loop(server, f.path(), 36, &opts(), &mut |d, t| seen.push((d, t))).await;
        assert!(seen.iter().all(|&(d, t)| t == 36 && d <= 36), "{seen:?}");
        r
    }

    #[tokio::test]
    async fn uploads_every_chunk_in_order() {
        let server = FakeServer::default();
        let done = run_upload(&server).await.unwrap();
        assert!(done.complete);
        assert_eq!(&*server.bytes.lock().unwrap(), CONTENT);
        assert_eq!(
            *server.puts.lock().unwrap(),
            [
                "bytes 0-7/36",
                "bytes 8-15/36",
                "bytes 16-23/36",
                "bytes 24-31/36",
                "bytes 32-35/36"
            ]
        );
    }

    #[tokio::test]
    async fn resumes_after_dropped_connections() {
        // PUT 2 never arrives; PUT 4 arrives but its answer is lost; a progress poll fails.
        let server = FakeServer {
            drop_before: vec![2],
            drop_after: vec![4],
            progress_fails: vec![2],
            ..Default::default()
        };
        let done = run_upload(&server).await.unwrap();
        assert!(done.complete);
        assert_eq!(&*server.bytes.lock().unwrap(), CONTENT);
        assert_eq!(
            *server.puts.lock().unwrap(),
            [
                "bytes 0-7/36",
                "bytes 8-15/36", // dropped before the server saw it
                "bytes 8-15/36",
                "bytes 16-23/36", // stored, answer lost: the server says 24 next
                "bytes 24-31/36",
                "bytes 32-35/36"
            ]
        );
    }

    #[tokio::test]
    async fn a_range_mismatch_moves_to_where_the_server_is() {
        let server = FakeServer {
            stale_first_progress: true,
            ..Default::default()
        };
        server
            .bytes
            .lock()
            .unwrap()
            .extend_from_slice(&CONTENT[..20]);
        *server.total.lock().unwrap() = 36;
        run_upload(&server).await.unwrap();
        assert_eq!(&*server.bytes.lock().unwrap(), CONTENT);
        assert_eq!(
            *server.puts.lock().unwrap(),
            ["bytes 0-7/36", "bytes 20-27/36", "bytes 28-35/36"]
        );
    }

    #[tokio::test]
    async fn gives_up_after_repeated_failures() {
        let server = FakeServer {
            drop_before: vec![1, 2, 3, 4, 5, 6],
            ..Default::default()
        };
        let err = run_upload(&server).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("failed 4 times in a row"),
            "{err:#}"
        );
        assert_eq!(server.puts.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_checksum_mismatch_is_final() {
        let server = FakeServer {
            want: Some(b"something else entirely, 36 bytes!!".to_vec()),
            ..Default::default()
        };
        let err = run_upload(&server).await.unwrap_err();
        assert!(format!("{err:#}").contains("checksum_mismatch"), "{err:#}");
        assert_eq!(server.puts.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_different_file_is_refused() {
        let server = FakeServer::default();
        *server.total.lock().unwrap() = 99;
        let err = run_upload(&server).await.unwrap_err();
        assert!(err.to_string().contains("expects 99 bytes"), "{err}");
        assert!(server.puts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn local_checksums_are_sha256() {
        let f = file(b"test");
        let sum = checksum_file(f.path(), 4).await.unwrap();
        assert_eq!(sum.to_string(), SUM);
        assert!(file_len(f.path()).is_ok());
        let empty = file(b"");
        let err = file_len(empty.path()).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        assert!(file_len(dir.path())
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }

    fn image(phase: ImagePhase) -> Image {
        Image {
            metadata: Metadata {
                name: "debian".into(),
                ..Default::default()
            },
            spec: import_body(
                &Name::new("debian").unwrap(),
                Some(ImageFormat::Qcow2),
                None,
                SUM.parse().unwrap(),
            )
            .spec,
            status: ImageStatus {
                phase,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_import_body_is_an_upload_with_the_checksum() {
        let body = import_body(
            &Name::new("debian").unwrap(),
            Some(ImageFormat::Qcow2),
            Some(OsType::Linux),
            SUM.parse().unwrap(),
        );
        body.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "metadata": {"name": "debian"},
                "spec": {
                    "source": {"type": "upload"},
                    "format": "qcow2",
                    "os_type": "linux",
                    "arch": "x86_64",
                    "firmware": "bios",
                    "disk_bus": "virtio",
                    "checksum": SUM,
                }
            })
        );
    }

    #[test]
    fn an_existing_image_is_resumed_only_when_it_is_the_same_upload() {
        let sum: Checksum = SUM.parse().unwrap();
        assert_eq!(
            existing(&image(ImagePhase::Pending), &sum),
            Existing::Resume
        );
        assert_eq!(
            existing(&image(ImagePhase::Importing), &sum),
            Existing::Resume
        );
        assert_eq!(existing(&image(ImagePhase::Ready), &sum), Existing::Done);
        assert!(matches!(
            existing(&image(ImagePhase::Failed), &sum),
            Existing::Refuse(m) if m.contains("failed")
        ));
        let other: Checksum = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        assert!(matches!(
            existing(&image(ImagePhase::Pending), &other),
            Existing::Refuse(m) if m.contains("other contents")
        ));
    }

    #[test]
    fn tables() {
        let mut ready = image(ImagePhase::Ready);
        ready.status.size_bytes = 3 << 29;
        ready.status.virtual_size_bytes = 2 << 30;
        ready.status.node = Some("node1".into());
        let mut pending = image(ImagePhase::Pending);
        pending.metadata.name = "win".into();
        pending.spec.format = None;
        assert_eq!(
            render_list(&[ready.clone(), pending]),
            "NAME    PHASE    FORMAT  SIZE     NODE\n\
             debian  ready    qcow2   1.5 GiB  node1\n\
             win     pending  -       -        -\n"
        );
        let show = render_show(&ready);
        assert!(show.contains("virtual size:  2 GiB\n"), "{show}");
        assert!(show.contains(&format!("checksum:      {SUM}\n")), "{show}");
        assert!(show.contains("source:        upload\n"), "{show}");
    }

    fn import_args(args: &[&str]) -> Result<ImageImportArgs, clap::Error> {
        use clap::Parser as _;
        let mut all = vec!["keel", "image", "import"];
        all.extend_from_slice(args);
        match crate::cli::Cli::try_parse_from(all)?.command {
            crate::cli::Command::Image(ImageCommand::Import(a)) => Ok(a),
            other => panic!("not import: {other:?}"),
        }
    }

    #[test]
    fn import_forms() {
        let a = import_args(&[
            "--url",
            "https://example.org/d.qcow2",
            "--name",
            "d",
            "--sha256",
            &SUM[7..],
            "--firmware",
            "uefi",
            "--wait",
        ])
        .unwrap();
        assert_eq!(a.url.as_deref(), Some("https://example.org/d.qcow2"));
        assert!(a.path.is_none() && a.wait.wait);
        let sum = parse_sha256(a.sha256.as_deref().unwrap()).unwrap();
        assert_eq!(sum.to_string(), SUM);
        let spec = import_spec(
            &a,
            ImageSource::Url {
                url: a.url.clone().unwrap(),
                node: None,
            },
            Some(sum),
        );
        assert_eq!(spec.firmware, keel_model::Firmware::Uefi);
        assert_eq!(
            serde_json::to_value(&spec.source).unwrap(),
            serde_json::json!({"type": "url", "url": "https://example.org/d.qcow2"})
        );
        let a = import_args(&[
            "--node",
            "node2",
            "--host-path",
            "/var/tmp/w.vmdk",
            "--name",
            "w",
            "--disk-bus",
            "sata",
        ])
        .unwrap();
        assert_eq!(a.node.as_ref().map(|n| n.as_str()), Some("node2"));
        assert_eq!(a.disk_bus, Some(keel_model::DiskBus::Sata));
        // One source, and only one.
        assert!(import_args(&["--name", "x"]).is_err());
        assert!(import_args(&["f", "--url", "http://h/x", "--name", "x"]).is_err());
        assert!(import_args(&["--url", "http://h/x", "--host-path", "/x", "--name", "x"]).is_err());
        assert!(parse_sha256("sha256:abc").is_err());
        assert_eq!(parse_sha256(SUM).unwrap().to_string(), SUM);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_text("uploading debian", 8 << 20, 20 << 20),
            "uploading debian: 8.0 MiB of 20.0 MiB (40%)"
        );
        assert_eq!(progress_text("x", 0, 0), "x: 0 B of 0 B (100%)");
    }
}
