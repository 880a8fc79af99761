//! [`Image`]: a disk or ISO image in the image library.
//!
//! An image is imported once (from a file on a node, a URL, or an upload through the API),
//! verified, converted to a format QEMU runs from (vmdk and vhdx become qcow2) and stored
//! on one node's local pool. Other nodes get a copy when a VM there needs it.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::{
    validate_labels, Arch, DiskBus, Firmware, Metadata, Name, NewMetadata, OsType, ValidationError,
};

/// An image in the library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Name, uid, version, labels.
    pub metadata: Metadata,
    /// Where the image comes from and how guests should use it.
    pub spec: ImageSpec,
    /// Import progress and what was found.
    #[serde(default)]
    pub status: ImageStatus,
}

/// Where an image comes from and how guests booted from it should be set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Where the bytes come from.
    pub source: ImageSource,
    /// The format of the source; detected when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Guest OS family.
    #[serde(default)]
    pub os_type: OsType,
    /// Guest architecture.
    #[serde(default)]
    pub arch: Arch,
    /// Firmware the guest needs; VMs booted from the image default to it.
    #[serde(default)]
    pub firmware: Firmware,
    /// Bus the guest has drivers for; disks made from the image default to it.
    #[serde(default)]
    pub disk_bus: DiskBus,
    /// Expected digest of the source bytes; the import fails when it does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
}

/// Where an image's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageSource {
    /// Uploaded through the API (`PUT /api/v1/images/{name}/upload`, resumable) after the
    /// image is created.
    Upload,
    /// A file on a node's host, copied into the library by that node.
    File {
        /// Absolute path of the file (no `..`).
        path: String,
        /// The node whose host has the file [default: the node that handles the request].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<Name>,
    },
    /// Downloaded over HTTP or HTTPS (certificates checked against the system's roots),
    /// resuming with Range requests after a dropped connection.
    Url {
        /// `http://` or `https://` URL.
        url: String,
        /// The node that downloads and keeps it [default: the node that handles the request].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<Name>,
    },
}

/// An image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// QEMU copy-on-write v2.
    Qcow2,
    /// Raw disk bytes.
    Raw,
    /// An ISO 9660 CD/DVD image, attached read-only as a CD-ROM.
    Iso,
    /// VMware disk; converted to qcow2 on import.
    Vmdk,
    /// Hyper-V disk; converted to qcow2 on import.
    Vhdx,
}

impl ImageFormat {
    /// Whether QEMU cannot run from this format directly, so the import converts it to qcow2.
    pub fn converted_on_import(self) -> bool {
        matches!(self, ImageFormat::Vmdk | ImageFormat::Vhdx)
    }

    /// The name `qemu-img` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Iso => "iso",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
        }
    }
}

/// A content digest, written `sha256:` and 64 hex digits. Stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, ToSchema)]
#[schema(value_type = String, pattern = "^sha256:[0-9a-fA-F]{64}$")]
pub struct Checksum(String);

impl Checksum {
    /// The SHA-256 digest in lower-case hex, without the `sha256:` prefix.
    pub fn sha256_hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl FromStr for Checksum {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").unwrap_or("");
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self(format!("sha256:{}", hex.to_ascii_lowercase())))
        } else {
            Err(ValidationError::new(
                "",
                format!("{s:?} is not a checksum: write sha256: followed by the 64 hex digits of the SHA-256 digest"),
            ))
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse()
            .map_err(|e: ValidationError| de::Error::custom(e.message))
    }
}

/// How far an image's import has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImagePhase {
    /// Created; waiting for its bytes (an upload) or for a node to import it.
    #[default]
    Pending,
    /// Downloading, copying, verifying or converting.
    Importing,
    /// Stored and verified; VMs can use it.
    Ready,
    /// The import failed; `message` says why. Delete and re-create to retry.
    Failed,
}

/// What the import found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageStatus {
    /// How far the import has come.
    #[serde(default)]
    pub phase: ImagePhase,
    /// Bytes the stored file takes.
    #[serde(default)]
    pub size_bytes: u64,
    /// Size of the disk the guest sees (equal to `size_bytes` for raw and ISO).
    #[serde(default)]
    pub virtual_size_bytes: u64,
    /// Format of the stored file (qcow2, raw or iso; vmdk and vhdx are stored as qcow2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// SHA-256 of the source bytes, lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The node whose pool holds the imported image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Other nodes that hold a verified copy (made when a VM there needed it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<String>,
    /// Why the import failed, or what it is doing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How far a download or copy has come (while importing from a URL or a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ImageProgress>,
    /// SHA-256 of the stored file when it differs from the source's (a converted image):
    /// copies to other nodes are checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
}

/// Bytes of an import's source done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageProgress {
    /// Bytes downloaded or copied so far.
    pub done_bytes: u64,
    /// Bytes in all (0 while unknown: a server that sends no length).
    pub total_bytes: u64,
}

impl ImageProgress {
    /// Percent done, when the total is known.
    pub fn percent(&self) -> Option<u64> {
        (u128::from(self.done_bytes) * 100)
            .checked_div(u128::from(self.total_bytes))
            .map(|p| p.min(100) as u64)
    }
}

impl ImageStatus {
    /// Whether `node` holds a ready copy of the image.
    pub fn is_on(&self, node: &str) -> bool {
        self.phase == ImagePhase::Ready
            && (self.node.as_deref() == Some(node) || self.copies.iter().any(|c| c == node))
    }
}

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Longest host path accepted.
pub const MAX_PATH_LEN: usize = 4096;

impl ImageSource {
    /// The node named in the source (`file` and `url` can name one).
    pub fn node(&self) -> Option<&Name> {
        match self {
            ImageSource::Upload => None,
            ImageSource::File { node, .. } | ImageSource::Url { node, .. } => node.as_ref(),
        }
    }
}

impl ImageSpec {
    /// A spec with defaults for everything but the source.
    pub fn from_source(source: ImageSource) -> Self {
        Self {
            source,
            format: None,
            os_type: OsType::default(),
            arch: Arch::default(),
            firmware: Firmware::default(),
            disk_bus: DiskBus::default(),
            checksum: None,
        }
    }

    /// Cross-field checks; paths are relative to the spec (`source.path`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match &self.source {
            ImageSource::Upload => Ok(()),
            ImageSource::File { path, .. } => check_host_path("source.path", path),
            ImageSource::Url { url, .. } => check_url("source.url", url),
        }
    }
}

/// An absolute host path without `..`, NUL or control characters.
pub(crate) fn check_host_path(field: &str, path: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| {
        Err(ValidationError::new(
            field,
            format!("{path:?} is not a usable path: {why}"),
        ))
    };
    if !path.starts_with('/') {
        return bad("it must be absolute (start with '/')");
    }
    if path.len() > MAX_PATH_LEN {
        return bad(&format!("it is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if path.split('/').any(|part| part == "..") {
        return bad("it must not contain '..'");
    }
    Ok(())
}

fn check_url(field: &str, url: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| {
        Err(ValidationError::new(
            field,
            format!("{url:?} is not a usable URL: {why}"),
        ))
    };
    let rest = match url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        Some(rest) => rest,
        None => return bad("it must start with http:// or https://"),
    };
    if url.len() > MAX_URL_LEN {
        return bad(&format!("it is longer than {MAX_URL_LEN} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains spaces or control characters (percent-encode them)");
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || host.starts_with('@') {
        return bad("it has no host");
    }
    Ok(())
}

/// `POST /api/v1/images`: a new image. The server owns `uid`, `version`, `created` and the
/// whole status, so they cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCreate {
    /// Name and labels.
    pub metadata: NewMetadata,
    /// The image.
    pub spec: ImageSpec,
}

impl ImageCreate {
    /// All checks; paths are absolute in the body (`spec.source.url`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate().map_err(|e| e.within("metadata"))?;
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

/// `PATCH /api/v1/images/{name}`. The source, format and checksum are fixed at creation;
/// the guest hints can change. Absent fields are left alone. Nothing is optional, so there
/// is no clear list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageUpdate {
    /// When given, the update only applies if the stored version still equals it; else 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Replaces all labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Guest OS family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<OsType>,
    /// Guest architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Firmware the guest needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Bus the guest has drivers for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bus: Option<DiskBus>,
}

impl ImageUpdate {
    /// The image with this update applied (status untouched), or why it cannot be.
    pub fn apply(&self, image: &Image) -> Result<Image, ValidationError> {
        let mut out = image.clone();
        if let Some(labels) = &self.labels {
            validate_labels("labels", labels)?;
            out.metadata.labels = labels.clone();
        }
        if let Some(v) = self.os_type {
            out.spec.os_type = v;
        }
        if let Some(v) = self.arch {
            out.spec.arch = v;
        }
        if let Some(v) = self.firmware {
            out.spec.firmware = v;
        }
        if let Some(v) = self.disk_bus {
            out.spec.disk_bus = v;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";

    #[test]
    fn create_round_trip_with_defaults() {
        let body = format!(
            r#"{{"metadata":{{"name":"debian"}},"spec":{{"source":{{"type":"url","url":"https://example.org/d.qcow2"}},"checksum":"{SUM}"}}}}"#
        );
        let create: ImageCreate = serde_json::from_str(&body).unwrap();
        create.validate().unwrap();
        assert_eq!(create.spec.firmware, Firmware::Bios);
        assert_eq!(create.spec.disk_bus, DiskBus::Virtio);
        assert_eq!(create.spec.arch, Arch::X86_64);
        assert_eq!(create.spec.format, None);
        let sum = create.spec.checksum.clone().unwrap();
        assert_eq!(sum.sha256_hex(), SUM[7..].to_ascii_lowercase());
        let json = serde_json::to_string(&create).unwrap();
        assert_eq!(serde_json::from_str::<ImageCreate>(&json).unwrap(), create);
    }

    #[test]
    fn sources() {
        let file: ImageSource =
            serde_json::from_str(r#"{"type":"file","path":"/var/tmp/x.iso"}"#).unwrap();
        assert_eq!(
            file,
            ImageSource::File {
                path: "/var/tmp/x.iso".into(),
                node: None,
            }
        );
        let on: ImageSource =
            serde_json::from_str(r#"{"type":"file","path":"/x.img","node":"node2"}"#).unwrap();
        assert!(matches!(on, ImageSource::File { node: Some(n), .. } if n.as_str() == "node2"));
        assert!(serde_json::from_str::<ImageSource>(
            r#"{"type":"file","path":"/x.img","node":"Not A Name"}"#
        )
        .is_err());
        let up: ImageSource = serde_json::from_str(r#"{"type":"upload"}"#).unwrap();
        assert_eq!(up, ImageSource::Upload);
        assert!(serde_json::from_str::<ImageSource>(r#"{"type":"ftp","url":"x"}"#).is_err());
        assert!(serde_json::from_str::<ImageSource>(r#"{"type":"file"}"#).is_err());
    }

    #[test]
    fn refuses_bad_sources_with_paths() {
        for (source, why) in [
            (
                ImageSource::File {
                    path: "relative.img".into(),
                    node: None,
                },
                "absolute",
            ),
            (
                ImageSource::File {
                    path: "/a/../etc/shadow".into(),
                    node: None,
                },
                "'..'",
            ),
            (
                ImageSource::File {
                    path: "/a\nb".into(),
                    node: None,
                },
                "control",
            ),
            (
                ImageSource::Url {
                    url: "ftp://x/y".into(),
                    node: None,
                },
                "http:// or https://",
            ),
            (
                ImageSource::Url {
                    url: "https:///y".into(),
                    node: None,
                },
                "no host",
            ),
            (
                ImageSource::Url {
                    url: "https://h/a b".into(),
                    node: None,
                },
                "spaces",
            ),
        ] {
            let create = ImageCreate {
                metadata: NewMetadata::named(crate::Name::new("img").unwrap()),
                spec: ImageSpec::from_source(source.clone()),
            };
            let err = create.validate().unwrap_err();
            assert!(
                err.field.starts_with("spec.source."),
                "{source:?}: {}",
                err.field
            );
            assert!(err.message.contains(why), "{source:?}: {}", err.message);
        }
    }

    #[test]
    fn checksums() {
        assert!(SUM.parse::<Checksum>().is_ok());
        for bad in [
            "",
            "sha256:",
            "md5:abcd",
            &SUM[..70],
            &format!("{SUM}0"),
            &SUM.replace('9', "g"),
        ] {
            let err = bad.parse::<Checksum>().unwrap_err();
            assert!(err.message.contains("sha256:"), "{bad}");
        }
        let err = serde_json::from_str::<Checksum>("\"sha1:abc\"").unwrap_err();
        assert!(err.to_string().contains("is not a checksum"));
    }

    #[test]
    fn unknown_fields_and_formats_are_refused() {
        assert!(serde_json::from_str::<ImageSpec>(
            r#"{"source":{"type":"upload"},"colour":"red"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ImageSpec>(
            r#"{"source":{"type":"upload"},"format":"vdi"}"#
        )
        .is_err());
        let spec: ImageSpec = serde_json::from_str(r#"{"source":{"type":"upload"},"format":"vmdk","firmware":"uefi","disk_bus":"sata","os_type":"windows"}"#).unwrap();
        assert!(spec.format.unwrap().converted_on_import());
        assert_eq!(spec.os_type, OsType::Windows);
    }

    #[test]
    fn status_and_update() {
        let mut image = Image {
            metadata: Metadata {
                name: "debian".into(),
                ..Metadata::default()
            },
            spec: ImageSpec::from_source(ImageSource::Upload),
            status: ImageStatus {
                phase: ImagePhase::Ready,
                node: Some("node1".into()),
                copies: vec!["node3".into()],
                ..ImageStatus::default()
            },
        };
        assert!(image.status.is_on("node1") && image.status.is_on("node3"));
        assert!(!image.status.is_on("node2"));
        let update: ImageUpdate = serde_json::from_str(r#"{"firmware":"uefi"}"#).unwrap();
        let updated = update.apply(&image).unwrap();
        assert_eq!(updated.spec.firmware, Firmware::Uefi);
        assert_eq!(updated.status, image.status);
        assert!(serde_json::from_str::<ImageUpdate>(r#"{"source":{"type":"upload"}}"#).is_err());
        image.status.phase = ImagePhase::Importing;
        assert!(!image.status.is_on("node1"));
        let json = serde_json::to_value(&image).unwrap();
        assert_eq!(json["status"]["phase"], "importing");
        assert_eq!(serde_json::from_value::<Image>(json).unwrap(), image);
    }
}
