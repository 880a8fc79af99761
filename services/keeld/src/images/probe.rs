//! What an arrived image file really is, and how it is stored: `qemu-img info` (and `check`
//! for qcow2) of the untrusted file, the guards an import needs, and the conversion to a
//! format QEMU runs from.
//!
//! ```text
//!  uploads/<n>.done ─▶ qemu-img info (under prlimit) ─▶ refuse: backing file, external data
//!        file, encryption, vmdk extents elsewhere, declared ≠ real format, unknown format
//!     ─▶ vmdk | vhdx | compressed or old qcow2: qemu-img convert -O qcow2 ─▶ images/<n>.converting ─▶ images/<n>
//!     ─▶ otherwise: hard link ─▶ images/<n>           (the caller removes .done after the store write)
//! ```

use std::path::{Path, PathBuf};

use keel_model::ImageFormat;
use serde::Deserialize;

/// What `qemu-img info` says of a file.
#[derive(Debug, Clone, Deserialize)]
pub struct ImgInfo {
    /// Detected format.
    pub format: String,
    /// Size the guest sees.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// The backing file the image names, if any.
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    /// Whether the image is encrypted.
    #[serde(default)]
    pub encrypted: bool,
    /// Format-specific details (qcow2 compat and data file, vmdk extents).
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<FormatSpecific>,
}

/// `format-specific` of `qemu-img info`.
#[derive(Debug, Clone, Deserialize)]
pub struct FormatSpecific {
    /// The format it describes.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its details.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// What `qemu-img check` says of a qcow2 file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImgCheck {
    /// Clusters stored compressed.
    #[serde(rename = "compressed-clusters", default)]
    pub compressed_clusters: u64,
    /// Corruptions found.
    #[serde(default)]
    pub corruptions: u64,
}

/// How an arrived file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePlan {
    /// What the file really is.
    pub detected: ImageFormat,
    /// What is stored (qcow2 after a conversion).
    pub stored: ImageFormat,
    /// Convert with `qemu-img convert -f <this> -O qcow2` first.
    pub convert_from: Option<&'static str>,
}

/// Checks an untrusted file's `qemu-img info` against what the spec declared and decides how
/// it is stored. `file` is the path info was run on (vmdk extents must be that file);
/// `looks_iso` says whether the bytes carry an ISO 9660 volume descriptor.
pub fn plan(
    declared: Option<ImageFormat>,
    info: &ImgInfo,
    file: &Path,
    looks_iso: bool,
    check: &ImgCheck,
) -> Result<StorePlan, String> {
    if let Some(backing) = &info.backing_filename {
        return Err(format!(
            "the image names a backing file ({backing:?}); Keel refuses such images because a \
             backing file makes QEMU read another file of the host. Flatten it first \
             (qemu-img convert -O qcow2 IN OUT) and import the result"
        ));
    }
    if info.encrypted {
        return Err(
            "the image is encrypted; decrypt it (qemu-img convert) and import the result".into(),
        );
    }
    if let Some(fs) = &info.format_specific {
        if fs.kind == "qcow2" {
            if let Some(data_file) = fs.data.get("data-file").and_then(|v| v.as_str()) {
                return Err(format!(
                    "the qcow2 image keeps its data in an external file ({data_file:?}); Keel \
                     refuses it because QEMU would read another file of the host. Convert it \
                     to a self-contained qcow2 first"
                ));
            }
            if fs.data.get("corrupt").and_then(|v| v.as_bool()) == Some(true) {
                return Err(
                    "the qcow2 image is marked corrupt; repair it with qemu-img check -r all"
                        .into(),
                );
            }
        }
        if fs.kind == "vmdk" {
            let extents = fs
                .data
                .get("extents")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            for e in extents {
                let name = e.get("filename").and_then(|v| v.as_str()).unwrap_or("");
                if Path::new(name) != file {
                    return Err(format!(
                        "the vmdk descriptor refers to another file ({name:?}); Keel imports \
                         only self-contained vmdk files (monolithicSparse or streamOptimized)"
                    ));
                }
            }
        }
    }
    if check.corruptions > 0 {
        return Err(format!(
            "qemu-img check finds {} corruptions in the image",
            check.corruptions
        ));
    }
    let detected = match info.format.as_str() {
        "qcow2" => ImageFormat::Qcow2,
        "raw" if looks_iso || declared == Some(ImageFormat::Iso) => ImageFormat::Iso,
        "raw" => ImageFormat::Raw,
        "vmdk" => ImageFormat::Vmdk,
        "vhdx" => ImageFormat::Vhdx,
        other => {
            return Err(format!(
                "the file is in {other:?} format; Keel imports qcow2, raw, ISO, vmdk and vhdx \
                 (convert others with qemu-img convert -O qcow2)"
            ))
        }
    };
    if let Some(d) = declared {
        let fits = d == detected || (d == ImageFormat::Raw && detected == ImageFormat::Iso);
        if !fits {
            return Err(format!(
                "the image was declared {} but the file is {} (qemu-img info); fix spec.format \
                 or leave it out to have the format detected",
                d.as_str(),
                detected.as_str()
            ));
        }
    }
    let detected = match declared {
        Some(ImageFormat::Raw) => ImageFormat::Raw,
        _ => detected,
    };
    let old_qcow2 = info
        .format_specific
        .as_ref()
        .and_then(|fs| fs.data.get("compat"))
        .and_then(|v| v.as_str())
        == Some("0.10");
    let convert_from = match detected {
        ImageFormat::Vmdk => Some("vmdk"),
        ImageFormat::Vhdx => Some("vhdx"),
        ImageFormat::Qcow2 if check.compressed_clusters > 0 || old_qcow2 => Some("qcow2"),
        ImageFormat::Qcow2 | ImageFormat::Raw | ImageFormat::Iso => None,
    };
    let stored = if convert_from.is_some() {
        ImageFormat::Qcow2
    } else {
        detected
    };
    Ok(StorePlan {
        detected,
        stored,
        convert_from,
    })
}

/// Whether the bytes carry an ISO 9660 primary volume descriptor (`CD001` at 32769).
pub fn looks_iso(path: &Path) -> bool {
    use std::io::{Read as _, Seek as _};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut magic = [0u8; 5];
    f.seek(std::io::SeekFrom::Start(32769)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && &magic == b"CD001"
}

/// Runs qemu-img on an untrusted file, under `prlimit` (1 GiB of address space, 30 s of
/// CPU) when it is installed: a crafted image must not make the probe eat the node.
async fn qemu_img_limited(args: &[&std::ffi::OsStr]) -> Result<std::process::Output, String> {
    const PRLIMIT: &str = "/usr/bin/prlimit";
    let mut cmd = if Path::new(PRLIMIT).exists() {
        let mut c = tokio::process::Command::new(PRLIMIT);
        c.args(["--as=1073741824", "--cpu=30", "qemu-img"]);
        c
    } else {
        tokio::process::Command::new("qemu-img")
    };
    cmd.args(args)
        .output()
        .await
        .map_err(|e| format!("running qemu-img: {e}"))
}

/// Runs `qemu-img info --output=json` (its JSON is the stable interface; there is no library).
pub async fn qemu_img_info(path: &Path) -> Result<ImgInfo, String> {
    let out = qemu_img_limited(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-U".as_ref(),
        path.as_os_str(),
    ])
    .await?;
    if !out.status.success() {
        return Err(format!(
            "the file is not a disk image qemu-img understands: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info output: {e}"))
}

/// `qemu-img check --output=json` of a qcow2 file (exit 2 and 3 still print the report).
pub async fn qemu_img_check(path: &Path) -> Result<ImgCheck, String> {
    let out = qemu_img_limited(&[
        "check".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-U".as_ref(),
        path.as_os_str(),
    ])
    .await?;
    serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "qemu-img check could not read the qcow2 image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The stored file and what the image status says of it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Format of the stored file.
    pub format: ImageFormat,
    /// Bytes the stored file takes.
    pub size_bytes: u64,
    /// Size the guest sees.
    pub virtual_size_bytes: u64,
    /// Whether the file was converted (its checksum differs from the source's).
    pub converted: bool,
}

/// Probes the complete source `src`, checks it, and puts the result at `dest` (converted
/// when needed). `src` stays; the caller removes it once the store says the image is ready,
/// so a crash in between redoes this step.
pub async fn store(
    declared: Option<ImageFormat>,
    src: &Path,
    dest: &Path,
    on_convert: impl FnOnce(&str),
) -> Result<Stored, String> {
    let info = qemu_img_info(src).await?;
    let check = if info.format == "qcow2" {
        qemu_img_check(src).await?
    } else {
        ImgCheck::default()
    };
    let src_owned = src.to_path_buf();
    let iso = tokio::task::spawn_blocking(move || looks_iso(&src_owned))
        .await
        .unwrap_or(false);
    let plan = plan(declared, &info, src, iso, &check)?;
    let _ = std::fs::remove_file(dest);
    let virtual_size_bytes = match plan.convert_from {
        Some(from) => {
            on_convert(from);
            let tmp = converting(dest);
            let out = tokio::process::Command::new("qemu-img")
                .args(["convert", "-q", "-f", from, "-O", "qcow2"])
                .arg(src)
                .arg(&tmp)
                .output()
                .await
                .map_err(|e| format!("running qemu-img convert: {e}"))?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!(
                    "qemu-img could not convert the {from} image to qcow2: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::fs::rename(&tmp, dest).map_err(|e| format!("storing the image: {e}"))?;
            qemu_img_info(dest).await?.virtual_size
        }
        None => {
            std::fs::hard_link(src, dest).map_err(|e| format!("storing the image: {e}"))?;
            info.virtual_size
        }
    };
    let size_bytes = std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|e| format!("reading the stored image: {e}"))?;
    Ok(Stored {
        format: plan.stored,
        size_bytes,
        virtual_size_bytes,
        converted: plan.convert_from.is_some(),
    })
}

/// Where a conversion writes before it is renamed into place.
pub fn converting(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".converting");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: serde_json::Value) -> ImgInfo {
        serde_json::from_value(json).unwrap()
    }

    const F: &str = "/pool/uploads/x.done";

    fn qcow2(data: serde_json::Value) -> ImgInfo {
        info(serde_json::json!({"format":"qcow2","virtual-size":1024,
            "format-specific":{"type":"qcow2","data":data}}))
    }

    #[test]
    fn plain_formats_are_stored_as_they_are() {
        let p = Path::new(F);
        let none = ImgCheck::default();
        let q = qcow2(serde_json::json!({"compat":"1.1"}));
        assert_eq!(
            plan(None, &q, p, false, &none).unwrap(),
            StorePlan {
                detected: ImageFormat::Qcow2,
                stored: ImageFormat::Qcow2,
                convert_from: None
            }
        );
        let raw = info(serde_json::json!({"format":"raw","virtual-size":1024}));
        assert_eq!(
            plan(None, &raw, p, false, &none).unwrap().stored,
            ImageFormat::Raw
        );
        assert_eq!(
            plan(None, &raw, p, true, &none).unwrap().stored,
            ImageFormat::Iso
        );
        assert_eq!(
            plan(Some(ImageFormat::Iso), &raw, p, false, &none)
                .unwrap()
                .stored,
            ImageFormat::Iso
        );
        // Declared raw: an ISO's bytes are fine as a raw disk.
        assert_eq!(
            plan(Some(ImageFormat::Raw), &raw, p, true, &none)
                .unwrap()
                .stored,
            ImageFormat::Raw
        );
    }

    #[test]
    fn vmdk_vhdx_and_compressed_qcow2_are_converted() {
        let p = Path::new(F);
        let none = ImgCheck::default();
        let vmdk = info(serde_json::json!({"format":"vmdk","virtual-size":1024,
            "format-specific":{"type":"vmdk","data":{"extents":[{"filename":F}]}}}));
        let pl = plan(None, &vmdk, p, false, &none).unwrap();
        assert_eq!(
            (pl.detected, pl.stored, pl.convert_from),
            (ImageFormat::Vmdk, ImageFormat::Qcow2, Some("vmdk"))
        );
        let vhdx = info(serde_json::json!({"format":"vhdx","virtual-size":1024}));
        assert_eq!(
            plan(Some(ImageFormat::Vhdx), &vhdx, p, false, &none)
                .unwrap()
                .convert_from,
            Some("vhdx")
        );
        let q = qcow2(serde_json::json!({"compat":"1.1"}));
        let compressed = ImgCheck {
            compressed_clusters: 3,
            corruptions: 0,
        };
        assert_eq!(
            plan(None, &q, p, false, &compressed).unwrap().convert_from,
            Some("qcow2")
        );
        let old = qcow2(serde_json::json!({"compat":"0.10"}));
        assert_eq!(
            plan(None, &old, p, false, &none).unwrap().convert_from,
            Some("qcow2")
        );
    }

    #[test]
    fn dangerous_images_are_refused() {
        let p = Path::new(F);
        let none = ImgCheck::default();
        let backed = info(serde_json::json!({"format":"qcow2","virtual-size":1024,
            "backing-filename":"/etc/shadow"}));
        let err = plan(None, &backed, p, false, &none).unwrap_err();
        assert!(
            err.contains("backing file") && err.contains("/etc/shadow"),
            "{err}"
        );
        // Declared raw, but the bytes are a qcow2 pointing at a host file: still refused.
        let err = plan(Some(ImageFormat::Raw), &backed, p, false, &none).unwrap_err();
        assert!(err.contains("backing file"), "{err}");
        let data = qcow2(serde_json::json!({"compat":"1.1","data-file":"/dev/sda"}));
        assert!(plan(None, &data, p, false, &none)
            .unwrap_err()
            .contains("external file"));
        let enc = info(serde_json::json!({"format":"qcow2","virtual-size":1,"encrypted":true}));
        assert!(plan(None, &enc, p, false, &none)
            .unwrap_err()
            .contains("encrypted"));
        let extents = info(serde_json::json!({"format":"vmdk","virtual-size":1024,
            "format-specific":{"type":"vmdk","data":{"extents":[{"filename":"/etc/passwd"}]}}}));
        assert!(plan(None, &extents, p, false, &none)
            .unwrap_err()
            .contains("another file"));
        let corrupt = ImgCheck {
            compressed_clusters: 0,
            corruptions: 2,
        };
        let q = qcow2(serde_json::json!({"compat":"1.1"}));
        assert!(plan(None, &q, p, false, &corrupt)
            .unwrap_err()
            .contains("corruptions"));
    }

    #[test]
    fn the_declared_format_must_be_the_real_one() {
        let p = Path::new(F);
        let none = ImgCheck::default();
        let q = qcow2(serde_json::json!({"compat":"1.1"}));
        let err = plan(Some(ImageFormat::Vmdk), &q, p, false, &none).unwrap_err();
        assert!(err.contains("declared vmdk but the file is qcow2"), "{err}");
        let raw = info(serde_json::json!({"format":"raw","virtual-size":1024}));
        assert!(plan(Some(ImageFormat::Qcow2), &raw, p, false, &none).is_err());
        let vdi = info(serde_json::json!({"format":"vdi","virtual-size":1024}));
        assert!(plan(None, &vdi, p, false, &none)
            .unwrap_err()
            .contains("\"vdi\" format"));
    }

    #[tokio::test]
    async fn real_files_are_probed_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
        let v = dir.path().join("a.vmdk");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-O", "vmdk"])
            .arg(&q)
            .arg(&v)
            .status()
            .unwrap();
        assert!(st.success());
        let dest = dir.path().join("stored");
        let mut said = String::new();
        let stored = store(Some(ImageFormat::Vmdk), &v, &dest, |f| said = f.into())
            .await
            .unwrap();
        assert_eq!(stored.format, ImageFormat::Qcow2);
        assert!(stored.converted);
        assert_eq!(said, "vmdk");
        assert_eq!(stored.virtual_size_bytes, 1 << 20);
        assert_eq!(qemu_img_info(&dest).await.unwrap().format, "qcow2");
        assert!(!converting(&dest).exists());
        // A backed overlay is refused and nothing is stored.
        let o = dir.path().join("o.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&q)
            .arg(&o)
            .status()
            .unwrap();
        assert!(st.success());
        let dest2 = dir.path().join("stored2");
        let err = store(None, &o, &dest2, |_| {}).await.unwrap_err();
        assert!(err.contains("backing file"), "{err}");
        assert!(!dest2.exists());
    }
}
