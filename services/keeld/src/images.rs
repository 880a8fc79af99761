//! The image library: `Image` resources, uploads through the API (chunked, resumable,
//! checksum-verified), imports from a URL or a file on a node ([`import`]), the checks and
//! conversions every arrived file goes through ([`probe`]), and copies between nodes when a
//! VM needs an image elsewhere.
//!
//! ```text
//!  POST /images ─▶ record (pending); url/file: status.node = source.node or the receiving node
//!  upload: PUT /images/{n}/content [Content-Range] ─▶ the first chunk claims the receiving node
//!        ─▶ append to uploads/<n>.part (its length = received; resume from there)
//!        ─▶ last chunk: sha256 + checksum check ─▶ uploads/<n>.done ─▶ probe::store ─▶ ready
//!  url/file: the import loop of status.node (import::node_loop) ─▶ .part ─▶ .done ─▶ probe::store
//!  node needing it: GET https://<holder>:7443/internal/images/<n> ─▶ verify sha256 ─▶ images/<n>
//! ```

pub mod import;
pub mod probe;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
pub use import::node_loop;
use keel_model::{Image, ImageCreate, ImageFormat, ImagePhase, ImageSource};
use keel_store::{Record, Request, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::ApiError;
use crate::host::Host;
use crate::member::{decode, encode, Member};

/// Store kind of images.
pub const KIND: &str = "images";

/// Upload progress of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadProgress {
    /// Bytes received so far (resume from here).
    pub received: u64,
    /// Bytes expected in all.
    pub total: u64,
    /// All bytes arrived and the image is verified.
    pub complete: bool,
}

/// The Image resource of a record.
pub fn image_of(rec: &Record) -> Result<Image, ApiError> {
    let mut image: Image = decode(rec)?;
    image.metadata.name = rec.name.clone();
    image.metadata.uid = rec.uid.clone();
    image.metadata.version = rec.version;
    image.metadata.created = rec.created.clone();
    Ok(image)
}

/// What uses image `name`: VMs booting from it or attaching it as their ISO, and volumes
/// whose qcow2 is backed by it (deleting the image would break them).
pub fn users(m: &Member, name: &str) -> Result<Vec<String>, ApiError> {
    let mut users = Vec::new();
    for rec in m.list(crate::compute::VMS)? {
        let Ok(vm) = crate::compute::vm_of(&rec) else {
            continue;
        };
        let boots = vm.spec.disks.iter().any(|d| {
            matches!(&d.source, keel_model::DiskSource::Image { image, .. } if image.as_str() == name)
        });
        if boots || vm.spec.iso.as_ref().is_some_and(|i| i.as_str() == name) {
            users.push(format!("VM {}", vm.metadata.name));
        }
    }
    for rec in m.list(crate::storage::VOLUMES)? {
        let Ok(v) = crate::storage::volume_of(&rec) else {
            continue;
        };
        if v.spec
            .backing_image
            .as_ref()
            .is_some_and(|i| i.as_str() == name)
        {
            users.push(format!("volume {}", v.metadata.name));
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// Creates an image record.
pub async fn create(m: &Member, body: ImageCreate) -> Result<Image, ApiError> {
    body.validate()?;
    let name = body.metadata.name.to_string();
    let mut image = Image {
        metadata: body.metadata.into_metadata(),
        spec: body.spec,
        status: Default::default(),
    };
    // url and file sources are imported by the node the source names, else by this node:
    // it is up (it is answering), no other node is involved, and a user who wants the image
    // elsewhere names the node (or sends the request to that node's API).
    let importer = match &image.spec.source {
        ImageSource::Upload => None,
        ImageSource::Url { node, .. } | ImageSource::File { node, .. } => Some(match node {
            Some(n) => {
                let known = m
                    .list(crate::member::kinds::NODES)?
                    .iter()
                    .any(|r| r.name == n.as_str());
                if !known {
                    return Err(ApiError::bad(
                        format!("node {n} is not a member of this cluster (see keel node list)"),
                        Some("spec.source.node".into()),
                    ));
                }
                n.to_string()
            }
            None => m.identity.name.clone(),
        }),
    };
    if let Some(node) = importer {
        image.status.message = format!("waiting for node {node} to import it");
        image.status.node = Some(node);
    }
    match m
        .write_ok(Request::Create {
            kind: KIND.into(),
            name: name.clone(),
            value: encode(&image)?,
            idempotency_key: None,
        })
        .await?
    {
        Response::Written(rec) => image_of(&rec),
        other => Err(ApiError::Internal(format!(
            "unexpected store answer {other:?}"
        ))),
    }
}

/// `bytes START-END/TOTAL` (END inclusive).
pub fn parse_range(header: Option<&str>, len: u64) -> Result<(u64, u64), ApiError> {
    let Some(h) = header else { return Ok((0, len)) };
    let bad = || {
        ApiError::bad(
            format!("Content-Range {h:?} is not of the form 'bytes START-END/TOTAL'"),
            Some("Content-Range".into()),
        )
    };
    let rest = h.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let (start, end, total): (u64, u64, u64) = (
        start.parse().map_err(|_| bad())?,
        end.parse().map_err(|_| bad())?,
        total.parse().map_err(|_| bad())?,
    );
    if end < start || end >= total || end - start + 1 != len {
        return Err(ApiError::bad(
            format!("Content-Range {h:?} does not match the {len} bytes sent"),
            Some("Content-Range".into()),
        ));
    }
    Ok((start, total))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Progress of an upload on this node.
pub fn progress(host: &Host, image: &Image) -> UploadProgress {
    let name = &image.metadata.name;
    if image.status.phase == ImagePhase::Ready {
        let size = image.status.size_bytes;
        return UploadProgress {
            received: size,
            total: size,
            complete: true,
        };
    }
    let total = std::fs::read_to_string(host.pool.upload(name).with_extension("total"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    UploadProgress {
        received: file_len(&host.pool.upload(name)),
        total,
        complete: false,
    }
}

/// Receives one chunk of an upload.
pub async fn receive(
    m: &Member,
    host: &Arc<Host>,
    name: &str,
    range: Option<String>,
    body: Bytes,
) -> Result<UploadProgress, ApiError> {
    m.linearizable().await?;
    let rec = m
        .get(KIND, name)?
        .ok_or_else(|| ApiError::NotFound(format!("image {name} does not exist")))?;
    let mut image = image_of(&rec)?;
    if !matches!(image.spec.source, ImageSource::Upload) {
        return Err(ApiError::Conflict {
            code: "version_conflict",
            message: format!("image {name} is not an upload"),
        });
    }
    match image.status.phase {
        ImagePhase::Ready => {
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!("image {name} is already complete; delete it to upload again"),
            })
        }
        ImagePhase::Failed => {
            return Err(ApiError::Conflict {
                code: "version_conflict",
                message: format!(
                    "image {name} failed ({}); delete and re-create it",
                    image.status.message
                ),
            })
        }
        ImagePhase::Pending | ImagePhase::Importing => {}
    }
    let me = m.identity.name.clone();
    match image.status.node.as_deref() {
        Some(n) if n != me => {
            return Err(ApiError::Conflict {
                code: "version_conflict",
                message: format!(
                "image {name} is being uploaded to node {n}; send the remaining chunks to its API"
            ),
            })
        }
        Some(_) => {}
        None => {
            image.status.node = Some(me.clone());
            image.status.phase = ImagePhase::Importing;
            m.write_ok(Request::Put {
                kind: KIND.into(),
                name: name.into(),
                value: encode(&image)?,
                expected_version: Some(rec.version),
            })
            .await?;
        }
    }
    let (start, total) = parse_range(range.as_deref(), body.len() as u64)?;
    let part = host.pool.upload(name);
    let received = file_len(&part);
    if start != received {
        return Err(ApiError::Conflict {
            code: "range_mismatch",
            message: format!("this node has {received} bytes of image {name}; send the chunk that starts at byte {received}"),
        });
    }
    let part2 = part.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::write(part2.with_extension("total"), total.to_string())?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part2)?;
        f.write_all(&body)?;
        f.sync_data()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    let received = file_len(&part);
    if received < total {
        return Ok(UploadProgress {
            received,
            total,
            complete: false,
        });
    }
    finish(m, host, name).await
}

/// Verifies a complete upload and makes the image ready (or failed).
async fn finish(m: &Member, host: &Arc<Host>, name: &str) -> Result<UploadProgress, ApiError> {
    let part = host.pool.upload(name);
    let Some(_busy) = import::Busy::claim(name) else {
        return Err(ApiError::Conflict {
            code: "version_conflict",
            message: format!("image {name} is being verified already; ask for its status"),
        });
    };
    let sum = sha256_file(&part).await?;
    let rec = m
        .get(KIND, name)?
        .ok_or_else(|| ApiError::NotFound(format!("image {name} does not exist")))?;
    let image = image_of(&rec)?;
    if let Some(want) = &image.spec.checksum {
        if want.sha256_hex() != sum {
            let _ = std::fs::remove_file(&part);
            return Err(ApiError::Checksum(format!(
                "the uploaded bytes have sha256 {sum}, not {}; the upload was discarded, send it again",
                want.sha256_hex()
            )));
        }
    }
    let received = file_len(&part);
    std::fs::rename(&part, import::done_path(host, name))
        .map_err(|e| ApiError::Internal(format!("keeping the upload: {e}")))?;
    let _ = std::fs::remove_file(part.with_extension("total"));
    match import::finalize(m, host, &image, Some(sum)).await {
        Ok(()) => {}
        Err(import::Stop::Fatal(message)) => {
            import::fail(m, host, &image, message.clone()).await;
            return Err(ApiError::bad(
                format!("image {name} failed: {message}"),
                None,
            ));
        }
        Err(import::Stop::Gone) => {
            return Err(ApiError::NotFound(format!("image {name} was deleted")))
        }
        Err(import::Stop::Settled) => {
            return Err(ApiError::Conflict {
                code: "already_exists",
                message: format!("image {name} is already complete"),
            })
        }
        Err(import::Stop::Retry { message, .. }) => {
            return Err(ApiError::Internal(format!(
                "image {name} has all its bytes but could not be stored yet ({message}); this node finishes it on its own"
            )))
        }
    }
    Ok(UploadProgress {
        received,
        total: received,
        complete: true,
    })
}

/// sha256 of a file, hex.
pub async fn sha256_file(path: &Path) -> Result<String, ApiError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(crate::join::hex(&h.finalize()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("reading the image: {e}")))
}

pub use probe::{qemu_img_info, ImgInfo};

/// Makes sure image `name` is on this node, copying it from the node that holds it.
pub async fn ensure_local(
    m: &Member,
    host: &Host,
    name: &str,
) -> Result<(std::path::PathBuf, ImageFormat), String> {
    let rec = m
        .get(KIND, name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("image {name} does not exist"))?;
    let image = image_of(&rec).map_err(|e| e.to_string())?;
    if image.status.phase != ImagePhase::Ready {
        return Err(format!(
            "image {name} is not ready ({:?})",
            image.status.phase
        ));
    }
    let format = image.status.format.unwrap_or(ImageFormat::Raw);
    let path = host.pool.image(name);
    if path.exists() {
        return Ok((path, format));
    }
    let holder = image
        .status
        .node
        .clone()
        .ok_or_else(|| format!("image {name} has no node"))?;
    let node = m
        .list(crate::member::kinds::NODES)
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|r| crate::member::node_of(r).ok())
        .find(|n| n.metadata.name == holder)
        .ok_or_else(|| format!("node {holder} holding image {name} is not a member"))?;
    let peer = format!("{}:{}", node.status.address, crate::PEER_PORT);
    let tmp = path.with_extension("fetch");
    m.peers
        .download(&peer, &format!("/internal/images/{name}"), &tmp)
        .await
        .map_err(|e| format!("copying image {name} from {holder}: {e}"))?;
    let sum = sha256_file(&tmp).await.map_err(|e| e.to_string())?;
    let want = image
        .status
        .file_sha256
        .as_ref()
        .or(image.status.sha256.as_ref());
    if Some(&sum) != want {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "the copy of image {name} from {holder} has the wrong checksum"
        ));
    }
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    info!(image = %name, from = %holder, "image copied to this node");
    Ok((path, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_range(None, 10).unwrap(), (0, 10));
        assert_eq!(parse_range(Some("bytes 0-9/20"), 10).unwrap(), (0, 20));
        assert_eq!(parse_range(Some("bytes 10-19/20"), 10).unwrap(), (10, 20));
        for bad in [
            "bytes 0-9/5",
            "bytes 5-1/20",
            "0-9/20",
            "bytes x-9/20",
            "bytes 0-8/20",
        ] {
            assert!(parse_range(Some(bad), 10).is_err(), "{bad}");
        }
    }
}
