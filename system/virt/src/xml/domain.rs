//! The subset of libvirt's domain XML schema Keel writes, as serde types. Field order is
//! element order; names starting with `@` are attributes, `$text` is element text.
//! Everything borrows from the [`DomainSpec`](crate::DomainSpec) it is built from.

use serde::Serialize;

#[derive(Serialize)]
#[serde(rename = "domain")]
pub(super) struct Domain<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub name: &'a str,
    pub uuid: String,
    pub metadata: Metadata,
    #[serde(rename = "maxMemory", skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<MaxMemory>,
    pub memory: Memory,
    pub vcpu: Vcpu,
    pub os: Os<'a>,
    pub features: Features,
    pub cpu: Cpu<'a>,
    pub clock: Clock,
    pub on_poweroff: &'static str,
    pub on_reboot: &'static str,
    pub on_crash: &'static str,
    pub devices: Devices<'a>,
}

#[derive(Serialize)]
pub(super) struct Metadata {
    #[serde(rename = "keel:vm")]
    pub vm: KeelVm,
}

#[derive(Serialize)]
pub(super) struct KeelVm {
    #[serde(rename = "@xmlns:keel")]
    pub xmlns: &'static str,
    #[serde(rename = "@uid")]
    pub uid: String,
}

#[derive(Serialize)]
pub(super) struct Memory {
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

/// `<maxMemory>`: the most memory DIMMs may add up to (hot-add headroom).
#[derive(Serialize)]
pub(super) struct MaxMemory {
    #[serde(rename = "@slots")]
    pub slots: u32,
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

#[derive(Serialize)]
pub(super) struct Vcpu {
    #[serde(rename = "@placement")]
    pub placement: &'static str,
    /// vCPUs plugged at start, when fewer than the maximum (the element's text).
    #[serde(rename = "@current", skip_serializing_if = "Option::is_none")]
    pub current: Option<u32>,
    #[serde(rename = "$text")]
    pub count: u32,
}

#[derive(Serialize)]
pub(super) struct Os<'a> {
    #[serde(rename = "type")]
    pub os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvram: Option<Nvram<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootDev>,
}

#[derive(Serialize)]
pub(super) struct OsType {
    #[serde(rename = "@arch")]
    pub arch: &'static str,
    #[serde(rename = "@machine")]
    pub machine: &'static str,
    #[serde(rename = "$text")]
    pub value: &'static str,
}

/// `<loader>`: UEFI firmware code mapped as read-only pflash.
#[derive(Serialize)]
pub(super) struct Loader<'a> {
    #[serde(rename = "@readonly")]
    pub readonly: &'static str,
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "$text")]
    pub path: &'a str,
}

/// `<nvram>`: the domain's UEFI variable store, copied from `template` when missing.
#[derive(Serialize)]
pub(super) struct Nvram<'a> {
    #[serde(rename = "@template")]
    pub template: &'a str,
    #[serde(rename = "$text")]
    pub path: &'a str,
}

/// `<boot order='N'/>` inside a device: its place in the firmware's boot order.
#[derive(Serialize)]
pub(super) struct BootOrder {
    #[serde(rename = "@order")]
    pub order: usize,
}

#[derive(Serialize)]
pub(super) struct BootDev {
    #[serde(rename = "@dev")]
    pub dev: &'static str,
}

#[derive(Serialize)]
pub(super) struct Features {
    pub acpi: Empty,
    pub apic: Empty,
}

#[derive(Serialize)]
pub(super) struct Empty {}

#[derive(Serialize)]
pub(super) struct Cpu<'a> {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
    #[serde(rename = "@match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<&'static str>,
    #[serde(rename = "@check")]
    pub check: &'static str,
    #[serde(rename = "@migratable", skip_serializing_if = "Option::is_none")]
    pub migratable: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<CpuModel<'a>>,
    /// One guest NUMA cell: memory hot-add plugs DIMMs into a NUMA node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa: Option<Numa>,
}

#[derive(Serialize)]
pub(super) struct Numa {
    pub cell: NumaCell,
}

#[derive(Serialize)]
pub(super) struct NumaCell {
    #[serde(rename = "@id")]
    pub id: u32,
    #[serde(rename = "@cpus")]
    pub cpus: String,
    #[serde(rename = "@memory")]
    pub memory: u64,
    #[serde(rename = "@unit")]
    pub unit: &'static str,
}

#[derive(Serialize)]
pub(super) struct CpuModel<'a> {
    #[serde(rename = "@fallback")]
    pub fallback: &'static str,
    #[serde(rename = "$text")]
    pub name: &'a str,
}

#[derive(Serialize)]
pub(super) struct Clock {
    #[serde(rename = "@offset")]
    pub offset: &'static str,
}

#[derive(Serialize)]
pub(super) struct Devices<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<Disk<'a>>,
    /// CD-ROMs are `<disk device='cdrom'>` elements too, after the disks.
    #[serde(rename = "disk", skip_serializing_if = "Vec::is_empty")]
    pub cdrom: Vec<Cdrom<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interface: Vec<Interface<'a>>,
    pub serial: Serial<'a>,
    pub console: Console,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphics: Option<Graphics<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<Video>,
    pub memballoon: Memballoon,
}

#[derive(Serialize)]
pub(super) struct Disk<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: DiskDriver,
    pub source: FileSource<'a>,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iotune: Option<IoTune>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrder>,
}

/// A read-only CD-ROM (`<disk type='file' device='cdrom'>`).
#[derive(Serialize)]
pub(super) struct Cdrom<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: CdromDriver,
    pub source: FileSource<'a>,
    pub target: DiskTarget,
    pub readonly: Empty,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrder>,
}

#[derive(Serialize)]
pub(super) struct CdromDriver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@type")]
    pub format: &'static str,
}

#[derive(Serialize)]
pub(super) struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@type")]
    pub format: &'static str,
    #[serde(rename = "@discard")]
    pub discard: &'static str,
}

#[derive(Serialize)]
pub(super) struct FileSource<'a> {
    #[serde(rename = "@file")]
    pub file: &'a str,
}

#[derive(Serialize)]
pub(super) struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus")]
    pub bus: &'static str,
}

/// `<iotune>`: present limits only, in libvirt's element order.
#[derive(Serialize)]
pub(super) struct IoTune {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bytes_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bytes_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_iops_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_iops_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_iops_sec: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct Interface<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub mac: MacElement,
    pub source: BridgeSource<'a>,
    pub virtualport: Virtualport,
    pub model: TypeOnly,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrder>,
}

#[derive(Serialize)]
pub(super) struct MacElement {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Serialize)]
pub(super) struct BridgeSource<'a> {
    #[serde(rename = "@bridge")]
    pub bridge: &'a str,
}

#[derive(Serialize)]
pub(super) struct Virtualport {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<VirtualportParameters>,
}

#[derive(Serialize)]
pub(super) struct VirtualportParameters {
    #[serde(rename = "@interfaceid")]
    pub interfaceid: String,
}

#[derive(Serialize)]
pub(super) struct TypeOnly {
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

#[derive(Serialize)]
pub(super) struct Serial<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<SerialLog<'a>>,
    pub target: SerialTarget,
}

#[derive(Serialize)]
pub(super) struct SerialLog<'a> {
    #[serde(rename = "@file")]
    pub file: &'a str,
    #[serde(rename = "@append")]
    pub append: &'static str,
}

#[derive(Serialize)]
pub(super) struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Serialize)]
pub(super) struct Console {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: ConsoleTarget,
}

#[derive(Serialize)]
pub(super) struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Serialize)]
pub(super) struct Channel {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: ChannelTarget,
}

#[derive(Serialize)]
pub(super) struct ChannelTarget {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@name")]
    pub name: &'static str,
}

#[derive(Serialize)]
pub(super) struct Graphics<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@port", skip_serializing_if = "Option::is_none")]
    pub port: Option<&'static str>,
    #[serde(rename = "@autoport", skip_serializing_if = "Option::is_none")]
    pub autoport: Option<&'static str>,
    pub listen: Listen<'a>,
}

#[derive(Serialize)]
pub(super) struct Listen<'a> {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@address", skip_serializing_if = "Option::is_none")]
    pub address: Option<&'static str>,
    #[serde(rename = "@socket", skip_serializing_if = "Option::is_none")]
    pub socket: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct Video {
    pub model: TypeOnly,
}

#[derive(Serialize)]
pub(super) struct Memballoon {
    #[serde(rename = "@model")]
    pub model: &'static str,
}
